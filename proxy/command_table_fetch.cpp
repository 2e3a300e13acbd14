// FetchPrimaryCommandTable: one short blocking conversation with the primary.
#include "proxy/command_table_fetch.h"

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "common/buffer.h"
#include "common/resp_parser.h"
#include "common/resp_writer.h"

namespace kp {

namespace {

using Clock = std::chrono::steady_clock;

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

int MillisLeft(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  return left.count() > 0 ? static_cast<int>(left.count()) : 0;
}

int Connect(const Endpoint& ep, Clock::time_point deadline, std::string* error) {
  std::string host = ep.host;
  if (host.size() > 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  int rc = getaddrinfo(host.c_str(), std::to_string(ep.port).c_str(), &hints, &res);
  if (rc != 0) {
    *error = gai_strerror(rc);
    return -1;
  }
  int result = -1;
  *error = "no address";
  for (addrinfo* ai = res; ai && result < 0; ai = ai->ai_next) {
    int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) continue;
    if (::connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
      *error = std::strerror(errno);
      ::close(fd);
      continue;
    }
    pollfd p{fd, POLLOUT, 0};
    int err = 0;
    socklen_t len = sizeof err;
    if (::poll(&p, 1, MillisLeft(deadline)) != 1 ||
        ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
      *error = err ? std::strerror(err) : "connect timed out";
      ::close(fd);
      continue;
    }
    result = fd;
  }
  freeaddrinfo(res);
  return result;
}

bool SendAll(int fd, const Buffer& b, Clock::time_point deadline, std::string* error) {
  size_t off = 0;
  while (off < b.size()) {
    ssize_t n = ::send(fd, b.data() + off, b.size() - off, MSG_NOSIGNAL);
    if (n > 0) {
      off += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno != EAGAIN && errno != EINTR) {
      *error = std::strerror(errno);
      return false;
    }
    pollfd p{fd, POLLOUT, 0};
    if (::poll(&p, 1, MillisLeft(deadline)) != 1) {
      *error = "send timed out";
      return false;
    }
  }
  return true;
}

// Reads exactly one reply into *out; returns false with *error on timeout/EOF/garbage.
bool ReadReply(int fd, const RespLimits& limits, Buffer* in, std::string* out,
               Clock::time_point deadline, std::string* error) {
  ReplyFramer framer(limits);
  for (;;) {
    size_t consumed = 0;
    if (!in->empty()) {
      ParseStatus st = framer.Frame(in->data(), in->size(), &consumed);
      if (st == ParseStatus::kOk) {
        out->assign(in->data(), consumed);
        in->Consume(consumed);
        return true;
      }
      if (st == ParseStatus::kError) {
        *error = "malformed reply: " + framer.error();
        return false;
      }
    }
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, MillisLeft(deadline)) != 1) {
      *error = "no reply within the timeout";
      return false;
    }
    char* dst = in->PrepareWrite(64 * 1024);
    ssize_t n = ::recv(fd, dst, in->writable(), 0);
    if (n == 0) {
      *error = "connection closed";
      return false;
    }
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      *error = std::strerror(errno);
      return false;
    }
    in->Commit(static_cast<size_t>(n));
  }
}

}  // namespace

std::unique_ptr<CommandTable> FetchPrimaryCommandTable(const Config& config, std::string* error) {
  auto deadline = Clock::now() +
                  std::chrono::milliseconds(static_cast<int64_t>(config.timeout_s * 1000.0 + 0.5));
  Fd fd(Connect(config.primary, deadline, error));
  if (fd.get() < 0) return nullptr;
  Buffer req;
  bool auth = !config.backend_password.empty();
  if (auth) resp::AppendAuth(req, config.backend_username, config.backend_password);
  std::string_view cmd[] = {"COMMAND"};
  resp::AppendCommand(req, cmd);
  if (!SendAll(fd.get(), req, deadline, error)) return nullptr;
  Buffer in;
  std::string reply;
  if (auth) {
    if (!ReadReply(fd.get(), config.resp, &in, &reply, deadline, error)) return nullptr;
    if (!reply.empty() && reply[0] == '-') {
      *error = "AUTH refused: " + reply.substr(1, reply.size() > 3 ? reply.size() - 3 : 0);
      return nullptr;
    }
  }
  if (!ReadReply(fd.get(), config.resp, &in, &reply, deadline, error)) return nullptr;
  return CommandTable::FromCommandReply(reply, error);
}

}  // namespace kp
