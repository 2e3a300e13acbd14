// Descriptors: the process's file-descriptor budget. At start-up the soft RLIMIT_NOFILE is
// raised as far as the configured clients need (and the hard limit allows), a reserve is kept
// for backend, probe, Sentinel and admin connections, and what is left bounds the clients.
// At run time a descriptor that cannot be had is counted and reported once per interval,
// and never blamed on a backend.
#pragma once

#include <cstdint>

namespace kp {

struct DescriptorPlan {
  uint64_t limit = 0;        // soft RLIMIT_NOFILE in force after start-up
  uint64_t reserve = 0;      // kept for everything that is not a client
  uint64_t max_clients = 0;  // configured max_clients, lowered to fit limit - reserve
  bool raised = false;       // the soft limit was raised
};

// `reserve` from DescriptorReserve(). Never returns max_clients below 1.
DescriptorPlan PlanDescriptors(uint64_t wanted_clients, uint64_t reserve);

// Descriptors the proxy needs besides clients: per worker its loop and a shared connection
// to each backend (plus dedicated connections of pinned clients, from the same reserve), a
// probe per backend, the admin endpoint's cap, and stdio/listeners/logging.
uint64_t DescriptorReserve(unsigned workers, uint64_t backends, uint64_t sentinels, bool admin);

// Whether an errno (positive) or libuv error (negative) means this process ran out of
// descriptors or socket memory: the local machine's fault, not the peer's.
bool IsDescriptorShortage(int err);

// Thread-safe. Counts one shortage at `where` and logs at most one line per 10 s with the
// count since the last line.
void NoteDescriptorShortage(const char* where);
uint64_t DescriptorShortages();

}  // namespace kp
