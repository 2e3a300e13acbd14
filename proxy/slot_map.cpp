// SlotMap: parsing CLUSTER SLOTS.
#include "proxy/slot_map.h"

#include <hiredis/hiredis.h>

#include <algorithm>

namespace kp {

namespace {
// [ip, port, id, ...] of one node; an empty ip means "the address you asked" (Redis 7 with
// cluster-announce-hostname unset may send "" or "?" for it): not usable here.
bool ParseNode(const redisReply* n, Endpoint* ep, std::string* id) {
  if (n->type != REDIS_REPLY_ARRAY || n->elements < 2) return false;
  const redisReply* ip = n->element[0];
  const redisReply* port = n->element[1];
  if (ip->type != REDIS_REPLY_STRING || port->type != REDIS_REPLY_INTEGER) return false;
  if (port->integer <= 0 || port->integer > 65535 || ip->len == 0) return false;
  ep->host.assign(ip->str, ip->len);
  ep->port = static_cast<uint16_t>(port->integer);
  if (n->elements >= 3 && n->element[2]->type == REDIS_REPLY_STRING) {
    id->assign(n->element[2]->str, n->element[2]->len);
  }
  return true;
}
}  // namespace

bool SlotMap::FromClusterSlots(const redisReply* reply, std::string* error) {
  if (reply == nullptr || reply->type != REDIS_REPLY_ARRAY) {
    *error = "CLUSTER SLOTS: not an array";
    return false;
  }
  std::array<uint16_t, kClusterSlots> slots = MakeUnassigned();
  std::vector<ClusterShard> shards;
  for (size_t i = 0; i < reply->elements; ++i) {
    const redisReply* r = reply->element[i];
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 3 ||
        r->element[0]->type != REDIS_REPLY_INTEGER || r->element[1]->type != REDIS_REPLY_INTEGER) {
      *error = "CLUSTER SLOTS: entry " + std::to_string(i) + " is not [start, end, node...]";
      return false;
    }
    long long start = r->element[0]->integer, end = r->element[1]->integer;
    if (start < 0 || end < start || end >= kClusterSlots) {
      *error = "CLUSTER SLOTS: bad range " + std::to_string(start) + "-" + std::to_string(end);
      return false;
    }
    ClusterShard shard;
    if (!ParseNode(r->element[2], &shard.primary, &shard.primary_id)) {
      *error = "CLUSTER SLOTS: entry " + std::to_string(i) + " has no usable primary";
      return false;
    }
    for (size_t k = 3; k < r->elements; ++k) {
      Endpoint ep;
      std::string id;
      if (ParseNode(r->element[k], &ep, &id)) shard.replicas.push_back(ep);
    }
    auto same = [&](const ClusterShard& s) { return s.primary == shard.primary; };
    auto it = std::find_if(shards.begin(), shards.end(), same);
    if (it == shards.end()) {
      shards.push_back(std::move(shard));
      it = shards.end() - 1;
    }
    auto index = static_cast<uint16_t>(it - shards.begin());
    for (long long s = start; s <= end; ++s) slots[static_cast<size_t>(s)] = index;
  }
  slots_ = slots;
  shards_ = std::move(shards);
  return true;
}

size_t SlotMap::unassigned() const {
  return static_cast<size_t>(std::count(slots_.begin(), slots_.end(), kUnassigned));
}

}  // namespace kp
