// ControlConn: one control-plane connection (hiredis async, on the main loop through its
// libuv adapter) to a Redis server or a Sentinel: name resolution off the loop, connect,
// AUTH, and the failure detection the adapter lacks. Used by the replication monitor's
// probes and by the Sentinel client; never on the request path.
//
// Contract: `on_lost` is called once for every connection that fails after Connect() (refused,
// reset, closed, AUTH refused, not established in time); never for Close(). Reply callbacks
// are called with a reply only: those of commands pending when the connection goes are
// dropped (the owner hears of the loss through on_lost).
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>
#include <string>

#include "config/config.h"

struct redisAsyncContext;
struct redisReply;

namespace kp {

class ControlConn {
 public:
  using LostFn = std::function<void(const std::string& why)>;
  using ReplyFn = void (*)(ControlConn* conn, redisReply* reply, void* privdata);

  ControlConn(uv_loop_t* loop, Endpoint endpoint, std::string username, std::string password,
              LostFn on_lost);
  ~ControlConn();
  ControlConn(const ControlConn&) = delete;
  ControlConn& operator=(const ControlConn&) = delete;

  const Endpoint& endpoint() const { return endpoint_; }
  // A connection exists or is being made (commands may be queued).
  bool open() const { return ctx_ != nullptr || resolving_; }
  bool established() const { return ctx_ != nullptr && connected_; }
  // In on_lost: whether the connection lost had been established (closed or reset by the
  // server, as opposed to never made).
  bool lost_established() const { return lost_established_; }
  // In on_lost: the connection could not be made for want of descriptors (this process's
  // shortage, not the server's fault).
  bool lost_to_shortage() const { return lost_to_shortage_; }

  // Starts connecting unless open(). Commands sent before it is established are queued.
  void Connect();
  // Used from the next connection on (the open one stays as it is).
  void SetCredentials(std::string username, std::string password) {
    username_ = std::move(username);
    password_ = std::move(password);
  }
  // Periodic check (each tick): a socket holding an error, or a connection not established
  // within `connect_timeout_ms`, is dropped and reported. hiredis's libuv adapter ignores
  // poll errors (a refused connect, a reset after the server died), so without this such a
  // connection would wait forever.
  void Check(uint64_t now_ms, uint64_t connect_timeout_ms);
  // Drops the connection as failed, reporting `why` through on_lost.
  void Fail(const std::string& why);
  // Drops the connection without reporting it.
  void Close();
  // Sends one command (printf-style, as redisAsyncCommand). False when not open().
  bool Command(ReplyFn fn, void* privdata, const char* format, ...);
  // For pub/sub: the same, but the callback is called for every message that follows.
  bool Subscribe(ReplyFn fn, void* privdata, const char* format, ...);

 private:
  void StartResolve();
  void ConnectTo(const std::string& ip);
  void Drop(const std::string& why, bool report);
  static void OnConnect(const redisAsyncContext* c, int status);
  static void OnDisconnect(const redisAsyncContext* c, int status);
  static void OnReply(redisAsyncContext* c, void* reply, void* privdata);
  static void OnSubscription(redisAsyncContext* c, void* reply, void* privdata);
  static void OnAuth(redisAsyncContext* c, void* reply, void* privdata);

  uv_loop_t* loop_;
  Endpoint endpoint_;
  std::string username_;
  std::string password_;
  LostFn on_lost_;
  redisAsyncContext* ctx_ = nullptr;
  bool connected_ = false;
  bool lost_established_ = false;
  bool lost_to_shortage_ = false;
  uint64_t connect_started_ms_ = 0;
  bool resolving_ = false;
  // A resolution in flight outlives a Close(): it holds a pointer that Close() clears.
  struct Resolve;
  Resolve* resolve_ = nullptr;
  struct Pending {
    ControlConn* conn;
    ReplyFn fn;
    void* privdata;
  };
  Pending sub_{nullptr, nullptr, nullptr};  // the subscription's callback
};

}  // namespace kp
