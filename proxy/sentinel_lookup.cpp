// LookupSentinelMaster: SENTINEL get-master-addr-by-name over a SyncConn (TLS when
// backend_tls), each Sentinel within the timeout.
#include "proxy/sentinel_lookup.h"

#include <hiredis/hiredis.h>

#include <chrono>
#include <cstdlib>

#include "common/resp_writer.h"
#include "proxy/sync_conn.h"

namespace kp {

namespace {
// ["host", "port"], as the Sentinel answers, or nullopt.
std::optional<Endpoint> ParseMasterAddr(const std::string& reply) {
  redisReader* reader = redisReaderCreate();
  void* r = nullptr;
  std::optional<Endpoint> found;
  if (redisReaderFeed(reader, reply.data(), reply.size()) == REDIS_OK &&
      redisReaderGetReply(reader, &r) == REDIS_OK && r != nullptr) {
    auto* a = static_cast<redisReply*>(r);
    if (a->type == REDIS_REPLY_ARRAY && a->elements == 2 &&
        a->element[0]->type == REDIS_REPLY_STRING && a->element[1]->type == REDIS_REPLY_STRING) {
      int port = std::atoi(a->element[1]->str);
      if (port > 0 && port < 65536)
        found = Endpoint{a->element[0]->str, static_cast<uint16_t>(port)};
    }
    freeReplyObject(r);
  }
  redisReaderFree(reader);
  return found;
}
}  // namespace

std::optional<Endpoint> LookupSentinelMaster(const Config& config,
                                             std::shared_ptr<const TlsContext> tls,
                                             std::string* error) {
  for (const Endpoint& ep : config.sentinels) {
    auto deadline =
        SyncConn::Clock::now() +
        std::chrono::milliseconds(static_cast<int64_t>(config.timeout_s * 1000.0 + 0.5));
    SyncConn conn(deadline, config.resp.ForReplies());
    if (!conn.Connect(ep, tls, config.backend_tls_server_name)) {
      *error = ep.ToString() + ": " + conn.error();
      continue;
    }
    Buffer req;
    bool auth = !config.sentinel_password.empty();
    if (auth) resp::AppendAuth(req, config.sentinel_username, config.sentinel_password);
    std::string_view args[] = {"SENTINEL", "get-master-addr-by-name", config.sentinel_master};
    resp::AppendCommand(req, args);
    std::string reply;
    if (!conn.Send(req)) {
      *error = ep.ToString() + ": " + conn.error();
      continue;
    }
    if (auth) {
      if (!conn.ReadReply(&reply)) {
        *error = ep.ToString() + ": " + conn.error();
        continue;
      }
      if (!reply.empty() && reply[0] == '-') {
        *error = ep.ToString() + ": AUTH rejected";
        continue;
      }
    }
    if (!conn.ReadReply(&reply)) {
      *error = ep.ToString() + ": " + conn.error();
      continue;
    }
    if (auto found = ParseMasterAddr(reply)) return found;
    *error = ep.ToString() + ": does not know master " + config.sentinel_master;
  }
  return std::nullopt;
}

}  // namespace kp
