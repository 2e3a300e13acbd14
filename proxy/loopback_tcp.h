// Loopback TCP: the congestion control of connections whose peer is on this host.
//
// On loopback nothing is lost and there is no bottleneck to probe, so congestion control has
// nothing to do there; but BBR, the default of many kernels and cloud images, paces every
// packet it sends with a high-resolution timer when the qdisc does not (loopback has none).
// Through a proxy every byte crosses loopback twice, so that timer work doubled: with BBR
// the proxy spent about 30 % more CPU per 1 MB GET and served about 15 % fewer of them than
// with reno (see README, Benchmarks; small requests, a packet each, changed within noise).
// Connections to other hosts keep the kernel's choice: there it is the operator's.
#pragma once

#include <sys/socket.h>

#include <string>

namespace kp {

// True for 127.0.0.0/8, ::1 and ::ffff:127.0.0.0/104.
bool IsLoopback(const sockaddr* addr);

// Gives the TCP socket `fd` the congestion control `algorithm` when its peer is on loopback;
// "system" leaves it as it is. A failure (a name the kernel lacks, or one
// net.ipv4.tcp_allowed_congestion_control does not allow) is logged once per name and the
// connection keeps the kernel's choice.
void TuneLoopbackCongestion(int fd, const std::string& algorithm);

}  // namespace kp
