// Loopback TCP: the congestion control of connections whose peer is on this host.
#include "proxy/loopback_tcp.h"

#include <netinet/in.h>
#include <netinet/tcp.h>

#include <cerrno>
#include <cstring>
#include <mutex>
#include <set>

#include "common/logging.h"

namespace kp {

bool IsLoopback(const sockaddr* addr) {
  if (addr->sa_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(addr);
    return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
  }
  if (addr->sa_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(addr);
    if (IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr)) return true;
    return IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr) && in6->sin6_addr.s6_addr[12] == 127;
  }
  return false;  // a Unix socket, or an address family without TCP
}

void TuneLoopbackCongestion(int fd, const std::string& algorithm) {
  if (algorithm == "system") return;
  sockaddr_storage peer{};
  socklen_t len = sizeof(peer);
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &len) != 0) return;  // gone already
  if (!IsLoopback(reinterpret_cast<const sockaddr*>(&peer))) return;
  if (setsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, algorithm.data(),
                 static_cast<socklen_t>(algorithm.size())) == 0) {
    return;
  }
  const int err = errno;
  // Once per name, not per connection; a reload that names another refused one says so too.
  // Every name warned about is remembered: just after a reload, a worker that has not taken
  // the new configuration yet still applies the old name, and said it again.
  static std::mutex mu;
  static std::set<std::string> warned;
  {
    std::lock_guard<std::mutex> g(mu);
    if (!warned.insert(algorithm).second) return;
  }
  Log().warn(
      "loopback_tcp_congestion: the kernel refused '{}' ({}); loopback connections keep its "
      "default{}",
      algorithm, std::strerror(err),
      err == EPERM ? " (net.ipv4.tcp_allowed_congestion_control does not list it)" : "");
}

}  // namespace kp
