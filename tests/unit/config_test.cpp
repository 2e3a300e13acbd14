// Unit tests for config_loader: defaults, the original REDIS_* variables, KOMPRESS_* env,
// YAML files and flags, their precedence, and every kind of bad value. The environment is
// always a std::map behind an EnvLookup, never the real one, so tests cannot leak into each
// other or depend on the machine.
#include <doctest/doctest.h>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "config/config_loader.h"

namespace kp {
namespace {

using Env = std::map<std::string, std::string>;

EnvLookup LookupIn(const Env& env) {
  return [&env](const char* name) -> const char* {
    auto it = env.find(name);
    return it == env.end() ? nullptr : it->second.c_str();
  };
}

CommandLine Parse(std::vector<std::string> args) {
  args.insert(args.begin(), "kompress-proxy");
  std::vector<const char*> argv;
  for (const std::string& a : args) argv.push_back(a.c_str());
  return ParseCommandLine(static_cast<int>(argv.size()), argv.data());
}

Config Load(const Env& env, std::vector<std::string> args = {}) {
  return LoadConfig(Parse(std::move(args)), LookupIn(env));
}

// The ConfigError message, or a marker the checks below will not match.
std::string ErrorOf(const Env& env, std::vector<std::string> args = {}) {
  try {
    Load(env, std::move(args));
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "<no ConfigError>";
}

std::string ParseErrorOf(std::vector<std::string> args) {
  try {
    Parse(std::move(args));
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "<no ConfigError>";
}

bool Has(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// A YAML file in the temp directory, removed when the test ends.
class TempYaml {
 public:
  explicit TempYaml(const std::string& content) {
    static std::atomic<int> counter{0};
    path_ =
        (std::filesystem::temp_directory_path() / ("kp_config_test_" + std::to_string(::getpid()) +
                                                   "_" + std::to_string(counter++) + ".yaml"))
            .string();
    std::ofstream(path_) << content;
  }
  ~TempYaml() { std::filesystem::remove(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace

TEST_CASE("Config: defaults with an empty environment") {
  Config c = Load({});
  const Config d;
  CHECK(c.listen == Endpoint{"127.0.0.1", 6380});
  CHECK(c.primary == Endpoint{"localhost", 6379});
  CHECK(c.replicas.empty());
  CHECK(c.timeout_s == 5.0);
  CHECK(c.workers == 0);
  CHECK(c.backend_connections == 1);
  CHECK(c.read_policy == ReadPolicy::kRoundRobin);
  CHECK(c.health_check_interval_s == d.health_check_interval_s);
  CHECK(c.drain_timeout_s == d.drain_timeout_s);
  CHECK(c.log_level == "info");
  CHECK(c.requirepass.empty());
  CHECK(c.backend_username.empty());
  CHECK(c.backend_password.empty());
  CHECK(c.admin_listen.empty());
  CHECK(c.resp.max_bulk_len == d.resp.max_bulk_len);
  CHECK(c.resp.max_array_len == d.resp.max_array_len);
  CHECK(c.resp.max_request_bytes == d.resp.max_request_bytes);
  CHECK(c.resp.max_inline_len == d.resp.max_inline_len);
  CHECK(c.resp.max_nesting == d.resp.max_nesting);
  CHECK(c.client.max_client_buffer_bytes == d.client.max_client_buffer_bytes);
  CHECK(c.client.max_pipeline_depth == d.client.max_pipeline_depth);
}

TEST_CASE("Config: REDIS_HOST sets the primary host, port stays 6379") {
  Config c = Load({{"REDIS_HOST", "redis-primary"}});
  CHECK(c.primary == Endpoint{"redis-primary", 6379});
}

TEST_CASE("Config: REDIS_PORT alone changes only the primary port") {
  Config c = Load({{"REDIS_PORT", "6390"}});
  CHECK(c.primary == Endpoint{"localhost", 6390});
}

TEST_CASE("Config: REDIS_HOST and REDIS_PORT combine") {
  Config c = Load({{"REDIS_HOST", "10.0.0.5"}, {"REDIS_PORT", "7000"}});
  CHECK(c.primary == Endpoint{"10.0.0.5", 7000});
}

TEST_CASE("Config: REDIS_HOST may be a bare IPv6 address") {
  Config c = Load({{"REDIS_HOST", "::1"}});
  CHECK(c.primary == Endpoint{"::1", 6379});
}

TEST_CASE("Config: REDIS_PORT patches the port of the file's primary") {
  TempYaml file("primary: db.internal:6379\n");
  Config c = Load({{"REDIS_PORT", "6400"}}, {"--config", file.path()});
  CHECK(c.primary == Endpoint{"db.internal", 6400});
}

TEST_CASE("Config: REDIS_REPLICAS_HOST_PORT lists replicas") {
  Config c = Load({{"REDIS_REPLICAS_HOST_PORT", "r1:1,r2:2"}});
  REQUIRE(c.replicas.size() == 2);
  CHECK(c.replicas[0] == Endpoint{"r1", 1});
  CHECK(c.replicas[1] == Endpoint{"r2", 2});
}

TEST_CASE("Config: REDIS_REPLICAS_HOST_PORT tolerates spaces") {
  Config c = Load({{"REDIS_REPLICAS_HOST_PORT", " r1:1 , r2:2 "}});
  REQUIRE(c.replicas.size() == 2);
  CHECK(c.replicas[0] == Endpoint{"r1", 1});
  CHECK(c.replicas[1] == Endpoint{"r2", 2});
}

TEST_CASE("Config: empty REDIS_REPLICAS_HOST_PORT means no replicas") {
  CHECK(Load({{"REDIS_REPLICAS_HOST_PORT", ""}}).replicas.empty());
  // It also clears the file's replicas: env beats file, and "" is a value here.
  TempYaml file("replicas: [a:1, b:2]\n");
  CHECK(Load({{"REDIS_REPLICAS_HOST_PORT", ""}}, {"--config", file.path()}).replicas.empty());
}

TEST_CASE("Config: REDIS_TIMEOUT takes seconds with fractions") {
  CHECK(Load({{"REDIS_TIMEOUT", "2"}}).timeout_s == 2.0);
  CHECK(Load({{"REDIS_TIMEOUT", "0.25"}}).timeout_s == 0.25);
}

TEST_CASE("Config: empty REDIS_HOST/PORT/TIMEOUT count as unset") {
  Config c = Load({{"REDIS_HOST", ""}, {"REDIS_PORT", ""}, {"REDIS_TIMEOUT", ""}});
  CHECK(c.primary == Endpoint{"localhost", 6379});
  CHECK(c.timeout_s == 5.0);
}

TEST_CASE("Config: KOMPRESS_ variables beat their REDIS_ twins") {
  Config c = Load({{"REDIS_HOST", "old"},
                   {"REDIS_PORT", "1111"},
                   {"KOMPRESS_PRIMARY", "new:2222"},
                   {"REDIS_TIMEOUT", "9"},
                   {"KOMPRESS_TIMEOUT", "3"},
                   {"REDIS_REPLICAS_HOST_PORT", "old1:1"},
                   {"KOMPRESS_REPLICAS", "new1:1,new2:2"}});
  CHECK(c.primary == Endpoint{"new", 2222});
  CHECK(c.timeout_s == 3.0);
  REQUIRE(c.replicas.size() == 2);
  CHECK(c.replicas[0] == Endpoint{"new1", 1});
}

TEST_CASE("Config: every KOMPRESS_ variable is read") {
  Config c = Load({{"KOMPRESS_LISTEN", "0.0.0.0:7000"},
                   {"KOMPRESS_WORKERS", "4"},
                   {"KOMPRESS_BACKEND_CONNECTIONS", "2"},
                   {"KOMPRESS_READ_POLICY", "random"},
                   {"KOMPRESS_HEALTH_CHECK_INTERVAL", "250ms"},
                   {"KOMPRESS_DRAIN_TIMEOUT", "0"},
                   {"KOMPRESS_LOG_LEVEL", "DEBUG"},
                   {"KOMPRESS_REQUIREPASS", "s3cret"},
                   {"KOMPRESS_BACKEND_USERNAME", "proxy"},
                   {"KOMPRESS_BACKEND_PASSWORD", "pw"},
                   {"KOMPRESS_ADMIN_LISTEN", "127.0.0.1:9100"},
                   {"KOMPRESS_MAX_ARRAY_LEN", "100"},
                   {"KOMPRESS_MAX_BULK_BYTES", "1mb"},
                   {"KOMPRESS_MAX_REQUEST_BYTES", "2mb"},
                   {"KOMPRESS_MAX_INLINE_BYTES", "4k"},
                   {"KOMPRESS_MAX_REPLY_NESTING", "16"},
                   {"KOMPRESS_MAX_CLIENT_BUFFER_BYTES", "8mb"},
                   {"KOMPRESS_MAX_PIPELINE_DEPTH", "64"},
                   {"KOMPRESS_MAX_INFLIGHT_BYTES", "16mb"}});
  CHECK(c.listen == Endpoint{"0.0.0.0", 7000});
  CHECK(c.workers == 4);
  CHECK(c.backend_connections == 2);
  CHECK(c.read_policy == ReadPolicy::kRandom);
  CHECK(c.health_check_interval_s == doctest::Approx(0.25));
  CHECK(c.drain_timeout_s == 0.0);
  CHECK(c.log_level == "debug");
  CHECK(c.requirepass == "s3cret");
  CHECK(c.backend_username == "proxy");
  CHECK(c.backend_password == "pw");
  CHECK(c.admin_listen == "127.0.0.1:9100");
  CHECK(c.resp.max_array_len == 100);
  CHECK(c.resp.max_bulk_len == 1024 * 1024);
  CHECK(c.resp.max_request_bytes == 2 * 1024 * 1024);
  CHECK(c.resp.max_inline_len == 4 * 1024);
  CHECK(c.resp.max_nesting == 16);
  CHECK(c.client.max_client_buffer_bytes == 8 * 1024 * 1024);
  CHECK(c.client.max_pipeline_depth == 64);
  CHECK(c.client.max_inflight_bytes == 16 * 1024 * 1024);
}

TEST_CASE("Config: YAML file with every key") {
  TempYaml file(
      "listen: 0.0.0.0:6390\n"
      "primary: \"[::1]:6379\"\n"
      "replicas:\n"
      "  - r1:6379\n"
      "  - \"[fe80::1]:6380\"\n"
      "timeout: 0.5\n"
      "workers: 2\n"
      "backend_connections: 4\n"
      "read_policy: primary\n"
      "health_check_interval: 2s\n"
      "drain_timeout: 1500ms\n"
      "log_level: warn\n"
      "requirepass: \"with space\"\n"
      "backend_username: u\n"
      "backend_password: p\n"
      "admin_listen: 127.0.0.1:9000\n"
      "limits:\n"
      "  max_array_len: 10\n"
      "  max_bulk_bytes: 1MB\n"
      "  max_request_bytes: 1gb\n"
      "  max_inline_bytes: 512\n"
      "  max_reply_nesting: 8\n"
      "  max_client_buffer_bytes: 64m\n"
      "  max_pipeline_depth: 32\n");
  Config c = Load({}, {"--config", file.path()});
  CHECK(c.listen == Endpoint{"0.0.0.0", 6390});
  CHECK(c.primary == Endpoint{"::1", 6379});
  REQUIRE(c.replicas.size() == 2);
  CHECK(c.replicas[1] == Endpoint{"fe80::1", 6380});
  CHECK(c.timeout_s == 0.5);
  CHECK(c.workers == 2);
  CHECK(c.backend_connections == 4);
  CHECK(c.read_policy == ReadPolicy::kPrimary);
  CHECK(c.health_check_interval_s == 2.0);
  CHECK(c.drain_timeout_s == doctest::Approx(1.5));
  CHECK(c.log_level == "warn");
  CHECK(c.requirepass == "with space");
  CHECK(c.admin_listen == "127.0.0.1:9000");
  CHECK(c.resp.max_array_len == 10);
  CHECK(c.resp.max_bulk_len == 1024 * 1024);
  CHECK(c.resp.max_request_bytes == 1024ull * 1024 * 1024);
  CHECK(c.resp.max_inline_len == 512);
  CHECK(c.resp.max_nesting == 8);
  CHECK(c.client.max_client_buffer_bytes == 64ull * 1024 * 1024);
  CHECK(c.client.max_pipeline_depth == 32);
}

TEST_CASE("Config: YAML replicas as a comma-separated string") {
  TempYaml file("replicas: \"a:1, b:2\"\n");
  Config c = Load({}, {"--config", file.path()});
  REQUIRE(c.replicas.size() == 2);
  CHECK(c.replicas[1] == Endpoint{"b", 2});
}

TEST_CASE("Config: empty YAML file gives defaults") {
  TempYaml file("");
  Config c = Load({}, {"--config", file.path()});
  CHECK(c.primary == Endpoint{"localhost", 6379});
}

TEST_CASE("Config: KOMPRESS_CONFIG names the file when there is no --config") {
  TempYaml file("workers: 3\n");
  TempYaml other("workers: 5\n");
  CHECK(Load({{"KOMPRESS_CONFIG", file.path()}}).workers == 3);
  CHECK(Load({{"KOMPRESS_CONFIG", file.path()}}, {"--config", other.path()}).workers == 5);
}

TEST_CASE("Config: precedence is flag > env > file > default") {
  TempYaml file(
      "timeout: 1\n"
      "workers: 2\n"
      "backend_connections: 3\n"
      "primary: file-host:1000\n");
  Env env{{"KOMPRESS_WORKERS", "20"}, {"REDIS_TIMEOUT", "10"}, {"REDIS_HOST", "env-host"}};
  Config c = Load(env, {"--config", file.path(), "--timeout", "0.5"});
  CHECK(c.timeout_s == 0.5);                       // flag over env over file
  CHECK(c.workers == 20);                          // env over file
  CHECK(c.backend_connections == 3);               // file over default
  CHECK(c.primary == Endpoint{"env-host", 1000});  // REDIS_HOST patches the file
  CHECK(c.listen == Endpoint{"127.0.0.1", 6380});  // default
  Config f = Load(env, {"--config", file.path(), "--primary", "cli:1"});
  CHECK(f.primary == Endpoint{"cli", 1});  // flag over REDIS_HOST
}

TEST_CASE("Config: flags for every form") {
  Config c = Load({}, {"--listen", "0.0.0.0:6380", "--replicas", "a:1,b:2", "--primary", "h:7",
                       "--timeout", "0.5", "--workers=2", "--max-bulk-bytes", "1mb",
                       "--max-pipeline-depth=7", "--read-policy", "random", "--requirepass=x"});
  CHECK(c.listen == Endpoint{"0.0.0.0", 6380});
  REQUIRE(c.replicas.size() == 2);
  CHECK(c.replicas[0] == Endpoint{"a", 1});
  CHECK(c.primary == Endpoint{"h", 7});
  CHECK(c.timeout_s == 0.5);
  CHECK(c.workers == 2);
  CHECK(c.resp.max_bulk_len == 1024 * 1024);
  CHECK(c.client.max_pipeline_depth == 7);
  CHECK(c.read_policy == ReadPolicy::kRandom);
  CHECK(c.requirepass == "x");
}

TEST_CASE("Config: ParseCommandLine records help, version, check-config and --config") {
  CommandLine a = Parse({"--help"});
  CHECK(a.help);
  CHECK_FALSE(a.version);
  CHECK(Parse({"-h"}).help);
  CHECK(Parse({"--version"}).version);
  CHECK(Parse({"-v"}).version);
  CommandLine b = Parse({"--check-config", "--config", "my.yaml", "--max-bulk-bytes", "1mb"});
  CHECK(b.check_config);
  REQUIRE(b.config_file.has_value());
  CHECK(*b.config_file == "my.yaml");
  REQUIRE(b.settings.size() == 1);
  CHECK(b.settings[0].first == "limits.max_bulk_bytes");
  CHECK(b.settings[0].second == "1mb");
  CHECK(*Parse({"--config=x.yaml"}).config_file == "x.yaml");
  CommandLine none = Parse({});
  CHECK_FALSE(none.help);
  CHECK_FALSE(none.check_config);
  CHECK_FALSE(none.config_file.has_value());
  CHECK(none.settings.empty());
}

TEST_CASE("Config: unknown or incomplete flags are errors") {
  CHECK(Has(ParseErrorOf({"--bogus", "1"}), "--bogus"));
  CHECK(Has(ParseErrorOf({"--bogus=1"}), "--bogus"));
  CHECK(Has(ParseErrorOf({"-x"}), "-x"));
  CHECK(Has(ParseErrorOf({"stray"}), "stray"));
  CHECK(Has(ParseErrorOf({"--timeout"}), "needs a value"));
  CHECK(Has(ParseErrorOf({"--timeout", "--workers", "2"}), "needs a value"));
  CHECK(Has(ParseErrorOf({"--config"}), "--config"));
  CHECK(Has(ParseErrorOf({"--help=1"}), "takes no value"));
  CHECK_THROWS_AS(Parse({"--max-bulk-bytes"}), ConfigError);
}

TEST_CASE("Config: size suffixes are 1024-based and case-insensitive") {
  auto bulk = [](const std::string& v) {
    return Load({{"KOMPRESS_MAX_BULK_BYTES", v}}).resp.max_bulk_len;
  };
  CHECK(bulk("100") == 100);
  CHECK(bulk("100b") == 100);
  CHECK(bulk("1k") == 1024);
  CHECK(bulk("1kb") == 1024);
  CHECK(bulk("2KB") == 2048);
  CHECK(bulk("1m") == 1024 * 1024);
  CHECK(bulk("3Mb") == 3 * 1024 * 1024);
  CHECK(bulk("1g") == 1024ull * 1024 * 1024);
  CHECK(bulk("2GB") == 2ull * 1024 * 1024 * 1024);
}

TEST_CASE("Config: durations accept s and ms") {
  auto timeout = [](const std::string& v) { return Load({}, {"--timeout", v}).timeout_s; };
  CHECK(timeout("5") == 5.0);
  CHECK(timeout("0.5") == 0.5);
  CHECK(timeout(".5") == 0.5);
  CHECK(timeout("2s") == 2.0);
  CHECK(timeout("250ms") == doctest::Approx(0.25));
  CHECK(timeout("1MS") == doctest::Approx(0.001));
}

TEST_CASE("Config: the REDIS_PORT example message") {
  CHECK(ErrorOf({{"REDIS_PORT", "70000"}}) ==
        "config: primary: \"localhost:70000\": port must be 1-65535 (from env REDIS_PORT)");
}

TEST_CASE("Config: bad endpoints name key, value and source") {
  struct Case {
    std::string value;
    std::string reason;
  };
  std::vector<Case> cases = {
      {"host:", "missing port"},
      {":6379", "missing host"},
      {"host:70000", "port must be 1-65535"},
      {"host:0", "port must be 1-65535"},
      {"host:abc", "is not a number"},
      {"host:12x", "is not a number"},
      {"host", "missing port"},
      {"::1:6379", "brackets"},
      {"[zz]:1", "not a valid IPv6"},
      {"[::1]", "missing port"},
      {"300.1.1.1:1", "not a valid IPv4"},
      {"bad host:1", "contains"},
      {"", "empty"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.value);
    std::string msg = ErrorOf({}, {"--listen", c.value});
    CHECK(Has(msg, "listen"));
    CHECK(Has(msg, "\"" + c.value + "\""));
    CHECK(Has(msg, c.reason));
    CHECK(Has(msg, "(from flag --listen)"));
    CHECK(msg.find('\n') == std::string::npos);
  }
}

TEST_CASE("Config: bad REDIS_* values blame the right variable") {
  std::string port = ErrorOf({{"REDIS_PORT", "abc"}});
  CHECK(Has(port, "primary"));
  CHECK(Has(port, "\"localhost:abc\""));
  CHECK(Has(port, "env REDIS_PORT"));
  std::string host = ErrorOf({{"REDIS_HOST", "bad host"}, {"REDIS_PORT", "6379"}});
  CHECK(Has(host, "\"bad host:6379\""));
  CHECK(Has(host, "env REDIS_HOST"));
  std::string host_port = ErrorOf({{"REDIS_HOST", "redis:6380"}});
  CHECK(Has(host_port, "redis:6380"));
  CHECK(Has(host_port, "REDIS_PORT"));
  std::string rep = ErrorOf({{"REDIS_REPLICAS_HOST_PORT", "r1:1,r2:x"}});
  CHECK(Has(rep, "replicas"));
  CHECK(Has(rep, "\"r2:x\""));
  CHECK(Has(rep, "env REDIS_REPLICAS_HOST_PORT"));
  std::string timeout = ErrorOf({{"REDIS_TIMEOUT", "soon"}});
  CHECK(Has(timeout, "timeout"));
  CHECK(Has(timeout, "\"soon\""));
  CHECK(Has(timeout, "env REDIS_TIMEOUT"));
}

TEST_CASE("Config: bad durations say why") {
  struct Case {
    std::string flag, value, reason;
  };
  std::vector<Case> cases = {
      {"--timeout", "-1", "negative"},
      {"--timeout", "0", "greater than 0"},
      {"--timeout", "0ms", "greater than 0"},
      {"--timeout", "nan", "NaN"},
      {"--timeout", "inf", "infinity"},
      {"--timeout", "abc", "not a number"},
      {"--timeout", "5x", "unknown unit"},
      {"--timeout", "1e3", "unknown unit"},
      {"--timeout", "0.0001", "at least 1ms"},
      {"--timeout", "100000", "at most"},
      {"--timeout", "", "empty"},
      {"--health-check-interval", "0", "greater than 0"},
      {"--drain-timeout", "-5", "negative"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.value);
    std::string msg = ErrorOf({}, {c.flag, c.value});
    CHECK(Has(msg, c.flag.substr(2, 6)));
    CHECK(Has(msg, "\"" + c.value + "\""));
    CHECK(Has(msg, c.reason));
  }
  CHECK(Load({}, {"--drain-timeout", "0"}).drain_timeout_s == 0.0);
}

TEST_CASE("Config: bad sizes, counts and integers say why") {
  struct Case {
    std::string flag, key, value, reason;
  };
  std::vector<Case> cases = {
      {"--max-bulk-bytes", "limits.max_bulk_bytes", "0", "greater than 0"},
      {"--max-bulk-bytes", "limits.max_bulk_bytes", "-1", "greater than 0"},
      {"--max-bulk-bytes", "limits.max_bulk_bytes", "10tb", "unknown unit"},
      {"--max-bulk-bytes", "limits.max_bulk_bytes", "1.5mb", "whole number"},
      {"--max-bulk-bytes", "limits.max_bulk_bytes", "mb", "not a size"},
      {"--max-bulk-bytes", "limits.max_bulk_bytes", "99999999999999999999", "too large"},
      {"--max-request-bytes", "limits.max_request_bytes", "17179869184gb", "too large"},
      {"--max-array-len", "limits.max_array_len", "0", "greater than 0"},
      {"--max-array-len", "limits.max_array_len", "10x", "trailing garbage"},
      {"--max-pipeline-depth", "limits.max_pipeline_depth", "1k", "no unit"},
      {"--max-inflight-bytes", "limits.max_inflight_bytes", "0", "greater than 0"},
      {"--workers", "workers", "1025", "must be 0-1024"},
      {"--workers", "workers", "-1", "must be 0-1024"},
      {"--workers", "workers", "2x", "trailing garbage"},
      {"--workers", "workers", "1.5", "whole number"},
      {"--workers", "workers", "many", "not a whole number"},
      {"--backend-connections", "backend_connections", "0", "must be 1-64"},
      {"--backend-connections", "backend_connections", "65", "must be 1-64"},
      {"--read-policy", "read_policy", "fastest", "round_robin, random, primary"},
      {"--log-level", "log_level", "loud", "trace, debug"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.flag);
    CAPTURE(c.value);
    std::string msg = ErrorOf({}, {c.flag, c.value});
    CHECK(Has(msg, "config: " + c.key + ": "));
    CHECK(Has(msg, "\"" + c.value + "\""));
    CHECK(Has(msg, c.reason));
    CHECK(Has(msg, "(from flag " + c.flag + ")"));
  }
}

TEST_CASE("Config: duplicate replicas are refused") {
  std::string msg = ErrorOf({{"KOMPRESS_REPLICAS", "a:1,a:1"}});
  CHECK(Has(msg, "replicas"));
  CHECK(Has(msg, "\"a:1\""));
  CHECK(Has(msg, "twice"));
}

TEST_CASE("Config: cross-key checks") {
  CHECK(Has(ErrorOf({}, {"--primary", "127.0.0.1:6380"}), "forward to itself"));
  CHECK(Has(ErrorOf({}, {"--admin-listen", "127.0.0.1:6380"}), "same address as listen"));
  CHECK(Has(ErrorOf({}, {"--backend-username", "u"}), "backend_password"));
}

TEST_CASE("Config: YAML errors point at the file and line") {
  SUBCASE("unknown top-level key") {
    TempYaml file("timeout: 1\nfoo: 2\n");
    std::string msg = ErrorOf({}, {"--config", file.path()});
    CHECK(msg == "config: unknown key 'foo' in " + file.path() + ":2");
  }
  SUBCASE("unknown key inside limits") {
    TempYaml file("limits:\n  max_bulk_bytes: 1mb\n  max_foo: 3\n");
    std::string msg = ErrorOf({}, {"--config", file.path()});
    CHECK(Has(msg, "unknown key 'limits.max_foo' in " + file.path() + ":3"));
  }
  SUBCASE("limit at the top level gets a hint") {
    TempYaml file("max_bulk_bytes: 1mb\n");
    CHECK(Has(ErrorOf({}, {"--config", file.path()}), "under limits"));
  }
  SUBCASE("bad value carries file:line") {
    TempYaml file("workers: 2\ntimeout: -3\n");
    std::string msg = ErrorOf({}, {"--config", file.path()});
    CHECK(msg == "config: timeout: \"-3\": must not be negative (from file " + file.path() + ":2)");
  }
  SUBCASE("bad replica item carries its own line") {
    TempYaml file("replicas:\n  - a:1\n  - \"b:\"\n");
    std::string msg = ErrorOf({}, {"--config", file.path()});
    CHECK(Has(msg, "\"b:\""));
    CHECK(Has(msg, "missing port"));
    CHECK(Has(msg, file.path() + ":3"));
  }
  SUBCASE("a replica item that is a map") {
    // Unquoted "b:" is YAML for a one-key map.
    TempYaml file("replicas:\n  - a:1\n  - b:\n");
    std::string msg = ErrorOf({}, {"--config", file.path()});
    CHECK(Has(msg, "replicas: each entry must be a \"host:port\" string, got a map"));
    CHECK(Has(msg, file.path() + ":3"));
  }
  SUBCASE("a map where a scalar is expected") {
    TempYaml file("timeout:\n  seconds: 5\n");
    std::string msg = ErrorOf({}, {"--config", file.path()});
    CHECK(Has(msg, "timeout"));
    CHECK(Has(msg, "got a map"));
  }
  SUBCASE("unquoted IPv6 becomes a list") {
    TempYaml file("listen: [::1]:6380\n");
    CHECK_THROWS_AS(Load({}, {"--config", file.path()}), ConfigError);
  }
  SUBCASE("limits must be a map") {
    TempYaml file("limits: 5\n");
    CHECK(Has(ErrorOf({}, {"--config", file.path()}), "limits: expected a map"));
  }
  SUBCASE("top level must be a map") {
    TempYaml file("- a\n- b\n");
    CHECK(Has(ErrorOf({}, {"--config", file.path()}), "top level"));
  }
  SUBCASE("duplicate key") {
    TempYaml file("workers: 1\nworkers: 2\n");
    CHECK(Has(ErrorOf({}, {"--config", file.path()}), "duplicate key 'workers'"));
  }
  SUBCASE("syntax error") {
    TempYaml file("timeout: [1, 2\n");
    std::string msg = ErrorOf({}, {"--config", file.path()});
    CHECK(Has(msg, file.path()));
    CHECK(Has(msg, "YAML"));
  }
  SUBCASE("missing file") {
    std::string msg = ErrorOf({{"KOMPRESS_CONFIG", "no-such-kp-config.yaml"}});
    CHECK(Has(msg, "no-such-kp-config.yaml"));
    CHECK(Has(msg, "env KOMPRESS_CONFIG"));
  }
}

TEST_CASE("Config: error messages stay on one line") {
  std::string msg = ErrorOf({{"KOMPRESS_LISTEN", "a\nb:1"}});
  CHECK(msg.find('\n') == std::string::npos);
  CHECK(Has(msg, "a\\nb:1"));
}

TEST_CASE("Config: HelpText lists every flag, env var and the REDIS_ variables") {
  std::string help = HelpText();
  for (const char* s : {"--help",
                        "--version",
                        "--check-config",
                        "--config",
                        "KOMPRESS_CONFIG",
                        "--listen",
                        "KOMPRESS_LISTEN",
                        "127.0.0.1:6380",
                        "--primary",
                        "localhost:6379",
                        "--replicas",
                        "--timeout",
                        "KOMPRESS_TIMEOUT",
                        "--workers",
                        "--backend-connections",
                        "--read-policy",
                        "--health-check-interval",
                        "--drain-timeout",
                        "--log-level",
                        "--requirepass",
                        "--backend-username",
                        "--backend-password",
                        "--admin-listen",
                        "--max-array-len",
                        "--max-bulk-bytes",
                        "KOMPRESS_MAX_BULK_BYTES",
                        "512mb",
                        "--max-request-bytes",
                        "--max-inline-bytes",
                        "--max-reply-nesting",
                        "--max-client-buffer-bytes",
                        "--max-pipeline-depth",
                        "--max-inflight-bytes",
                        "REDIS_HOST",
                        "REDIS_PORT",
                        "REDIS_REPLICAS_HOST_PORT",
                        "REDIS_TIMEOUT"}) {
    CAPTURE(s);
    CHECK(Has(help, s));
  }
}

TEST_CASE("Config: Describe summarises and masks passwords") {
  Config c = Load({{"KOMPRESS_REQUIREPASS", "topsecret"},
                   {"KOMPRESS_BACKEND_USERNAME", "proxyuser"},
                   {"KOMPRESS_BACKEND_PASSWORD", "hunter2"},
                   {"REDIS_REPLICAS_HOST_PORT", "r1:1,[::1]:2"}});
  std::string d = Describe(c);
  CHECK_FALSE(Has(d, "topsecret"));
  CHECK_FALSE(Has(d, "hunter2"));
  CHECK(Has(d, "***"));
  CHECK(Has(d, "proxyuser"));
  CHECK(Has(d, "localhost:6379"));
  CHECK(Has(d, "r1:1,[::1]:2"));
  CHECK(Has(d, "limits.max_bulk_bytes"));
  CHECK(std::count(d.begin(), d.end(), '\n') > 10);
}

}  // namespace kp

namespace kp {
namespace {

TEST_CASE("Config: freshness options (read_your_writes, max_replica_lag[_bytes])") {
  Config d = Load({});
  CHECK(d.read_your_writes);
  CHECK(d.max_replica_lag_s == 1.0);
  CHECK(d.max_replica_lag_bytes == 0);
  CHECK(d.health_check_interval_s == doctest::Approx(0.1));

  for (std::string off : {"false", "no", "off", "0", "FALSE"}) {
    CHECK_FALSE(Load({}, {"--read-your-writes", off}).read_your_writes);
    CHECK_FALSE(Load({{"KOMPRESS_READ_YOUR_WRITES", off}}).read_your_writes);
  }
  for (std::string on : {"true", "yes", "on", "1", "True"}) {
    CHECK(Load({}, {"--read-your-writes=" + on}).read_your_writes);
  }
  Config c =
      Load({{"KOMPRESS_MAX_REPLICA_LAG", "250ms"}, {"KOMPRESS_MAX_REPLICA_LAG_BYTES", "1mb"}});
  CHECK(c.max_replica_lag_s == doctest::Approx(0.25));
  CHECK(c.max_replica_lag_bytes == 1024 * 1024);
  // 0 means "no limit" for both.
  c = Load({}, {"--max-replica-lag", "0", "--max-replica-lag-bytes", "0"});
  CHECK(c.max_replica_lag_s == 0);
  CHECK(c.max_replica_lag_bytes == 0);

  CHECK(ErrorOf({}, {"--read-your-writes", "maybe"}) ==
        "config: read_your_writes: \"maybe\": must be true or false (also yes/no, on/off, 1/0) "
        "(from flag --read-your-writes)");
  CHECK(ErrorOf({{"KOMPRESS_MAX_REPLICA_LAG_BYTES", "-5"}}).find("max_replica_lag_bytes") !=
        std::string::npos);
  CHECK(ErrorOf({}, {"--max-replica-lag", "-1"}).find("must not be negative") != std::string::npos);
}

}  // namespace
}  // namespace kp

namespace kp {
namespace {

TEST_CASE("Config: Sentinel settings and their cross-checks") {
  Config c = Load({{"KOMPRESS_SENTINELS", "s1:26379, s2:26380"},
                   {"KOMPRESS_SENTINEL_MASTER", "mymaster"},
                   {"KOMPRESS_SENTINEL_PASSWORD", "pw"}});
  REQUIRE(c.sentinels.size() == 2);
  CHECK(c.sentinels[0] == Endpoint{"s1", 26379});
  CHECK(c.sentinels[1] == Endpoint{"s2", 26380});
  CHECK(c.sentinel_master == "mymaster");
  CHECK(c.sentinel_password == "pw");
  CHECK(c.sentinel_username.empty());

  c = Load({}, {"--sentinels", "127.0.0.1:26379", "--sentinel-master", "m"});
  CHECK(c.sentinels.size() == 1);
  CHECK(Describe(c).find("sentinel_master") != std::string::npos);

  // One without the other says which is missing.
  CHECK(ErrorOf({}, {"--sentinels", "127.0.0.1:26379"}).find("sentinel_master") !=
        std::string::npos);
  CHECK(ErrorOf({}, {"--sentinel-master", "m"}).find("sentinels: empty") != std::string::npos);
  // Sentinel and a fixed topology at once: refused, naming both.
  std::string both = ErrorOf({}, {"--sentinels", "127.0.0.1:26379", "--sentinel-master", "m",
                                  "--primary", "127.0.0.1:7000"});
  CHECK(both.find("primary") != std::string::npos);
  CHECK(both.find("sentinels") != std::string::npos);
  CHECK(ErrorOf({{"REDIS_REPLICAS_HOST_PORT", "r:1"}},
                {"--sentinels", "127.0.0.1:26379", "--sentinel-master", "m"})
            .find("replicas") != std::string::npos);
  CHECK(ErrorOf({}, {"--sentinels", "127.0.0.1:26379", "--sentinel-master", "m",
                     "--sentinel-username", "u"})
            .find("sentinel_password") != std::string::npos);
  CHECK(
      ErrorOf({}, {"--sentinels", "127.0.0.1:99999", "--sentinel-master", "m"}).find("sentinels") !=
      std::string::npos);
}

}  // namespace
}  // namespace kp

namespace kp {
namespace {

TEST_CASE("Config: client and memory bounds (max_clients, max_total_client_buffer_bytes)") {
  Config d;
  Config c = Load({});
  CHECK(c.max_clients == 10000);
  CHECK(c.client.max_total_client_buffer_bytes == d.client.max_total_client_buffer_bytes);
  c = Load({{"KOMPRESS_MAX_CLIENTS", "50"}, {"KOMPRESS_MAX_TOTAL_CLIENT_BUFFER_BYTES", "32mb"}});
  CHECK(c.max_clients == 50);
  CHECK(c.client.max_total_client_buffer_bytes == 32u * 1024 * 1024);
  c = Load({}, {"--max-clients", "7", "--max-total-client-buffer-bytes", "1gb"});
  CHECK(c.max_clients == 7);
  CHECK(c.client.max_total_client_buffer_bytes == 1024ull * 1024 * 1024);
  CHECK(Has(ErrorOf({}, {"--max-clients", "0"}), "config: max_clients: \"0\""));
  CHECK(Has(ErrorOf({}, {"--max-clients", "lots"}), "not a whole number"));
  std::string msg = ErrorOf({}, {"--max-total-client-buffer-bytes", "1kb"});
  CHECK(Has(msg, "limits.max_total_client_buffer_bytes"));
  CHECK(Has(msg, "at least 64kb"));
}

TEST_CASE("Config: loopback_tcp_congestion takes a kernel name or system") {
  CHECK(Load({}).loopback_tcp_congestion == "reno");
  CHECK(Load({{"KOMPRESS_LOOPBACK_TCP_CONGESTION", "cubic"}}).loopback_tcp_congestion == "cubic");
  CHECK(Load({}, {"--loopback-tcp-congestion", "system"}).loopback_tcp_congestion == "system");
  CHECK(Load({}, {"--loopback-tcp-congestion", "bbr"}).loopback_tcp_congestion == "bbr");
  std::string msg = ErrorOf({}, {"--loopback-tcp-congestion", "BBR!"});
  CHECK(Has(msg, "config: loopback_tcp_congestion: \"BBR!\""));
  CHECK(Has(msg, "congestion control name"));
  CHECK(Has(ErrorOf({}, {"--loopback-tcp-congestion", "a-name-of-sixteen"}),
            "loopback_tcp_congestion"));
  CHECK(Has(ErrorOf({{"KOMPRESS_LOOPBACK_TCP_CONGESTION", "re no"}}), "loopback_tcp_congestion"));
}

TEST_CASE("Config: busy_poll_us is off by default and takes whole microseconds") {
  CHECK(Load({}).busy_poll_us == 0);
  CHECK(Load({{"KOMPRESS_BUSY_POLL_US", "50"}}).busy_poll_us == 50);
  CHECK(Load({{"KOMPRESS_BUSY_POLL_US", "50"}}, {"--busy-poll-us", "0"}).busy_poll_us == 0);
  CHECK(Load({}, {"--busy-poll-us", "100000"}).busy_poll_us == 100000);
  TempYaml file("busy_poll_us: 200\n");
  CHECK(Load({{"KOMPRESS_CONFIG", file.path()}}).busy_poll_us == 200);
  {
    std::istringstream lines(Describe(Load({})));
    std::string line, shown;
    while (std::getline(lines, line)) {
      if (line.find("busy_poll_us") != std::string::npos) shown = line;
    }
    CHECK(Has(shown, "0 (off)"));
  }
  for (const char* bad : {"100001", "-1", "50us", "0.5"}) {
    CAPTURE(bad);
    std::string msg = ErrorOf({}, {"--busy-poll-us", bad});
    CHECK(Has(msg, "config: busy_poll_us: \"" + std::string(bad) + "\""));
    CHECK(Has(msg, "(from flag --busy-poll-us)"));
  }
  CHECK(Has(ErrorOf({}, {"--busy-poll-us", "100001"}), "must be 0-100000"));
}

TEST_CASE("Config: unknown KOMPRESS_ variables are warned about with the nearest name") {
  auto w = UnknownEnvWarnings({"PATH", "KOMPRESS_LISTNE", "KOMPRESS_TIMEOUT", "KOMPRESS_CONFIG",
                               "REDIS_HOST", "KOMPRESS_MAX_CLIENT_BUFER_BYTES",
                               "KOMPRESS_SOMETHING_ELSE_ENTIRELY"});
  REQUIRE(w.size() == 3);
  CHECK(Has(w[0], "KOMPRESS_LISTNE"));
  CHECK(Has(w[0], "did you mean KOMPRESS_LISTEN?"));
  CHECK(Has(w[1], "did you mean KOMPRESS_MAX_CLIENT_BUFFER_BYTES?"));
  CHECK(Has(w[2], "KOMPRESS_SOMETHING_ELSE_ENTIRELY"));
  CHECK_FALSE(Has(w[2], "did you mean"));
  CHECK(UnknownEnvWarnings({"KOMPRESS_LISTEN", "KOMPRESS_SENTINELS", "HOME"}).empty());
}

}  // namespace
}  // namespace kp

namespace kp {
namespace {

TEST_CASE("Config: cluster_nodes is empty by default") {
  Config c = Load({});
  CHECK(c.cluster_nodes.empty());
  CHECK_FALSE(c.cluster());
  CHECK_FALSE(c.external_topology());
  // An empty list is a value like for replicas, and still means no cluster.
  CHECK_FALSE(Load({{"KOMPRESS_CLUSTER_NODES", ""}}).cluster());
  CHECK_FALSE(Load({}, {"--cluster-nodes", ""}).cluster());
}

TEST_CASE("Config: KOMPRESS_CLUSTER_NODES is a comma-separated list") {
  Config c = Load({{"KOMPRESS_CLUSTER_NODES", "n1:7000, n2:7001 ,[::1]:7002"}});
  REQUIRE(c.cluster_nodes.size() == 3);
  CHECK(c.cluster_nodes[0] == Endpoint{"n1", 7000});
  CHECK(c.cluster_nodes[1] == Endpoint{"n2", 7001});
  CHECK(c.cluster_nodes[2] == Endpoint{"::1", 7002});
  CHECK(c.cluster());
  CHECK(c.external_topology());
  // The fixed topology stays at its defaults, unused.
  CHECK(c.primary == Endpoint{"localhost", 6379});
  CHECK(c.replicas.empty());
  CHECK(c.sentinels.empty());
  CHECK(UnknownEnvWarnings({"KOMPRESS_CLUSTER_NODES"}).empty());
}

TEST_CASE("Config: --cluster-nodes flag, and it beats the environment") {
  Config c = Load({}, {"--cluster-nodes", "10.0.0.1:7000,10.0.0.2:7000"});
  REQUIRE(c.cluster_nodes.size() == 2);
  CHECK(c.cluster_nodes[0] == Endpoint{"10.0.0.1", 7000});
  CHECK(c.cluster_nodes[1] == Endpoint{"10.0.0.2", 7000});
  CHECK(c.cluster());

  c = Load({}, {"--cluster-nodes=seed:7000"});
  REQUIRE(c.cluster_nodes.size() == 1);
  CHECK(c.cluster_nodes[0] == Endpoint{"seed", 7000});

  c = Load({{"KOMPRESS_CLUSTER_NODES", "env:1,env:2"}}, {"--cluster-nodes", "cli:3"});
  REQUIRE(c.cluster_nodes.size() == 1);
  CHECK(c.cluster_nodes[0] == Endpoint{"cli", 3});
}

TEST_CASE("Config: cluster_nodes in YAML as a list or a string") {
  TempYaml list(
      "cluster_nodes:\n"
      "  - a:7000\n"
      "  - \"[fe80::1]:7001\"\n");
  Config c = Load({}, {"--config", list.path()});
  REQUIRE(c.cluster_nodes.size() == 2);
  CHECK(c.cluster_nodes[0] == Endpoint{"a", 7000});
  CHECK(c.cluster_nodes[1] == Endpoint{"fe80::1", 7001});
  CHECK(c.cluster());

  TempYaml flow("cluster_nodes: [a:1, b:2]\n");
  CHECK(Load({}, {"--config", flow.path()}).cluster_nodes.size() == 2);

  TempYaml str("cluster_nodes: \"a:1, b:2, c:3\"\n");
  c = Load({}, {"--config", str.path()});
  REQUIRE(c.cluster_nodes.size() == 3);
  CHECK(c.cluster_nodes[2] == Endpoint{"c", 3});

  // env beats the file.
  c = Load({{"KOMPRESS_CLUSTER_NODES", "e:9"}}, {"--config", str.path()});
  REQUIRE(c.cluster_nodes.size() == 1);
  CHECK(c.cluster_nodes[0] == Endpoint{"e", 9});
}

TEST_CASE("Config: cluster_nodes with primary or replicas is refused") {
  std::vector<std::pair<Env, std::vector<std::string>>> cases = {
      {{}, {"--cluster-nodes", "a:1", "--primary", "p:1"}},
      {{{"KOMPRESS_PRIMARY", "p:1"}}, {"--cluster-nodes", "a:1"}},
      {{}, {"--cluster-nodes", "a:1", "--replicas", "r:1"}},
      {{{"KOMPRESS_REPLICAS", "r:1,r:2"}}, {"--cluster-nodes", "a:1"}},
      {{{"REDIS_REPLICAS_HOST_PORT", "r:1"}}, {"--cluster-nodes", "a:1"}},
  };
  for (const auto& tc : cases) {
    const Env& env = tc.first;  // not a structured binding: CAPTURE's lambda cannot capture one
    const std::vector<std::string>& args = tc.second;
    CAPTURE(args);
    std::string msg = ErrorOf(env, args);
    CHECK(Has(msg, "cluster_nodes"));
    CHECK(Has(msg, "set together with cluster_nodes"));
    CHECK((Has(msg, "primary:") || Has(msg, "replicas:")));
  }
  CHECK(ErrorOf({}, {"--cluster-nodes", "a:1", "--primary", "p:1"}) ==
        "config: primary: set together with cluster_nodes (with Redis Cluster the shards come from "
        "the cluster itself; remove one of the two) (from flag --primary)");
  CHECK(Has(ErrorOf({{"KOMPRESS_CLUSTER_NODES", "a:1"}, {"KOMPRESS_REPLICAS", "r:1"}}),
            "(from env KOMPRESS_REPLICAS)"));
  TempYaml file("primary: p:1\ncluster_nodes: [a:1]\n");
  CHECK(Has(ErrorOf({}, {"--config", file.path()}), "primary: set together with cluster_nodes"));
}

TEST_CASE("Config: cluster_nodes with Sentinel settings is refused") {
  std::string both =
      ErrorOf({}, {"--cluster-nodes", "a:1", "--sentinels", "s:26379", "--sentinel-master", "m"});
  CHECK(Has(both, "sentinels: set together with cluster_nodes"));
  CHECK(Has(both, "(from flag --sentinels)"));
  CHECK(Has(ErrorOf({{"KOMPRESS_CLUSTER_NODES", "a:1"},
                     {"KOMPRESS_SENTINELS", "s:26379"},
                     {"KOMPRESS_SENTINEL_MASTER", "m"}}),
            "cluster_nodes"));
  // Either Sentinel key alone is refused as well.
  CHECK_THROWS_AS(Load({}, {"--cluster-nodes", "a:1", "--sentinels", "s:26379"}), ConfigError);
  CHECK_THROWS_AS(Load({}, {"--cluster-nodes", "a:1", "--sentinel-master", "m"}), ConfigError);
  CHECK_THROWS_AS(Load({{"KOMPRESS_SENTINEL_MASTER", "m"}}, {"--cluster-nodes", "a:1"}),
                  ConfigError);
}

TEST_CASE("Config: a cluster node at the listen address is refused") {
  CHECK(ErrorOf({}, {"--cluster-nodes", "127.0.0.1:6380"}) ==
        "config: cluster_nodes: \"127.0.0.1:6380\": same address as listen "
        "(from flag --cluster-nodes)");
  std::string msg =
      ErrorOf({{"KOMPRESS_CLUSTER_NODES", "b:2,0.0.0.0:7000"}}, {"--listen", "0.0.0.0:7000"});
  CHECK(Has(msg, "cluster_nodes"));
  CHECK(Has(msg, "\"0.0.0.0:7000\""));
  CHECK(Has(msg, "same address as listen"));
  CHECK(Has(msg, "(from env KOMPRESS_CLUSTER_NODES)"));
  // Same port on another host is fine.
  CHECK(Load({}, {"--cluster-nodes", "10.0.0.1:6380"}).cluster());
}

TEST_CASE("Config: bad cluster_nodes entries name the key and the value") {
  std::string msg = ErrorOf({}, {"--cluster-nodes", "a:1,b:x"});
  CHECK(Has(msg, "cluster_nodes"));
  CHECK(Has(msg, "\"b:x\""));
  CHECK(Has(msg, "not a number"));
  CHECK(Has(msg, "(from flag --cluster-nodes)"));
  CHECK(Has(ErrorOf({{"KOMPRESS_CLUSTER_NODES", "a:1,a:1"}}), "twice"));
  CHECK(Has(ErrorOf({{"KOMPRESS_CLUSTER_NODES", "a:70000"}}), "port must be 1-65535"));
  CHECK(Has(ErrorOf({{"KOMPRESS_CLUSTER_NODES", "a"}}), "missing port"));
}

TEST_CASE("Config: cluster_nodes in Describe and the help text") {
  CHECK(Has(Describe(Load({{"KOMPRESS_CLUSTER_NODES", "n1:7000,n2:7001"}})), "n1:7000,n2:7001"));
  CHECK(Has(Describe(Load({})), "cluster_nodes"));
  std::string help = HelpText();
  CHECK(Has(help, "--cluster-nodes"));
  CHECK(Has(help, "KOMPRESS_CLUSTER_NODES"));
}

TEST_CASE("Config: cluster_nodes with only one Sentinel key names cluster_nodes") {
  // Refused, but by the Sentinel pairing check ("sentinel_master: empty while sentinels is
  // set"), which sends the user to add the other Sentinel key instead.
  CHECK(Has(ErrorOf({}, {"--cluster-nodes", "a:1", "--sentinels", "s:26379"}), "cluster_nodes"));
  CHECK(Has(ErrorOf({}, {"--cluster-nodes", "a:1", "--sentinel-master", "m"}), "cluster_nodes"));
}

TEST_CASE("Config: cluster_nodes with REDIS_HOST or REDIS_PORT is refused") {
  // REDIS_HOST/REDIS_PORT patch the primary but leave its source "default", so the conflict
  // check does not see them and they are silently ignored.
  CHECK(Has(ErrorOf({{"REDIS_HOST", "h"}}, {"--cluster-nodes", "a:1"}), "cluster_nodes"));
  CHECK(Has(ErrorOf({{"REDIS_PORT", "7000"}}, {"--cluster-nodes", "a:1"}), "cluster_nodes"));
}

}  // namespace
}  // namespace kp
