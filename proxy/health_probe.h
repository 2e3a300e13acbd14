// ProbeHealth: the client side of `kompress-proxy --healthcheck HOST:PORT[/PATH]`, so a
// container image can check the proxy with its own binary. One blocking HTTP/1.0 GET to the
// admin endpoint, bounded in time.
#pragma once

#include <string>

namespace kp {

// 0 when the endpoint answers with status 200, 1 otherwise; *detail says what was seen.
int ProbeHealth(const std::string& target, double timeout_s, std::string* detail);

}  // namespace kp
