// ClusterKeys: where a command's keys are among its arguments, for routing by hash slot.
// The command table's key range covers most commands; those whose keys move (a numkeys
// argument, STREAMS, STORE) are read the way Redis's own getkeys procedures read them.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "proxy/command_table.h"

namespace kp {

// Appends to *out the argument indexes of the keys of the request `args` (args[0] is the
// command name); none for a keyless command. False when the arguments are malformed for the
// command (a numkeys that is not a number or too large): the server then answers.
bool KeyPositions(const CommandInfo* info, const std::vector<std::string_view>& args,
                  std::vector<uint32_t>* out);

// Splits a RESP request (already framed and valid: an array of bulk strings) into its
// arguments; false if it is not one.
bool SplitRequest(const char* raw, size_t len, std::vector<std::string_view>* args);

}  // namespace kp
