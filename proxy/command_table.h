// CommandTable: what the proxy knows about each Redis command and subcommand (arity, flags,
// key positions). The built-in rows are generated from a real redis-server's COMMAND reply
// by tools/gen_command_table.py into command_table_data.inc; they can be replaced at start-up
// by the primary's own COMMAND reply so newer and module commands classify correctly.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace kp {

// Redis command flags, one bit each (names as in COMMAND's reply).
enum CommandFlag : uint32_t {
  kCmdWrite = 1u << 0,
  kCmdReadonly = 1u << 1,
  kCmdDenyOom = 1u << 2,
  kCmdAdmin = 1u << 3,
  kCmdPubsub = 1u << 4,
  kCmdNoscript = 1u << 5,
  kCmdBlocking = 1u << 6,
  kCmdLoading = 1u << 7,
  kCmdStale = 1u << 8,
  kCmdSkipMonitor = 1u << 9,
  kCmdSkipSlowlog = 1u << 10,
  kCmdFast = 1u << 11,
  kCmdNoAuth = 1u << 12,
  kCmdMayReplicate = 1u << 13,
  kCmdNoMandatoryKeys = 1u << 14,
  kCmdNoMulti = 1u << 15,
  kCmdMovableKeys = 1u << 16,
  kCmdAllowBusy = 1u << 17,
  kCmdNoAsyncLoading = 1u << 18,
  kCmdSentinel = 1u << 19,
  kCmdOnlySentinel = 1u << 20,
  kCmdProtected = 1u << 21,
  kCmdModule = 1u << 22,
  // The proxy's own: refused by operator policy (deny_commands).
  kCmdDenied = 1u << 31,
};

struct CommandInfo {
  std::string name;    // lower case; subcommands as "parent|sub" like Redis
  int arity = 0;       // Redis convention: negative = at least -arity arguments
  uint32_t flags = 0;  // CommandFlag bits
  int first_key = 0;
  int last_key = 0;
  int key_step = 0;
  std::vector<CommandInfo> subcommands;
  std::string deny_reason;  // with kCmdDenied: the error reply, without the leading '-'

  bool is(uint32_t flag) const { return (flags & flag) != 0; }
};

class CommandTable {
 public:
  CommandTable() = default;
  // The lookup index points into commands_: a copy builds its own.
  CommandTable(const CommandTable& other) : commands_(other.commands_) { Reindex(); }
  CommandTable& operator=(const CommandTable& other) {
    if (this != &other) {
      commands_ = other.commands_;
      Reindex();
    }
    return *this;
  }
  // A moved map keeps its nodes, so the index stays valid.
  CommandTable(CommandTable&&) = default;
  CommandTable& operator=(CommandTable&&) = default;

  // The table generated from Redis 7.0 and checked in.
  static const CommandTable& Builtin();

  // Builds a table from the raw bytes of a RESP2 reply to COMMAND (as the primary sends it).
  // Returns nullptr and sets *error when the reply cannot be understood.
  static std::unique_ptr<CommandTable> FromCommandReply(std::string_view reply, std::string* error);

  // Looks up a command by name, case-insensitively, without allocating. When the command
  // has subcommands and `sub` names one of them, the subcommand's row is returned;
  // otherwise the parent's. Unknown names return nullptr.
  const CommandInfo* Lookup(std::string_view name, std::string_view sub = {}) const;

  size_t size() const { return commands_.size(); }

  // Marks a command ("name", with all its subcommands) or one subcommand ("name|sub") as
  // refused by the proxy. False when the table has no such command.
  bool Deny(std::string_view name);

  // `base` plus the commands and subcommands only `extra` knows. Rows present in both keep
  // base's values: the built-in flags are known-good (Redis 6 has no `blocking` flag, say).
  // *added counts what came from extra.
  static std::unique_ptr<CommandTable> Merge(const CommandTable& base, const CommandTable& extra,
                                             size_t* added);

 private:
  struct Hash {
    using is_transparent = void;
    // FNV-1a: command names are a few bytes, where it costs a fraction of std::hash's
    // general-purpose hash (looked up once per request).
    static constexpr uint64_t kOffset = 1469598103934665603ull;
    static constexpr uint64_t Step(uint64_t h, char c) {
      return (h ^ static_cast<uint8_t>(c)) * 1099511628211ull;
    }
    // All 64 bits, also where size_t is narrower: the index keeps and compares them.
    static constexpr uint64_t Of(std::string_view s) {
      uint64_t h = kOffset;
      for (char c : s) h = Step(h, c);
      return h;
    }
    size_t operator()(std::string_view s) const { return static_cast<size_t>(Of(s)); }
  };
  // Lookup()'s index over commands_ (whose nodes never move): open addressing, a power of
  // two at most half full, the hash kept beside each entry. One probe and one compare for a
  // known name, where the map costs a division, a chain walk and a string compare; it is
  // consulted once per request. Rebuilt by Reindex() whenever commands_ gains an entry.
  // Names of up to 8 bytes (nearly every command) are also kept packed in one word, lowered,
  // so the usual lookup compares two integers instead of calling memcmp.
  struct IndexSlot {
    uint64_t hash = 0;
    uint64_t packed = 0;  // the name's bytes, little-endian, when it is 8 bytes or shorter
    const std::pair<const std::string, CommandInfo>* entry = nullptr;
  };
  void Reindex();
  // The index's hash of a lowered name (odd: 0 marks an empty slot); `packed` is its
  // PackShort() when the name is 8 bytes or shorter.
  static uint64_t IndexHash(std::string_view lower, uint64_t packed);

  std::unordered_map<std::string, CommandInfo, Hash, std::equal_to<>> commands_;
  std::vector<IndexSlot> index_;
  friend class CommandTableBuilder;
};

}  // namespace kp
