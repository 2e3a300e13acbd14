// FetchCommandTable: one short blocking conversation with one node.
#include "proxy/command_table_fetch.h"

#include <chrono>

#include "common/buffer.h"
#include "common/resp_writer.h"
#include "proxy/sync_conn.h"

namespace kp {

std::unique_ptr<CommandTable> FetchCommandTable(const Config& config, const Endpoint& node,
                                                std::shared_ptr<const TlsContext> tls,
                                                std::chrono::milliseconds wait,
                                                std::string* error) {
  SyncConn conn(SyncConn::Clock::now() + wait, config.resp.ForReplies());
  if (!conn.Connect(node, std::move(tls), config.backend_tls_server_name)) {
    *error = node.ToString() + ": " + conn.error();
    return nullptr;
  }
  Buffer req;
  bool auth = !config.backend_password.empty();
  if (auth) resp::AppendAuth(req, config.backend_username, config.backend_password);
  std::string_view cmd[] = {"COMMAND"};
  resp::AppendCommand(req, cmd);
  std::string reply;
  if (!conn.Send(req)) {
    *error = node.ToString() + ": " + conn.error();
    return nullptr;
  }
  if (auth) {
    if (!conn.ReadReply(&reply)) {
      *error = node.ToString() + ": " + conn.error();
      return nullptr;
    }
    if (!reply.empty() && reply[0] == '-') {
      *error = node.ToString() +
               ": AUTH refused: " + reply.substr(1, reply.size() > 3 ? reply.size() - 3 : 0);
      return nullptr;
    }
  }
  if (!conn.ReadReply(&reply)) {
    *error = node.ToString() + ": " + conn.error();
    return nullptr;
  }
  return CommandTable::FromCommandReply(reply, error);
}

}  // namespace kp
