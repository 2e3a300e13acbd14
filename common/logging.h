// Logging: the process-wide spdlog logger named "kompress_cache" (the original library's
// logger name, kept so operators' log filters carry over), writing to stderr.
#pragma once

#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <spdlog/spdlog.h>

namespace kp {

// Sets the logger's level and format ("text" or "json": one JSON object per line); returns
// false (and leaves the level at info) for an unknown level name. Safe to call again (reload).
bool InitLogging(const std::string& level, const std::string& format = "text");

spdlog::logger& Log();

// Structured fields for the lines this thread logs while the object lives. In the JSON format
// they are keys beside "message" (event, backend, reason...: what log pipelines filter on);
// the text format says the same in the message itself. Field names are fixed words; values
// are escaped.
class LogFields {
 public:
  LogFields(std::initializer_list<std::pair<std::string_view, std::string_view>> fields);
  ~LogFields();
  LogFields(const LogFields&) = delete;
  LogFields& operator=(const LogFields&) = delete;

  const std::vector<std::pair<std::string, std::string>>& fields() const { return fields_; }
  const LogFields* outer() const { return outer_; }  // the enclosing one, if any

 private:
  std::vector<std::pair<std::string, std::string>> fields_;
  const LogFields* outer_;
};

}  // namespace kp
