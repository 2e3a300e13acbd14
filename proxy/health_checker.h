// HealthChecker: the control plane's view of backend health. Every interval it PINGs each
// backend over its own hiredis async connection (libuv adapter, on the main loop); a backend
// that answers PONG is re-admitted, one that refuses, errors (LOADING, ...) or stays silent
// past the timeout is marked down. Workers mark backends down on their own failures; only
// this class brings them back.
#pragma once

#include <uv.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "config/config.h"
#include "proxy/backend.h"

struct redisAsyncContext;

namespace kp {

class HealthChecker {
 public:
  HealthChecker(uv_loop_t* loop, const Config& config, const BackendSet& backends);
  ~HealthChecker();
  void Start();
  void Stop();

 private:
  struct Probe {
    HealthChecker* owner = nullptr;
    Backend* backend = nullptr;
    redisAsyncContext* ctx = nullptr;
    bool awaiting = false;
    uint64_t sent_ms = 0;
    uint64_t epoch = 0;
    bool resolving = false;
    uv_getaddrinfo_t resolve_req;
  };

  void OnTick();
  void SendProbe(Probe& p);
  // Resolves a host name off the loop (hiredis would block in getaddrinfo), then Connect().
  void StartResolve(Probe& p);
  void Connect(Probe& p, const std::string& ip);
  void Drop(Probe& p, const char* why);

  static void OnConnect(const redisAsyncContext* c, int status);
  static void OnDisconnect(const redisAsyncContext* c, int status);
  static void OnPong(redisAsyncContext* c, void* reply, void* privdata);
  static void OnAuth(redisAsyncContext* c, void* reply, void* privdata);

  uv_loop_t* loop_;
  const Config& config_;
  uint64_t timeout_ms_;
  uv_timer_t timer_;
  bool running_ = false;
  std::vector<std::unique_ptr<Probe>> probes_;
};

}  // namespace kp
