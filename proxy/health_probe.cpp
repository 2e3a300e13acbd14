// ProbeHealth: connect, GET, read the status line; every step bounded by one deadline.
#include "proxy/health_probe.h"

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

namespace kp {

namespace {

int MsLeft(std::chrono::steady_clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      deadline - std::chrono::steady_clock::now());
  return left.count() < 0 ? 0 : static_cast<int>(left.count());
}

}  // namespace

int ProbeHealth(const std::string& target, double timeout_s, std::string* detail) {
  auto deadline = std::chrono::steady_clock::now() +
                  std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
  std::string hostport = target, path = "/healthz";
  if (size_t slash = target.find('/'); slash != std::string::npos) {
    hostport = target.substr(0, slash);
    path = target.substr(slash);
  }
  size_t colon = hostport.rfind(':');
  if (colon == std::string::npos || colon + 1 == hostport.size()) {
    *detail = "expected HOST:PORT[/PATH], got \"" + target + "\"";
    return 1;
  }
  std::string host = hostport.substr(0, colon), port = hostport.substr(colon + 1);
  if (host.size() > 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &res); rc != 0) {
    *detail = std::string("cannot resolve ") + host + ": " + gai_strerror(rc);
    return 1;
  }
  int fd = -1;
  for (addrinfo* ai = res; ai != nullptr && fd < 0; ai = ai->ai_next) {
    fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) continue;
    if (::connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
      ::close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(res);
  if (fd < 0) {
    *detail = "cannot connect to " + hostport + ": " + std::strerror(errno);
    return 1;
  }
  std::string request = "GET " + path + " HTTP/1.0\r\nHost: " + hostport + "\r\n\r\n";
  size_t sent = 0;
  std::string answer;
  int result = 1;
  while (true) {
    pollfd p{fd, static_cast<short>(sent < request.size() ? POLLOUT : POLLIN), 0};
    int n = ::poll(&p, 1, MsLeft(deadline));
    if (n <= 0) {
      *detail = "no answer from " + hostport + " in time";
      break;
    }
    if (sent < request.size()) {
      ssize_t w = ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
      if (w < 0) {
        // A refused connect shows here, on the first write.
        *detail = std::string("cannot reach ") + hostport + ": " + std::strerror(errno);
        break;
      }
      sent += static_cast<size_t>(w);
      continue;
    }
    char buf[512];
    ssize_t r = ::recv(fd, buf, sizeof buf, 0);
    if (r > 0) answer.append(buf, static_cast<size_t>(r));
    size_t eol = answer.find("\r\n");
    if (eol != std::string::npos || r <= 0 || answer.size() > 4096) {
      std::string status = answer.substr(0, eol == std::string::npos ? answer.size() : eol);
      *detail = status.empty() ? "connection closed without an answer" : status;
      // "HTTP/1.1 200 OK"
      size_t sp = status.find(' ');
      result = sp != std::string::npos && status.compare(sp + 1, 3, "200") == 0 ? 0 : 1;
      break;
    }
  }
  ::close(fd);
  return result;
}

}  // namespace kp
