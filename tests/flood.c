/*
 * flood — hostile load for tests: sends N datagrams of junk, and of junk
 * that looks like QUIC, at a node on loopback, as fast as it can (or paced),
 * from several source ports so that the node sees many "peers", and counts
 * what the node answers.  The mix is a function of the seed alone:
 *
 *   random     random bytes, 1..1500 long
 *   short      a short header (0x40|r) and a random 16-byte DCID (the
 *              length of the node's connection IDs), then random bytes;
 *              21..1400 long: the node may answer a stateless reset
 *   initial    a version-1 Initial with lengths that add up, random
 *              DCID/SCID, a garbage payload, 1200 bytes: the node tries to
 *              accept it and fails to decrypt (one in eight carries a
 *              made-up token, which the node refuses with a CONNECTION_CLOSE)
 *   version    a long header of an unknown version; those of 1200 bytes or
 *              more get a Version Negotiation back
 *   truncated  a long (version 1) or short header cut short
 *
 * Loopback only: any other address is refused.
 *
 * Usage: flood [-n N] [-seed S] [-ports K] [-rate R] [-linger MS]
 *              [-only KIND] HOST:PORT
 * Prints "flood: started" when it begins, and last a line "flood-stats
 * sent=N errors=N elapsed_s=T per_s=R" followed by the count of each kind
 * sent, vn_due (the datagrams the node should answer with a Version
 * Negotiation) and the node's answers: vn, reset (stateless resets),
 * retry, close (refusals) and other_reply.
 * Exit status: 0 all sent, 1 some could not be sent, 2 usage.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define MAX_PORTS 64
#define MAX_DGRAM 1500
#define INITIAL_SIZE 1200 /* what QUIC pads a client's first packet to */
#define NODE_CIDLEN 16    /* the node's own connection IDs */

enum { K_RANDOM, K_SHORT, K_INITIAL, K_VERSION, K_TRUNCATED, K_COUNT };
static const char *const kind_names[K_COUNT] = {"random", "short", "initial",
                                                "version", "truncated"};

enum { R_VN, R_RESET, R_RETRY, R_CLOSE, R_OTHER, R_COUNT };
static const char *const reply_names[R_COUNT] = {"vn", "reset", "retry",
                                                 "close", "other_reply"};

typedef struct flood {
  uint64_t rng;
  int only; /* one kind only, or -1 for the mix */
  struct sockaddr_storage to;
  socklen_t tolen;
  int fds[MAX_PORTS];
  int nfds;
  uint64_t kinds[K_COUNT];
  uint64_t vn_due; /* datagrams the node should answer with a VN */
  uint64_t replies[R_COUNT];
  uint64_t sent, errors;
} flood;

/* splitmix64: the whole run follows from the seed. */
static uint64_t rnd(flood *f) {
  uint64_t z = (f->rng += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* A number in [lo, hi]. */
static size_t rnd_range(flood *f, size_t lo, size_t hi) {
  return lo + (size_t)(rnd(f) % (hi - lo + 1));
}

static void rnd_fill(flood *f, uint8_t *p, size_t n) {
  while (n >= 8) {
    uint64_t v = rnd(f);
    memcpy(p, &v, 8);
    p += 8;
    n -= 8;
  }
  if (n) {
    uint64_t v = rnd(f);
    memcpy(p, &v, n);
  }
}

static void put32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}

/* A version-1 Initial of INITIAL_SIZE bytes, header fields consistent,
 * payload garbage; returns its length. */
static size_t make_initial(flood *f, uint8_t *b) {
  size_t pos = 0, dcidlen = rnd_range(f, 8, 20), scidlen = rnd_range(f, 0, 20);
  size_t rest;
  rnd_fill(f, b, INITIAL_SIZE);
  b[pos++] = (uint8_t)(0xc0 | (b[0] & 0x0f)); /* Initial, pn length bits */
  put32(b + pos, 1);
  pos += 4;
  b[pos++] = (uint8_t)dcidlen;
  pos += dcidlen;
  b[pos++] = (uint8_t)scidlen;
  pos += scidlen;
  if (rnd(f) % 8 == 0) { /* a made-up token: the node checks it, refuses */
    size_t tlen = rnd_range(f, 16, 60);
    b[pos++] = (uint8_t)tlen; /* a 1-byte varint */
    pos += tlen;
  } else {
    b[pos++] = 0;
  }
  rest = INITIAL_SIZE - pos - 2; /* packet number and payload */
  b[pos++] = (uint8_t)(0x40 | (rest >> 8));
  b[pos++] = (uint8_t)(rest & 0xff);
  return INITIAL_SIZE;
}

static size_t make_version(flood *f, uint8_t *b) {
  size_t dcidlen = rnd_range(f, 0, 20), scidlen = rnd_range(f, 0, 20);
  size_t hdr = 7 + dcidlen + scidlen, len;
  uint32_t v = (uint32_t)rnd(f);
  /* Not 0 (that is a Version Negotiation), nor a version ngtcp2 knows. */
  if (v <= 1 || v == 0x6b3343cf || v == 0x709a50c4 || (v >> 8) == 0xff0000) {
    v = 0x1a2a3a4a;
  }
  len = rnd(f) % 2 ? rnd_range(f, INITIAL_SIZE, MAX_DGRAM)
                   : rnd_range(f, hdr, INITIAL_SIZE - 1);
  rnd_fill(f, b, len);
  b[0] |= 0x80;
  put32(b + 1, v);
  b[5] = (uint8_t)dcidlen;
  b[6 + dcidlen] = (uint8_t)scidlen;
  return len;
}

/* 1 if the node answers the datagram with a Version Negotiation: a long
 * header of a version ngtcp2 0.12 does not know, 1200 bytes or more (the
 * CIDs, at most 255 bytes each, then always fit). */
static int calls_for_vn(const uint8_t *b, size_t len) {
  uint32_t v;
  if (len < INITIAL_SIZE || !(b[0] & 0x80)) {
    return 0;
  }
  v = (uint32_t)b[1] << 24 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 8 | b[4];
  return v > 1 && v != 0x709a50c4 && (v < 0xff00001d || v > 0xff000020);
}

static size_t make_truncated(flood *f, uint8_t *b) {
  size_t len;
  if (rnd(f) % 2) {
    (void)make_initial(f, b);
    return rnd_range(f, 1, 7 + b[5] + 8); /* cut in the header */
  }
  len = rnd_range(f, 1, NODE_CIDLEN);
  rnd_fill(f, b, len);
  b[0] = (uint8_t)(0x40 | (b[0] & 0x3f));
  return len;
}

static size_t make_datagram(flood *f, uint8_t *b) {
  int kind = (int)(rnd(f) % K_COUNT);
  size_t len;
  if (f->only >= 0) {
    kind = f->only;
  }
  f->kinds[kind]++;
  switch (kind) {
  case K_RANDOM:
    len = rnd_range(f, 1, MAX_DGRAM);
    rnd_fill(f, b, len);
    return len;
  case K_SHORT:
    len = rnd_range(f, 1 + NODE_CIDLEN + 4, 1400);
    rnd_fill(f, b, len);
    b[0] = (uint8_t)(0x40 | (b[0] & 0x3f));
    return len;
  case K_INITIAL:
    return make_initial(f, b);
  case K_VERSION:
    return make_version(f, b);
  default:
    return make_truncated(f, b);
  }
}

/* What the node answered: a Version Negotiation (version 0), a Retry or
 * a CONNECTION_CLOSE in an Initial (version 1), or a stateless reset (a
 * short header). */
static void classify(flood *f, const uint8_t *b, size_t len) {
  uint32_t v;
  if (len < 5 || !(b[0] & 0x80)) {
    f->replies[len >= 21 ? R_RESET : R_OTHER]++;
    return;
  }
  v = (uint32_t)b[1] << 24 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 8 | b[4];
  if (v == 0) {
    f->replies[R_VN]++;
  } else if (v == 1 && ((b[0] >> 4) & 3) == 3) {
    f->replies[R_RETRY]++;
  } else if (v == 1 && ((b[0] >> 4) & 3) == 0) {
    f->replies[R_CLOSE]++;
  } else {
    f->replies[R_OTHER]++;
  }
}

/* Reads whatever the node sent back to fd; the number of datagrams. */
static int drain(flood *f, int fd) {
  static uint8_t bufs[BATCH][MAX_DGRAM];
  struct mmsghdr msgs[BATCH];
  struct iovec iov[BATCH];
  int n, i, total = 0;
  do {
    memset(msgs, 0, sizeof(msgs));
    for (i = 0; i < BATCH; ++i) {
      iov[i].iov_base = bufs[i];
      iov[i].iov_len = sizeof(bufs[i]);
      msgs[i].msg_hdr.msg_iov = &iov[i];
      msgs[i].msg_hdr.msg_iovlen = 1;
    }
    n = recvmmsg(fd, msgs, BATCH, MSG_DONTWAIT, NULL);
    for (i = 0; i < n; ++i) {
      classify(f, bufs[i], msgs[i].msg_len);
    }
    total += n > 0 ? n : 0;
  } while (n == BATCH);
  return total;
}

/* Sends msgs[0..n) on fd, waiting while the socket buffer is full; a
 * datagram the kernel refuses otherwise is counted and skipped. */
static void send_batch(flood *f, int fd, struct mmsghdr *msgs, unsigned n) {
  unsigned off = 0;
  while (off < n) {
    int r = sendmmsg(fd, msgs + off, n - off, 0);
    if (r > 0) {
      off += (unsigned)r;
      f->sent += (uint64_t)r;
    } else if (r < 0 && (errno == EAGAIN || errno == ENOBUFS)) {
      struct pollfd p = {.fd = fd, .events = POLLOUT};
      (void)poll(&p, 1, 10);
      drain(f, fd);
    } else if (r < 0 && errno == EINTR) {
      continue;
    } else {
      f->errors++;
      off++;
    }
  }
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_s(double s) {
  struct timespec ts;
  ts.tv_sec = (time_t)s;
  ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
  nanosleep(&ts, NULL);
}

/* HOST:PORT with HOST 127.x.x.x or [::1]; 0, or -1 (not loopback, not
 * numeric, bad port). */
static int parse_target(const char *s, struct sockaddr_storage *ss,
                        socklen_t *len) {
  char host[64];
  const char *colon = strrchr(s, ':');
  char *end;
  unsigned long port;
  size_t hlen;
  if (!colon || colon == s) {
    return -1;
  }
  port = strtoul(colon + 1, &end, 10);
  hlen = (size_t)(colon - s);
  if (*end || end == colon + 1 || port == 0 || port > 65535 ||
      hlen >= sizeof(host)) {
    return -1;
  }
  memcpy(host, s, hlen);
  host[hlen] = 0;
  memset(ss, 0, sizeof(*ss));
  if (host[0] == '[' && hlen > 2 && host[hlen - 1] == ']') {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
    host[hlen - 1] = 0;
    if (inet_pton(AF_INET6, host + 1, &a->sin6_addr) != 1 ||
        !IN6_IS_ADDR_LOOPBACK(&a->sin6_addr)) {
      return -1;
    }
    a->sin6_family = AF_INET6;
    a->sin6_port = htons((uint16_t)port);
    *len = sizeof(*a);
  } else {
    struct sockaddr_in *a = (struct sockaddr_in *)ss;
    if (inet_pton(AF_INET, host, &a->sin_addr) != 1 ||
        (ntohl(a->sin_addr.s_addr) >> 24) != 127) {
      return -1;
    }
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)port);
    *len = sizeof(*a);
  }
  return 0;
}

/* K sockets on the loopback address of the target's family, each with
 * its own ephemeral port. */
static int open_sockets(flood *f, int k) {
  int i, big = 4 * 1024 * 1024;
  for (i = 0; i < k; ++i) {
    struct sockaddr_storage local = {0};
    socklen_t llen;
    int fd = socket(f->to.ss_family, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    if (fd < 0) {
      perror("flood: socket");
      return -1;
    }
    if (f->to.ss_family == AF_INET6) {
      struct sockaddr_in6 *a = (struct sockaddr_in6 *)&local;
      a->sin6_family = AF_INET6;
      a->sin6_addr = in6addr_loopback;
      llen = sizeof(*a);
    } else {
      struct sockaddr_in *a = (struct sockaddr_in *)&local;
      a->sin_family = AF_INET;
      a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      llen = sizeof(*a);
    }
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
    if (bind(fd, (struct sockaddr *)&local, llen) != 0) {
      perror("flood: bind");
      close(fd);
      return -1;
    }
    f->fds[f->nfds++] = fd;
  }
  return 0;
}

/* Waits for late answers until none came for linger_ms. */
static void linger(flood *f, int linger_ms) {
  struct pollfd p[MAX_PORTS];
  int i;
  for (i = 0; i < f->nfds; ++i) {
    p[i].fd = f->fds[i];
    p[i].events = POLLIN;
  }
  while (poll(p, (nfds_t)f->nfds, linger_ms) > 0) {
    for (i = 0; i < f->nfds; ++i) {
      if (p[i].revents & POLLIN) {
        drain(f, f->fds[i]);
      }
    }
  }
}

static void usage(void) {
  fprintf(stderr,
          "usage: flood [-n N] [-seed S] [-ports K] [-rate R] [-linger MS]\n"
          "             [-only KIND] HOST:PORT\n"
          "  Sends N (default 1000000) junk and QUIC-looking datagrams to\n"
          "  HOST:PORT, which must be a loopback address (127.x.x.x or\n"
          "  [::1]), from K source ports (default 4, at most %d), at most R\n"
          "  a second (default: as fast as possible), then waits MS (default\n"
          "  300) for late answers.  -only sends one KIND of datagram instead\n"
          "  of the mix: random, short, initial, version or truncated.\n",
          MAX_PORTS);
  exit(2);
}

static unsigned long long num_arg(int argc, char **argv, int *i) {
  char *end;
  unsigned long long v;
  if (*i + 1 >= argc) {
    usage();
  }
  errno = 0;
  v = strtoull(argv[++*i], &end, 10);
  if (errno || *end || end == argv[*i] || argv[*i][0] == '-') {
    usage();
  }
  return v;
}

int main(int argc, char **argv) {
  static uint8_t bufs[BATCH][MAX_DGRAM];
  static flood f;
  struct mmsghdr msgs[BATCH];
  struct iovec iov[BATCH];
  unsigned long long n = 1000000, seed = 1, ports = 4, rate = 0;
  unsigned long long linger_ms = 300;
  const char *target = NULL, *only = NULL;
  uint64_t batches = 0;
  double t0, t1;
  int i;

  for (i = 1; i < argc; ++i) {
    if (strcmp(argv[i], "-n") == 0) {
      n = num_arg(argc, argv, &i);
    } else if (strcmp(argv[i], "-seed") == 0) {
      seed = num_arg(argc, argv, &i);
    } else if (strcmp(argv[i], "-ports") == 0) {
      ports = num_arg(argc, argv, &i);
    } else if (strcmp(argv[i], "-rate") == 0) {
      rate = num_arg(argc, argv, &i);
    } else if (strcmp(argv[i], "-only") == 0 && i + 1 < argc) {
      only = argv[++i];
    } else if (strcmp(argv[i], "-linger") == 0) {
      linger_ms = num_arg(argc, argv, &i);
    } else if (argv[i][0] == '-' || target) {
      usage();
    } else {
      target = argv[i];
    }
  }
  if (!target || ports < 1 || ports > MAX_PORTS || linger_ms > 60000) {
    usage();
  }
  if (parse_target(target, &f.to, &f.tolen) != 0) {
    fprintf(stderr,
            "flood: %s is not a loopback address and port (127.x.x.x:PORT "
            "or [::1]:PORT); flood sends nowhere else.\n",
            target);
    return 2;
  }
  f.rng = seed;
  f.only = -1;
  for (i = 0; only && i < K_COUNT; ++i) {
    if (strcmp(only, kind_names[i]) == 0) {
      f.only = i;
    }
  }
  if (only && f.only < 0) {
    usage();
  }
  if (open_sockets(&f, (int)ports) != 0) {
    return 1;
  }
  memset(msgs, 0, sizeof(msgs));
  for (i = 0; i < BATCH; ++i) {
    iov[i].iov_base = bufs[i];
    msgs[i].msg_hdr.msg_iov = &iov[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
    msgs[i].msg_hdr.msg_name = &f.to;
    msgs[i].msg_hdr.msg_namelen = f.tolen;
  }
  printf("flood: started, %llu datagrams to %s from %llu ports, seed %llu\n", n,
         target, ports, seed);
  fflush(stdout);
  t0 = now_s();
  while (f.sent + f.errors < n) {
    uint64_t left = n - f.sent - f.errors;
    unsigned b = left < BATCH ? (unsigned)left : BATCH;
    int fd = f.fds[batches++ % (uint64_t)f.nfds];
    for (i = 0; i < (int)b; ++i) {
      iov[i].iov_len = make_datagram(&f, bufs[i]);
      f.vn_due += (uint64_t)calls_for_vn(bufs[i], iov[i].iov_len);
    }
    send_batch(&f, fd, msgs, b);
    drain(&f, fd);
    if (rate) {
      double ahead =
          (double)(f.sent + f.errors) / (double)rate - (now_s() - t0);
      if (ahead > 0) {
        sleep_s(ahead);
      }
    }
  }
  t1 = now_s();
  linger(&f, (int)linger_ms);
  printf("flood-stats sent=%" PRIu64 " errors=%" PRIu64
         " elapsed_s=%.3f per_s=%.0f",
         f.sent, f.errors, t1 - t0, t1 > t0 ? (double)f.sent / (t1 - t0) : 0.0);
  for (i = 0; i < K_COUNT; ++i) {
    printf(" %s=%" PRIu64, kind_names[i], f.kinds[i]);
  }
  printf(" vn_due=%" PRIu64, f.vn_due);
  for (i = 0; i < R_COUNT; ++i) {
    printf(" %s=%" PRIu64, reply_names[i], f.replies[i]);
  }
  printf("\n");
  for (i = 0; i < f.nfds; ++i) {
    close(f.fds[i]);
  }
  return f.errors ? 1 : 0;
}
