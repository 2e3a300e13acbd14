// RESP framing for the data plane: RequestParser frames client commands (multibulk and
// inline), ReplyFramer finds where one backend reply ends (every RESP2 and RESP3 type).
// Neither knows about sockets; both are incremental and resumable, so bytes may arrive one
// at a time and a large request is scanned once, not once per read.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/resp_limits.h"

namespace kp {

enum class ParseStatus {
  kOk,          // one complete item was framed
  kIncomplete,  // need more bytes; call again with the same start and more data
  kError,       // malformed or over a limit; error() says why
};

// Frames one client request at a time.
//
// Contract: Parse(data, len, &consumed) where data points at the first byte of a request that
// has not been consumed yet. On kIncomplete the caller keeps those bytes (it may move them in
// memory) and calls again with the same logical start and more bytes; the parser resumes
// where it stopped. On kOk, `consumed` is the byte length of the whole request, and argc() /
// arg() describe it until the next Parse() or Reset(). Empty inline lines ("\r\n") are
// skipped silently (consumed, no command) exactly as Redis does. On kError the parser must
// be Reset() before reuse; the connection is expected to reply error() and close.
class RequestParser {
 public:
  // Only the first kMaxArgViews arguments are kept as views: enough for routing and session
  // state, and bounded memory whatever argc a client sends.
  static constexpr size_t kMaxArgViews = 16;

  explicit RequestParser(const RespLimits& limits);

  ParseStatus Parse(const char* data, size_t len, size_t* consumed);

  // Number of arguments of the last framed request (may exceed kMaxArgViews).
  size_t argc() const { return argc_; }
  // Argument i (< min(argc(), kMaxArgViews)) of the last framed request. `data` is the same
  // pointer passed to the Parse() call that returned kOk. For inline requests views point into
  // parser-owned storage instead (quotes and escapes resolved), `data` is then ignored, and
  // every i < argc() is available, since an inline request must be re-encoded whole.
  // Out of range: an empty view.
  std::string_view arg(size_t i, const char* data) const {
    if (i >= argc_) return {};
    if (inline_) return inline_args_[i];
    if (i >= kMaxArgViews || i >= parsed_args_) return {};
    return {data + views_[i].off, views_[i].len};
  }
  // True when the last request came inline; it must be re-encoded before forwarding.
  bool is_inline() const { return inline_; }
  // The message for kError, without "-ERR ": malformed input as Redis words it ("Protocol
  // error: ..."), or, past a configured limit, one naming the limit and its value.
  const std::string& error() const { return error_; }
  // After kError: the configured limit the request went past (a RespLimit), or kNone when
  // the input was malformed.
  RespLimit limit_hit() const { return limit_hit_; }

  void Reset();

  // After kIncomplete on `len` bytes, while an argument's payload is being read: the bytes of
  // it and its CRLF that lie past them (0 otherwise), so the caller can make room for the
  // whole argument at once instead of growing its buffer piece by piece.
  size_t PayloadBeyond(size_t len) const {
    if (failed_ || mode_ != Mode::kMultibulk || bulk_len_ < 0) return 0;
    const size_t end = pos_ + static_cast<size_t>(bulk_len_) + 2;
    return end > len ? end - len : 0;
  }

 private:
  enum class Mode : uint8_t { kNone, kMultibulk, kInline };
  struct View {
    size_t off = 0;  // relative to the request start, so the caller may move its buffer
    size_t len = 0;
  };

  bool ParseWhole(const char* data, size_t len, size_t* consumed);
  ParseStatus ParseMultibulk(const char* data, size_t len, size_t* consumed);
  ParseStatus ParseInline(const char* data, size_t len, size_t* consumed);
  ParseStatus FindLineEnd(const char* data, size_t len, char term, std::string_view too_big,
                          size_t* end);
  bool SplitInline(const char* line, size_t n);
  ParseStatus Done(size_t* consumed);
  ParseStatus Fail(std::string_view why);
  ParseStatus FailLimit(RespLimit which);

  RespLimits limits_;
  RespLimit limit_hit_ = RespLimit::kNone;
  // Resumable state (offsets are relative to the request start).
  size_t pos_ = 0;          // start of the header line or bulk payload being read
  size_t scan_ = 0;         // offset the search for the current line terminator resumes at
  int64_t remaining_ = -1;  // arguments still to read, -1 = array header not read yet
  int64_t bulk_len_ = -1;   // length of the bulk being read, -1 = expecting a '$' header
  Mode mode_ = Mode::kNone;
  bool failed_ = false;
  // Description of the last framed request.
  size_t argc_ = 0;
  size_t parsed_args_ = 0;
  bool inline_ = false;
  View views_[kMaxArgViews];
  // Kept across requests (strings cleared, not freed) so inline traffic stops allocating.
  std::vector<std::string> inline_args_;
  std::string error_;
};

// Finds the end of one complete backend reply of any RESP2/RESP3 type:
// + - : $ * _ , # ( ! = % ~ > | and RESP3 streamed strings/aggregates ($? *? %? ~? with ';'
// chunks and '.' terminators). Attributes ('|') are framed together with the reply they
// annotate. Same resumable contract as RequestParser::Parse().
class ReplyFramer {
 public:
  explicit ReplyFramer(const RespLimits& limits);

  ParseStatus Frame(const char* data, size_t len, size_t* consumed);
  // After kOk: true when the top-level reply is an error ('-' or '!').
  bool is_error() const { return is_error_; }
  const std::string& error() const { return error_; }
  void Reset();

  // Streaming a large reply: after kIncomplete on `len` bytes, how many leading bytes of
  // the frame are settled (framed, and part of this reply whatever follows), and dropping
  // them (n <= Settled(len)) so the rest is framed as if they had never been given. The
  // caller hands them on and frees their memory before the reply is complete.
  size_t Settled(size_t len) const;
  void Discard(size_t n);

 private:
  enum class State : uint8_t { kHeader, kPayload, kChunkHeader };
  enum class Kind : uint8_t { kCounted, kStreamed, kAttribute };
  // One open aggregate: elements still expected (maps and attributes count key and value).
  struct Level {
    int64_t remaining = 0;
    Kind kind = Kind::kCounted;
  };

  ParseStatus FindCrlf(const char* data, size_t len, size_t max_content, size_t* cr);
  ParseStatus OpenAggregate(char type, const char* num, size_t n, bool* reply_done);
  bool CompleteElement();
  void SkipWholeBulks(const char* data, size_t len);
  ParseStatus Done(size_t* consumed);
  ParseStatus Fail(std::string_view why);

  RespLimits limits_;
  size_t pos_ = 0;        // start of the line or payload being read
  size_t scan_ = 0;       // how far the current line was searched for CRLF
  int64_t bulk_len_ = 0;  // payload bytes (without CRLF) when state_ == kPayload
  State state_ = State::kHeader;
  bool in_stream_ = false;  // inside a streamed string ($?): payloads are ';' chunks
  bool is_error_ = false;
  bool failed_ = false;
  // Stack of open aggregates (bounded by max_nesting); capacity is kept between replies.
  std::vector<Level> stack_;
  std::string error_;
};

// The whole size of a bulk string reply ("$<n>\r\n", n bytes, "\r\n") whose header is in
// `data`; 0 when `data` does not start with a complete bulk string header ($-1 included).
// Lets a reply's size be known from its first bytes, before the rest arrives.
size_t AnnouncedBulkSize(const char* data, size_t len);

}  // namespace kp
