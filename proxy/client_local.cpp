// ClientSession, local commands: what the proxy answers itself (PING, ECHO, AUTH, HELLO,
// SELECT 0, CLIENT ID/INFO/LIST/SETNAME/GETNAME/SETINFO, RESET, QUIT, PROXY) and this
// client's line for CLIENT INFO / CLIENT LIST.
#include "proxy/client_session.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>

#include "common/errors.h"
#include "common/logging.h"
#include "common/resp_writer.h"
#include "proxy/backend.h"
#include "proxy/backend_conn.h"
#include "proxy/proxy_info.h"
#include "proxy/worker.h"

namespace kp {

namespace {
// A number as Redis's string2ll reads it: an optional '-', no leading zeros, no '+', no
// spaces, within int64 ("01", "-0" and "" are not integers).
bool ParseRedisInteger(std::string_view s, int64_t* out) {
  if (s.empty() || s.size() > 20) return false;
  bool negative = s[0] == '-';
  std::string_view digits = negative ? s.substr(1) : s;
  if (digits.empty() || (digits[0] == '0' && (digits.size() > 1 || negative))) return false;
  uint64_t v = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return false;
    uint64_t next = v * 10 + static_cast<uint64_t>(c - '0');
    if (next / 10 != v) return false;
    v = next;
  }
  if (negative ? v > uint64_t{INT64_MAX} + 1 : v > uint64_t{INT64_MAX}) return false;
  *out = negative ? static_cast<int64_t>(0 - v) : static_cast<int64_t>(v);
  return true;
}

// Compares a password in time that does not depend on where it differs (only its length
// shows), so response timing does not reveal a prefix.
bool SecretEquals(std::string_view given, std::string_view secret) {
  unsigned diff = given.size() != secret.size() ? 1u : 0u;
  size_t n = secret.empty() ? 1 : secret.size();
  for (size_t i = 0; i < given.size(); ++i) {
    diff |= static_cast<unsigned char>(given[i]) ^
            static_cast<unsigned char>(secret.empty() ? 0 : secret[i % n]);
  }
  return diff == 0;
}
}  // namespace

// ---- local commands ----

void ClientSession::HandleLocal(LocalCommand cmd, const Request& req) {
  const Config& cfg = worker_->config();
  Buffer& b = scratch_;
  b.Clear();
  auto wrong_args = [&](std::string_view name) {
    std::string lower(name);
    for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    ReplyErrorNow("ERR wrong number of arguments for '" + lower + "' command");
  };
  switch (cmd) {
    case LocalCommand::kPing:
      if (req.argc == 1) {
        resp::AppendSimple(b, "PONG");
      } else if (req.argc == 2) {
        resp::AppendBulk(b, req.arg(1));
      } else {
        return wrong_args("ping");
      }
      break;
    case LocalCommand::kEcho:
      if (req.argc != 2) return wrong_args("echo");
      resp::AppendBulk(b, req.arg(1));
      break;
    case LocalCommand::kQuit:
      resp::AppendSimple(b, "OK");
      ReplyNow(b);
      closing_after_flush_ = true;
      PauseReading();
      MaybeFinish();
      return;
    case LocalCommand::kAuth: {
      if (req.argc < 2) return wrong_args("auth");
      if (req.argc > 3) return ReplyErrorNow("ERR syntax error");
      if (cfg.auth_passthrough) {
        return StartPassthroughAuth(req.argc == 3 ? req.arg(1) : "default", req.arg(req.argc - 1),
                                    req.argc == 2);
      }
      if (cfg.requirepass.empty()) {
        if (req.argc == 2) return ReplyErrorNow(errors::kAuthNotConfigured);
        if (!EqualsLower(req.arg(1), "default")) return ReplyErrorNow(errors::kWrongPass);
        resp::AppendSimple(b, "OK");
        break;
      }
      bool user_ok = req.argc == 2 || EqualsLower(req.arg(1), "default");
      if (!user_ok || !SecretEquals(req.arg(req.argc - 1), cfg.requirepass)) {
        return ReplyErrorNow(errors::kWrongPass);
      }
      authenticated_ = true;
      resp::AppendSimple(b, "OK");
      break;
    }
    case LocalCommand::kHello: {
      size_t i = 1;
      int proto = cls_.proto;
      const Backend* primary = worker_->backends().primary();
      std::string version = primary != nullptr ? primary->server_version() : std::string();
      if (req.argc >= 2) {
        std::string_view ver = req.arg(1);
        int64_t n = 0;
        if (!ParseRedisInteger(ver, &n)) {
          return ReplyErrorNow("ERR Protocol version is not an integer or out of range");
        }
        if (n != 2 && n != 3) return ReplyErrorNow(errors::kNoProto);
        // RESP3 needs Redis 6 or later behind the proxy (its connections speak it too).
        if (ver == "3" && !version.empty() && version[0] >= '1' && version[0] <= '5' &&
            version[1] == '.') {
          return ReplyErrorNow(errors::kNoProto);
        }
        proto = ver == "3" ? 3 : 2;
        i = 2;
      }
      std::string setname;
      bool has_setname = false;
      std::string_view auth_user, auth_pass;
      bool has_auth = false;
      for (; i < req.argc; ++i) {
        if (EqualsLower(req.arg(i), "auth") && i + 2 < req.argc && cfg.auth_passthrough) {
          // Checked by Redis below, once the options are known to be valid.
          auth_user = req.arg(i + 1);
          auth_pass = req.arg(i + 2);
          has_auth = true;
          i += 2;
        } else if (EqualsLower(req.arg(i), "auth") && i + 2 < req.argc) {
          std::string_view user = req.arg(i + 1), pass = req.arg(i + 2);
          bool ok = cfg.requirepass.empty()
                        ? EqualsLower(user, "default")
                        : (EqualsLower(user, "default") && SecretEquals(pass, cfg.requirepass));
          if (!ok) return ReplyErrorNow(errors::kWrongPass);
          authenticated_ = true;
          i += 2;
        } else if (EqualsLower(req.arg(i), "setname") && i + 1 < req.argc) {
          setname = req.arg(i + 1);
          if (!ValidClientName(setname)) return ReplyErrorNow(errors::kBadClientName);
          has_setname = true;
          i += 1;
        } else {
          return ReplyErrorNow("ERR Syntax error in HELLO option '" + std::string(req.arg(i)) +
                               "'");
        }
      }
      if (has_auth) {
        // The HELLO is answered once Redis has accepted the password.
        pin().hello_pending = {proto, has_setname, setname};
        return StartPassthroughAuth(auth_user, auth_pass);
      }
      if (!authenticated_) {
        return ReplyErrorNow(
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the "
            "HELLO AUTH <user> <pass> option can be used to authenticate the client and select "
            "the RESP protocol version at the same time");
      }
      if (has_setname) name_ = setname;
      AppendHello(b, proto);
      break;
    }
    case LocalCommand::kSelect: {
      if (req.argc != 2) return wrong_args("select");
      // Redis's own checks, in its order and words.
      int64_t n = 0;
      if (!ParseRedisInteger(req.arg(1), &n)) {
        return ReplyErrorNow("ERR value is not an integer or out of range");
      }
      if (n < INT32_MIN || n > INT32_MAX) {
        return ReplyErrorNow(
            "ERR value is out of range, value must between -2147483648 and 2147483647");
      }
      if (worker_->topology().cluster() && n != 0) {
        // A Redis Cluster has database 0 only; the nodes answer exactly this.
        return ReplyErrorNow("ERR SELECT is not allowed in cluster mode");
      }
      const Backend* primary = worker_->backends().primary();
      int64_t databases = primary != nullptr ? primary->databases() : 16;
      if (n < 0 || n >= databases) return ReplyErrorNow("ERR DB index is out of range");
      // Only the class changes: reads still go to replicas (in that database), on
      // connections shared with every other client of the same database.
      cls_.db = static_cast<uint32_t>(n);
      resp::AppendSimple(b, "OK");
      break;
    }
    case LocalCommand::kClientSetName: {
      std::string_view n = req.arg(2);
      if (!ValidClientName(n)) return ReplyErrorNow(errors::kBadClientName);
      name_ = n;
      resp::AppendSimple(b, "OK");
      break;
    }
    case LocalCommand::kClientGetName:
      if (name_.empty()) {
        resp::AppendNull(b, cls_.proto);
      } else {
        resp::AppendBulk(b, name_);
      }
      break;
    case LocalCommand::kProxy:
      if (req.argc == 2 && EqualsLower(req.arg(1), "info") && worker_->info() != nullptr) {
        resp::AppendVerbatim(b, worker_->info()->Text(), cls_.proto);
      } else if (req.argc == 2 && EqualsLower(req.arg(1), "help")) {
        constexpr const char* kInfoLine =
            "    The proxy's own view: version, uptime, configuration, nodes with role and "
            "state, clients, counters.";
        const char* lines[] = {"PROXY <subcommand>. Subcommands are:", "INFO", kInfoLine, "HELP",
                               "    Print this help."};
        resp::AppendArrayHeader(b, std::size(lines));
        for (const char* l : lines) resp::AppendSimple(b, l);
      } else if (req.argc < 2) {
        return wrong_args("proxy");
      } else {
        return ReplyErrorNow("ERR unknown subcommand '" + std::string(req.arg(1)) +
                             "'. Try PROXY HELP.");
      }
      break;
    case LocalCommand::kClientId:
      resp::AppendInteger(b, static_cast<int64_t>(id_));
      break;
    case LocalCommand::kClientInfo:
      resp::AppendVerbatim(b, DescribeSelf("client|info"), cls_.proto);
      break;
    case LocalCommand::kClientList: {
      // Only this client is listed: the proxy's other clients are not its business, and the
      // server's list would show the proxy's shared connections.
      bool match = true;
      for (size_t i = 2; i < req.argc; ++i) {
        std::string_view opt = req.arg(i);
        if (EqualsLower(opt, "type") && i + 1 < req.argc) {
          std::string_view t = req.arg(++i);
          if (!EqualsLower(t, "normal") && !EqualsLower(t, "master") &&
              !EqualsLower(t, "replica") && !EqualsLower(t, "slave") && !EqualsLower(t, "pubsub")) {
            return ReplyErrorNow("ERR Unknown client type '" + std::string(t) + "'");
          }
          match = match && EqualsLower(t, "normal");
        } else if (EqualsLower(opt, "id") && i + 1 < req.argc) {
          bool listed = false;
          for (++i; i < req.argc; ++i) {
            std::string_view v = req.arg(i);
            bool digits = !v.empty() && v.size() < 20;
            for (char ch : v) digits = digits && ch >= '0' && ch <= '9';
            if (!digits) return ReplyErrorNow("ERR Invalid client ID");
            listed = listed || std::stoull(std::string(v)) == id_;
          }
          match = match && listed;
        } else {
          return ReplyErrorNow("ERR syntax error");
        }
      }
      resp::AppendVerbatim(b, match ? DescribeSelf("client|list") : std::string(), cls_.proto);
      break;
    }
    case LocalCommand::kClientSetInfo: {
      if (req.argc != 4) return wrong_args("client|setinfo");
      std::string_view attr = req.arg(2), value = req.arg(3);
      bool is_name = EqualsLower(attr, "lib-name");
      if (!is_name && !EqualsLower(attr, "lib-ver")) {
        return ReplyErrorNow("ERR Unrecognized option '" + std::string(attr) + "'");
      }
      for (char ch : value) {
        if (ch < '!' || ch > '~') {
          return ReplyErrorNow("ERR " + std::string(is_name ? "lib-name" : "lib-ver") +
                               " cannot contain spaces, newlines or special characters.");
        }
      }
      (is_name ? lib_name_ : lib_ver_) = value;
      resp::AppendSimple(b, "OK");
      break;
    }
    case LocalCommand::kReset:
      if (req.argc != 1) return wrong_args("reset");
      name_.clear();
      cls_ = ConnClass{};  // database 0, RESP2
      authenticated_ = NeedsNoAuth(cfg);
      resp::AppendSimple(b, "RESET");
      break;
    case LocalCommand::kNone:
      return ReplyErrorNow("ERR kompress: internal routing error");
  }
  ReplyNow(b);
}

void ClientSession::AppendHello(Buffer& b, int proto) {
  // From here on this client's replies (relayed and local) are in this protocol: its class's
  // shared connections speak it to Redis.
  cls_.proto = static_cast<uint8_t>(proto);
  const Backend* primary = worker_->backends().primary();
  std::string version = primary != nullptr ? primary->server_version() : std::string();
  resp::AppendMapHeader(b, 7, proto);
  resp::AppendBulk(b, "server");
  resp::AppendBulk(b, "redis");
  resp::AppendBulk(b, "version");
  // The primary's own version (known from its first health check).
  resp::AppendBulk(b, version.empty() ? std::string_view("7.0.0") : std::string_view(version));
  resp::AppendBulk(b, "proto");
  resp::AppendInteger(b, proto);
  resp::AppendBulk(b, "id");
  resp::AppendInteger(b, static_cast<int64_t>(id_));
  resp::AppendBulk(b, "mode");
  resp::AppendBulk(b, "standalone");
  resp::AppendBulk(b, "role");
  resp::AppendBulk(b, "master");
  resp::AppendBulk(b, "modules");
  resp::AppendArrayHeader(b, 0);
}

void ClientSession::StartPassthroughAuth(std::string_view user, std::string_view password,
                                         bool password_only) {
  // Redis checks the password: the AUTH goes to the primary on a connection of the class
  // this user's commands will use (opened authenticated as the user, or already so; a
  // repeated AUTH as the same user leaves the connection's user as it was either way). The
  // client's next commands wait for the answer, since it decides where they go.
  uint32_t id = worker_->credentials().Intern(user, password);
  if (id == 0) {
    if (pin_) pin_->hello_pending.reset();
    return ReplyErrorNow(
        "ERR kompress: too many distinct ACL users authenticated through the proxy");
  }
  Backend* primary = worker_->backends().primary();
  if (primary == nullptr || !primary->serves_writes()) {
    if (pin_) pin_->hello_pending.reset();
    worker_->stats().errors++;
    return ReplyErrorNow(PrimaryUnavailable(primary));
  }
  ConnClass as_user = cls_;
  as_user.user = id;
  if (pin_ && pin_->hello_pending) as_user.proto = static_cast<uint8_t>(pin_->hello_pending->proto);
  uint64_t seq = NewSlot();
  SlotAt(seq).auth_user = id;
  scratch_.Clear();
  if (password_only) {
    std::string_view args[] = {"AUTH", password};
    resp::AppendCommand(scratch_, args);
  } else {
    std::string_view args[] = {"AUTH", user, password};
    resp::AppendCommand(scratch_, args);
  }
  worker_->PrimaryConnFor(primary, id_, as_user)
      ->Send(this, seq, scratch_.data(), scratch_.size(), worker_->now() + worker_->timeout_ms());
  ++inflight_;
  auth_pending_ = true;
  PauseReading();
}

void ClientSession::FinishPassthroughAuth(uint64_t seq, std::string_view error) {
  Slot& s = SlotAt(seq);
  uint32_t id = s.auth_user;
  s.auth_user = 0;
  auth_pending_ = false;
  std::optional<PendingHello> hello;
  if (pin_) hello = std::exchange(pin_->hello_pending, std::nullopt);
  if (error.empty() && !worker_->credentials().Verify(id)) {
    // Forgotten while Redis was asked (a flood of other candidates): connections of this
    // class could not authenticate as the user, so the client must try again.
    error = "ERR kompress: too many authentications at once; try AUTH again";
  }
  if (error.empty()) {
    cls_.user = id;
    authenticated_ = true;
    scratch_.Clear();
    if (hello) {
      if (hello->has_setname) name_ = hello->setname;
      AppendHello(scratch_, hello->proto);
    } else {
      resp::AppendSimple(scratch_, "OK");
    }
    Complete(seq, scratch_.data(), scratch_.size());
  } else {
    // Redis's own words (WRONGPASS...), the client's class unchanged.
    CompleteError(seq, error);
  }
  ResumeReading();
  if (!in_.empty()) ProcessInput();
}

std::string ClientSession::DescribeSelf(std::string_view cmd) const {
  // CLIENT INFO's fields as Redis 7 prints them; where a field is about the server's own
  // buffers the proxy gives its own numbers for this client.
  auto addr = [&](bool peer) {
    sockaddr_storage ss{};
    int len = sizeof ss;
    auto* sa = reinterpret_cast<sockaddr*>(&ss);
    int rc = peer ? uv_tcp_getpeername(&tcp_, sa, &len) : uv_tcp_getsockname(&tcp_, sa, &len);
    if (rc != 0) return std::string("?:0");
    char host[INET6_ADDRSTRLEN] = {0};
    int port = 0;
    if (ss.ss_family == AF_INET6) {
      auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
      uv_ip6_name(a, host, sizeof host);
      port = ntohs(a->sin6_port);
    } else {
      auto* a = reinterpret_cast<sockaddr_in*>(&ss);
      uv_ip4_name(a, host, sizeof host);
      port = ntohs(a->sin_port);
    }
    return std::string(host) + ":" + std::to_string(port);
  };
  uint64_t now = worker_->now();
  uv_os_fd_t fd = -1;
  uv_fileno(reinterpret_cast<const uv_handle_t*>(&tcp_), &fd);
  std::string flags = dedicated_ != nullptr && in_multi_ ? "x" : "N";
  char line[1024];
  std::snprintf(line, sizeof line,
                "id=%llu addr=%s laddr=%s fd=%d name=%s age=%llu idle=%llu flags=%s db=%u sub=0 "
                "psub=0 ssub=0 multi=%d qbuf=%zu qbuf-free=0 argv-mem=0 multi-mem=0 rbs=%zu "
                "rbp=0 obl=0 oll=0 omem=%zu tot-mem=%zu events=r cmd=%.*s user=default redir=-1 "
                "resp=%d lib-name=%s lib-ver=%s\n",
                static_cast<unsigned long long>(id_), addr(true).c_str(), addr(false).c_str(),
                static_cast<int>(fd), name_.c_str(),
                static_cast<unsigned long long>((now - created_ms_) / 1000),
                static_cast<unsigned long long>((now - last_request_ms_) / 1000), flags.c_str(),
                cls_.db, in_multi_ ? 0 : -1, in_.size(), in_.capacity(), out_.size() + held_bytes_,
                in_.capacity() + out_.capacity() + wbuf_.capacity() + held_bytes_,
                static_cast<int>(cmd.size()), cmd.data(), static_cast<int>(cls_.proto),
                lib_name_.c_str(), lib_ver_.c_str());
  return line;
}

}  // namespace kp
