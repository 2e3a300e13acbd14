// BuildTlsContexts: the configuration's TLS settings as OpenSSL contexts.
#include "proxy/tls_config.h"

namespace kp {

bool BuildTlsContexts(const Config& c, std::shared_ptr<const TlsContext>* backend,
                      std::shared_ptr<const TlsContext>* clients, std::string* error) {
  backend->reset();
  clients->reset();
  if (c.backend_tls) {
    TlsOptions o;
    o.ca_file = c.backend_tls_ca_file;
    o.ca_dir = c.backend_tls_ca_dir;
    o.cert_file = c.backend_tls_cert_file;
    o.key_file = c.backend_tls_key_file;
    o.verify_peer = c.backend_tls_verify;
    o.min_version = c.tls_min_version;
    o.ciphers = c.tls_ciphers;
    o.ciphersuites = c.tls_ciphersuites;
    std::string why;
    *backend = TlsContext::ForClient(o, &why);
    if (!*backend) {
      *error = "backend_tls: " + why;
      return false;
    }
  }
  if (!c.tls_listen.empty()) {
    TlsOptions o;
    o.cert_file = c.tls_cert_file;
    o.key_file = c.tls_key_file;
    o.ca_file = c.tls_ca_file;
    o.verify_peer = c.tls_auth_clients;
    o.min_version = c.tls_min_version;
    o.ciphers = c.tls_ciphers;
    o.ciphersuites = c.tls_ciphersuites;
    std::string why;
    *clients = TlsContext::ForServer(o, &why);
    if (!*clients) {
      *error = "tls_listen: " + why;
      return false;
    }
  }
  return true;
}

}  // namespace kp
