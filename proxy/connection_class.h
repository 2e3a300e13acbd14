// ConnClass: the session state a shared backend connection is opened with (its database,
// protocol version and, with auth_mode passthrough, ACL user). Clients in the same class
// share connections; a client's SELECT, HELLO or AUTH changes only which class serves it, so
// it keeps multiplexing and replica reads.
#pragma once

#include <cstdint>

namespace kp {

struct ConnClass {
  uint32_t db = 0;
  uint8_t proto = 2;  // RESP version: 2, or 3 after HELLO 3
  uint32_t user = 0;  // Credentials id (passthrough AUTH); 0: the proxy's backend credentials

  bool is_default() const { return db == 0 && proto == 2 && user == 0; }
  // db < 2^20 (checked against the server's `databases`), so db and proto fit 32 bits.
  uint64_t key() const { return (uint64_t{user} << 32) | (uint64_t{db} << 8) | proto; }
  bool operator==(const ConnClass&) const = default;
};

}  // namespace kp
