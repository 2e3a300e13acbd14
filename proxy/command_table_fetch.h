// FetchCommandTable: at start-up, asks the primary (or a replica) for its COMMAND reply so
// commands the built-in Redis 7.0 table does not know (newer Redis, modules) classify
// correctly. Blocking and bounded; runs before any loop starts.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "config/config.h"
#include "proxy/command_table.h"
#include "proxy/tls.h"

namespace kp {

// Returns the table of the server at `node` (the primary, or any node running the same
// server), or nullptr with *error set (unreachable, AUTH refused, bad reply, no answer within
// `wait`). The caller falls back to the built-in table.
// `tls`: the backend TLS context (nullptr: plaintext).
std::unique_ptr<CommandTable> FetchCommandTable(const Config& config, const Endpoint& node,
                                                std::shared_ptr<const TlsContext> tls,
                                                std::chrono::milliseconds wait, std::string* error);

}  // namespace kp
