// Worker: one thread, one uv loop, its share of the clients, and its own multiplexed
// connections to every backend. Nothing on the request path is shared with other workers
// except the backends' health atomics, so it takes no locks. Writes are batched: sessions
// and connections with output are marked dirty and flushed once per loop turn.
#pragma once

#include <uv.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "common/buffer.h"
#include "common/resp_parser.h"
#include "config/config.h"
#include "proxy/backend.h"
#include "proxy/client_budget.h"
#include "proxy/connection_class.h"
#include "proxy/credentials.h"
#include "proxy/router.h"
#include "proxy/stats.h"
#include "proxy/topology.h"

namespace kp {

class BackendConn;
class ClientSession;
class ProxyInfo;
class TlsContext;

class Worker {
 public:
  Worker(size_t id, std::shared_ptr<const Config> config, Topology& topology, const Router& router);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  void Start();
  void Join();
  // Thread-safe: hands an accepted socket to this worker (from tls_listen when `tls`).
  void AddClient(int fd, bool tls = false);
  // Thread-safe: stop taking requests, finish what is in flight, then stop the loop.
  void RequestDrain();
  // Thread-safe: the settings to use from the next loop turn on (SIGHUP reload), with the
  // TLS contexts built from them (certificates read again).
  void Reconfigure(std::shared_ptr<const Config> config, std::shared_ptr<const TlsContext> backend,
                   std::shared_ptr<const TlsContext> clients);
  // Before Start(): what PROXY INFO reports (read-only, shared by all workers).
  void SetInfo(const ProxyInfo* info) { info_ = info; }
  const ProxyInfo* info() const { return info_; }
  // Before Start(): the process-wide client budget (owned by the server).
  void SetBudget(ClientBudget* budget) { budget_ = budget; }
  ClientBudget& budget() { return *budget_; }
  // TLS contexts for backend connections and for clients of tls_listen (nullptr: off). Set
  // before Start() and with each Reconfigure (new connections use the new ones).
  const std::shared_ptr<const TlsContext>& backend_tls() const { return backend_tls_; }
  const std::shared_ptr<const TlsContext>& client_tls() const { return client_tls_; }
  void SetTls(std::shared_ptr<const TlsContext> backend,
              std::shared_ptr<const TlsContext> clients) {
    backend_tls_ = std::move(backend);
    client_tls_ = std::move(clients);
  }
  // Before Start(): the ACL users clients authenticated as (shared, owned by the server).
  void SetCredentials(Credentials* c) { credentials_ = c; }
  Credentials& credentials() { return *credentials_; }

  // Loop-thread API.
  uv_loop_t* loop() { return &loop_; }
  // The settings now in force on this worker (swapped between loop turns on reload): read
  // them at the point of use, never keep a reference across turns.
  const Config& config() const { return *config_; }
  const Router& router() const { return router_; }
  // Without Redis Cluster, the one group; with it, the first shard's (facts such as the
  // server version that any node can tell).
  const BackendGroup& backends() const { return topology_.main(); }
  Topology& topology() const { return topology_; }
  WorkerStats& stats() { return stats_; }
  const WorkerStats& stats() const { return stats_; }
  uint64_t now() const { return uv_now(const_cast<uv_loop_t*>(&loop_)); }
  // A nanosecond clock read once per socket read (not per request: a pipeline's requests
  // share it), for the latency histograms.
  uint64_t clock_ns() const { return clock_ns_; }
  void TouchClock() { clock_ns_ = uv_hrtime(); }
  // The buffer a client's read lands in when it holds no partial request: one per worker,
  // so ten thousand connections that send a little now and then hold no read memory each
  // (what a read leaves unparsed is copied into the client's own buffer).
  Buffer& read_buffer() { return read_buffer_; }
  // The request parser clients use between requests, with the current wire limits; a client
  // whose request is still arriving keeps the state in a parser of its own. Null while in
  // use (a client's request being handled can end up framing another's).
  RequestParser* TakeParser() { return std::exchange(parser_free_, nullptr); }
  void ReturnParser(RequestParser* p) { parser_free_ = p; }
  uint64_t timeout_ms() const { return timeout_ms_; }
  uint64_t unanswered_ms() const { return unanswered_ms_; }  // UnansweredAfterMs(config)
  bool finished() const { return finished_.load(std::memory_order_acquire); }
  size_t client_count() const { return client_count_.load(std::memory_order_relaxed); }

  // A replica of `group` that serves reads and has applied at least `min_offset` (-1: any),
  // by the read policy; nullptr when none (then the primary serves the read).
  // `steered`: a read that avoids replicas not answering (ClientSession::Steered).
  Backend* PickReplica(const BackendGroup& group, int64_t min_offset, bool steered);
  // A shared connection to `b` for clients of class `cls`, rotating over the pool. Inline for
  // the request path's usual case (the default class, one connection per backend, already
  // opened): the rest is SharedConnSlow.
  BackendConn* SharedConn(Backend* b, const ConnClass& cls = {}) {
    if (cls.is_default()) {
      const Pool& pool = pools_[b->index()];
      if (pool.conns.size() == 1) return pool.conns.front();
    }
    return SharedConnSlow(b, cls);
  }
  // The shared primary connection that carries every primary request of one client, so they
  // run in the order it sent them.
  BackendConn* PrimaryConnFor(Backend* primary, uint64_t client_id, const ConnClass& cls = {}) {
    if (cls.is_default()) {
      const Pool& pool = pools_[primary->index()];
      if (pool.conns.size() == 1) return pool.conns.front();
    }
    return PrimaryConnForSlow(primary, client_id, cls);
  }
  // A dedicated primary connection for a pinned session, opened in the client's class,
  // reusing a clean idle one of that class if any.
  BackendConn* NewDedicatedConn(Backend* primary, ClientSession* owner, const ConnClass& cls);
  // Takes back a dedicated connection whose session state is clean (after a transaction).
  void ReleaseDedicatedConn(BackendConn* c);
  // Called when a dedicated connection fails or dies: it must not be handed out or checked
  // for timeouts again.
  void ForgetDedicatedConn(BackendConn* c);
  // Takes a shared connection out of its pool (a new one takes its place): it streams a
  // large reply to a slow client and closes when done. Checked for timeouts until then.
  void DetachSharedConn(BackendConn* c);
  // Takes a shared connection that has just been given a very large request out of its pool
  // (a new one takes its place), unless kMaxRetired connections of this worker are out
  // already (descriptors: they come from the backends' reserve). False: it stays.
  bool RetireSharedConn(BackendConn* c);
  // A connection retired as stuck heard from its server again: every shared connection of
  // this worker to it is told (BackendConn::ServerHeard).
  void ServerHeard(Backend* b);
  // Whether fewer than kMaxRetired connections of this worker are out of their pools.
  bool MayTakeOutOfPool() const { return detached_.size() - side_conns_ < kMaxRetired; }
  // A connection for one request that must not wait behind other clients' (SCRIPT KILL):
  // out of the pool from the start, it closes once it has answered. Null when this worker
  // has kMaxSideConns of them open, or opened kSideConnsPerSecond in the last second: each
  // is a new TCP connection (and a socket in TIME_WAIT after it), and a client sending
  // kills in a loop must not use up the host's ports.
  BackendConn* SideConn(Backend* b, const ConnClass& cls);
  void ForgetDetachedConn(BackendConn* c);
  // A session has requests waiting for a backend: retried every few milliseconds.
  void Park(ClientSession* c);
  void MarkDirty(ClientSession* c);
  void MarkDirty(BackendConn* c);
  // Deletes the object at the next flush point (after libuv has released its handles).
  void Bury(BackendConn* c);
  void OnClientClosed(ClientSession* c);
  // Numbers one timeout check of one connection (never 0).
  uint64_t NextTimeoutPass() { return ++timeout_pass_; }
  // The retry budget's spare token for clients that have not earned one: one per second.
  bool TakeSpareRetry();
  // A server sent a reply large enough to matter to new clients' first requests
  // (ClientSession::FirstBurst): they are cautious for a while.
  void NoteLargeReply() {
    const uint64_t t = now();
    uint64_t seen = budget_->large_reply_ms.load(std::memory_order_relaxed);
    // Once a second at most; a worker whose loop time is behind another's never moves it back.
    while (seen + 1000 <= t &&
           !budget_->large_reply_ms.compare_exchange_weak(seen, t, std::memory_order_relaxed)) {
    }
  }
  // Whether such a reply was seen (by any worker) within the last `ms`.
  bool LargeRepliesSeenWithin(uint64_t ms) const {
    const uint64_t seen = budget_->large_reply_ms.load(std::memory_order_relaxed);
    return seen != 0 && now() < seen + ms;
  }
  // A change in the reply bytes this worker's clients hold (published once per loop turn).
  void AddReplyBytes(int64_t delta) { reply_delta_ += delta; }
  // Publishes what changed since the last time; returns the total of all workers.
  int64_t PublishReplyBytes() {
    if (reply_delta_ == 0) return budget_->reply_bytes.load(std::memory_order_relaxed);
    int64_t d = reply_delta_;
    reply_delta_ = 0;
    return budget_->reply_bytes.fetch_add(d, std::memory_order_relaxed) + d;
  }
  // Whether all clients together hold more than half limits.max_total_client_buffer_bytes
  // (this worker's unpublished change included): streamed replies then wait at the server
  // for their readers rather than pile up here (BackendConn::StreamPart).
  bool ClientBuffersCrowded() const {
    return budget_->reply_bytes.load(std::memory_order_relaxed) + reply_delta_ >
           static_cast<int64_t>(config_->client.max_total_client_buffer_bytes / 2);
  }
  // All clients together hold more than limits.max_total_client_buffer_bytes: closes this
  // worker's clients holding the most until the total fits (or none holds anything).
  void EnforceTotalBudget();
  // Thread-safe: another worker found all clients over the total bound and this worker's
  // published largest holder the largest: run EnforceTotalBudget on this loop.
  void RequestEnforce();

 private:
  Buffer read_buffer_;
  std::unique_ptr<RequestParser> parser_;
  RequestParser* parser_free_ = nullptr;
  void Run();
  void OnAsync();
  void OnCheck();
  void OnTick();
  // The bytes of large blocks this worker keeps warm now (SpareLargeBlocks).
  size_t SpareLargeLimit() const;
  void OnParkTimer();
  void AcceptPending();
  // This worker's client holding the most (nullptr: none holds anything); publishes it.
  ClientSession* LargestHolder();
  void BeginDrain();
  void FinishIfDrained();
  void Shutdown();

  size_t id_;
  std::shared_ptr<const Config> config_;
  const ProxyInfo* info_ = nullptr;
  ClientBudget* budget_ = nullptr;
  Credentials* credentials_ = nullptr;
  std::shared_ptr<const TlsContext> backend_tls_, client_tls_;
  Topology& topology_;
  const Router& router_;
  uint64_t timeout_ms_;
  uint64_t unanswered_ms_;
  uv_loop_t loop_;
  uv_async_t async_;
  uv_check_t check_;
  uv_idle_t idle_;  // keeps the loop from blocking in poll while something is dirty
  uv_timer_t tick_;
  uv_timer_t drain_timer_;
  uv_timer_t park_timer_;  // runs while sessions wait for a backend
  std::vector<ClientSession*> parked_;
  std::thread thread_;
  WorkerStats stats_;

  std::mutex mu_;  // guards incoming_, drain_requested_, pending_config_ (never per request)
  std::vector<std::pair<int, bool>> incoming_;  // (fd, from tls_listen)
  std::shared_ptr<const Config> pending_config_;
  std::shared_ptr<const TlsContext> pending_backend_tls_, pending_client_tls_;
  bool drain_requested_ = false;
  bool enforce_requested_ = false;
  bool async_closed_ = false;  // guarded by mu_
  bool draining_ = false;
  bool shut_down_ = false;

  std::unordered_set<ClientSession*> clients_;
  std::atomic<size_t> client_count_{0};
  // Reply bytes held by this worker's largest client (see LargestHolder); read by others.
  std::atomic<size_t> largest_held_{0};
  std::atomic<bool> finished_{false};
  uint64_t next_client_id_;
  struct Pool {
    std::vector<BackendConn*> conns;
    size_t rr = 0;
    uint64_t used_ms = 0;  // last request (classes other than the default close when idle)
  };
  Pool& PoolFor(Backend* b, const ConnClass& cls);
  BackendConn* SharedConnSlow(Backend* b, const ConnClass& cls);
  BackendConn* PrimaryConnForSlow(Backend* primary, uint64_t client_id, const ConnClass& cls);
  // Every shared connection of every class.
  template <typename Fn>
  void ForEachShared(Fn fn) {
    for (Pool& p : pools_) {
      for (BackendConn* c : p.conns) fn(c);
    }
    for (auto& classes : class_pools_) {
      for (auto& [key, p] : classes) {
        for (BackendConn* c : p.conns) fn(c);
      }
    }
  }
  // Takes stuck primary connections out of their pools (see RetireStalled in worker.cpp).
  void RetireStalled(uint64_t now);
  // Closes pools of non-default classes idle for a while (a client that once selected db 7).
  void CloseIdleClassPools(uint64_t now);
  std::vector<Pool> pools_;  // the default class (db 0, RESP2), per backend index
  std::vector<std::unordered_map<uint64_t, Pool>> class_pools_;  // others, by ConnClass::key
  uint64_t last_sweep_ms_ = 0;
  bool large_freed_before_ = false;  // large blocks were freed in the sweep period before
  uint64_t last_trim_ms_ = 0;        // the sweep's last malloc_trim or look at the free bytes
  // The sweep looks at the allocator's free bytes this often, and trims past this many.
  static constexpr uint64_t kTrimCheckMs = 60000;
  static constexpr size_t kTrimFreeBytes = 32 * 1024 * 1024;
  std::vector<BackendConn*> idle_dedicated_;
  std::unordered_set<BackendConn*> dedicated_;  // every live dedicated connection
  std::unordered_set<BackendConn*> detached_;   // out of their pool, finishing a reply
  static constexpr size_t kMaxRetired = 16;
  static constexpr size_t kMaxSideConns = 8;
  static constexpr size_t kSideConnsPerSecond = 50;
  size_t side_conns_ = 0;        // side connections open (also in detached_)
  uint64_t side_window_ms_ = 0;  // start of the current one-second window
  size_t side_in_window_ = 0;    // side connections opened in it
  size_t replica_rr_ = 0;
  uint64_t timeout_pass_ = 0;
  uint64_t clock_ns_ = 0;
  int64_t reply_delta_ = 0;  // see AddReplyBytes
  uint64_t spare_retry_taken_ms_ = 0;
  bool spare_retry_used_ = false;
  uint64_t rng_state_;

  std::vector<ClientSession*> dirty_clients_;
  std::vector<BackendConn*> dirty_conns_;
  std::vector<BackendConn*> graveyard_;
  std::vector<ClientSession*> closed_clients_;
  bool idle_active_ = false;
  uint64_t last_work_ns_ = 0;  // uv_hrtime() of the last turn that flushed (busy_poll_us)
};

}  // namespace kp
