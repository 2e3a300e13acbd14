// LookupSentinelMaster: one blocking question to the Sentinels at start-up, before any loop
// runs ("where is the master?"), for what needs the primary that early (learning its command
// table). The running proxy follows Sentinel through SentinelClient instead.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "config/config.h"
#include "proxy/tls.h"

namespace kp {

// The master's address from the first Sentinel that knows it, each tried within the timeout;
// nullopt with *error set when none answers.
// `tls`: the backend TLS context (Sentinels speak TLS with backend_tls), nullptr: plaintext.
std::optional<Endpoint> LookupSentinelMaster(const Config& config,
                                             std::shared_ptr<const TlsContext> tls,
                                             std::string* error);

}  // namespace kp
