// Router: the mapping from command (and subcommand) to strategy.
#include "proxy/router.h"

namespace kp {

bool EqualsLower(std::string_view arg, std::string_view lower) {
  if (arg.size() != lower.size()) return false;
  for (size_t i = 0; i < arg.size(); ++i) {
    char c = arg[i];
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    if (c != lower[i]) return false;
  }
  return true;
}

bool ValidClientName(std::string_view name) {
  for (char c : name) {
    if (c < '!' || c > '~') return false;
  }
  return true;
}

namespace {

// XREAD/XREADGROUP carry the blocking flag but only block with a BLOCK option, which comes
// before STREAMS; without it they are ordinary reads/writes and need no dedicated connection.
bool HasBlockOption(const Request& req) {
  for (size_t i = 1; i < req.nviews; ++i) {
    if (EqualsLower(req.argv[i], "streams")) return false;
    if (EqualsLower(req.argv[i], "block")) return true;
  }
  // Past the views we cannot see; a dedicated connection is always correct.
  return req.argc > req.nviews;
}

// Static strings: a RouteDecision carries a pointer.
const char* DenyClientReason(std::string_view sub) {
  if (EqualsLower(sub, "kill")) {
    return "ERR kompress: CLIENT KILL is not supported through the proxy (clients share its "
           "connections to Redis; disconnect the client itself)";
  }
  if (EqualsLower(sub, "pause")) {
    return "ERR kompress: CLIENT PAUSE is not supported through the proxy (it would pause every "
           "client of the server)";
  }
  if (EqualsLower(sub, "unpause")) {
    return "ERR kompress: CLIENT UNPAUSE is not supported through the proxy";
  }
  if (EqualsLower(sub, "no-evict")) {
    return "ERR kompress: CLIENT NO-EVICT is not supported through the proxy (it would apply to "
           "a connection other clients share)";
  }
  if (EqualsLower(sub, "no-touch")) {
    return "ERR kompress: CLIENT NO-TOUCH is not supported through the proxy (it would apply to "
           "a connection other clients share)";
  }
  return "ERR kompress: CLIENT UNBLOCK is not supported through the proxy (client ids are the "
         "proxy's, not the server's)";
}

}  // namespace

RouteDecision Router::Classify(const Request& req) const {
  RouteDecision d;
  if (req.argc == 0) return d;
  std::string_view name = req.arg(0);
  std::string_view sub = req.argc > 1 ? req.arg(1) : std::string_view();
  // Operator policy first, for the commands the proxy answers itself too.
  const CommandInfo* info = nullptr;
  bool looked_up = false;
  if (has_denials_) {
    info = table_.Lookup(name, sub);
    looked_up = true;
    if (info != nullptr && info->is(kCmdDenied)) {
      d.route = Route::kDeny;
      d.deny_reason = info->deny_reason.c_str();
      return d;
    }
  }

  // Commands whose meaning is per connection. Checked by name first: they are few and this
  // keeps the table lookup for everything else.
  switch (name.size()) {
    case 4:
      if (EqualsLower(name, "ping")) {
        d.route = Route::kLocal;
        d.local = LocalCommand::kPing;
        return d;
      }
      if (EqualsLower(name, "echo")) {
        d.route = Route::kLocal;
        d.local = LocalCommand::kEcho;
        return d;
      }
      if (EqualsLower(name, "quit")) {
        d.route = Route::kLocal;
        d.local = LocalCommand::kQuit;
        return d;
      }
      if (EqualsLower(name, "auth")) {
        d.route = Route::kLocal;
        d.local = LocalCommand::kAuth;
        return d;
      }
      if (EqualsLower(name, "sync")) {
        d.route = Route::kDeny;
        d.deny_reason = "ERR kompress: replication commands are not supported through the proxy";
        return d;
      }
      if (EqualsLower(name, "wait")) {
        d.route = Route::kPin;
        d.blocking = true;
        return d;
      }
      break;
    case 5:
      if (EqualsLower(name, "hello")) {
        d.route = Route::kLocal;
        d.local = LocalCommand::kHello;
        return d;
      }
      if (EqualsLower(name, "proxy")) {
        d.route = Route::kLocal;
        d.local = LocalCommand::kProxy;
        return d;
      }
      if (EqualsLower(name, "reset")) {
        d.route = Route::kLocal;
        d.local = LocalCommand::kReset;
        return d;
      }
      if (EqualsLower(name, "multi") || EqualsLower(name, "watch")) {
        d.route = Route::kPin;
        return d;
      }
      if (EqualsLower(name, "psync")) {
        d.route = Route::kDeny;
        d.deny_reason = "ERR kompress: replication commands are not supported through the proxy";
        return d;
      }
      break;
    case 6:
      if (EqualsLower(name, "select")) {
        // Changes only the client's connection class (see ConnClass): answered here.
        d.route = Route::kLocal;
        d.local = LocalCommand::kSelect;
        return d;
      }
      if (EqualsLower(name, "client")) {
        if (EqualsLower(sub, "setname") && req.argc == 3) {
          d.route = Route::kLocal;
          d.local = LocalCommand::kClientSetName;
          return d;
        }
        if (EqualsLower(sub, "getname") && req.argc == 2) {
          d.route = Route::kLocal;
          d.local = LocalCommand::kClientGetName;
          return d;
        }
        // The rest would describe or change the proxy's shared connections: each has a
        // per-client meaning answered by the proxy, or is refused.
        if (EqualsLower(sub, "id") && req.argc == 2) {
          d.route = Route::kLocal;
          d.local = LocalCommand::kClientId;
          return d;
        }
        if (EqualsLower(sub, "info") && req.argc == 2) {
          d.route = Route::kLocal;
          d.local = LocalCommand::kClientInfo;
          return d;
        }
        if (EqualsLower(sub, "list")) {
          d.route = Route::kLocal;
          d.local = LocalCommand::kClientList;
          return d;
        }
        if (EqualsLower(sub, "setinfo")) {
          d.route = Route::kLocal;
          d.local = LocalCommand::kClientSetInfo;
          return d;
        }
        if (EqualsLower(sub, "kill") || EqualsLower(sub, "pause") || EqualsLower(sub, "unpause") ||
            EqualsLower(sub, "no-evict") || EqualsLower(sub, "no-touch") ||
            EqualsLower(sub, "unblock")) {
          d.route = Route::kDeny;
          d.deny_reason = DenyClientReason(sub);
          return d;
        }
        // Reply suppression and tracking change what the connection sends back.
        if (EqualsLower(sub, "reply") || EqualsLower(sub, "tracking") ||
            EqualsLower(sub, "caching")) {
          d.route = Route::kPin;
          d.push = !EqualsLower(sub, "caching");
          return d;
        }
      }
      break;
    case 7:
      if (EqualsLower(name, "monitor")) {
        d.route = Route::kPin;
        d.blocking = true;
        d.push = true;
        return d;
      }
      if (EqualsLower(name, "waitaof")) {
        d.route = Route::kPin;
        d.blocking = true;
        return d;
      }
      break;
    default:
      break;
  }

  if (!looked_up) info = table_.Lookup(name, sub);
  if (info == nullptr) return d;  // unknown: the primary answers (or rejects) it
  d.info = info;

  if (info->is(kCmdPubsub)) {
    // PUBLISH/SPUBLISH and PUBSUB introspection are plain request/reply; (un)subscribe
    // turns the connection into a push stream.
    if (EqualsLower(name, "publish") || EqualsLower(name, "spublish") ||
        EqualsLower(name, "pubsub")) {
      return d;
    }
    d.route = Route::kPin;
    d.blocking = true;
    d.push = true;
    return d;
  }
  if (info->is(kCmdBlocking)) {
    bool xread = EqualsLower(name, "xread") || EqualsLower(name, "xreadgroup");
    if (!xread || HasBlockOption(req)) {
      d.route = Route::kPin;
      d.blocking = true;
      return d;
    }
  }
  d.route = info->is(kCmdReadonly) ? Route::kRead : Route::kWrite;
  // INFO, CLIENT ..., CONFIG GET... go to the primary but change no data: a client's reads
  // after them need not wait for replicas (read-your-writes; client libraries send some of
  // them on every new connection). Anything not known to be harmless counts as a write:
  // scripts and functions carry no write flag and may write.
  if (d.route == Route::kWrite && !info->is(kCmdWrite)) {
    static constexpr std::string_view kHarmless[] = {"info",     "client", "command", "time",
                                                     "lastsave", "memory", "latency", "slowlog",
                                                     "pubsub",   "object", "lolwut"};
    for (std::string_view h : kHarmless) {
      if (EqualsLower(name, h)) d.may_write = false;
    }
    if (EqualsLower(name, "config") && EqualsLower(sub, "get")) d.may_write = false;
    if (info->name == "script|kill" || info->name == "function|kill") {
      d.side_conn = true;
      d.may_write = false;
    }
  }
  if (d.route == Route::kRead && name.size() >= 4 &&
      EqualsLower(name.substr(name.size() - 4), "scan")) {
    if (name.size() == 4) {
      d.cursor_arg = 1;  // SCAN cursor
    } else if (name.size() == 5) {
      d.cursor_arg = 2;  // SSCAN/HSCAN/ZSCAN key cursor
    }
  }
  return d;
}

}  // namespace kp
