// ProxyInfo: the proxy's own view (version, uptime, configuration source, nodes with role and
// state, clients, counters), as `PROXY INFO` answers it (INFO-style text) and as JSON on the
// admin endpoint's /info. Reads only atomics, so any thread may ask.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "proxy/backend.h"
#include "proxy/stats.h"
#include "proxy/topology.h"

namespace kp {

class Worker;

class ProxyInfo {
 public:
  ProxyInfo(const Topology& topology, const std::vector<std::unique_ptr<Worker>>& workers,
            std::string listen, std::string config_source);

  std::string Text() const;
  std::string Json() const;

  std::atomic<uint64_t> reloads_ok{0};
  std::atomic<uint64_t> reloads_failed{0};

 private:
  struct Snapshot;
  Snapshot Take() const;

  const Topology& topology_;
  const std::vector<std::unique_ptr<Worker>>& workers_;
  std::string listen_;
  std::string config_source_;
  uint64_t started_ms_;
};

}  // namespace kp
