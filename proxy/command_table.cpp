// CommandTable: the built-in table (from the generated command_table_data.inc), allocation-free
// Lookup(), and FromCommandReply() with the small RESP reader it needs. The reader is our own
// rather than hiredis's redisReader because COMMAND's key specs nest deeper than the 7 levels
// Debian's hiredis 0.14 accepts.
#include "proxy/command_table.h"

#include <cctype>

#include <cstddef>
#include <cstring>
#include <iterator>
#include <limits>
#include <utility>

namespace kp {
namespace {

// One generated row; see the header of command_table_data.inc. Plain pointers and integers
// so the whole table is constant data with no start-up cost beyond Builtin()'s copy.
struct CommandRow {
  const char* name;
  int arity;
  uint32_t flags;
  int first_key;
  int last_key;
  int key_step;
  int first_sub;
  int num_subs;
};

#include "proxy/command_table_data.inc"

constexpr bool StartsWithParent(std::string_view sub, std::string_view parent) {
  return sub.size() > parent.size() + 1 && sub.substr(0, parent.size()) == parent &&
         sub[parent.size()] == '|';
}

// Catches a hand-edited or truncated .inc at compile time rather than as a wrong route.
constexpr bool RowsAreConsistent() {
  constexpr int kNumSubs = static_cast<int>(std::size(kSubcommandRows));
  int next_sub = 0;
  for (const CommandRow& row : kCommandRows) {
    if (row.num_subs == 0) continue;
    if (row.first_sub != next_sub || row.num_subs < 0 || row.first_sub + row.num_subs > kNumSubs)
      return false;
    for (int i = row.first_sub; i < row.first_sub + row.num_subs; ++i) {
      if (!StartsWithParent(kSubcommandRows[i].name, row.name)) return false;
    }
    next_sub += row.num_subs;
  }
  return next_sub == kNumSubs;
}
static_assert(RowsAreConsistent(), "command_table_data.inc: subcommand ranges are broken");
static_assert(std::size(kCommandRows) >= 200 && sizeof(kCommandTableRedisVersion) > 1,
              "command_table_data.inc looks truncated");

// Longer names cannot be Redis commands we know; Lookup() refuses them instead of allocating.
constexpr size_t kMaxNameLen = 64;

constexpr char ToLower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c;
}

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (ToLower(a[i]) != ToLower(b[i])) return false;
  }
  return true;
}

std::string LowerCopy(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = ToLower(c);
  return out;
}

// COMMAND's flag names. Kept in step with FLAG_NAMES in tools/gen_command_table.py. Flags
// this enum does not model (Redis 7's "asking", Redis 6's "random", "sort_for_script") are
// ignored: nothing in the proxy routes on them.
uint32_t FlagFromName(std::string_view name) {
  static constexpr std::pair<std::string_view, uint32_t> kFlags[] = {
      {"write", kCmdWrite},
      {"readonly", kCmdReadonly},
      {"denyoom", kCmdDenyOom},
      {"admin", kCmdAdmin},
      {"pubsub", kCmdPubsub},
      {"noscript", kCmdNoscript},
      {"blocking", kCmdBlocking},
      {"loading", kCmdLoading},
      {"stale", kCmdStale},
      {"skip_monitor", kCmdSkipMonitor},
      {"skip_slowlog", kCmdSkipSlowlog},
      {"fast", kCmdFast},
      {"no_auth", kCmdNoAuth},
      {"may_replicate", kCmdMayReplicate},
      {"no_mandatory_keys", kCmdNoMandatoryKeys},
      {"no_multi", kCmdNoMulti},
      {"movablekeys", kCmdMovableKeys},
      {"allow_busy", kCmdAllowBusy},
      {"no_async_loading", kCmdNoAsyncLoading},
      {"sentinel", kCmdSentinel},
      {"only_sentinel", kCmdOnlySentinel},
      {"protected", kCmdProtected},
      {"module", kCmdModule},
  };
  for (const auto& [flag_name, bit] : kFlags) {
    if (EqualsIgnoreCase(name, flag_name)) return bit;
  }
  return 0;
}

// Reads RESP2 values out of one complete buffer. It also takes RESP3's set, map and null
// types so a reply fetched over a HELLO 3 connection is understood too. Lengths are checked
// against the bytes actually present before anything is skipped or copied, and nesting is
// skipped iteratively, so hostile input can neither over-allocate nor blow the stack.
class RespReader {
 public:
  explicit RespReader(std::string_view in) : in_(in) {}

  bool AtEnd() const { return pos_ == in_.size(); }
  size_t pos() const { return pos_; }
  const std::string& error() const { return error_; }
  bool Fail(std::string message) {
    error_ = std::move(message) + " at byte " + std::to_string(pos_);
    return false;
  }

  bool PeekType(char* type) {
    if (pos_ >= in_.size()) return Fail("truncated reply");
    *type = in_[pos_];
    return true;
  }

  // An array ('*', or RESP3 set '~'); a null array or RESP3 null gives *len == -1.
  bool ReadArray(int64_t* len) {
    const size_t start = pos_;
    char type = 0;
    std::string_view line;
    if (!ReadHeader(&type, &line)) return false;
    if (type == '_') {
      *len = -1;
      return true;
    }
    if (type != '*' && type != '~') return FailAt(start, "expected an array");
    return ParseCount(line, len, /*per_element=*/1);
  }

  // A bulk or simple string.
  bool ReadString(std::string_view* out) {
    const size_t start = pos_;
    char type = 0;
    std::string_view line;
    if (!ReadHeader(&type, &line)) return false;
    if (type == '+') {
      *out = line;
      return true;
    }
    if (type != '$') return FailAt(start, "expected a string");
    int64_t len;
    if (!ParseCount(line, &len, /*per_element=*/0)) return false;
    if (len < 0) return FailAt(start, "unexpected null string");
    return ReadBulkBody(static_cast<size_t>(len), out);
  }

  bool ReadInteger(int64_t* value) {
    const size_t start = pos_;
    char type = 0;
    std::string_view line;
    if (!ReadHeader(&type, &line)) return false;
    if (type != ':') return FailAt(start, "expected an integer");
    if (!ParseInt(line, value)) return FailAt(start, "bad integer");
    return true;
  }

  bool ReadError(std::string_view* message) {
    const size_t start = pos_;
    char type = 0;
    if (!ReadHeader(&type, message)) return false;
    if (type != '-') return FailAt(start, "expected an error");
    return true;
  }

  // Skips one value of any type, however deeply nested.
  bool Skip() {
    size_t pending = 1;  // values still to skip; bounded by the bytes left, see ParseCount
    while (pending > 0) {
      --pending;
      const size_t start = pos_;
      char type = 0;
      std::string_view line;
      if (!ReadHeader(&type, &line)) return false;
      int64_t len;
      switch (type) {
        case '+':
        case '-':
        case ':':
        case '_':
        case ',':
        case '#':
        case '(':
          break;
        case '$':
        case '=':
        case '!': {
          if (!ParseCount(line, &len, 0)) return false;
          std::string_view body;
          if (len >= 0 && !ReadBulkBody(static_cast<size_t>(len), &body)) return false;
          break;
        }
        case '*':
        case '~':
          if (!ParseCount(line, &len, 1)) return false;
          if (len > 0) pending += static_cast<size_t>(len);
          break;
        case '%':
          if (!ParseCount(line, &len, 2)) return false;
          if (len > 0) pending += 2 * static_cast<size_t>(len);
          break;
        default:
          return FailAt(start, "unknown RESP type");
      }
    }
    return true;
  }

 private:
  bool FailAt(size_t pos, const char* message) {
    pos_ = pos;
    return Fail(message);
  }

  // Reads the type byte and the rest of its line, without the CRLF.
  bool ReadHeader(char* type, std::string_view* line) {
    if (pos_ >= in_.size()) return Fail("truncated reply");
    const size_t eol = in_.find("\r\n", pos_ + 1);
    if (eol == std::string_view::npos) return Fail("truncated reply");
    *type = in_[pos_];
    *line = in_.substr(pos_ + 1, eol - pos_ - 1);
    pos_ = eol + 2;
    return true;
  }

  bool ReadBulkBody(size_t len, std::string_view* out) {
    const size_t left = in_.size() - pos_;
    if (len > left || left - len < 2) return Fail("truncated bulk string");
    if (in_[pos_ + len] != '\r' || in_[pos_ + len + 1] != '\n')
      return Fail("bulk string not terminated by CRLF");
    *out = in_.substr(pos_, len);
    pos_ += len + 2;
    return true;
  }

  // A length or element count; -1 is null. Every element takes at least 3 bytes ("+\r\n"),
  // so a count the remaining input cannot hold is rejected before anyone trusts it.
  bool ParseCount(std::string_view line, int64_t* count, size_t per_element) {
    if (!ParseInt(line, count) || *count < -1) return Fail("bad length");
    if (*count > 0 && per_element > 0 &&
        static_cast<uint64_t>(*count) > (in_.size() - pos_) / (3 * per_element))
      return Fail("truncated reply");
    return true;
  }

  static bool ParseInt(std::string_view s, int64_t* out) {
    bool negative = false;
    if (!s.empty() && s[0] == '-') {
      negative = true;
      s.remove_prefix(1);
    }
    if (s.empty() || s.size() > 18) return false;  // 18 digits cannot overflow int64_t
    int64_t value = 0;
    for (char c : s) {
      if (c < '0' || c > '9') return false;
      value = value * 10 + (c - '0');
    }
    *out = negative ? -value : value;
    return true;
  }

  std::string_view in_;
  size_t pos_ = 0;
  std::string error_;
};

bool ReadInt(RespReader& r, int* out) {
  int64_t value = 0;
  if (!r.ReadInteger(&value)) return false;
  if (value < std::numeric_limits<int>::min() || value > std::numeric_limits<int>::max())
    return r.Fail("integer out of range");
  *out = static_cast<int>(value);
  return true;
}

CommandInfo InfoFromRow(const CommandRow& row) {
  CommandInfo info;
  info.name = row.name;
  info.arity = row.arity;
  info.flags = row.flags;
  info.first_key = row.first_key;
  info.last_key = row.last_key;
  info.key_step = row.key_step;
  return info;
}

}  // namespace

// Befriended by CommandTable to fill commands_; only this file defines it.
class CommandTableBuilder {
 public:
  static std::unique_ptr<CommandTable> FromRows() {
    auto table = std::make_unique<CommandTable>();
    table->commands_.reserve(std::size(kCommandRows));
    for (const CommandRow& row : kCommandRows) {
      CommandInfo info = InfoFromRow(row);
      info.subcommands.reserve(static_cast<size_t>(row.num_subs));
      for (int i = row.first_sub; i < row.first_sub + row.num_subs; ++i)
        info.subcommands.push_back(InfoFromRow(kSubcommandRows[i]));
      std::string key = info.name;
      table->commands_.emplace(std::move(key), std::move(info));
    }
    table->Reindex();
    return table;
  }

  static std::unique_ptr<CommandTable> FromReply(std::string_view reply, std::string* error) {
    RespReader r(reply);
    auto table = std::make_unique<CommandTable>();
    if (!ParseReply(r, table.get())) {
      if (error) *error = "COMMAND reply: " + r.error();
      return nullptr;
    }
    table->Reindex();
    return table;
  }

 private:
  static bool ParseReply(RespReader& r, CommandTable* table) {
    char type = 0;
    if (!r.PeekType(&type)) return false;
    if (type == '-') {
      std::string_view message;
      if (!r.ReadError(&message)) return false;
      return r.Fail("server answered -" + std::string(message));
    }
    int64_t count;
    if (!r.ReadArray(&count)) return false;
    if (count <= 0) return r.Fail("no commands");
    for (int64_t i = 0; i < count; ++i) {
      CommandInfo info;
      bool null_entry = false;
      if (!ParseEntry(r, {}, &info, &null_entry)) return false;
      if (null_entry) continue;  // COMMAND INFO's answer for a name it does not know
      std::string key = info.name;
      if (!table->commands_.emplace(std::move(key), std::move(info)).second)
        return r.Fail("duplicate command");
    }
    if (table->commands_.empty()) return r.Fail("no commands");
    if (!r.AtEnd()) return r.Fail("unexpected bytes after the reply");
    return true;
  }

  // One entry: [name, arity, flags, first_key, last_key, key_step] followed, from Redis 6
  // and 7, by acl categories, tips, key specs and subcommands, which are skipped except for
  // the subcommands. Later fields a future Redis may add are skipped too.
  static bool ParseEntry(RespReader& r, std::string_view parent, CommandInfo* info,
                         bool* null_entry) {
    int64_t fields;
    if (!r.ReadArray(&fields)) return false;
    if (fields < 0) {
      *null_entry = true;
      return true;
    }
    if (fields < 6) return r.Fail("command entry has fewer than 6 fields");

    std::string_view name;
    if (!r.ReadString(&name)) return false;
    if (name.empty()) return r.Fail("empty command name");
    info->name = LowerCopy(name);
    if (!parent.empty() && !StartsWithParent(info->name, parent)) {
      // Redis names subcommands "parent|sub"; accept a bare "sub" but nothing else.
      if (info->name.find('|') != std::string::npos)
        return r.Fail("subcommand does not belong to its parent");
      info->name = std::string(parent) + "|" + info->name;
    }

    if (!ReadInt(r, &info->arity)) return false;
    int64_t num_flags;
    if (!r.ReadArray(&num_flags)) return false;
    for (int64_t i = 0; i < num_flags; ++i) {
      std::string_view flag;
      if (!r.ReadString(&flag)) return false;
      info->flags |= FlagFromName(flag);
    }
    if (!ReadInt(r, &info->first_key) || !ReadInt(r, &info->last_key) ||
        !ReadInt(r, &info->key_step))
      return false;

    for (int64_t field = 6; field < fields; ++field) {
      const bool is_subcommands = field == 9 && parent.empty();
      if (!is_subcommands) {
        if (!r.Skip()) return false;
        continue;
      }
      int64_t num_subs;
      if (!r.ReadArray(&num_subs)) return false;
      for (int64_t i = 0; i < num_subs; ++i) {
        CommandInfo sub;
        bool null_sub = false;
        if (!ParseEntry(r, info->name, &sub, &null_sub)) return false;
        if (null_sub) continue;
        for (const CommandInfo& seen : info->subcommands) {
          if (seen.name == sub.name) return r.Fail("duplicate subcommand");
        }
        info->subcommands.push_back(std::move(sub));
      }
    }
    return true;
  }
};

const CommandTable& CommandTable::Builtin() {
  // Built on first use (thread-safe static init) and never destroyed, so worker threads
  // still routing during exit cannot see a destroyed table.
  static const CommandTable* const table = CommandTableBuilder::FromRows().release();
  return *table;
}

std::unique_ptr<CommandTable> CommandTable::FromCommandReply(std::string_view reply,
                                                             std::string* error) {
  return CommandTableBuilder::FromReply(reply, error);
}

namespace {
constexpr size_t kPackedMax = 8;

// A name of up to 8 bytes as one little-endian word, zero-padded (byte by byte: the name is
// a view into a client's buffer, which may end right after it).
uint64_t PackShort(std::string_view name) {
  uint64_t w = 0;
  for (size_t i = 0; i < name.size(); ++i) {
    w |= static_cast<uint64_t>(static_cast<unsigned char>(name[i])) << (8 * i);
  }
  return w;
}

// ASCII 'A'..'Z' to lower case in all 8 bytes at once; other bytes, including those with
// the high bit set, are left as they are (ToLower's rule, byte for byte).
uint64_t LowerWord(uint64_t w) {
  constexpr uint64_t kOnes = 0x0101010101010101ull;
  constexpr uint64_t kHigh = 0x8080808080808080ull;
  const uint64_t low7 = w & ~kHigh;
  const uint64_t ge_a = low7 + (0x80 - 'A') * kOnes;      // high bit: byte >= 'A'
  const uint64_t gt_z = low7 + (0x80 - 'Z' - 1) * kOnes;  // high bit: byte > 'Z'
  const uint64_t upper = (ge_a ^ gt_z) & ~w & kHigh;      // 'A'..'Z' and ASCII
  return w | (upper >> 2);                                // +32 where upper
}
}  // namespace

uint64_t CommandTable::IndexHash(std::string_view lower, uint64_t packed) {
  // Short names: a multiplicative hash of the packed word and the length (so "get" and
  // "get\0" differ); longer ones: the map's FNV-1a. Odd, so that 0 can mark an empty slot.
  if (lower.size() <= kPackedMax) {
    return ((packed ^ lower.size()) * 0x9E3779B97F4A7C15ull) | 1;
  }
  return Hash::Of(lower) | 1;
}

void CommandTable::Reindex() {
  size_t size = 16;
  while (size < commands_.size() * 2) size *= 2;
  index_.assign(size, IndexSlot{});
  const size_t mask = size - 1;
  for (const auto& entry : commands_) {
    const uint64_t packed = entry.first.size() <= kPackedMax ? PackShort(entry.first) : 0;
    const uint64_t h = IndexHash(entry.first, packed);
    size_t i = static_cast<size_t>(h ^ (h >> 32)) & mask;
    while (index_[i].entry != nullptr) i = (i + 1) & mask;
    index_[i] = IndexSlot{h, packed, &entry};
  }
}

const CommandInfo* CommandTable::Lookup(std::string_view name, std::string_view sub) const {
  if (name.size() > kMaxNameLen || index_.empty()) return nullptr;
  const size_t mask = index_.size() - 1;
  const std::pair<const std::string, CommandInfo>* found = nullptr;
  if (name.size() <= kPackedMax) {
    // Lowered and compared as one word (the table's names are lower case).
    const uint64_t packed = LowerWord(PackShort(name));
    const uint64_t h = IndexHash(name, packed);
    for (size_t i = static_cast<size_t>(h ^ (h >> 32)) & mask;; i = (i + 1) & mask) {
      const IndexSlot& slot = index_[i];
      if (slot.entry == nullptr) return nullptr;
      if (slot.hash == h && slot.packed == packed && slot.entry->first.size() == name.size()) {
        found = slot.entry;
        break;
      }
    }
  } else {
    // Lowered and hashed in one pass: IndexHash of the lowered name.
    char lower[kMaxNameLen];
    uint64_t h = Hash::kOffset;
    for (size_t i = 0; i < name.size(); ++i) {
      lower[i] = ToLower(name[i]);
      h = Hash::Step(h, lower[i]);
    }
    h |= 1;
    for (size_t i = static_cast<size_t>(h ^ (h >> 32)) & mask;; i = (i + 1) & mask) {
      const IndexSlot& slot = index_[i];
      if (slot.entry == nullptr) return nullptr;
      if (slot.hash == h && slot.entry->first.size() == name.size() &&
          std::memcmp(slot.entry->first.data(), lower, name.size()) == 0) {
        found = slot.entry;
        break;
      }
    }
  }
  const CommandInfo& command = found->second;
  if (!sub.empty()) {
    // Subcommand rows are "parent|sub"; compare only the part after the bar.
    const size_t prefix = command.name.size() + 1;
    for (const CommandInfo& candidate : command.subcommands) {
      if (EqualsIgnoreCase(std::string_view(candidate.name).substr(prefix), sub)) return &candidate;
    }
  }
  return &command;
}

}  // namespace kp

namespace kp {

bool CommandTable::Deny(std::string_view name) {
  size_t bar = name.find('|');
  auto it = commands_.find(name.substr(0, bar));
  if (it == commands_.end()) return false;
  auto mark = [](CommandInfo& info) {
    std::string shown = info.name;
    for (char& c : shown) {
      c = c == '|' ? ' ' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    }
    info.flags |= kCmdDenied;
    info.deny_reason = "ERR kompress: " + shown + " is refused by the proxy (deny_commands)";
  };
  if (bar == std::string_view::npos) {
    mark(it->second);
    for (CommandInfo& sub : it->second.subcommands) mark(sub);
    return true;
  }
  for (CommandInfo& sub : it->second.subcommands) {
    if (sub.name == name) {
      mark(sub);
      return true;
    }
  }
  return false;
}

std::unique_ptr<CommandTable> CommandTable::Merge(const CommandTable& base,
                                                  const CommandTable& extra, size_t* added) {
  auto merged = std::make_unique<CommandTable>(base);
  size_t n = 0;
  for (const auto& [name, info] : extra.commands_) {
    auto it = merged->commands_.find(name);
    if (it == merged->commands_.end()) {
      merged->commands_.emplace(name, info);
      n += 1 + info.subcommands.size();
      continue;
    }
    for (const CommandInfo& sub : info.subcommands) {
      auto& subs = it->second.subcommands;
      bool known = false;
      for (const CommandInfo& s : subs) known = known || s.name == sub.name;
      if (!known) {
        subs.push_back(sub);
        ++n;
      }
    }
  }
  if (added != nullptr) *added = n;
  merged->Reindex();
  return merged;
}

}  // namespace kp
