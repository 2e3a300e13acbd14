// Unread bytes: whether a connection's socket holds bytes the loop has not read yet.
//
// A reply may already be in the socket while the loop is busy elsewhere (a long turn, main
// loop starvation): judging a peer silent then would be the proxy's own delay, not the
// peer's. One ioctl, asked only when something looks late.
#pragma once

#include <sys/ioctl.h>
#include <uv.h>

namespace kp {

// True when the kernel holds bytes received on `tcp` that nobody has read (FIONREAD).
inline bool SocketHasUnreadBytes(const uv_tcp_t& tcp) {
  uv_os_fd_t fd;
  if (uv_fileno(reinterpret_cast<const uv_handle_t*>(&tcp), &fd) != 0) return false;
  int n = 0;
  return ioctl(fd, FIONREAD, &n) == 0 && n > 0;
}

}  // namespace kp
