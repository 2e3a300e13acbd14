// Config loading in three steps (parse -> validate -> build): command line, environment
// (KOMPRESS_* and the original Kompress Cache REDIS_* variables), optional YAML file,
// defaults. Precedence: CLI > env > file > default. Any bad value throws ConfigError whose
// message is one line naming the key, the value and the reason.
#pragma once

#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "config/config.h"

namespace kp {

class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct CommandLine {
  bool help = false;
  bool version = false;
  bool check_config = false;
  std::optional<std::string> config_file;
  // --healthcheck HOST:PORT[/PATH]: ask a running proxy's admin endpoint and exit 0 when it
  // answers 200 (a container HEALTHCHECK needs no curl in the image).
  std::optional<std::string> healthcheck;
  // Settings given as flags, as (yaml key, raw value), e.g. ("limits.max_bulk_bytes", "1mb").
  std::vector<std::pair<std::string, std::string>> settings;
};

// Parses argv. Throws ConfigError for an unknown flag or a flag missing its value.
CommandLine ParseCommandLine(int argc, const char* const* argv);

// Looks up one environment variable; returns nullptr when unset.
using EnvLookup = std::function<const char*(const char*)>;

// Builds the validated Config from the command line, the environment and the file named by
// --config (or KOMPRESS_CONFIG). Throws ConfigError.
Config LoadConfig(const CommandLine& cli, const EnvLookup& env);

// One warning per KOMPRESS_* name in `names` (the environment's variable names) that is no
// setting, naming the nearest one: a typo must not be ignored silently.
std::vector<std::string> UnknownEnvWarnings(const std::vector<std::string>& names);

// The --help text: usage, every flag, every env var, defaults.
std::string HelpText();

// A human summary of the effective config (for --check-config and the start-up log).
std::string Describe(const Config& config);

}  // namespace kp
