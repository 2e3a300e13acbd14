// Router: decides, from the command table, where one client request goes. A handful of
// strategies (read, write, pin, local, deny), each command mapped to exactly one; the
// session carries the strategy out.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "common/resp_parser.h"
#include "proxy/command_table.h"

namespace kp {

// The arguments of one framed request, as views (only the first kMaxArgViews are kept).
struct Request {
  Request() {}  // argv left unset: only the first nviews are ever read
  size_t argc = 0;
  size_t nviews = 0;
  // In a union so it is not initialised: filling sixteen views for every request cost as
  // much as routing a GET. Entries below nviews are set before use.
  union {
    std::string_view argv[RequestParser::kMaxArgViews];
  };

  std::string_view arg(size_t i) const { return i < nviews ? argv[i] : std::string_view(); }
};

enum class Route : uint8_t {
  kRead,   // Redis flags it readonly: a replica serves it, the primary on failure
  kWrite,  // everything else: the primary, never retried elsewhere
  kPin,    // changes connection state (transactions, blocking, pub/sub, SELECT n, ...): the
           // client gets a dedicated primary connection from here on
  kLocal,  // answered by the proxy itself
  kDeny,   // cannot work through a proxy: explicit error
};

enum class LocalCommand : uint8_t {
  kNone,
  kPing,
  kEcho,
  kQuit,
  kAuth,
  kHello,
  kSelect,  // SELECT n: changes the client's connection class
  kClientSetName,
  kClientGetName,
  kClientId,       // the proxy's id for this client (HELLO's id too)
  kClientInfo,     // this client as the proxy sees it, in CLIENT INFO's format
  kClientList,     // only this client: the others are not this client's business
  kClientSetInfo,  // lib-name / lib-ver, kept by the proxy
  kProxy,          // PROXY INFO / PROXY HELP: the proxy's own view
  kReset,
};

struct RouteDecision {
  Route route = Route::kWrite;
  LocalCommand local = LocalCommand::kNone;
  // A command that may legitimately wait longer than the timeout (BLPOP, WAIT, ...).
  bool blocking = false;
  // After it the connection sends replies that do not pair one-to-one with requests
  // (pub/sub, MONITOR, CLIENT REPLY OFF/SKIP, CLIENT TRACKING).
  bool push = false;
  const char* deny_reason = nullptr;
  // For SCAN/SSCAN/HSCAN/ZSCAN: the argument index of the cursor (0: not a cursor command).
  // A cursor is only meaningful on the server that issued it, so a scan sticks to one
  // replica from cursor 0 to the end.
  uint8_t cursor_arg = 0;
  // kWrite: the command may change data (unknown commands are assumed to).
  bool may_write = true;
  // SCRIPT KILL / FUNCTION KILL: sent on a connection of its own. On a shared one it would
  // wait behind the very script it is meant to stop (Redis reads nothing more from the
  // connection a script was called on until the script ends).
  bool side_conn = false;
  // The command table's row (key positions, for Redis Cluster routing); null when the
  // command was decided by name alone or is unknown.
  const CommandInfo* info = nullptr;
};

class Router {
 public:
  // `has_denials`: some rows carry kCmdDenied (deny_commands), so every command is looked
  // up, those the proxy answers itself included.
  explicit Router(const CommandTable& table, bool has_denials = false)
      : table_(table), has_denials_(has_denials) {}
  RouteDecision Classify(const Request& req) const;
  const CommandTable& table() const { return table_; }

 private:
  const CommandTable& table_;
  bool has_denials_;
};

// Case-insensitive ASCII comparison of a wire argument with a lower-case literal.
bool EqualsLower(std::string_view arg, std::string_view lower);

// A name CLIENT SETNAME / HELLO SETNAME accepts: printable ASCII, no spaces (Redis's rule).
bool ValidClientName(std::string_view name);

}  // namespace kp
