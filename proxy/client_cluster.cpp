// ClientSession under Redis Cluster: requests routed by their keys' hash slot, multi-key
// commands split over shards and their replies merged, keyless commands given a meaning over
// the whole cluster, transactions pinned to their keys' shard, and the cluster's
// redirections (MOVED, ASK, TRYAGAIN, CLUSTERDOWN) followed so the client never sees them.
#include <charconv>
#include <cstring>

#include "common/cluster_slot.h"
#include "common/logging.h"
#include "common/resp_writer.h"
#include "proxy/backend.h"
#include "proxy/backend_conn.h"
#include "proxy/client_session.h"
#include "proxy/cluster_keys.h"
#include "proxy/worker.h"

namespace kp {

namespace {

constexpr char kCrossSlot[] = "CROSSSLOT Keys in request don't hash to the same slot";
constexpr char kSlotNotServed[] = "CLUSTERDOWN Hash slot not served";
constexpr uint8_t kMaxRedirects = 16;
// Keyless commands held after MULTI until a command names the shard (see EnterPinnedCluster).
constexpr size_t kMaxHeldInMulti = 64;

// Multi-key commands with a well-defined split: each part a command of the same name over
// its keys.
enum class Split : uint8_t { kNone, kValues, kPairs, kSum };

Split SplitOf(std::string_view name) {
  if (name == "mget") return Split::kValues;
  if (name == "mset") return Split::kPairs;
  if (name == "del" || name == "unlink" || name == "exists" || name == "touch") return Split::kSum;
  return Split::kNone;
}

// Keyless commands whose meaning is the whole cluster's.
enum class Whole : uint8_t { kNone, kSum, kConcat, kAllPrimaries, kAnyPrimary, kFirstValue, kScan };

Whole WholeOf(std::string_view name) {
  if (name == "dbsize") return Whole::kSum;
  if (name == "keys") return Whole::kConcat;
  if (name == "randomkey") return Whole::kFirstValue;
  if (name == "scan") return Whole::kScan;
  // Every primary must have the scripts and functions a later EVALSHA/FCALL names, and a
  // FLUSHALL empties the cluster, not one shard.
  if (name == "flushall" || name == "flushdb" || name == "script|load" || name == "script|flush" ||
      name == "function|load" || name == "function|delete" || name == "function|flush" ||
      name == "function|restore") {
    return Whole::kAllPrimaries;
  }
  // A running script is on one shard at most: whichever it is must be asked.
  if (name == "script|kill" || name == "function|kill") return Whole::kAnyPrimary;
  return Whole::kNone;
}

// The length of the RESP value at p[0..n), 0 if incomplete or not understood.
size_t ValueLen(const char* p, size_t n, int depth = 0) {
  if (n < 3 || depth > 8) return 0;
  const char* eol = static_cast<const char*>(std::memchr(p, '\r', n));
  if (eol == nullptr || static_cast<size_t>(eol - p) + 2 > n) return 0;
  size_t line = static_cast<size_t>(eol - p) + 2;
  int64_t v = 0;
  switch (p[0]) {
    case '+':
    case '-':
    case ':':
    case '_':
    case ',':
    case '#':
    case '(':
      return line;
    case '$':
    case '!':
    case '=': {
      auto r = std::from_chars(p + 1, eol, v);
      if (r.ec != std::errc()) return 0;
      if (v < 0) return line;
      size_t total = line + static_cast<size_t>(v) + 2;
      return total <= n ? total : 0;
    }
    case '*':
    case '~':
    case '>':
    case '%': {
      auto r = std::from_chars(p + 1, eol, v);
      if (r.ec != std::errc()) return 0;
      if (v < 0) return line;
      size_t items = static_cast<size_t>(v) * (p[0] == '%' ? 2 : 1);
      size_t at = line;
      for (size_t i = 0; i < items; ++i) {
        size_t len = ValueLen(p + at, n - at, depth + 1);
        if (len == 0) return 0;
        at += len;
      }
      return at;
    }
    default:
      return 0;
  }
}

// The elements of an array reply, as views; false if it is not a whole array.
bool SplitArray(std::string_view r, std::vector<std::string_view>* out) {
  out->clear();
  if (r.size() < 4 || (r[0] != '*' && r[0] != '~')) return false;
  size_t eol = r.find("\r\n");
  int64_t n = 0;
  auto res = std::from_chars(r.data() + 1, r.data() + eol, n);
  if (res.ec != std::errc() || n < 0) return false;
  size_t at = eol + 2;
  for (int64_t i = 0; i < n; ++i) {
    size_t len = ValueLen(r.data() + at, r.size() - at);
    if (len == 0) return false;
    out->push_back(r.substr(at, len));
    at += len;
  }
  return at == r.size();
}

bool IsNull(std::string_view r) {
  return r == "$-1\r\n" || r == "*-1\r\n" || r == "_\r\n";
}

bool ParseUnsigned(std::string_view s, uint64_t* v) {
  auto r = std::from_chars(s.data(), s.data() + s.size(), *v);
  return r.ec == std::errc() && r.ptr == s.data() + s.size();
}

// The groups that serve slots now, in id order (SCAN walks them one after the other).
std::vector<uint16_t> ServingGroups(const Topology& t) {
  std::vector<bool> seen(t.groups(), false);
  for (uint32_t slot = 0; slot < kClusterSlots; ++slot) {
    uint16_t g = t.GroupOfSlot(static_cast<uint16_t>(slot));
    if (g != Topology::kNoGroup && g < seen.size()) seen[g] = true;
  }
  std::vector<uint16_t> out;
  for (size_t g = 0; g < seen.size(); ++g) {
    if (seen[g]) out.push_back(static_cast<uint16_t>(g));
  }
  return out;
}

}  // namespace

uint16_t ClientSession::ClusterGroupFor(uint16_t slot) const {
  // Keyless requests go to the shard serving slot 0 (any shard would do).
  return worker_->topology().GroupOfSlot(slot == kNoSlot ? 0 : slot);
}

bool ClientSession::ClusterSlotOf(const Request& req, const RouteDecision& d, const char* raw,
                                  size_t len, uint16_t* slot) {
  *slot = kNoSlot;
  const CommandInfo* fixed = d.info;
  if (fixed != nullptr && fixed->first_key == 1 && fixed->last_key == 1 &&
      !fixed->is(kCmdMovableKeys)) {
    // One key, the first argument (GET, SET, HGET, INCR...): most requests, so read it in
    // place instead of listing every argument.
    if (req.argc >= 2) *slot = KeySlot(req.arg(1));
    return true;
  }
  if (req.argc <= req.nviews) {
    args_.assign(req.argv, req.argv + req.argc);
  } else if (!SplitRequest(raw, len, &args_)) {
    return true;  // cannot happen for a framed request; the server answers
  }
  keys_.clear();
  const CommandInfo* info = d.info;
  if (info == nullptr) {
    // Decided by name (WATCH, MULTI, SUBSCRIBE...): the table still knows its keys.
    info = worker_->router().table().Lookup(args_[0], args_.size() > 1 ? args_[1] : "");
  }
  if (info != nullptr && info->name == "publish" && args_.size() > 1) {
    // Cluster pub/sub reaches every node from any node: the channel's slot spreads the load.
    *slot = KeySlot(args_[1]);
    return true;
  }
  if (!KeyPositions(info, args_, &keys_)) return true;
  for (uint32_t k : keys_) {
    uint16_t s = KeySlot(args_[k]);
    if (*slot == kNoSlot) {
      *slot = s;
    } else if (s != *slot) {
      return false;
    }
  }
  return true;
}

void ClientSession::DispatchCluster(const Request& req, const RouteDecision& d, const char* raw,
                                    size_t len) {
  std::string_view name = d.info != nullptr ? std::string_view(d.info->name) : std::string_view();
  Topology& topo = worker_->topology();
  // Every command sent to every shard is keyless: a command with keys needs no lookup.
  Whole whole = d.info != nullptr && d.info->first_key > 0 ? Whole::kNone : WholeOf(name);
  RouteDecision part_d;
  part_d.route = d.route;
  part_d.may_write = d.may_write;
  part_d.side_conn = d.side_conn;
  if (whole != Whole::kNone) {
    std::vector<uint16_t> groups = ServingGroups(topo);
    if (groups.empty()) {
      worker_->stats().errors++;
      return ReplyErrorNow(kSlotNotServed);
    }
    // SCAN without a cursor: Redis's arity error, from any shard.
    if (whole == Whole::kScan && req.argc < 2) return Dispatch(req, d, raw, len, groups[0]);
    uint64_t parent = NewSlot();
    Slot& p = SlotAt(parent);
    p.kind = d.route == Route::kRead ? 1 : 2;
    p.start_ns = worker_->clock_ns();
    p.fan = std::make_unique<FanOut>();
    FanOut& f = *p.fan;
    Buffer b;
    if (whole == Whole::kScan) {
      // The client's cursor names the shard (low 8 bits) and that shard's own cursor.
      uint64_t cursor = 0;
      if (!ParseUnsigned(req.arg(1), &cursor)) {
        p.fan.reset();
        return Complete(parent, "-ERR invalid cursor\r\n", 21);
      }
      // 0 starts at the first shard serving slots (which need not be group 0).
      auto g = cursor == 0 ? groups[0] : static_cast<uint16_t>(cursor & 0xFF);
      if (std::find(groups.begin(), groups.end(), g) == groups.end()) {
        p.fan.reset();
        return Complete(parent, "-ERR invalid cursor\r\n", 21);
      }
      if (req.argc > req.nviews)
        SplitRequest(raw, len, &args_);
      else
        args_.assign(req.argv, req.argv + req.argc);
      std::string node_cursor = std::to_string(cursor >> 8);
      resp::AppendArrayHeader(b, args_.size());
      for (size_t i = 0; i < args_.size(); ++i) {
        resp::AppendBulk(b, i == 1 ? std::string_view(node_cursor) : args_[i]);
      }
      f.merge = FanOut::Merge::kScan;
      f.scan_group = g;
      f.pending = 1;
      f.replies.resize(1);
      part_d.cursor_arg = 1;
      Request pr;
      std::vector<std::string_view> views;
      SplitRequest(b.data(), b.size(), &views);
      pr.argc = views.size();
      pr.nviews = std::min(views.size(), RequestParser::kMaxArgViews);
      for (size_t i = 0; i < pr.nviews; ++i) pr.argv[i] = views[i];
      SendPart(parent, 0, g, kNoSlot, true, false, b, part_d, &pr);
      return;
    }
    b.Append(raw, len);
    f.merge = whole == Whole::kSum          ? FanOut::Merge::kSum
              : whole == Whole::kConcat     ? FanOut::Merge::kConcat
              : whole == Whole::kFirstValue ? FanOut::Merge::kFirstValue
              : whole == Whole::kAnyPrimary ? FanOut::Merge::kAnyOk
                                            : FanOut::Merge::kAllOk;
    f.pending = static_cast<uint32_t>(groups.size());
    f.replies.resize(groups.size());
    bool read =
        whole != Whole::kAllPrimaries && whole != Whole::kAnyPrimary && d.route == Route::kRead;
    if (!read) part_d.route = Route::kWrite;
    for (size_t i = 0; i < groups.size(); ++i) {
      SendPart(parent, static_cast<uint32_t>(i), groups[i], kNoSlot, read, !read && d.may_write, b,
               part_d, nullptr);
    }
    return;
  }
  uint16_t slot = kNoSlot;
  if (!ClusterSlotOf(req, d, raw, len, &slot)) {
    Split split = SplitOf(name);
    if (split == Split::kNone) {
      worker_->stats().errors++;
      return ReplyErrorNow(kCrossSlot);
    }
    if (split == Split::kPairs && args_.size() % 2 == 0) {
      // MSET with a key lacking its value: Redis's own arity error, from any shard.
      return Dispatch(req, d, raw, len, ClusterGroupFor(KeySlot(args_[1])), KeySlot(args_[1]));
    }
    // One part per slot (Redis refuses keys of several slots even on one node), in the order
    // the keys first appear; the reply is put back together in the client's order.
    uint64_t parent = NewSlot();
    Slot& p = SlotAt(parent);
    p.kind = d.route == Route::kRead ? 1 : 2;
    p.start_ns = worker_->clock_ns();
    p.fan = std::make_unique<FanOut>();
    FanOut& f = *p.fan;
    f.merge = split == Split::kValues  ? FanOut::Merge::kValues
              : split == Split::kPairs ? FanOut::Merge::kAllOk
                                       : FanOut::Merge::kSum;
    std::vector<uint16_t> part_slots;
    std::vector<std::vector<uint32_t>> part_keys;  // argument indexes per part
    for (uint32_t k : keys_) {
      uint16_t s = KeySlot(args_[k]);
      size_t i = 0;
      while (i < part_slots.size() && part_slots[i] != s) ++i;
      if (i == part_slots.size()) {
        part_slots.push_back(s);
        part_keys.emplace_back();
      }
      part_keys[i].push_back(k);
    }
    f.pending = static_cast<uint32_t>(part_slots.size());
    // An MGET of a few keys split over slots is as cheap as it was whole: its parts avoid a
    // replica that stopped answering like a GET does (they waited for the whole timeout).
    const bool cheap = d.route == Route::kRead && CheapToRetry(d, req);
    f.replies.resize(part_slots.size());
    if (split == Split::kValues) {
      f.values.resize(keys_.size());
      f.positions.resize(part_slots.size());
    }
    for (size_t i = 0; i < part_slots.size(); ++i) {
      Buffer b;
      size_t per = split == Split::kPairs ? 2 : 1;
      resp::AppendArrayHeader(b, 1 + part_keys[i].size() * per);
      resp::AppendBulk(b, args_[0]);
      for (uint32_t k : part_keys[i]) {
        resp::AppendBulk(b, args_[k]);
        if (split == Split::kPairs) resp::AppendBulk(b, args_[k + 1]);
        if (split == Split::kValues) f.positions[i].push_back(k - 1);
      }
      uint16_t g = worker_->topology().GroupOfSlot(part_slots[i]);
      SendPart(parent, static_cast<uint32_t>(i), g, part_slots[i], d.route == Route::kRead,
               d.route == Route::kWrite && d.may_write, b, part_d, nullptr, cheap);
    }
    return;
  }
  uint16_t g = ClusterGroupFor(slot);
  if (g == Topology::kNoGroup) {
    worker_->stats().errors++;
    return ReplyErrorNow(kSlotNotServed);
  }
  Dispatch(req, d, raw, len, g, slot);
}

void ClientSession::SendPart(uint64_t parent, uint32_t part, uint16_t group, uint16_t hslot,
                             bool is_read, bool may_write, const Buffer& raw,
                             const RouteDecision& d, const Request* req, bool cheap) {
  uint64_t seq = NewSlot();
  Slot& s = SlotAt(seq);
  s.parent = parent;
  s.part = part;
  ++aux_slots_;
  s.sent_bytes = raw.size();
  inflight_bytes_ += raw.size();
  s.hslot = hslot;
  s.is_read = is_read;
  s.cheap = is_read && cheap;
  s.kind = d.side_conn ? 0 : is_read ? 1 : 2;
  s.may_write = may_write;
  s.side_conn = d.side_conn;
  if (group == Topology::kNoGroup) {
    CompleteError(seq, kSlotNotServed);
    return;
  }
  s.group = group;
  if (!parked_.empty() || !Send(seq, req, d, raw.data(), raw.size())) {
    Park(seq, raw.data(), raw.size());
  }
}

void ClientSession::OnPartReply(uint64_t parent, uint32_t part, const char* data, size_t len) {
  // A parent answered before all its parts (kAnyOk) may have left the ring: its slot can
  // belong to a newer request by now.
  if (parent < head_) return;
  Slot& p = SlotAt(parent);
  if (!p.fan) return;
  FanOut& f = *p.fan;
  std::string_view r(data, len);
  auto bad = [&f](std::string_view what) {
    if (f.error.empty())
      f.error = "-ERR kompress: unexpected reply from a shard to " + std::string(what) + "\r\n";
  };
  bool is_error = !r.empty() && (r[0] == '-' || r[0] == '!');
  if (f.merge == FanOut::Merge::kAnyOk) {
    // The shards without a script say NOTBUSY; any other error (UNKILLABLE: it wrote
    // already) says more.
    if (!is_error) {
      // Settled: the client need not wait for a shard that is slow or down (its part's
      // reply, when it comes, finds the parent answered and is dropped).
      f.any_ok = true;
      FinishFanOut(parent);
      return;
    } else if (f.error.empty() || (f.error.rfind("-NOTBUSY", 0) == 0 && r.find("NOTBUSY") != 1)) {
      f.error = std::string(r);
    }
  } else if (is_error) {
    if (f.error.empty()) f.error = std::string(r);
  } else {
    switch (f.merge) {
      case FanOut::Merge::kValues: {
        std::vector<std::string_view> elems;
        if (!SplitArray(r, &elems) || elems.size() != f.positions[part].size()) {
          bad("MGET");
          break;
        }
        for (size_t i = 0; i < elems.size(); ++i) f.values[f.positions[part][i]] = elems[i];
        break;
      }
      case FanOut::Merge::kSum: {
        int64_t v = 0;
        if (r.size() < 4 || r[0] != ':' ||
            std::from_chars(r.data() + 1, r.data() + r.size() - 2, v).ec != std::errc()) {
          bad("a counting command");
          break;
        }
        f.sum += v;
        break;
      }
      case FanOut::Merge::kConcat: {
        std::vector<std::string_view> elems;
        if (!SplitArray(r, &elems)) {
          bad("KEYS");
          break;
        }
        for (std::string_view e : elems) f.concat.append(e);
        f.count += elems.size();
        break;
      }
      case FanOut::Merge::kAllOk:
      case FanOut::Merge::kFirstValue:
      case FanOut::Merge::kScan:
      case FanOut::Merge::kAnyOk:
        f.replies[part] = std::string(r);
        break;
    }
  }
  if (--f.pending == 0) FinishFanOut(parent);
}

void ClientSession::FinishFanOut(uint64_t parent) {
  Slot& p = SlotAt(parent);
  std::unique_ptr<FanOut> owned = std::move(p.fan);
  FanOut& f = *owned;
  Buffer out;
  if (f.merge == FanOut::Merge::kAnyOk && f.any_ok) {
    out.Append("+OK\r\n");
  } else if (!f.error.empty()) {
    worker_->stats().errors++;
    out.Append(f.error.data(), f.error.size());
  } else {
    switch (f.merge) {
      case FanOut::Merge::kValues:
        resp::AppendArrayHeader(out, f.values.size());
        for (const std::string& v : f.values) out.Append(v.data(), v.size());
        break;
      case FanOut::Merge::kSum:
        resp::AppendInteger(out, f.sum);
        break;
      case FanOut::Merge::kConcat:
        resp::AppendArrayHeader(out, f.count);
        out.Append(f.concat.data(), f.concat.size());
        break;
      case FanOut::Merge::kAllOk:
      case FanOut::Merge::kAnyOk:
        out.Append(f.replies[0].data(), f.replies[0].size());
        break;
      case FanOut::Merge::kFirstValue: {
        // RANDOMKEY: a shard picked at random among those that have keys.
        size_t n = f.replies.size();
        size_t start = static_cast<size_t>(uv_hrtime()) % n;
        const std::string* pick = &f.replies[start];
        for (size_t k = 0; k < n; ++k) {
          const std::string& r = f.replies[(start + k) % n];
          if (!IsNull(r)) {
            pick = &r;
            break;
          }
        }
        out.Append(pick->data(), pick->size());
        break;
      }
      case FanOut::Merge::kScan: {
        // [cursor, keys]: the shard's cursor becomes the client's (shard in the low 8 bits);
        // when the shard is done, the next shard's start.
        std::vector<std::string_view> elems;
        uint64_t node_cursor = 0;
        if (!SplitArray(f.replies[0], &elems) || elems.size() != 2 || elems[0].size() < 4 ||
            elems[0][0] != '$') {
          out.Append("-ERR kompress: unexpected reply from a shard to SCAN\r\n");
          break;
        }
        std::string_view c = elems[0];
        size_t eol = c.find("\r\n");
        if (!ParseUnsigned(c.substr(eol + 2, c.size() - eol - 4), &node_cursor)) {
          out.Append("-ERR kompress: unexpected reply from a shard to SCAN\r\n");
          break;
        }
        uint64_t next = 0;
        if (node_cursor != 0) {
          next = (node_cursor << 8) | f.scan_group;
        } else {
          std::vector<uint16_t> groups = ServingGroups(worker_->topology());
          for (uint16_t g : groups) {
            if (g > f.scan_group) {
              next = g;
              break;
            }
          }
        }
        resp::AppendArrayHeader(out, 2);
        resp::AppendBulk(out, std::to_string(next));
        out.Append(elems[1].data(), elems[1].size());
        break;
      }
    }
  }
  Complete(parent, out.data(), out.size());
}

bool ClientSession::FollowRedirect(uint64_t seq, Backend* from, const char* data, size_t len) {
  std::string_view e(data + 1, len >= 3 ? len - 3 : 0);
  bool moved = e.substr(0, 6) == "MOVED ";
  bool ask = e.substr(0, 4) == "ASK ";
  bool again = e.substr(0, 8) == "TRYAGAIN";
  bool down = e.substr(0, 11) == "CLUSTERDOWN";
  if (!moved && !ask && !again && !down) return false;
  Slot& s = SlotAt(seq);
  if (s.request.empty()) return false;  // shown as it is
  // Only redirections followed count against the bound; TRYAGAIN, CLUSTERDOWN and a target
  // not known yet wait for the park deadline, after which the server's error is shown.
  if ((moved || ask) && s.redirects >= kMaxRedirects) return false;
  if ((again || down) && s.park_deadline != 0 && worker_->now() >= s.park_deadline) return false;
  Topology& topo = worker_->topology();
  // Not applied: as far as read-your-writes goes the write has not happened yet.
  if (s.kind == 2 && writes_inflight_ > 0) --writes_inflight_;
  if (moved || down) topo.RequestRefresh();
  if (moved || ask) {
    (moved ? topo.stats().moved : topo.stats().ask)++;
    size_t sp = e.rfind(' ');
    std::string_view addr = e.substr(sp + 1);
    size_t colon = addr.rfind(':');
    Endpoint ep;
    uint64_t port = 0;
    if (colon != std::string_view::npos && ParseUnsigned(addr.substr(colon + 1), &port) &&
        port <= 65535) {
      ep.host = std::string(addr.substr(0, colon));
      ep.port = static_cast<uint16_t>(port);
    }
    Backend* to = ep.port != 0 ? topo.FindNode(ep) : nullptr;
    if (to == nullptr && ep.port != 0 && (ep.host == "127.0.0.1" || ep.host == "::1")) {
      // The cluster announces 127.0.0.1 where the seeds may say localhost.
      for (const char* alias : {"localhost", "127.0.0.1"}) {
        Endpoint a{alias, ep.port};
        if ((to = topo.FindNode(a)) != nullptr) break;
      }
    }
    // Behind a request already waiting (TRYAGAIN...), this one waits too: the client's
    // order is kept.
    if (to != nullptr && to->up() && parked_.empty()) {
      ++s.redirects;
      uint64_t deadline = worker_->now() + worker_->timeout_ms();
      BackendConn* conn = worker_->PrimaryConnFor(to, id_, cls_);
      if (ask) {
        // ASKING, then the request, on the same connection: the importing node serves it
        // once (the slot is still the other node's).
        static constexpr char kAsking[] = "*1\r\n$6\r\nASKING\r\n";
        uint64_t a = NewSlot();
        SlotAt(a).discard = true;
        ++aux_slots_;
        Slot& again_s = SlotAt(seq);  // NewSlot may have moved the ring
        conn->Send(this, a, kAsking, sizeof kAsking - 1, deadline);
        ++inflight_;
        conn->Send(this, seq, again_s.request.data(), again_s.request.size(), deadline);
      } else {
        s.group = static_cast<uint16_t>(to->group());
        conn->Send(this, seq, s.request.data(), s.request.size(), deadline);
      }
      if (SlotAt(seq).kind == 2) ++writes_inflight_;
      SlotAt(seq).tried_primary = true;
      SlotAt(seq).tried_replica = true;  // no retry on the old shard's replicas
      ++inflight_;
      return true;
    }
  }
  // Not known yet (a node the map does not have), TRYAGAIN (keys of a slot being moved), or
  // the cluster down for a moment (a shard failing over): the request waits, is sent again a
  // few milliseconds later to whichever shard then serves its slot, and fails only after the
  // timeout.
  (void)from;
  Park(seq, s.request.data(), s.request.size());
  return true;
}

bool ClientSession::EnterPinnedCluster(const Request& req, const RouteDecision& d, const char* raw,
                                       size_t len) {
  bool multi = EqualsLower(req.arg(0), "multi");
  if (cluster_multi_) {
    if (multi) {
      ReplyErrorNow("ERR MULTI calls can not be nested");
      return true;
    }
    if (EqualsLower(req.arg(0), "exec") && (!pin_ || pin_->multi_held.empty())) {
      cluster_multi_ = false;
      Buffer b;
      resp::AppendArrayHeader(b, 0);
      ReplyNow(b);
      return true;
    }
    if (EqualsLower(req.arg(0), "discard")) {
      cluster_multi_ = false;
      if (pin_) pin_->ClearHeld();
      Buffer b;
      resp::AppendSimple(b, "OK");
      ReplyNow(b);
      return true;
    }
    if (d.route == Route::kLocal &&
        (d.local == LocalCommand::kQuit || d.local == LocalCommand::kReset)) {
      cluster_multi_ = false;
      if (pin_) pin_->ClearHeld();
      HandleLocal(d.local, req);
      return true;
    }
  } else if (multi) {
    // The shard is the first command's: MULTI goes there with it.
    cluster_multi_ = true;
    Buffer b;
    resp::AppendSimple(b, "OK");
    ReplyNow(b);
    return true;
  }
  uint16_t slot = kNoSlot;
  if (!ClusterSlotOf(req, d, raw, len, &slot)) {
    worker_->stats().errors++;
    ReplyErrorNow(kCrossSlot);
    if (cluster_multi_) {
      // Redis flags the transaction: EXEC will abort.
      cluster_multi_ = false;
      if (pin_) pin_->ClearHeld();
      multi_refused_ = multi_refused_queued_ = true;
    }
    return true;
  }
  bool wait = EqualsLower(req.arg(0), "wait") || EqualsLower(req.arg(0), "waitaof");
  if (cluster_multi_ && slot == kNoSlot && !wait && !EqualsLower(req.arg(0), "exec") &&
      pin().multi_held.size() < kMaxHeldInMulti) {
    // A keyless command before the transaction's first key (PING, CLIENT SETNAME...) does
    // not choose the shard: it is queued here and goes ahead of that command.
    pin().multi_held.emplace_back(raw, len);
    if (d.route == Route::kLocal && d.local == LocalCommand::kClientSetName &&
        ValidClientName(req.arg(2))) {
      pin().held_name = std::string(req.arg(2));
    }
    Buffer b;
    resp::AppendSimple(b, "QUEUED");
    ReplyNow(b);
    return true;
  }
  uint16_t g = ClusterGroupFor(slot);
  if (wait) {
    // WAIT counts the replicas that have this client's writes: those of the shard its last
    // write went to.
    g = last_write_group_;
  }
  if (g == Topology::kNoGroup) {
    worker_->stats().errors++;
    ReplyErrorNow(kSlotNotServed);
    if (cluster_multi_) {
      // As Redis does for a command refused inside MULTI, EXEC will abort the transaction;
      // an EXEC refused here ends it.
      cluster_multi_ = false;
      if (pin_) pin_->ClearHeld();
      multi_refused_ = multi_refused_queued_ = !EqualsLower(req.arg(0), "exec");
    }
    return true;
  }
  pin_group_ = g;
  bool multi_first = cluster_multi_;
  if (!EnterPinned(req, d, raw, len, multi_first)) return false;  // waits for a primary
  cluster_multi_ = false;
  return true;
}

}  // namespace kp
