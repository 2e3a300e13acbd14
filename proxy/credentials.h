// Credentials: the ACL users clients authenticated as (auth_mode passthrough), interned so a
// connection class carries a small number instead of a name and password. Shared by the
// workers: written when a client authenticates with a pair not seen before, read when a
// connection of that class is opened; never on the request path.
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kp {

class Credentials {
 public:
  // Distinct (user, password) pairs kept at most; past it AUTH gets an error.
  static constexpr uint32_t kMax = 4096;

  // The id of the pair (1...kMax), added if new; 0 when full.
  uint32_t Intern(std::string_view user, std::string_view password) {
    std::lock_guard<std::mutex> g(mu_);
    for (size_t i = 0; i < entries_.size(); ++i) {
      if (entries_[i].first == user && entries_[i].second == password) {
        return static_cast<uint32_t>(i + 1);
      }
    }
    if (entries_.size() >= kMax) return 0;
    entries_.emplace_back(user, password);
    return static_cast<uint32_t>(entries_.size());
  }
  // The pair for an id from Intern.
  std::pair<std::string, std::string> Get(uint32_t id) const {
    std::lock_guard<std::mutex> g(mu_);
    return id == 0 || id > entries_.size() ? std::pair<std::string, std::string>{}
                                           : entries_[id - 1];
  }

 private:
  mutable std::mutex mu_;
  std::vector<std::pair<std::string, std::string>> entries_;  // id - 1
};

}  // namespace kp
