// ClusterKeys: key positions from the command table's range, and the commands with movable
// keys read argument by argument.
#include "proxy/cluster_keys.h"

#include <charconv>

#include "proxy/router.h"

namespace kp {

namespace {

bool ParseCount(std::string_view s, size_t* n) {
  int64_t v = 0;
  auto r = std::from_chars(s.data(), s.data() + s.size(), v);
  if (r.ec != std::errc() || r.ptr != s.data() + s.size() || v < 0) return false;
  *n = static_cast<size_t>(v);
  return true;
}

// `numkeys` at args[at], the keys right after it.
bool NumKeysAt(const std::vector<std::string_view>& args, size_t at, std::vector<uint32_t>* out) {
  size_t n = 0;
  if (at >= args.size() || !ParseCount(args[at], &n) || n > args.size() - at - 1) return false;
  for (size_t i = 0; i < n; ++i) out->push_back(static_cast<uint32_t>(at + 1 + i));
  return true;
}

bool Is(std::string_view name, std::initializer_list<std::string_view> names) {
  for (std::string_view n : names) {
    if (name == n) return true;
  }
  return false;
}

}  // namespace

bool KeyPositions(const CommandInfo* info, const std::vector<std::string_view>& args,
                  std::vector<uint32_t>* out) {
  if (info == nullptr || args.empty()) return true;
  const std::string& name = info->name;
  size_t argc = args.size();
  if (info->is(kCmdMovableKeys)) {
    if (Is(name, {"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"})) {
      return NumKeysAt(args, 2, out);
    }
    if (Is(name, {"zunionstore", "zinterstore", "zdiffstore"})) {
      if (argc < 2) return false;
      out->push_back(1);
      return NumKeysAt(args, 2, out);
    }
    if (Is(name, {"zunion", "zinter", "zdiff", "zintercard", "sintercard", "lmpop", "zmpop"})) {
      return NumKeysAt(args, 1, out);
    }
    if (Is(name, {"blmpop", "bzmpop"})) return NumKeysAt(args, 2, out);
    if (Is(name, {"xread", "xreadgroup"})) {
      for (size_t i = 1; i < argc; ++i) {
        if (EqualsLower(args[i], "streams")) {
          size_t rest = argc - i - 1;
          if (rest == 0 || rest % 2 != 0) return false;
          for (size_t k = 0; k < rest / 2; ++k) out->push_back(static_cast<uint32_t>(i + 1 + k));
          return true;
        }
      }
      return false;
    }
    if (Is(name, {"sort", "sort_ro"})) {
      if (argc < 2) return false;
      out->push_back(1);
      for (size_t i = 2; i + 1 < argc; ++i) {
        if (EqualsLower(args[i], "store")) out->push_back(static_cast<uint32_t>(i + 1));
      }
      return true;
    }
    if (Is(name, {"georadius", "georadiusbymember"})) {
      if (argc < 2) return false;
      out->push_back(1);
      for (size_t i = 2; i + 1 < argc; ++i) {
        if (EqualsLower(args[i], "store") || EqualsLower(args[i], "storedist")) {
          out->push_back(static_cast<uint32_t>(i + 1));
        }
      }
      return true;
    }
    if (name == "migrate") {
      if (argc > 3 && !args[3].empty()) {
        out->push_back(3);
        return true;
      }
      for (size_t i = 6; i < argc; ++i) {
        if (EqualsLower(args[i], "keys")) {
          for (size_t k = i + 1; k < argc; ++k) out->push_back(static_cast<uint32_t>(k));
          return true;
        }
      }
      return true;
    }
    // Unknown movable keys (a module's): the fixed range, which is what Redis's legacy
    // range describes as at least the first key.
  }
  if (info->first_key <= 0) return true;
  // Subcommands ("object|encoding") count their key from the parent's name.
  auto first = static_cast<size_t>(info->first_key);
  size_t last;
  if (info->last_key < 0) {
    auto back = static_cast<size_t>(-info->last_key);
    if (back > argc) return true;
    last = argc - back;
  } else {
    last = static_cast<size_t>(info->last_key);
  }
  size_t step = info->key_step > 0 ? static_cast<size_t>(info->key_step) : 1;
  for (size_t i = first; i <= last && i < argc; i += step) out->push_back(static_cast<uint32_t>(i));
  return true;
}

bool SplitRequest(const char* raw, size_t len, std::vector<std::string_view>* args) {
  args->clear();
  auto read_len = [&](size_t& at, char type, size_t* n) {
    if (at >= len || raw[at] != type) return false;
    size_t v = 0;
    size_t i = at + 1;
    while (i < len && raw[i] >= '0' && raw[i] <= '9')
      v = v * 10 + static_cast<size_t>(raw[i++] - '0');
    if (i + 1 >= len || raw[i] != '\r' || raw[i + 1] != '\n') return false;
    at = i + 2;
    *n = v;
    return true;
  };
  size_t at = 0, argc = 0;
  if (!read_len(at, '*', &argc)) return false;
  args->reserve(argc);
  for (size_t k = 0; k < argc; ++k) {
    size_t n = 0;
    if (!read_len(at, '$', &n) || at + n + 2 > len) return false;
    args->emplace_back(raw + at, n);
    at += n + 2;
  }
  return true;
}

}  // namespace kp
