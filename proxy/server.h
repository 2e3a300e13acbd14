// Server: the process. Owns the listening socket (accepting on the main loop and handing
// sockets to workers round-robin), the workers, the replication monitor, and signal handling
// for a graceful drain.
#pragma once

#include <uv.h>

#include <memory>
#include <vector>

#include "config/config.h"
#include "config/config_loader.h"
#include "proxy/backend.h"
#include "proxy/client_budget.h"
#include "proxy/command_table.h"
#include "proxy/credentials.h"
#include "proxy/router.h"
#include "proxy/tls.h"
#include "proxy/topology.h"

namespace kp {

class Worker;
class ReplicationMonitor;
class SentinelClient;
class ClusterMonitor;
class AdminServer;
class ProxyInfo;

class Server {
 public:
  // `cli` and `env` are kept to read the configuration again on SIGHUP.
  Server(Config config, CommandLine cli, EnvLookup env, const CommandTable& table);
  ~Server();
  // Runs until SIGTERM/SIGINT and the drain finish. Returns the process exit code.
  int Run();

 private:
  struct Listener {
    Server* server = nullptr;
    int fd = -1;
    uv_poll_t poll;
    bool tls = false;  // tls_listen: clients get a TLS session
    bool active = false;
  };
  bool Listen();
  bool ListenOn(const std::string& host, uint16_t port, Listener* l);
  void StartAccepting();
  void StopAccepting();
  void AcceptWhenReady();
  void OnAcceptable(Listener& l);

  void BeginShutdown(int signum);
  // SIGHUP: reads the configuration again (file, environment, same flags) and applies what
  // can change live; anything invalid leaves the running configuration as it is.
  void Reload();
  std::string ExtraMetrics() const;
  // Answers and closes a connection that cannot be served (max_clients reached).
  void Refuse(int fd);
  // Out of descriptors while clients wait to be accepted: the spare descriptor makes room to
  // accept one, tell it why and close it, so clients are refused rather than left hanging.
  void RefuseOneWithSpare(Listener& l);

  const Config& config() const { return *config_; }
  std::shared_ptr<const Config> config_;  // in force on the main thread
  CommandLine cli_;
  EnvLookup env_;
  std::unique_ptr<ProxyInfo> info_;
  std::unique_ptr<Topology> topology_;
  Router router_;
  uv_loop_t* loop_;
  Listener listeners_[2];  // listen, tls_listen
  std::shared_ptr<const TlsContext> backend_tls_, client_tls_;
  int spare_fd_ = -1;  // held for RefuseOneWithSpare
  ClientBudget budget_;
  Credentials credentials_;
  uint64_t max_clients_ = 0;  // config max_clients lowered to fit the descriptor limit
  uv_timer_t accept_pause_;   // re-arms accepting after running out of descriptors
  uv_timer_t ready_wait_;     // start-up: accepting begins once the primary is confirmed
  uint64_t ready_deadline_ms_ = 0;
  uv_signal_t sigterm_;
  uv_signal_t sigint_;
  uv_signal_t sighup_;
  std::unique_ptr<ReplicationMonitor> monitor_;  // without Redis Cluster
  std::unique_ptr<ClusterMonitor> cluster_;      // with it (a monitor per shard)
  std::unique_ptr<SentinelClient> sentinels_;    // with config `sentinels` only
  std::unique_ptr<AdminServer> admin_;
  uv_timer_t drain_watch_;  // polls for the workers to finish, then ends the main loop
  std::vector<std::unique_ptr<Worker>> workers_;
  size_t next_worker_ = 0;
  bool shutting_down_ = false;
};

}  // namespace kp
