// Unit tests for common/resp_parser: RequestParser and ReplyFramer fed whole, split at every
// byte, grown one byte at a time, pipelined, and with the bad inputs of Redis's
// tests/unit/protocol.tcl; hiredis serves as an independent oracle for reply boundaries.
#include "common/resp_parser.h"

#include <doctest/doctest.h>
#include <hiredis/hiredis.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "tests/unit/resp_text.h"

namespace kp {
namespace {

using namespace std::string_literals;

// Exactly n bytes in their own heap block: ASan then flags any read past what was fed, and
// each call sees the bytes at a new address, which the contract allows.
std::vector<char> Copy(std::string_view s, size_t n) {
  return std::vector<char>(s.begin(), s.begin() + static_cast<std::ptrdiff_t>(n));
}

std::string Repeat(std::string_view s, size_t n) {
  std::string out;
  out.reserve(s.size() * n);
  for (size_t i = 0; i < n; ++i) out += s;
  return out;
}

using test::Bulk;

std::string Command(const std::vector<std::string>& args) {
  std::string out = "*" + std::to_string(args.size()) + "\r\n";
  for (const auto& a : args) out += Bulk(a);
  return out;
}

// Split points to try: every one for small inputs; for large ones (where copying every
// prefix would be quadratic) the first and last few hundred and a sample in between.
std::vector<size_t> SplitPoints(size_t n) {
  std::vector<size_t> ks;
  for (size_t k = 0; k < n; ++k) {
    if (n <= 4096 || k < 256 || n - k <= 256 || k % 4099 == 0) ks.push_back(k);
  }
  return ks;
}

// Prefix n of `whole` for the growing feed: a fresh copy for small inputs (so ASan sees
// over-reads), the same buffer for large ones.
const char* GrowingPrefix(const std::vector<char>& whole, size_t n, std::vector<char>* scratch) {
  if (whole.size() > 4096) return whole.data();
  scratch->assign(whole.begin(), whole.begin() + static_cast<std::ptrdiff_t>(n));
  return scratch->data();
}

// ---------------------------------------------------------------------------------------
// RequestParser helpers

struct ReqResult {
  ParseStatus status = ParseStatus::kIncomplete;
  size_t consumed = 0;
  size_t argc = 0;
  bool is_inline = false;
  std::vector<std::string> args;  // the views the parser exposes
  std::string error;
  bool operator==(const ReqResult&) const = default;
};

ReqResult Feed(RequestParser& p, const char* data, size_t len) {
  ReqResult r;
  r.status = p.Parse(data, len, &r.consumed);
  if (r.status == ParseStatus::kOk) {
    r.argc = p.argc();
    r.is_inline = p.is_inline();
    const size_t n = r.is_inline ? r.argc : std::min(r.argc, RequestParser::kMaxArgViews);
    for (size_t i = 0; i < n; ++i) r.args.emplace_back(p.arg(i, data));
    CHECK(p.arg(n, data).empty());
  } else if (r.status == ParseStatus::kError) {
    r.error = p.error();
  }
  return r;
}

ReqResult FeedWhole(std::string_view input, const RespLimits& limits = {}) {
  RequestParser p(limits);
  auto buf = Copy(input, input.size());
  return Feed(p, buf.data(), buf.size());
}

// Every split of `input` must give `expect`: prefix k then the whole buffer (fresh parser
// per k), and a parser fed prefixes growing one byte at a time. `earliest` is the shortest
// prefix allowed to produce a final answer (the full length for a valid request).
void CheckEverySplit(std::string_view input, const ReqResult& expect, size_t earliest,
                     const RespLimits& limits) {
  const auto all = Copy(input, input.size());
  for (size_t k : SplitPoints(input.size())) {
    CAPTURE(k);
    RequestParser p(limits);
    auto pre = Copy(input, k);
    ReqResult r = Feed(p, pre.data(), k);
    if (k < earliest) {
      REQUIRE(r.status == ParseStatus::kIncomplete);
    }
    if (r.status == ParseStatus::kIncomplete) {
      auto again = Copy(input, input.size());
      r = Feed(p, again.data(), again.size());
    }
    CHECK(r == expect);
  }
  RequestParser p(limits);
  std::vector<char> scratch;
  for (size_t n = 1; n <= input.size(); ++n) {
    CAPTURE(n);
    ReqResult r = Feed(p, GrowingPrefix(all, n, &scratch), n);
    if (r.status == ParseStatus::kIncomplete) {
      REQUIRE(n < input.size());
      continue;
    }
    CHECK(n >= earliest);
    CHECK(r == expect);
    break;
  }
}

// `input` is exactly one request with these arguments.
void CheckRequest(std::string_view input, const std::vector<std::string>& args,
                  bool is_inline = false, const RespLimits& limits = {}) {
  CAPTURE(input);
  ReqResult expect;
  expect.status = ParseStatus::kOk;
  expect.consumed = input.size();
  expect.argc = args.size();
  expect.is_inline = is_inline;
  const size_t views = is_inline ? args.size() : std::min(args.size(), RequestParser::kMaxArgViews);
  expect.args.assign(args.begin(), args.begin() + static_cast<std::ptrdiff_t>(views));
  REQUIRE(FeedWhole(input, limits) == expect);
  CheckEverySplit(input, expect, input.size(), limits);
}

// `input` is refused with `error`, however it is split.
void CheckRequestError(std::string_view input, const std::string& error,
                       const RespLimits& limits = {}) {
  CAPTURE(input);
  ReqResult expect;
  expect.status = ParseStatus::kError;
  expect.error = error;
  REQUIRE(FeedWhole(input, limits) == expect);
  CheckEverySplit(input, expect, 0, limits);
}

// Simulates a connection: bytes arrive in chunks ending at `cuts`, the buffer keeps what was
// not consumed, and every complete request is taken out.
std::vector<ReqResult> Stream(std::string_view input, const std::vector<size_t>& cuts,
                              const RespLimits& limits = {}) {
  RequestParser p(limits);
  std::vector<ReqResult> out;
  size_t start = 0;
  for (size_t cut : cuts) {
    for (;;) {
      auto buf = Copy(input.substr(start), cut - start);
      ReqResult r = Feed(p, buf.data(), buf.size());
      if (r.status == ParseStatus::kIncomplete) break;
      REQUIRE(r.consumed <= cut - start);
      out.push_back(r);
      if (r.status == ParseStatus::kError) return out;
      start += r.consumed;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// ReplyFramer helpers

struct RepResult {
  ParseStatus status = ParseStatus::kIncomplete;
  size_t consumed = 0;
  bool is_error = false;
  std::string error;
  bool operator==(const RepResult&) const = default;
};

RepResult Frame(ReplyFramer& f, const char* data, size_t len) {
  RepResult r;
  r.status = f.Frame(data, len, &r.consumed);
  if (r.status == ParseStatus::kOk) r.is_error = f.is_error();
  if (r.status == ParseStatus::kError) r.error = f.error();
  return r;
}

RepResult FrameWhole(std::string_view input, const RespLimits& limits = {}) {
  ReplyFramer f(limits);
  auto buf = Copy(input, input.size());
  return Frame(f, buf.data(), buf.size());
}

void CheckReplyEverySplit(std::string_view input, const RepResult& expect, size_t earliest,
                          const RespLimits& limits) {
  const auto all = Copy(input, input.size());
  for (size_t k : SplitPoints(input.size())) {
    CAPTURE(k);
    ReplyFramer f(limits);
    auto pre = Copy(input, k);
    RepResult r = Frame(f, pre.data(), k);
    if (k < earliest) {
      REQUIRE(r.status == ParseStatus::kIncomplete);
    }
    if (r.status == ParseStatus::kIncomplete) {
      auto again = Copy(input, input.size());
      r = Frame(f, again.data(), again.size());
    }
    CHECK(r == expect);
  }
  ReplyFramer f(limits);
  std::vector<char> scratch;
  for (size_t n = 1; n <= input.size(); ++n) {
    CAPTURE(n);
    RepResult r = Frame(f, GrowingPrefix(all, n, &scratch), n);
    if (r.status == ParseStatus::kIncomplete) {
      REQUIRE(n < input.size());
      continue;
    }
    CHECK(n >= earliest);
    CHECK(r == expect);
    break;
  }
}

// Fed `step` bytes at a time, handing on and dropping the settled prefix after every
// kIncomplete (as a backend connection streams a large reply): the same verdict, and the
// bytes handed on plus the final frame are exactly the input.
void CheckReplyStreamed(std::string_view input, ParseStatus want, const RespLimits& limits) {
  for (size_t step : {size_t{1}, size_t{3}, size_t{7}, size_t{64}}) {
    CAPTURE(step);
    ReplyFramer f(limits);
    std::string passed, held;
    size_t fed = 0;
    RepResult r;
    for (;;) {
      size_t n = std::min(step, input.size() - fed);
      held.append(input.substr(fed, n));
      fed += n;
      auto buf = Copy(held, held.size());
      r = Frame(f, buf.data(), buf.size());
      if (r.status != ParseStatus::kIncomplete || fed == input.size()) break;
      size_t settled = f.Settled(held.size());
      REQUIRE(settled <= held.size());
      passed.append(held, 0, settled);
      held.erase(0, settled);
      f.Discard(settled);
    }
    CHECK(r.status == want);
    if (want == ParseStatus::kOk) {
      CHECK(fed == input.size());
      CHECK(r.consumed == held.size());
      CHECK(passed + held == std::string(input));
    }
  }
}

// `input` is exactly one reply.
void CheckReply(std::string_view input, bool is_error = false, const RespLimits& limits = {}) {
  CAPTURE(input);
  RepResult expect{ParseStatus::kOk, input.size(), is_error, ""};
  REQUIRE(FrameWhole(input, limits) == expect);
  CheckReplyEverySplit(input, expect, input.size(), limits);
  CheckReplyStreamed(input, ParseStatus::kOk, limits);
}

// `input` is refused however it is split; returns the message.
std::string CheckReplyError(std::string_view input, const RespLimits& limits = {}) {
  CAPTURE(input);
  RepResult whole = FrameWhole(input, limits);
  REQUIRE(whole.status == ParseStatus::kError);
  CHECK(whole.error.rfind("Protocol error: ", 0) == 0);
  CheckReplyEverySplit(input, whole, 0, limits);
  CheckReplyStreamed(input, ParseStatus::kError, limits);
  return whole.error;
}

const char* const kMbulkLen = "Protocol error: invalid multibulk length";
const char* const kBulkLen = "Protocol error: invalid bulk length";
// A well-formed request past a configured limit: named, with the limit's value.
std::string OverLimit(const char* key, size_t value, const char* unit = "bytes") {
  return "kompress: request over limits." + std::string(key) + " (" + std::to_string(value) + " " +
         unit + "); closing the connection";
}
std::string TooLarge(size_t limit) {
  return OverLimit("max_request_bytes", limit);
}
const char* const kUnbalanced = "Protocol error: unbalanced quotes in request";
const char* const kInlineTooBig = "Protocol error: too big inline request";
const char* const kBulkCrlf = "Protocol error: expected CRLF after bulk";

}  // namespace

// ---------------------------------------------------------------------------------------
// RequestParser: multibulk

TEST_CASE("RespRequest multibulk commands, every split") {
  CheckRequest("*1\r\n$4\r\nPING\r\n", {"PING"});
  CheckRequest(Command({"SET", "key", "value"}), {"SET", "key", "value"});
  // Binary-safe: CR, LF, NUL and '$' / '*' inside payloads are data.
  const std::string bin = "a\r\nb\0c\r\n*1\r\n$3\r\n"s;
  CheckRequest(Command({"SET", bin, "\r\n"}), {"SET", bin, "\r\n"});
  // Empty arguments.
  CheckRequest("*3\r\n$3\r\nSET\r\n$0\r\n\r\n$0\r\n\r\n", {"SET", "", ""});
  CheckRequest(Command({""}), {""});
}

TEST_CASE("RespRequest empty and negative arrays are consumed without a command") {
  // Redis ignores "*0" and "*-N" (protocol.tcl "Negative multibulk length").
  CheckRequest("*0\r\n", {});
  CheckRequest("*-1\r\n", {});
  CheckRequest("*-10\r\n", {});
}

TEST_CASE("RespRequest views: only the first kMaxArgViews are kept, argc is exact") {
  std::vector<std::string> args;
  for (int i = 0; i < 40; ++i) args.push_back("arg" + std::to_string(i));
  CheckRequest(Command(args), args);
  RequestParser p(RespLimits{});
  const std::string req = Command(args);
  size_t consumed = 0;
  REQUIRE(p.Parse(req.data(), req.size(), &consumed) == ParseStatus::kOk);
  CHECK(p.argc() == 40);
  CHECK(p.arg(15, req.data()) == "arg15");
  CHECK(p.arg(16, req.data()).empty());
  CHECK(p.arg(39, req.data()).empty());
}

TEST_CASE("RespRequest views are offsets: the buffer may move between calls") {
  const std::string req = Command({"GET", "somekey"});
  RequestParser p(RespLimits{});
  size_t consumed = 0;
  std::string first = req.substr(0, 12);
  REQUIRE(p.Parse(first.data(), first.size(), &consumed) == ParseStatus::kIncomplete);
  std::string moved = "xxxx" + req;  // a different address and a different prefix
  REQUIRE(p.Parse(moved.data() + 4, req.size(), &consumed) == ParseStatus::kOk);
  CHECK(consumed == req.size());
  CHECK(p.arg(0, moved.data() + 4) == "GET");
  CHECK(p.arg(1, moved.data() + 4) == "somekey");
}

TEST_CASE("RespRequest PayloadBeyond: what is still to come of the argument being read") {
  const std::string value(100000, 'v');
  const std::string req = Command({"SET", "k", value});
  const size_t value_at = req.size() - value.size() - 2;  // the payload's first byte
  RequestParser p(RespLimits{});
  size_t consumed = 0;
  // Inside a length line: nothing known yet; inside "SET": the rest of it.
  REQUIRE(p.Parse(req.data(), 6, &consumed) == ParseStatus::kIncomplete);
  CHECK(p.PayloadBeyond(6) == 0);
  REQUIRE(p.Parse(req.data(), 10, &consumed) == ParseStatus::kIncomplete);
  CHECK(p.PayloadBeyond(10) == 3);  // "T\r\n"
  // The value's length is read: the rest of it and its CRLF, wherever the read stopped.
  for (size_t len : {value_at, value_at + 1, value_at + 5000, req.size() - 2, req.size() - 1}) {
    RequestParser q(RespLimits{});
    REQUIRE(q.Parse(req.data(), len, &consumed) == ParseStatus::kIncomplete);
    CHECK(q.PayloadBeyond(len) == req.size() - len);
    // The buffer grown to that size completes the request.
    REQUIRE(q.Parse(req.data(), len + q.PayloadBeyond(len), &consumed) == ParseStatus::kOk);
    CHECK(consumed == req.size());
    CHECK(q.PayloadBeyond(req.size()) == 0);
  }
  // Inline requests have no announced lengths.
  RequestParser inl(RespLimits{});
  REQUIRE(inl.Parse("SET k ", 6, &consumed) == ParseStatus::kIncomplete);
  CHECK(inl.PayloadBeyond(6) == 0);
}

TEST_CASE("RespRequest pipelines, every read boundary") {
  const std::string pipeline = Command({"SET", "k", "v"}) + "*0\r\n" + "PING\r\n" +
                               Command({"GET", "k"}) + "\r\n" + "ECHO \"a b\"\n" +
                               Command({"MSET", "a", "1\r\n", "b", ""});
  std::vector<ReqResult> whole = Stream(pipeline, {pipeline.size()});
  REQUIRE(whole.size() == 7);
  CHECK(whole[0].args == std::vector<std::string>{"SET", "k", "v"});
  CHECK(whole[1].argc == 0);
  CHECK(whole[2].args == std::vector<std::string>{"PING"});
  CHECK(whole[2].is_inline);
  CHECK(whole[3].args == std::vector<std::string>{"GET", "k"});
  CHECK(whole[4].argc == 0);
  CHECK(whole[5].args == std::vector<std::string>{"ECHO", "a b"});
  CHECK(whole[6].args == std::vector<std::string>{"MSET", "a", "1\r\n", "b", ""});
  for (const auto& r : whole) CHECK(r.status == ParseStatus::kOk);
  for (size_t k = 0; k <= pipeline.size(); ++k) {
    CAPTURE(k);
    CHECK(Stream(pipeline, {k, pipeline.size()}) == whole);
  }
  std::vector<size_t> bytewise;
  for (size_t k = 1; k <= pipeline.size(); ++k) bytewise.push_back(k);
  CHECK(Stream(pipeline, bytewise) == whole);
}

TEST_CASE("RespRequest bad input from Redis protocol.tcl") {
  // Out of range multibulk length: past INT_MAX malformed as in Redis; past the configured
  // max_array_len (default 1048576) the limit is named.
  CheckRequestError("*20000000\r\n", OverLimit("max_array_len", 1048576, "elements"));
  CheckRequestError("*3000000000\r\n", kMbulkLen);
  {
    // INT_MAX is the bound even when the configured limit is looser.
    RespLimits loose;
    loose.max_array_len = SIZE_MAX;
    CheckRequestError("*3000000000\r\n", kMbulkLen, loose);
  }
  // Wrong multibulk payload header.
  CheckRequestError("*3\r\n$3\r\nSET\r\n$1\r\nx\r\nfooz\r\n",
                    "Protocol error: expected '$', got 'f'");
  // Negative, out of range and non-number multibulk payload length.
  CheckRequestError("*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$-10\r\n", kBulkLen);
  CheckRequestError("*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$2000000000\r\n",
                    OverLimit("max_bulk_bytes", 512ull * 1024 * 1024));
  CheckRequestError("*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$blabla\r\n", kBulkLen);
  // Multi bulk request not followed by bulk arguments.
  CheckRequestError("*1\r\nfoo\r\n", "Protocol error: expected '$', got 'f'");
}

TEST_CASE("RespRequest protocol desync regressions: lines that never end") {
  // protocol.tcl writes these prefixes and then junk without a line end; Redis answers a
  // protocol error once 64 KB are buffered.
  const std::string junk = Repeat("payload", 10000);
  CheckRequestError("\x00"s + junk, kInlineTooBig);
  CheckRequestError("*\x00"s + junk, "Protocol error: too big mbulk count string");
  CheckRequestError("$\x00"s + junk, kInlineTooBig);
  CheckRequestError("*1\r\n$" + Repeat("1", 70000), "Protocol error: too big bulk count string");
}

TEST_CASE("RespRequest malformed numbers follow Redis string2ll") {
  for (const char* bad : {"*\r\n", "*abc\r\n", "*+1\r\n", "*01\r\n", "*-0\r\n", "*1 \r\n",
                          "*99999999999999999999\r\n", "*-\r\n"}) {
    CheckRequestError(bad, kMbulkLen);
  }
  for (const char* bad : {"*1\r\n$\r\n", "*1\r\n$+4\r\n", "*1\r\n$04\r\n", "*1\r\n$-0\r\n",
                          "*1\r\n$-1\r\n", "*1\r\n$4x\r\n"}) {
    CheckRequestError(bad, kBulkLen);
  }
  // Redis prints the unexpected byte with CR and LF turned into spaces.
  CheckRequestError("*1\r\n\r\n", "Protocol error: expected '$', got ' '");
  CheckRequestError("*1\r\n:4\r\n", "Protocol error: expected '$', got ':'");
}

TEST_CASE("RespRequest missing CRLF is refused, not skipped") {
  CheckRequestError("*1\r\n$4\r\nPINGxx", kBulkCrlf);
  CheckRequestError("*1\r\n$4\r\nPING\rx", kBulkCrlf);
  CheckRequestError("*1\r\n$4\r\nPING\n\r", kBulkCrlf);
  CheckRequestError("*2\r\n$3\r\nGET\r\n$1\r\nkk\r\n", kBulkCrlf);
  // A header line must end in CRLF too.
  CheckRequestError("*1\rx$4\r\nPING\r\n", kMbulkLen);
  CheckRequestError("*1\r\n$4\rxPING\r\n", kBulkLen);
}

TEST_CASE("RespRequest header lines are bounded by max_inline_len") {
  // The line (including '*') may be max_inline_len bytes; one more without CR is refused.
  const std::string ok_prefix = "*" + Repeat("1", 65535);
  RequestParser p(RespLimits{});
  size_t consumed = 0;
  CHECK(p.Parse(ok_prefix.data(), ok_prefix.size(), &consumed) == ParseStatus::kIncomplete);
  CheckRequestError("*" + Repeat("1", 65536), "Protocol error: too big mbulk count string");
  RespLimits small;
  small.max_inline_len = 4;
  CheckRequest("*1\r\n$4\r\nPING\r\n", {"PING"}, false, small);
  CheckRequestError("*12345\r\n", "Protocol error: too big mbulk count string", small);
  CheckRequestError("*1\r\n$12345\r\n", "Protocol error: too big bulk count string", small);
}

TEST_CASE("RespRequest one- and two-digit lengths (the parser's shortcut) decide as the rest") {
  // Lengths of one and two digits are read without the general loop; every outcome must be
  // the general path's, at every split (CheckRequest) and at the edges of max_inline_len.
  CheckRequest(Command({"SET", Repeat("k", 16), Repeat("v", 99)}),
               {"SET", Repeat("k", 16), Repeat("v", 99)});
  CheckRequest(Command({"GET", Repeat("k", 10)}), {"GET", Repeat("k", 10)});
  CheckRequestError("*1\r\n$12x\r\n", kBulkLen);
  CheckRequestError("*1\r\n$1\rx", kBulkLen);
  CheckRequestError("*1\r\n$12\rx", kBulkLen);
  CheckRequestError("*1\rx", kMbulkLen);
  CheckRequestError("*12\rx", kMbulkLen);
  CheckRequestError("*2\r\n$3\r\nGET\r\n$10\r\n" + Repeat("k", 11) + "\r\n", kBulkCrlf);
  RespLimits tiny;
  tiny.max_inline_len = 2;  // "*1" and "$4" fit; "*12" and "$10" do not
  CheckRequest("*1\r\n$4\r\nPING\r\n", {"PING"}, false, tiny);
  CheckRequestError(Command({"GET", Repeat("k", 10)}), "Protocol error: too big bulk count string",
                    tiny);
  CheckRequestError("*12\r\n", "Protocol error: too big mbulk count string", tiny);
  tiny.max_inline_len = 3;
  CheckRequest(Command({"GET", Repeat("k", 10)}), {"GET", Repeat("k", 10)}, false, tiny);
  CheckRequestError(Command({"GET", Repeat("k", 100)}), "Protocol error: too big bulk count string",
                    tiny);
}

TEST_CASE("RespRequest limits smaller than the request are enforced") {
  RespLimits l;
  l.max_array_len = 2;
  CheckRequest(Command({"GET", "k"}), {"GET", "k"}, false, l);
  CheckRequestError(Command({"SET", "k", "v"}), OverLimit("max_array_len", 2, "elements"), l);

  l = RespLimits{};
  l.max_bulk_len = 3;
  CheckRequest(Command({"GET", "abc"}), {"GET", "abc"}, false, l);
  CheckRequestError(Command({"GET", "abcd"}), OverLimit("max_bulk_bytes", 3), l);

  // "*1\r\n$4\r\nPING\r\n" is 14 bytes.
  l = RespLimits{};
  l.max_request_bytes = 14;
  CheckRequest("*1\r\n$4\r\nPING\r\n", {"PING"}, false, l);
  l.max_request_bytes = 13;
  CheckRequestError("*1\r\n$4\r\nPING\r\n", TooLarge(13), l);

  // Refused as soon as the declared lengths make it certain, before the payload arrives.
  l = RespLimits{};
  l.max_request_bytes = 100;
  CheckRequestError("*2\r\n$3\r\nSET\r\n$100\r\n", TooLarge(100), l);
  // 40 arguments need at least 40 * 6 bytes.
  CheckRequestError("*40\r\n", TooLarge(100), l);
  // A later argument's claim counts with what came before.
  CheckRequestError("*3\r\n$3\r\nSET\r\n$40\r\n" + std::string(40, 'k') + "\r\n$40\r\n",
                    TooLarge(100), l);

  // Inline requests count too.
  l = RespLimits{};
  l.max_request_bytes = 6;
  CheckRequest("PING\r\n", {"PING"}, true, l);
  CheckRequestError("PINGG\r\n", TooLarge(6), l);
}

TEST_CASE("RespRequest a huge declared count reserves nothing and is framed in O(n)") {
  // "*1000000" is within the default limits: it is simply incomplete, nothing is sized from it.
  RequestParser p(RespLimits{});
  size_t consumed = 0;
  const std::string head = "*1000000\r\n";
  CHECK(p.Parse(head.data(), head.size(), &consumed) == ParseStatus::kIncomplete);
  // Fed a few bytes at a time; a parser rescanning from the start would take minutes here.
  const std::string req = head + Repeat("$1\r\na\r\n", 1000000);
  for (size_t n = head.size(); n < req.size(); n += 3) {
    REQUIRE(p.Parse(req.data(), n, &consumed) == ParseStatus::kIncomplete);
  }
  REQUIRE(p.Parse(req.data(), req.size(), &consumed) == ParseStatus::kOk);
  CHECK(consumed == req.size());
  CHECK(p.argc() == 1000000);
  CHECK(p.arg(0, req.data()) == "a");
}

TEST_CASE("RespRequest large bulk arriving in 64 KB reads") {
  const std::string payload(8 << 20, 'v');
  const std::string req = Command({"SET", "k", payload});
  RequestParser p(RespLimits{});
  size_t consumed = 0;
  for (size_t n = 0; n < req.size(); n += 65536) {
    REQUIRE(p.Parse(req.data(), n, &consumed) == ParseStatus::kIncomplete);
  }
  REQUIRE(p.Parse(req.data(), req.size(), &consumed) == ParseStatus::kOk);
  CHECK(consumed == req.size());
  CHECK(p.arg(2, req.data()).size() == payload.size());
}

TEST_CASE("RespRequest errors are sticky until Reset") {
  RequestParser p(RespLimits{});
  size_t consumed = 0;
  const std::string bad = "*1\r\nfoo\r\n";
  REQUIRE(p.Parse(bad.data(), bad.size(), &consumed) == ParseStatus::kError);
  const std::string good = "*1\r\n$4\r\nPING\r\n";
  CHECK(p.Parse(good.data(), good.size(), &consumed) == ParseStatus::kError);
  p.Reset();
  CHECK(p.error().empty());
  REQUIRE(p.Parse(good.data(), good.size(), &consumed) == ParseStatus::kOk);
  CHECK(p.arg(0, good.data()) == "PING");
  // Reset mid-request drops the partial state.
  REQUIRE(p.Parse(good.data(), 6, &consumed) == ParseStatus::kIncomplete);
  p.Reset();
  REQUIRE(p.Parse(good.data(), good.size(), &consumed) == ParseStatus::kOk);
  CHECK(consumed == good.size());
}

// ---------------------------------------------------------------------------------------
// RequestParser: inline

TEST_CASE("RespRequest inline commands") {
  CheckRequest("PING\r\n", {"PING"}, true);
  CheckRequest("PING\n", {"PING"}, true);
  CheckRequest("set a b\r\n", {"set", "a", "b"}, true);
  CheckRequest("  set   a\tb  \r\n", {"set", "a", "b"}, true);
  // Only one CR before the LF belongs to the line end; an inner CR ends a token.
  CheckRequest("PING\r\r\n", {"PING"}, true);
  CheckRequest("a\rb\r\n", {"a", "b"}, true);
  // Blanks are skipped with isspace(), but only space, tab, CR, LF end a bare token.
  CheckRequest("\va\vb c\r\n", {"a\vb", "c"}, true);
  CheckRequest("get \x01\x7f\xff\r\n", {"get", "\x01\x7f\xff"}, true);
}

TEST_CASE("RespRequest empty inline lines are consumed without a command") {
  // protocol.tcl "Handle an empty query".
  CheckRequest("\r\n", {}, true);
  CheckRequest("\n", {}, true);
  CheckRequest("   \t \r\n", {}, true);
}

TEST_CASE("RespRequest inline quotes and escapes like sdssplitargs") {
  CheckRequest("set k \"hello world\"\r\n", {"set", "k", "hello world"}, true);
  CheckRequest("set k \"\"\r\n", {"set", "k", ""}, true);
  CheckRequest("set k ''\r\n", {"set", "k", ""}, true);
  CheckRequest("set k \"a\\x41\\x7a\\n\\r\\t\\b\\a\\\\\\\"\\q\"\r\n",
               {"set", "k", "aAz\n\r\t\b\a\\\"q"}, true);
  // \x needs two hex digits, otherwise it is a plain escaped 'x'.
  CheckRequest("echo \"\\x4g\"\r\n", {"echo", "x4g"}, true);
  CheckRequest("echo \"\\x00\"\r\n", {"echo", "\0"s}, true);
  // Single quotes know only \'.
  CheckRequest("set k 'it\\'s \\n'\r\n", {"set", "k", "it's \\n"}, true);
  // A quote may open in the middle of a token.
  CheckRequest("set foo\"bar baz\" x\r\n", {"set", "foobar baz", "x"}, true);
  // A closing quote may be followed by any isspace() byte.
  CheckRequest("a \"b\"\vc\r\n", {"a", "b", "c"}, true);
  // Quotes inside quotes of the other kind are data.
  CheckRequest("a \"it's\" 'say \"hi\"'\r\n", {"a", "it's", "say \"hi\""}, true);
}

TEST_CASE("RespRequest inline unbalanced quotes") {
  CheckRequestError("set k \"abc\r\n", kUnbalanced);
  CheckRequestError("set k 'abc\r\n", kUnbalanced);
  CheckRequestError("set k \"abc\"x\r\n", kUnbalanced);
  CheckRequestError("set k 'abc'x\r\n", kUnbalanced);
  CheckRequestError("set k \"a\\\"\r\n", kUnbalanced);
  CheckRequestError("set k \"a\\\r\n", kUnbalanced);
  CheckRequestError("\"\n", kUnbalanced);
}

TEST_CASE("RespRequest too big inline request") {
  // A line whose LF is more than max_inline_len bytes in is refused however it arrives.
  const std::string max_line(65536, 'A');
  CheckRequest(max_line + "\n", {max_line}, true);
  RequestParser p(RespLimits{});
  size_t consumed = 0;
  CHECK(p.Parse(max_line.data(), max_line.size(), &consumed) == ParseStatus::kIncomplete);
  CheckRequestError(std::string(65537, 'A'), kInlineTooBig);
  CheckRequestError(std::string(65537, 'A') + "\r\n", kInlineTooBig);
  RespLimits small;
  small.max_inline_len = 10;
  CheckRequest("GET abcde\r\n", {"GET", "abcde"}, true, small);
  CheckRequestError("GET abcdef\r\n", kInlineTooBig, small);
}

// ---------------------------------------------------------------------------------------
// ReplyFramer

TEST_CASE("RespReply RESP2 types, every split") {
  CheckReply("+OK\r\n");
  CheckReply("+\r\n");
  CheckReply("-ERR unknown command\r\n", true);
  CheckReply(":0\r\n");
  CheckReply(":-9223372036854775808\r\n");
  CheckReply("$5\r\nhello\r\n");
  CheckReply("$0\r\n\r\n");
  CheckReply("$-1\r\n");
  CheckReply("$7\r\na\r\nb\0\r\n\r\n"s);
  CheckReply("*-1\r\n");
  CheckReply("*0\r\n");
  CheckReply("*3\r\n:1\r\n$-1\r\n*2\r\n+a\r\n-ERR nested\r\n");
  // A simple string may contain a lone CR (hiredis reads it so).
  CheckReply("+a\rb\r\n");
}

TEST_CASE("RespReply RESP3 types, every split") {
  CheckReply("_\r\n");
  CheckReply(",1.23\r\n");
  CheckReply(",-inf\r\n");
  CheckReply(",nan\r\n");
  CheckReply("#t\r\n");
  CheckReply("#f\r\n");
  CheckReply("!21\r\nSYNTAX invalid syntax\r\n", true);
  CheckReply("=15\r\ntxt:Some string\r\n");
  CheckReply("(3492890328409238509324850943850943825024385\r\n");
  CheckReply("%2\r\n+first\r\n:1\r\n+second\r\n:2\r\n");
  CheckReply("%0\r\n");
  CheckReply("~5\r\n+orange\r\n+apple\r\n#t\r\n:100\r\n:999\r\n");
  CheckReply(">4\r\n+pubsub\r\n+message\r\n+somechannel\r\n+this is the message\r\n");
  // An attribute is framed with the reply it annotates.
  CheckReply(
      "|1\r\n+key-popularity\r\n%2\r\n$1\r\na\r\n,0.1923\r\n$1\r\nb\r\n,0.0012\r\n"
      "*2\r\n:2039123\r\n:9543892\r\n");
  CheckReply("*3\r\n:1\r\n:2\r\n|1\r\n+ttl\r\n:3600\r\n:3\r\n");
  CheckReply("|0\r\n+OK\r\n");
  CheckReply("|1\r\n+a\r\n+b\r\n|1\r\n+c\r\n+d\r\n:1\r\n");
  // Streamed string and aggregates.
  CheckReply("$?\r\n;4\r\nHell\r\n;5\r\no wor\r\n;1\r\nd\r\n;0\r\n");
  CheckReply("$?\r\n;0\r\n");
  CheckReply("*?\r\n:1\r\n:2\r\n:3\r\n.\r\n");
  CheckReply("*?\r\n.\r\n");
  CheckReply("%?\r\n+a\r\n:1\r\n+b\r\n:2\r\n.\r\n");
  CheckReply("~?\r\n+a\r\n*?\r\n$?\r\n;1\r\nx\r\n;0\r\n.\r\n*1\r\n_\r\n.\r\n");
}

TEST_CASE("RespReply arrays of bulk strings (the run taken in one loop), every split") {
  // HGETALL / LRANGE / MGET shapes: runs of bulks, nulls and empty ones, the last element
  // and nested aggregates left to the general loop, and other types breaking a run.
  CheckReply("*4\r\n$2\r\nf1\r\n$2\r\nv1\r\n$2\r\nf2\r\n$10\r\nvalue-two!\r\n");
  CheckReply("*5\r\n$-1\r\n$1\r\na\r\n$-1\r\n$0\r\n\r\n$-1\r\n");
  CheckReply("*3\r\n$1\r\n\r\r\n$3\r\n\r\n\n\r\n*2\r\n$1\r\nx\r\n$1\r\ny\r\n");
  CheckReply("*4\r\n$1\r\na\r\n:5\r\n$1\r\nb\r\n+c\r\n");
  CheckReply("%2\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n*1\r\n$1\r\nd\r\n");
  CheckReply("~3\r\n$1\r\na\r\n$+1\r\nb\r\n$01\r\nc\r\n");
  CheckReply("*2\r\n*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n$1\r\nd\r\n");
  std::string big = "*300\r\n";
  for (int i = 0; i < 300; ++i) {
    const std::string v = i % 7 == 0 ? "" : std::to_string(i * 7919);
    big += i % 11 == 0 ? "$-1\r\n" : "$" + std::to_string(v.size()) + "\r\n" + v + "\r\n";
  }
  CheckReply(big);
  // An error inside a run is the same error as anywhere else.
  CheckReplyError("*3\r\n$1\r\na\r\n$1\r\nbc\r\n$1\r\nd\r\n");
  CheckReplyError("*3\r\n$1\r\na\r\n$-2\r\n$1\r\nd\r\n");
  CheckReplyError("*3\r\n$1\r\na\r\n$x\r\n$1\r\nd\r\n");
  RespLimits l;
  l.max_bulk_len = 4;
  CheckReply("*3\r\n$4\r\nabcd\r\n$4\r\nabcd\r\n$1\r\na\r\n", false, l);
  CheckReplyError("*3\r\n$4\r\nabcd\r\n$5\r\nabcde\r\n$1\r\na\r\n", l);
}

TEST_CASE("RespReply is_error is about the top-level reply") {
  CheckReply("-ERR x\r\n", true);
  CheckReply("!3\r\nERR\r\n", true);
  CheckReply("+OK\r\n", false);
  CheckReply("*1\r\n-ERR x\r\n", false);
  CheckReply("|1\r\n+a\r\n+b\r\n-ERR x\r\n", true);
  CheckReply("|1\r\n-a\r\n+b\r\n+OK\r\n", false);
}

TEST_CASE("RespReply pipelined replies") {
  const std::vector<std::string> parts = {"+OK\r\n", "*2\r\n$1\r\na\r\n:1\r\n", "-ERR x\r\n",
                                          "$?\r\n;1\r\na\r\n;0\r\n", "_\r\n"};
  std::string replies;
  for (const auto& part : parts) replies += part;
  // Framed from a buffer holding everything, and with bytes arriving one at a time.
  for (bool bytewise : {false, true}) {
    ReplyFramer f(RespLimits{});
    size_t start = 0;
    size_t avail = bytewise ? 0 : replies.size();
    for (size_t i = 0; i < parts.size(); ++i) {
      size_t consumed = 0;
      ParseStatus st;
      while ((st = f.Frame(replies.data() + start, avail - start, &consumed)) ==
             ParseStatus::kIncomplete) {
        REQUIRE(avail < replies.size());
        ++avail;
      }
      REQUIRE(st == ParseStatus::kOk);
      CHECK(consumed == parts[i].size());
      CHECK(f.is_error() == (i == 2));
      start += consumed;
    }
  }
}

TEST_CASE("RespReply deep nesting: bounded by max_nesting, not by 7") {
  // COMMAND DOCS nests deeper than hiredis 0.14 accepts; 20 levels frame fine by default.
  std::string deep;
  for (int i = 0; i < 20; ++i) deep += (i % 2 ? "%1\r\n+k\r\n" : "*1\r\n");
  deep += ":1\r\n";
  CheckReply(deep);
  RespLimits five;
  five.max_nesting = 5;
  CHECK(CheckReplyError(deep, five) == "Protocol error: reply nesting too deep");
  CheckReply("*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n", false, five);
  CheckReply("*1\r\n*1\r\n*1\r\n*1\r\n*-1\r\n", false, five);
  CheckReplyError("*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*0\r\n", five);
  CheckReplyError("*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n|1\r\n+a\r\n+b\r\n:1\r\n", five);
}

TEST_CASE("RespReply malformed replies") {
  CheckReplyError("?x\r\n");
  CheckReplyError("\r\n");
  CheckReplyError("$3\r\nabcd\r\n");
  CheckReplyError("$3\r\nabc\n\r");
  CheckReplyError("$-2\r\n");
  CheckReplyError("$x\r\n");
  CheckReplyError("$\r\n");
  CheckReplyError("=-1\r\n");
  CheckReplyError("!?\r\n");
  CheckReplyError("*-2\r\n");
  CheckReplyError("%-1\r\n");
  CheckReplyError(">?\r\n");
  CheckReplyError("*1x\r\n");
  CheckReplyError(":abc\r\n");
  CheckReplyError(":\r\n");
  CheckReplyError("_x\r\n");
  CheckReplyError("#x\r\n");
  CheckReplyError("#\r\n");
  CheckReplyError("#tt\r\n");
  CheckReplyError(".\r\n");
  CheckReplyError("*2\r\n:1\r\n.\r\n");
  CheckReplyError("*?\r\n.x\r\n");
  CheckReplyError("$?\r\n;-1\r\n");
  CheckReplyError("$?\r\n+OK\r\n");
  CheckReplyError("$?\r\n;2\r\nabc\r\n");
  CheckReplyError("%9223372036854775807\r\n");
  // Number lines longer than any int64 are refused without waiting for their end.
  CheckReplyError("*" + std::string(30, '1'));
  CheckReplyError(":" + std::string(30, '1'));
  RespLimits l;
  l.max_bulk_len = 4;
  CheckReply("$4\r\nabcd\r\n", false, l);
  CheckReplyError("$5\r\nabcde\r\n", l);
  CheckReplyError("$?\r\n;5\r\nabcde\r\n;0\r\n", l);
  CheckReply("+abcd\r\n", false, l);
  CheckReplyError("+abcde\r\n", l);
  // "+OK" has its own fast path: the same bound applies to it (found by the fuzz target).
  CheckReply("+OK\r\n", false, l);
  l.max_bulk_len = 1;
  CheckReplyError("+OK\r\n", l);
  CheckReply("+O\r\n", false, l);
}

TEST_CASE("RespReply errors are sticky until Reset") {
  ReplyFramer f(RespLimits{});
  size_t consumed = 0;
  const std::string bad = "?\r\n";
  const std::string good = "+OK\r\n";
  REQUIRE(f.Frame(bad.data(), bad.size(), &consumed) == ParseStatus::kError);
  CHECK(f.Frame(good.data(), good.size(), &consumed) == ParseStatus::kError);
  f.Reset();
  CHECK(f.error().empty());
  REQUIRE(f.Frame(good.data(), good.size(), &consumed) == ParseStatus::kOk);
  CHECK(consumed == good.size());
}

TEST_CASE("RespReply large replies are framed in O(n) total") {
  // An 8 MB bulk in 64 KB reads: the payload is skipped by length.
  const std::string big = Bulk(std::string(8 << 20, 'x'));
  ReplyFramer f(RespLimits{});
  size_t consumed = 0;
  for (size_t n = 0; n < big.size(); n += 65536) {
    REQUIRE(f.Frame(big.data(), n, &consumed) == ParseStatus::kIncomplete);
  }
  REQUIRE(f.Frame(big.data(), big.size(), &consumed) == ParseStatus::kOk);
  CHECK(consumed == big.size());
  // 200k elements one byte at a time: anything rescanning would be quadratic.
  const std::string arr =
      "*200000\r\n" + Repeat("+abc\r\n", 100000) + Repeat("$2\r\nab\r\n", 100000);
  for (size_t n = 0; n < arr.size(); ++n) {
    REQUIRE(f.Frame(arr.data(), n, &consumed) == ParseStatus::kIncomplete);
  }
  REQUIRE(f.Frame(arr.data(), arr.size(), &consumed) == ParseStatus::kOk);
  CHECK(consumed == arr.size());
  // A long simple string one byte at a time.
  const std::string line = "+" + std::string(500000, 's') + "\r\n";
  for (size_t n = 0; n < line.size(); ++n) {
    REQUIRE(f.Frame(line.data(), n, &consumed) == ParseStatus::kIncomplete);
  }
  REQUIRE(f.Frame(line.data(), line.size(), &consumed) == ParseStatus::kOk);
  CHECK(consumed == line.size());
}

// ---------------------------------------------------------------------------------------
// ReplyFramer against hiredis

namespace {

std::string RandomBytes(std::mt19937_64& rng, size_t n, bool binary) {
  static constexpr char kPrintable[] = "abcdefghijklmnopqrstuvwxyz ABC0123456789:+-*$_.";
  std::string s(n, '\0');
  for (auto& c : s) {
    if (binary && rng() % 4 == 0) {
      static constexpr char kSpecial[] = {'\r', '\n', '\0', '$', '*', '\xff'};
      c = kSpecial[rng() % sizeof(kSpecial)];
    } else {
      c = kPrintable[rng() % (sizeof(kPrintable) - 1)];
    }
  }
  return s;
}

// A random RESP2 reply; arrays nest at most max_depth levels (hiredis 0.14 stops at 7).
std::string RandomReply(std::mt19937_64& rng, int depth, int max_depth, int* deepest) {
  const int kinds = depth < max_depth ? 9 : 6;
  const int kind = static_cast<int>(rng() % static_cast<unsigned>(kinds));
  switch (kind) {
    case 0:
      return "+" + RandomBytes(rng, rng() % 20, false) + "\r\n";
    case 1:
      return "-ERR " + RandomBytes(rng, rng() % 20, false) + "\r\n";
    case 2: {
      static constexpr int64_t kEdges[] = {0, -1, INT64_MIN, INT64_MAX};
      const int64_t v = rng() % 3 ? static_cast<int64_t>(rng()) : kEdges[rng() % 4];
      return ":" + std::to_string(v) + "\r\n";
    }
    case 3: {
      const size_t n = rng() % 10 == 0 ? 2000 + rng() % 3000 : rng() % 40;
      return Bulk(RandomBytes(rng, n, true));
    }
    case 4:
      return "$-1\r\n";
    case 5:
      return "*-1\r\n";
    default: {
      const size_t n = rng() % 6;
      *deepest = std::max(*deepest, depth + 1);
      std::string out = "*" + std::to_string(n) + "\r\n";
      for (size_t i = 0; i < n; ++i) out += RandomReply(rng, depth + 1, max_depth, deepest);
      return out;
    }
  }
}

// Where hiredis ends the first reply of `buf`, and whether it is an error.
size_t HiredisEnd(const std::string& buf, bool* is_error) {
  redisReader* r = redisReaderCreate();
  REQUIRE(r != nullptr);
  REQUIRE(redisReaderFeed(r, buf.data(), buf.size()) == REDIS_OK);
  void* reply = nullptr;
  REQUIRE(redisReaderGetReply(r, &reply) == REDIS_OK);
  REQUIRE(reply != nullptr);
  *is_error = static_cast<redisReply*>(reply)->type == REDIS_REPLY_ERROR;
  // hiredis may drop consumed bytes from its buffer; what it still holds is exact.
  const size_t end = buf.size() - (r->len - r->pos);
  freeReplyObject(reply);
  redisReaderFree(r);
  return end;
}

}  // namespace

TEST_CASE("RespReply agrees with hiredis on random RESP2 replies") {
  std::mt19937_64 rng(20240601);
  int deepest = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    CAPTURE(iter);
    int depth = 0;
    const std::string first = RandomReply(rng, 0, 6, &depth);
    const std::string second = RandomReply(rng, 0, 6, &depth);
    const std::string buf = first + second;
    bool hiredis_error = false;
    const size_t hiredis_end = HiredisEnd(buf, &hiredis_error);
    REQUIRE(hiredis_end == first.size());

    RepResult r = FrameWhole(buf);
    REQUIRE(r.status == ParseStatus::kOk);
    CHECK(r.consumed == hiredis_end);
    CHECK(r.is_error == hiredis_error);
    // The second reply frames on from there, with a framer that is reused.
    ReplyFramer f(RespLimits{});
    size_t consumed = 0;
    REQUIRE(f.Frame(buf.data(), buf.size(), &consumed) == ParseStatus::kOk);
    size_t second_consumed = 0;
    REQUIRE(f.Frame(buf.data() + consumed, buf.size() - consumed, &second_consumed) ==
            ParseStatus::kOk);
    CHECK(consumed + second_consumed == buf.size());
    // And split at a random point.
    ReplyFramer g(RespLimits{});
    const size_t k = rng() % (buf.size() + 1);
    auto pre = Copy(buf, k);
    RepResult s = Frame(g, pre.data(), k);
    if (s.status == ParseStatus::kIncomplete) {
      CHECK(k < first.size());
      s = Frame(g, buf.data(), buf.size());
    }
    CHECK(s == r);
    deepest = std::max(deepest, depth);
  }
  // The generator does reach the deepest nesting hiredis accepts here.
  CHECK(deepest == 6);
}

TEST_CASE("RespReply hiredis refuses what the framer accepts: 9 nested arrays") {
  // The reason the data plane has its own framer (DESIGN.md): hiredis 0.14 refuses an array
  // at nesting index 8 ("depth > 7").
  const std::string deep = Repeat("*1\r\n", 9) + ":1\r\n";
  redisReader* r = redisReaderCreate();
  REQUIRE(redisReaderFeed(r, deep.data(), deep.size()) == REDIS_OK);
  void* reply = nullptr;
  CHECK(redisReaderGetReply(r, &reply) == REDIS_ERR);
  redisReaderFree(r);
  CheckReply(deep);
}

}  // namespace kp

namespace kp {
namespace {

TEST_CASE("ReplyFramer with reply limits: request limits never make a legal reply malformed") {
  RespLimits request;
  request.max_bulk_len = 1024 * 1024;  // a client may not send more than 1 MB in one bulk...
  RespLimits replies = request.ForReplies();
  // ...but Redis may answer a 2 MB value (set before the limit, or by another client).
  std::string big(2 * 1024 * 1024, 'v');
  std::string reply = "$" + std::to_string(big.size()) + "\r\n" + big + "\r\n";
  RepResult r = FrameWhole(reply, replies);
  CHECK(r.status == ParseStatus::kOk);
  CHECK(r.consumed == reply.size());
  CHECK(FrameWhole(reply, request).status == ParseStatus::kError);  // what went wrong before

  // A Lua table 150 levels deep, as EVAL returns it, frames with the default depth bound.
  std::string deep;
  for (int i = 0; i < 150; ++i) deep += "*1\r\n";
  deep += ":1\r\n";
  r = FrameWhole(deep, RespLimits().ForReplies());
  CHECK(r.status == ParseStatus::kOk);
  CHECK(r.consumed == deep.size());
  // And far deeper still; the bound is only a bound on framer state.
  std::string deeper;
  for (int i = 0; i < 20000; ++i) deeper += "*1\r\n";
  deeper += "$1\r\nx\r\n";
  CheckReplyEverySplit(deeper, RepResult{ParseStatus::kOk, deeper.size(), false, ""}, deeper.size(),
                       RespLimits().ForReplies());
}

}  // namespace
}  // namespace kp

TEST_CASE("AnnouncedBulkSize: a bulk reply's whole size from its header") {
  CHECK(kp::AnnouncedBulkSize("$5\r\nhello\r\n", 11) == 11);
  CHECK(kp::AnnouncedBulkSize("$16777216\r\nxx", 14) == 16777216 + 11 + 2);  // only the start
  CHECK(kp::AnnouncedBulkSize("$0\r\n\r\n", 6) == 6);
  CHECK(kp::AnnouncedBulkSize("$-1\r\n", 5) == 0);  // nil: no size to announce
  CHECK(kp::AnnouncedBulkSize("$12", 3) == 0);      // header not complete
  CHECK(kp::AnnouncedBulkSize("$12\r", 4) == 0);
  CHECK(kp::AnnouncedBulkSize("*2\r\n$1\r\na\r\n", 13) == 0);  // not a bulk string
  CHECK(kp::AnnouncedBulkSize("$\r\n", 3) == 0);
  CHECK(kp::AnnouncedBulkSize("$12x\r\n", 6) == 0);
  CHECK(kp::AnnouncedBulkSize("$99999999999999999999999\r\n", 26) == 0);  // too long to be real
}
