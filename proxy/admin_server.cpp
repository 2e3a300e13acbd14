// AdminServer: accepts, reads one request head, answers, closes.
#include "proxy/admin_server.h"

#include <cstdio>
#include <cstring>

#include "common/logging.h"
#include "proxy/client_budget.h"

namespace kp {

namespace {
constexpr size_t kMaxHead = 8192;
// Admin connections open at once, and how long one may take to be answered.
constexpr size_t kMaxConns = 32;  // descriptors.cpp reserves as many
constexpr uint64_t kConnTimeoutMs = 5000;

void AppendMetric(std::string& out, const char* name, const char* help, const char* type) {
  out += "# HELP ";
  out += name;
  out += ' ';
  out += help;
  out += "\n# TYPE ";
  out += name;
  out += ' ';
  out += type;
  out += '\n';
}

void AppendValue(std::string& out, const std::string& series, uint64_t v) {
  out += series;
  out += ' ';
  out += std::to_string(v);
  out += '\n';
}
const char* RoleName(const Backend& b) {
  switch (b.role()) {
    case BackendRole::kPrimary:
      return "primary";
    case BackendRole::kReplica:
      return "replica";
    case BackendRole::kNone:
      break;
  }
  return "none";
}

void AppendSigned(std::string& out, const std::string& series, int64_t v) {
  out += series;
  out += ' ';
  out += std::to_string(v);
  out += '\n';
}
}  // namespace

struct AdminServer::Conn {
  AdminServer* owner;
  uv_tcp_t tcp;
  uv_write_t write_req;
  std::string in;
  std::string out;
  bool answered = false;
  bool closing = false;
  uint64_t started_ms = 0;
  uint64_t seq = 0;  // accept order: many accepts share one uv_now() millisecond
};

void AdminServer::CloseConn(Conn* c) {
  if (c->closing) return;
  c->closing = true;
  c->owner->conns_.erase(c);
  uv_close(reinterpret_cast<uv_handle_t*>(&c->tcp),
           [](uv_handle_t* h) { delete static_cast<Conn*>(h->data); });
}

AdminServer::AdminServer(uv_loop_t* loop, const Topology& topology,
                         std::function<std::vector<const WorkerStats*>()> stats,
                         std::function<size_t()> clients)
    : loop_(loop), topology_(topology), stats_(std::move(stats)), clients_(std::move(clients)) {}

bool AdminServer::Start(const std::string& host_port) {
  size_t colon = host_port.rfind(':');
  std::string host = host_port.substr(0, colon);
  int port = std::atoi(host_port.c_str() + colon + 1);
  if (host.size() > 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  sockaddr_storage addr{};
  if (uv_ip4_addr(host.c_str(), port, reinterpret_cast<sockaddr_in*>(&addr)) != 0 &&
      uv_ip6_addr(host.c_str(), port, reinterpret_cast<sockaddr_in6*>(&addr)) != 0) {
    if (host == "localhost") {
      uv_ip4_addr("127.0.0.1", port, reinterpret_cast<sockaddr_in*>(&addr));
    } else {
      Log().critical("admin_listen {}: host must be an IP address or localhost", host_port);
      return false;
    }
  }
  uv_tcp_init(loop_, &listener_);
  listener_.data = this;
  int rc = uv_tcp_bind(&listener_, reinterpret_cast<sockaddr*>(&addr), 0);
  if (rc == 0) {
    rc = uv_listen(reinterpret_cast<uv_stream_t*>(&listener_), 64, [](uv_stream_t* s, int st) {
      if (st == 0) static_cast<AdminServer*>(s->data)->OnConnection();
    });
  }
  if (rc != 0) {
    Log().critical("cannot listen on admin_listen {}: {}", host_port, uv_strerror(rc));
    uv_close(reinterpret_cast<uv_handle_t*>(&listener_), nullptr);
    return false;
  }
  listening_ = true;
  // Connections that have not been answered and closed in time are closed: a client that
  // sends nothing (or a byte a minute) must not keep descriptors the proxy needs.
  uv_timer_init(loop_, &sweep_);
  sweep_.data = this;
  uv_timer_start(
      &sweep_,
      [](uv_timer_t* t) {
        auto* self = static_cast<AdminServer*>(t->data);
        uint64_t now = uv_now(self->loop_);
        std::vector<Conn*> late;
        for (Conn* c : self->conns_) {
          if (now - c->started_ms >= kConnTimeoutMs) late.push_back(c);
        }
        for (Conn* c : late) CloseConn(c);
      },
      500, 500);
  Log().info("admin endpoint on http://{}/metrics", host_port);
  return true;
}

void AdminServer::Stop() {
  if (!listening_) return;
  listening_ = false;
  uv_close(reinterpret_cast<uv_handle_t*>(&listener_), nullptr);
  uv_timer_stop(&sweep_);
  uv_close(reinterpret_cast<uv_handle_t*>(&sweep_), nullptr);
  std::vector<Conn*> open(conns_.begin(), conns_.end());
  for (Conn* c : open) CloseConn(c);
}

void AdminServer::OnConnection() {
  auto* c = new Conn{this, {}, {}, {}, {}, false, false, uv_now(loop_), ++accepted_};
  uv_tcp_init(loop_, &c->tcp);
  c->tcp.data = c;
  conns_.insert(c);
  if (uv_accept(reinterpret_cast<uv_stream_t*>(&listener_),
                reinterpret_cast<uv_stream_t*>(&c->tcp)) != 0) {
    CloseConn(c);
    return;
  }
  if (conns_.size() > kMaxConns) {
    // Capped apart from client connections. The oldest goes: idle connections piling up
    // (someone holding them open) must not lock the next scrape out.
    Conn* oldest = c;
    for (Conn* o : conns_) {
      if (o->seq < oldest->seq) oldest = o;
    }
    CloseConn(oldest);
    if (oldest == c) return;
  }
  uv_read_start(
      reinterpret_cast<uv_stream_t*>(&c->tcp),
      [](uv_handle_t* h, size_t, uv_buf_t* buf) {
        static char scratch[4096];  // main thread only; copied into Conn::in at once
        (void)h;
        *buf = uv_buf_init(scratch, sizeof scratch);
      },
      [](uv_stream_t* s, ssize_t n, const uv_buf_t* buf) {
        auto* conn = static_cast<Conn*>(s->data);
        if (n < 0) {
          if (!conn->answered) CloseConn(conn);
          return;
        }
        if (conn->answered) return;
        conn->in.append(buf->base, static_cast<size_t>(n));
        bool complete = conn->in.find("\r\n\r\n") != std::string::npos ||
                        conn->in.find("\n\n") != std::string::npos;
        if (!complete && conn->in.size() < kMaxHead) return;
        conn->answered = true;
        uv_read_stop(s);
        conn->out = conn->owner->Respond(conn->in);
        uv_buf_t b = uv_buf_init(conn->out.data(), static_cast<unsigned>(conn->out.size()));
        conn->write_req.data = conn;
        if (uv_write(&conn->write_req, s, &b, 1,
                     [](uv_write_t* req, int) { CloseConn(static_cast<Conn*>(req->data)); }) != 0) {
          CloseConn(conn);
        }
      });
}

std::string AdminServer::Respond(const std::string& head) const {
  std::string method, path;
  size_t sp1 = head.find(' ');
  size_t sp2 = sp1 == std::string::npos ? sp1 : head.find(' ', sp1 + 1);
  if (sp1 != std::string::npos && sp2 != std::string::npos) {
    method = head.substr(0, sp1);
    path = head.substr(sp1 + 1, sp2 - sp1 - 1);
  }
  size_t q = path.find('?');
  if (q != std::string::npos) path.resize(q);
  int status = 200;
  std::string body;
  std::string type = "text/plain; charset=utf-8";
  if (method != "GET" && method != "HEAD") {
    status = method.empty() ? 400 : 405;
    body = status == 400 ? "bad request\n" : "method not allowed\n";
  } else if (path == "/metrics") {
    body = Metrics();
    type = "text/plain; version=0.0.4; charset=utf-8";
  } else if (path == "/info" && info_) {
    body = info_();
    type = "application/json";
  } else if (path == "/healthz") {
    body = "ok\n";
  } else if (path == "/readyz") {
    bool any_up = false;
    ForEachNode([&](const Backend& b) {
      if (b.role() == BackendRole::kNone) return;
      if (topology_.cluster()) body += "shard " + std::to_string(b.group()) + " ";
      body += std::string(RoleName(b)) + " " + b.name() + (b.up() ? " up" : " down");
      if (b.is_primary() && b.up() && !b.serves_writes()) body += " (not confirmed as primary)";
      if (b.is_replica() && b.up() && !b.serves_reads()) body += " (gets no reads)";
      if (b.is_replica() && b.serves_reads() && !b.answering()) body += " (not answering)";
      body += "\n";
      any_up = any_up || b.up();
    });
    if (topology_.main().primary() == nullptr) body += "no primary known\n";
    if (notes_) body += notes_();
    if (draining_) {
      status = 503;
      body = "draining\n" + body;
    } else if (!any_up) {
      status = 503;
      body = "no backend up\n" + body;
    } else if (covered_ && !covered_()) {
      status = 503;
      body = "hash slots not served\n" + body;
    } else {
      body = "ready\n" + body;
    }
  } else {
    status = 404;
    body = "not found; try /metrics, /healthz, /readyz, /info\n";
  }
  const char* reason = status == 200   ? "OK"
                       : status == 404 ? "Not Found"
                       : status == 405 ? "Method Not Allowed"
                       : status == 503 ? "Service Unavailable"
                                       : "Bad Request";
  std::string resp =
      "HTTP/1.1 " + std::to_string(status) + " " + reason + "\r\nContent-Type: " + type +
      "\r\nContent-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n";
  if (method != "HEAD") resp += body;
  return resp;
}

std::string AdminServer::NodeLabels(const Backend& b) const {
  std::string l = "backend=\"" + b.name() + "\"";
  if (topology_.cluster()) l += ",shard=\"" + std::to_string(b.group()) + "\"";
  return l;
}

std::string AdminServer::Metrics() const {
  std::vector<const WorkerStats*> all = stats_();
  auto sum = [&](auto field) {
    uint64_t v = 0;
    for (const WorkerStats* s : all) v += (s->*field).value();
    return v;
  };
  std::string out;
  out.reserve(8192);

  AppendMetric(out, "kompress_backend_up", "1 when the backend answers its probes.", "gauge");
  auto each = [&](BackendRole role, auto fn) {
    ForEachNode([&](const Backend& b) {
      if (b.role() == role) fn(b);
    });
  };
  for (BackendRole role : {BackendRole::kPrimary, BackendRole::kReplica}) {
    each(role, [&](const Backend& b) {
      AppendValue(out, "kompress_backend_up{" + NodeLabels(b) + ",role=\"" + RoleName(b) + "\"}",
                  b.up() ? 1 : 0);
    });
  }
  AppendMetric(out, "kompress_primary",
               "The node that takes writes now (1 while it is up and confirmed as primary).",
               "gauge");
  each(BackendRole::kPrimary, [&](const Backend& b) {
    AppendValue(out, "kompress_primary{" + NodeLabels(b) + "}", b.serves_writes() ? 1 : 0);
  });
  AppendMetric(out, "kompress_topology_changes_total",
               "Times the primary changed (failover, switchover).", "counter");
  uint64_t changes = 0;
  for (size_t g = 0; g < topology_.groups(); ++g) changes += topology_.group(g)->topology_changes();
  AppendValue(out, "kompress_topology_changes_total", changes);
  AppendMetric(out, "kompress_replica_serves_reads",
               "1 when the replica is up, replicates the current primary, is linked, not "
               "syncing and within the lag limits.",
               "gauge");
  each(BackendRole::kReplica, [&](const Backend& b) {
    AppendValue(out, "kompress_replica_serves_reads{" + NodeLabels(b) + "}",
                b.serves_reads() ? 1 : 0);
  });
  AppendMetric(out, "kompress_replica_answering",
               "0 while the replica leaves its health check unanswered (cheap reads of clients "
               "whose replies are not large go elsewhere), else 1.",
               "gauge");
  each(BackendRole::kReplica, [&](const Backend& b) {
    AppendValue(out, "kompress_replica_answering{" + NodeLabels(b) + "}", b.answering() ? 1 : 0);
  });
  AppendMetric(out, "kompress_replica_lag_bytes",
               "Replication stream bytes the replica is behind the primary (-1: unknown).",
               "gauge");
  each(BackendRole::kReplica, [&](const Backend& b) {
    AppendSigned(out, "kompress_replica_lag_bytes{" + NodeLabels(b) + "}", b.lag_bytes);
  });
  AppendMetric(out, "kompress_replica_lag_seconds",
               "How long ago the primary last had no data the replica lacks (-1: unknown).",
               "gauge");
  each(BackendRole::kReplica, [&](const Backend& b) {
    char v[64];
    std::snprintf(v, sizeof v, "%.3f", b.lag_seconds);
    out += "kompress_replica_lag_seconds{" + NodeLabels(b) + "} " + v + "\n";
  });
  if (extra_metrics_) out += extra_metrics_();
  AppendMetric(out, "kompress_client_connections", "Client connections open now.", "gauge");
  AppendValue(out, "kompress_client_connections", clients_());
  AppendMetric(out, "kompress_client_connections_total", "Client connections accepted.", "counter");
  AppendValue(out, "kompress_client_connections_total", sum(&WorkerStats::connections_accepted));

  AppendMetric(out, "kompress_requests_total", "Requests by where they were sent.", "counter");
  AppendValue(out, "kompress_requests_total{route=\"replica\"}", sum(&WorkerStats::reads_replica));
  AppendValue(out, "kompress_requests_total{route=\"primary_read\"}",
              sum(&WorkerStats::reads_primary));
  AppendValue(out, "kompress_requests_total{route=\"primary_read_your_writes\"}",
              sum(&WorkerStats::reads_primary_ryw));
  AppendValue(out, "kompress_requests_total{route=\"primary_write\"}", sum(&WorkerStats::writes));
  AppendValue(out, "kompress_requests_total{route=\"failover\"}", sum(&WorkerStats::failovers));
  AppendValue(out, "kompress_requests_total{route=\"resent\"}", sum(&WorkerStats::resent));
  if (topology_.cluster()) {
    AppendValue(out, "kompress_requests_total{route=\"absent_recheck\"}",
                sum(&WorkerStats::absent_rechecks));
  }
  AppendValue(out, "kompress_requests_total{route=\"pinned\"}", sum(&WorkerStats::pinned_requests));
  AppendMetric(out, "kompress_writes_held_for_reads_total",
               "Writes held until the same client's earlier reads on replicas answered "
               "(they could otherwise see the write).",
               "counter");
  AppendValue(out, "kompress_writes_held_for_reads_total", sum(&WorkerStats::fenced_writes));
  AppendMetric(out, "kompress_requests_received_total",
               "Requests received from clients (all kinds).", "counter");
  AppendValue(out, "kompress_requests_received_total", sum(&WorkerStats::requests));
  AppendMetric(out, "kompress_errors_total", "Error replies generated by the proxy.", "counter");
  AppendValue(out, "kompress_errors_total", sum(&WorkerStats::errors));
  AppendMetric(out, "kompress_protocol_errors_total", "Clients closed for malformed RESP.",
               "counter");
  AppendValue(out, "kompress_protocol_errors_total", sum(&WorkerStats::protocol_errors));
  AppendMetric(out, "kompress_tls_failures_total",
               "TLS clients closed for a failed handshake or malformed TLS.", "counter");
  AppendValue(out, "kompress_tls_failures_total", sum(&WorkerStats::tls_failures));
  AppendMetric(out, "kompress_limit_drops_total", "Clients dropped for exceeding a limit.",
               "counter");
  for (size_t i = 1; i < kRespLimitCount; ++i) {
    uint64_t v = 0;
    for (const WorkerStats* st : all) v += st->limit_drops[i].value();
    AppendValue(out,
                std::string("kompress_limit_drops_total{limit=\"") +
                    RespLimitName(static_cast<RespLimit>(i)) + "\"}",
                v);
  }
  AppendMetric(
      out, "kompress_client_drops_total",
      "Clients closed by the proxy because of the replies held for them (or left unread), by "
      "reason.",
      "counter");
  for (size_t i = 0; i < kDropReasonCount; ++i) {
    uint64_t v = 0;
    for (const WorkerStats* st : all) v += st->client_drops[i].value();
    AppendValue(out,
                std::string("kompress_client_drops_total{reason=\"") +
                    DropReasonName(static_cast<DropReason>(i)) + "\"}",
                v);
  }
  AppendMetric(out, "kompress_read_retries_total",
               "Reads that timed out on a replica: re-run on the primary within the retry "
               "budget, or answered with the timeout when over it.",
               "counter");
  AppendValue(out, "kompress_read_retries_total{outcome=\"retried\"}",
              sum(&WorkerStats::read_retries));
  AppendValue(out, "kompress_read_retries_total{outcome=\"over_budget\"}",
              sum(&WorkerStats::read_retries_refused));
  AppendMetric(out, "kompress_pinned_sessions_total",
               "Sessions given a dedicated primary connection.", "counter");
  AppendValue(out, "kompress_pinned_sessions_total", sum(&WorkerStats::pinned_sessions));

  AppendMetric(out, "kompress_request_duration_seconds",
               "Time from request arrival to reply ready, by kind.", "histogram");
  for (int kind = 0; kind < 2; ++kind) {
    const char* label = kind == 0 ? "read" : "write";
    uint64_t cumulative = 0;
    char le[32];
    for (size_t i = 0; i <= LatencyHistogram::kBuckets; ++i) {
      for (const WorkerStats* s : all) {
        cumulative += (kind == 0 ? s->read_latency : s->write_latency).count(i);
      }
      if (i < LatencyHistogram::kBuckets) {
        std::snprintf(le, sizeof le, "%g", LatencyHistogram::kBounds[i]);
      } else {
        std::snprintf(le, sizeof le, "+Inf");
      }
      AppendValue(out,
                  std::string("kompress_request_duration_seconds_bucket{kind=\"") + label +
                      "\",le=\"" + le + "\"}",
                  cumulative);
    }
    uint64_t sum_ns = 0;
    for (const WorkerStats* s : all) {
      sum_ns += (kind == 0 ? s->read_latency : s->write_latency).sum_ns();
    }
    char line[128];
    std::snprintf(line, sizeof line, "kompress_request_duration_seconds_sum{kind=\"%s\"} %.9f\n",
                  label, static_cast<double>(sum_ns) / 1e9);
    out += line;
    AppendValue(out, std::string("kompress_request_duration_seconds_count{kind=\"") + label + "\"}",
                cumulative);
  }
  return out;
}

}  // namespace kp
