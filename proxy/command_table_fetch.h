// FetchPrimaryCommandTable: at start-up, asks the primary for its COMMAND reply so commands
// the built-in Redis 7.0 table does not know (newer Redis, modules) classify correctly.
// Blocking, bounded by the timeout; runs before any loop starts.
#pragma once

#include <memory>
#include <string>

#include "config/config.h"
#include "proxy/command_table.h"
#include "proxy/tls.h"

namespace kp {

// Returns the primary's table, or nullptr with *error set (unreachable, AUTH refused, bad
// reply). The caller falls back to the built-in table.
// `tls`: the backend TLS context (nullptr: plaintext).
std::unique_ptr<CommandTable> FetchPrimaryCommandTable(const Config& config,
                                                       std::shared_ptr<const TlsContext> tls,
                                                       std::string* error);

}  // namespace kp
