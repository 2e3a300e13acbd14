// Router: which strategy each command gets (read, write, pin, local, deny).
#include <doctest/doctest.h>

#include <memory>
#include <string_view>
#include <vector>

#include <initializer_list>
#include <string>
#include <vector>

#include "proxy/command_table.h"
#include "proxy/router.h"

namespace {

kp::RouteDecision Classify(std::initializer_list<const char*> args) {
  static const kp::Router router(kp::CommandTable::Builtin());
  static std::vector<std::string> storage;
  storage.assign(args.begin(), args.end());
  kp::Request req;
  req.argc = storage.size();
  req.nviews = std::min(req.argc, kp::RequestParser::kMaxArgViews);
  for (size_t i = 0; i < req.nviews; ++i) req.argv[i] = storage[i];
  return router.Classify(req);
}

}  // namespace

using kp::LocalCommand;
using kp::Route;

TEST_CASE("router: readonly commands are reads, the rest writes") {
  CHECK(Classify({"GET", "k"}).route == Route::kRead);
  CHECK(Classify({"get", "k"}).route == Route::kRead);
  CHECK(Classify({"MGET", "a", "b"}).route == Route::kRead);
  CHECK(Classify({"HGETALL", "h"}).route == Route::kRead);
  CHECK(Classify({"EVAL_RO", "return 1", "0"}).route == Route::kRead);
  CHECK(Classify({"FCALL_RO", "f", "0"}).route == Route::kRead);
  CHECK(Classify({"OBJECT", "ENCODING", "k"}).route == Route::kRead);
  CHECK(Classify({"xinfo", "stream", "s"}).route == Route::kRead);
  CHECK(Classify({"XREAD", "COUNT", "1", "STREAMS", "s", "0"}).route == Route::kRead);

  CHECK(Classify({"SET", "k", "v"}).route == Route::kWrite);
  CHECK(Classify({"EVAL", "return 1", "0"}).route == Route::kWrite);
  CHECK(Classify({"FCALL", "f", "0"}).route == Route::kWrite);
  CHECK(Classify({"CONFIG", "SET", "x", "y"}).route == Route::kWrite);
  CHECK(Classify({"CONFIG", "GET", "x"}).route == Route::kWrite);  // not readonly in Redis
  CHECK(Classify({"PUBLISH", "ch", "m"}).route == Route::kWrite);
  CHECK(Classify({"XREADGROUP", "GROUP", "g", "c", "STREAMS", "s", ">"}).route == Route::kWrite);
  CHECK(Classify({"NOSUCHCOMMAND", "x"}).route == Route::kWrite);  // unknown: primary
  CHECK(Classify({"OBJECT", "NOSUCHSUB"}).route == Route::kWrite);
}

TEST_CASE("router: connection-state commands pin the client to a dedicated connection") {
  for (auto r : {Classify({"MULTI"}), Classify({"WATCH", "k"}), Classify({"SUBSCRIBE", "c"}),
                 Classify({"psubscribe", "p*"}), Classify({"SSUBSCRIBE", "c"}),
                 Classify({"UNSUBSCRIBE"}), Classify({"MONITOR"}),
                 Classify({"CLIENT", "REPLY", "OFF"}), Classify({"CLIENT", "TRACKING", "on"})}) {
    CHECK(r.route == Route::kPin);
  }
  CHECK(Classify({"BLPOP", "q", "0"}).route == Route::kPin);
  CHECK(Classify({"BLPOP", "q", "0"}).blocking);
  CHECK(Classify({"BZPOPMIN", "z", "1"}).route == Route::kPin);
  CHECK(Classify({"WAIT", "1", "0"}).route == Route::kPin);
  CHECK(Classify({"XREAD", "BLOCK", "0", "STREAMS", "s", "$"}).route == Route::kPin);
  CHECK(Classify({"xreadgroup", "group", "g", "c", "block", "10", "streams", "s", ">"}).route ==
        Route::kPin);
  // The word BLOCK as a stream name after STREAMS is not the option.
  CHECK(Classify({"XREAD", "STREAMS", "block", "0"}).route == Route::kRead);
}

TEST_CASE("router: commands the proxy answers itself") {
  CHECK(Classify({"PING"}).local == LocalCommand::kPing);
  CHECK(Classify({"ping", "hi"}).local == LocalCommand::kPing);
  CHECK(Classify({"ECHO", "x"}).local == LocalCommand::kEcho);
  CHECK(Classify({"QUIT"}).local == LocalCommand::kQuit);
  CHECK(Classify({"AUTH", "pw"}).local == LocalCommand::kAuth);
  CHECK(Classify({"HELLO", "2"}).local == LocalCommand::kHello);
  CHECK(Classify({"SELECT", "0"}).local == LocalCommand::kSelect);
  CHECK(Classify({"SELECT", "7"}).local == LocalCommand::kSelect);
  CHECK(Classify({"CLIENT", "SETNAME", "n"}).local == LocalCommand::kClientSetName);
  CHECK(Classify({"client", "getname"}).local == LocalCommand::kClientGetName);
  CHECK(Classify({"RESET"}).local == LocalCommand::kReset);
  // CLIENT subcommands that would describe or change the shared connections.
  CHECK(Classify({"CLIENT", "LIST"}).local == LocalCommand::kClientList);
  CHECK(Classify({"client", "id"}).local == LocalCommand::kClientId);
  CHECK(Classify({"CLIENT", "INFO"}).local == LocalCommand::kClientInfo);
  CHECK(Classify({"CLIENT", "SETINFO", "LIB-NAME", "x"}).local == LocalCommand::kClientSetInfo);
  for (const char* sub : {"KILL", "pause", "UNPAUSE", "no-evict", "NO-TOUCH", "unblock"}) {
    CAPTURE(sub);
    auto d = Classify({"CLIENT", sub, "x"});
    CHECK(d.route == Route::kDeny);
    REQUIRE(d.deny_reason != nullptr);
    CHECK(std::string_view(d.deny_reason).find("not supported through the proxy") !=
          std::string_view::npos);
  }
  // Still Redis's: CLIENT HELP, TRACKINGINFO on an unpinned client.
  CHECK(Classify({"CLIENT", "HELP"}).route == Route::kWrite);
}

TEST_CASE("router: deny_commands marks rows, for commands the proxy answers itself too") {
  auto table = std::make_unique<kp::CommandTable>(kp::CommandTable::Builtin());
  REQUIRE(table->Deny("shutdown"));
  REQUIRE(table->Deny("config|set"));
  REQUIRE(table->Deny("ping"));
  CHECK_FALSE(table->Deny("nosuchcommand"));
  CHECK_FALSE(table->Deny("config|nosuchsub"));
  kp::Router router(*table, true);
  auto classify = [&](std::vector<std::string_view> args) {
    kp::Request req;
    req.argc = req.nviews = args.size();
    for (size_t i = 0; i < args.size(); ++i) req.argv[i] = args[i];
    return router.Classify(req);
  };
  auto shutdown = classify({"SHUTDOWN", "NOSAVE"});
  CHECK(shutdown.route == Route::kDeny);
  CHECK(std::string_view(shutdown.deny_reason) ==
        "ERR kompress: SHUTDOWN is refused by the proxy (deny_commands)");
  CHECK(std::string_view(classify({"config", "set", "x", "y"}).deny_reason) ==
        "ERR kompress: CONFIG SET is refused by the proxy (deny_commands)");
  CHECK(classify({"CONFIG", "GET", "x"}).route == Route::kWrite);  // only the subcommand
  CHECK(classify({"PING"}).route == Route::kDeny);
  CHECK(classify({"GET", "k"}).route == Route::kRead);
}

TEST_CASE("router: replication commands are refused") {
  CHECK(Classify({"SYNC"}).route == Route::kDeny);
  CHECK(Classify({"PSYNC", "?", "-1"}).route == Route::kDeny);
  CHECK(Classify({"SYNC"}).deny_reason != nullptr);
}

TEST_CASE("router: EqualsLower") {
  CHECK(kp::EqualsLower("GeT", "get"));
  CHECK_FALSE(kp::EqualsLower("GETX", "get"));
  CHECK_FALSE(kp::EqualsLower("", "get"));
  CHECK(kp::EqualsLower("", ""));
}

TEST_CASE("router: commands learned from the primary (modules) classify by their flags") {
  // A module's read command and a redefined GET (built-in rows must win over the primary's).
  std::string reply =
      "*2\r\n"
      "*6\r\n$8\r\njson.get\r\n:-2\r\n*2\r\n+readonly\r\n+fast\r\n:1\r\n:1\r\n:1\r\n"
      "*6\r\n$3\r\nget\r\n:2\r\n*1\r\n+write\r\n:1\r\n:1\r\n:1\r\n";
  std::string error;
  auto primary = kp::CommandTable::FromCommandReply(reply, &error);
  REQUIRE_MESSAGE(primary != nullptr, error);
  size_t added = 0;
  auto merged = kp::CommandTable::Merge(kp::CommandTable::Builtin(), *primary, &added);
  CHECK(added == 1);
  CHECK(merged->size() == kp::CommandTable::Builtin().size() + 1);
  kp::Router router(*merged);
  kp::Request req;
  req.argc = req.nviews = 2;
  req.argv[0] = "JSON.GET";
  req.argv[1] = "doc";
  CHECK(router.Classify(req).route == Route::kRead);
  req.argv[0] = "GET";
  CHECK(router.Classify(req).route == Route::kRead);
  // Without the merge the module command is unknown and goes to the primary.
  kp::Router builtin(kp::CommandTable::Builtin());
  req.argv[0] = "JSON.GET";
  CHECK(builtin.Classify(req).route == Route::kWrite);
}

TEST_CASE("router: scan commands name their cursor argument") {
  CHECK(Classify({"SCAN", "0"}).cursor_arg == 1);
  CHECK(Classify({"sscan", "s", "0"}).cursor_arg == 2);
  CHECK(Classify({"HSCAN", "h", "12"}).cursor_arg == 2);
  CHECK(Classify({"ZSCAN", "z", "0", "COUNT", "5"}).cursor_arg == 2);
  CHECK(Classify({"GET", "k"}).cursor_arg == 0);
}

TEST_CASE("router: which primary commands may change data (read-your-writes follows them)") {
  CHECK(Classify({"SET", "k", "v"}).may_write);
  CHECK(Classify({"EVAL", "return 1", "0"}).may_write);  // may-replicate, not write
  CHECK(Classify({"FCALL", "f", "0"}).may_write);
  CHECK(Classify({"NOSUCHCOMMAND", "x"}).may_write);  // unknown: assumed to
  CHECK(Classify({"INFO"}).route == Route::kWrite);   // to the primary...
  CHECK_FALSE(Classify({"INFO"}).may_write);          // ...but changes nothing
  CHECK_FALSE(Classify({"CONFIG", "GET", "maxmemory"}).may_write);
}
