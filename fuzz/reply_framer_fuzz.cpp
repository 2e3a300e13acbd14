// libFuzzer target for kp::ReplyFramer: frames every reply of the input fed whole, split at a
// data-derived point, (for small inputs) one byte at a time, and streamed (settled bytes
// dropped as they come), and requires the same reply boundaries, error flags and errors
// every way.
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
  bool is_error;
  std::string error;
  bool operator==(const Outcome&) const = default;
};

void Require(bool ok) {
  if (!ok) std::abort();
}

// mode 0: whole; mode 1: each reply's bytes first cut at `split`; mode 2: byte at a time.
// Every call gets its bytes in a fresh allocation of exactly that size.
std::vector<Outcome> Run(const kp::RespLimits& limits, const char* data, size_t size, int mode,
                         size_t split) {
  kp::ReplyFramer f(limits);
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
      const kp::ParseStatus st = f.Frame(buf.data(), n, &consumed);
      Require(consumed <= n);
      o = Outcome{st, consumed, false, {}};
      if (st == kp::ParseStatus::kOk) {
        Require(consumed > 0);
        o.is_error = f.is_error();
      } else {
        Require(consumed == 0);
      }
      if (st == kp::ParseStatus::kError) {
        Require(f.error().rfind("Protocol error: ", 0) == 0);
        o.error = f.error();
      }
      if (st != kp::ParseStatus::kIncomplete) break;
    }
    out.push_back(o);
    if (o.status != kp::ParseStatus::kOk) break;
    start += o.consumed;
  }
  return out;
}

// Streamed, as a backend connection passes on a large reply: fed `step` more bytes at a
// time, the settled prefix dropped after every kIncomplete. The outcome must be the same,
// with `consumed` counting the dropped bytes too.
std::vector<Outcome> RunStreamed(const kp::RespLimits& limits, const char* data, size_t size,
                                 size_t step) {
  kp::ReplyFramer f(limits);
  std::vector<Outcome> out;
  size_t start = 0;
  while (start < size) {
    const size_t avail = size - start;
    size_t dropped = 0;
    Outcome o{};
    for (size_t n = std::min(step, avail);; n = std::min(n + step, avail)) {
      std::vector<char> buf(data + start + dropped, data + start + n);
      size_t consumed = 0;
      const kp::ParseStatus st = f.Frame(buf.data(), buf.size(), &consumed);
      o = Outcome{st, st == kp::ParseStatus::kOk ? consumed + dropped : 0, false, {}};
      if (st == kp::ParseStatus::kOk) o.is_error = f.is_error();
      if (st == kp::ParseStatus::kError) o.error = f.error();
      if (st != kp::ParseStatus::kIncomplete || n == avail) break;
      const size_t settled = f.Settled(buf.size());
      Require(settled <= buf.size());
      f.Discard(settled);
      dropped += settled;
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
  // Byte 0 picks limits (tight ones reach the nesting and length checks), byte 1 the split.
  const uint8_t knobs = raw[0];
  const size_t split = raw[1];
  const char* data = reinterpret_cast<const char*>(raw + 2);
  size = size - 2;
  // Otherwise the bounds the proxy frames replies with: deep aggregates (up to 65536 levels)
  // and bulk lengths far past any request limit, with nothing sized from them.
  kp::RespLimits limits = kp::RespLimits().ForReplies();
  if (knobs & 1) {
    limits.max_nesting = 1 + (knobs >> 5);
    limits.max_bulk_len = (knobs >> 1) & 15;
  }
  const std::vector<Outcome> whole = Run(limits, data, size, 0, 0);
  Require(Run(limits, data, size, 1, split) == whole);
  if (size <= 256) Require(Run(limits, data, size, 2, 0) == whole);
  Require(RunStreamed(limits, data, size, 1 + split % 7) == whole);
  return 0;
}
