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
  REQUIRE(m.FromClusterSlots(r.reply, &error));
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
  REQUIRE(m.FromClusterSlots(r.reply, &error));
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
  REQUIRE(m.FromClusterSlots(part.reply, &error));
  CHECK(m.unassigned() == kClusterSlots - 100);
  CHECK(m.ShardOf(100) == SlotMap::kUnassigned);

  Reply bad_range("*1\r\n*3\r\n:10\r\n:5\r\n" + Node("h", 1, "x"));
  CHECK_FALSE(m.FromClusterSlots(bad_range.reply, &error));
  CHECK(error.find("bad range") != std::string::npos);
  CHECK(m.shards().size() == 1);  // unchanged
  Reply not_array("+OK\r\n");
  CHECK_FALSE(m.FromClusterSlots(not_array.reply, &error));
}

}  // namespace
}  // namespace kp
