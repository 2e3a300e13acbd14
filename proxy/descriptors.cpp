// Descriptors: RLIMIT_NOFILE planning at start-up, shortage counting at run time.
#include "proxy/descriptors.h"

#include <sys/resource.h>
#include <uv.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <mutex>

#include "common/logging.h"

namespace kp {

namespace {
std::atomic<uint64_t> g_shortages{0};
std::mutex g_log_mu;
uint64_t g_logged_count = 0;
uint64_t g_last_log_ms = 0;
bool g_logged_once = false;
constexpr uint64_t kLogIntervalMs = 10'000;
}  // namespace

uint64_t DescriptorReserve(unsigned workers, uint64_t backends, uint64_t sentinels, bool admin) {
  // Discovery (Sentinel) can add nodes after start-up: room for a few more than configured.
  uint64_t nodes = backends + 4;
  uint64_t per_worker = 4 + 2 * nodes;  // loop fds, one shared connection + a reconnect
  // 16: stdio, the listener, the spare for refusing clients, the main loop; 32: the admin
  // endpoint's connection cap.
  return 16 + workers * per_worker + 2 * nodes + 2 * sentinels + (admin ? 32 : 0);
}

DescriptorPlan PlanDescriptors(uint64_t wanted_clients, uint64_t reserve) {
  DescriptorPlan plan;
  plan.reserve = reserve;
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
    plan.limit = 1024;
  } else {
    plan.limit = rl.rlim_cur;
    uint64_t want = wanted_clients + reserve;
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want) {
      // As Redis does: raise the soft limit toward what is needed, within the hard limit.
      rlimit raised = rl;
      raised.rlim_cur = rl.rlim_max == RLIM_INFINITY ? want : std::min<uint64_t>(want, rl.rlim_max);
      if (raised.rlim_cur > rl.rlim_cur && setrlimit(RLIMIT_NOFILE, &raised) == 0) {
        plan.limit = raised.rlim_cur;
        plan.raised = true;
      }
    }
  }
  uint64_t room = plan.limit > reserve ? plan.limit - reserve : 0;
  plan.max_clients = std::max<uint64_t>(1, std::min(wanted_clients, room));
  return plan;
}

bool IsDescriptorShortage(int err) {
  if (err < 0) {
    return err == UV_EMFILE || err == UV_ENFILE || err == UV_ENOBUFS || err == UV_ENOMEM;
  }
  return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM;
}

void NoteDescriptorShortage(const char* where) {
  uint64_t total = g_shortages.fetch_add(1, std::memory_order_relaxed) + 1;
  std::lock_guard<std::mutex> g(g_log_mu);
  uint64_t now = uv_hrtime() / 1'000'000;
  if (g_logged_once && now - g_last_log_ms < kLogIntervalMs) return;
  uint64_t since = total - g_logged_count;
  g_logged_count = total;
  g_last_log_ms = now;
  g_logged_once = true;
  std::string count = std::to_string(since);
  LogFields f{{"event", "descriptor_shortage"}, {"where", where}, {"count", count}};
  Log().error(
      "out of file descriptors ({}): {} time(s) since the last report, {} in all; raise the "
      "descriptor limit (ulimit -n) or lower max_clients. Backends are not blamed for it",
      where, since, total);
}

uint64_t DescriptorShortages() {
  return g_shortages.load(std::memory_order_relaxed);
}

}  // namespace kp
