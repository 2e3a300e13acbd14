// Logging set-up: one thread-safe stderr logger shared by every worker, as text or as one
// JSON object per line.
#include "common/logging.h"

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_sinks.h>

#include <algorithm>
#include <chrono>
#include <ctime>

namespace kp {

namespace {

thread_local const LogFields* t_fields = nullptr;

std::shared_ptr<spdlog::logger>& Logger() {
  static std::shared_ptr<spdlog::logger> logger = [] {
    auto l = spdlog::stderr_logger_mt("kompress_cache");
    l->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ [%n] %v");
    return l;
  }();
  return logger;
}

// {"time":"2026-11-30T08:50:18.123Z","level":"warn","logger":"kompress_cache","message":"..."}
// per line: what log shippers parse without a grok pattern.
class JsonFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    using namespace std::chrono;
    auto since = msg.time.time_since_epoch();
    std::time_t secs = duration_cast<seconds>(since).count();
    auto ms = duration_cast<milliseconds>(since).count() % 1000;
    std::tm tm{};
    gmtime_r(&secs, &tm);
    char stamp[40];
    size_t n = std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    std::snprintf(stamp + n, sizeof stamp - n, ".%03dZ", static_cast<int>(ms));
    Append(dest, "{\"time\":\"");
    Append(dest, stamp);
    Append(dest, "\",\"level\":\"");
    auto level = spdlog::level::to_string_view(msg.level);
    dest.append(level.data(), level.data() + level.size());
    Append(dest, "\",\"logger\":\"");
    Escape(dest, std::string_view(msg.logger_name.data(), msg.logger_name.size()));
    Append(dest, "\",\"message\":\"");
    Escape(dest, std::string_view(msg.payload.data(), msg.payload.size()));
    Append(dest, "\"");
    // Innermost first; a name given again further out is left out (no duplicate keys).
    std::vector<std::string_view> seen;
    for (const LogFields* f = t_fields; f != nullptr; f = f->outer()) {
      for (const auto& [key, value] : f->fields()) {
        if (key == "time" || key == "level" || key == "logger" || key == "message") continue;
        if (std::find(seen.begin(), seen.end(), key) != seen.end()) continue;
        seen.push_back(key);
        Append(dest, ",\"");
        Escape(dest, key);
        Append(dest, "\":\"");
        Escape(dest, value);
        Append(dest, "\"");
      }
    }
    Append(dest, "}\n");
  }
  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<JsonFormatter>();
  }

 private:
  static void Append(spdlog::memory_buf_t& dest, std::string_view s) {
    dest.append(s.data(), s.data() + s.size());
  }
  static void Escape(spdlog::memory_buf_t& dest, std::string_view s) {
    for (char c : s) {
      switch (c) {
        case '"':
          Append(dest, "\\\"");
          break;
        case '\\':
          Append(dest, "\\\\");
          break;
        case '\n':
          Append(dest, "\\n");
          break;
        case '\r':
          Append(dest, "\\r");
          break;
        case '\t':
          Append(dest, "\\t");
          break;
        default:
          if (static_cast<unsigned char>(c) < 0x20) {
            char u[8];
            std::snprintf(u, sizeof u, "\\u%04x", static_cast<unsigned>(c));
            Append(dest, u);
          } else {
            dest.push_back(c);
          }
      }
    }
  }
};

}  // namespace

LogFields::LogFields(std::initializer_list<std::pair<std::string_view, std::string_view>> fields)
    : outer_(t_fields) {
  for (const auto& [k, v] : fields) fields_.emplace_back(k, v);
  t_fields = this;
}

LogFields::~LogFields() {
  t_fields = outer_;
}

bool InitLogging(const std::string& level, const std::string& format) {
  auto& l = Logger();
  if (format == "json") {
    l->set_formatter(std::make_unique<JsonFormatter>());
  } else {
    l->set_formatter(
        std::make_unique<spdlog::pattern_formatter>("%Y-%m-%dT%H:%M:%S.%e %^%l%$ [%n] %v"));
  }
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
