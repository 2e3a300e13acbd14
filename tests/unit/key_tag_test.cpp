// Key tags: equal keys match, keys that differ anywhere (the middle of a long one too) do not.
#include "common/key_tag.h"

#include <doctest/doctest.h>

#include <set>
#include <string>

using kp::KeyTag;

TEST_CASE("key tag: equal keys, equal tags; the empty key too") {
  CHECK(KeyTag("user:1234:profile") == KeyTag(std::string("user:1234:profile")));
  CHECK(KeyTag("") == KeyTag(std::string()));
  CHECK(KeyTag("") != KeyTag(std::string(1, '\0')));  // length counts
}

TEST_CASE("key tag: keys differing in one byte anywhere get different tags") {
  const std::string base = "user:000000000000:profile:settings";  // 34 bytes: chunks and a tail
  std::set<uint64_t> tags{KeyTag(base)};
  for (size_t i = 0; i < base.size(); ++i) {
    std::string k = base;
    k[i] = static_cast<char>(k[i] ^ 1);
    tags.insert(KeyTag(k));
  }
  CHECK(tags.size() == base.size() + 1);
}

TEST_CASE("key tag: a prefix is another key; never the any-key marker") {
  std::set<uint64_t> tags;
  std::string k;
  for (int i = 0; i < 40; ++i) {
    k.push_back('a');
    uint64_t t = KeyTag(k);
    CHECK(t != kp::kAnyKey);
    tags.insert(t);
  }
  CHECK(tags.size() == 40);
}
