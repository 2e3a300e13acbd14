// floor_forwarder: the least a multiplexing RESP proxy can do, as a yardstick for
// bench/targets.sh (built there with `cc -O2`; not part of the product). Clients' requests go
// over one backend connection, batched into one write per loop turn; replies are framed and
// handed back in order, one write per client per turn. That is the proxy's own design minus
// everything else it does (routing, replicas, failover, timeouts, limits, per-client
// ordering beyond FIFO, RESP3, partial-request resumption beyond keeping the bytes). What the
// proxy costs per request above this program is what its features cost; what both cost is
// the kernel's share, which no proxy of this design avoids.
//
// Usage: floor_forwarder LISTEN_PORT BACKEND_PORT   (both on 127.0.0.1)
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct {
  char* data;
  size_t len, cap;
} Buf;

typedef struct {
  Buf in, out;
  uint32_t gen;      // bumped when the descriptor is closed: replies for the old one drop
  int dirty, armed;  // queued for this turn's writes; EPOLLOUT registered
} Conn;

typedef struct {
  int fd;
  uint32_t gen;
} Owner;

static Conn* conns;
static size_t nconns;
static Owner* fifo;  // ring of reply owners, in request order
static size_t fifo_cap, fifo_head, fifo_tail;
static int* dirty;
static size_t ndirty;
static int ep, backend;

static void* xrealloc(void* p, size_t n) {
  void* q = realloc(p, n);
  if (q == NULL) {
    perror("realloc");
    exit(1);
  }
  return q;
}

static void append(Buf* b, const char* d, size_t n) {
  if (b->len + n > b->cap) {
    b->cap = (b->len + n) * 2;
    b->data = xrealloc(b->data, b->cap);
  }
  memcpy(b->data + b->len, d, n);
  b->len += n;
}

static void consume(Buf* b, size_t n) {
  memmove(b->data, b->data + n, b->len - n);
  b->len -= n;
}

static Conn* conn(int fd) {
  if ((size_t)fd >= nconns) {
    size_t n = (size_t)fd * 2 + 64;
    conns = xrealloc(conns, n * sizeof *conns);
    dirty = xrealloc(dirty, n * sizeof *dirty);
    memset(conns + nconns, 0, (n - nconns) * sizeof *conns);
    nconns = n;
  }
  return &conns[fd];
}

static void push_owner(int fd) {
  if (fifo_tail - fifo_head == fifo_cap) {
    size_t n = fifo_cap ? fifo_cap * 2 : 4096;
    Owner* f = xrealloc(NULL, n * sizeof *f);
    for (size_t i = 0; i < fifo_cap; ++i) f[i] = fifo[(fifo_head + i) % fifo_cap];
    free(fifo);
    fifo = f;
    fifo_tail -= fifo_head;
    fifo_head = 0;
    fifo_cap = n;
  }
  fifo[fifo_tail++ % fifo_cap] = (Owner){fd, conn(fd)->gen};
}

static void set_events(int fd, int want_out) {
  Conn* c = conn(fd);
  if (c->armed == want_out) return;
  struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.fd = fd};
  epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
  c->armed = want_out;
}

// Bytes of the complete line starting at p ("...\r\n"), 0 when incomplete.
static size_t line_len(const char* p, size_t n) {
  const char* e = memchr(p, '\n', n);
  return e == NULL ? 0 : (size_t)(e - p) + 1;
}

// Bytes of one complete request (multibulk, or an inline line), 0 when incomplete.
static size_t request_len(const char* p, size_t n) {
  size_t h = line_len(p, n);
  if (h == 0 || p[0] != '*') return h;
  long argc = atol(p + 1);
  for (long i = 0; i < argc; ++i) {
    size_t l = line_len(p + h, n - h);
    if (l == 0) return 0;
    long blen = atol(p + h + 1);
    h += l + (size_t)blen + 2;
    if (h > n) return 0;
  }
  return h;
}

// Bytes of one complete RESP2 reply, 0 when incomplete.
static size_t reply_len(const char* p, size_t n) {
  size_t h = line_len(p, n);
  if (h == 0) return 0;
  if (p[0] == '*') {
    long k = atol(p + 1);
    for (long i = 0; i < k; ++i) {
      size_t l = reply_len(p + h, n - h);
      if (l == 0) return 0;
      h += l;
    }
    return h;
  }
  if (p[0] != '$') return h;
  long blen = atol(p + 1);
  if (blen < 0) return h;
  return h + (size_t)blen + 2 <= n ? h + (size_t)blen + 2 : 0;
}

static void close_client(int fd) {
  Conn* c = conn(fd);
  epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
  close(fd);
  c->in.len = c->out.len = 0;
  c->armed = 0;
  c->gen++;
}

// Writes what `fd` has queued; the rest waits for EPOLLOUT. False when the peer is gone.
static int flush(int fd) {
  Conn* c = conn(fd);
  while (c->out.len > 0) {
    ssize_t w = write(fd, c->out.data, c->out.len);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && errno == EAGAIN) break;
    if (w <= 0) return 0;
    consume(&c->out, (size_t)w);
  }
  set_events(fd, c->out.len > 0);
  return 1;
}

static int nonblocking(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

int main(int argc, char** argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s LISTEN_PORT BACKEND_PORT\n", argv[0]);
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  struct sockaddr_in a = {.sin_family = AF_INET};
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  a.sin_port = htons((uint16_t)atoi(argv[1]));
  if (bind(ls, (struct sockaddr*)&a, sizeof a) != 0 || listen(ls, 1024) != 0) {
    perror("listen");
    return 1;
  }
  nonblocking(ls);
  backend = socket(AF_INET, SOCK_STREAM, 0);
  a.sin_port = htons((uint16_t)atoi(argv[2]));
  if (connect(backend, (struct sockaddr*)&a, sizeof a) != 0) {
    perror("connect");
    return 1;
  }
  nonblocking(backend);
  ep = epoll_create1(0);
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls};
  epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
  ev.data.fd = backend;
  epoll_ctl(ep, EPOLL_CTL_ADD, backend, &ev);
  conn(backend);
  static char rbuf[1 << 16];
  struct epoll_event evs[256];
  for (;;) {
    int k = epoll_wait(ep, evs, 256, -1);
    for (int i = 0; i < k; ++i) {
      int fd = evs[i].data.fd;
      if (fd == ls) {
        int c;
        while ((c = accept(ls, NULL, NULL)) >= 0) {
          nonblocking(c);
          conn(c)->armed = 0;
          struct epoll_event cev = {.events = EPOLLIN, .data.fd = c};
          epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
        }
        continue;
      }
      if (evs[i].events & EPOLLOUT) {
        if (!flush(fd) && fd != backend) {
          close_client(fd);
          continue;
        }
      }
      if (!(evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) continue;
      ssize_t r = read(fd, rbuf, sizeof rbuf);
      if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      if (fd == backend) {
        if (r <= 0) {
          fprintf(stderr, "backend closed\n");
          return 1;
        }
        Conn* b = conn(backend);
        append(&b->in, rbuf, (size_t)r);
        size_t off = 0, l;
        while (fifo_head < fifo_tail && (l = reply_len(b->in.data + off, b->in.len - off)) > 0) {
          Owner o = fifo[fifo_head++ % fifo_cap];
          Conn* c = conn(o.fd);
          if (c->gen == o.gen) {
            append(&c->out, b->in.data + off, l);
            if (!c->dirty) {
              c->dirty = 1;
              dirty[ndirty++] = o.fd;
            }
          }
          off += l;
        }
        consume(&b->in, off);
        continue;
      }
      if (r <= 0) {
        close_client(fd);
        continue;
      }
      Conn* c = conn(fd);
      append(&c->in, rbuf, (size_t)r);
      size_t off = 0, l;
      while ((l = request_len(c->in.data + off, c->in.len - off)) > 0) {
        push_owner(fd);
        off += l;
      }
      append(&conn(backend)->out, c->in.data, off);
      consume(&c->in, off);
    }
    if (conn(backend)->out.len > 0 && !flush(backend)) {
      fprintf(stderr, "backend write failed\n");
      return 1;
    }
    for (size_t i = 0; i < ndirty; ++i) {
      int fd = dirty[i];
      conns[fd].dirty = 0;
      if (!flush(fd)) close_client(fd);
    }
    ndirty = 0;
  }
}
