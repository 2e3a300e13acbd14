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
      // Options before STREAMS; GROUP takes two arguments that may be any word.
      for (size_t i = 1; i < argc; ++i) {
        if (name == "xreadgroup" && EqualsLower(args[i], "group")) {
          i += 2;
        } else if (EqualsLower(args[i], "count") || EqualsLower(args[i], "block")) {
          i += 1;
        } else if (EqualsLower(args[i], "streams")) {
          size_t rest = argc - i - 1;
          if (rest == 0 || rest % 2 != 0) return false;
          for (size_t k = 0; k < rest / 2; ++k) out->push_back(static_cast<uint32_t>(i + 1 + k));
          return true;
        }
      }
      return false;
    }
    if (Is(name, {"sort", "sort_ro"})) {
      // SORT key [BY pattern] [LIMIT offset count] [GET pattern ...] [ASC|DESC] [ALPHA]
      // [STORE destination]: only the last STORE's destination is a key.
      if (argc < 2) return false;
      out->push_back(1);
      size_t store = 0;
      for (size_t i = 2; i < argc; ++i) {
        if (EqualsLower(args[i], "by") || EqualsLower(args[i], "get")) {
          i += 1;
        } else if (EqualsLower(args[i], "limit")) {
          i += 2;
        } else if (EqualsLower(args[i], "store") && i + 1 < argc) {
          store = ++i;
        }
      }
      if (store != 0) out->push_back(static_cast<uint32_t>(store));
      return true;
    }
    if (Is(name, {"georadius", "georadiusbymember"})) {
      // As Redis 7's key specs: the first STORE and the first STOREDIST after the key,
      // center (lon lat, or member), radius and unit each name a key.
      if (argc < 2) return false;
      out->push_back(1);
      size_t first = name == "georadius" ? 6 : 5;
      bool store = false, storedist = false;
      for (size_t i = first; i + 1 < argc; ++i) {
        if (!store && EqualsLower(args[i], "store")) {
          store = true;
          out->push_back(static_cast<uint32_t>(++i));
        } else if (!storedist && EqualsLower(args[i], "storedist")) {
          storedist = true;
          out->push_back(static_cast<uint32_t>(++i));
        }
      }
      return true;
    }
    if (name == "migrate") {
      // MIGRATE host port key|"" db timeout [COPY] [REPLACE] [AUTH pw] [AUTH2 user pw]
      // [KEYS key...]
      if (argc > 3 && !args[3].empty()) {
        out->push_back(3);
        return true;
      }
      for (size_t i = 6; i < argc; ++i) {
        if (EqualsLower(args[i], "auth")) {
          i += 1;
        } else if (EqualsLower(args[i], "auth2")) {
          i += 2;
        } else if (EqualsLower(args[i], "keys")) {
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
  // A length line: type, at least one digit, CRLF; bounded so it cannot overflow.
  auto read_len = [&](size_t& at, char type, size_t* n) {
    if (at >= len || raw[at] != type) return false;
    size_t v = 0;
    size_t i = at + 1;
    while (i < len && raw[i] >= '0' && raw[i] <= '9' && i - at <= 18) {
      v = v * 10 + static_cast<size_t>(raw[i++] - '0');
    }
    if (i == at + 1 || i + 1 >= len || raw[i] != '\r' || raw[i + 1] != '\n') return false;
    at = i + 2;
    *n = v;
    return true;
  };
  size_t at = 0, argc = 0;
  if (!read_len(at, '*', &argc)) return false;
  // Each argument takes at least 6 bytes ("$0\r\n\r\n"): more than that cannot be there.
  if (argc > (len - at) / 6) return false;
  args->reserve(argc);
  for (size_t k = 0; k < argc; ++k) {
    size_t n = 0;
    if (!read_len(at, '$', &n) || n > len - at || len - at - n < 2 || raw[at + n] != '\r' ||
        raw[at + n + 1] != '\n') {
      args->clear();
      return false;
    }
    args->emplace_back(raw + at, n);
    at += n + 2;
  }
  return true;
}

}  // namespace kp
