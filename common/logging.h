// Logging: the process-wide spdlog logger named "kompress_cache" (the original library's
// logger name, kept so operators' log filters carry over), writing to stderr.
#pragma once

#include <memory>
#include <string>

#include <spdlog/spdlog.h>

namespace kp {

// Creates the logger; returns false (and leaves the level at info) for an unknown level name.
bool InitLogging(const std::string& level);

spdlog::logger& Log();

}  // namespace kp
