// SyncConn: one short blocking conversation with a Redis server or Sentinel at start-up,
// before any loop runs (learning the primary's command table, asking the Sentinels where the
// master is): connect, optional TLS (the same memory-BIO stream as the running proxy), send
// commands, read whole replies, all within one deadline.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "common/buffer.h"
#include "common/resp_limits.h"
#include "config/config.h"
#include "proxy/tls.h"

namespace kp {

class SyncConn {
 public:
  using Clock = std::chrono::steady_clock;

  SyncConn(Clock::time_point deadline, RespLimits limits) : deadline_(deadline), limits_(limits) {}
  ~SyncConn();
  SyncConn(const SyncConn&) = delete;
  SyncConn& operator=(const SyncConn&) = delete;

  // Connects (and with `tls` completes the handshake, checking the certificate against
  // `server_name`, or the endpoint's host when empty).
  bool Connect(const Endpoint& ep, std::shared_ptr<const TlsContext> tls,
               const std::string& server_name);
  bool Send(const Buffer& plain);
  // One whole reply (its RESP bytes).
  bool ReadReply(std::string* reply);
  const std::string& error() const { return error_; }

 private:
  bool WaitFor(short events, const char* what);
  bool WriteRaw(const Buffer& b);
  // Reads what the socket has into in_ (decrypted with TLS); false on EOF, error, timeout.
  bool ReadMore();
  bool FlushTls();

  Clock::time_point deadline_;
  RespLimits limits_;
  int fd_ = -1;
  std::unique_ptr<TlsStream> tls_;
  Buffer in_;
  std::string error_;
};

}  // namespace kp
