// SlotMap: parsing CLUSTER SHARDS and CLUSTER SLOTS.
#include "proxy/slot_map.h"

#include <hiredis/hiredis.h>

#include <algorithm>

#include "proxy/hiredis_reply.h"

namespace kp {

namespace {
// A node's address as the map gives it, or the host of the node that was asked: "" is what
// a node says of itself before another node has told it its IP (always, in a cluster of one
// node), and a null the endpoint of the node asked (cluster-preferred-endpoint-type
// unknown-endpoint); clients then use the address they asked. "?" is a node whose endpoint
// is unknown, not necessarily the one asked: not usable.
std::string_view HostOrAsked(std::string_view host, std::string_view asked) {
  if (host == "?") return {};
  return host.empty() ? asked : host;
}

// [ip, port, id, ...] of one node.
bool ParseNode(const redisReply* n, std::string_view asked, Endpoint* ep, std::string* id) {
  if (n->type != REDIS_REPLY_ARRAY || n->elements < 2) return false;
  const redisReply* ip = n->element[0];
  const redisReply* port = n->element[1];
  if ((ip->type != REDIS_REPLY_STRING && ip->type != REDIS_REPLY_NIL) ||
      port->type != REDIS_REPLY_INTEGER) {
    return false;
  }
  std::string_view host =
      HostOrAsked(ip->type == REDIS_REPLY_STRING ? std::string_view(ip->str, ip->len) : "", asked);
  if (port->integer <= 0 || port->integer > 65535 || host.empty()) return false;
  ep->host.assign(host);
  ep->port = static_cast<uint16_t>(port->integer);
  if (n->elements >= 3 && n->element[2]->type == REDIS_REPLY_STRING) {
    id->assign(n->element[2]->str, n->element[2]->len);
  }
  return true;
}
}  // namespace

bool SlotMap::FromClusterSlots(const redisReply* reply, std::string_view asked,
                               std::string* error) {
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
    if (!ParseNode(r->element[2], asked, &shard.primary, &shard.primary_id)) {
      *error = "CLUSTER SLOTS: entry " + std::to_string(i) + " has no usable primary";
      return false;
    }
    for (size_t k = 3; k < r->elements; ++k) {
      Endpoint ep;
      std::string id;
      if (ParseNode(r->element[k], asked, &ep, &id)) shard.replicas.push_back(ep);
    }
    auto same = [&](const ClusterShard& s) { return s.primary == shard.primary; };
    auto it = std::find_if(shards.begin(), shards.end(), same);
    if (it == shards.end()) {
      shards.push_back(std::move(shard));
      it = shards.end() - 1;
    }
    auto index = static_cast<uint16_t>(it - shards.begin());
    for (long long s = start; s <= end; ++s) slots[static_cast<size_t>(s)] = index;
    it->slots += static_cast<size_t>(end - start + 1);
  }
  slots_ = slots;
  shards_ = std::move(shards);
  return true;
}

namespace {
// CLUSTER SHARDS entries are maps, in RESP2 (the control connections' protocol) an array of
// alternating names and values. The value named `key`, or nullptr.
const redisReply* Field(const redisReply* m, std::string_view key) {
  if (m == nullptr || m->type != REDIS_REPLY_ARRAY) return nullptr;
  for (size_t i = 0; i + 1 < m->elements; i += 2) {
    const redisReply* k = m->element[i];
    if ((k->type == REDIS_REPLY_STRING || k->type == REDIS_REPLY_STATUS) &&
        std::string_view(k->str, k->len) == key) {
      return m->element[i + 1];
    }
  }
  return nullptr;
}
}  // namespace

bool SlotMap::FromClusterShards(const redisReply* reply, bool tls, std::string_view asked,
                                std::string* error) {
  if (reply == nullptr || reply->type != REDIS_REPLY_ARRAY) {
    *error = "CLUSTER SHARDS: not an array";
    return false;
  }
  std::array<uint16_t, kClusterSlots> slots = MakeUnassigned();
  std::vector<ClusterShard> shards;
  for (size_t i = 0; i < reply->elements; ++i) {
    const redisReply* sh = reply->element[i];
    const redisReply* ranges = Field(sh, "slots");
    const redisReply* nodes = Field(sh, "nodes");
    if (ranges == nullptr || ranges->type != REDIS_REPLY_ARRAY || ranges->elements % 2 != 0 ||
        nodes == nullptr || nodes->type != REDIS_REPLY_ARRAY) {
      *error = "CLUSTER SHARDS: entry " + std::to_string(i) + " has no slots and nodes";
      return false;
    }
    ClusterShard shard;
    bool have_primary = false;
    for (size_t k = 0; k < nodes->elements; ++k) {
      const redisReply* n = nodes->element[k];
      std::string_view host = ReplyString(Field(n, "endpoint"));
      if (host.empty() || host == "?") host = HostOrAsked(ReplyString(Field(n, "ip")), asked);
      const redisReply* port = tls ? Field(n, "tls-port") : nullptr;
      if (port == nullptr) port = Field(n, "port");
      if (host.empty() || port == nullptr || port->type != REDIS_REPLY_INTEGER ||
          port->integer <= 0 || port->integer > 65535) {
        continue;
      }
      Endpoint ep{std::string(host), static_cast<uint16_t>(port->integer)};
      std::string_view role = ReplyString(Field(n, "role"));
      if (role == "master") {
        // A primary that failed and has no slots left is what remains of a failover.
        if (ranges->elements == 0 && ReplyString(Field(n, "health")) != "online") continue;
        // The shard's primary, whatever its health: its slots are its until the cluster
        // promotes another node.
        shard.primary = ep;
        shard.primary_id = std::string(ReplyString(Field(n, "id")));
        have_primary = true;
      } else if (ReplyString(Field(n, "health")) == "online") {
        // A failed replica or one still loading its data serves nothing.
        shard.replicas.push_back(ep);
      }
    }
    if (!have_primary) continue;  // only replicas left of a shard (all primaries failed)
    auto same = [&](const ClusterShard& s) { return s.primary == shard.primary; };
    auto it = std::find_if(shards.begin(), shards.end(), same);
    if (it == shards.end()) {
      shards.push_back(std::move(shard));
      it = shards.end() - 1;
    }
    auto index = static_cast<uint16_t>(it - shards.begin());
    for (size_t r = 0; r + 1 < ranges->elements; r += 2) {
      const redisReply* a = ranges->element[r];
      const redisReply* b = ranges->element[r + 1];
      if (a->type != REDIS_REPLY_INTEGER || b->type != REDIS_REPLY_INTEGER || a->integer < 0 ||
          b->integer < a->integer || b->integer >= kClusterSlots) {
        *error = "CLUSTER SHARDS: bad slot range in entry " + std::to_string(i);
        return false;
      }
      for (long long s = a->integer; s <= b->integer; ++s) slots[static_cast<size_t>(s)] = index;
      it->slots += static_cast<size_t>(b->integer - a->integer + 1);
    }
  }
  slots_ = slots;
  shards_ = std::move(shards);
  return true;
}

size_t SlotMap::unassigned() const {
  return static_cast<size_t>(std::count(slots_.begin(), slots_.end(), kUnassigned));
}

}  // namespace kp
