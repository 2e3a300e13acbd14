// ControlConn: one control-plane connection on the main loop to a Redis server or a
// Sentinel: name resolution off the loop, connect, TLS (Debian's hiredis has none, so the
// transport is the proxy's own, with hiredis's reader for replies), AUTH, and failure
// detection. Used by the replication monitor's probes and by the Sentinel client; never on
// the request path.
//
// Contract: `on_lost` is called once for every connection that fails after Connect() (refused,
// reset, closed, AUTH refused, not established in time); never for Close(). Reply callbacks
// are called with a reply only: those of commands pending when the connection goes are
// dropped (the owner hears of the loss through on_lost).
#pragma once

#include <uv.h>

#include <cstdarg>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>

#include "config/config.h"
#include "proxy/tls.h"

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
  bool open() const { return link_ != nullptr || resolving_; }
  // Connected, and with TLS the handshake done.
  bool established() const;
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
  // TLS for the next connections (nullptr: plaintext); `server_name` (SNI and the name the
  // certificate must carry) defaults to the endpoint's host.
  void SetTls(std::shared_ptr<const TlsContext> ctx, std::string server_name) {
    tls_ = std::move(ctx);
    tls_name_ = std::move(server_name);
  }
  // Periodic check (each tick): a connection (with its TLS handshake) not established within
  // `connect_timeout_ms` is dropped and reported.
  void Check(uint64_t now_ms, uint64_t connect_timeout_ms);
  // Bytes from the server wait in the socket, not read yet (the loop was busy elsewhere).
  bool HasUnreadBytes() const;
  // Drops the connection as failed, reporting `why` through on_lost.
  void Fail(const std::string& why);
  // Drops the connection without reporting it.
  void Close();
  // Sends one command (printf-style, as hiredis formats it). False when not open().
  bool Command(ReplyFn fn, void* privdata, const char* format, ...);
  // For pub/sub: the same, but the callback is called for every frame that follows.
  bool Subscribe(ReplyFn fn, void* privdata, const char* format, ...);

 private:
  struct Resolve;
  struct Link;
  struct Pending {
    ReplyFn fn = nullptr;
    void* privdata = nullptr;
    enum Kind : uint8_t { kCommand, kAuth, kSubscribe } kind = kCommand;
  };

  void StartResolve();
  void ConnectTo(const std::string& ip);
  void Drop(const std::string& why, bool report);
  void Flush();
  void OnRead(ssize_t n);
  void Dispatch(redisReply* r);
  bool Queue(Pending p, const char* format, ...);
  bool QueueV(Pending p, const char* format, va_list ap);
  static void OnConnect(uv_connect_t* req, int status);

  uv_loop_t* loop_;
  Endpoint endpoint_;
  std::string username_;
  std::string password_;
  std::shared_ptr<const TlsContext> tls_;
  std::string tls_name_;
  LostFn on_lost_;
  Link* link_ = nullptr;
  bool connected_ = false;
  bool lost_established_ = false;
  bool lost_to_shortage_ = false;
  uint64_t connect_started_ms_ = 0;
  bool resolving_ = false;
  // A resolution in flight outlives a Close(): it holds a pointer that Close() clears.
  Resolve* resolve_ = nullptr;
  std::deque<Pending> pending_;  // commands sent, replies not seen yet (FIFO)
  bool subscribed_ = false;
  Pending sub_;  // the subscription's callback, once its SUBSCRIBE is answered
};

}  // namespace kp
