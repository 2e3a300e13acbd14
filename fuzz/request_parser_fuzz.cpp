// libFuzzer target for kp::RequestParser: frames every request of the input fed whole, split
// at a data-derived point and (for small inputs) one byte at a time, and requires the same
// requests, the same errors and sane consumed counts every way.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "common/resp_parser.h"

namespace {

struct Outcome {
  kp::ParseStatus status;
  size_t consumed;
  size_t argc;
  bool is_inline;
  std::vector<std::string> args;
  std::string error;
  bool operator==(const Outcome&) const = default;
};

void Require(bool ok) {
  if (!ok) std::abort();
}

Outcome Describe(const kp::RequestParser& p, kp::ParseStatus st, size_t consumed, const char* data,
                 size_t len) {
  Outcome o{st, consumed, 0, false, {}, {}};
  Require(consumed <= len);
  if (st == kp::ParseStatus::kOk) {
    Require(consumed > 0);
    o.argc = p.argc();
    o.is_inline = p.is_inline();
    const size_t views = o.is_inline ? o.argc : std::min(o.argc, kp::RequestParser::kMaxArgViews);
    for (size_t i = 0; i < views; ++i) {
      std::string_view a = p.arg(i, data);
      // Multibulk views must lie inside the request they came from.
      if (!o.is_inline) Require(a.data() >= data && a.data() + a.size() <= data + consumed);
      o.args.emplace_back(a);
    }
  } else if (st == kp::ParseStatus::kError) {
    Require(consumed == 0);
    // Malformed input in Redis's words, or a configured limit named as such.
    if (p.limit_hit() == kp::RespLimit::kNone) {
      Require(p.error().rfind("Protocol error: ", 0) == 0);
    } else {
      Require(p.error().rfind("kompress: request over limits.", 0) == 0);
    }
    o.error = p.error();
  } else {
    Require(consumed == 0);
  }
  return o;
}

// mode 0: whole; mode 1: each request's bytes first cut at `split`; mode 2: byte at a time.
// Every call gets its bytes in a fresh allocation of exactly that size, so ASan sees any
// read past what was fed.
std::vector<Outcome> Run(const kp::RespLimits& limits, const char* data, size_t size, int mode,
                         size_t split) {
  kp::RequestParser p(limits);
  std::vector<Outcome> out;
  size_t start = 0;
  while (start < size) {
    const size_t avail = size - start;
    std::vector<size_t> feeds;
    if (mode == 1) feeds.push_back(split % (avail + 1));
    if (mode == 2) {
      for (size_t n = 0; n < avail; ++n) feeds.push_back(n);
    }
    feeds.push_back(avail);
    Outcome o{};
    for (size_t n : feeds) {
      std::vector<char> buf(data + start, data + start + n);
      size_t consumed = 0;
      const kp::ParseStatus st = p.Parse(buf.data(), n, &consumed);
      o = Describe(p, st, consumed, buf.data(), n);
      if (st != kp::ParseStatus::kIncomplete) break;
    }
    out.push_back(o);
    if (o.status != kp::ParseStatus::kOk) break;
    start += o.consumed;
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* raw, size_t size) {
  if (size < 2) return 0;
  // Byte 0 picks limits (tight ones reach every limit check), byte 1 the split point.
  const uint8_t knobs = raw[0];
  const size_t split = raw[1];
  const char* data = reinterpret_cast<const char*>(raw + 2);
  size = size - 2;
  kp::RespLimits limits;
  if (knobs & 1) {
    limits.max_array_len = 1 + (knobs >> 4);
    limits.max_bulk_len = 1 + (knobs >> 2) * 4;
    limits.max_request_bytes = 16 + knobs;
    limits.max_inline_len = 8 + (knobs >> 3);
  }
  const std::vector<Outcome> whole = Run(limits, data, size, 0, 0);
  Require(Run(limits, data, size, 1, split) == whole);
  if (size <= 256) Require(Run(limits, data, size, 2, 0) == whole);
  return 0;
}
