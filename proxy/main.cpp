// main: command line and configuration, then the server. Exit codes: 0 normal stop,
// 1 runtime failure (cannot listen), 2 bad configuration or usage.
#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "common/logging.h"
#include "config/config_loader.h"
#include "proxy/command_table.h"
#include "proxy/command_table_fetch.h"
#include "proxy/health_probe.h"
#include "proxy/sentinel_lookup.h"
#include "proxy/server.h"
#include "proxy/tls_config.h"

extern char** environ;

namespace {
// Start-up's COMMAND question (see main): nodes asked, and how long each may take.
constexpr size_t kFetchTries = 3;
constexpr int64_t kFetchWaitMs = 1000;

std::vector<std::string> EnvNames() {
  std::vector<std::string> names;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    std::string_view kv(*e);
    names.emplace_back(kv.substr(0, kv.find('=')));
  }
  return names;
}

// A deny_commands name the table does not know is a configuration error (exit 2).
bool CheckDenied(const kp::Config& config, kp::CommandTable* table) {
  for (const std::string& name : config.deny_commands) {
    if (!table->Deny(name)) {
      std::fprintf(stderr,
                   "kompress-proxy: config: deny_commands: \"%s\": no such command or "
                   "subcommand\n",
                   name.c_str());
      return false;
    }
  }
  return true;
}
}  // namespace

#ifndef KP_VERSION
#define KP_VERSION "dev"
#endif

int main(int argc, char** argv) {
  // SIGHUP means "reload" once the server runs; before that it must not end the process
  // (its default action).
  std::signal(SIGHUP, SIG_IGN);
  kp::Config config;
  kp::CommandLine cli;
  try {
    cli = kp::ParseCommandLine(argc, argv);
    if (cli.help) {
      std::fputs(kp::HelpText().c_str(), stdout);
      return 0;
    }
    if (cli.version) {
      std::printf("kompress-proxy %s\n", KP_VERSION);
      return 0;
    }
    if (cli.healthcheck) {
      // Needs no configuration: the container's settings are the running proxy's business.
      std::string detail;
      int rc = kp::ProbeHealth(*cli.healthcheck, 2.0, &detail);
      std::printf("%s: %s\n", rc == 0 ? "healthy" : "unhealthy", detail.c_str());
      return rc;
    }
    config = kp::LoadConfig(cli, [](const char* name) { return std::getenv(name); });
  } catch (const kp::ConfigError& e) {
    std::fprintf(stderr, "kompress-proxy: %s\n", e.what());
    return 2;
  }
  std::vector<std::string> env_warnings = kp::UnknownEnvWarnings(EnvNames());
  if (cli.check_config) {
    for (const std::string& w : env_warnings)
      std::fprintf(stderr, "kompress-proxy: %s\n", w.c_str());
    // Commands learned from the primary at start-up are not known here: the built-in table
    // decides (a module's command in deny_commands is checked when the proxy starts).
    kp::CommandTable check(kp::CommandTable::Builtin());
    if (!CheckDenied(config, &check)) return 2;
    std::shared_ptr<const kp::TlsContext> b, c;
    std::string tls_error;
    if (!kp::BuildTlsContexts(config, &b, &c, &tls_error)) {
      std::fprintf(stderr, "kompress-proxy: config: %s\n", tls_error.c_str());
      return 2;
    }
    std::printf("configuration OK\n%s", kp::Describe(config).c_str());
    return 0;
  }
  kp::InitLogging(config.log_level, config.log_format);
  for (const std::string& w : env_warnings) kp::Log().warn("{}", w);
  // The certificate files are checked before anything connects (a bad one is a
  // configuration error, exit 2); the start-up conversations below use them too.
  std::shared_ptr<const kp::TlsContext> backend_tls, client_tls;
  {
    std::string error;
    if (!kp::BuildTlsContexts(config, &backend_tls, &client_tls, &error)) {
      std::fprintf(stderr, "kompress-proxy: config: %s\n", error.c_str());
      return 2;
    }
  }
  std::signal(SIGPIPE, SIG_IGN);
  // Buffers of 1 MB and up are mapped on their own (common/page_block.h) and kept warm for
  // the next large value by the workers (SpareLargeBlocks), so glibc's heaps hold only
  // smaller blocks. Fixed thresholds: glibc's dynamic ones would move with each large block
  // freed. Anything else of 1 MB and up is mapped too and returned when freed; a heap top
  // past 8 MB is given back at once (the top of a thread's arena is not trimmed otherwise:
  // malloc_trim shrinks only the main heap's); idle clients' buffers are returned by the
  // workers' sweep (malloc_trim).
  mallopt(M_MMAP_THRESHOLD, 1024 * 1024);
  mallopt(M_TRIM_THRESHOLD, 8 * 1024 * 1024);
  const kp::CommandTable* table = &kp::CommandTable::Builtin();
  std::unique_ptr<kp::CommandTable> merged;
  if (config.refresh_command_table) {
    std::string error;
    // Nodes that run the same server, the primary first. Each gets at most a second (a
    // healthy one answers COMMAND in milliseconds): the proxy neither listens nor answers
    // /healthz until this is done, and a hung primary held both for the whole timeout while
    // the Sentinels replaced it. Then the built-in table serves.
    std::vector<kp::Endpoint> ask;
    if (config.cluster()) {
      ask = config.cluster_nodes;  // every node of a cluster runs the same server
    } else if (!config.sentinels.empty()) {
      // The primary is whoever the Sentinels name now.
      if (auto master = kp::LookupSentinelMaster(config, backend_tls, &error)) {
        ask.push_back(*master);
      }
    } else {
      ask.push_back(config.primary);
    }
    for (const kp::Endpoint& r : config.replicas) ask.push_back(r);
    if (ask.size() > kFetchTries) ask.resize(kFetchTries);
    const auto wait = std::chrono::milliseconds(
        std::min<int64_t>(kFetchWaitMs, static_cast<int64_t>(config.timeout_s * 1000.0 + 0.5)));
    std::unique_ptr<kp::CommandTable> fetched;
    std::string errors, from;
    for (const kp::Endpoint& node : ask) {
      fetched = kp::FetchCommandTable(config, node, backend_tls, wait, &error);
      from = node.ToString();
      if (fetched) break;
      errors += (errors.empty() ? "" : "; ") + error;
    }
    if (ask.empty()) errors = error;
    if (fetched) {
      size_t added = 0;
      merged = kp::CommandTable::Merge(*table, *fetched, &added);
      table = merged.get();
      kp::Log().info("command table: {} rows built in, {} more learned from {}",
                     kp::CommandTable::Builtin().size(), added, from);
    } else {
      kp::Log().warn(
          "command table: could not read COMMAND from the servers ({}); using the "
          "built-in Redis 7.0 table",
          errors);
    }
  }
  if (!config.deny_commands.empty()) {
    // Denials are marks on the table's rows: the router pays nothing extra per request.
    if (!merged) merged = std::make_unique<kp::CommandTable>(*table);
    if (!CheckDenied(config, merged.get())) return 2;
    table = merged.get();
  }
  kp::Server server(
      std::move(config), std::move(cli), [](const char* name) { return std::getenv(name); },
      *table);
  return server.Run();
}
