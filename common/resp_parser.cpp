// RESP framing for the data plane: RequestParser (client multibulk and inline commands,
// following Redis's processMultibulkBuffer / processInlineBuffer and their error words) and
// ReplyFramer (end of one backend reply of any RESP2/RESP3 type). Both keep their position
// between calls so a request or reply split over many reads is scanned once.
#include "common/resp_parser.h"

#include <algorithm>
#include <climits>
#include <cstring>

namespace kp {
namespace {

// Request errors, worded as Redis replies them (networking.c) so clients see no difference.
constexpr std::string_view kErrMbulkLen = "Protocol error: invalid multibulk length";
constexpr std::string_view kErrMbulkTooBig = "Protocol error: too big mbulk count string";
constexpr std::string_view kErrBulkLen = "Protocol error: invalid bulk length";
constexpr std::string_view kErrBulkTooBig = "Protocol error: too big bulk count string";
constexpr std::string_view kErrInlineTooBig = "Protocol error: too big inline request";
constexpr std::string_view kErrUnbalanced = "Protocol error: unbalanced quotes in request";
// Not Redis words: Redis has no request size limit and skips the two bytes after a bulk
// without looking. A proxy forwarding such bytes could desync from the backend, so it refuses.
constexpr std::string_view kErrBulkCrlf = "Protocol error: expected CRLF after bulk";

// Reply errors: the backend connection is dropped, so these only need to be clear in logs.
constexpr std::string_view kErrReplyType = "Protocol error: invalid reply type byte";
constexpr std::string_view kErrReplyBulkLen = "Protocol error: invalid bulk length in reply";
constexpr std::string_view kErrReplyCount = "Protocol error: invalid aggregate length in reply";
constexpr std::string_view kErrReplyInteger = "Protocol error: invalid integer in reply";
constexpr std::string_view kErrReplyLine = "Protocol error: invalid line in reply";
constexpr std::string_view kErrReplyCrlf = "Protocol error: expected CRLF after bulk in reply";
constexpr std::string_view kErrReplyNesting = "Protocol error: reply nesting too deep";
constexpr std::string_view kErrReplyStreamEnd = "Protocol error: unexpected '.' in reply";

// Smallest possible bulk argument, "$0\r\n\r\n": lets a declared argument count prove early
// that a request cannot fit in max_request_bytes.
constexpr uint64_t kMinBulkBytes = 6;
// Longest decimal int64 ("-9223372036854775808"): number lines in replies never need more.
constexpr size_t kMaxNumberLine = 20;

// Redis's string2ll(): no '+', no leading zeros, no "-0", nothing but digits. Matching it
// exactly means the proxy rejects precisely the length lines Redis would reject.
bool ParseRedisLongLong(const char* s, size_t n, int64_t* out) {
  if (n == 0 || n >= 21) return false;
  if (n == 1 && s[0] == '0') {
    *out = 0;
    return true;
  }
  size_t i = 0;
  const bool negative = s[0] == '-';
  if (negative && ++i == n) return false;
  if (s[i] < '1' || s[i] > '9') return false;
  uint64_t v = static_cast<uint64_t>(s[i++] - '0');
  for (; i < n; ++i) {
    const unsigned d = static_cast<unsigned char>(s[i]) - static_cast<unsigned>('0');
    if (d > 9) return false;
    if (v > (UINT64_MAX - d) / 10) return false;
    v = v * 10 + d;
  }
  if (negative) {
    if (v > static_cast<uint64_t>(INT64_MAX) + 1) return false;
    *out = v == static_cast<uint64_t>(INT64_MAX) + 1 ? INT64_MIN : -static_cast<int64_t>(v);
  } else {
    if (v > static_cast<uint64_t>(INT64_MAX)) return false;
    *out = static_cast<int64_t>(v);
  }
  return true;
}

// Numbers in replies: optional sign and digits, as hiredis accepts them (Redis never sends
// leading zeros, but tolerating them costs nothing and rejects no valid server).
bool ParseReplyInteger(const char* s, size_t n, int64_t* out) {
  size_t i = 0;
  bool negative = false;
  if (n > 0 && (s[0] == '-' || s[0] == '+')) {
    negative = s[0] == '-';
    i = 1;
  }
  if (i == n) return false;
  uint64_t v = 0;
  for (; i < n; ++i) {
    const unsigned d = static_cast<unsigned char>(s[i]) - static_cast<unsigned>('0');
    if (d > 9) return false;
    if (v > (UINT64_MAX - d) / 10) return false;
    v = v * 10 + d;
  }
  const uint64_t max = negative ? static_cast<uint64_t>(INT64_MAX) + 1 : INT64_MAX;
  if (v > max) return false;
  *out = negative ? (v == max ? INT64_MIN : -static_cast<int64_t>(v)) : static_cast<int64_t>(v);
  return true;
}

// isspace() in the C locale, without the locale lookup, as sdssplitargs() uses it.
bool IsSpace(char c) {
  return c == ' ' || (c >= '\t' && c <= '\r');
}

bool IsHexDigit(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return c - 'A' + 10;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// RequestParser

RequestParser::RequestParser(const RespLimits& limits) : limits_(limits) {}

void RequestParser::Reset() {
  if (mode_ == Mode::kNone && !failed_) {
    // Between requests (what Done() leaves, and the usual case): only the description of
    // the last request is left to forget. Called once per request, so kept short.
    argc_ = 0;
    parsed_args_ = 0;
    inline_ = false;
    return;
  }
  pos_ = 0;
  scan_ = 0;
  remaining_ = -1;
  bulk_len_ = -1;
  mode_ = Mode::kNone;
  failed_ = false;
  limit_hit_ = RespLimit::kNone;
  argc_ = 0;
  parsed_args_ = 0;
  inline_ = false;
  error_.clear();
}

ParseStatus RequestParser::Parse(const char* data, size_t len, size_t* consumed) {
  *consumed = 0;
  if (failed_) return ParseStatus::kError;
  if (mode_ == Mode::kNone) {
    // A new request: the description of the previous one is no longer valid.
    argc_ = 0;
    parsed_args_ = 0;
    inline_ = false;
    if (len == 0) return ParseStatus::kIncomplete;
    // Redis decides by the first byte alone (processInputBuffer).
    inline_ = data[0] != '*';
    if (!inline_ && ParseWhole(data, len, consumed)) return ParseStatus::kOk;
    mode_ = inline_ ? Mode::kInline : Mode::kMultibulk;
  }
  return inline_ ? ParseInline(data, len, consumed) : ParseMultibulk(data, len, consumed);
}

// Finds the first `term` of the line starting at pos_, resuming at scan_. A line whose
// terminator is more than max_inline_len bytes in is an error: Redis errs once that many
// bytes are buffered without a terminator. Bounding the search to that window (instead of
// looking at every buffered byte) makes the outcome independent of how the bytes were split.
ParseStatus RequestParser::FindLineEnd(const char* data, size_t len, char term,
                                       std::string_view too_big, size_t* end) {
  const bool capped = len - pos_ > limits_.max_inline_len;
  const size_t stop = capped ? pos_ + limits_.max_inline_len + 1 : len;
  if (scan_ < pos_) scan_ = pos_;
  if (scan_ < stop) {
    const void* hit = std::memchr(data + scan_, term, stop - scan_);
    if (hit != nullptr) {
      *end = static_cast<size_t>(static_cast<const char*>(hit) - data);
      scan_ = *end;  // if the byte after it is still missing, the next call finds it at once
      return ParseStatus::kOk;
    }
    scan_ = stop;
  }
  if (capped) return Fail(too_big);
  return ParseStatus::kIncomplete;
}

namespace {
// The common case of a length line, "*3\r\n" or "$5\r\n", read in place: 1 to 9 digits, no
// leading zero, CR LF, all in the buffer. Anything else (a sign, a leading zero, a line not
// all there yet) returns false and takes the general path, which decides exactly as before.
inline bool FastLength(const char* data, size_t len, size_t at, size_t max_line, int64_t* n,
                       size_t* cr) {
  size_t i = at + 1;
  if (i >= len) return false;
  unsigned d = static_cast<unsigned char>(data[i]) - static_cast<unsigned>('0');
  if (d - 1 > 8) {  // not '1'..'9'
    if (d == 0 && i + 2 < len && data[i + 1] == '\r' && data[i + 2] == '\n' && max_line >= 2) {
      *n = 0;
      *cr = i + 1;
      return true;
    }
    return false;
  }
  // Most lengths in requests have one or two digits ("*3", "$3", "$16"): read at once.
  if (i + 3 < len && max_line >= 3) {
    if (data[i + 1] == '\r') {
      if (data[i + 2] != '\n') return false;
      *n = d;
      *cr = i + 1;
      return true;
    }
    const unsigned d2 = static_cast<unsigned char>(data[i + 1]) - static_cast<unsigned>('0');
    if (d2 <= 9 && data[i + 2] == '\r') {
      if (data[i + 3] != '\n') return false;
      *n = d * 10 + d2;
      *cr = i + 2;
      return true;
    }
  }
  int64_t v = d;
  const size_t stop = std::min(len, at + 10);  // at most 9 digits
  for (++i; i < stop; ++i) {
    d = static_cast<unsigned char>(data[i]) - static_cast<unsigned>('0');
    if (d > 9) break;
    v = v * 10 + d;
  }
  if (i + 1 >= len || data[i] != '\r' || data[i + 1] != '\n' || i - at > max_line) return false;
  *n = v;
  *cr = i;
  return true;
}
}  // namespace

// The usual request in one pass over locals: all of it buffered, every length line in
// its plain form, every limit kept. Anything else returns false with the parser untouched,
// and ParseMultibulk() decides (and words any error) exactly as it always does. Keeping the
// state in registers rather than in members halves the instructions a small GET costs.
bool RequestParser::ParseWhole(const char* data, size_t len, size_t* consumed) {
  int64_t n = 0;
  size_t cr = 0;
  const size_t max_line = limits_.max_inline_len;
  if (!FastLength(data, len, 0, max_line, &n, &cr) || n <= 0 ||
      static_cast<uint64_t>(n) > limits_.max_array_len) {
    return false;
  }
  size_t pos = cr + 2;
  for (int64_t i = 0; i < n; ++i) {
    int64_t blen = 0;
    if (pos >= len || data[pos] != '$' || !FastLength(data, len, pos, max_line, &blen, &cr) ||
        static_cast<uint64_t>(blen) > limits_.max_bulk_len) {
      return false;
    }
    const size_t start = cr + 2;
    const size_t end = start + static_cast<size_t>(blen);
    if (end + 2 > len || data[end] != '\r' || data[end + 1] != '\n') return false;
    if (static_cast<size_t>(i) < kMaxArgViews) {
      views_[i] = View{start, static_cast<size_t>(blen)};
    }
    pos = end + 2;
  }
  // Checked once at the end: a request within max_request_bytes passes every check that
  // ParseMultibulk() makes on the way (each later argument takes at least kMinBulkBytes), and
  // one over it is refused there, in its words.
  if (pos > limits_.max_request_bytes) return false;
  argc_ = static_cast<size_t>(n);
  parsed_args_ = argc_;
  *consumed = pos;
  return true;
}

ParseStatus RequestParser::ParseMultibulk(const char* data, size_t len, size_t* consumed) {
  size_t cr = 0;
  if (remaining_ < 0) {
    int64_t n = 0;
    if (!FastLength(data, len, pos_, limits_.max_inline_len, &n, &cr)) {
      ParseStatus st = FindLineEnd(data, len, '\r', kErrMbulkTooBig, &cr);
      if (st != ParseStatus::kOk) return st;
      if (cr + 1 >= len) return ParseStatus::kIncomplete;
      // Redis takes the byte after '\r' on trust; requiring '\n' keeps the proxy and the
      // backend reading the same bytes the same way.
      if (!ParseRedisLongLong(data + pos_ + 1, cr - pos_ - 1, &n) || n > INT_MAX ||
          data[cr + 1] != '\n') {
        return Fail(kErrMbulkLen);
      }
    }
    if (n > 0 && static_cast<uint64_t>(n) > limits_.max_array_len) {
      return FailLimit(RespLimit::kArrayLen);
    }
    pos_ = cr + 2;
    // "*0" and "*-N" are consumed and ignored, as Redis does.
    if (n <= 0) return Done(consumed);
    if (pos_ + kMinBulkBytes * static_cast<uint64_t>(n) > limits_.max_request_bytes) {
      return FailLimit(RespLimit::kRequestBytes);
    }
    argc_ = static_cast<size_t>(n);
    remaining_ = n;
  }
  while (remaining_ > 0) {
    if (bulk_len_ < 0) {
      int64_t n = 0;
      bool fast = pos_ < len && data[pos_] == '$' &&
                  FastLength(data, len, pos_, limits_.max_inline_len, &n, &cr);
      ParseStatus st = fast ? ParseStatus::kOk : FindLineEnd(data, len, '\r', kErrBulkTooBig, &cr);
      if (st != ParseStatus::kOk) return st;
      if (cr + 1 >= len) return ParseStatus::kIncomplete;
      if (data[pos_] != '$') {
        // Redis formats the byte with %c and then maps CR and LF to spaces.
        char got = data[pos_];
        if (got == '\r' || got == '\n') got = ' ';
        std::string why = "Protocol error: expected '$', got '";
        why += got;
        why += '\'';
        return Fail(why);
      }
      if (!fast && (!ParseRedisLongLong(data + pos_ + 1, cr - pos_ - 1, &n) || n < 0 ||
                    data[cr + 1] != '\n')) {
        return Fail(kErrBulkLen);
      }
      if (static_cast<uint64_t>(n) > limits_.max_bulk_len) return FailLimit(RespLimit::kBulkLen);
      pos_ = cr + 2;
      // The rest of the request needs this payload and its CRLF plus the smallest bulk for
      // every later argument: refuse now rather than after buffering it.
      const uint64_t at_least = pos_ + static_cast<uint64_t>(n) + 2 +
                                kMinBulkBytes * static_cast<uint64_t>(remaining_ - 1);
      if (at_least > limits_.max_request_bytes) return FailLimit(RespLimit::kRequestBytes);
      bulk_len_ = n;
    }
    // The payload is binary and skipped by length, never scanned.
    const size_t end = pos_ + static_cast<size_t>(bulk_len_);
    if (len < end || len - end < 2) return ParseStatus::kIncomplete;
    if (data[end] != '\r' || data[end + 1] != '\n') return Fail(kErrBulkCrlf);
    if (parsed_args_ < kMaxArgViews) {
      views_[parsed_args_] = View{pos_, static_cast<size_t>(bulk_len_)};
    }
    ++parsed_args_;
    --remaining_;
    pos_ = end + 2;
    bulk_len_ = -1;
  }
  return Done(consumed);
}

ParseStatus RequestParser::ParseInline(const char* data, size_t len, size_t* consumed) {
  size_t nl = 0;
  // A line past max_inline_len stays Redis's protocol error ("too big inline request"): it is
  // Redis's own fixed bound, and what junk that never sends a line end runs into.
  ParseStatus st = FindLineEnd(data, len, '\n', kErrInlineTooBig, &nl);
  if (st != ParseStatus::kOk) return st;
  if (nl + 1 > limits_.max_request_bytes) return FailLimit(RespLimit::kRequestBytes);
  // The line ends at '\n'; one '\r' before it belongs to the terminator (Redis strips one).
  const size_t line_len = (nl > 0 && data[nl - 1] == '\r') ? nl - 1 : nl;
  if (!SplitInline(data, line_len)) return Fail(kErrUnbalanced);
  pos_ = nl + 1;
  return Done(consumed);
}

// Redis's sdssplitargs() over [line, line + n). Redis works on a C string; here the end of
// the span plays the role of its terminating NUL, and a NUL byte inside the line is kept as
// data (Redis never gets that far: its strchr() stops at the NUL and the line never ends).
bool RequestParser::SplitInline(const char* line, size_t n) {
  size_t argc = 0;
  size_t p = 0;
  for (;;) {
    while (p < n && IsSpace(line[p])) ++p;
    if (p == n) break;
    if (argc == inline_args_.size()) inline_args_.emplace_back();
    std::string& cur = inline_args_[argc++];
    cur.clear();
    bool in_dq = false;
    bool in_sq = false;
    bool done = false;
    while (!done) {
      if (in_dq) {
        if (p == n) return false;  // unterminated quotes
        const char c = line[p];
        if (c == '\\' && n - p >= 4 && line[p + 1] == 'x' && IsHexDigit(line[p + 2]) &&
            IsHexDigit(line[p + 3])) {
          cur.push_back(static_cast<char>(HexValue(line[p + 2]) * 16 + HexValue(line[p + 3])));
          p += 3;
        } else if (c == '\\' && p + 1 < n) {
          ++p;
          switch (line[p]) {
            case 'n':
              cur.push_back('\n');
              break;
            case 'r':
              cur.push_back('\r');
              break;
            case 't':
              cur.push_back('\t');
              break;
            case 'b':
              cur.push_back('\b');
              break;
            case 'a':
              cur.push_back('\a');
              break;
            default:
              cur.push_back(line[p]);
              break;
          }
        } else if (c == '"') {
          // The closing quote must be followed by a space or the end of the line.
          if (p + 1 < n && !IsSpace(line[p + 1])) return false;
          done = true;
        } else {
          cur.push_back(c);
        }
      } else if (in_sq) {
        if (p == n) return false;
        const char c = line[p];
        if (c == '\\' && p + 1 < n && line[p + 1] == '\'') {
          ++p;
          cur.push_back('\'');
        } else if (c == '\'') {
          if (p + 1 < n && !IsSpace(line[p + 1])) return false;
          done = true;
        } else {
          cur.push_back(c);
        }
      } else if (p == n) {
        done = true;
      } else {
        switch (line[p]) {
          case ' ':
          case '\n':
          case '\r':
          case '\t':
            done = true;
            break;
          case '"':
            in_dq = true;
            break;
          case '\'':
            in_sq = true;
            break;
          default:
            cur.push_back(line[p]);
            break;
        }
      }
      if (p < n) ++p;
    }
  }
  argc_ = argc;
  return true;
}

ParseStatus RequestParser::Done(size_t* consumed) {
  *consumed = pos_;
  pos_ = 0;
  scan_ = 0;
  remaining_ = -1;
  bulk_len_ = -1;
  mode_ = Mode::kNone;
  return ParseStatus::kOk;
}

ParseStatus RequestParser::Fail(std::string_view why) {
  failed_ = true;
  error_.assign(why);
  return ParseStatus::kError;
}

ParseStatus RequestParser::FailLimit(RespLimit which) {
  size_t value = 0;
  const char* unit = " bytes";
  switch (which) {
    case RespLimit::kArrayLen:
      value = limits_.max_array_len;
      unit = " elements";
      break;
    case RespLimit::kBulkLen:
      value = limits_.max_bulk_len;
      break;
    case RespLimit::kRequestBytes:
      value = limits_.max_request_bytes;
      break;
    default:
      break;
  }
  limit_hit_ = which;
  Fail("kompress: request over limits." + std::string(RespLimitName(which)) + " (" +
       std::to_string(value) + unit + "); closing the connection");
  return ParseStatus::kError;
}

// ---------------------------------------------------------------------------------------
// ReplyFramer

ReplyFramer::ReplyFramer(const RespLimits& limits) : limits_(limits) {
  // Typical replies nest a few levels; reserving avoids growth in the steady state.
  stack_.reserve(limits_.max_nesting < 16 ? limits_.max_nesting : 16);
}

void ReplyFramer::Reset() {
  pos_ = 0;
  scan_ = 0;
  bulk_len_ = 0;
  state_ = State::kHeader;
  in_stream_ = false;
  is_error_ = false;
  failed_ = false;
  stack_.clear();
  error_.clear();
}

// Finds the CRLF ending the line whose type byte is at pos_ (content starts at pos_ + 1),
// resuming at scan_. A lone '\r' inside the content is data, as hiredis reads it. A line
// whose content would exceed max_content is an error as soon as that is certain; the search
// never looks past that window, so the outcome does not depend on how bytes were split.
ParseStatus ReplyFramer::FindCrlf(const char* data, size_t len, size_t max_content, size_t* cr) {
  const size_t first = pos_ + 1;
  const bool capped = len - first > max_content;
  const size_t stop = capped ? first + max_content + 1 : len;
  if (scan_ < first) scan_ = first;
  while (scan_ < stop) {
    const void* hit = std::memchr(data + scan_, '\r', stop - scan_);
    if (hit == nullptr) {
      scan_ = stop;
      break;
    }
    const size_t i = static_cast<size_t>(static_cast<const char*>(hit) - data);
    if (i + 1 >= len) {
      scan_ = i;
      return ParseStatus::kIncomplete;
    }
    if (data[i + 1] == '\n') {
      *cr = i;
      return ParseStatus::kOk;
    }
    scan_ = i + 1;
  }
  if (capped) return ParseStatus::kError;
  return ParseStatus::kIncomplete;
}

// An element just ended: count it against the innermost open aggregate and close every
// aggregate it completes. Returns true when the whole reply is framed.
bool ReplyFramer::CompleteElement() {
  while (!stack_.empty()) {
    Level& top = stack_.back();
    if (top.kind == Kind::kStreamed) return false;  // only '.' closes it
    if (--top.remaining > 0) return false;
    const bool attribute = top.kind == Kind::kAttribute;
    stack_.pop_back();
    // An attribute is not an element: the reply it annotates still has to come.
    if (attribute) return false;
  }
  return true;
}

// Handles the header line of an aggregate (* % ~ > |); `num` is its content.
ParseStatus ReplyFramer::OpenAggregate(char type, const char* num, size_t n, bool* reply_done) {
  *reply_done = false;
  const bool pairs = type == '%' || type == '|';
  if (n == 1 && num[0] == '?' && type != '>' && type != '|') {
    if (stack_.size() >= limits_.max_nesting) return Fail(kErrReplyNesting);
    stack_.push_back(Level{0, Kind::kStreamed});
    return ParseStatus::kOk;
  }
  int64_t count = 0;
  if (!ParseReplyInteger(num, n, &count)) return Fail(kErrReplyCount);
  if (count == -1 && type == '*') {  // RESP2 null array
    *reply_done = CompleteElement();
    return ParseStatus::kOk;
  }
  if (count < 0 || (pairs && count > INT64_MAX / 2)) return Fail(kErrReplyCount);
  // Depth counts every aggregate header, empty ones too, as hiredis does.
  if (stack_.size() >= limits_.max_nesting) return Fail(kErrReplyNesting);
  const Kind kind = type == '|' ? Kind::kAttribute : Kind::kCounted;
  if (count == 0) {
    // An empty attribute annotates nothing yet; an empty aggregate is a whole element.
    if (kind != Kind::kAttribute) *reply_done = CompleteElement();
    return ParseStatus::kOk;
  }
  stack_.push_back(Level{pairs ? count * 2 : count, kind});
  return ParseStatus::kOk;
}

size_t ReplyFramer::Settled(size_t len) const {
  if (failed_) return 0;
  if (state_ == State::kPayload) {
    // Payload bytes are settled as they arrive: they are skipped by length, never scanned.
    return std::min(len, pos_ + static_cast<size_t>(bulk_len_));
  }
  return std::min(len, pos_);
}

void ReplyFramer::Discard(size_t n) {
  if (n <= pos_) {
    pos_ -= n;
    scan_ = scan_ >= n ? scan_ - n : 0;
    return;
  }
  // Into the payload being skipped (state kPayload, by Settled's bound).
  bulk_len_ -= static_cast<int64_t>(n - pos_);
  pos_ = 0;
  scan_ = 0;
}

// The elements of HGETALL, LRANGE, MGET, SMEMBERS... are bulk strings one after another:
// those already whole are skipped in a tight loop over locals (a quarter of the loop's
// instructions per element). It stops before the aggregate's last element, so it never
// closes one, and at anything else (another type, a partial element, a long or signed length
// line other than a null), leaving it to the loop, which decides exactly as before.
void ReplyFramer::SkipWholeBulks(const char* data, size_t len) {
  Level& top = stack_.back();
  size_t p = pos_;
  int64_t remaining = top.remaining;
  const uint64_t max_bulk = limits_.max_bulk_len;
  while (remaining > 1 && len - p >= 5 && data[p] == '$') {
    const char* q = data + p + 1;  // the length's digits, then CRLF
    const size_t avail = len - p - 1;
    uint64_t n = static_cast<unsigned char>(q[0]) - static_cast<unsigned>('0');
    if (n > 9) {
      if (std::memcmp(q, "-1\r\n", 4) != 0) break;
      p += 5;  // RESP2 null (MGET of a missing key)
      --remaining;
      continue;
    }
    // Up to 9 digits, no leading zero but "0" itself: FastLength's plain form.
    size_t i = 1;
    for (unsigned d; i < avail && i < 9 &&
                     (d = static_cast<unsigned char>(q[i]) - static_cast<unsigned>('0')) <= 9;
         ++i) {
      n = n * 10 + d;
    }
    if ((q[0] == '0' && i > 1) || i + 1 >= avail || q[i] != '\r' || q[i + 1] != '\n' ||
        n > max_bulk) {
      break;
    }
    const size_t start = p + 1 + i + 2;
    if (len - start < n + 2 || data[start + n] != '\r' || data[start + n + 1] != '\n') break;
    p = start + n + 2;
    --remaining;
  }
  pos_ = p;
  top.remaining = remaining;
}

ParseStatus ReplyFramer::Frame(const char* data, size_t len, size_t* consumed) {
  *consumed = 0;
  if (failed_) return ParseStatus::kError;
  // The usual replies at the start of a fresh frame, a whole bulk string ("$5\r\nhello\r\n")
  // and "+OK" (every SET's, most writes'), are taken in one step; anything else (another
  // type, a partial bulk, an odd length line) goes through the loop below, which decides
  // exactly as it does for every reply.
  if (pos_ == 0 && state_ == State::kHeader && stack_.empty() && len >= 4) {
    if (data[0] == '$') {
      int64_t n = 0;
      size_t cr = 0;
      if (FastLength(data, len, 0, kMaxNumberLine, &n, &cr) &&
          static_cast<uint64_t>(n) <= limits_.max_bulk_len) {
        const size_t end = cr + 2 + static_cast<size_t>(n);
        if (len >= end && len - end >= 2 && data[end] == '\r' && data[end + 1] == '\n') {
          is_error_ = false;
          *consumed = end + 2;
          scan_ = 0;
          return ParseStatus::kOk;
        }
      }
    } else if (len >= 5 && limits_.max_bulk_len >= 2 && std::memcmp(data, "+OK\r\n", 5) == 0) {
      is_error_ = false;
      *consumed = 5;
      scan_ = 0;
      return ParseStatus::kOk;
    }
  }
  for (;;) {
    if (state_ == State::kPayload) {
      // Payloads are skipped by length, never scanned: a huge bulk costs O(1) per call.
      const size_t end = pos_ + static_cast<size_t>(bulk_len_);
      if (len < end || len - end < 2) return ParseStatus::kIncomplete;
      if (data[end] != '\r' || data[end + 1] != '\n') return Fail(kErrReplyCrlf);
      pos_ = end + 2;
      if (in_stream_) {
        state_ = State::kChunkHeader;
        continue;
      }
      state_ = State::kHeader;
      if (CompleteElement()) return Done(consumed);
      continue;
    }
    if (pos_ >= len) return ParseStatus::kIncomplete;
    if (state_ == State::kHeader && !stack_.empty() && data[pos_] == '$' &&
        stack_.back().kind == Kind::kCounted && stack_.back().remaining > 1) {
      SkipWholeBulks(data, len);
      if (pos_ >= len) return ParseStatus::kIncomplete;
    }
    const char type = data[pos_];
    size_t cr = 0;

    if (state_ == State::kChunkHeader) {
      if (type != ';') return Fail(kErrReplyType);
      ParseStatus st = FindCrlf(data, len, kMaxNumberLine, &cr);
      if (st == ParseStatus::kError) return Fail(kErrReplyBulkLen);
      if (st != ParseStatus::kOk) return st;
      int64_t n = 0;
      if (!ParseReplyInteger(data + pos_ + 1, cr - pos_ - 1, &n) || n < 0 ||
          static_cast<uint64_t>(n) > limits_.max_bulk_len) {
        return Fail(kErrReplyBulkLen);
      }
      pos_ = cr + 2;
      if (n == 0) {  // ";0" ends a streamed string
        in_stream_ = false;
        state_ = State::kHeader;
        if (CompleteElement()) return Done(consumed);
        continue;
      }
      bulk_len_ = n;
      state_ = State::kPayload;
      continue;
    }

    // The top-level reply decides is_error(); an attribute before it is overwritten by it.
    if (stack_.empty()) is_error_ = type == '-' || type == '!';
    switch (type) {
      case '+':
      case '-':
      case ',':
      case '(': {
        // Simple lines may be long (a script can return any status text): bound them like
        // a bulk.
        ParseStatus st = FindCrlf(data, len, limits_.max_bulk_len, &cr);
        if (st == ParseStatus::kError) return Fail(kErrReplyLine);
        if (st != ParseStatus::kOk) return st;
        pos_ = cr + 2;
        if (CompleteElement()) return Done(consumed);
        break;
      }
      case ':': {
        int64_t fast = 0;
        if (FastLength(data, len, pos_, kMaxNumberLine, &fast, &cr)) {
          pos_ = cr + 2;
          if (CompleteElement()) return Done(consumed);
          break;
        }
        ParseStatus st = FindCrlf(data, len, kMaxNumberLine, &cr);
        if (st == ParseStatus::kError) return Fail(kErrReplyInteger);
        if (st != ParseStatus::kOk) return st;
        int64_t v = 0;
        if (!ParseReplyInteger(data + pos_ + 1, cr - pos_ - 1, &v)) return Fail(kErrReplyInteger);
        pos_ = cr + 2;
        if (CompleteElement()) return Done(consumed);
        break;
      }
      case '_':
      case '#': {
        // "_\r\n" and "#t\r\n" / "#f\r\n": fixed shapes, anything else is garbage.
        ParseStatus st = FindCrlf(data, len, type == '_' ? 0 : 1, &cr);
        if (st == ParseStatus::kError) return Fail(kErrReplyLine);
        if (st != ParseStatus::kOk) return st;
        if (type == '#' && (cr != pos_ + 2 || (data[pos_ + 1] != 't' && data[pos_ + 1] != 'f'))) {
          return Fail(kErrReplyLine);
        }
        pos_ = cr + 2;
        if (CompleteElement()) return Done(consumed);
        break;
      }
      case '$':
      case '=':
      case '!': {
        int64_t fast = 0;
        if (type == '$' && len - pos_ >= 5 && std::memcmp(data + pos_, "$-1\r\n", 5) == 0) {
          pos_ += 5;  // the RESP2 null (a GET of no key), as common as a value
          if (CompleteElement()) return Done(consumed);
          break;
        }
        if (type == '$' && FastLength(data, len, pos_, kMaxNumberLine, &fast, &cr)) {
          // The usual "$5\r\n" read in place (a null, a sign or a long line: below).
          if (static_cast<uint64_t>(fast) > limits_.max_bulk_len) return Fail(kErrReplyBulkLen);
          pos_ = cr + 2;
          bulk_len_ = fast;
          state_ = State::kPayload;
          break;
        }
        ParseStatus st = FindCrlf(data, len, kMaxNumberLine, &cr);
        if (st == ParseStatus::kError) return Fail(kErrReplyBulkLen);
        if (st != ParseStatus::kOk) return st;
        const char* num = data + pos_ + 1;
        const size_t n = cr - pos_ - 1;
        pos_ = cr + 2;
        if (type == '$' && n == 1 && num[0] == '?') {
          in_stream_ = true;
          state_ = State::kChunkHeader;
          break;
        }
        int64_t blen = 0;
        if (!ParseReplyInteger(num, n, &blen)) return Fail(kErrReplyBulkLen);
        if (type == '$' && blen == -1) {  // RESP2 null bulk
          if (CompleteElement()) return Done(consumed);
          break;
        }
        if (blen < 0 || static_cast<uint64_t>(blen) > limits_.max_bulk_len) {
          return Fail(kErrReplyBulkLen);
        }
        bulk_len_ = blen;
        state_ = State::kPayload;
        break;
      }
      case '*':
      case '%':
      case '~':
      case '>':
      case '|': {
        ParseStatus st = FindCrlf(data, len, kMaxNumberLine, &cr);
        if (st == ParseStatus::kError) return Fail(kErrReplyCount);
        if (st != ParseStatus::kOk) return st;
        bool reply_done = false;
        st = OpenAggregate(type, data + pos_ + 1, cr - pos_ - 1, &reply_done);
        if (st != ParseStatus::kOk) return st;
        pos_ = cr + 2;
        if (reply_done) return Done(consumed);
        break;
      }
      case '.': {
        ParseStatus st = FindCrlf(data, len, 0, &cr);
        if (st == ParseStatus::kError) return Fail(kErrReplyStreamEnd);
        if (st != ParseStatus::kOk) return st;
        if (stack_.empty() || stack_.back().kind != Kind::kStreamed) {
          return Fail(kErrReplyStreamEnd);
        }
        stack_.pop_back();
        pos_ = cr + 2;
        if (CompleteElement()) return Done(consumed);
        break;
      }
      default:
        return Fail(kErrReplyType);
    }
  }
}

ParseStatus ReplyFramer::Done(size_t* consumed) {
  *consumed = pos_;
  pos_ = 0;
  scan_ = 0;
  bulk_len_ = 0;
  state_ = State::kHeader;
  in_stream_ = false;
  stack_.clear();
  return ParseStatus::kOk;
}

ParseStatus ReplyFramer::Fail(std::string_view why) {
  failed_ = true;
  error_.assign(why);
  return ParseStatus::kError;
}

size_t AnnouncedBulkSize(const char* data, size_t len) {
  if (len < 4 || data[0] != '$') return 0;
  uint64_t n = 0;
  size_t i = 1;
  // 19 digits fit in 64 bits; Redis's replies are far below that.
  for (; i < len && i <= 19 && data[i] >= '0' && data[i] <= '9'; ++i) {
    n = n * 10 + static_cast<uint64_t>(data[i] - '0');
  }
  if (i == 1 || i + 1 >= len || data[i] != '\r' || data[i + 1] != '\n') return 0;
  return static_cast<size_t>(i + 2 + n + 2);
}

}  // namespace kp
