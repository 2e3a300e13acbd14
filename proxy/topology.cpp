// Topology: groups, the node numbering across them, and the slot table.
#include "proxy/topology.h"

namespace kp {

Topology::Topology(const Config& config) : cluster_(config.cluster()) {
  for (auto& s : slot_group_) s.store(cluster_ ? kNoGroup : 0, std::memory_order_relaxed);
  // Group 0 always exists (facts any node can tell are read from it); with Redis Cluster
  // the first shard gets it.
  AddGroup()->AddConfigured(config);
}

BackendGroup* Topology::AddGroup() {
  size_t n = groups();
  if (n == kMaxGroups) return nullptr;
  groups_[n] = std::make_unique<BackendGroup>(n, &next_index_, kMaxNodes);
  ngroups_.store(n + 1, std::memory_order_release);
  return groups_[n].get();
}

Backend* Topology::FindNode(const Endpoint& ep) const {
  size_t n = groups();
  for (size_t g = 0; g < n; ++g) {
    Backend* b = groups_[g]->Find(ep);
    if (b != nullptr && b->role() != BackendRole::kNone) return b;
  }
  return nullptr;
}

}  // namespace kp
