// ConnClass: the session state a shared backend connection is opened with (its database and
// protocol version). Clients in the same class share connections; a client's SELECT or HELLO
// changes only which class serves it, so it keeps multiplexing and replica reads.
#pragma once

#include <cstdint>

namespace kp {

struct ConnClass {
  uint32_t db = 0;
  uint8_t proto = 2;  // RESP version: 2, or 3 after HELLO 3

  bool is_default() const { return db == 0 && proto == 2; }
  uint64_t key() const { return (uint64_t{db} << 8) | proto; }
  bool operator==(const ConnClass&) const = default;
};

}  // namespace kp
