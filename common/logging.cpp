// Logging set-up: one thread-safe stderr logger shared by every worker.
#include "common/logging.h"

#include <spdlog/sinks/stdout_sinks.h>

namespace kp {

namespace {
std::shared_ptr<spdlog::logger>& Logger() {
  static std::shared_ptr<spdlog::logger> logger = [] {
    auto l = spdlog::stderr_logger_mt("kompress_cache");
    l->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ [%n] %v");
    return l;
  }();
  return logger;
}
}  // namespace

bool InitLogging(const std::string& level) {
  auto& l = Logger();
  auto lvl = spdlog::level::from_str(level);
  // from_str maps unknown names to "off"; only accept "off" when asked for it.
  if (lvl == spdlog::level::off && level != "off") {
    l->set_level(spdlog::level::info);
    return false;
  }
  l->set_level(lvl);
  l->flush_on(spdlog::level::warn);
  return true;
}

spdlog::logger& Log() {
  return *Logger();
}

}  // namespace kp
