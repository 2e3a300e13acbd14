// TlsContext / TlsStream: OpenSSL with memory BIOs.
#include "proxy/tls.h"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <algorithm>

namespace kp {

namespace {

std::string OpenSslError(const std::string& what) {
  unsigned long e = ERR_get_error();
  std::string out = what;
  if (e != 0) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    out += ": ";
    out += buf;
  }
  ERR_clear_error();
  return out;
}

bool Configure(SSL_CTX* ctx, const TlsOptions& o, bool server, std::string* error) {
  int min = o.min_version == "1.3" ? TLS1_3_VERSION : TLS1_2_VERSION;
  SSL_CTX_set_min_proto_version(ctx, min);
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  if (!o.ciphers.empty() && SSL_CTX_set_cipher_list(ctx, o.ciphers.c_str()) != 1) {
    *error = OpenSslError("ciphers \"" + o.ciphers + "\"");
    return false;
  }
  if (!o.ciphersuites.empty() && SSL_CTX_set_ciphersuites(ctx, o.ciphersuites.c_str()) != 1) {
    *error = OpenSslError("ciphersuites \"" + o.ciphersuites + "\"");
    return false;
  }
  if (!o.cert_file.empty()) {
    if (SSL_CTX_use_certificate_chain_file(ctx, o.cert_file.c_str()) != 1) {
      *error = OpenSslError("certificate " + o.cert_file);
      return false;
    }
    std::string key = o.key_file.empty() ? o.cert_file : o.key_file;
    if (SSL_CTX_use_PrivateKey_file(ctx, key.c_str(), SSL_FILETYPE_PEM) != 1) {
      *error = OpenSslError("private key " + key);
      return false;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
      *error = OpenSslError("private key " + key + " does not match " + o.cert_file);
      return false;
    }
  } else if (server) {
    *error = "a certificate and key are needed to accept TLS";
    return false;
  }
  if (server) {
    // Without it, resuming a session fails when client certificates are verified (Java and
    // others resume by default).
    static const unsigned char kContext[] = "kompress";
    SSL_CTX_set_session_id_context(ctx, kContext, sizeof kContext - 1);
  }
  if (!o.ca_file.empty() || !o.ca_dir.empty()) {
    if (SSL_CTX_load_verify_locations(ctx, o.ca_file.empty() ? nullptr : o.ca_file.c_str(),
                                      o.ca_dir.empty() ? nullptr : o.ca_dir.c_str()) != 1) {
      *error = OpenSslError("CA " + (o.ca_file.empty() ? o.ca_dir : o.ca_file));
      return false;
    }
  } else if (!server && SSL_CTX_set_default_verify_paths(ctx) != 1) {
    *error = OpenSslError("the system's CA certificates");
    return false;
  }
  if (o.verify_peer) {
    // Server: clients must present a certificate the CA signed (tls_auth_clients yes).
    SSL_CTX_set_verify(
        ctx, server ? SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT : SSL_VERIFY_PEER, nullptr);
  } else {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
  }
  return true;
}

std::shared_ptr<TlsContext> Build(const TlsOptions& o, bool server, std::string* error, auto make) {
  SSL_CTX* ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
  if (ctx == nullptr) {
    *error = OpenSslError("cannot create a TLS context");
    return nullptr;
  }
  if (!Configure(ctx, o, server, error)) {
    SSL_CTX_free(ctx);
    return nullptr;
  }
  return make(ctx);
}

}  // namespace

std::shared_ptr<TlsContext> TlsContext::ForServer(const TlsOptions& o, std::string* error) {
  return Build(o, true, error, [&](SSL_CTX* ctx) {
    return std::shared_ptr<TlsContext>(new TlsContext(ctx, true, o.verify_peer));
  });
}

std::shared_ptr<TlsContext> TlsContext::ForClient(const TlsOptions& o, std::string* error) {
  return Build(o, false, error, [&](SSL_CTX* ctx) {
    return std::shared_ptr<TlsContext>(new TlsContext(ctx, false, o.verify_peer));
  });
}

TlsContext::~TlsContext() {
  SSL_CTX_free(ctx_);
}

TlsStream::TlsStream(std::shared_ptr<const TlsContext> ctx, const std::string& server_name)
    : ctx_(std::move(ctx)) {
  ssl_ = SSL_new(ctx_->get());
  rbio_ = BIO_new(BIO_s_mem());
  wbio_ = BIO_new(BIO_s_mem());
  SSL_set_bio(ssl_, rbio_, wbio_);
  if (ctx_->is_server()) {
    SSL_set_accept_state(ssl_);
  } else {
    SSL_set_connect_state(ssl_);
    if (!server_name.empty()) {
      // SNI, and (when verifying) the name the certificate must carry. An IP address is
      // checked against the certificate's IP entries instead.
      std::string bare = server_name;
      if (bare.size() > 2 && bare.front() == '[') bare = bare.substr(1, bare.size() - 2);
      unsigned char addr[16];
      bool is_ip = inet_pton(AF_INET, bare.c_str(), addr) == 1 ||
                   inet_pton(AF_INET6, bare.c_str(), addr) == 1;
      if (!is_ip) SSL_set_tlsext_host_name(ssl_, server_name.c_str());
      if (ctx_->verify_peer()) {
        X509_VERIFY_PARAM* param = SSL_get0_param(ssl_);
        if (is_ip) {
          X509_VERIFY_PARAM_set1_ip_asc(param, bare.c_str());
        } else {
          X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
          X509_VERIFY_PARAM_set1_host(param, server_name.c_str(), 0);
        }
      }
    }
  }
}

TlsStream::~TlsStream() {
  SSL_free(ssl_);
}

TlsStream::Status TlsStream::Fatal(const char* what, int ssl_error) {
  std::string detail;
  long verify = SSL_get_verify_result(ssl_);
  if (verify != X509_V_OK) {
    detail =
        std::string("certificate verification failed: ") + X509_verify_cert_error_string(verify);
  } else if (ssl_error == SSL_ERROR_SYSCALL) {
    detail = "unexpected end of the TLS stream";
  }
  error_ = detail.empty() ? OpenSslError(what) : std::string(what) + ": " + detail;
  ERR_clear_error();
  return Status::kError;
}

size_t TlsStream::pending_bytes() const {
  return held_.size() + BIO_ctrl_pending(wbio_);
}

TlsStream::Status TlsStream::Start() {
  return Advance();
}

TlsStream::Status TlsStream::Advance() {
  if (done_) return Status::kOk;
  int rc = SSL_do_handshake(ssl_);
  if (rc == 1) {
    done_ = true;
    if (!held_.empty()) {
      Buffer held;
      std::swap(held, held_);
      return Write(held.data(), held.size());
    }
    return Status::kOk;
  }
  int err = SSL_get_error(ssl_, rc);
  if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) return Status::kOk;
  return Fatal("TLS handshake", err);
}

TlsStream::Status TlsStream::Feed(const char* data, size_t len, Buffer* plain) {
  while (len > 0) {
    int n = BIO_write(rbio_, data, static_cast<int>(std::min<size_t>(len, 1 << 30)));
    if (n <= 0) return Fatal("TLS input", SSL_ERROR_SSL);
    data += n;
    len -= static_cast<size_t>(n);
  }
  if (!done_) {
    Status st = Advance();
    if (st != Status::kOk || !done_) return st;
  }
  for (;;) {
    char* p = plain->PrepareWrite(16 * 1024);
    int n = SSL_read(ssl_, p, static_cast<int>(std::min<size_t>(plain->writable(), 1 << 30)));
    if (n > 0) {
      plain->Commit(static_cast<size_t>(n));
      continue;
    }
    int err = SSL_get_error(ssl_, n);
    if (err == SSL_ERROR_WANT_READ) return Status::kOk;
    if (err == SSL_ERROR_ZERO_RETURN) return Status::kClosed;
    return Fatal("TLS", err);
  }
}

TlsStream::Status TlsStream::Write(const char* data, size_t len) {
  if (!done_) {
    held_.Append(data, len);
    return Status::kOk;
  }
  while (len > 0) {
    int n = SSL_write(ssl_, data, static_cast<int>(std::min<size_t>(len, 1 << 30)));
    if (n <= 0) return Fatal("TLS output", SSL_get_error(ssl_, n));
    data += n;
    len -= static_cast<size_t>(n);
  }
  return Status::kOk;
}

bool TlsStream::has_output() const {
  return BIO_ctrl_pending(wbio_) > 0;
}

void TlsStream::TakeOutput(Buffer* out) {
  for (;;) {
    size_t pending = BIO_ctrl_pending(wbio_);
    if (pending == 0) return;
    char* p = out->PrepareWrite(pending);
    int n = BIO_read(wbio_, p, static_cast<int>(std::min<size_t>(pending, 1 << 30)));
    if (n <= 0) return;
    out->Commit(static_cast<size_t>(n));
  }
}

}  // namespace kp
