// LookupSentinelMaster: hiredis's blocking client, bounded by the timeout per Sentinel.
#include "proxy/sentinel_lookup.h"

#include <hiredis/hiredis.h>

#include <cstdlib>

namespace kp {

std::optional<Endpoint> LookupSentinelMaster(const Config& config, std::string* error) {
  timeval tv;
  tv.tv_sec = static_cast<time_t>(config.timeout_s);
  tv.tv_usec = static_cast<suseconds_t>((config.timeout_s - static_cast<double>(tv.tv_sec)) * 1e6);
  for (const Endpoint& ep : config.sentinels) {
    std::string host = ep.host;
    if (host.size() > 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
    redisContext* c = redisConnectWithTimeout(host.c_str(), ep.port, tv);
    if (c == nullptr || c->err) {
      *error = ep.ToString() + ": " + (c != nullptr ? c->errstr : "out of memory");
      if (c != nullptr) redisFree(c);
      continue;
    }
    redisSetTimeout(c, tv);
    bool ok = true;
    if (!config.sentinel_password.empty()) {
      auto* r = static_cast<redisReply*>(
          config.sentinel_username.empty()
              ? redisCommand(c, "AUTH %b", config.sentinel_password.data(),
                             config.sentinel_password.size())
              : redisCommand(c, "AUTH %b %b", config.sentinel_username.data(),
                             config.sentinel_username.size(), config.sentinel_password.data(),
                             config.sentinel_password.size()));
      ok = r != nullptr && r->type != REDIS_REPLY_ERROR;
      if (!ok) *error = ep.ToString() + ": AUTH rejected";
      if (r != nullptr) freeReplyObject(r);
    }
    std::optional<Endpoint> found;
    if (ok) {
      auto* r = static_cast<redisReply*>(
          redisCommand(c, "SENTINEL get-master-addr-by-name %s", config.sentinel_master.c_str()));
      if (r != nullptr && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
          r->element[0]->type == REDIS_REPLY_STRING && r->element[1]->type == REDIS_REPLY_STRING) {
        int port = std::atoi(r->element[1]->str);
        if (port > 0 && port < 65536) {
          found = Endpoint{r->element[0]->str, static_cast<uint16_t>(port)};
        }
      }
      if (!found) {
        *error = ep.ToString() + ": " +
                 (r == nullptr ? std::string(c->errstr)
                               : "does not know master " + config.sentinel_master);
      }
      if (r != nullptr) freeReplyObject(r);
    }
    redisFree(c);
    if (found) return found;
  }
  return std::nullopt;
}

}  // namespace kp
