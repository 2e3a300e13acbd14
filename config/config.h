// Config: the plain, validated settings the proxy runs with. Built once at start-up by
// config_loader (parse -> validate -> build); nothing below reads files or the environment.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/resp_limits.h"

namespace kp {

struct Endpoint {
  std::string host;
  uint16_t port = 0;
  std::string ToString() const { return host + ":" + std::to_string(port); }
  bool operator==(const Endpoint&) const = default;
};

// Whether a configured or announced host name is this machine's loopback: two names of one
// node may differ only in that ("localhost" and "127.0.0.1").
inline bool IsLoopbackHost(std::string_view host) {
  return host == "localhost" || host.substr(0, 4) == "127." || host == "::1" || host == "[::1]";
}

enum class ReadPolicy {
  kRoundRobin,  // rotate over healthy replicas
  kRandom,      // pick a healthy replica at random
  kPrimary,     // send reads to the primary too (replicas only as a fallback target: never)
};

struct ClientLimits {
  // Per-client bytes buffered by the proxy (unparsed input plus unsent replies). A client
  // over it gets an error and is disconnected.
  size_t max_client_buffer_bytes = 1024ull * 1024 * 1024;
  // Requests a client may have in flight; past it the proxy stops reading from that client
  // until replies drain (backpressure, not an error).
  size_t max_pipeline_depth = 1024;
  // Request bytes plus expected reply bytes a client may have in flight on the shared
  // backend connections. Everyone's requests queue behind them in the same
  // connections, so this is what one client can put ahead of the others.
  size_t max_inflight_bytes = 4ull * 1024 * 1024;
  // Reply bytes held for all clients together (Redis 7's maxmemory-clients): past it the
  // clients holding the most are dropped first. Sized for a sidecar's memory limit.
  size_t max_total_client_buffer_bytes = 256ull * 1024 * 1024;
};

struct Config {
  // The topology comes from outside (the Sentinels, or the cluster) rather than this config:
  // it is expected to change, and requests may wait for it to.
  bool external_topology() const { return !sentinels.empty() || !cluster_nodes.empty(); }
  bool cluster() const { return !cluster_nodes.empty(); }

  Endpoint listen{"127.0.0.1", 6380};
  Endpoint primary{"localhost", 6379};
  std::vector<Endpoint> replicas;  // empty: the primary serves reads too
  // Redis Sentinel: when set, the primary and replicas come from these Sentinels (for the
  // master named sentinel_master) instead of primary/replicas, and failovers are followed.
  std::vector<Endpoint> sentinels;
  std::string sentinel_master;
  std::string sentinel_username;
  std::string sentinel_password;
  // Redis Cluster: seed nodes; when set the proxy learns the shards and their slots from the
  // cluster (instead of primary/replicas/sentinels) and routes each request by hash slot.
  std::vector<Endpoint> cluster_nodes;
  double timeout_s = 5.0;  // per command, backend side
  unsigned workers = 0;    // 0: one per core
  // Client connections at once; lowered at start-up to fit the descriptor limit.
  uint64_t max_clients = 10000;
  unsigned backend_connections = 1;  // multiplexed connections per worker per backend
  // TCP congestion control of connections over loopback (clients and backends on this host);
  // "system": whatever the kernel gives them. See proxy/loopback_tcp.h.
  std::string loopback_tcp_congestion = "reno";
  // After a loop turn that moved requests or replies, a worker keeps polling without sleeping
  // for this many microseconds (0: it sleeps in epoll_wait at once). See Worker::OnCheck.
  uint64_t busy_poll_us = 0;
  ReadPolicy read_policy = ReadPolicy::kRoundRobin;
  // Every backend gets INFO replication this often: liveness, and for replicas whether they
  // qualify for reads and how far they have replicated (read-your-writes waits on it).
  double health_check_interval_s = 0.1;
  // After a client's write, its reads go only to replicas that have replicated that write.
  bool read_your_writes = true;
  // A replica more than this far behind the primary gets no reads (0: no limit).
  double max_replica_lag_s = 1.0;
  uint64_t max_replica_lag_bytes = 0;
  double drain_timeout_s = 10.0;
  std::string log_level = "info";   // trace, debug, info, warn, error, critical, off
  std::string log_format = "text";  // text, or json (one object per line)
  std::string requirepass;          // proxy's own password; empty: no AUTH needed
  // auth_mode passthrough: a client's AUTH is checked by Redis, and its commands then run on
  // connections authenticated as that user (a connection class per user).
  bool auth_passthrough = false;
  std::string backend_username;  // sent as AUTH to every backend when set
  std::string backend_password;
  std::string admin_listen;  // host:port of the HTTP admin endpoint; empty: off
  // TLS to every backend connection (shared, dedicated, probes, Sentinels).
  bool backend_tls = false;
  std::string backend_tls_ca_file, backend_tls_ca_dir;
  std::string backend_tls_cert_file, backend_tls_key_file;  // mutual TLS
  std::string backend_tls_server_name;  // SNI and the name checked; empty: each node's host
  bool backend_tls_verify = true;       // the server's certificate and name are checked
  // TLS for clients: another listening address (alongside or instead of `listen`).
  std::string tls_listen;  // host:port; empty: off
  std::string tls_cert_file, tls_key_file, tls_ca_file;
  bool tls_auth_clients = false;  // clients must present a certificate the CA signed
  // Both sides.
  std::string tls_min_version = "1.2";
  std::string tls_ciphers, tls_ciphersuites;
  // Commands the proxy refuses ("name" or "name|subcommand", lower case): server-wide
  // operations that no application should send through a shared sidecar.
  std::vector<std::string> deny_commands = {"shutdown", "replicaof", "slaveof", "failover"};
  // At start-up, add the commands the primary knows and the built-in table does not (newer
  // Redis, modules) from its COMMAND reply; built-in rows always win.
  bool refresh_command_table = true;
  RespLimits resp;  // wire limits (array/bulk/request/inline/nesting)
  ClientLimits client;
};

}  // namespace kp
