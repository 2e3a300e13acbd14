// Server: listening, accept hand-off, start-up and graceful shutdown.
#include "proxy/server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <sstream>
#include <thread>

#include "common/logging.h"
#include "proxy/admin_server.h"
#include "proxy/cluster_monitor.h"
#include "proxy/descriptors.h"
#include "proxy/proxy_info.h"
#include "proxy/replication_monitor.h"
#include "proxy/sentinel_client.h"
#include "proxy/tls_config.h"
#include "proxy/worker.h"

namespace kp {

Server::Server(Config config, CommandLine cli, EnvLookup env, const CommandTable& table)
    : config_(std::make_shared<const Config>(std::move(config))),
      cli_(std::move(cli)),
      env_(std::move(env)),
      topology_(std::make_unique<Topology>(*config_)),
      router_(table, !config_->deny_commands.empty()) {
  loop_ = uv_default_loop();
}

Server::~Server() = default;

bool Server::ListenOn(const std::string& host_in, uint16_t port, Listener* l) {
  std::string host = host_in;
  std::string shown = host + ":" + std::to_string(port);
  if (host.size() > 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* res = nullptr;
  int rc = getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
  if (rc != 0) {
    Log().critical("cannot listen on {}: {}", shown, gai_strerror(rc));
    return false;
  }
  std::string err = "no address";
  for (addrinfo* ai = res; ai; ai = ai->ai_next) {
    int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      err = std::strerror(errno);
      continue;
    }
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && ::listen(fd, 511) == 0) {
      l->fd = fd;
      break;
    }
    err = std::strerror(errno);
    ::close(fd);
  }
  freeaddrinfo(res);
  if (l->fd < 0) {
    Log().critical("cannot listen on {}: {}", shown, err);
    return false;
  }
  l->server = this;
  l->active = true;
  uv_poll_init(loop_, &l->poll, l->fd);
  l->poll.data = l;
  return true;
}

bool Server::Listen() {
  uv_timer_init(loop_, &accept_pause_);
  accept_pause_.data = this;
  if (config().listen.port != 0 &&
      !ListenOn(config().listen.host, config().listen.port, &listeners_[0])) {
    return false;
  }
  if (!config().tls_listen.empty()) {
    const std::string& t = config().tls_listen;
    size_t colon = t.rfind(':');
    listeners_[1].tls = true;
    if (!ListenOn(t.substr(0, colon), static_cast<uint16_t>(std::stoi(t.substr(colon + 1))),
                  &listeners_[1])) {
      return false;
    }
  }
  return true;
}

void Server::StartAccepting() {
  for (Listener& l : listeners_) {
    if (!l.active) continue;
    uv_poll_start(&l.poll, UV_READABLE, [](uv_poll_t* h, int status, int) {
      auto* listener = static_cast<Listener*>(h->data);
      if (status == 0) listener->server->OnAcceptable(*listener);
    });
  }
}

void Server::StopAccepting() {
  for (Listener& l : listeners_) {
    if (l.active) uv_poll_stop(&l.poll);
  }
}

void Server::AcceptWhenReady() {
  // Clients are taken once the primary has confirmed its role (a few milliseconds after
  // start), so the first requests find the topology known; at most a timeout later they are
  // taken whatever the state (requests then wait or get the error that says why). Until then
  // connections wait in the listen backlog.
  uv_timer_init(loop_, &ready_wait_);
  ready_wait_.data = this;
  ready_deadline_ms_ = uv_now(loop_) + static_cast<uint64_t>(config().timeout_s * 1000.0);
  uv_timer_start(
      &ready_wait_,
      [](uv_timer_t* t) {
        auto* self = static_cast<Server*>(t->data);
        bool ready;
        if (self->cluster_) {
          ready = self->cluster_->Ready();
        } else {
          const Backend* p = self->topology_->main().primary();
          ready = p != nullptr && p->serves_writes();
        }
        if (!ready && uv_now(self->loop_) < self->ready_deadline_ms_ && !self->shutting_down_) {
          return;
        }
        uv_timer_stop(t);
        uv_close(reinterpret_cast<uv_handle_t*>(t), nullptr);
        if (!self->shutting_down_) self->StartAccepting();
      },
      1, 1);
}

void Server::OnAcceptable(Listener& l) {
  // Accept everything queued; each socket goes to the next worker, which adopts it on its
  // own loop. This is the only cross-thread hand-off, and it is per connection, not per
  // request.
  for (int i = 0; i < 256; ++i) {
    int fd = ::accept4(l.fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
      if (errno == ECONNABORTED) continue;
      if (IsDescriptorShortage(errno)) {
        NoteDescriptorShortage("accepting a client");
        if (spare_fd_ >= 0) {
          RefuseOneWithSpare(l);
          continue;
        }
        // No spare either: the socket stays readable, so polling it would spin. Pause
        // accepting for a moment; established clients carry on.
        StopAccepting();
        uv_timer_start(
            &accept_pause_,
            [](uv_timer_t* t) {
              auto* self = static_cast<Server*>(t->data);
              if (self->shutting_down_) return;
              self->StartAccepting();
            },
            100, 0);
        return;
      }
      Log().error("accept: {}", std::strerror(errno));
      return;
    }
    // The spare may have been lost to a worker taking the descriptor it freed: try again.
    if (spare_fd_ < 0) spare_fd_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    uint64_t limit = std::min<uint64_t>(max_clients_, config().max_clients);
    if (budget_.clients.load(std::memory_order_relaxed) >= static_cast<int64_t>(limit)) {
      Refuse(fd);
      continue;
    }
    budget_.clients.fetch_add(1, std::memory_order_relaxed);
    workers_[next_worker_++ % workers_.size()]->AddClient(fd, l.tls);
  }
}

void Server::Refuse(int fd) {
  // What Redis answers past maxclients; the socket buffer of a new connection takes it.
  static const char kMsg[] = "-ERR max number of clients reached\r\n";
  ssize_t rc = ::send(fd, kMsg, sizeof kMsg - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
  (void)rc;
  ::close(fd);
  budget_.refused++;
}

void Server::RefuseOneWithSpare(Listener& l) {
  ::close(spare_fd_);
  spare_fd_ = -1;
  // (A TLS client gets the plaintext refusal: it sees a broken handshake, then the close.)
  int fd = ::accept4(l.fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (fd >= 0) Refuse(fd);
  spare_fd_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
}

int Server::Run() {
  {
    std::string error;
    if (!BuildTlsContexts(config(), &backend_tls_, &client_tls_, &error)) {
      std::fprintf(stderr, "kompress-proxy: config: %s\n", error.c_str());
      return 2;
    }
  }
  // The admin endpoint listens before the client port does: whoever sees the proxy accept
  // clients (a test, an orchestrator's probe) finds /healthz and /metrics there too. (The
  // callbacks run only once the loop does, when everything they use exists.)
  if (!config().admin_listen.empty()) {
    admin_ = std::make_unique<AdminServer>(
        loop_, *topology_,
        [this] {
          std::vector<const WorkerStats*> v;
          for (auto& w : workers_) v.push_back(&w->stats());
          return v;
        },
        [this] {
          size_t n = 0;
          for (auto& w : workers_) n += w->client_count();
          return n;
        });
    admin_->SetInfo([this] { return info_->Json(); });
    admin_->SetExtras([this] { return ExtraMetrics(); },
                      [this] {
                        if (cluster_) return cluster_->ReadyNotes();
                        return sentinels_ ? sentinels_->ReadyNotes() : std::string();
                      });
    if (!admin_->Start(config().admin_listen)) return 1;
  }

  if (!Listen()) return 1;
  unsigned n = config().workers;
  if (n == 0) n = std::max(1u, std::thread::hardware_concurrency());
  DescriptorPlan plan = PlanDescriptors(
      config().max_clients,
      // A cluster's size is learned later: room for 32 nodes, or twice the seeds.
      DescriptorReserve(n,
                        config().cluster() ? std::max<size_t>(32, config().cluster_nodes.size() * 2)
                                           : config().replicas.size() + 1,
                        // Discovered Sentinels: a subscription each (half a configured one).
                        config().sentinels.empty()
                            ? 0
                            : config().sentinels.size() + SentinelClient::kMaxDiscovered / 2,
                        !config().admin_listen.empty()));
  max_clients_ = plan.max_clients;
  if (plan.max_clients < config().max_clients) {
    Log().warn(
        "descriptor limit {} (ulimit -n) leaves room for {} clients after {} kept for backend, "
        "probe and admin connections: max_clients {} lowered to {}",
        plan.limit, plan.max_clients, plan.reserve, config().max_clients, plan.max_clients);
  } else {
    Log().info(
        "descriptor limit {}{}: up to {} clients ({} kept for backend, probe and admin "
        "connections)",
        plan.limit, plan.raised ? " (raised)" : "", plan.max_clients, plan.reserve);
  }
  spare_fd_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  for (unsigned i = 0; i < n; ++i) {
    workers_.push_back(std::make_unique<Worker>(i, config_, *topology_, router_));
    workers_.back()->SetBudget(&budget_);
    workers_.back()->SetCredentials(&credentials_);
    workers_.back()->SetTls(backend_tls_, client_tls_);
  }
  for (auto& w : workers_) budget_.workers.push_back(w.get());
  info_ = std::make_unique<ProxyInfo>(
      *topology_, workers_,
      config().listen.port != 0 ? config().listen.ToString() : config().tls_listen,
      cli_.config_file ? "file " + *cli_.config_file : std::string("flags and environment"));
  for (auto& w : workers_) w->SetInfo(info_.get());
  if (config().cluster()) {
    // Before the workers start: they signal it for a fresh slot map.
    cluster_ = std::make_unique<ClusterMonitor>(loop_, config_, *topology_);
    cluster_->SetTls(backend_tls_);
    if (admin_) admin_->SetCovered([this] { return cluster_->Covered(); });
  }
  for (auto& w : workers_) w->Start();

  if (cluster_) {
    cluster_->Start();
  } else {
    monitor_ = std::make_unique<ReplicationMonitor>(loop_, config_, topology_->main());
    monitor_->SetTls(backend_tls_);
    monitor_->Start();
  }
  if (!config().sentinels.empty()) {
    sentinels_ = std::make_unique<SentinelClient>(loop_, config_, *monitor_);
    sentinels_->SetTls(backend_tls_);
    sentinels_->Start();
  }
  AcceptWhenReady();

  uv_signal_init(loop_, &sigterm_);
  sigterm_.data = this;
  uv_signal_start(
      &sigterm_, [](uv_signal_t* s, int sig) { static_cast<Server*>(s->data)->BeginShutdown(sig); },
      SIGTERM);
  uv_signal_init(loop_, &sighup_);
  sighup_.data = this;
  uv_signal_start(
      &sighup_, [](uv_signal_t* s, int) { static_cast<Server*>(s->data)->Reload(); }, SIGHUP);
  uv_signal_init(loop_, &sigint_);
  sigint_.data = this;
  uv_signal_start(
      &sigint_, [](uv_signal_t* s, int sig) { static_cast<Server*>(s->data)->BeginShutdown(sig); },
      SIGINT);

  std::string where = config().listen.port != 0 ? config().listen.ToString() : std::string();
  if (!config().tls_listen.empty()) {
    where += (where.empty() ? "" : " and ") + config().tls_listen + " (TLS)";
  }
  if (config().backend_tls) where += "; TLS to backends";
  if (config().cluster()) {
    std::string seeds;
    for (const Endpoint& e : config().cluster_nodes) {
      seeds += (seeds.empty() ? "" : ",") + e.ToString();
    }
    Log().info("kompress-proxy listening on {} ({} workers); Redis Cluster from seeds [{}]", where,
               n, seeds);
  } else if (config().sentinels.empty()) {
    std::string replicas;
    for (const Endpoint& r : config().replicas)
      replicas += (replicas.empty() ? "" : ",") + r.ToString();
    Log().info("kompress-proxy listening on {} ({} workers); primary {}, replicas [{}]", where, n,
               config().primary.ToString(), replicas);
  } else {
    std::string sentinels;
    for (const Endpoint& e : config().sentinels) {
      sentinels += (sentinels.empty() ? "" : ",") + e.ToString();
    }
    Log().info("kompress-proxy listening on {} ({} workers); master {} from Sentinels [{}]", where,
               n, config().sentinel_master, sentinels);
  }

  uv_run(loop_, UV_RUN_DEFAULT);
  for (auto& w : workers_) w->Join();
  workers_.clear();
  Log().info("kompress-proxy stopped");
  return 0;
}

void Server::BeginShutdown(int signum) {
  if (shutting_down_) return;
  shutting_down_ = true;
  Log().info("{} received: draining (up to {}s)", signum == SIGTERM ? "SIGTERM" : "SIGINT",
             config().drain_timeout_s);
  for (Listener& l : listeners_) {
    if (!l.active) continue;
    l.active = false;
    uv_poll_stop(&l.poll);
    uv_close(reinterpret_cast<uv_handle_t*>(&l.poll), nullptr);
    ::close(l.fd);
    l.fd = -1;
  }
  uv_close(reinterpret_cast<uv_handle_t*>(&accept_pause_), nullptr);
  if (spare_fd_ >= 0) ::close(spare_fd_);
  spare_fd_ = -1;
  for (auto& w : workers_) w->RequestDrain();
  if (admin_) admin_->SetDraining();
  // Health checks and the admin endpoint keep running while workers drain (in-flight reads
  // may still fail over; /readyz says 503). Once every worker is done the main loop's
  // handles close and Run() returns.
  uv_timer_init(loop_, &drain_watch_);
  drain_watch_.data = this;
  uv_timer_start(
      &drain_watch_,
      [](uv_timer_t* t) {
        auto* self = static_cast<Server*>(t->data);
        for (auto& w : self->workers_) {
          if (!w->finished()) return;
        }
        uv_timer_stop(t);
        uv_close(reinterpret_cast<uv_handle_t*>(t), nullptr);
        if (self->monitor_) self->monitor_->Stop();
        if (self->cluster_) self->cluster_->Stop();
        if (self->sentinels_) self->sentinels_->Stop();
        if (self->admin_) self->admin_->Stop();
        uv_close(reinterpret_cast<uv_handle_t*>(&self->sigterm_), nullptr);
        uv_close(reinterpret_cast<uv_handle_t*>(&self->sigint_), nullptr);
        uv_close(reinterpret_cast<uv_handle_t*>(&self->sighup_), nullptr);
      },
      20, 20);
}

void Server::Reload() {
  Config fresh;
  try {
    fresh = LoadConfig(cli_, env_);
  } catch (const ConfigError& e) {
    info_->reloads_failed++;
    Log().error("reload refused, the running configuration stays: {}", e.what());
    return;
  }
  const Config& cur = config();
  // What the process was built around cannot change without a restart: said once, and the
  // running value is kept.
  std::string kept;
  auto keep = [&](bool changed, const char* key, auto restore) {
    if (!changed) return;
    kept += (kept.empty() ? "" : ", ") + std::string(key);
    restore();
  };
  keep(!(fresh.listen == cur.listen), "listen", [&] { fresh.listen = cur.listen; });
  keep(fresh.workers != cur.workers, "workers", [&] { fresh.workers = cur.workers; });
  keep(fresh.admin_listen != cur.admin_listen, "admin_listen",
       [&] { fresh.admin_listen = cur.admin_listen; });
  keep(fresh.tls_listen != cur.tls_listen, "tls_listen",
       [&] { fresh.tls_listen = cur.tls_listen; });
  keep(fresh.backend_connections != cur.backend_connections, "backend_connections",
       [&] { fresh.backend_connections = cur.backend_connections; });
  keep(fresh.deny_commands != cur.deny_commands, "deny_commands",
       [&] { fresh.deny_commands = cur.deny_commands; });
  keep(fresh.refresh_command_table != cur.refresh_command_table, "command_table",
       [&] { fresh.refresh_command_table = cur.refresh_command_table; });
  keep(fresh.cluster_nodes.empty() != cur.cluster_nodes.empty(), "cluster_nodes (cluster <-> not)",
       [&] {
         fresh.cluster_nodes = cur.cluster_nodes;
         fresh.sentinels = cur.sentinels;
         fresh.sentinel_master = cur.sentinel_master;
         fresh.primary = cur.primary;
         fresh.replicas = cur.replicas;
       });
  keep(fresh.sentinels.empty() != cur.sentinels.empty(), "sentinels (static <-> Sentinel)", [&] {
    fresh.sentinels = cur.sentinels;
    fresh.sentinel_master = cur.sentinel_master;
    fresh.primary = cur.primary;
    fresh.replicas = cur.replicas;
  });
  if (!kept.empty()) {
    Log().warn("reload: {} cannot change without a restart; keeping the running values", kept);
  }
  // The keys whose shown value changed (Describe masks secrets).
  std::string changed;
  {
    std::istringstream a(Describe(cur)), b(Describe(fresh));
    std::string la, lb;
    while (std::getline(a, la) && std::getline(b, lb)) {
      if (la == lb) continue;
      std::istringstream words(lb);
      std::string key;
      words >> key;
      changed += (changed.empty() ? "" : ", ") + key;
    }
  }
  // Certificates are read again (rotated ones take effect for new connections; open ones
  // keep their sessions). A file that cannot be used fails the reload as a whole.
  std::shared_ptr<const TlsContext> backend_tls, client_tls;
  {
    std::string error;
    if (!BuildTlsContexts(fresh, &backend_tls, &client_tls, &error)) {
      info_->reloads_failed++;
      Log().error("reload failed, configuration unchanged: config: {}", error);
      return;
    }
  }
  auto next = std::make_shared<const Config>(std::move(fresh));
  config_ = next;
  backend_tls_ = backend_tls;
  client_tls_ = client_tls;
  InitLogging(next->log_level, next->log_format);
  if (monitor_) {
    monitor_->Reconfigure(next);
    monitor_->SetTls(backend_tls_);
  }
  if (cluster_) {
    cluster_->Reconfigure(next);
    cluster_->SetTls(backend_tls_);
  }
  if (sentinels_) {
    sentinels_->Reconfigure(next);
    sentinels_->SetTls(backend_tls_);
  }
  for (auto& w : workers_) w->Reconfigure(next, backend_tls_, client_tls_);
  info_->reloads_ok++;
  if (backend_tls_ || client_tls_) {
    changed += std::string(changed.empty() ? "" : "; ") + "TLS certificates read again";
  }
  Log().info("configuration reloaded{}{}", changed.empty() ? " (no change)" : ": ", changed);
}

std::string Server::ExtraMetrics() const {
  std::string out =
      "# HELP kompress_config_reloads_total SIGHUP reloads, by result.\n"
      "# TYPE kompress_config_reloads_total counter\n"
      "kompress_config_reloads_total{result=\"ok\"} " +
      std::to_string(info_->reloads_ok.load()) +
      "\n"
      "kompress_config_reloads_total{result=\"failed\"} " +
      std::to_string(info_->reloads_failed.load()) + "\n";
  out +=
      "# HELP kompress_clients_refused_total Connections refused with -ERR max number of "
      "clients reached.\n"
      "# TYPE kompress_clients_refused_total counter\n"
      "kompress_clients_refused_total " +
      std::to_string(budget_.refused.value()) +
      "\n"
      "# HELP kompress_max_clients Clients accepted at most (max_clients, lowered to fit the "
      "descriptor limit).\n"
      "# TYPE kompress_max_clients gauge\n"
      "kompress_max_clients " +
      std::to_string(std::min<uint64_t>(max_clients_, config().max_clients)) +
      "\n"
      "# HELP kompress_descriptor_shortages_total Times a descriptor could not be had "
      "(accept, backend or probe connection).\n"
      "# TYPE kompress_descriptor_shortages_total counter\n"
      "kompress_descriptor_shortages_total " +
      std::to_string(DescriptorShortages()) +
      "\n"
      "# HELP kompress_client_buffer_bytes Reply bytes held for all clients together.\n"
      "# TYPE kompress_client_buffer_bytes gauge\n"
      "kompress_client_buffer_bytes " +
      std::to_string(std::max<int64_t>(0, budget_.reply_bytes.load())) + "\n";
  if (sentinels_) out += sentinels_->Metrics();
  if (cluster_) out += cluster_->Metrics();
  return out;
}

}  // namespace kp
