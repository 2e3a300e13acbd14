// FetchPrimaryCommandTable: one short blocking conversation with the primary.
#include "proxy/command_table_fetch.h"

#include <chrono>

#include "common/buffer.h"
#include "common/resp_writer.h"
#include "proxy/sync_conn.h"

namespace kp {

std::unique_ptr<CommandTable> FetchPrimaryCommandTable(const Config& config,
                                                       std::shared_ptr<const TlsContext> tls,
                                                       std::string* error) {
  auto deadline = SyncConn::Clock::now() +
                  std::chrono::milliseconds(static_cast<int64_t>(config.timeout_s * 1000.0 + 0.5));
  SyncConn conn(deadline, config.resp.ForReplies());
  if (!conn.Connect(config.primary, std::move(tls), config.backend_tls_server_name)) {
    *error = conn.error();
    return nullptr;
  }
  Buffer req;
  bool auth = !config.backend_password.empty();
  if (auth) resp::AppendAuth(req, config.backend_username, config.backend_password);
  std::string_view cmd[] = {"COMMAND"};
  resp::AppendCommand(req, cmd);
  std::string reply;
  if (!conn.Send(req)) {
    *error = conn.error();
    return nullptr;
  }
  if (auth) {
    if (!conn.ReadReply(&reply)) {
      *error = conn.error();
      return nullptr;
    }
    if (!reply.empty() && reply[0] == '-') {
      *error = "AUTH refused: " + reply.substr(1, reply.size() > 3 ? reply.size() - 3 : 0);
      return nullptr;
    }
  }
  if (!conn.ReadReply(&reply)) {
    *error = conn.error();
    return nullptr;
  }
  return CommandTable::FromCommandReply(reply, error);
}

}  // namespace kp
