// Unit tests of the freshness rules: INFO replication parsing, the primary's offset history
// (lag in seconds), the replica read rule, and one client's read-your-writes requirement.
#include <doctest/doctest.h>

#include "proxy/read_your_writes.h"
#include "proxy/replication_info.h"

using namespace kp;

namespace {

// As Redis 7.0 prints it (CRLF line ends, section header).
const char* kReplicaInfo =
    "# Replication\r\n"
    "role:slave\r\n"
    "master_host:127.0.0.1\r\n"
    "master_port:7379\r\n"
    "master_link_status:up\r\n"
    "master_last_io_seconds_ago:1\r\n"
    "master_sync_in_progress:0\r\n"
    "slave_read_repl_offset:1500\r\n"
    "slave_repl_offset:1400\r\n"
    "slave_priority:100\r\n"
    "slave_read_only:1\r\n"
    "replica_announced:1\r\n"
    "connected_slaves:0\r\n"
    "master_failover_state:no-failover\r\n"
    "master_replid:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n"
    "master_replid2:0000000000000000000000000000000000000000\r\n"
    "master_repl_offset:1400\r\n"
    "second_repl_offset:-1\r\n"
    "repl_backlog_active:1\r\n";

const char* kPrimaryInfo =
    "# Replication\r\n"
    "role:master\r\n"
    "connected_slaves:1\r\n"
    "slave0:ip=127.0.0.1,port=7380,state=online,offset=1400,lag=0\r\n"
    "master_failover_state:no-failover\r\n"
    "master_replid:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n"
    "master_replid2:0000000000000000000000000000000000000000\r\n"
    "master_repl_offset:2000\r\n";

ReplicationInfo Replica() {
  ReplicationInfo r;
  REQUIRE(ParseReplicationInfo(kReplicaInfo, &r));
  return r;
}

PrimaryView Primary(const OffsetHistory* h, int64_t offset = 2000) {
  PrimaryView v;
  v.known = true;
  v.reachable = true;
  v.replid = std::string(40, 'a');
  v.offset = offset;
  v.history = h;
  return v;
}

}  // namespace

TEST_CASE("INFO replication of a replica and of a primary") {
  ReplicationInfo r = Replica();
  CHECK(r.is_replica);
  CHECK(r.link_up);
  CHECK_FALSE(r.sync_in_progress);
  CHECK(r.replica_offset == 1400);  // applied, not merely read
  CHECK(r.replid == std::string(40, 'a'));
  CHECK(r.master_host == "127.0.0.1");
  CHECK(r.master_port == 7379);

  ReplicationInfo p;
  REQUIRE(ParseReplicationInfo(kPrimaryInfo, &p));
  CHECK_FALSE(p.is_replica);
  CHECK(p.master_repl_offset == 2000);
  CHECK(p.replica_offset == -1);

  ReplicationInfo none;
  CHECK_FALSE(ParseReplicationInfo("# Server\r\nredis_version:7.0.15\r\n", &none));
  CHECK_FALSE(ParseReplicationInfo("", &none));
  // LF only and a garbage offset parse too (the offset as unknown).
  REQUIRE(ParseReplicationInfo("role:slave\nslave_repl_offset:12x\n", &none));
  CHECK(none.replica_offset == -1);
}

TEST_CASE("lag in seconds from the primary's offset history") {
  OffsetHistory h(4);
  CHECK(h.LagSeconds(1000, 0) == 0);  // nothing known: no lag claimed
  h.Add(1000, 100);
  h.Add(1100, 200);
  h.Add(1200, 300);
  CHECK(h.latest_offset() == 300);
  CHECK(h.LagSeconds(1250, 300) == 0);                      // has the newest sample
  CHECK(h.LagSeconds(1250, 5000) == 0);                     // ahead of it (sampled later)
  CHECK(h.LagSeconds(1250, 250) == doctest::Approx(0.15));  // reached the 1100 sample
  CHECK(h.LagSeconds(1250, 100) == doctest::Approx(0.25));
  // Behind every sample kept: at least as old as the oldest one.
  CHECK(h.LagSeconds(1250, 50) == doctest::Approx(0.25));
  // The ring keeps the newest `capacity` samples.
  h.Add(1300, 400);
  h.Add(1400, 500);
  CHECK(h.LagSeconds(1400, 100) == doctest::Approx(0.3));  // oldest kept is the 1100 one
  h.Clear();
  CHECK(h.empty());
  CHECK(h.latest_offset() == -1);
}

TEST_CASE("a linked replica of the current history within the limits serves reads") {
  OffsetHistory h;
  h.Add(1000, 1400);
  h.Add(1100, 2000);
  ReplicaVerdict v = JudgeReplica(Replica(), Primary(&h), LagLimits{1.0, 0}, 1150, false);
  CHECK(v.qualified);
  CHECK(v.reason.empty());
  CHECK(v.lag_bytes == 600);
  CHECK(v.lag_seconds == doctest::Approx(0.15));
}

TEST_CASE("replicas that must not serve reads") {
  OffsetHistory h;
  h.Add(1000, 2000);
  PrimaryView primary = Primary(&h);
  LagLimits none{0, 0};

  SUBCASE("link down") {
    ReplicationInfo r = Replica();
    r.link_up = false;
    ReplicaVerdict v = JudgeReplica(r, primary, none, 1000, false);
    CHECK_FALSE(v.qualified);
    CHECK(v.reason.find("link") != std::string::npos);
  }
  SUBCASE("full sync in progress") {
    ReplicationInfo r = Replica();
    r.sync_in_progress = true;
    CHECK_FALSE(JudgeReplica(r, primary, none, 1000, false).qualified);
  }
  SUBCASE("it is a primary") {
    ReplicationInfo r;
    REQUIRE(ParseReplicationInfo(kPrimaryInfo, &r));
    ReplicaVerdict v = JudgeReplica(r, primary, none, 1000, false);
    CHECK_FALSE(v.qualified);
    CHECK(v.reason.find("primary") != std::string::npos);
  }
  SUBCASE("it replicates another primary") {
    ReplicationInfo r = Replica();
    r.replid = std::string(40, 'b');
    ReplicaVerdict v = JudgeReplica(r, primary, none, 1000, false);
    CHECK_FALSE(v.qualified);
    CHECK(v.reason.find("another primary") != std::string::npos);
  }
  SUBCASE("another history with its link down: not synced yet, not another primary") {
    ReplicationInfo r = Replica();
    r.replid = std::string(40, 'b');
    r.link_up = false;
    ReplicaVerdict v = JudgeReplica(r, primary, none, 1000, false);
    CHECK_FALSE(v.qualified);
    CHECK(v.reason.find("has not synced with the primary yet") != std::string::npos);
    CHECK(v.reason.find("another primary") == std::string::npos);
  }
  SUBCASE("the primary was never seen") {
    PrimaryView unknown;
    CHECK_FALSE(JudgeReplica(Replica(), unknown, none, 1000, false).qualified);
  }
  SUBCASE("too many bytes behind") {
    ReplicaVerdict v = JudgeReplica(Replica(), primary, LagLimits{0, 500}, 1000, false);
    CHECK_FALSE(v.qualified);
    CHECK(v.reason.find("max_replica_lag_bytes") != std::string::npos);
    CHECK(JudgeReplica(Replica(), primary, LagLimits{0, 600}, 1000, false).qualified);
  }
  SUBCASE("too long behind") {
    // Offset 1400 was last the primary's at t=0 (only the 2000 sample at t=1000 is newer).
    OffsetHistory h2;
    h2.Add(0, 1400);
    h2.Add(1000, 2000);
    PrimaryView p2 = Primary(&h2);
    ReplicaVerdict v = JudgeReplica(Replica(), p2, LagLimits{1.0, 0}, 1500, false);
    CHECK_FALSE(v.qualified);
    CHECK(v.reason.find("max_replica_lag") != std::string::npos);
    CHECK(JudgeReplica(Replica(), p2, LagLimits{2.0, 0}, 1500, false).qualified);
    CHECK(JudgeReplica(Replica(), p2, LagLimits{0, 0}, 1500, false).qualified);  // 0: no limit
  }
}

TEST_CASE("while the primary is unreachable, replicas with the newest data keep serving") {
  OffsetHistory h;
  h.Add(1000, 1400);
  PrimaryView gone = Primary(&h, 1400);
  gone.reachable = false;
  gone.replicas_reported = true;
  gone.freshest_replica_offset = 1400;
  ReplicationInfo r = Replica();
  r.link_up = false;  // because the primary is gone
  CHECK(JudgeReplica(r, gone, LagLimits{1.0, 0}, 60000, false).qualified);
  // Until every replica has said what it has, nobody knows what the newest data is: the
  // verdict stays what it was.
  gone.replicas_reported = false;
  CHECK_FALSE(JudgeReplica(r, gone, LagLimits{1.0, 0}, 60000, false).qualified);
  CHECK(JudgeReplica(r, gone, LagLimits{1.0, 0}, 60000, true).qualified);
  gone.replicas_reported = true;
  // Another replica got writes this one lacks (the primary's last sample predates them):
  // this one has old data and must not serve it.
  gone.freshest_replica_offset = 1450;
  ReplicaVerdict v = JudgeReplica(r, gone, LagLimits{1.0, 0}, 60000, false);
  CHECK_FALSE(v.qualified);
  CHECK(v.reason.find("newer data") != std::string::npos);
  gone.freshest_replica_offset = 1400;
  // One that was behind what the primary was last seen with is not trusted.
  r.replica_offset = 1300;
  CHECK_FALSE(JudgeReplica(r, gone, LagLimits{1.0, 0}, 60000, false).qualified);
  // Nor one that has started a full sync (from whatever primary): its data is going away.
  r.replica_offset = 1400;
  r.sync_in_progress = true;
  CHECK_FALSE(JudgeReplica(r, gone, LagLimits{1.0, 0}, 60000, false).qualified);
}

TEST_CASE("read-your-writes: the primary until the write's offset is known, then an offset") {
  PrimaryProgress p;
  ReadYourWrites ryw;
  CHECK(ryw.Requirement(p) == ReadYourWrites::kAny);  // never wrote
  CHECK_FALSE(ryw.has_requirement());

  // The monitor asks the primary (epoch 1) and hears offset 100.
  p.poll_epoch = 1;
  p.offset = 100;
  p.sampled_epoch = 1;
  CHECK(ryw.Requirement(p) == ReadYourWrites::kAny);

  // The client's write is answered while probe 1 is the latest sent: a sample asked for
  // after it is needed.
  ryw.OnWrite(p);
  CHECK(ryw.has_requirement());
  CHECK(ryw.Requirement(p) == ReadYourWrites::kPrimaryOnly);
  p.poll_epoch = 2;  // probe 2 sent...
  CHECK(ryw.Requirement(p) == ReadYourWrites::kPrimaryOnly);
  p.offset = 250;  // ...and answered
  p.sampled_epoch = 2;
  CHECK(ryw.Requirement(p) == 250);
  // Later samples do not move a resolved requirement.
  p.offset = 900;
  p.sampled_epoch = 5;
  p.poll_epoch = 5;
  CHECK(ryw.Requirement(p) == 250);

  // A new write needs a new sample, and its requirement is at least the old one.
  ryw.OnWrite(p);
  CHECK(ryw.Requirement(p) == ReadYourWrites::kPrimaryOnly);
  p.poll_epoch = 6;
  p.offset = 1000;
  p.sampled_epoch = 6;
  CHECK(ryw.Requirement(p) == 1000);

  // The primary's history restarts (it came back empty): the old offset means nothing.
  p.history = 1;
  p.offset = 10;
  CHECK(ryw.Requirement(p) == ReadYourWrites::kAny);
  CHECK_FALSE(ryw.has_requirement());
}
