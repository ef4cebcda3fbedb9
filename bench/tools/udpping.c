/*
 * udpping — the UDP ping-pong floor under ckt's calls benchmark.
 *
 *   udpping -serve -addr 127.0.0.1:7410
 *   udpping -to 127.0.0.1:7410 -n 100000 -size 64 -inflight 1
 *   udpping -to 127.0.0.1:7410 -n 1000000 -size 64 -inflight 64
 *
 * The server echoes every datagram to its sender until killed.  The client
 * keeps INFLIGHT datagrams of SIZE bytes in flight, each stamped with a slot
 * and a sequence number, until N echoes have come back; a datagram whose
 * echo takes longer than -timeout counts as lost and its slot sends a new
 * one.  It prints one line with the round trips per second and the
 * round-trip percentiles (nearest rank on the sorted samples, as cktbench).
 * Plain blocking sockets, batched with recvmmsg/sendmmsg: no event loop,
 * no crypto, no QUIC, so the line is what the kernel alone costs.
 */
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "cmdline.h"

enum {
  BATCH = 64,        /* datagrams per recvmmsg/sendmmsg */
  MAX_DGRAM = 65507, /* largest UDP payload over IPv4 */
  HDR_LEN = 12,      /* u64 sequence number + u32 slot */
  GIVE_UP_MS = 3000  /* no echo at all for this long: stop */
};

/* ---- flags ------------------------------------------------------------- */

typedef struct opts {
  int serve;
  const char *addr, *to;
  unsigned long n, size, inflight, warmup, timeout_ms;
} opts;

static int resolve(const char *hostport, struct sockaddr_storage *ss,
                   socklen_t *sslen) {
  char host[256];
  const char *colon = strrchr(hostport, ':');
  const char *h = hostport;
  size_t hlen;
  struct addrinfo hints, *res;
  int rv;
  if (!colon || colon == hostport || colon[1] == '\0') {
    return -1;
  }
  hlen = (size_t)(colon - hostport);
  if (h[0] == '[' && hlen >= 2 && h[hlen - 1] == ']') {
    h++;
    hlen -= 2;
  }
  if (hlen >= sizeof(host)) {
    return -1;
  }
  memcpy(host, h, hlen);
  host[hlen] = '\0';
  memset(&hints, 0, sizeof(hints));
  hints.ai_socktype = SOCK_DGRAM;
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
  if ((rv = getaddrinfo(host, colon + 1, &hints, &res)) != 0) {
    return -1;
  }
  memcpy(ss, res->ai_addr, res->ai_addrlen);
  *sslen = res->ai_addrlen;
  freeaddrinfo(res);
  return 0;
}

static void format_addr(const struct sockaddr_storage *ss, socklen_t len,
                        char *out, size_t outlen) {
  char host[NI_MAXHOST], port[NI_MAXSERV];
  if (getnameinfo((const struct sockaddr *)ss, len, host, sizeof(host), port,
                  sizeof(port), NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
    snprintf(out, outlen, "?");
  } else if (ss->ss_family == AF_INET6) {
    snprintf(out, outlen, "[%s]:%s", host, port);
  } else {
    snprintf(out, outlen, "%s:%s", host, port);
  }
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- server ------------------------------------------------------------- */

static int serve(const opts *o) {
  static unsigned char bufs[BATCH][MAX_DGRAM];
  struct mmsghdr msgs[BATCH];
  struct iovec iovs[BATCH];
  struct sockaddr_storage peers[BATCH], ss;
  socklen_t sslen;
  char name[NI_MAXHOST + NI_MAXSERV + 4];
  int fd, i;

  if (resolve(o->addr, &ss, &sslen) != 0) {
    fprintf(stderr, "udpping: '%s' is not a numeric HOST:PORT.\n", o->addr);
    return 1;
  }
  fd = socket(ss.ss_family, SOCK_DGRAM, 0);
  if (fd < 0 || bind(fd, (struct sockaddr *)&ss, sslen) != 0) {
    fprintf(stderr, "udpping: cannot listen on %s: %s\n", o->addr,
            strerror(errno));
    return 1;
  }
  sslen = sizeof(ss);
  getsockname(fd, (struct sockaddr *)&ss, &sslen);
  format_addr(&ss, sslen, name, sizeof(name));
  printf("listening %s\n", name);
  fflush(stdout);

  for (;;) {
    int n, sent = 0;
    for (i = 0; i < BATCH; ++i) {
      iovs[i].iov_base = bufs[i];
      iovs[i].iov_len = MAX_DGRAM;
      memset(&msgs[i].msg_hdr, 0, sizeof(msgs[i].msg_hdr));
      msgs[i].msg_hdr.msg_name = &peers[i];
      msgs[i].msg_hdr.msg_namelen = sizeof(peers[i]);
      msgs[i].msg_hdr.msg_iov = &iovs[i];
      msgs[i].msg_hdr.msg_iovlen = 1;
    }
    /* Blocks for the first datagram, then takes what is already queued. */
    n = recvmmsg(fd, msgs, BATCH, MSG_WAITFORONE, NULL);
    if (n < 0) {
      if (errno == EINTR || errno == ECONNREFUSED) {
        continue;
      }
      fprintf(stderr, "udpping: recvmmsg: %s\n", strerror(errno));
      return 1;
    }
    for (i = 0; i < n; ++i) {
      iovs[i].iov_len = msgs[i].msg_len;
    }
    while (sent < n) {
      int r = sendmmsg(fd, msgs + sent, (unsigned)(n - sent), 0);
      if (r < 0) {
        if (errno == EINTR) {
          continue;
        }
        /* A client that went away: drop this one and go on. */
        sent++;
        continue;
      }
      sent += r;
    }
  }
}

/* ---- client ------------------------------------------------------------- */

typedef struct slot {
  uint64_t seq; /* of the datagram in flight; 0: none */
  uint64_t t0;  /* when it was sent */
} slot;

typedef struct pinger {
  int fd;
  unsigned long size, inflight, timeout_ms;
  slot *slots;
  uint64_t next_seq;
  unsigned long lost;
  /* the phase under way */
  unsigned long want, done, started;
  uint64_t *lat; /* NULL while warming up */
  /* datagrams queued for the next sendmmsg */
  unsigned char (*out)[MAX_DGRAM];
  struct mmsghdr outmsgs[BATCH];
  struct iovec outiovs[BATCH];
  int nout;
} pinger;

static void put_u64(unsigned char *p, uint64_t v) {
  int i;
  for (i = 7; i >= 0; --i) {
    p[i] = (unsigned char)(v & 0xff);
    v >>= 8;
  }
}

static uint64_t get_u64(const unsigned char *p) {
  uint64_t v = 0;
  int i;
  for (i = 0; i < 8; ++i) {
    v = (v << 8) | p[i];
  }
  return v;
}

static int flush_out(pinger *p) {
  int sent = 0;
  while (sent < p->nout) {
    int r = sendmmsg(p->fd, p->outmsgs + sent, (unsigned)(p->nout - sent), 0);
    if (r < 0) {
      if (errno == EINTR) {
        continue;
      }
      if (errno == ENOBUFS || errno == EAGAIN) {
        /* Dropped on the way out: the timeout will count it as lost. */
        sent++;
        continue;
      }
      return -1;
    }
    sent += r;
  }
  p->nout = 0;
  return 0;
}

/* Puts a new datagram for slot s in the send queue, if the phase wants
 * more. */
static int queue_send(pinger *p, unsigned long s) {
  unsigned char *d;
  if (p->started >= p->want) {
    p->slots[s].seq = 0;
    return 0;
  }
  if (p->nout == BATCH && flush_out(p) != 0) {
    return -1;
  }
  d = p->out[p->nout];
  p->slots[s].seq = ++p->next_seq;
  put_u64(d, p->slots[s].seq);
  d[8] = (unsigned char)(s >> 24);
  d[9] = (unsigned char)(s >> 16);
  d[10] = (unsigned char)(s >> 8);
  d[11] = (unsigned char)s;
  p->outiovs[p->nout].iov_len = p->size;
  p->slots[s].t0 = now_ns();
  p->nout++;
  p->started++;
  return 0;
}

/* A datagram whose echo is overdue is lost: its slot starts another. */
static int expire(pinger *p, uint64_t now) {
  unsigned long s;
  uint64_t limit = (uint64_t)p->timeout_ms * 1000000u;
  for (s = 0; s < p->inflight; ++s) {
    if (p->slots[s].seq && now > p->slots[s].t0 &&
        now - p->slots[s].t0 >= limit) {
      p->lost++;
      p->started--; /* the phase still wants that round trip */
      if (queue_send(p, s) != 0) {
        return -1;
      }
    }
  }
  return 0;
}

static int on_echo(pinger *p, const unsigned char *d, size_t len,
                   uint64_t now) {
  unsigned long s;
  uint64_t seq;
  if (len != p->size) {
    return 0;
  }
  seq = get_u64(d);
  s = ((unsigned long)d[8] << 24) | ((unsigned long)d[9] << 16) |
      ((unsigned long)d[10] << 8) | d[11];
  if (s >= p->inflight || p->slots[s].seq != seq || seq == 0) {
    return 0; /* late echo of one already counted lost */
  }
  if (p->lat) {
    p->lat[p->done] = now - p->slots[s].t0;
  }
  p->done++;
  return queue_send(p, s);
}

/* Waits for echoes (at most until the next expiry check) and takes them.
 * Returns how many datagrams are in msgs, or -1 with errno set. */
static int receive(pinger *p, struct mmsghdr *msgs, uint64_t next_expire) {
  int n;
  if (p->inflight == 1) {
    /* One in flight: a blocking recv (SO_RCVTIMEO is the loss timeout),
     * so a round trip costs one send and one receive, as any ping. */
    ssize_t r = recv(p->fd, msgs[0].msg_hdr.msg_iov->iov_base, MAX_DGRAM, 0);
    if (r < 0) {
      return -1;
    }
    msgs[0].msg_len = (unsigned)r;
    return 1;
  } else {
    struct pollfd pfd = {p->fd, POLLIN, 0};
    uint64_t now = now_ns();
    int wait_ms =
        next_expire > now ? (int)((next_expire - now) / 1000000u) + 1 : 0;
    if ((n = poll(&pfd, 1, wait_ms)) <= 0) {
      return n;
    }
    return recvmmsg(p->fd, msgs, BATCH, MSG_DONTWAIT, NULL);
  }
}

static void say_refused(const char *to) {
  fprintf(stderr,
          "udpping: %s refused the datagrams: is udpping -serve running "
          "there?\n",
          to);
}

/* Runs one phase: `want` round trips, recorded in lat unless it is NULL. */
static int run_phase(pinger *p, unsigned long want, uint64_t *lat,
                     const char *to) {
  static unsigned char in[BATCH][MAX_DGRAM];
  struct mmsghdr msgs[BATCH];
  struct iovec iovs[BATCH];
  uint64_t timeout_ns = (uint64_t)p->timeout_ms * 1000000u;
  uint64_t last_echo = now_ns(), next_expire = last_echo + timeout_ns;
  unsigned long s;
  int i;

  memset(msgs, 0, sizeof(msgs));
  for (i = 0; i < BATCH; ++i) {
    iovs[i].iov_base = in[i];
    iovs[i].iov_len = MAX_DGRAM;
    msgs[i].msg_hdr.msg_iov = &iovs[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
  }
  p->want = want;
  p->done = p->started = 0;
  p->lat = lat;
  for (s = 0; s < p->inflight; ++s) {
    if (queue_send(p, s) != 0) {
      goto send_failed;
    }
  }
  if (flush_out(p) != 0) {
    goto send_failed;
  }
  while (p->done < want) {
    uint64_t now;
    int n = receive(p, msgs, next_expire);
    if (n < 0) {
      if (errno == ECONNREFUSED) {
        say_refused(to);
        return -1;
      }
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        fprintf(stderr, "udpping: receive from %s: %s\n", to, strerror(errno));
        return -1;
      }
      n = 0;
    }
    now = now_ns();
    for (i = 0; i < n; ++i) {
      if (on_echo(p, in[i], msgs[i].msg_len, now) != 0) {
        goto send_failed;
      }
    }
    if (n > 0) {
      last_echo = now;
    }
    if (now >= next_expire || (p->inflight == 1 && n == 0)) {
      if (now - last_echo > (uint64_t)GIVE_UP_MS * 1000000u) {
        fprintf(stderr,
                "udpping: no echo from %s for %d ms: is udpping -serve "
                "running there?\n",
                to, GIVE_UP_MS);
        return -1;
      }
      if (expire(p, now) != 0) {
        goto send_failed;
      }
      next_expire = now + timeout_ns / 4 + 1;
    }
    if (p->nout && flush_out(p) != 0) {
      goto send_failed;
    }
  }
  return 0;

send_failed:
  if (errno == ECONNREFUSED) {
    say_refused(to);
  } else {
    fprintf(stderr, "udpping: send to %s: %s\n", to, strerror(errno));
  }
  return -1;
}

static int cmp_u64(const void *x, const void *y) {
  uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
  return a < b ? -1 : a > b;
}

/* Nearest rank on sorted samples, the same rule as cktbench. */
static double pct_us(const uint64_t *v, unsigned long n, double p) {
  if (n == 0) {
    return 0;
  }
  return (double)v[(unsigned long)(p * (double)(n - 1) + 0.5)] / 1e3;
}

static int ping(const opts *o) {
  struct sockaddr_storage ss;
  socklen_t sslen;
  pinger p;
  uint64_t t0, t1, *lat = NULL;
  double secs;
  unsigned long i, n = o->n;
  int rv = 1;

  if (resolve(o->to, &ss, &sslen) != 0) {
    fprintf(stderr, "udpping: '%s' is not a numeric HOST:PORT.\n", o->to);
    return 1;
  }
  memset(&p, 0, sizeof(p));
  p.size = o->size;
  p.inflight = o->inflight;
  p.timeout_ms = o->timeout_ms;
  p.fd = socket(ss.ss_family, SOCK_DGRAM, 0);
  /* Connected: replies from elsewhere are filtered out, and a closed port
   * shows up as ECONNREFUSED. */
  if (p.fd < 0 || connect(p.fd, (struct sockaddr *)&ss, sslen) != 0) {
    fprintf(stderr, "udpping: cannot reach %s: %s\n", o->to, strerror(errno));
    return 1;
  }
  if (p.inflight == 1) {
    struct timeval tv = {(time_t)(p.timeout_ms / 1000),
                         (suseconds_t)(p.timeout_ms % 1000) * 1000};
    setsockopt(p.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  }
  p.slots = calloc(p.inflight, sizeof(*p.slots));
  p.out = calloc(BATCH, sizeof(*p.out));
  lat = calloc(n, sizeof(*lat));
  if (!p.slots || !p.out || !lat) {
    fprintf(stderr, "udpping: out of memory.\n");
    goto done;
  }
  for (i = 0; i < BATCH; ++i) {
    memset(p.out[i], 0xa5, MAX_DGRAM);
    p.outiovs[i].iov_base = p.out[i];
    p.outmsgs[i].msg_hdr.msg_iov = &p.outiovs[i];
    p.outmsgs[i].msg_hdr.msg_iovlen = 1;
  }
  if (o->warmup && run_phase(&p, o->warmup, NULL, o->to) != 0) {
    goto done;
  }
  t0 = now_ns();
  if (run_phase(&p, n, lat, o->to) != 0) {
    goto done;
  }
  t1 = now_ns();
  secs = (double)(t1 - t0) / 1e9;
  qsort(lat, n, sizeof(*lat), cmp_u64);
  printf("udpping n=%lu inflight=%lu size=%lu secs=%.4f rate=%.0f/s "
         "p50_us=%.1f p90_us=%.1f p99_us=%.1f p999_us=%.1f max_us=%.1f "
         "lost=%lu\n",
         n, o->inflight, o->size, secs, (double)n / secs, pct_us(lat, n, 0.50),
         pct_us(lat, n, 0.90), pct_us(lat, n, 0.99), pct_us(lat, n, 0.999),
         (double)lat[n - 1] / 1e3, p.lost);
  rv = 0;

done:
  free(lat);
  free(p.out);
  free(p.slots);
  close(p.fd);
  return rv;
}

int main(int argc, char **argv) {
  opts o;
  memset(&o, 0, sizeof(o));
  o.n = 100000;
  o.size = 64;
  o.inflight = 1;
  o.warmup = ~0ul;
  o.timeout_ms = 200;
  {
    const cmd_flag flags[] = {
        {"serve", CMD_BOOL, &o.serve, 0, 0, NULL,
         "echo every datagram until killed"},
        {"addr", CMD_STRING, &o.addr, 0, 0, "HOST:PORT",
         "serve on HOST:PORT (PORT 0: any free port)"},
        {"to", CMD_STRING, &o.to, 0, 0, "HOST:PORT",
         "the udpping -serve to ping"},
        {"n", CMD_UINT, &o.n, 1, 100000000ul, "N",
         "round trips to measure (default 100000)"},
        {"size", CMD_UINT, &o.size, HDR_LEN, MAX_DGRAM, "BYTES",
         "bytes per datagram, each way (default 64)"},
        {"inflight", CMD_UINT, &o.inflight, 1, 4096, "K",
         "datagrams in flight at once (default 1)"},
        {"warmup", CMD_UINT, &o.warmup, 0, 100000000ul, "N",
         "round trips first, not measured (default n/10, at most\n5000)"},
        {"timeout", CMD_UINT, &o.timeout_ms, 1, 60000, "MS",
         "before a datagram counts as lost (default 200)"},
    };
    const cmd_spec spec = {
        "udpping",
        "-serve -addr HOST:PORT | -to HOST:PORT [options]",
        "UDP ping-pong: the server echoes every datagram; the client keeps K "
        "in\nflight and prints round trips per second and round-trip "
        "percentiles.",
        flags,
        sizeof(flags) / sizeof(flags[0]),
        NULL};
    int first = cmd_parse(&spec, argc, argv);
    if (first < argc) {
      cmd_usage_error("udpping", "unexpected argument '%s'.", argv[first]);
    }
  }
  if (o.warmup == ~0ul) {
    o.warmup = o.n / 10 < 5000 ? o.n / 10 : 5000;
  }
  signal(SIGPIPE, SIG_IGN);
  if (o.serve) {
    if (!o.addr || o.to) {
      cmd_usage_error("udpping", "-serve needs -addr HOST:PORT and no -to.");
    }
    return serve(&o);
  }
  if (!o.to || o.addr) {
    cmd_usage_error("udpping",
                    "give -serve -addr HOST:PORT, or -to HOST:PORT.");
  }
  return ping(&o);
}
