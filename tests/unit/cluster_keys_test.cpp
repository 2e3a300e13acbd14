// Unit tests for cluster_keys: KeyPositions() finds a request's keys the way Redis 7.0 does
// (expectations were checked against `COMMAND GETKEYS` on redis-server 7.0.15; the tests
// themselves need no server), and SplitRequest() splits a RESP request into its arguments.
#include "proxy/cluster_keys.h"

#include <doctest/doctest.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/command_table.h"

// Shows positions as "{1, 3}" in failure messages.
template <>
struct doctest::StringMaker<std::vector<uint32_t>> {
  static doctest::String convert(const std::vector<uint32_t>& v) {
    std::string s = "{";
    for (size_t i = 0; i < v.size(); ++i) s += (i == 0 ? "" : ", ") + std::to_string(v[i]);
    s += "}";
    return s.c_str();
  }
};

namespace kp {
namespace {

using Positions = std::vector<uint32_t>;

struct KeysResult {
  bool ok = false;
  Positions positions;
};

// The request's row from the built-in table, looked up the way the cluster client does
// (args[1] names a subcommand when the command has one), then its key positions.
KeysResult KeysOf(const std::vector<std::string_view>& args) {
  KeysResult r;
  REQUIRE_FALSE(args.empty());
  const CommandInfo* info =
      CommandTable::Builtin().Lookup(args[0], args.size() > 1 ? args[1] : std::string_view());
  REQUIRE(info != nullptr);
  r.ok = KeyPositions(info, args, &r.positions);
  return r;
}

// The positions for a request KeyPositions accepts; fails the test if it refuses it.
Positions Keys(std::initializer_list<std::string_view> args) {
  KeysResult r = KeysOf(std::vector<std::string_view>(args));
  CHECK(r.ok);
  return r.positions;
}

// True when KeyPositions refuses the request as malformed.
bool Refused(std::initializer_list<std::string_view> args) {
  return !KeysOf(std::vector<std::string_view>(args)).ok;
}

std::vector<std::string_view> Split(std::string_view raw, bool* ok) {
  std::vector<std::string_view> args;
  *ok = SplitRequest(raw.data(), raw.size(), &args);
  return args;
}

bool SplitFails(std::string_view raw) {
  std::vector<std::string_view> args{"stale"};
  return !SplitRequest(raw.data(), raw.size(), &args);
}

}  // namespace

TEST_CASE("ClusterKeys: single-key commands (GET, SET) have their key at 1") {
  CHECK(Keys({"GET", "k1"}) == Positions{1});
  CHECK(Keys({"get", "k1"}) == Positions{1});
  CHECK(Keys({"SET", "k1", "v"}) == Positions{1});
  CHECK(Keys({"SET", "k1", "v", "EX", "10", "NX"}) == Positions{1});
}

TEST_CASE("ClusterKeys: MGET, DEL, WATCH take every argument as a key") {
  CHECK(Keys({"MGET", "a"}) == Positions{1});
  CHECK(Keys({"MGET", "a", "b", "c"}) == Positions{1, 2, 3});
  CHECK(Keys({"DEL", "a", "b"}) == Positions{1, 2});
  CHECK(Keys({"WATCH", "a", "b"}) == Positions{1, 2});
}

TEST_CASE("ClusterKeys: MSET and MSETNX take every other argument") {
  CHECK(Keys({"MSET", "a", "1"}) == Positions{1});
  CHECK(Keys({"MSET", "a", "1", "b", "2", "c", "3"}) == Positions{1, 3, 5});
  CHECK(Keys({"MSETNX", "a", "1", "b", "2"}) == Positions{1, 3});
}

TEST_CASE("ClusterKeys: BLPOP and friends: keys up to the timeout") {
  CHECK(Keys({"BLPOP", "a", "0"}) == Positions{1});
  CHECK(Keys({"BLPOP", "a", "b", "0"}) == Positions{1, 2});
  CHECK(Keys({"BRPOP", "a", "b", "c", "1.5"}) == Positions{1, 2, 3});
  CHECK(Keys({"BZPOPMIN", "a", "b", "0"}) == Positions{1, 2});
  // Too short for the range to reach a key: none, not an out-of-range index.
  CHECK(Keys({"BLPOP"}).empty());
}

TEST_CASE("ClusterKeys: keyless commands have no keys") {
  const CommandTable& t = CommandTable::Builtin();
  if (t.Lookup("ping") != nullptr) {
    CHECK(Keys({"PING"}).empty());
    CHECK(Keys({"PING", "hello"}).empty());
  }
  CHECK(Keys({"INFO"}).empty());
  CHECK(Keys({"INFO", "replication"}).empty());
  CHECK(Keys({"DBSIZE"}).empty());
  // PUBLISH's channel is not a key (the cluster client routes it itself).
  CHECK(Keys({"PUBLISH", "ch", "msg"}).empty());
}

TEST_CASE("ClusterKeys: no row or no arguments means no keys") {
  Positions out;
  std::vector<std::string_view> args{"GET", "k"};
  CHECK(KeyPositions(nullptr, args, &out));
  CHECK(out.empty());
  const CommandInfo* get = CommandTable::Builtin().Lookup("get");
  REQUIRE(get != nullptr);
  CHECK(KeyPositions(get, {}, &out));
  CHECK(out.empty());
}

TEST_CASE("ClusterKeys: positions are appended to what *out holds") {
  const CommandInfo* mget = CommandTable::Builtin().Lookup("mget");
  REQUIRE(mget != nullptr);
  Positions out{42};
  std::vector<std::string_view> args{"MGET", "a", "b"};
  CHECK(KeyPositions(mget, args, &out));
  CHECK(out == Positions{42, 1, 2});
}

TEST_CASE("ClusterKeys: EVAL, EVALSHA, FCALL read numkeys at 2") {
  CHECK(Keys({"EVAL", "return 1", "0"}).empty());
  CHECK(Keys({"EVAL", "return 1", "0", "arg1", "arg2"}).empty());
  CHECK(Keys({"EVAL", "s", "2", "ka", "kb", "x"}) == Positions{3, 4});
  CHECK(Keys({"EVAL", "s", "2", "ka", "kb"}) == Positions{3, 4});
  CHECK(Keys({"EVALSHA", "sha", "2", "ka", "kb"}) == Positions{3, 4});
  CHECK(Keys({"EVAL_RO", "s", "1", "ka", "x"}) == Positions{3});
  CHECK(Keys({"EVALSHA_RO", "sha", "1", "ka"}) == Positions{3});
  CHECK(Keys({"FCALL", "f", "2", "ka", "kb", "x"}) == Positions{3, 4});
  CHECK(Keys({"FCALL", "f", "0", "x"}).empty());
  CHECK(Keys({"FCALL_RO", "f", "1", "ka"}) == Positions{3});
}

TEST_CASE("ClusterKeys: EVAL-family numkeys that is too large or not a number is refused") {
  CHECK(Refused({"EVAL", "s", "3", "ka", "kb"}));
  CHECK(Refused({"EVAL", "s", "1"}));
  CHECK(Refused({"EVAL", "s", "x", "ka"}));
  CHECK(Refused({"EVAL", "s", "-1"}));
  CHECK(Refused({"EVAL", "s", "1x", "ka"}));
  CHECK(Refused({"EVAL", "s", "", "ka"}));
  CHECK(Refused({"EVAL", "s"}));
  CHECK(Refused({"EVALSHA", "sha", "2", "ka"}));
  CHECK(Refused({"FCALL", "f", "99999999999999999999999", "ka"}));
  CHECK(Refused({"FCALL_RO", "f", "two", "ka", "kb"}));
}

TEST_CASE("ClusterKeys: ZUNIONSTORE, ZINTERSTORE, ZDIFFSTORE: destination, then numkeys keys") {
  CHECK(Keys({"ZUNIONSTORE", "d", "2", "a", "b"}) == Positions{1, 3, 4});
  CHECK(Keys({"ZUNIONSTORE", "d", "2", "a", "b", "WEIGHTS", "1", "2"}) == Positions{1, 3, 4});
  CHECK(Keys({"ZINTERSTORE", "d", "1", "a", "AGGREGATE", "MAX"}) == Positions{1, 3});
  CHECK(Keys({"ZDIFFSTORE", "d", "3", "a", "b", "c"}) == Positions{1, 3, 4, 5});
  CHECK(Refused({"ZUNIONSTORE", "d", "3", "a", "b"}));
  CHECK(Refused({"ZINTERSTORE", "d", "x", "a"}));
}

TEST_CASE(
    "ClusterKeys: ZUNION, ZINTER, ZDIFF, ZINTERCARD, SINTERCARD, LMPOP, ZMPOP: numkeys at 1") {
  CHECK(Keys({"ZUNION", "2", "a", "b"}) == Positions{2, 3});
  CHECK(Keys({"ZUNION", "2", "a", "b", "WITHSCORES"}) == Positions{2, 3});
  CHECK(Keys({"ZINTER", "1", "a"}) == Positions{2});
  CHECK(Keys({"ZDIFF", "2", "a", "b"}) == Positions{2, 3});
  CHECK(Keys({"ZINTERCARD", "2", "a", "b", "LIMIT", "1"}) == Positions{2, 3});
  CHECK(Keys({"SINTERCARD", "2", "a", "b"}) == Positions{2, 3});
  CHECK(Keys({"SINTERCARD", "3", "a", "b", "c", "LIMIT", "5"}) == Positions{2, 3, 4});
  CHECK(Keys({"LMPOP", "2", "a", "b", "LEFT"}) == Positions{2, 3});
  CHECK(Keys({"LMPOP", "1", "a", "RIGHT", "COUNT", "2"}) == Positions{2});
  CHECK(Keys({"ZMPOP", "2", "a", "b", "MIN"}) == Positions{2, 3});
  CHECK(Refused({"ZUNION", "3", "a", "b"}));
  CHECK(Refused({"SINTERCARD", "x", "a"}));
  CHECK(Refused({"LMPOP", "-2", "a", "b", "LEFT"}));
}

TEST_CASE("ClusterKeys: BLMPOP and BZMPOP: timeout, then numkeys at 2") {
  CHECK(Keys({"BLMPOP", "0", "2", "a", "b", "LEFT"}) == Positions{3, 4});
  CHECK(Keys({"BLMPOP", "1.5", "1", "a", "RIGHT", "COUNT", "3"}) == Positions{3});
  CHECK(Keys({"BZMPOP", "0", "2", "a", "b", "MIN"}) == Positions{3, 4});
  CHECK(Refused({"BLMPOP", "0", "x", "a", "b", "LEFT"}));
  CHECK(Refused({"BZMPOP", "0", "5", "a", "b", "MAX"}));
}

TEST_CASE("ClusterKeys: XREAD: the first half of what follows STREAMS") {
  CHECK(Keys({"XREAD", "STREAMS", "s1", "0"}) == Positions{2});
  CHECK(Keys({"XREAD", "STREAMS", "s1", "s2", "0", "0"}) == Positions{2, 3});
  CHECK(Keys({"XREAD", "COUNT", "1", "BLOCK", "0", "STREAMS", "s1", "s2", "0", "0"}) ==
        Positions{6, 7});
  CHECK(Keys({"XREAD", "COUNT", "2", "streams", "a", "b", "0", "0"}) == Positions{4, 5});
  CHECK(Keys({"XREAD", "BLOCK", "10", "StReAmS", "a", "$"}) == Positions{4});
}

TEST_CASE("ClusterKeys: XREADGROUP: GROUP, COUNT, BLOCK, NOACK before STREAMS") {
  CHECK(Keys({"XREADGROUP", "GROUP", "g", "c", "STREAMS", "s1", ">"}) == Positions{5});
  CHECK(Keys({"XREADGROUP", "GROUP", "g", "c", "COUNT", "1", "STREAMS", "s1", "s2", "0", "0"}) ==
        Positions{7, 8});
  CHECK(Keys({"XREADGROUP", "GROUP", "g", "c", "NOACK", "BLOCK", "10", "STREAMS", "s1", "s2", "s3",
              ">", ">", ">"}) == Positions{8, 9, 10});
}

TEST_CASE("ClusterKeys: XREAD and XREADGROUP without a balanced STREAMS list are refused") {
  CHECK(Refused({"XREAD", "STREAMS", "s1", "s2", "0"}));
  CHECK(Refused({"XREAD", "COUNT", "1", "STREAMS"}));
  CHECK(Refused({"XREAD", "COUNT", "1", "BLOCK", "0"}));
  CHECK(Refused({"XREADGROUP", "GROUP", "g", "c", "STREAMS", "s1", "s2", ">"}));
  CHECK(Refused({"XREADGROUP", "GROUP", "g", "c", "COUNT", "1"}));
}

TEST_CASE("ClusterKeys: SORT: the key, and the STORE destination") {
  CHECK(Keys({"SORT", "k"}) == Positions{1});
  CHECK(Keys({"SORT", "k", "ALPHA", "DESC"}) == Positions{1});
  CHECK(Keys({"SORT", "k", "STORE", "d"}) == Positions{1, 3});
  CHECK(Keys({"SORT", "k", "store", "d"}) == Positions{1, 3});
  CHECK(Keys({"SORT", "k", "BY", "w", "LIMIT", "0", "1", "GET", "g", "STORE", "d"}) ==
        Positions{1, 10});
  // STORE as the last argument has no destination after it.
  CHECK(Keys({"SORT", "k", "STORE"}) == Positions{1});
  CHECK(Keys({"SORT_RO", "k", "BY", "w"}) == Positions{1});
}

TEST_CASE("ClusterKeys: GEORADIUS and GEORADIUSBYMEMBER: the key, and STORE/STOREDIST") {
  CHECK(Keys({"GEORADIUS", "k", "0", "0", "1", "km"}) == Positions{1});
  CHECK(Keys({"GEORADIUS", "k", "0", "0", "1", "km", "STORE", "d"}) == Positions{1, 7});
  CHECK(Keys({"GEORADIUS", "k", "0", "0", "1", "km", "STOREDIST", "d"}) == Positions{1, 7});
  CHECK(Keys({"GEORADIUS", "k", "0", "0", "1", "km", "WITHDIST", "COUNT", "5", "storedist", "d"}) ==
        Positions{1, 10});
  // Both given: Redis 7.0's key specs report both destinations.
  CHECK(Keys({"GEORADIUS", "k", "0", "0", "1", "km", "STORE", "a", "STOREDIST", "b"}) ==
        Positions{1, 7, 9});
  CHECK(Keys({"GEORADIUSBYMEMBER", "k", "m", "10", "km"}) == Positions{1});
  CHECK(Keys({"GEORADIUSBYMEMBER", "k", "m", "10", "km", "STORE", "d"}) == Positions{1, 6});
  // Read-only variants have no STORE and a fixed key.
  CHECK(Keys({"GEORADIUS_RO", "k", "0", "0", "1", "km"}) == Positions{1});
}

TEST_CASE("ClusterKeys: MIGRATE: the key at 3, or the list after KEYS") {
  CHECK(Keys({"MIGRATE", "h", "1", "k", "0", "5000"}) == Positions{3});
  CHECK(Keys({"MIGRATE", "h", "1", "k", "0", "5000", "COPY", "REPLACE"}) == Positions{3});
  CHECK(Keys({"MIGRATE", "h", "1", "", "0", "5000", "KEYS", "a", "b"}) == Positions{7, 8});
  CHECK(Keys({"MIGRATE", "h", "1", "", "0", "5000", "REPLACE", "keys", "a"}) == Positions{8});
}

TEST_CASE("ClusterKeys: subcommands count their key from the parent's name") {
  const CommandInfo* enc = CommandTable::Builtin().Lookup("OBJECT", "ENCODING");
  REQUIRE(enc != nullptr);
  CHECK(enc->name == "object|encoding");
  CHECK(Keys({"OBJECT", "ENCODING", "k"}) == Positions{2});
  CHECK(Keys({"object", "freq", "k"}) == Positions{2});
  CHECK(Keys({"OBJECT", "HELP"}).empty());
  CHECK(Keys({"MEMORY", "USAGE", "k", "SAMPLES", "5"}) == Positions{2});
  CHECK(Keys({"XINFO", "STREAM", "s", "FULL"}) == Positions{2});
}

TEST_CASE("ClusterKeys: sharded pub/sub channels count as keys") {
  // COMMAND GETKEYS leaves them out (their key specs say not-key), but their slot decides
  // the shard, so the proxy routes by them.
  CHECK(Keys({"SPUBLISH", "ch", "msg"}) == Positions{1});
  CHECK(Keys({"SSUBSCRIBE", "a"}) == Positions{1});
  CHECK(Keys({"SSUBSCRIBE", "a", "b"}) == Positions{1, 2});
  CHECK(Keys({"SUNSUBSCRIBE", "a", "b"}) == Positions{1, 2});
  CHECK(Keys({"SUNSUBSCRIBE"}).empty());
}

// Option arguments that look like keywords: read the way Redis's getkeys procedures do.

TEST_CASE("ClusterKeys: XREADGROUP whose group or consumer is named \"streams\"") {
  // Redis skips GROUP's two arguments while looking for STREAMS: keys are [s1] at 5.
  CHECK(Keys({"XREADGROUP", "GROUP", "streams", "c", "STREAMS", "s1", "0"}) == Positions{5});
  CHECK(Keys({"XREADGROUP", "GROUP", "g", "streams", "STREAMS", "s1", "0"}) == Positions{5});
}

TEST_CASE("ClusterKeys: SORT options whose argument is \"store\"") {
  // Redis skips the arguments of BY, GET and LIMIT and keeps only the last STORE.
  CHECK(Keys({"SORT", "k", "GET", "store", "LIMIT", "0", "1"}) == Positions{1});
  CHECK(Keys({"SORT", "k", "BY", "store", "ALPHA"}) == Positions{1});
  CHECK(Keys({"SORT", "k", "STORE", "a", "STORE", "b"}) == Positions{1, 5});
}

TEST_CASE("ClusterKeys: GEORADIUSBYMEMBER with a member named \"store\"") {
  // Redis looks for STORE/STOREDIST only from index 5, after the radius and unit.
  CHECK(Keys({"GEORADIUSBYMEMBER", "k", "store", "10", "km"}) == Positions{1});
  CHECK(Keys({"GEORADIUSBYMEMBER", "k", "storedist", "10", "km", "STORE", "d"}) == Positions{1, 6});
}

TEST_CASE("ClusterKeys: MIGRATE with an AUTH password \"keys\"") {
  // Redis skips AUTH's one and AUTH2's two arguments while looking for KEYS.
  CHECK(Keys({"MIGRATE", "h", "1", "", "0", "5000", "AUTH", "keys", "KEYS", "a", "b"}) ==
        Positions{9, 10});
  CHECK(Keys({"MIGRATE", "h", "1", "", "0", "5000", "AUTH2", "u", "keys", "KEYS", "a"}) ==
        Positions{10});
}

TEST_CASE("SplitRequest: a RESP array of bulk strings") {
  bool ok = false;
  std::string raw = "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n";
  auto args = Split(raw, &ok);
  REQUIRE(ok);
  CHECK(args == std::vector<std::string_view>{"SET", "k", "hello"});
  // The views point into the request, not into copies.
  REQUIRE(args.size() == 3);
  CHECK(args[0].data() == raw.data() + 8);
  CHECK(args[2].data() == raw.data() + raw.size() - 7);

  args = Split("*1\r\n$4\r\nPING\r\n", &ok);
  CHECK(ok);
  CHECK(args == std::vector<std::string_view>{"PING"});
}

TEST_CASE("SplitRequest: bulk strings are binary-safe") {
  bool ok = false;
  // "a\r\nb" and "\0x\r" hold CR, LF and NUL; lengths, not delimiters, end them.
  constexpr char kRaw[] = "*3\r\n$3\r\nSET\r\n$4\r\na\r\nb\r\n$3\r\n\0x\r\r\n";
  const std::string raw(kRaw, sizeof(kRaw) - 1);
  auto args = Split(raw, &ok);
  REQUIRE(ok);
  REQUIRE(args.size() == 3);
  CHECK(args[0] == "SET");
  CHECK(args[1] == std::string_view("a\r\nb", 4));
  CHECK(args[2] == std::string_view("\0x\r", 3));
  // A bulk string that looks like RESP itself.
  args = Split("*2\r\n$4\r\nECHO\r\n$8\r\n*1\r\n$1\r\n\r\n", &ok);
  CHECK(ok);
  CHECK(args == std::vector<std::string_view>{"ECHO", "*1\r\n$1\r\n"});
}

TEST_CASE("SplitRequest: empty bulk strings and empty arrays") {
  bool ok = false;
  auto args = Split("*3\r\n$3\r\nSET\r\n$0\r\n\r\n$0\r\n\r\n", &ok);
  CHECK(ok);
  CHECK(args == std::vector<std::string_view>{"SET", "", ""});

  std::vector<std::string_view> out{"stale", "entries"};
  const std::string_view none = "*0\r\n";
  CHECK(SplitRequest(none.data(), none.size(), &out));
  CHECK(out.empty());
}

TEST_CASE("SplitRequest: replaces what *args held") {
  std::vector<std::string_view> out{"old"};
  const std::string_view raw = "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
  CHECK(SplitRequest(raw.data(), raw.size(), &out));
  CHECK(out == std::vector<std::string_view>{"GET", "k"});
}

TEST_CASE("SplitRequest: malformed or truncated input is refused") {
  const std::vector<std::string_view> bad = {
      "",
      "*",
      "*1",
      "*1\r",
      "*1\r\n",                            // the promised argument is missing
      "*2\r\n$3\r\nGET\r\n",               // one of two arguments
      "*1\r\n$3\r\nGE",                    // payload cut short
      "*1\r\n$3\r\nGET",                   // payload without its CRLF
      "*1\r\n$3\r\nGET\r",                 // half the CRLF
      "*1\r\n$3",                          // length without CRLF
      "*1\r\n$3\r",                        //
      "+OK\r\n",                           // not an array
      "PING\r\n",                          // inline command
      "*1\r\n:1\r\n",                      // an integer, not a bulk string
      "*1\r\n+GET\r\n",                    // a simple string, not a bulk string
      "*1\r\n$-1\r\n",                     // null bulk string
      "*-1\r\n",                           // null array
      "*1\r\n$3x\r\nGET\r\n",              // junk in the length
      "*1x\r\n$3\r\nGET\r\n",              //
      "*1\n$3\r\nGET\r\n",                 // LF without CR
      "*1\r\n$3\n\nGET\r\n",               //
      "*2\r\n$3\r\nGET\r\n$1000\r\nk\r\n"  // bulk longer than the input
  };
  for (std::string_view raw : bad) {
    CAPTURE(raw);
    CHECK(SplitFails(raw));
  }
}

TEST_CASE("SplitRequest: lengths without digits or past the end of memory") {
  // No digits at all.
  CHECK(SplitFails("*\r\n"));
  CHECK(SplitFails("*1\r\n$\r\n\r\n"));
  // A bulk length near SIZE_MAX wraps `at + n + 2` and passes the bounds check: it returns
  // true with a view of SIZE_MAX bytes.
  CHECK(SplitFails("*1\r\n$18446744073709551615\r\nx"));
  // An array count of SIZE_MAX reaches vector::reserve and throws std::length_error.
  std::vector<std::string_view> out;
  const std::string_view huge = "*18446744073709551615\r\n";
  bool split = true;
  CHECK_NOTHROW(split = SplitRequest(huge.data(), huge.size(), &out));
  CHECK_FALSE(split);
}

TEST_CASE("SplitRequest: a payload not followed by CRLF") {
  CHECK(SplitFails("*1\r\n$3\r\nGETxx"));
  CHECK(SplitFails("*2\r\n$1\r\nabc$1\r\nk\r\n"));
}

}  // namespace kp
