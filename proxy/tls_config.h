// BuildTlsContexts: turns the TLS settings of a Config into the contexts connections use (for
// backends and Sentinels; for clients of tls_listen). Reading the certificate and key files
// here, at start-up and on each reload, is what validates them.
#pragma once

#include <memory>
#include <string>

#include "config/config.h"
#include "proxy/tls.h"

namespace kp {

// nullptr where TLS is off; false with *error ("backend_tls: ..." / "tls_listen: ...") when a
// file cannot be used.
bool BuildTlsContexts(const Config& c, std::shared_ptr<const TlsContext>* backend,
                      std::shared_ptr<const TlsContext>* clients, std::string* error);

}  // namespace kp
