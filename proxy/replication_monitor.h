// ReplicationMonitor: the control plane's view of the backends. Every health_check_interval
// it asks the primary for INFO replication over its own hiredis async connection (libuv
// adapter, main loop), then each replica as soon as the primary has answered, so replica
// offsets are compared with a primary offset taken just before them.
//
// An answer proves the server alive (re-admits it); a refusal, an error such as LOADING or
// silence past the timeout marks it down (BUSY does not: the server is alive, running a
// script). The primary's answers feed PrimaryProgress (read-your-writes) and the offset
// history (lag in seconds); each replica's answer is judged by JudgeReplica and decides
// whether it serves reads. Workers mark backends down on their own failures; only this class
// brings them back.
#pragma once

#include <uv.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "config/config.h"
#include "proxy/backend.h"
#include "proxy/replication_info.h"

struct redisAsyncContext;

namespace kp {

class ReplicationMonitor {
 public:
  ReplicationMonitor(uv_loop_t* loop, const Config& config, const BackendGroup& group);
  ~ReplicationMonitor();
  void Start();
  void Stop();

 private:
  struct Probe {
    ReplicationMonitor* owner = nullptr;
    Backend* backend = nullptr;
    redisAsyncContext* ctx = nullptr;
    bool awaiting = false;
    bool connected = false;  // hiredis reported the connection established
    uint64_t connect_ms = 0;
    uint64_t sent_ms = 0;
    uint64_t epoch = 0;       // the backend's down_epoch when the probe was sent
    uint64_t poll_epoch = 0;  // primary: PrimaryProgress::poll_epoch of this probe
    // Replicas: the last answer, when it was asked for, and the down_epoch then.
    ReplicationInfo info;
    bool has_info = false;
    uint64_t info_sent_ms = 0;
    uint64_t info_epoch = 0;
    bool resolving = false;
    uv_getaddrinfo_t resolve_req;
  };

  void OnTick();
  void SendProbe(Probe& p);
  void PollReplicas();
  // Drops the probe's connection if its socket holds an error; true when it did.
  bool SocketFailed(Probe& p);
  // Resolves a host name off the loop (hiredis would block in getaddrinfo), then Connect().
  void StartResolve(Probe& p);
  void Connect(Probe& p, const std::string& ip);
  void Drop(Probe& p, const char* why);
  void OnAnswer(Probe& p, const char* data, size_t len, bool is_error);
  void OnPrimaryInfo(Probe& p, const ReplicationInfo& info);
  void OnReplicaInfo(Probe& p, const ReplicationInfo& info);
  // Decides from its last answer whether a replica serves reads; logs changes.
  void Judge(Probe& p);
  // Tracks when the primary became unreachable; on the change, polls the replicas at once.
  void NotePrimaryState();

  static void OnConnect(const redisAsyncContext* c, int status);
  static void OnDisconnect(const redisAsyncContext* c, int status);
  static void OnInfo(redisAsyncContext* c, void* reply, void* privdata);
  static void OnAuth(redisAsyncContext* c, void* reply, void* privdata);

  uv_loop_t* loop_;
  const Config& config_;
  const BackendGroup& group_;
  uint64_t timeout_ms_;
  // hiredis's libuv adapter drops poll errors, so a refused connection is never reported:
  // a connection not established by this deadline is abandoned and retried.
  uint64_t connect_timeout_ms_;
  uv_timer_t timer_;
  bool running_ = false;
  std::vector<std::unique_ptr<Probe>> probes_;  // [0] is the primary's

  // The primary as last seen.
  bool primary_known_ = false;
  bool primary_is_replica_logged_ = false;
  std::string primary_replid_;
  int64_t primary_offset_ = -1;
  OffsetHistory history_;
  // When the monitor first saw the primary unreachable (0: it is reachable).
  uint64_t primary_lost_ms_ = 0;
};

}  // namespace kp
