// config_loader: turns the command line, the environment (KOMPRESS_* and the original
// Kompress Cache REDIS_* variables) and the optional YAML file into a validated Config.
// Three steps, as twemproxy's nc_conf.c does it: collect raw strings with their source
// (default < file < env < flag), validate each into a typed value, build the struct. Every
// setting is one row of Specs(), so flags, env names, help text and Describe() cannot drift.
#include "config/config_loader.h"

#include <arpa/inet.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace kp {
namespace {

constexpr size_t kKiB = 1024;
constexpr size_t kMiB = 1024 * kKiB;
constexpr size_t kGiB = 1024 * kMiB;

// Durations end up as libuv millisecond timers: below 1ms rounds to "no timeout at all".
constexpr double kMinDurationS = 0.001;
// Past a day is a slip (milliseconds written without "ms"), not a wish.
constexpr double kMaxDurationS = 86400;

// ---------------------------------------------------------------------------------------
// The settings table.

enum class Kind {
  kEndpoint,          // host:port
  kOptionalEndpoint,  // host:port, or empty for "off"
  kEndpointList,      // comma list or YAML list of host:port
  kDuration,          // seconds, optional s/ms suffix
  kInteger,           // whole number within [min, max]
  kSize,              // bytes, optional k/kb/m/mb/g/gb suffix
  kCount,             // whole number > 0, no units
  kReadPolicy,
  kLogLevel,
  kCommandTable,  // builtin | primary
  kLogFormat,     // text | json
  kAuthMode,      // proxy | passthrough
  kBool,          // true/false, yes/no, on/off, 1/0
  kLimitSize,     // like kSize, but 0 is allowed and means "no limit"
  kNameList,      // comma list or YAML list of command names ("name" or "name|sub")
  kString,
  kSecret,  // a string never echoed back in messages or Describe()
};

using Value = std::variant<Endpoint, std::vector<Endpoint>, double, uint64_t, std::string,
                           ReadPolicy, bool, std::vector<std::string>>;

struct KeySpec {
  std::string_view key;  // YAML path: "timeout", "limits.max_bulk_bytes"
  Kind kind;
  std::string_view meta;  // value placeholder in --help
  std::string_view help;
  double min = 0;  // kInteger: range; kDuration: min > 0 means zero is refused
  double max = 0;
  void (*apply)(Config&, const Value&);
  std::string (*show)(const Config&);
};

std::string FormatHostPort(const std::string& host, uint16_t port) {
  // An IPv6 literal needs brackets or the port is ambiguous.
  if (host.find(':') != std::string::npos) return "[" + host + "]:" + std::to_string(port);
  return host + ":" + std::to_string(port);
}

std::string FormatDuration(double s) {
  char buf[64];
  double ms = s * 1000;
  if (s < 1 && ms == std::floor(ms)) {
    std::snprintf(buf, sizeof buf, "%.0fms", ms);
  } else {
    std::snprintf(buf, sizeof buf, "%gs", s);
  }
  return buf;
}

std::string FormatSize(uint64_t n) {
  if (n != 0 && n % kGiB == 0) return std::to_string(n / kGiB) + "gb";
  if (n != 0 && n % kMiB == 0) return std::to_string(n / kMiB) + "mb";
  if (n != 0 && n % kKiB == 0) return std::to_string(n / kKiB) + "kb";
  return std::to_string(n);
}

std::string_view PolicyName(ReadPolicy p) {
  switch (p) {
    case ReadPolicy::kRoundRobin:
      return "round_robin";
    case ReadPolicy::kRandom:
      return "random";
    case ReadPolicy::kPrimary:
      return "primary";
  }
  return "?";
}

std::string FormatList(const std::vector<Endpoint>& list) {
  std::string out;
  for (const Endpoint& e : list) {
    if (!out.empty()) out += ",";
    out += FormatHostPort(e.host, e.port);
  }
  return out;
}

std::string ShowOrNone(const std::string& s, std::string_view none) {
  return s.empty() ? std::string(none) : s;
}

std::string ShowSecret(const std::string& s) {
  return s.empty() ? "(none)" : "***";
}

const std::vector<KeySpec>& Specs() {
  // Captureless lambdas decay to the function pointers above.
  static const std::vector<KeySpec> specs = {
      {"listen", Kind::kEndpoint, "HOST:PORT",
       "Address the proxy accepts clients on; empty: none (TLS clients only, on tls_listen).", 0, 0,
       [](Config& c, const Value& v) { c.listen = std::get<Endpoint>(v); },
       [](const Config& c) {
         return c.listen.port == 0 ? std::string("(off)")
                                   : FormatHostPort(c.listen.host, c.listen.port);
       }},
      {"primary", Kind::kEndpoint, "HOST:PORT", "Primary Redis: all writes, reads as fallback.", 0,
       0, [](Config& c, const Value& v) { c.primary = std::get<Endpoint>(v); },
       [](const Config& c) { return FormatHostPort(c.primary.host, c.primary.port); }},
      {"replicas", Kind::kEndpointList, "H:P,H:P",
       "Read replicas, comma-separated; empty: the primary serves reads.", 0, 0,
       [](Config& c, const Value& v) { c.replicas = std::get<std::vector<Endpoint>>(v); },
       [](const Config& c) {
         return ShowOrNone(FormatList(c.replicas), "(none: the primary serves reads)");
       }},
      {"sentinels", Kind::kEndpointList, "H:P,H:P",
       "Redis Sentinels to ask for the primary and replicas (instead of primary/replicas); "
       "failovers are followed.",
       0, 0, [](Config& c, const Value& v) { c.sentinels = std::get<std::vector<Endpoint>>(v); },
       [](const Config& c) { return ShowOrNone(FormatList(c.sentinels), "(none)"); }},
      {"sentinel_master", Kind::kString, "NAME", "The master name the Sentinels monitor.", 0, 0,
       [](Config& c, const Value& v) { c.sentinel_master = std::get<std::string>(v); },
       [](const Config& c) { return ShowOrNone(c.sentinel_master, "(none)"); }},
      {"sentinel_username", Kind::kString, "USER", "ACL user the proxy AUTHs to Sentinels as.", 0,
       0, [](Config& c, const Value& v) { c.sentinel_username = std::get<std::string>(v); },
       [](const Config& c) { return ShowOrNone(c.sentinel_username, "(none)"); }},
      {"sentinel_password", Kind::kSecret, "PASSWORD",
       "Password the proxy AUTHs to Sentinels with.", 0, 0,
       [](Config& c, const Value& v) { c.sentinel_password = std::get<std::string>(v); },
       [](const Config& c) { return ShowSecret(c.sentinel_password); }},
      {"cluster_nodes", Kind::kEndpointList, "H:P,H:P",
       "Redis Cluster seed nodes (instead of primary/replicas/sentinels): the proxy learns the "
       "shards and routes each request by hash slot.",
       0, 0,
       [](Config& c, const Value& v) { c.cluster_nodes = std::get<std::vector<Endpoint>>(v); },
       [](const Config& c) { return ShowOrNone(FormatList(c.cluster_nodes), "(none)"); }},
      {"timeout", Kind::kDuration, "SECONDS", "Per-command timeout on the backend side.", 1, 0,
       [](Config& c, const Value& v) { c.timeout_s = std::get<double>(v); },
       [](const Config& c) { return FormatDuration(c.timeout_s); }},
      {"max_clients", Kind::kInteger, "N",
       "Client connections at once (lowered to fit the descriptor limit); over it a client "
       "gets -ERR max number of clients reached.",
       1, 1000000, [](Config& c, const Value& v) { c.max_clients = std::get<uint64_t>(v); },
       [](const Config& c) { return std::to_string(c.max_clients); }},
      {"workers", Kind::kInteger, "N", "Worker threads; 0: one per core.", 0, 1024,
       [](Config& c, const Value& v) { c.workers = static_cast<unsigned>(std::get<uint64_t>(v)); },
       [](const Config& c) {
         return c.workers == 0 ? std::string("0 (one per core)") : std::to_string(c.workers);
       }},
      {"backend_connections", Kind::kInteger, "N",
       "Multiplexed connections per worker per backend.", 1, 64,
       [](Config& c, const Value& v) {
         c.backend_connections = static_cast<unsigned>(std::get<uint64_t>(v));
       },
       [](const Config& c) { return std::to_string(c.backend_connections); }},
      {"loopback_tcp_congestion", Kind::kString, "NAME",
       "TCP congestion control for connections over loopback (clients and backends on this "
       "host): nothing is lost there, and BBR, a common default, paces every packet with a "
       "timer; system: leave the kernel's choice.",
       0, 0,
       [](Config& c, const Value& v) { c.loopback_tcp_congestion = std::get<std::string>(v); },
       [](const Config& c) { return c.loopback_tcp_congestion; }},
      {"busy_poll_us", Kind::kInteger, "MICROSECONDS",
       "After moving requests or replies, each worker polls this long without sleeping before "
       "it waits in epoll: lower latency (no wake-up for an answer that comes within it) for "
       "CPU spent polling; 0: sleep at once.",
       0, 100000, [](Config& c, const Value& v) { c.busy_poll_us = std::get<uint64_t>(v); },
       [](const Config& c) {
         return c.busy_poll_us == 0 ? std::string("0 (off)") : std::to_string(c.busy_poll_us);
       }},
      {"read_policy", Kind::kReadPolicy, "POLICY",
       "How reads pick a replica: round_robin, random or primary.", 0, 0,
       [](Config& c, const Value& v) { c.read_policy = std::get<ReadPolicy>(v); },
       [](const Config& c) { return std::string(PolicyName(c.read_policy)); }},
      {"health_check_interval", Kind::kDuration, "SECONDS",
       "Time between backend probes (INFO replication: health, replica state and offsets).", 1, 0,
       [](Config& c, const Value& v) { c.health_check_interval_s = std::get<double>(v); },
       [](const Config& c) { return FormatDuration(c.health_check_interval_s); }},
      {"read_your_writes", Kind::kBool, "BOOL",
       "After a client's write, its reads go only to replicas that have replicated it (else "
       "the primary); false: reads spread over replicas whatever the client wrote.",
       0, 0, [](Config& c, const Value& v) { c.read_your_writes = std::get<bool>(v); },
       [](const Config& c) { return std::string(c.read_your_writes ? "true" : "false"); }},
      {"max_replica_lag", Kind::kDuration, "SECONDS",
       "A replica further behind the primary than this gets no reads; 0: no limit.", 0, 0,
       [](Config& c, const Value& v) { c.max_replica_lag_s = std::get<double>(v); },
       [](const Config& c) {
         return c.max_replica_lag_s == 0 ? std::string("0 (no limit)")
                                         : FormatDuration(c.max_replica_lag_s);
       }},
      {"max_replica_lag_bytes", Kind::kLimitSize, "SIZE",
       "A replica more than this many bytes of replication stream behind gets no reads; 0: no "
       "limit.",
       0, 0, [](Config& c, const Value& v) { c.max_replica_lag_bytes = std::get<uint64_t>(v); },
       [](const Config& c) {
         return c.max_replica_lag_bytes == 0 ? std::string("0 (no limit)")
                                             : FormatSize(c.max_replica_lag_bytes);
       }},
      {"drain_timeout", Kind::kDuration, "SECONDS",
       "On shutdown, how long in-flight requests may finish; 0: none.", 0, 0,
       [](Config& c, const Value& v) { c.drain_timeout_s = std::get<double>(v); },
       [](const Config& c) { return FormatDuration(c.drain_timeout_s); }},
      {"command_table", Kind::kCommandTable, "SOURCE",
       "builtin: only the Redis 7.0 table compiled in; primary: also learn the primary's extra "
       "commands (newer Redis, modules) at start-up.",
       0, 0,
       [](Config& c, const Value& v) {
         c.refresh_command_table = std::get<std::string>(v) == "primary";
       },
       [](const Config& c) {
         return std::string(c.refresh_command_table ? "primary" : "builtin");
       }},
      {"log_level", Kind::kLogLevel, "LEVEL",
       "trace, debug, info, warn, error, critical or off (logger kompress_cache).", 0, 0,
       [](Config& c, const Value& v) { c.log_level = std::get<std::string>(v); },
       [](const Config& c) { return c.log_level; }},
      {"log_format", Kind::kLogFormat, "FORMAT",
       "text, or json: one JSON object per line (time, level, logger, message).", 0, 0,
       [](Config& c, const Value& v) { c.log_format = std::get<std::string>(v); },
       [](const Config& c) { return c.log_format; }},
      {"auth_mode", Kind::kAuthMode, "MODE",
       "proxy: clients AUTH against requirepass; passthrough: Redis checks each client's AUTH "
       "(ACL users) and its commands run as that user.",
       0, 0,
       [](Config& c, const Value& v) {
         c.auth_passthrough = std::get<std::string>(v) == "passthrough";
       },
       [](const Config& c) { return std::string(c.auth_passthrough ? "passthrough" : "proxy"); }},
      {"requirepass", Kind::kSecret, "PASSWORD",
       "Password clients must AUTH with; empty: no AUTH needed.", 0, 0,
       [](Config& c, const Value& v) { c.requirepass = std::get<std::string>(v); },
       [](const Config& c) { return ShowSecret(c.requirepass); }},
      {"backend_username", Kind::kString, "USER", "ACL user the proxy AUTHs to backends as.", 0, 0,
       [](Config& c, const Value& v) { c.backend_username = std::get<std::string>(v); },
       [](const Config& c) { return ShowOrNone(c.backend_username, "(none)"); }},
      {"backend_password", Kind::kSecret, "PASSWORD", "Password the proxy AUTHs to backends with.",
       0, 0, [](Config& c, const Value& v) { c.backend_password = std::get<std::string>(v); },
       [](const Config& c) { return ShowSecret(c.backend_password); }},
      {"admin_listen", Kind::kOptionalEndpoint, "HOST:PORT",
       "HTTP admin endpoint (stats, health); empty: off.", 0, 0,
       [](Config& c, const Value& v) { c.admin_listen = std::get<std::string>(v); },
       [](const Config& c) { return ShowOrNone(c.admin_listen, "(off)"); }},
      {"backend_tls", Kind::kBool, "BOOL", "TLS to every backend and Sentinel connection.", 0, 0,
       [](Config& c, const Value& v) { c.backend_tls = std::get<bool>(v); },
       [](const Config& c) { return std::string(c.backend_tls ? "true" : "false"); }},
      {"backend_tls_ca_file", Kind::kString, "FILE",
       "CA certificates backends are verified against (default: the system's).", 0, 0,
       [](Config& c, const Value& v) { c.backend_tls_ca_file = std::get<std::string>(v); },
       [](const Config& c) { return ShowOrNone(c.backend_tls_ca_file, "(system)"); }},
      {"backend_tls_ca_dir", Kind::kString, "DIR", "A directory of CA certificates (c_rehash).", 0,
       0, [](Config& c, const Value& v) { c.backend_tls_ca_dir = std::get<std::string>(v); },
       [](const Config& c) { return ShowOrNone(c.backend_tls_ca_dir, "(none)"); }},
      {"backend_tls_cert_file", Kind::kString, "FILE",
       "Client certificate for backends that require one (mutual TLS).", 0, 0,
       [](Config& c, const Value& v) { c.backend_tls_cert_file = std::get<std::string>(v); },
       [](const Config& c) { return ShowOrNone(c.backend_tls_cert_file, "(none)"); }},
      {"backend_tls_key_file", Kind::kString, "FILE", "Its private key.", 0, 0,
       [](Config& c, const Value& v) { c.backend_tls_key_file = std::get<std::string>(v); },
       [](const Config& c) { return ShowOrNone(c.backend_tls_key_file, "(none)"); }},
      {"backend_tls_server_name", Kind::kString, "NAME",
       "SNI and the name backends' certificates must carry; empty: each node's host.", 0, 0,
       [](Config& c, const Value& v) { c.backend_tls_server_name = std::get<std::string>(v); },
       [](const Config& c) { return ShowOrNone(c.backend_tls_server_name, "(each node's host)"); }},
      {"backend_tls_verify", Kind::kBool, "BOOL",
       "Verify backends' certificates and names; false only for testing.", 0, 0,
       [](Config& c, const Value& v) { c.backend_tls_verify = std::get<bool>(v); },
       [](const Config& c) { return std::string(c.backend_tls_verify ? "true" : "false"); }},
      {"tls_listen", Kind::kOptionalEndpoint, "HOST:PORT",
       "Where TLS clients connect (alongside listen); empty: off.", 0, 0,
       [](Config& c, const Value& v) { c.tls_listen = std::get<std::string>(v); },
       [](const Config& c) { return ShowOrNone(c.tls_listen, "(off)"); }},
      {"tls_cert_file", Kind::kString, "FILE", "Certificate presented to TLS clients.", 0, 0,
       [](Config& c, const Value& v) { c.tls_cert_file = std::get<std::string>(v); },
       [](const Config& c) { return ShowOrNone(c.tls_cert_file, "(none)"); }},
      {"tls_key_file", Kind::kString, "FILE", "Its private key.", 0, 0,
       [](Config& c, const Value& v) { c.tls_key_file = std::get<std::string>(v); },
       [](const Config& c) { return ShowOrNone(c.tls_key_file, "(none)"); }},
      {"tls_ca_file", Kind::kString, "FILE",
       "CA certificates client certificates are verified against.", 0, 0,
       [](Config& c, const Value& v) { c.tls_ca_file = std::get<std::string>(v); },
       [](const Config& c) { return ShowOrNone(c.tls_ca_file, "(none)"); }},
      {"tls_auth_clients", Kind::kBool, "BOOL",
       "TLS clients must present a certificate tls_ca_file signed.", 0, 0,
       [](Config& c, const Value& v) { c.tls_auth_clients = std::get<bool>(v); },
       [](const Config& c) { return std::string(c.tls_auth_clients ? "true" : "false"); }},
      {"tls_min_version", Kind::kString, "VERSION", "Oldest TLS version accepted: 1.2 or 1.3.", 0,
       0, [](Config& c, const Value& v) { c.tls_min_version = std::get<std::string>(v); },
       [](const Config& c) { return c.tls_min_version; }},
      {"tls_ciphers", Kind::kString, "LIST", "TLS 1.2 cipher list (OpenSSL syntax).", 0, 0,
       [](Config& c, const Value& v) { c.tls_ciphers = std::get<std::string>(v); },
       [](const Config& c) { return ShowOrNone(c.tls_ciphers, "(OpenSSL's default)"); }},
      {"tls_ciphersuites", Kind::kString, "LIST", "TLS 1.3 cipher suites (OpenSSL syntax).", 0, 0,
       [](Config& c, const Value& v) { c.tls_ciphersuites = std::get<std::string>(v); },
       [](const Config& c) { return ShowOrNone(c.tls_ciphersuites, "(OpenSSL's default)"); }},
      {"deny_commands", Kind::kNameList, "CMD,CMD",
       "Commands the proxy refuses (\"name\" or \"name|subcommand\"); empty: none.", 0, 0,
       [](Config& c, const Value& v) { c.deny_commands = std::get<std::vector<std::string>>(v); },
       [](const Config& c) {
         std::string out;
         for (const std::string& n : c.deny_commands) out += (out.empty() ? "" : ",") + n;
         return ShowOrNone(out, "(none)");
       }},
      {"limits.max_array_len", Kind::kCount, "N", "Most elements in one request array.", 0, 0,
       [](Config& c, const Value& v) { c.resp.max_array_len = std::get<uint64_t>(v); },
       [](const Config& c) { return std::to_string(c.resp.max_array_len); }},
      {"limits.max_bulk_bytes", Kind::kSize, "SIZE", "Largest bulk string in a request.", 0, 0,
       [](Config& c, const Value& v) { c.resp.max_bulk_len = std::get<uint64_t>(v); },
       [](const Config& c) { return FormatSize(c.resp.max_bulk_len); }},
      {"limits.max_request_bytes", Kind::kSize, "SIZE", "Largest whole request.", 0, 0,
       [](Config& c, const Value& v) { c.resp.max_request_bytes = std::get<uint64_t>(v); },
       [](const Config& c) { return FormatSize(c.resp.max_request_bytes); }},
      {"limits.max_inline_bytes", Kind::kSize, "SIZE", "Longest inline command line.", 0, 0,
       [](Config& c, const Value& v) { c.resp.max_inline_len = std::get<uint64_t>(v); },
       [](const Config& c) { return FormatSize(c.resp.max_inline_len); }},
      {"limits.max_reply_nesting", Kind::kCount, "N", "Deepest aggregate nesting in a reply.", 0, 0,
       [](Config& c, const Value& v) { c.resp.max_nesting = std::get<uint64_t>(v); },
       [](const Config& c) { return std::to_string(c.resp.max_nesting); }},
      {"limits.max_client_buffer_bytes", Kind::kSize, "SIZE",
       "Bytes buffered per client (input + unsent replies); over it: disconnected.", 0, 0,
       [](Config& c, const Value& v) { c.client.max_client_buffer_bytes = std::get<uint64_t>(v); },
       [](const Config& c) { return FormatSize(c.client.max_client_buffer_bytes); }},
      {"limits.max_total_client_buffer_bytes", Kind::kSize, "SIZE",
       "Reply bytes held for all clients together; over it the clients holding most are "
       "dropped.",
       0, 0,
       [](Config& c, const Value& v) {
         c.client.max_total_client_buffer_bytes = std::get<uint64_t>(v);
       },
       [](const Config& c) { return FormatSize(c.client.max_total_client_buffer_bytes); }},
      {"limits.max_pipeline_depth", Kind::kCount, "N",
       "Requests in flight per client before the proxy stops reading it.", 0, 0,
       [](Config& c, const Value& v) { c.client.max_pipeline_depth = std::get<uint64_t>(v); },
       [](const Config& c) { return std::to_string(c.client.max_pipeline_depth); }},
      {"limits.max_inflight_bytes", Kind::kSize, "SIZE",
       "Request plus expected reply bytes per client in flight on shared backend connections "
       "(replies it has not read yet count too) before the proxy stops reading it.",
       0, 0, [](Config& c, const Value& v) { c.client.max_inflight_bytes = std::get<uint64_t>(v); },
       [](const Config& c) { return FormatSize(c.client.max_inflight_bytes); }},
  };
  return specs;
}

const KeySpec* FindSpec(std::string_view key) {
  for (const KeySpec& s : Specs()) {
    if (s.key == key) return &s;
  }
  return nullptr;
}

// "limits.max_bulk_bytes" -> "max_bulk_bytes": env vars and flags are flat.
std::string_view LeafName(std::string_view key) {
  size_t dot = key.rfind('.');
  return dot == std::string_view::npos ? key : key.substr(dot + 1);
}

std::string EnvName(const KeySpec& s) {
  std::string out = "KOMPRESS_";
  for (char c : LeafName(s.key))
    out += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

std::string FlagName(const KeySpec& s) {
  std::string out = "--";
  for (char c : LeafName(s.key)) out += c == '_' ? '-' : c;
  return out;
}

// ---------------------------------------------------------------------------------------
// Errors: one line, "config: KEY: "VALUE": REASON (from SOURCE)".

// Keeps the message on one line and bounded whatever bytes the value holds.
std::string Quote(std::string_view v) {
  constexpr size_t kMaxShown = 120;
  std::string out = "\"";
  for (size_t i = 0; i < v.size() && i < kMaxShown; ++i) {
    unsigned char c = static_cast<unsigned char>(v[i]);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  if (v.size() > kMaxShown) out += "...";
  return out + "\"";
}

[[noreturn]] void Fail(std::string_view key, std::string_view value, std::string_view reason,
                       std::string_view source) {
  std::string msg =
      "config: " + std::string(key) + ": " + Quote(value) + ": " + std::string(reason);
  if (!source.empty()) msg += " (from " + std::string(source) + ")";
  throw ConfigError(msg);
}

// For errors that have no single value to show (file-level, type errors).
[[noreturn]] void FailPlain(std::string_view what, std::string_view source) {
  std::string msg = "config: " + std::string(what);
  if (!source.empty()) msg += " (from " + std::string(source) + ")";
  throw ConfigError(msg);
}

// ---------------------------------------------------------------------------------------
// Step 1: collect raw strings with their source.

struct RawItem {
  std::string text;
  std::string source;  // "file cfg.yaml:3", "env REDIS_PORT", "flag --timeout"
};

struct RawValue {
  RawItem value;
  // A YAML sequence (replicas only); each element keeps its own line.
  std::optional<std::vector<RawItem>> list;
  // primary only: REDIS_HOST / REDIS_PORT replace one half of the lower-layer value, so
  // REDIS_PORT alone keeps the host from the file or the default.
  std::optional<RawItem> host_override;
  std::optional<RawItem> port_override;
};

using RawMap = std::map<std::string, RawValue, std::less<>>;

std::string_view YamlTypeName(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Map:
      return "a map";
    case YAML::NodeType::Sequence:
      return "a list";
    default:
      return "a scalar";
  }
}

// "cfg.yaml:3", or just the path when yaml-cpp has no position for the node.
std::string FileWhere(const std::string& path, const YAML::Node& n) {
  const YAML::Mark m = n.Mark();
  if (m.line < 0) return path;
  return path + ":" + std::to_string(m.line + 1);
}

std::string FileSource(const std::string& path, const YAML::Node& n) {
  return "file " + FileWhere(path, n);
}

// A key as it appears in "unknown key 'x'": escaped like Quote() so the line stays one line.
std::string KeyName(std::string_view key) {
  std::string q = Quote(key);
  return "'" + q.substr(1, q.size() - 2) + "'";
}

// One YAML value into a RawValue, refusing shapes the key cannot take.
RawValue FromYaml(const KeySpec& spec, const YAML::Node& value, const std::string& source,
                  const std::string& path) {
  RawValue raw;
  raw.value.source = source;
  if (value.IsNull()) return raw;  // "key:" with nothing: the empty string
  if (value.IsScalar()) {
    raw.value.text = value.Scalar();
    return raw;
  }
  if (value.IsSequence() && (spec.kind == Kind::kEndpointList || spec.kind == Kind::kNameList)) {
    raw.list.emplace();
    for (const YAML::Node& item : value) {
      std::string item_source = FileSource(path, item);
      if (!item.IsScalar()) {
        FailPlain(std::string(spec.key) + ": each entry must be a " +
                      (spec.kind == Kind::kNameList ? "command name" : "\"host:port\" string") +
                      ", got " + std::string(YamlTypeName(item)),
                  item_source);
      }
      raw.list->push_back({item.Scalar(), item_source});
    }
    return raw;
  }
  std::string hint;
  if (value.IsSequence() &&
      (spec.kind == Kind::kEndpoint || spec.kind == Kind::kOptionalEndpoint)) {
    // [::1]:6380 unquoted is a YAML flow list.
    hint = " (quote IPv6 addresses: \"[::1]:6380\")";
  }
  FailPlain(std::string(spec.key) + ": expected a single value, got " +
                std::string(YamlTypeName(value)) + hint,
            source);
}

void CollectFile(const std::string& path, const std::string& path_source, RawMap* raw) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    Fail("config", path, "is a directory, expected a YAML file", path_source);
  }
  std::ifstream in(path);
  if (!in) Fail("config", path, std::string("cannot open: ") + std::strerror(errno), path_source);
  std::stringstream content;
  content << in.rdbuf();

  YAML::Node root;
  try {
    root = YAML::Load(content.str());
  } catch (const YAML::Exception& e) {
    std::string where = path;
    if (e.mark.line >= 0) {
      where += ":" + std::to_string(e.mark.line + 1) + ":" + std::to_string(e.mark.column + 1);
    }
    FailPlain(where + ": YAML syntax error: " + e.msg, path_source);
  }
  if (root.IsNull()) return;  // an empty file: all defaults
  if (!root.IsMap()) {
    FailPlain(path + ": expected a map of settings at the top level, got " +
                  std::string(YamlTypeName(root)),
              path_source);
  }

  // yaml-cpp keeps repeated keys; refuse them instead of letting one silently win.
  std::set<std::string, std::less<>> seen;
  auto take = [&](const YAML::Node& k, const YAML::Node& v, std::string_view prefix) {
    std::string where = FileWhere(path, k);
    if (!k.IsScalar()) throw ConfigError("config: keys must be plain names, in " + where);
    std::string key = std::string(prefix) + k.Scalar();
    if (!seen.insert(key).second) {
      throw ConfigError("config: duplicate key " + KeyName(key) + " in " + where);
    }
    const KeySpec* spec = FindSpec(key);
    if (spec == nullptr) {
      std::string hint;
      if (prefix.empty() && FindSpec("limits." + k.Scalar()) != nullptr) {
        hint = " (it belongs under limits:)";
      } else if (!prefix.empty() && FindSpec(k.Scalar()) != nullptr) {
        hint = " (it belongs at the top level, not under limits:)";
      }
      throw ConfigError("config: unknown key " + KeyName(key) + " in " + where + hint);
    }
    (*raw)[key] = FromYaml(*spec, v, "file " + where, path);
  };

  for (const auto& kv : root) {
    if (kv.first.IsScalar() && kv.first.Scalar() == "limits") {
      std::string where = FileWhere(path, kv.first);
      if (!seen.insert("limits").second) {
        throw ConfigError("config: duplicate key 'limits' in " + where);
      }
      if (kv.second.IsNull()) continue;
      if (!kv.second.IsMap()) {
        FailPlain("limits: expected a map, got " + std::string(YamlTypeName(kv.second)),
                  "file " + where);
      }
      for (const auto& lkv : kv.second) take(lkv.first, lkv.second, "limits.");
      continue;
    }
    take(kv.first, kv.second, "");
  }
}

// An environment variable set to "" counts as unset: compose files pass unset shell
// variables through as empty ones, and an empty KOMPRESS_REQUIREPASS must not switch
// AUTH off behind the user's back. Replicas are the exception (see CollectEnv).
std::optional<std::string> EnvValue(const EnvLookup& env, const std::string& name,
                                    bool empty_is_value) {
  const char* v = env(name.c_str());
  if (v == nullptr) return std::nullopt;
  if (*v == '\0' && !empty_is_value) return std::nullopt;
  return std::string(v);
}

// Base value for primary when REDIS_HOST/REDIS_PORT patch it: the file's, else the default.
RawValue& PrimaryBase(RawMap* raw) {
  auto it = raw->find("primary");
  if (it != raw->end()) return it->second;
  RawValue& r = (*raw)["primary"];
  r.value = {FindSpec("primary")->show(Config{}), "default"};
  return r;
}

void CollectEnv(const EnvLookup& env, RawMap* raw) {
  for (const KeySpec& spec : Specs()) {
    std::string name = EnvName(spec);
    // REDIS_REPLICAS_HOST_PORT documents "" as "no replicas"; KOMPRESS_REPLICAS matches it.
    bool empty_is_value = spec.kind == Kind::kEndpointList;
    if (auto v = EnvValue(env, name, empty_is_value)) {
      (*raw)[std::string(spec.key)] = RawValue{{*v, "env " + name}, {}, {}, {}};
    }
  }
  // The original Kompress Cache variables, each below its KOMPRESS_ twin.
  if (!EnvValue(env, "KOMPRESS_REPLICAS", true)) {
    if (auto v = EnvValue(env, "REDIS_REPLICAS_HOST_PORT", true)) {
      (*raw)["replicas"] = RawValue{{*v, "env REDIS_REPLICAS_HOST_PORT"}, {}, {}, {}};
    }
  }
  if (!EnvValue(env, "KOMPRESS_TIMEOUT", false)) {
    if (auto v = EnvValue(env, "REDIS_TIMEOUT", false)) {
      (*raw)["timeout"] = RawValue{{*v, "env REDIS_TIMEOUT"}, {}, {}, {}};
    }
  }
  if (!EnvValue(env, "KOMPRESS_PRIMARY", false)) {
    auto host = EnvValue(env, "REDIS_HOST", false);
    auto port = EnvValue(env, "REDIS_PORT", false);
    if (host || port) {
      RawValue& base = PrimaryBase(raw);
      if (host) base.host_override = RawItem{*host, "env REDIS_HOST"};
      if (port) base.port_override = RawItem{*port, "env REDIS_PORT"};
    }
  }
}

void CollectCli(const CommandLine& cli, RawMap* raw) {
  for (const auto& [key, value] : cli.settings) {
    const KeySpec* spec = FindSpec(key);
    if (spec == nullptr) throw ConfigError("config: unknown key '" + key + "' on the command line");
    // A flag replaces the whole value, REDIS_HOST/REDIS_PORT patches included.
    (*raw)[key] = RawValue{{value, "flag " + FlagName(*spec)}, {}, {}, {}};
  }
}

RawMap Collect(const CommandLine& cli, const EnvLookup& env) {
  RawMap raw;
  if (cli.config_file) {
    CollectFile(*cli.config_file, "flag --config", &raw);
  } else if (auto path = EnvValue(env, "KOMPRESS_CONFIG", false)) {
    CollectFile(*path, "env KOMPRESS_CONFIG", &raw);
  }
  CollectEnv(env, &raw);
  CollectCli(cli, &raw);
  return raw;
}

// ---------------------------------------------------------------------------------------
// Step 2: validate raw strings into typed values. Parsers return a reason on failure.

std::string_view Trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

bool IsDigit(char c) {
  return c >= '0' && c <= '9';
}

// Leading decimal digits of s as a number; false on overflow. *used = digits consumed,
// counted even on overflow so "99999999999999999999" reads as too large, not as garbage.
bool ParseDigits(std::string_view s, uint64_t* out, size_t* used) {
  uint64_t v = 0;
  bool fits = true;
  size_t i = 0;
  for (; i < s.size() && IsDigit(s[i]); ++i) {
    uint64_t d = static_cast<uint64_t>(s[i] - '0');
    if (v > (UINT64_MAX - d) / 10) fits = false;
    if (fits) v = v * 10 + d;
  }
  *out = v;
  *used = i;
  return fits;
}

bool IsIpv6(std::string_view host) {
  // A zone ("fe80::1%eth0") is legal in an address we connect to; inet_pton wants it off.
  std::string addr(host.substr(0, host.find('%')));
  if (host.find('%') != std::string_view::npos && host.size() == addr.size() + 1) return false;
  in6_addr tmp{};
  return inet_pton(AF_INET6, addr.c_str(), &tmp) == 1;
}

// Empty when host is a plausible host name or IPv4 address.
std::string CheckHost(std::string_view host) {
  if (host.empty()) return "missing host, expected host:port";
  if (host.size() > 253) return "host name longer than 253 characters";
  bool dotted_digits = true;
  for (char c : host) dotted_digits = dotted_digits && (IsDigit(c) || c == '.');
  if (dotted_digits) {
    in_addr tmp{};
    if (inet_pton(AF_INET, std::string(host).c_str(), &tmp) != 1) {
      return "host " + Quote(host) + " is not a valid IPv4 address";
    }
    return "";
  }
  size_t label = 0;
  for (size_t i = 0; i < host.size(); ++i) {
    char c = host[i];
    if (c == '.') {
      if (label == 0) return "host " + Quote(host) + " has an empty label";
      label = 0;
      continue;
    }
    // '_' is not in RFC 1123 but Docker and Compose service names use it.
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_') {
      return "host " + Quote(host) + " contains " + Quote(std::string_view(&host[i], 1));
    }
    if (++label > 63) return "host " + Quote(host) + " has a label longer than 63 characters";
  }
  return "";
}

struct EndpointResult {
  std::optional<Endpoint> endpoint;
  std::string reason;
  bool port_at_fault = false;  // lets REDIS_PORT, not REDIS_HOST, take the blame
};

EndpointResult ParseEndpoint(std::string_view text) {
  EndpointResult r;
  std::string_view s = Trim(text);
  if (s.empty()) {
    r.reason = "empty address, expected host:port";
    return r;
  }
  std::string_view host;
  std::string_view port;
  if (s.front() == '[') {
    size_t close = s.find(']');
    if (close == std::string_view::npos) {
      r.reason = "missing ']' after the IPv6 address";
      return r;
    }
    host = s.substr(1, close - 1);
    std::string_view rest = s.substr(close + 1);
    if (rest.empty() || rest == ":") {
      r.reason = "missing port, expected [ipv6]:port";
      r.port_at_fault = true;
      return r;
    }
    if (rest.front() != ':') {
      r.reason = "expected ':' and a port after ']'";
      return r;
    }
    port = rest.substr(1);
    if (!IsIpv6(host)) {
      r.reason = Quote(host) + " is not a valid IPv6 address";
      return r;
    }
  } else {
    size_t colon = s.find(':');
    if (colon == std::string_view::npos) {
      r.reason = "missing port, expected host:port";
      r.port_at_fault = true;
      return r;
    }
    if (s.find(':', colon + 1) != std::string_view::npos) {
      r.reason = "too many ':' (write an IPv6 address in brackets: [::1]:6379)";
      return r;
    }
    host = s.substr(0, colon);
    port = s.substr(colon + 1);
    if (std::string why = CheckHost(host); !why.empty()) {
      r.reason = why;
      return r;
    }
  }
  if (port.empty()) {
    r.reason = "missing port, expected host:port";
    r.port_at_fault = true;
    return r;
  }
  r.port_at_fault = true;
  uint64_t n = 0;
  size_t used = 0;
  bool fits = ParseDigits(port, &n, &used);
  bool negative = port.front() == '-' && port.size() > 1 && IsDigit(port[1]);
  if (!negative && used != port.size()) {
    r.reason = "port " + Quote(port) + " is not a number";
    return r;
  }
  if (negative || !fits || n < 1 || n > 65535) {
    r.reason = "port must be 1-65535";
    return r;
  }
  r.endpoint = Endpoint{std::string(host), static_cast<uint16_t>(n)};
  r.port_at_fault = false;
  return r;
}

Endpoint ValidateEndpoint(std::string_view key, const RawItem& item) {
  EndpointResult r = ParseEndpoint(item.text);
  if (!r.endpoint) Fail(key, item.text, r.reason, item.source);
  return *r.endpoint;
}

// primary: the lower-layer value with REDIS_HOST / REDIS_PORT substituted.
Endpoint ValidatePrimary(std::string_view key, const RawValue& raw) {
  if (!raw.host_override && !raw.port_override) return ValidateEndpoint(key, raw.value);
  Endpoint base = ValidateEndpoint(key, raw.value);
  std::string host = base.host;
  std::string port = std::to_string(base.port);
  const RawItem* host_from = &raw.value;
  const RawItem* port_from = &raw.value;
  if (raw.host_override) {
    host = std::string(Trim(raw.host_override->text));
    host_from = &*raw.host_override;
    // The original hands REDIS_HOST to redis-py as a bare host, so "::1" is legal there.
    if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
      host = host.substr(1, host.size() - 2);
    }
  }
  if (raw.port_override) {
    port = std::string(Trim(raw.port_override->text));
    port_from = &*raw.port_override;
  }
  bool has_colon = host.find(':') != std::string::npos;
  std::string combined = has_colon ? "[" + host + "]:" + port : host + ":" + port;
  if (has_colon && !IsIpv6(host)) {
    Fail(key, combined,
         raw.host_override
             ? "REDIS_HOST must be a host without a port (the port goes in REDIS_PORT)"
             : "invalid host",
         host_from->source);
  }
  EndpointResult r = ParseEndpoint(combined);
  if (!r.endpoint) Fail(key, combined, r.reason, (r.port_at_fault ? port_from : host_from)->source);
  return *r.endpoint;
}

// A list value's items: a YAML sequence's entries, or a comma-separated string's parts.
std::vector<RawItem> ListItems(const RawValue& raw) {
  if (raw.list) return *raw.list;
  std::vector<RawItem> items;
  std::string_view s = raw.value.text;
  while (true) {
    size_t comma = s.find(',');
    items.push_back({std::string(s.substr(0, comma)), raw.value.source});
    if (comma == std::string_view::npos) break;
    s.remove_prefix(comma + 1);
  }
  return items;
}

std::vector<Endpoint> ValidateEndpointList(std::string_view key, const RawValue& raw) {
  std::vector<RawItem> items = ListItems(raw);
  std::vector<Endpoint> out;
  for (const RawItem& item : items) {
    // Empty entries ("a:1,", " , ") are skipped: the original split on ',' and an empty
    // REDIS_REPLICAS_HOST_PORT means "no replicas".
    if (Trim(item.text).empty()) continue;
    Endpoint e = ValidateEndpoint(key, item);
    for (const Endpoint& seen : out) {
      // A duplicate would quietly double that replica's share of reads.
      if (seen == e) Fail(key, item.text, "listed twice", item.source);
    }
    out.push_back(e);
  }
  return out;
}

std::vector<std::string> ValidateNameList(std::string_view key, const RawValue& raw) {
  std::vector<RawItem> items = ListItems(raw);
  std::vector<std::string> out;
  for (const RawItem& item : items) {
    std::string name = Lower(Trim(item.text));
    if (name.empty()) continue;
    // "config set" and "config|set" both name the subcommand, as Redis's ACLs write it.
    for (char& c : name) {
      if (c == ' ') c = '|';
    }
    for (char c : name) {
      bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
                c == '.' || c == '|';
      if (!ok) Fail(key, item.text, "not a command name", item.source);
    }
    if (std::count(name.begin(), name.end(), '|') > 1 || name.front() == '|' ||
        name.back() == '|') {
      Fail(key, item.text, "expected \"command\" or \"command|subcommand\"", item.source);
    }
    if (std::find(out.begin(), out.end(), name) == out.end()) out.push_back(name);
  }
  return out;
}

// Shared reasons for "something after the digits".
std::string Garbage(std::string_view rest) {
  return "trailing garbage " + Quote(rest) + " after the number";
}

double ValidateDuration(const KeySpec& spec, const RawItem& item) {
  std::string_view s = Trim(item.text);
  auto fail = [&](std::string_view why) { Fail(spec.key, item.text, why, item.source); };
  if (s.empty()) fail("empty value, expected seconds (e.g. 5, 0.5, 500ms)");
  std::string lower = Lower(s);
  std::string_view body = lower;
  bool negative = false;
  if (body.front() == '-' || body.front() == '+') {
    negative = body.front() == '-';
    body.remove_prefix(1);
  }
  if (body == "nan") fail("NaN is not a duration");
  if (body == "inf" || body == "infinity") fail("infinity is not a duration");
  size_t i = 0;
  while (i < body.size() && IsDigit(body[i])) ++i;
  size_t int_digits = i;
  size_t frac_digits = 0;
  if (i < body.size() && body[i] == '.') {
    ++i;
    while (i < body.size() && IsDigit(body[i])) ++i, ++frac_digits;
  }
  if (int_digits + frac_digits == 0) fail("not a number of seconds (e.g. 5, 0.5, 500ms)");
  std::string number(body.substr(0, i));
  std::string_view unit = body.substr(i);
  double scale = 1;
  if (unit == "ms") {
    scale = 0.001;
  } else if (unit != "" && unit != "s") {
    fail("unknown unit " + Quote(s.substr(s.size() - unit.size())) +
         " after the number (use s or ms; none means seconds)");
  }
  double v = std::strtod(number.c_str(), nullptr) * scale;
  if (negative && v != 0) fail("must not be negative");
  bool zero_ok = spec.min == 0;
  if (v == 0) {
    if (zero_ok) return 0;
    fail("must be greater than 0");
  }
  if (v < kMinDurationS) fail("must be at least 1ms (timers have millisecond resolution)");
  if (!std::isfinite(v) || v > kMaxDurationS) fail("must be at most 86400s (one day)");
  return v;
}

uint64_t ValidateInteger(const KeySpec& spec, const RawItem& item) {
  std::string_view s = Trim(item.text);
  auto fail = [&](std::string_view why) { Fail(spec.key, item.text, why, item.source); };
  const uint64_t lo = static_cast<uint64_t>(spec.min);
  const uint64_t hi = static_cast<uint64_t>(spec.max);
  std::string range = "must be " + std::to_string(lo) + "-" + std::to_string(hi);
  if (s.empty()) fail("empty value, expected a whole number");
  bool negative = s.front() == '-';
  if (negative) s.remove_prefix(1);
  uint64_t n = 0;
  size_t used = 0;
  bool fits = ParseDigits(s, &n, &used);
  if (used == 0) fail("not a whole number");
  if (used < s.size()) fail(s[used] == '.' ? "must be a whole number" : Garbage(s.substr(used)));
  if ((negative && n != 0) || !fits || n < lo || n > hi) fail(range);
  return n;
}

uint64_t ValidateCount(const KeySpec& spec, const RawItem& item) {
  std::string_view s = Trim(item.text);
  auto fail = [&](std::string_view why) { Fail(spec.key, item.text, why, item.source); };
  if (s.empty()) fail("empty value, expected a whole number");
  bool negative = s.front() == '-';
  if (negative) s.remove_prefix(1);
  uint64_t n = 0;
  size_t used = 0;
  bool fits = ParseDigits(s, &n, &used);
  if (used == 0) fail("not a whole number");
  if (used < s.size()) {
    fail(s[used] == '.' ? "must be a whole number"
                        : Garbage(s.substr(used)) + " (a count takes no unit)");
  }
  if (!fits) fail("too large");
  if (negative || n == 0) fail("must be greater than 0");
  return n;
}

uint64_t ValidateSize(const KeySpec& spec, const RawItem& item) {
  std::string_view s = Trim(item.text);
  auto fail = [&](std::string_view why) { Fail(spec.key, item.text, why, item.source); };
  if (s.empty()) fail("empty value, expected bytes (e.g. 1048576, 512kb, 1mb)");
  bool negative = s.front() == '-';
  if (negative) s.remove_prefix(1);
  uint64_t n = 0;
  size_t used = 0;
  bool fits = ParseDigits(s, &n, &used);
  if (used == 0) fail("not a size (e.g. 1048576, 512kb, 1mb)");
  std::string unit = Lower(s.substr(used));
  uint64_t mult = 0;
  if (unit.empty() || unit == "b") {
    mult = 1;
  } else if (unit == "k" || unit == "kb") {
    mult = kKiB;
  } else if (unit == "m" || unit == "mb") {
    mult = kMiB;
  } else if (unit == "g" || unit == "gb") {
    mult = kGiB;
  } else if (unit.front() == '.') {
    fail("must be a whole number of bytes (or of k/kb/m/mb/g/gb)");
  } else {
    fail("unknown unit " + Quote(s.substr(used)) + " (use k, kb, m, mb, g or gb; 1024-based)");
  }
  if (negative || n == 0) fail("must be greater than 0");
  if (!fits || n > SIZE_MAX / mult) fail("too large");
  return n * mult;
}

ReadPolicy ValidateReadPolicy(const KeySpec& spec, const RawItem& item) {
  std::string v = Lower(Trim(item.text));
  if (v == "round_robin") return ReadPolicy::kRoundRobin;
  if (v == "random") return ReadPolicy::kRandom;
  if (v == "primary") return ReadPolicy::kPrimary;
  Fail(spec.key, item.text, "must be one of round_robin, random, primary", item.source);
}

std::string ValidateLogLevel(const KeySpec& spec, const RawItem& item) {
  // Case-insensitive: users of the Python original write "DEBUG".
  std::string v = Lower(Trim(item.text));
  if (v == "warning") v = "warn";  // spdlog's and Python's spelling
  for (std::string_view ok : {"trace", "debug", "info", "warn", "error", "critical", "off"}) {
    if (v == ok) return v;
  }
  Fail(spec.key, item.text, "must be one of trace, debug, info, warn, error, critical, off",
       item.source);
}

Value Validate(const KeySpec& spec, const RawValue& raw) {
  const RawItem& item = raw.value;
  switch (spec.kind) {
    case Kind::kEndpoint:
      // An empty `listen`: no plaintext port, for TLS only (checked with tls_listen below).
      if (spec.key == "listen" && Trim(item.text).empty()) return Endpoint{};
      return spec.key == "primary" ? ValidatePrimary(spec.key, raw)
                                   : ValidateEndpoint(spec.key, item);
    case Kind::kOptionalEndpoint: {
      if (Trim(item.text).empty()) return std::string();
      Endpoint e = ValidateEndpoint(spec.key, item);
      return FormatHostPort(e.host, e.port);
    }
    case Kind::kEndpointList:
      return ValidateEndpointList(spec.key, raw);
    case Kind::kDuration:
      return ValidateDuration(spec, item);
    case Kind::kInteger:
      return ValidateInteger(spec, item);
    case Kind::kSize:
      return ValidateSize(spec, item);
    case Kind::kCount:
      return ValidateCount(spec, item);
    case Kind::kReadPolicy:
      return ValidateReadPolicy(spec, item);
    case Kind::kLogLevel:
      return ValidateLogLevel(spec, item);
    case Kind::kLogFormat: {
      std::string v = Lower(Trim(item.text));
      if (v != "text" && v != "json")
        Fail(spec.key, item.text, "must be text or json", item.source);
      return v;
    }
    case Kind::kAuthMode: {
      std::string v = Lower(Trim(item.text));
      if (v != "proxy" && v != "passthrough") {
        Fail(spec.key, item.text, "must be proxy or passthrough", item.source);
      }
      return v;
    }
    case Kind::kCommandTable: {
      std::string v = Lower(Trim(item.text));
      if (v != "builtin" && v != "primary") {
        Fail(spec.key, item.text, "must be builtin or primary", item.source);
      }
      return v;
    }
    case Kind::kBool: {
      std::string v = Lower(Trim(item.text));
      if (v == "true" || v == "yes" || v == "on" || v == "1") return true;
      if (v == "false" || v == "no" || v == "off" || v == "0") return false;
      Fail(spec.key, item.text, "must be true or false (also yes/no, on/off, 1/0)", item.source);
    }
    case Kind::kNameList:
      return ValidateNameList(spec.key, raw);
    case Kind::kLimitSize:
      if (Trim(item.text) == "0") return uint64_t{0};
      return ValidateSize(spec, item);
    case Kind::kString:
    case Kind::kSecret:
      return item.text;  // taken verbatim: spaces may be part of a password
  }
  return item.text;
}

// ---------------------------------------------------------------------------------------
// Step 3: build, then the checks that involve more than one key.

std::string SourceOf(const RawMap& raw, std::string_view key) {
  auto it = raw.find(key);
  if (it == raw.end()) return "default";
  // REDIS_HOST / REDIS_PORT patch the primary on top of the default: they set it too.
  if (it->second.value.source == "default") {
    if (it->second.port_override) return it->second.port_override->source;
    if (it->second.host_override) return it->second.host_override->source;
  }
  return it->second.value.source;
}

void CrossCheck(const Config& c, const RawMap& raw) {
  // Forwarding to our own listening socket would loop every command back to us.
  if (c.primary == c.listen) {
    Fail("primary", FormatHostPort(c.primary.host, c.primary.port),
         "same address as listen: the proxy would forward to itself", SourceOf(raw, "primary"));
  }
  for (const Endpoint& r : c.replicas) {
    if (r == c.listen) {
      Fail("replicas", FormatHostPort(r.host, r.port),
           "same address as listen: the proxy would forward to itself", SourceOf(raw, "replicas"));
    }
  }
  if (!c.admin_listen.empty() && c.admin_listen == FormatHostPort(c.listen.host, c.listen.port)) {
    Fail("admin_listen", c.admin_listen, "same address as listen", SourceOf(raw, "admin_listen"));
  }
  // Below this, ordinary pipelines of small replies would be cut off.
  constexpr size_t kMinClientBuffer = 64 * kKiB;
  if (c.client.max_client_buffer_bytes < kMinClientBuffer) {
    Fail("limits.max_client_buffer_bytes", FormatSize(c.client.max_client_buffer_bytes),
         "too small: at least 64kb (replies for a pipeline must fit)",
         SourceOf(raw, "limits.max_client_buffer_bytes"));
  }
  {
    // A kernel congestion control name (at most 15 characters), or "system".
    const std::string& cc = c.loopback_tcp_congestion;
    bool ok = !cc.empty() && cc.size() <= 15;
    for (char ch : cc) {
      ok = ok && ((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '_' || ch == '-');
    }
    if (!ok) {
      Fail("loopback_tcp_congestion", cc,
           "must be a TCP congestion control name (reno, cubic, bbr...: at most 15 of a-z 0-9 _ "
           "-) or system",
           SourceOf(raw, "loopback_tcp_congestion"));
    }
  }
  if (c.tls_min_version != "1.2" && c.tls_min_version != "1.3") {
    Fail("tls_min_version", c.tls_min_version, "must be 1.2 or 1.3",
         SourceOf(raw, "tls_min_version"));
  }
  if (!c.tls_listen.empty() && (c.tls_cert_file.empty() || c.tls_key_file.empty())) {
    FailPlain(
        "tls_listen: set without tls_cert_file and tls_key_file (what would the proxy "
        "present to TLS clients?)",
        SourceOf(raw, "tls_listen"));
  }
  if (c.tls_auth_clients && c.tls_ca_file.empty()) {
    FailPlain("tls_auth_clients: set without tls_ca_file (which CA signs client certificates?)",
              SourceOf(raw, "tls_auth_clients"));
  }
  if (c.listen.port == 0 && c.tls_listen.empty()) {
    Fail("listen", "", "empty, and no tls_listen: clients could not connect anywhere",
         SourceOf(raw, "listen"));
  }
  if (!c.tls_listen.empty() && c.tls_listen == FormatHostPort(c.listen.host, c.listen.port)) {
    Fail("tls_listen", c.tls_listen, "same address as listen", SourceOf(raw, "tls_listen"));
  }
  if ((c.backend_tls_cert_file.empty()) != (c.backend_tls_key_file.empty())) {
    FailPlain("backend_tls_cert_file and backend_tls_key_file: set both or neither",
              SourceOf(raw, c.backend_tls_cert_file.empty() ? "backend_tls_key_file"
                                                            : "backend_tls_cert_file"));
  }
  if (c.auth_passthrough && !c.requirepass.empty()) {
    FailPlain(
        "requirepass: set together with auth_mode passthrough (Redis checks clients' "
        "passwords then; remove requirepass)",
        SourceOf(raw, "requirepass"));
  }
  if (c.client.max_total_client_buffer_bytes < kMinClientBuffer) {
    Fail("limits.max_total_client_buffer_bytes", FormatSize(c.client.max_total_client_buffer_bytes),
         "too small: at least 64kb (replies for a pipeline must fit)",
         SourceOf(raw, "limits.max_total_client_buffer_bytes"));
  }
  if (!c.cluster_nodes.empty()) {
    // The cluster describes its own nodes: a primary, replicas or Sentinels given as well
    // would be a second, conflicting source of truth.
    for (std::string_view key : {"primary", "replicas", "sentinels", "sentinel_master"}) {
      std::string from = SourceOf(raw, key);
      if (from != "default") {
        FailPlain(std::string(key) +
                      ": set together with cluster_nodes (with Redis Cluster the shards come "
                      "from the cluster itself; remove one of the two)",
                  from);
      }
    }
    for (const Endpoint& e : c.cluster_nodes) {
      if (e == c.listen) {
        Fail("cluster_nodes", FormatHostPort(e.host, e.port), "same address as listen",
             SourceOf(raw, "cluster_nodes"));
      }
    }
  }
  if (!c.sentinels.empty() || !c.sentinel_master.empty()) {
    if (c.sentinels.empty()) {
      FailPlain("sentinels: empty while sentinel_master is set (which Sentinels to ask?)",
                SourceOf(raw, "sentinel_master"));
    }
    if (c.sentinel_master.empty()) {
      FailPlain("sentinel_master: empty while sentinels is set (which master to follow?)",
                SourceOf(raw, "sentinels"));
    }
    // With Sentinel the nodes come from it: a primary or replicas given as well would be a
    // second, conflicting source of truth.
    for (std::string_view key : {"primary", "replicas"}) {
      std::string from = SourceOf(raw, key);
      if (from != "default") {
        FailPlain(std::string(key) +
                      ": set together with sentinels (with Sentinel the primary "
                      "and replicas come from it; remove one of the two)",
                  from);
      }
    }
    for (const Endpoint& e : c.sentinels) {
      if (e == c.listen) {
        Fail("sentinels", FormatHostPort(e.host, e.port), "same address as listen",
             SourceOf(raw, "sentinels"));
      }
    }
  }
  if (!c.sentinel_username.empty() && c.sentinel_password.empty()) {
    FailPlain("sentinel_password: empty while sentinel_username is set (AUTH needs both)",
              SourceOf(raw, "sentinel_username"));
  }
  // Redis's AUTH takes a username only together with a password.
  if (!c.backend_username.empty() && c.backend_password.empty()) {
    FailPlain("backend_password: empty while backend_username is set (AUTH needs both)",
              SourceOf(raw, "backend_username"));
  }
}

}  // namespace

CommandLine ParseCommandLine(int argc, const char* const* argv) {
  CommandLine cl;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      cl.help = true;
      continue;
    }
    if (arg == "-v" || arg == "--version") {
      cl.version = true;
      continue;
    }
    if (arg == "--check-config") {
      cl.check_config = true;
      continue;
    }
    if (arg.size() > 1 && arg.front() == '-' && (arg.size() == 2 || arg[1] != '-')) {
      throw ConfigError("config: unknown flag " + Quote(arg) + " (see --help)");
    }
    if (arg.size() <= 2 || arg.substr(0, 2) != "--") {
      throw ConfigError("config: unexpected argument " + Quote(arg) + " (see --help)");
    }
    std::string_view name = arg;
    std::optional<std::string> value;
    if (size_t eq = arg.find('='); eq != std::string_view::npos) {
      name = arg.substr(0, eq);
      value = std::string(arg.substr(eq + 1));
    }
    if (name == "--help" || name == "--version" || name == "--check-config") {
      throw ConfigError("config: flag " + std::string(name) + " takes no value");
    }
    const KeySpec* spec = nullptr;
    if (name != "--config" && name != "--healthcheck") {
      for (const KeySpec& s : Specs()) {
        if (FlagName(s) == name) spec = &s;
      }
      if (spec == nullptr) {
        throw ConfigError("config: unknown flag " + Quote(name) + " (see --help)");
      }
    }
    if (!value) {
      // "--timeout --workers 2" is a forgotten value, not a timeout named "--workers".
      if (i + 1 >= argc || std::string_view(argv[i + 1]).substr(0, 2) == "--") {
        throw ConfigError("config: flag " + std::string(name) + " needs a value (" +
                          std::string(name) + " VALUE or " + std::string(name) + "=VALUE)");
      }
      value = argv[++i];
    }
    if (name == "--healthcheck") {
      cl.healthcheck = *value;
    } else if (spec == nullptr) {
      cl.config_file = *value;
    } else {
      cl.settings.emplace_back(std::string(spec->key), *value);
    }
  }
  return cl;
}

Config LoadConfig(const CommandLine& cli, const EnvLookup& env) {
  RawMap raw = Collect(cli, env);
  Config config;
  // Validate and apply in table order so the first error reported is a stable one.
  for (const KeySpec& spec : Specs()) {
    auto it = raw.find(spec.key);
    if (it == raw.end()) continue;
    spec.apply(config, Validate(spec, it->second));
  }
  CrossCheck(config, raw);
  return config;
}

namespace {
size_t EditDistance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}
}  // namespace

std::vector<std::string> UnknownEnvWarnings(const std::vector<std::string>& names) {
  std::vector<std::string> known = {"KOMPRESS_CONFIG"};
  for (const KeySpec& s : Specs()) known.push_back(EnvName(s));
  std::vector<std::string> out;
  for (const std::string& name : names) {
    if (name.rfind("KOMPRESS_", 0) != 0) continue;
    if (std::find(known.begin(), known.end(), name) != known.end()) continue;
    const std::string* best = &known.front();
    size_t best_d = SIZE_MAX;
    for (const std::string& k : known) {
      size_t d = EditDistance(name, k);
      if (d < best_d) {
        best_d = d;
        best = &k;
      }
    }
    out.push_back("environment variable " + name + " is not a setting and is ignored" +
                  (best_d <= 4 ? "; did you mean " + *best + "?" : std::string()) +
                  " (see --help)");
  }
  return out;
}

std::string HelpText() {
  const Config defaults;
  std::ostringstream out;
  out << "Usage: kompress-proxy [OPTIONS]\n"
         "\n"
         "RESP proxy for Redis: writes go to the primary, reads to the replicas, and a\n"
         "read whose replica fails is answered by the primary.\n"
         "\n"
         "Options:\n"
         "  -h, --help            Show this help and exit.\n"
         "  -v, --version         Show the version and exit.\n"
         "      --check-config    Validate the configuration, print it and exit (non-zero\n"
         "                        status when invalid).\n"
         "      --config FILE     YAML config file; keys as below.  env KOMPRESS_CONFIG\n"
         "      --healthcheck HOST:PORT[/PATH]\n"
         "                        Ask a running proxy's admin endpoint (default path\n"
         "                        /healthz) and exit 0 on 200, 1 otherwise (for container\n"
         "                        health checks).\n"
         "\n"
         "Settings (--flag VALUE or --flag=VALUE):\n";
  // Three lines per setting keep every line near 80 columns whatever the names.
  for (const KeySpec& s : Specs()) {
    out << "  " << FlagName(s) << " " << s.meta << "\n"
        << "      " << s.help << "\n"
        << "      env " << EnvName(s) << "; yaml " << s.key << "; default " << s.show(defaults)
        << "\n";
  }
  out << "\n"
         "Original Kompress Cache variables (used when the KOMPRESS_ twin is unset):\n"
         "  REDIS_HOST                Primary host. Default localhost.\n"
         "  REDIS_PORT                Primary port. Default 6379. Either one alone changes\n"
         "                            only its half of the primary address.\n"
         "  REDIS_REPLICAS_HOST_PORT  Comma-separated host:port replicas, e.g.\n"
         "                            replica1:6379,replica2:6379. Empty or unset: the\n"
         "                            primary serves reads too.\n"
         "  REDIS_TIMEOUT             Per-command timeout in seconds, fractions allowed.\n"
         "                            Default 5.\n"
         "\n"
         "Precedence: flag > env > file > default; KOMPRESS_* beats REDIS_*. An env var\n"
         "set to \"\" counts as unset, except KOMPRESS_REPLICAS and\n"
         "REDIS_REPLICAS_HOST_PORT, where \"\" means no replicas.\n"
         "Values: addresses host:port, IPv6 as [::1]:6379; durations in seconds (5, 0.5)\n"
         "or with s/ms (500ms); sizes in bytes or with k/kb/m/mb/g/gb (1024-based).\n";
  return out.str();
}

std::string Describe(const Config& config) {
  std::ostringstream out;
  out << "kompress-proxy configuration:\n";
  for (const KeySpec& s : Specs()) {
    std::string key(s.key);
    out << "  " << key << std::string(key.size() < 32 ? 32 - key.size() : 1, ' ') << s.show(config)
        << "\n";
  }
  return out.str();
}

}  // namespace kp
