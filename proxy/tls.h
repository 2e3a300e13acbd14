// TLS on top of libuv streams (libuv has none): TlsContext is an OpenSSL SSL_CTX built from
// the configuration, for accepting clients or for connecting to backends; TlsStream is one
// connection's TLS state on memory BIOs. The connection's owner moves ciphertext between its
// socket and the stream, so no thread and no blocking call is involved.
#pragma once

#include <memory>
#include <string>

#include "common/buffer.h"

typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_st SSL;
typedef struct bio_st BIO;

namespace kp {

struct TlsOptions {
  std::string cert_file;  // own certificate (server: required; client: for mutual TLS)
  std::string key_file;
  std::string ca_file;  // peers are verified against these (client: the system's if empty)
  std::string ca_dir;
  bool verify_peer = true;   // client: verify the server; server: require client certificates
  std::string min_version;   // "1.2" (default) or "1.3"
  std::string ciphers;       // TLS 1.2 cipher list; empty: OpenSSL's default
  std::string ciphersuites;  // TLS 1.3 suites; empty: OpenSSL's default
};

class TlsContext {
 public:
  // nullptr with *error set when a file cannot be read or does not match.
  static std::shared_ptr<TlsContext> ForServer(const TlsOptions& o, std::string* error);
  static std::shared_ptr<TlsContext> ForClient(const TlsOptions& o, std::string* error);
  ~TlsContext();
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;

  SSL_CTX* get() const { return ctx_; }
  bool is_server() const { return server_; }
  bool verify_peer() const { return verify_; }

 private:
  TlsContext(SSL_CTX* ctx, bool server, bool verify)
      : ctx_(ctx), server_(server), verify_(verify) {}
  SSL_CTX* ctx_;
  bool server_;
  bool verify_;
};

class TlsStream {
 public:
  // `server_name`: for a client stream, the name sent as SNI and checked against the
  // server's certificate (when the context verifies peers); ignored for a server stream.
  TlsStream(std::shared_ptr<const TlsContext> ctx, const std::string& server_name);
  ~TlsStream();
  TlsStream(const TlsStream&) = delete;
  TlsStream& operator=(const TlsStream&) = delete;

  enum class Status { kOk, kClosed, kError };
  // Ciphertext from the socket: advances the handshake and appends any plaintext to `plain`.
  // kClosed: the peer ended the session (close_notify); kError: see error().
  Status Feed(const char* data, size_t len, Buffer* plain);
  // Plaintext to send: encrypted once the handshake is done (held until then).
  Status Write(const char* data, size_t len);
  // Appends the ciphertext ready for the socket (handshake, data, alerts) to `out`.
  void TakeOutput(Buffer* out);
  bool has_output() const;
  // Bytes given to Write() not yet taken by TakeOutput: plaintext held for the handshake and
  // ciphertext waiting in the output BIO.
  size_t pending_bytes() const;
  // A client stream: produces the first handshake message (call once, after connecting).
  Status Start();
  bool handshake_done() const { return done_; }
  const std::string& error() const { return error_; }

 private:
  Status Advance();
  Status Fatal(const char* what, int ssl_error);

  std::shared_ptr<const TlsContext> ctx_;
  SSL* ssl_ = nullptr;
  BIO* rbio_ = nullptr;  // ciphertext in (owned by ssl_)
  BIO* wbio_ = nullptr;  // ciphertext out (owned by ssl_)
  bool done_ = false;
  Buffer held_;  // plaintext written before the handshake finished
  std::string error_;
};

}  // namespace kp
