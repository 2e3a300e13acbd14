// Worker: loop set-up, client adoption, batched flushing, request timeouts and draining.
#include "proxy/worker.h"

#include <malloc.h>
#include <pthread.h>

#include <unistd.h>

#include <algorithm>
#include <string>

#include "common/logging.h"
#include "proxy/backend_conn.h"
#include "proxy/client_session.h"

namespace kp {

Worker::Worker(size_t id, std::shared_ptr<const Config> config, Topology& topology,
               const Router& router)
    : id_(id), config_(std::move(config)), topology_(topology), router_(router) {
  timeout_ms_ = static_cast<uint64_t>(config_->timeout_s * 1000.0 + 0.5);
  if (timeout_ms_ == 0) timeout_ms_ = 1;
  unanswered_ms_ = UnansweredAfterMs(*config_);
  next_client_id_ = (static_cast<uint64_t>(id) << 48) + 1;
  rng_state_ = 0x9E3779B97F4A7C15ull * (id + 1);
  parser_ = std::make_unique<RequestParser>(config_->resp);
  parser_free_ = parser_.get();
  uv_loop_init(&loop_);
  loop_.data = this;
  uv_async_init(&loop_, &async_, [](uv_async_t* a) { static_cast<Worker*>(a->data)->OnAsync(); });
  async_.data = this;
  uv_check_init(&loop_, &check_);
  check_.data = this;
  uv_check_start(&check_, [](uv_check_t* c) { static_cast<Worker*>(c->data)->OnCheck(); });
  uv_idle_init(&loop_, &idle_);
  idle_.data = this;
  uv_timer_init(&loop_, &tick_);
  tick_.data = this;
  // Timeouts are checked on a tick: a tenth of the timeout, between 5 ms and 100 ms.
  uint64_t period = std::clamp<uint64_t>(timeout_ms_ / 10, 5, 100);
  uv_timer_start(
      &tick_, [](uv_timer_t* t) { static_cast<Worker*>(t->data)->OnTick(); }, period, period);
  uv_timer_init(&loop_, &drain_timer_);
  drain_timer_.data = this;
  uv_timer_init(&loop_, &park_timer_);
  park_timer_.data = this;

  // Shared connections are made on first use, per node: nodes come and go with the
  // topology (Sentinel), and their index is stable.
  pools_.resize(Topology::kMaxNodes);
  class_pools_.resize(Topology::kMaxNodes);
}

Worker::~Worker() {
  for (BackendConn* c : graveyard_) delete c;
  for (ClientSession* c : closed_clients_) delete c;
  uv_loop_close(&loop_);
}

void Worker::Start() {
  thread_ = std::thread([this] { Run(); });
}

void Worker::Join() {
  if (thread_.joinable()) thread_.join();
}

void Worker::Run() {
  // Named, so `top -H`, `perf` and /proc/PID/task tell the workers from the main thread.
  const std::string name = "kp-worker-" + std::to_string(id_);
  pthread_setname_np(pthread_self(), name.substr(0, 15).c_str());
  // Large values' buffers are kept warm between requests; OnTick trims them (see buffer.h).
  SpareLargeBlocks::Enable(SpareLargeLimit());
  uv_run(&loop_, UV_RUN_DEFAULT);
  // Handles closed during the last turn may have buried objects after the final check.
  for (BackendConn* c : graveyard_) delete c;
  graveyard_.clear();
  for (ClientSession* c : closed_clients_) delete c;
  closed_clients_.clear();
  Log().debug("worker {} stopped", id_);
  finished_.store(true, std::memory_order_release);
}

void Worker::AddClient(int fd, bool tls) {
  {
    std::lock_guard<std::mutex> g(mu_);
    incoming_.emplace_back(fd, tls);
  }
  uv_async_send(&async_);
}

void Worker::RequestDrain() {
  {
    std::lock_guard<std::mutex> g(mu_);
    drain_requested_ = true;
  }
  uv_async_send(&async_);
}

void Worker::Reconfigure(std::shared_ptr<const Config> config,
                         std::shared_ptr<const TlsContext> backend,
                         std::shared_ptr<const TlsContext> clients) {
  {
    std::lock_guard<std::mutex> g(mu_);
    pending_config_ = std::move(config);
    pending_backend_tls_ = std::move(backend);
    pending_client_tls_ = std::move(clients);
  }
  uv_async_send(&async_);
}

void Worker::OnAsync() {
  bool drain;
  bool enforce;
  std::shared_ptr<const Config> fresh;
  {
    std::lock_guard<std::mutex> g(mu_);
    enforce = enforce_requested_;
    enforce_requested_ = false;
    drain = drain_requested_;
    fresh.swap(pending_config_);
    if (fresh) {
      // New connections use them; open ones keep the sessions they have.
      backend_tls_ = std::move(pending_backend_tls_);
      client_tls_ = std::move(pending_client_tls_);
    }
  }
  if (fresh) {
    // Between loop turns: nothing of this thread holds on to the old settings (requests in
    // flight keep the deadlines they were given). The old Config is freed with its last user.
    config_ = std::move(fresh);
    // Not in use between loop turns; clients framing a request keep their own.
    parser_ = std::make_unique<RequestParser>(config_->resp);
    parser_free_ = parser_.get();
    timeout_ms_ = std::max<uint64_t>(1, static_cast<uint64_t>(config_->timeout_s * 1000.0 + 0.5));
    unanswered_ms_ = UnansweredAfterMs(*config_);
    uint64_t period = std::clamp<uint64_t>(timeout_ms_ / 10, 5, 100);
    if (!shut_down_) {
      uv_timer_start(
          &tick_, [](uv_timer_t* t) { static_cast<Worker*>(t->data)->OnTick(); }, period, period);
    }
  }
  // After a reload's settings are taken: a client that connected once the reload was done
  // (and logged) gets them even when both wake-ups reach this thread in one turn. Adopted
  // first, such a client kept the old limits and loopback congestion control (CI saw it
  // while another test kept a core busy).
  AcceptPending();
  if (enforce) EnforceTotalBudget();
  if (drain && !draining_) BeginDrain();
}

void Worker::AcceptPending() {
  std::vector<std::pair<int, bool>> fds;
  {
    std::lock_guard<std::mutex> g(mu_);
    fds.swap(incoming_);
  }
  for (auto [fd, tls] : fds) {
    if (draining_) {
      ::close(fd);
      budget_->clients.fetch_sub(1, std::memory_order_relaxed);
      continue;
    }
    auto* c = new ClientSession(this, next_client_id_++);
    clients_.insert(c);
    client_count_.store(clients_.size(), std::memory_order_relaxed);
    stats_.connections_accepted++;
    c->Open(fd, tls ? client_tls_ : nullptr);
  }
}

Backend* Worker::PickReplica(const BackendGroup& group, int64_t min_offset, bool steered) {
  size_t n = group.size();
  if (n == 0 || config_->read_policy == ReadPolicy::kPrimary) return nullptr;
  auto fits = [&](Backend* b) {
    return b->serves_reads() && (min_offset < 0 || b->offset() >= min_offset) &&
           (!steered || b->answering());
  };
  size_t start;
  if (config_->read_policy == ReadPolicy::kRandom) {
    // xorshift64: cheap, per worker, no shared state.
    rng_state_ ^= rng_state_ << 13;
    rng_state_ ^= rng_state_ >> 7;
    rng_state_ ^= rng_state_ << 17;
    start = rng_state_ % n;
    for (size_t k = 0; k < n; ++k) {
      Backend* b = group.node((start + k) % n);
      if (fits(b)) return b;
    }
    return nullptr;
  }
  // Round robin over the replicas that fit: the rotation moves past the nodes skipped, so a
  // replica out of service does not hand its whole share to its neighbour.
  for (size_t k = 0; k < n; ++k) {
    Backend* b = group.node(replica_rr_++ % n);
    if (fits(b)) return b;
  }
  return nullptr;
}

Worker::Pool& Worker::PoolFor(Backend* b, const ConnClass& cls) {
  Pool& pool = cls.is_default() ? pools_[b->index()] : class_pools_[b->index()][cls.key()];
  if (pool.conns.empty()) {
    unsigned per = std::max(1u, config_->backend_connections);
    for (unsigned i = 0; i < per; ++i) {
      pool.conns.push_back(new BackendConn(this, b, BackendConn::Mode::kShared, nullptr, cls));
    }
  }
  return pool;
}

BackendConn* Worker::SharedConnSlow(Backend* b, const ConnClass& cls) {
  Pool& pool = PoolFor(b, cls);
  if (!cls.is_default()) pool.used_ms = now();
  if (pool.conns.size() == 1) return pool.conns.front();
  return pool.conns[pool.rr++ % pool.conns.size()];
}

void Worker::DetachSharedConn(BackendConn* c) {
  Pool& pool = PoolFor(c->backend(), c->conn_class());
  for (BackendConn*& slot : pool.conns) {
    if (slot == c) {
      slot =
          new BackendConn(this, c->backend(), BackendConn::Mode::kShared, nullptr, c->conn_class());
    }
  }
  detached_.insert(c);
}

bool Worker::RetireSharedConn(BackendConn* c) {
  if (!MayTakeOutOfPool()) return false;
  DetachSharedConn(c);
  c->Retire();
  c->FenceQueued(0);
  return true;
}

void Worker::RetireStalled(uint64_t now) {
  // A script (or any long command) holds the connection it runs on: Redis reads nothing more
  // from it until the script ends, while after its busy-reply-threshold it answers other
  // connections at once with -BUSY. Left in the pool, that connection makes every client of
  // this worker wait behind the script until the timeout, and what they sent still runs
  // once the script ends: a write the client was told timed out is applied after all. So a
  // connection whose oldest request has waited a second (half the timeout if shorter) with
  // the server silent leaves the pool; later requests go on a new connection and get the
  // server's own answer (-BUSY, or the reply once it is free), as a direct client would.
  // Those waiting on the old one stay there, and their clients send nothing more until
  // they are answered, so nobody's requests are reordered. The connections left in the pool
  // are not judged stuck again until the server has been heard from since (on any connection
  // of this worker: the stuck one's own reply once the script ends): a server silent to every
  // connection (stopped, paused) costs one fresh connection, not one per second.
  const uint64_t ms = std::min<uint64_t>(1000, timeout_ms_ / 2);
  std::vector<BackendConn*> stuck;
  std::vector<Pool*> from;
  auto look = [&](Pool& p) {
    for (BackendConn* c : p.conns) {
      if (c->StalledFor(now, ms)) {
        stuck.push_back(c);
        from.push_back(&p);
        break;
      }
    }
  };
  for (Pool& p : pools_) look(p);
  for (auto& classes : class_pools_) {
    for (auto& entry : classes) look(entry.second);
  }
  for (size_t i = 0; i < stuck.size(); ++i) {
    BackendConn* c = stuck[i];
    if (!RetireSharedConn(c)) break;
    c->set_stall_retired();
    for (BackendConn* fresh : from[i]->conns) {
      if (fresh != c) fresh->set_stall_replacement();
    }
    Log().info(
        "primary {}: silent for {} ms on one connection (a long script or command?); "
        "new requests go on a new connection",
        c->backend()->name(), ms);
  }
}

void Worker::ServerHeard(Backend* b) {
  if (b->index() < pools_.size()) {
    for (BackendConn* c : pools_[b->index()].conns) c->ServerHeard();
  }
  if (b->index() < class_pools_.size()) {
    for (auto& entry : class_pools_[b->index()]) {
      for (BackendConn* c : entry.second.conns) c->ServerHeard();
    }
  }
}

BackendConn* Worker::SideConn(Backend* b, const ConnClass& cls) {
  if (now() - side_window_ms_ >= 1000) {
    side_window_ms_ = now();
    side_in_window_ = 0;
  }
  if (side_conns_ >= kMaxSideConns || side_in_window_ >= kSideConnsPerSecond) return nullptr;
  ++side_conns_;
  ++side_in_window_;
  auto* c = new BackendConn(this, b, BackendConn::Mode::kShared, nullptr, cls);
  c->set_side();
  detached_.insert(c);
  c->Retire();
  return c;
}

void Worker::ForgetDetachedConn(BackendConn* c) {
  if (detached_.erase(c) != 0 && c->side()) --side_conns_;
}

BackendConn* Worker::PrimaryConnForSlow(Backend* primary, uint64_t client_id,
                                        const ConnClass& cls) {
  Pool& pool = PoolFor(primary, cls);
  if (!cls.is_default()) pool.used_ms = now();
  return pool.conns.size() == 1 ? pool.conns.front() : pool.conns[client_id % pool.conns.size()];
}

void Worker::CloseIdleClassPools(uint64_t now_ms) {
  // A class whose clients have gone (or moved on) keeps its connections only this long.
  constexpr uint64_t kIdleClassMs = 60'000;
  for (auto& classes : class_pools_) {
    for (auto it = classes.begin(); it != classes.end();) {
      Pool& p = it->second;
      bool idle = now_ms - p.used_ms >= kIdleClassMs;
      for (BackendConn* c : p.conns) idle = idle && c->idle();
      if (!idle) {
        ++it;
        continue;
      }
      for (BackendConn* c : p.conns) c->Shutdown("idle", true);
      it = classes.erase(it);
    }
  }
}

BackendConn* Worker::NewDedicatedConn(Backend* primary, ClientSession* owner,
                                      const ConnClass& cls) {
  while (!idle_dedicated_.empty()) {
    BackendConn* c = idle_dedicated_.back();
    idle_dedicated_.pop_back();
    if (c->backend() != primary || !(c->conn_class() == cls)) {
      // To a node that is no longer the primary, or in another class: not reusable here.
      c->Shutdown("not reusable", true);
      continue;
    }
    c->set_owner(owner);
    return c;
  }
  auto* c = new BackendConn(this, primary, BackendConn::Mode::kDedicated, owner, cls);
  dedicated_.insert(c);
  return c;
}

void Worker::ReleaseDedicatedConn(BackendConn* c) {
  // A few are kept for the next transaction (clients like redis-py wrap every pipeline in
  // MULTI/EXEC); the rest are closed.
  constexpr size_t kKeepIdle = 8;
  if (draining_ || idle_dedicated_.size() >= kKeepIdle || !c->idle()) {
    c->Shutdown("released", true);
    return;
  }
  c->set_owner(nullptr);
  idle_dedicated_.push_back(c);
}

void Worker::ForgetDedicatedConn(BackendConn* c) {
  dedicated_.erase(c);
  auto it = std::find(idle_dedicated_.begin(), idle_dedicated_.end(), c);
  if (it != idle_dedicated_.end()) idle_dedicated_.erase(it);
}

void Worker::Park(ClientSession* c) {
  if (c->in_park_list) return;
  c->in_park_list = true;
  parked_.push_back(c);
  if (parked_.size() == 1) {
    // Short: a failover's new primary should get the held writes as soon as it is confirmed.
    uv_timer_start(
        &park_timer_, [](uv_timer_t* t) { static_cast<Worker*>(t->data)->OnParkTimer(); }, 2, 2);
  }
}

void Worker::OnParkTimer() {
  TouchClock();
  std::vector<ClientSession*> all;
  all.swap(parked_);
  for (ClientSession* c : all) {
    if (c->RetryParked()) {
      parked_.push_back(c);
    } else {
      c->in_park_list = false;
    }
  }
  if (parked_.empty()) uv_timer_stop(&park_timer_);
}

void Worker::MarkDirty(ClientSession* c) {
  if (c->dirty) return;
  c->dirty = true;
  dirty_clients_.push_back(c);
  // After Shutdown the idle handle is closed: started again, the loop's last turns would
  // poll with a zero timeout, for nothing (the check handle that flushes is closed too).
  if (!idle_active_ && !shut_down_) {
    idle_active_ = true;
    uv_idle_start(&idle_, [](uv_idle_t*) {});
  }
}

void Worker::MarkDirty(BackendConn* c) {
  if (c->dirty || c->dead()) return;
  c->dirty = true;
  dirty_conns_.push_back(c);
  if (!idle_active_ && !shut_down_) {
    idle_active_ = true;
    uv_idle_start(&idle_, [](uv_idle_t*) {});
  }
}

void Worker::Bury(BackendConn* c) {
  graveyard_.push_back(c);
  if (!idle_active_ && !shut_down_) {
    idle_active_ = true;
    uv_idle_start(&idle_, [](uv_idle_t*) {});
  }
}

void Worker::OnClientClosed(ClientSession* c) {
  budget_->clients.fetch_sub(1, std::memory_order_relaxed);
  clients_.erase(c);
  client_count_.store(clients_.size(), std::memory_order_relaxed);
  stats_.connections_closed++;
  closed_clients_.push_back(c);
  MarkDirty(c);
  FinishIfDrained();
}

bool Worker::TakeSpareRetry() {
  uint64_t t = now();
  if (spare_retry_used_ && t - spare_retry_taken_ms_ < 1000) return false;
  spare_retry_used_ = true;
  spare_retry_taken_ms_ = t;
  return true;
}

ClientSession* Worker::LargestHolder() {
  ClientSession* largest = nullptr;
  for (ClientSession* c : clients_) {
    if (!c->closed() && c->accounted() > 0 &&
        (largest == nullptr || c->accounted() > largest->accounted())) {
      largest = c;
    }
  }
  largest_held_.store(largest != nullptr ? largest->accounted() : 0, std::memory_order_relaxed);
  return largest;
}

void Worker::EnforceTotalBudget() {
  const int64_t bound = static_cast<int64_t>(config_->client.max_total_client_buffer_bytes);
  while (PublishReplyBytes() > bound) {
    // Largest first, as Redis's maxmemory-clients evicts: the client that holds the most is
    // the one not reading, and dropping it frees the most. Clients live on every worker, so
    // when another worker has published a larger holder, that worker is asked to drop it
    // rather than this one dropping its own smaller clients.
    ClientSession* largest = LargestHolder();
    size_t mine = largest != nullptr ? largest->accounted() : 0;
    Worker* bigger = nullptr;
    size_t biggest = mine;
    for (Worker* w : budget_->workers) {
      size_t theirs = w == this ? 0 : w->largest_held_.load(std::memory_order_relaxed);
      if (theirs > biggest) {
        biggest = theirs;
        bigger = w;
      }
    }
    if (bigger != nullptr) {
      bigger->RequestEnforce();
      return;
    }
    if (largest == nullptr) return;
    largest->DropForTotalBudget();
  }
}

void Worker::RequestEnforce() {
  // Under the lock: Shutdown() closes the async handle under it too, so it is never signalled
  // once closed (other workers call this).
  std::lock_guard<std::mutex> g(mu_);
  if (async_closed_) return;
  enforce_requested_ = true;
  uv_async_send(&async_);
}

void Worker::OnCheck() {
  const bool worked = !dirty_conns_.empty() || !dirty_clients_.empty();
  // Requests first, so a backend gets this turn's batch in one write; then replies.
  while (!dirty_conns_.empty() || !dirty_clients_.empty()) {
    for (size_t i = 0; i < dirty_conns_.size(); ++i) {
      BackendConn* c = dirty_conns_[i];
      c->dirty = false;
      if (!c->dead()) c->Flush();
    }
    dirty_conns_.clear();
    for (size_t i = 0; i < dirty_clients_.size(); ++i) {
      ClientSession* c = dirty_clients_[i];
      c->dirty = false;
      c->Flush();
    }
    dirty_clients_.clear();
  }
  if (reply_delta_ != 0) {
    bool grew = reply_delta_ > 0;
    if (PublishReplyBytes() > static_cast<int64_t>(config_->client.max_total_client_buffer_bytes) &&
        grew) {
      EnforceTotalBudget();
      // Clients it closed have flushed nothing more; their bytes are published next turn.
    }
  }
  for (BackendConn* c : graveyard_) delete c;
  graveyard_.clear();
  if (!closed_clients_.empty()) {
    auto keep = closed_clients_.begin();
    for (ClientSession* c : closed_clients_) {
      if (c->deletable()) {
        delete c;
      } else {
        *keep++ = c;
      }
    }
    closed_clients_.erase(keep, closed_clients_.end());
  }
  // Busy polling: a sleeping thread woken by the next packet starts late (the scheduler, and
  // in a VM the idle vCPU's halt), and a request through the proxy wakes it twice, for the
  // request and for the backend's answer. Within busy_poll_us of the last turn that moved
  // bytes the idle handle stays on, so libuv polls with a zero timeout instead of sleeping;
  // past it the worker sleeps as before, so an idle proxy costs nothing.
  bool spin = false;
  if (config_->busy_poll_us != 0 && !shut_down_) {
    const uint64_t now = uv_hrtime();
    if (worked) last_work_ns_ = now;
    spin = now - last_work_ns_ < config_->busy_poll_us * 1000;
  }
  if (spin) {
    if (!idle_active_) {
      idle_active_ = true;
      uv_idle_start(&idle_, [](uv_idle_t*) {});
    }
  } else if (idle_active_) {
    idle_active_ = false;
    uv_idle_stop(&idle_);
  }
}

size_t Worker::SpareLargeLimit() const {
  // Blocks kept warm are memory the total bound does not count: a quarter of it at most,
  // shared by the workers, and none while clients together hold more than half of it (the
  // bound's memory goes to them).
  const size_t total = config_->client.max_total_client_buffer_bytes;
  if (budget_->reply_bytes.load(std::memory_order_relaxed) > static_cast<int64_t>(total / 2)) {
    return 0;
  }
  return total / 4 / std::max<size_t>(1, budget_->workers.size());
}

void Worker::OnTick() {
  TouchClock();  // timeouts complete requests here
  uint64_t now = uv_now(&loop_);
  // While all clients together hold more than half the total bound, this worker's largest
  // holder is kept published, so the worker that goes over asks the right one to drop.
  if (budget_->reply_bytes.load(std::memory_order_relaxed) >
      static_cast<int64_t>(config_->client.max_total_client_buffer_bytes / 2)) {
    LargestHolder();
  } else {
    largest_held_.store(0, std::memory_order_relaxed);
  }
  // Collected first: a timeout's retry may open a pool of another class meanwhile.
  std::vector<BackendConn*> shared;
  ForEachShared([&shared](BackendConn* c) { shared.push_back(c); });
  for (BackendConn* c : shared) c->CheckTimeout(now);
  RetireStalled(now);
  SpareLargeBlocks::SetLimit(SpareLargeLimit());
  SpareLargeBlocks::Trim(now);
  if (now - last_sweep_ms_ >= 5000) {
    last_sweep_ms_ = now;
    CloseIdleClassPools(now);
    // Idle clients give their buffers back: ten thousand connections that wait cost their
    // sessions, not their last read's 64 KB.
    size_t trimmed = 0;
    for (ClientSession* c : clients_) trimmed += c->TrimIfIdle(now) ? 1 : 0;
    ClientSession::TrimRingPool();
    // The freed buffers are scattered through the heap: hand their pages back. So are large
    // values' buffers once they stop coming (none freed for a whole sweep after some were):
    // 50 clients that each read a 16 MB value left the idle proxy at 157 MB of RSS, 8 MB
    // after a trim. Not while they keep coming: their next buffers reuse those pages.
    const size_t large_freed = SpareLargeBlocks::TakeFreed();
    bool trim = trimmed >= 64 || (large_freed == 0 && large_freed_before_);
    // (Not under ASan: its allocator replaces glibc's, whose mallinfo2 then reads an arena
    // never set up, SEGV.)
#if !defined(__SANITIZE_ADDRESS__)
    if (!trim && now - last_trim_ms_ >= kTrimCheckMs) {
      // Large values that keep coming now and then (a 2 MB SET every 3 s) leave no quiet
      // sweep: what the allocator holds free is looked at once a minute as well (a trim
      // costs the loop about 10 ms, paid again in page faults if large values follow).
      trim = mallinfo2().fordblks >= kTrimFreeBytes;
      last_trim_ms_ = now;
    }
#endif
    if (trim) {
      malloc_trim(0);
      last_trim_ms_ = now;
    }
    large_freed_before_ = large_freed > 0;
  }
  if (!detached_.empty()) {
    std::vector<BackendConn*> all(detached_.begin(), detached_.end());
    for (BackendConn* c : all) {
      if (detached_.count(c)) c->CheckTimeout(now);
    }
  }
  if (!dedicated_.empty()) {
    // A timeout fails the connection, which may erase it from the set: iterate a copy.
    std::vector<BackendConn*> all(dedicated_.begin(), dedicated_.end());
    for (BackendConn* c : all) {
      if (!dedicated_.count(c)) continue;
      if (c->backend() != topology_.group(c->backend()->group())->primary()) {
        // A pinned session (transaction, subscription...) lives on the primary it started
        // on; once another node is the primary its state is gone for good: the client is
        // told and disconnected rather than left talking to a replica.
        c->Abort("the primary changed (failover); the session's state is lost");
        continue;
      }
      c->CheckTimeout(now);
    }
  }
}

void Worker::BeginDrain() {
  draining_ = true;
  Log().debug("worker {} draining {} clients", id_, clients_.size());
  std::vector<ClientSession*> all(clients_.begin(), clients_.end());
  for (ClientSession* c : all) c->StartDrain();
  uint64_t ms = static_cast<uint64_t>(config_->drain_timeout_s * 1000.0);
  uv_timer_start(
      &drain_timer_,
      [](uv_timer_t* t) {
        auto* self = static_cast<Worker*>(t->data);
        if (!self->clients_.empty()) {
          Log().warn("drain timeout: closing {} clients with requests still in flight",
                     self->clients_.size());
        }
        std::vector<ClientSession*> rest(self->clients_.begin(), self->clients_.end());
        for (ClientSession* c : rest) c->Close();
      },
      ms, 0);
  FinishIfDrained();
}

void Worker::FinishIfDrained() {
  if (draining_ && !shut_down_ && clients_.empty()) Shutdown();
}

void Worker::Shutdown() {
  shut_down_ = true;
  std::vector<BackendConn*> shared;
  ForEachShared([&shared](BackendConn* c) { shared.push_back(c); });
  for (BackendConn* c : shared) c->Shutdown("proxy shutting down", true);
  std::vector<BackendConn*> detached(detached_.begin(), detached_.end());
  for (BackendConn* c : detached) c->Shutdown("proxy shutting down", true);
  std::vector<BackendConn*> idle;
  idle.swap(idle_dedicated_);
  for (BackendConn* c : idle) c->Shutdown("proxy shutting down", true);
  auto close = [](auto* h) { uv_close(reinterpret_cast<uv_handle_t*>(h), nullptr); };
  {
    std::lock_guard<std::mutex> g(mu_);
    async_closed_ = true;
    close(&async_);
  }
  close(&check_);
  close(&idle_);
  close(&tick_);
  close(&drain_timer_);
  close(&park_timer_);
}

}  // namespace kp
