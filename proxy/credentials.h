// Credentials: the ACL users clients authenticate as (auth_mode passthrough), interned so a
// connection class carries a small number instead of a name and password. Shared by the
// workers: written when a client authenticates, read when a connection of that class is
// opened; never on the request path.
//
// A pair is only a candidate until Redis has accepted it once: candidates are few and the
// oldest are forgotten, so a stream of wrong passwords cannot fill the table and lock real
// users out. Ids are never reused, so a forgotten candidate's id can never come to mean
// another user.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>

namespace kp {

class Credentials {
 public:
  static constexpr size_t kMaxVerified = 4096;   // accepted pairs kept
  static constexpr size_t kMaxCandidates = 256;  // pairs waiting for Redis's answer

  // The id of the pair (known or new candidate); 0 when the accepted pairs are full.
  uint32_t Intern(std::string_view user, std::string_view password) {
    std::lock_guard<std::mutex> g(mu_);
    for (const auto& [id, e] : entries_) {
      if (e.user == user && e.password == password) return id;
    }
    if (verified_ >= kMaxVerified || next_id_ == UINT32_MAX) return 0;
    uint32_t id = next_id_++;
    entries_.emplace(id, Entry{std::string(user), std::string(password), false});
    candidates_.push_back(id);
    while (candidates_.size() > kMaxCandidates) {
      entries_.erase(candidates_.front());
      candidates_.pop_front();
    }
    return id;
  }
  // Redis accepted the pair: it is kept. False when it was forgotten meanwhile (the caller
  // must not use the id: connections of that class could not authenticate).
  bool Verify(uint32_t id) {
    std::lock_guard<std::mutex> g(mu_);
    auto it = entries_.find(id);
    if (it == entries_.end()) return false;
    if (!it->second.verified) {
      if (verified_ >= kMaxVerified) return false;
      it->second.verified = true;
      ++verified_;
      for (auto c = candidates_.begin(); c != candidates_.end(); ++c) {
        if (*c == id) {
          candidates_.erase(c);
          break;
        }
      }
    }
    return true;
  }
  // The pair for an id from Intern; empty when unknown (forgotten).
  std::pair<std::string, std::string> Get(uint32_t id) const {
    std::lock_guard<std::mutex> g(mu_);
    auto it = entries_.find(id);
    if (it == entries_.end()) return {};
    return {it->second.user, it->second.password};
  }

 private:
  struct Entry {
    std::string user, password;
    bool verified = false;
  };
  mutable std::mutex mu_;
  std::map<uint32_t, Entry> entries_;
  std::deque<uint32_t> candidates_;  // oldest first
  size_t verified_ = 0;
  uint32_t next_id_ = 1;
};

}  // namespace kp
