// Logging: the process-wide spdlog logger named "kompress_cache" (the original library's
// logger name, kept so operators' log filters carry over), writing to stderr.
#pragma once

#include <memory>
#include <string>

#include <spdlog/spdlog.h>

namespace kp {

// Sets the logger's level and format ("text" or "json": one JSON object per line); returns
// false (and leaves the level at info) for an unknown level name. Safe to call again (reload).
bool InitLogging(const std::string& level, const std::string& format = "text");

spdlog::logger& Log();

}  // namespace kp
