// SyncConn: non-blocking socket plus poll() against one deadline.
#include "proxy/sync_conn.h"

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/resp_parser.h"

namespace kp {

namespace {
int MillisLeft(SyncConn::Clock::time_point deadline) {
  auto left =
      std::chrono::duration_cast<std::chrono::milliseconds>(deadline - SyncConn::Clock::now());
  return left.count() > 0 ? static_cast<int>(left.count()) : 0;
}
}  // namespace

SyncConn::~SyncConn() {
  if (fd_ >= 0) ::close(fd_);
}

bool SyncConn::WaitFor(short events, const char* what) {
  pollfd p{fd_, events, 0};
  if (::poll(&p, 1, MillisLeft(deadline_)) != 1) {
    error_ = std::string(what) + " timed out";
    return false;
  }
  return true;
}

bool SyncConn::Connect(const Endpoint& ep, std::shared_ptr<const TlsContext> tls,
                       const std::string& server_name) {
  std::string host = ep.host;
  if (host.size() > 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  int rc = getaddrinfo(host.c_str(), std::to_string(ep.port).c_str(), &hints, &res);
  if (rc != 0) {
    error_ = gai_strerror(rc);
    return false;
  }
  error_ = "no address";
  for (addrinfo* ai = res; ai && fd_ < 0; ai = ai->ai_next) {
    int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) continue;
    if (::connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
      error_ = std::strerror(errno);
      ::close(fd);
      continue;
    }
    pollfd p{fd, POLLOUT, 0};
    int err = 0;
    socklen_t len = sizeof err;
    if (::poll(&p, 1, MillisLeft(deadline_)) != 1 ||
        ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
      error_ = err ? std::strerror(err) : "connect timed out";
      ::close(fd);
      continue;
    }
    fd_ = fd;
  }
  freeaddrinfo(res);
  if (fd_ < 0) return false;
  if (!tls) return true;
  tls_ = std::make_unique<TlsStream>(std::move(tls), server_name.empty() ? ep.host : server_name);
  if (tls_->Start() != TlsStream::Status::kOk) {
    error_ = "TLS: " + tls_->error();
    return false;
  }
  while (!tls_->handshake_done()) {
    if (!FlushTls() || !ReadMore()) return false;
  }
  return FlushTls();
}

bool SyncConn::WriteRaw(const Buffer& b) {
  size_t off = 0;
  while (off < b.size()) {
    ssize_t n = ::send(fd_, b.data() + off, b.size() - off, MSG_NOSIGNAL);
    if (n > 0) {
      off += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno != EAGAIN && errno != EINTR) {
      error_ = std::strerror(errno);
      return false;
    }
    if (!WaitFor(POLLOUT, "send")) return false;
  }
  return true;
}

bool SyncConn::FlushTls() {
  Buffer out;
  tls_->TakeOutput(&out);
  return WriteRaw(out);
}

bool SyncConn::Send(const Buffer& plain) {
  if (!tls_) return WriteRaw(plain);
  if (tls_->Write(plain.data(), plain.size()) != TlsStream::Status::kOk) {
    error_ = "TLS: " + tls_->error();
    return false;
  }
  return FlushTls();
}

bool SyncConn::ReadMore() {
  if (!WaitFor(POLLIN, "reply")) {
    error_ = "no reply within the timeout";
    return false;
  }
  char buf[64 * 1024];
  ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
  if (n == 0) {
    error_ = "connection closed";
    return false;
  }
  if (n < 0) {
    if (errno == EAGAIN || errno == EINTR) return true;
    error_ = std::strerror(errno);
    return false;
  }
  if (!tls_) {
    in_.Append(buf, static_cast<size_t>(n));
    return true;
  }
  TlsStream::Status st = tls_->Feed(buf, static_cast<size_t>(n), &in_);
  if (st == TlsStream::Status::kError) {
    error_ = "TLS: " + tls_->error();
    return false;
  }
  if (st == TlsStream::Status::kClosed) {
    error_ = "connection closed";
    return false;
  }
  return !tls_->has_output() || FlushTls();
}

bool SyncConn::ReadReply(std::string* reply) {
  ReplyFramer framer(limits_);
  for (;;) {
    if (!in_.empty()) {
      size_t consumed = 0;
      ParseStatus st = framer.Frame(in_.data(), in_.size(), &consumed);
      if (st == ParseStatus::kOk) {
        reply->assign(in_.data(), consumed);
        in_.Consume(consumed);
        return true;
      }
      if (st == ParseStatus::kError) {
        error_ = "malformed reply: " + framer.error();
        return false;
      }
    }
    if (!ReadMore()) return false;
  }
}

}  // namespace kp
