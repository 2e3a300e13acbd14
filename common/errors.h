// Error replies the proxy itself sends, in one place so their wording stays consistent and
// tests can name them. Each is the text after the leading '-' and before CRLF.
#pragma once

#include <string_view>

namespace kp::errors {

inline constexpr std::string_view kNoAuth = "NOAUTH Authentication required.";
inline constexpr std::string_view kWrongPass =
    "WRONGPASS invalid username-password pair or user is disabled.";
inline constexpr std::string_view kBadClientName =
    "ERR Client names cannot contain spaces, newlines or special characters.";
inline constexpr std::string_view kAuthNotConfigured =
    "ERR AUTH <password> called without any password configured for the default user. Are you "
    "sure your configuration is correct?";
// HELLO 3: Redis speaks it, the proxy's multiplexed connections do not; clients fall back.
inline constexpr std::string_view kNoResp3 =
    "NOPROTO sorry, this protocol version is not supported.";
// Any other version: Redis's own words.
inline constexpr std::string_view kNoProto = "NOPROTO unsupported protocol version";
inline constexpr std::string_view kPrimaryDown = "ERR kompress: primary is unavailable";
// SCRIPT KILL / FUNCTION KILL over the worker's budget of connections of their own.
inline constexpr std::string_view kTooManyKills =
    "ERR kompress: too many SCRIPT KILL / FUNCTION KILL at once; try again";
inline constexpr std::string_view kPrimaryLost =
    "ERR kompress: connection to primary lost before its reply; the command may or may not have "
    "been applied";
inline constexpr std::string_view kPrimaryTimeout =
    "ERR kompress: primary did not reply within the timeout; the command may or may not have been "
    "applied";
inline constexpr std::string_view kNoBackendForRead =
    "ERR kompress: no backend available for this read (replicas and primary are down)";
// A pinned session's command held while the primary was in doubt, when the session ends.
inline constexpr std::string_view kPinnedHeldLost =
    "ERR kompress: the primary changed while this command waited for it; it was not sent "
    "(nothing of it was applied); session closed";
inline constexpr std::string_view kPinnedLost =
    "ERR kompress: connection to primary lost; session closed; what was in flight may or may "
    "not have been applied";

}  // namespace kp::errors
