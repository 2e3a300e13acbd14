// Unit tests for proxy/slot_map: CLUSTER SLOTS replies, as Redis 7 sends them, into shards.
#include <doctest/doctest.h>
#include <hiredis/hiredis.h>

#include <string>

#include "proxy/slot_map.h"

namespace kp {
namespace {

// Parses one RESP reply with hiredis's reader, as ControlConn hands replies over.
struct Reply {
  explicit Reply(const std::string& resp) {
    redisReader* r = redisReaderCreate();
    redisReaderFeed(r, resp.data(), resp.size());
    void* out = nullptr;
    REQUIRE(redisReaderGetReply(r, &out) == REDIS_OK);
    reply = static_cast<redisReply*>(out);
    redisReaderFree(r);
  }
  ~Reply() { freeReplyObject(reply); }
  redisReply* reply = nullptr;
};

std::string Node(const std::string& ip, int port, const std::string& id) {
  return "*3\r\n$" + std::to_string(ip.size()) + "\r\n" + ip + "\r\n:" + std::to_string(port) +
         "\r\n$" + std::to_string(id.size()) + "\r\n" + id + "\r\n";
}

TEST_CASE("slot map: three shards with replicas, one primary split over two ranges") {
  std::string resp = "*4\r\n";
  resp += "*4\r\n:0\r\n:5460\r\n" + Node("10.0.0.1", 7000, "a") + Node("10.0.0.4", 7003, "d");
  resp += "*4\r\n:5461\r\n:10922\r\n" + Node("10.0.0.2", 7001, "b") + Node("10.0.0.5", 7004, "e");
  resp += "*3\r\n:10923\r\n:16000\r\n" + Node("10.0.0.3", 7002, "c");
  resp += "*3\r\n:16001\r\n:16383\r\n" + Node("10.0.0.3", 7002, "c");
  Reply r(resp);
  SlotMap m;
  std::string error;
  REQUIRE(m.FromClusterSlots(r.reply, "seed", &error));
  REQUIRE(m.shards().size() == 3);
  CHECK(m.unassigned() == 0);
  CHECK(m.shards()[0].primary == Endpoint{"10.0.0.1", 7000});
  CHECK(m.shards()[0].replicas == std::vector<Endpoint>{{"10.0.0.4", 7003}});
  CHECK(m.shards()[2].replicas.empty());
  CHECK(m.ShardOf(0) == 0);
  CHECK(m.ShardOf(5461) == 1);
  CHECK(m.ShardOf(16383) == 2);
  CHECK(m.ShardOf(12000) == 2);
  CHECK(m.ShardOfKey("foo") == 2);  // slot 12182
  CHECK(m.ShardOfKey("bar") == 0);  // slot 5061
}

TEST_CASE("slot map: a reply captured from a 3-node redis-server 7.0 cluster") {
  // Each node entry carries a fourth element (networking metadata), empty here.
  Reply r(
      "*3\r\n*3\r\n:0\r\n:5460\r\n*4\r\n$9\r\n127.0.0.1\r\n:17911\r\n$"
      "40\r\n4526ec58f2fab0010beb8fd36bb697948e7cf9c8\r\n*0\r\n*3\r\n:5461\r\n:10922\r\n*4\r\n$"
      "9\r\n127.0.0.1\r\n:17912\r\n$40\r\n348b6d9f8db5b369b99d4440e0216182727984c4\r\n*0\r\n*3\r\n:"
      "10923\r\n:16383\r\n*4\r\n$9\r\n127.0.0.1\r\n:17913\r\n$"
      "40\r\nee7f1a6139ad708f7c82b59c30b94a5e2b75b0e8\r\n*0\r\n");
  SlotMap m;
  std::string error;
  REQUIRE(m.FromClusterSlots(r.reply, "seed", &error));
  REQUIRE(m.shards().size() == 3);
  CHECK(m.unassigned() == 0);
  CHECK(m.shards()[0].primary == Endpoint{"127.0.0.1", 17911});
  CHECK(m.shards()[0].primary_id.size() == 40);
  CHECK(m.ShardOf(5460) == 0);
  CHECK(m.ShardOf(5461) == 1);
  CHECK(m.ShardOf(16383) == 2);
}

TEST_CASE("slot map: uncovered slots and malformed replies") {
  Reply part("*1\r\n*3\r\n:0\r\n:99\r\n" + Node("h", 1, "x"));
  SlotMap m;
  std::string error;
  REQUIRE(m.FromClusterSlots(part.reply, "seed", &error));
  CHECK(m.unassigned() == kClusterSlots - 100);
  CHECK(m.ShardOf(100) == SlotMap::kUnassigned);

  Reply bad_range("*1\r\n*3\r\n:10\r\n:5\r\n" + Node("h", 1, "x"));
  CHECK_FALSE(m.FromClusterSlots(bad_range.reply, "seed", &error));
  CHECK(error.find("bad range") != std::string::npos);
  CHECK(m.shards().size() == 1);  // unchanged
  Reply not_array("+OK\r\n");
  CHECK_FALSE(m.FromClusterSlots(not_array.reply, "seed", &error));
}

TEST_CASE("slot map: a node without an address in the map is the node that was asked") {
  // Captured from a one-node redis-server 7.0 cluster: a node never told its IP by another
  // says "" of itself, in both replies.
  Reply slots(
      "*1\r\n*3\r\n:0\r\n:16383\r\n*4\r\n$0\r\n\r\n:17611\r\n$40\r\n0953c010d73fb2af8a4f7796a4"
      "ebb33eaa7d3ca2\r\n*0\r\n");
  Reply shards(
      "*1\r\n*4\r\n$5\r\nslots\r\n*2\r\n:0\r\n:16383\r\n$5\r\nnodes\r\n*1\r\n*14\r\n$2\r\nid"
      "\r\n$40\r\n0953c010d73fb2af8a4f7796a4ebb33eaa7d3ca2\r\n$4\r\nport\r\n:17611\r\n$2\r\nip"
      "\r\n$0\r\n\r\n$8\r\nendpoint\r\n$0\r\n\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$18\r\nrepli"
      "cation-offset\r\n:0\r\n$6\r\nhealth\r\n$6\r\nonline\r\n");
  std::string error;
  SlotMap a, b;
  REQUIRE(a.FromClusterSlots(slots.reply, "10.1.2.3", &error));
  REQUIRE(b.FromClusterShards(shards.reply, false, "10.1.2.3", &error));
  for (const SlotMap* m : {&a, &b}) {
    REQUIRE(m->shards().size() == 1);
    CHECK(m->shards()[0].primary == Endpoint{"10.1.2.3", 17611});
    CHECK(m->unassigned() == 0);
  }
  // A null (cluster-preferred-endpoint-type unknown-endpoint) is the node asked too; "?" is
  // an unknown node, not usable: a replica so named is left out.
  Reply unknown("*2\r\n*4\r\n:0\r\n:99\r\n" + Node("10.0.0.8", 7000, "a") + Node("?", 7001, "b") +
                "*3\r\n:100\r\n:199\r\n*3\r\n$-1\r\n:7002\r\n$1\r\nc\r\n");
  SlotMap c;
  REQUIRE(c.FromClusterSlots(unknown.reply, "seed.example", &error));
  REQUIRE(c.shards().size() == 2);
  CHECK(c.shards()[0].primary == Endpoint{"10.0.0.8", 7000});
  CHECK(c.shards()[0].replicas.empty());
  CHECK(c.shards()[1].primary == Endpoint{"seed.example", 7002});
}

}  // namespace
}  // namespace kp

namespace kp {
namespace {

std::string Bulk(const std::string& s) {
  return "$" + std::to_string(s.size()) + "\r\n" + s + "\r\n";
}

// One node of a CLUSTER SHARDS entry, as Redis 7.0 sends it (RESP2: names and values).
std::string ShardNode(const std::string& id, int port, const std::string& role,
                      const std::string& health, int tls_port = 0) {
  std::string fields = Bulk("id") + Bulk(id) + Bulk("port") + ":" + std::to_string(port) + "\r\n";
  int n = 14;
  if (tls_port != 0) {
    fields += Bulk("tls-port") + ":" + std::to_string(tls_port) + "\r\n";
    n += 2;
  }
  fields += Bulk("ip") + Bulk("127.0.0.1") + Bulk("endpoint") + Bulk("127.0.0.1") + Bulk("role") +
            Bulk(role) + Bulk("replication-offset") + ":100\r\n" + Bulk("health") + Bulk(health);
  return "*" + std::to_string(n) + "\r\n" + fields;
}

std::string ShardEntry(const std::vector<int>& ranges, const std::vector<std::string>& nodes) {
  std::string s = "*4\r\n" + Bulk("slots") + "*" + std::to_string(ranges.size()) + "\r\n";
  for (int r : ranges) s += ":" + std::to_string(r) + "\r\n";
  s += Bulk("nodes") + "*" + std::to_string(nodes.size()) + "\r\n";
  for (const std::string& n : nodes) s += n;
  return s;
}

TEST_CASE("slot map: CLUSTER SHARDS captured from a redis-server 7.0 cluster after a reshard") {
  Reply r(
      "*3\r\n*4\r\n$5\r\nslots\r\n*2\r\n:3000\r\n:5460\r\n$5\r\nnodes\r\n*2\r\n*14\r\n$2\r\nid\r\n$"
      "40\r\n6d12b709770a5561e42f71e0ac1f264ec15d6264\r\n$4\r\nport\r\n:13762\r\n$2\r\nip\r\n$9\r\n"
      "127.0.0.1\r\n$8\r\nendpoint\r\n$9\r\n127.0.0.1\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$18\r\nrepl"
      "ication-offset\r\n:927828\r\n$6\r\nhealth\r\n$6\r\nonline\r\n*14\r\n$2\r\nid\r\n$40\r\nfa76"
      "eed129ef0b389242cc275194252720d15c02\r\n$4\r\nport\r\n:12036\r\n$2\r\nip\r\n$9\r\n127.0.0."
      "1\r\n$8\r\nendpoint\r\n$9\r\n127.0.0.1\r\n$4\r\nrole\r\n$7\r\nreplica\r\n$18\r\nreplicatio"
      "n-offset\r\n:927828\r\n$6\r\nhealth\r\n$6\r\nonline\r\n*4\r\n$5\r\nslots\r\n*4\r\n:5461\r\n"
      ":9460\r\n:14923\r\n:16383\r\n$5\r\nnodes\r\n*2\r\n*14\r\n$2\r\nid\r\n$40\r\n855f9c5304ed7c"
      "e76bb56ddae581891ea3fc3e32\r\n$4\r\nport\r\n:18711\r\n$2\r\nip\r\n$9\r\n127.0.0.1\r\n$8\r\n"
      "endpoint\r\n$9\r\n127.0.0.1\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$18\r\nreplication-offset\r\n:"
      "1111104\r\n$6\r\nhealth\r\n$6\r\nonline\r\n*14\r\n$2\r\nid\r\n$40\r\n16dcfe7e2d067f34ed7e8"
      "5c0aaa201c54eea0db9\r\n$4\r\nport\r\n:20425\r\n$2\r\nip\r\n$9\r\n127.0.0.1\r\n$8\r\nendpoi"
      "nt\r\n$9\r\n127.0.0.1\r\n$4\r\nrole\r\n$7\r\nreplica\r\n$18\r\nreplication-offset\r\n:11111"
      "04\r\n$6\r\nhealth\r\n$6\r\nonline\r\n*4\r\n$5\r\nslots\r\n*4\r\n:0\r\n:2999\r\n:9461\r\n:"
      "14922\r\n$5\r\nnodes\r\n*2\r\n*14\r\n$2\r\nid\r\n$40\r\na040d7281bc39eaf59a2a436e446a116bf"
      "bd4e24\r\n$4\r\nport\r\n:11037\r\n$2\r\nip\r\n$9\r\n127.0.0.1\r\n$8\r\nendpoint\r\n$9\r\n1"
      "27.0.0.1\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$18\r\nreplication-offset\r\n:926156\r\n$6\r\nhe"
      "alth\r\n$6\r\nonline\r\n*14\r\n$2\r\nid\r\n$40\r\naf58cde1241fbe1159c729ccc3234fddba2e1c1d"
      "\r\n$4\r\nport\r\n:13436\r\n$2\r\nip\r\n$9\r\n127.0.0.1\r\n$8\r\nendpoint\r\n$9\r\n127.0.0"
      ".1\r\n$4\r\nrole\r\n$7\r\nreplica\r\n$18\r\nreplication-offset\r\n:926156\r\n$6\r\nhealth\r"
      "\n$6\r\nonline\r\n");
  SlotMap m;
  std::string error;
  REQUIRE(m.FromClusterShards(r.reply, false, "seed", &error));
  REQUIRE(m.shards().size() == 3);
  CHECK(m.unassigned() == 0);
  CHECK(m.shards()[0].primary == Endpoint{"127.0.0.1", 13762});
  CHECK(m.shards()[0].primary_id == "6d12b709770a5561e42f71e0ac1f264ec15d6264");
  CHECK(m.shards()[0].replicas == std::vector<Endpoint>{{"127.0.0.1", 12036}});
  CHECK(m.shards()[0].slots == 2461);
  CHECK(m.shards()[1].slots == 4000 + 1461);
  CHECK(m.shards()[2].slots == 3000 + 5462);
  CHECK(m.ShardOf(2999) == 2);
  CHECK(m.ShardOf(3000) == 0);
  CHECK(m.ShardOf(9460) == 1);
  CHECK(m.ShardOf(9461) == 2);
  CHECK(m.ShardOf(16383) == 1);
}

TEST_CASE("slot map: CLUSTER SHARDS health, slotless shards and TLS ports") {
  std::string resp = "*4\r\n";
  // A shard with a failed replica and one still loading: neither serves.
  resp += ShardEntry(
      {0, 8191},
      {ShardNode("a", 7000, "master", "online"), ShardNode("b", 7001, "replica", "failed"),
       ShardNode("c", 7002, "replica", "loading"), ShardNode("d", 7003, "replica", "online")});
  resp += ShardEntry({8192, 16383}, {ShardNode("e", 7004, "master", "online", 8004)});
  // What a failover leaves: the old primary, failed, without slots. Not a shard.
  resp += ShardEntry({}, {ShardNode("f", 7005, "master", "failed")});
  // A new node with no slots yet: known (an ASK may name it), serving nothing.
  resp += ShardEntry({}, {ShardNode("g", 7006, "master", "online")});
  Reply r(resp);
  SlotMap m;
  std::string error;
  REQUIRE(m.FromClusterShards(r.reply, false, "seed", &error));
  REQUIRE(m.shards().size() == 3);
  CHECK(m.shards()[0].replicas == std::vector<Endpoint>{{"127.0.0.1", 7003}});
  CHECK(m.shards()[1].primary == Endpoint{"127.0.0.1", 7004});
  CHECK(m.shards()[2].primary == Endpoint{"127.0.0.1", 7006});
  CHECK(m.shards()[2].slots == 0);
  CHECK(m.unassigned() == 0);

  SlotMap tls;
  REQUIRE(tls.FromClusterShards(r.reply, true, "seed", &error));
  CHECK(tls.shards()[1].primary == Endpoint{"127.0.0.1", 8004});
  CHECK(tls.shards()[0].primary == Endpoint{"127.0.0.1", 7000});  // no tls-port given

  Reply bad("*1\r\n*2\r\n$5\r\nslots\r\n*1\r\n:0\r\n");
  SlotMap unchanged;
  CHECK_FALSE(unchanged.FromClusterShards(bad.reply, false, "seed", &error));
  CHECK(error.find("CLUSTER SHARDS") != std::string::npos);
  CHECK(unchanged.unassigned() == kClusterSlots);
}

}  // namespace
}  // namespace kp
