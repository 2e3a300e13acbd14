// SentinelClient: the proxy's link to Redis Sentinel (config `sentinels`, `sentinel_master`).
// It asks a reachable Sentinel for the master's address and its replicas at start and every
// second, subscribes to every Sentinel's events (+switch-master, +sdown, +slave,
// +role-change...) to ask again at once, and hands what it learns to the replication
// monitor, which confirms the named master with the node itself before writes go there.
// The Sentinels it is given name the others that watch the master (SENTINEL SENTINELS):
// their events are subscribed to as well, because only the one leading a failover announces
// the replica it is about to promote (+selected-slave). A discovered Sentinel is trusted for
// that alone (a fence bounded in time, checked against the current primary): it is never
// asked for the master, and its other events only make the configured ones be asked again,
// so an announced address that reaches some other deployment's Sentinel cannot move writes.
// Losing a Sentinel means asking another; losing all of them keeps the last known topology
// (logged once, shown in /readyz and /metrics).
#pragma once

#include <uv.h>

#include <memory>
#include <string>
#include <vector>

#include "config/config.h"
#include "proxy/control_conn.h"

namespace kp {

class ReplicationMonitor;

class SentinelClient {
 public:
  // Discovered Sentinels followed at most (a subscription each): far above the 3-5 of a
  // real deployment; counted in the descriptor reserve.
  static constexpr size_t kMaxDiscovered = 16;

  SentinelClient(uv_loop_t* loop, std::shared_ptr<const Config> config,
                 ReplicationMonitor& monitor);
  ~SentinelClient();
  void Start();
  void Stop();
  // Reload: other Sentinels, master name or credentials mean new links.
  void Reconfigure(std::shared_ptr<const Config> config);
  // TLS to the Sentinels (backend_tls) for connections made from now on.
  void SetTls(std::shared_ptr<const TlsContext> tls);

  // Prometheus lines (kompress_sentinel_up per Sentinel) and /readyz lines.
  std::string Metrics() const;
  std::string ReadyNotes() const;

 private:
  struct Sentinel {
    SentinelClient* owner = nullptr;
    Endpoint endpoint;
    std::unique_ptr<ControlConn> cmd;  // queries
    std::unique_ptr<ControlConn> sub;  // event subscription
    bool subscribed = false;
    bool answered = false;  // its last query was answered
    bool lost = false;      // its query connection failed; cleared once re-made
    std::string last_error;
    // Its run id: as listed (discovered), or as it says (SENTINEL MYID, configured).
    std::string runid;
    bool id_asked = false;  // SENTINEL MYID sent on the current query connection
    // Not configured: named by another Sentinel (SENTINEL SENTINELS); no query connection.
    // Its subscription is made once the server there says it is the Sentinel listed
    // (SENTINEL MYID; where that is refused, ROLE must say "sentinel"): `verifying`; one
    // that is another (`impostor`) is not followed. Forgotten when no Sentinel has named it
    // for kForgetMs; reconnects at most every kRetryMs.
    bool discovered = false;
    bool verifying = false;
    bool impostor = false;
    uint64_t seen_ms = 0;
    uint64_t next_connect_ms = 0;
  };
  // One query in flight: the master's address, then its replicas.
  struct Query {
    SentinelClient* owner = nullptr;
    Sentinel* sentinel = nullptr;
    bool have_master = false;
    Endpoint master;
  };

  void SetConfig(std::shared_ptr<const Config> config);
  void OnTick();
  void Ask();
  void OnLost(Sentinel& s, bool subscription, const std::string& why);
  void NoteReachability();
  static bool Reachable(const Sentinel& s);
  static void OnMasterAddr(ControlConn* conn, redisReply* reply, void* privdata);
  static void OnReplicas(ControlConn* conn, redisReply* reply, void* privdata);
  static void OnSentinels(ControlConn* conn, redisReply* reply, void* privdata);
  static void OnOwnId(ControlConn* conn, redisReply* reply, void* privdata);
  static void OnPeerId(ControlConn* conn, redisReply* reply, void* privdata);
  static void OnPeerRole(ControlConn* conn, redisReply* reply, void* privdata);
  // A discovered Sentinel's subscription connection, to its endpoint (made anew when it
  // moves: the same run id listed at another address).
  void MakeSub(Sentinel& s);
  bool SubscribeEvents(Sentinel& s);
  // The Sentinels of the configuration come first in sentinels_, the discovered ones after.
  size_t configured() const { return config_->sentinels.size(); }
  // A Sentinel at `ep` or with run id `runid` (configured, or discovered before), or nullptr.
  Sentinel* FindSentinel(const Endpoint& ep, std::string_view runid) const;
  Sentinel& AddSentinel(const Endpoint& ep, bool discovered, std::string runid);
  // Drops discovered Sentinels no longer named, or found to be a configured one.
  void ForgetStale(uint64_t now);
  static void OnEvent(ControlConn* conn, redisReply* reply, void* privdata);

  uv_loop_t* loop_;
  std::shared_ptr<const Config> owned_config_;
  std::shared_ptr<const TlsContext> tls_;
  const Config* config_ = nullptr;
  ReplicationMonitor& monitor_;
  uv_timer_t timer_;
  uint64_t connect_timeout_ms_;
  uint64_t last_ask_ms_ = 0;
  bool asking_ = false;
  bool ask_again_ = false;  // an event arrived while a query was in flight
  size_t next_ = 0;         // the Sentinel to ask first
  bool none_reachable_logged_ = false;
  bool discovery_refused_logged_ = false;
  uint64_t links_made_ms_ = 0;  // uv_now when SetConfig made the links
  bool have_view_ = false;
  std::vector<Endpoint> replicas_;  // as last heard
  std::vector<std::unique_ptr<Sentinel>> sentinels_;
  Query query_;
};

}  // namespace kp
