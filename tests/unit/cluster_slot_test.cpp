// Unit tests for common/cluster_slot.h: Redis's CRC16 and hash-tag rules, checked against
// values Redis itself gives (CLUSTER KEYSLOT) and the cluster specification's examples.
#include <doctest/doctest.h>

#include "common/cluster_slot.h"

namespace kp {
namespace {

TEST_CASE("cluster slot: CRC16-XMODEM as in the cluster specification") {
  CHECK(Crc16("123456789") == 0x31C3);
  CHECK(Crc16("") == 0);
}

TEST_CASE("cluster slot: keys hash as CLUSTER KEYSLOT does") {
  CHECK(KeySlot("foo") == 12182);
  CHECK(KeySlot("bar") == 5061);
  CHECK(KeySlot("hello") == 866);
}

TEST_CASE("cluster slot: hash tags") {
  CHECK(KeySlot("{user1000}.following") == KeySlot("{user1000}.followers"));
  CHECK(KeySlot("{user1000}.following") == KeySlot("user1000"));
  // Values from a redis-server 7.0 with cluster-enabled (CLUSTER KEYSLOT).
  CHECK(KeySlot("{user1000}.following") == 3443);
  CHECK(KeySlot("foo{}{bar}") == 8363);     // the first tag is empty: the whole key
  CHECK(KeySlot("foo{{bar}}zap") == 4015);  // the tag is "{bar"
  CHECK(KeySlot("foo{bar}{zap}") == 5061);  // only the first tag counts: "bar"
  CHECK(KeySlot("{") == Crc16("{") % kClusterSlots);
}

}  // namespace
}  // namespace kp
