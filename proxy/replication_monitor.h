// ReplicationMonitor: the control plane's view of the backends, and the one place where the
// topology changes. Every health_check_interval it asks the primary for INFO replication
// (ControlConn, main loop), then each other node as soon as the primary has answered, so
// replica offsets are compared with a primary offset taken just before them.
//
// An answer proves the server alive (re-admits it); a refusal, an error such as LOADING or
// silence past the timeout marks it down (BUSY does not: the server is alive, running a
// script). The primary's answers confirm its role (writes go to nothing else) and feed
// PrimaryProgress (read-your-writes) and the offset history (lag in seconds); each replica's
// answer is judged by JudgeReplica.
//
// Which node is the primary: the configured one, until it reports being a replica of another
// listed node that reports being a primary (a switchover), or, with Sentinel, the node the
// Sentinels name once it confirms the role itself. Workers mark nodes down on their own
// failures; only this class brings them back or changes roles.
#pragma once

#include <uv.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "config/config.h"
#include "proxy/backend.h"
#include "proxy/control_conn.h"
#include "proxy/replication_info.h"

namespace kp {

class ReplicationMonitor {
 public:
  ReplicationMonitor(uv_loop_t* loop, std::shared_ptr<const Config> config, BackendGroup& group);
  ~ReplicationMonitor();
  void Start();
  void Stop();

  // From the Sentinel client (or the cluster's slot map, per shard): the master the Sentinels name
  // and its replicas. Nodes are added as needed; the named master becomes the primary once it
  // confirms the role.
  void ApplySentinelView(const Endpoint& master, const std::vector<Endpoint>& replicas);
  // From the Sentinel client (+selected-slave): a Sentinel has chosen `replica` to promote in
  // place of `master`, and sends it REPLICAOF NO ONE at its next tick (50-100 ms later).
  // When `master` is the primary, it gets no more writes from now on: what it acknowledged
  // after the promotion would be thrown away when it becomes the new primary's replica,
  // while what it has taken until now reaches the replica before that. Ends with the
  // switch, an abort (FailoverAborted), or after PromotionFenceMs: by then the promoted
  // replica answers as a primary, and FenceForRival holds writes on that evidence. The
  // replica is probed every kPromotionProbeMs meanwhile, whatever health_check_interval is,
  // so that answer comes within the fence.
  void FailoverStarting(const Endpoint& master, const Endpoint& replica);
  // -failover-abort-*: the primary takes writes again once it confirms its role.
  void FailoverAborted(const Endpoint& master);
  // Reload: new settings (intervals, timeouts, lag limits, credentials for new connections),
  // and with a static topology the configured primary and replicas, applied like a view.
  void Reconfigure(std::shared_ptr<const Config> config);
  // TLS for probe connections from now on (nullptr: plaintext); open ones stay as they are.
  void SetTls(std::shared_ptr<const TlsContext> tls);

 private:
  struct Probe {
    ReplicationMonitor* owner = nullptr;
    Backend* backend = nullptr;
    std::unique_ptr<ControlConn> conn;
    bool awaiting = false;
    bool reconnecting = false;  // its connection was closed; this is the fresh one
    bool facts_asked = false;   // INFO server / CONFIG GET databases sent on this connection
    uint64_t sent_ms = 0;
    uint64_t epoch = 0;       // the backend's down_epoch when the probe was sent
    uint64_t poll_epoch = 0;  // sent to the primary: PrimaryProgress::poll_epoch of it
    // The last answer, when it was asked for, and the down_epoch then.
    ReplicationInfo info;
    bool has_info = false;
    uint64_t info_sent_ms = 0;
    uint64_t info_answered_ms = 0;  // when that answer arrived (what its offset is judged at)
    uint64_t info_epoch = 0;
    // Its last not-answering line (NoteUnanswered): when, and whether at warning level.
    uint64_t answering_log_ms = 0;
    bool answering_logged = false;
  };

  void SetConfig(std::shared_ptr<const Config> config);
  // The one path for topology from any source; returns the named primary's node.
  Backend* ApplyView(const Endpoint& primary, const std::vector<Endpoint>& replicas,
                     const char* source);
  // Makes `p` the primary if it already confirmed the role, else asks it now.
  void SwitchOrAsk(Backend* p, const char* why);
  void ApplyStaticView(const Endpoint& primary, const std::vector<Endpoint>& replicas);
  void OnTick();
  // A replica's INFO has waited unanswered_ms_: steered reads avoid it until it answers
  // (Backend::answering; see .cpp), or until nothing else can take them.
  void NoteUnanswered(Probe& p, uint64_t waited_ms);
  // A replica silent this long is judged as far behind as the primary has moved since its
  // last answer: past max_replica_lag it gets no reads until it answers, caught up.
  void NoteSilentLag(Probe& p, uint64_t now_ms);
  void NoteAnswering(Probe& p, const std::string& why);
  static constexpr uint64_t kAnsweringLogMs = 10000;
  // Makes a probe for every node of the group that has none yet.
  void SyncProbes();
  Probe& ProbeOf(const Backend* b) { return *probes_[b->position()]; }
  // Who names the primary when the topology comes from outside, for logs and errors.
  std::string Source() const {
    return config_->cluster() ? "the cluster" : std::string("the Sentinels");
  }
  std::string Named() const { return "named by " + Source(); }
  // "<source> name(s)", the verb agreeing with it.
  std::string SourceNames() const {
    return config_->cluster() ? "the cluster names" : std::string("the Sentinels name");
  }
  void SendProbe(Probe& p);
  void PollReplicas();
  void OnLost(Probe& p, const std::string& why);
  static void OnInfo(ControlConn* conn, redisReply* reply, void* privdata);
  // The server's version and database count, asked once per connection.
  void AskFacts(Probe& p);
  void OnAnswer(Probe& p, const char* data, size_t len, bool is_error);
  // A node that says it is a primary (the current one or not).
  void OnPrimaryAnswer(Probe& p);
  // The current primary's confirmed answer: progress, history, then the replicas.
  void OnConfirmedPrimary(Probe& p);
  void OnReplicaInfo(Probe& p);
  // The node that should be the primary now, given every node's last answer.
  Backend* Desired() const;
  // With Sentinel: a node of this group that says it is a primary continuing the current
  // primary's history (promoted from it) though the Sentinels have not named it yet: a
  // failover under way. Null when there is none.
  Backend* RivalPrimary() const;
  // While there is such a rival, `primary` gets no writes (they would be lost when it is
  // turned into the new primary's replica): true when it was fenced.
  bool FenceForRival(Backend& primary);
  // While a Sentinel is promoting a replica in its place (FailoverStarting), `primary` gets
  // no writes: true when it was fenced.
  bool FenceForPromotion(Backend& primary);
  // The primary takes no writes (they wait), for `why` (logged once, shown in errors).
  void NoWrites(Backend& primary, const std::string& why);
  // How long a fence holds without the Sentinels naming a new primary.
  uint64_t FenceLimitMs() const { return std::max<uint64_t>(2 * timeout_ms_, 5000); }
  // How long FailoverStarting's fence holds on the Sentinel's word alone: the promotion comes
  // one Sentinel tick (at most 100 ms) after +selected-slave and the next probe of the
  // replica sees it. Well inside the timeout, so that writes held for a promotion that never
  // comes (no abort event: the leader crashed; failover-timeout is minutes) still go through.
  uint64_t PromotionFenceMs() const {
    uint64_t probe_ms = promoting_node_ != nullptr ? kPromotionProbeMs : interval_ms_;
    return std::min<uint64_t>(std::max<uint64_t>(500, 3 * probe_ms + 200),
                              std::max<uint64_t>(timeout_ms_ / 2, 1));
  }
  static constexpr uint64_t kPromotionProbeMs = 20;
  // Every kPromotionProbeMs while the promotion fence holds: the chosen replica is asked
  // for its role; once the fence is over, the primary is asked at once (writes resume on
  // its answer, not a whole interval later).
  void OnPromotionTick();
  void SwitchPrimary(Probe& to, const std::string& why);
  // Decides from its last answer whether a replica serves reads; logs changes.
  void Judge(Probe& p);
  // Tracks when the primary became unreachable; on the change, polls the replicas at once.
  void NotePrimaryState();
  bool Reports(const Backend* b, bool primary) const;

  uv_loop_t* loop_;
  std::shared_ptr<const Config> owned_config_;
  std::shared_ptr<const TlsContext> tls_;
  const Config* config_ = nullptr;
  BackendGroup& group_;
  uint64_t timeout_ms_ = 1;
  uint64_t interval_ms_ = 1;
  uint64_t unanswered_ms_ = 1;  // UnansweredAfterMs: connects, and replicas' INFO (see OnTick)
  uv_timer_t timer_;
  bool running_ = false;
  std::vector<std::unique_ptr<Probe>> probes_;  // by node index

  // The primary as last confirmed.
  bool primary_known_ = false;
  std::string primary_replid_;
  uint64_t rival_since_ms_ = 0;  // MonotonicMs when a rival primary was first seen (0: none)
  // MonotonicMs of the Sentinel's +selected-slave for the primary (0: no promotion under
  // way), and the replica it promotes.
  uint64_t promoting_since_ms_ = 0;
  std::string promoting_;
  Backend* promoting_node_ = nullptr;  // the chosen replica, if it is one of this group's
  // MonotonicMs when the last fence ended without a promotion: the same choice announced
  // again within kPromotionQuietMs raises no new fence (writes cannot be held on and on).
  uint64_t promoting_ended_ms_ = 0;
  static constexpr uint64_t kPromotionQuietMs = 5000;
  uv_timer_t promotion_timer_;
  int64_t primary_offset_ = -1;
  OffsetHistory history_;
  // When the monitor first saw the primary unreachable (0: it is reachable).
  uint64_t primary_lost_ms_ = 0;
  // Sentinel mode: the node the Sentinels name as master (nullptr: not heard yet).
  Backend* sentinel_master_ = nullptr;
  // Static mode: the configured primary. After a switchover the primary may be another
  // node; the configured one takes over again only if it reports being a primary.
  Backend* static_primary_ = nullptr;
};

}  // namespace kp
