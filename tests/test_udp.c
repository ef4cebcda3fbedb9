/* test_udp.c — quic_udp: addresses, and real UDP over loopback with and
 * without GSO/GRO. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ckt/error.h"
#include "quic_udp.h"

#define MAX_GOT 256

/* Copies of received datagrams: the rxbuf's pointers die at the next call. */
typedef struct got {
  size_t n;
  uint8_t *data[MAX_GOT];
  size_t len[MAX_GOT];
  ckt_addr from[MAX_GOT];
} got;

static void got_free(got *g) {
  for (size_t i = 0; i < g->n; ++i) {
    free(g->data[i]);
  }
  g->n = 0;
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Datagram k, byte i: differs per datagram and per position, so a swapped,
 * shifted or merged datagram cannot pass. */
static uint8_t pattern(size_t k, size_t i) {
  return (uint8_t)(k * 31 + i * 7 + (i >> 8) + 1);
}

/* A batch of datagrams of `seg` bytes (the last `len % seg` or seg). */
static uint8_t *make_batch(size_t len, size_t seg) {
  uint8_t *p = malloc(len);
  cr_assert_not_null(p);
  for (size_t off = 0; off < len; ++off) {
    p[off] = pattern(off / seg, off % seg);
  }
  return p;
}

static void open_on(ckt_udp *u, const char *host) {
  ckt_addr a;
  cr_assert_eq(ckt_addr_parse(host, "0", &a), CKT_OK);
  cr_assert_eq(ckt_udp_open(u, &a), CKT_OK, "open %s: %s", host,
               strerror(errno));
}

/* Receives until `want` datagrams are in, polling for up to 5 s; then waits
 * a little more to be sure nothing else arrives. */
static void recv_n(ckt_udp *u, ckt_udp_rxbuf *rx, size_t want, size_t max_out,
                   got *g) {
  ckt_udp_dgram d[64];
  int64_t deadline = now_ms() + 5000;

  cr_assert_leq(max_out, 64);
  g->n = 0;
  for (;;) {
    int r = ckt_udp_recv(u, rx, d, max_out);
    cr_assert_geq(r, 0, "recv: %d (%s)", r, strerror(errno));
    cr_assert_leq((size_t)r, max_out);
    for (int i = 0; i < r; ++i) {
      cr_assert_lt(g->n, MAX_GOT, "more datagrams than sent");
      g->data[g->n] = malloc(d[i].len ? d[i].len : 1);
      cr_assert_not_null(g->data[g->n]);
      memcpy(g->data[g->n], d[i].data, d[i].len);
      g->len[g->n] = d[i].len;
      g->from[g->n] = d[i].from;
      g->n++;
    }
    if (r > 0) {
      continue;
    }
    int64_t left = g->n >= want ? 0 : deadline - now_ms();
    if (g->n >= want) {
      /* Done: one short look for extras, which would be a bug. */
      struct pollfd pfd = {.fd = u->fd, .events = POLLIN};
      if (poll(&pfd, 1, 100) == 1) {
        continue;
      }
      break;
    }
    cr_assert_gt(left, 0, "timed out with %zu of %zu datagrams", g->n, want);
    struct pollfd pfd = {.fd = u->fd, .events = POLLIN};
    cr_assert_geq(poll(&pfd, 1, (int)left), 0);
  }
  cr_assert_eq(g->n, want, "got %zu datagrams, want %zu", g->n, want);
}

/* Checks that g holds exactly the datagrams of make_batch(len, seg), in
 * order, all from `from`. */
static void check_batch(const got *g, size_t len, size_t seg,
                        const ckt_addr *from) {
  size_t want = (len + seg - 1) / seg;
  char fa[CKT_ADDR_STRLEN], fb[CKT_ADDR_STRLEN];

  cr_assert_eq(g->n, want);
  for (size_t k = 0; k < want; ++k) {
    size_t dlen = k + 1 < want ? seg : len - k * seg;
    cr_assert_eq(g->len[k], dlen, "datagram %zu: %zu bytes, want %zu", k,
                 g->len[k], dlen);
    for (size_t i = 0; i < dlen; ++i) {
      if (g->data[k][i] != pattern(k, i)) {
        cr_assert_fail("datagram %zu byte %zu differs", k, i);
      }
    }
    ckt_addr_format(&g->from[k], fa, sizeof(fa));
    ckt_addr_format(from, fb, sizeof(fb));
    cr_assert(ckt_addr_equal(&g->from[k], from), "from %s, want %s", fa, fb);
  }
}

/* Sends make_batch(len, seg) from a to b in one call and checks what b
 * receives and both sockets' counters. */
static void roundtrip(ckt_udp *a, ckt_udp *b, size_t len, size_t seg,
                      size_t max_out) {
  ckt_udp_rxbuf *rx;
  size_t eff = seg == 0 || seg >= len ? len : seg; /* as ckt_udp_send */
  uint8_t *batch = make_batch(len, eff);
  size_t want = (len + eff - 1) / eff, sent = 0;
  uint64_t sb = a->bytes_sent, sd = a->datagrams_sent;
  uint64_t rb = b->bytes_received, rd = b->datagrams_received;
  got *g = calloc(1, sizeof(*g));

  cr_assert_not_null(g);
  cr_assert_eq(ckt_udp_rxbuf_new(&rx), CKT_OK);
  cr_assert_eq(ckt_udp_send_partial(a, &b->local, batch, len, seg, &sent),
               CKT_OK, "send: %s", strerror(errno));
  cr_assert_eq(sent, len);
  recv_n(b, rx, want, max_out, g);
  check_batch(g, len, eff, &a->local);
  cr_assert_eq(a->bytes_sent - sb, len);
  cr_assert_eq(a->datagrams_sent - sd, want);
  cr_assert_eq(b->bytes_received - rb, len);
  cr_assert_eq(b->datagrams_received - rd, want);
  got_free(g);
  free(g);
  ckt_udp_rxbuf_free(rx);
  free(batch);
}

static void fmt_eq(const ckt_addr *a, const char *want) {
  char s[CKT_ADDR_STRLEN];
  ckt_addr_format(a, s, sizeof(s));
  cr_assert_str_eq(s, want);
}

Test(udp, addr_v4_parse_format_round_trip) {
  ckt_addr a, b;
  char s[CKT_ADDR_STRLEN];

  cr_assert_eq(ckt_addr_parse("127.0.0.1", "4433", &a), CKT_OK);
  cr_assert_eq(a.ss.ss_family, AF_INET);
  cr_assert_eq(a.len, sizeof(struct sockaddr_in));
  cr_assert_eq(ckt_addr_port(&a), 4433);
  fmt_eq(&a, "127.0.0.1:4433");
  ckt_addr_format(&a, s, sizeof(s));
  cr_assert_eq(ckt_addr_parse(s, NULL, &b), CKT_OK);
  cr_assert(ckt_addr_equal(&a, &b));
  cr_assert_eq(ckt_addr_parse("127.0.0.1:0", NULL, &b), CKT_OK);
  cr_assert_eq(ckt_addr_port(&b), 0);
  cr_assert_not(ckt_addr_equal(&a, &b), "ports differ");
  cr_assert_eq(ckt_addr_parse("127.0.0.2:4433", NULL, &b), CKT_OK);
  cr_assert_not(ckt_addr_equal(&a, &b), "addresses differ");
  cr_assert_eq(ckt_addr_parse("255.255.255.255", "65535", &b), CKT_OK);
  fmt_eq(&b, "255.255.255.255:65535");
}

Test(udp, addr_v6_parse_format_round_trip) {
  ckt_addr a, b, c;
  char s[CKT_ADDR_STRLEN];

  cr_assert_eq(ckt_addr_parse("::1", "4433", &a), CKT_OK);
  cr_assert_eq(a.ss.ss_family, AF_INET6);
  cr_assert_eq(a.len, sizeof(struct sockaddr_in6));
  fmt_eq(&a, "[::1]:4433");
  cr_assert_eq(ckt_addr_parse("[::1]:4433", NULL, &b), CKT_OK);
  cr_assert(ckt_addr_equal(&a, &b));
  cr_assert_eq(ckt_addr_parse("[::1]", "4433", &b), CKT_OK);
  cr_assert(ckt_addr_equal(&a, &b));
  cr_assert_eq(ckt_addr_parse("127.0.0.1", "4433", &c), CKT_OK);
  cr_assert_not(ckt_addr_equal(&a, &c), "families differ");

  /* Scope ids survive the round trip (interface 1 is lo on Linux). */
  cr_assert_eq(ckt_addr_parse("fe80::1%1", "443", &a), CKT_OK);
  fmt_eq(&a, "[fe80::1%1]:443");
  ckt_addr_format(&a, s, sizeof(s));
  cr_assert_eq(ckt_addr_parse(s, NULL, &b), CKT_OK);
  cr_assert(ckt_addr_equal(&a, &b));
  cr_assert_eq(ckt_addr_parse("fe80::1", "443", &c), CKT_OK);
  cr_assert_not(ckt_addr_equal(&a, &c), "scopes differ");

  cr_assert_eq(ckt_addr_parse("[2001:db8::a:b]:1", NULL, &a), CKT_OK);
  fmt_eq(&a, "[2001:db8::a:b]:1");
}

Test(udp, addr_localhost_resolves_to_loopback) {
  ckt_addr a;
  char s[CKT_ADDR_STRLEN];

  cr_assert_eq(ckt_addr_parse("localhost", "4433", &a), CKT_OK);
  ckt_addr_format(&a, s, sizeof(s));
  cr_assert(strcmp(s, "127.0.0.1:4433") == 0 || strcmp(s, "[::1]:4433") == 0,
            "localhost gave %s", s);
  cr_assert_eq(ckt_addr_parse("localhost:4433", NULL, &a), CKT_OK);
  cr_assert_eq(ckt_addr_port(&a), 4433);
}

Test(udp, addr_bad_input_is_refused) {
  static const char *const bad[][2] = {
      {"", "1"},
      {"127.0.0.1", NULL}, /* no port anywhere */
      {"127.0.0.1:", NULL},
      {":4433", NULL},
      {"127.0.0.1:65536", NULL},
      {"127.0.0.1:123456", NULL},
      {"127.0.0.1", ""},
      {"127.0.0.1", "-1"},
      {"127.0.0.1", "+1"},
      {"127.0.0.1", " 1"},
      {"127.0.0.1", "0x10"},
      {"127.0.0.1", "https"}, /* service names are not ports */
      {"127.1", "1"},         /* inet_aton forms */
      {"0x7f.0.0.1", "1"},
      {"1.2.3.4 x", "1"},
      {"local host", "1"}, /* not a name: never sent to the resolver */
      {"localhost/", "1"},
      {"256.0.0.1", "1"},
      {"1.2.3.4.5", "1"},
      {"1.2.3.4:5", "1"}, /* port twice */
      {"::1:4433", NULL}, /* ambiguous without brackets */
      {"[::1]", NULL},
      {"[::1]4433", NULL},
      {"[::1", "1"},
      {"[::1]x", "1"},
      {"[::1]:4433", "4433"},
      {"[]:1", NULL},
      {"[127.0.0.1]:1", NULL}, /* brackets are for IPv6 */
      {"::g", "1"},
      {"1::2::3", "1"},
  };
  ckt_addr a, zero;

  memset(&zero, 0, sizeof(zero));
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i) {
    memset(&a, 0xa5, sizeof(a));
    cr_assert_eq(ckt_addr_parse(bad[i][0], bad[i][1], &a),
                 CKT_ERR_INVALID_ARGUMENT, "\"%s\" \"%s\" was accepted",
                 bad[i][0], bad[i][1] ? bad[i][1] : "(null)");
    cr_assert_eq(memcmp(&a, &zero, sizeof(a)), 0, "out not cleared");
  }
  cr_assert_eq(ckt_addr_parse(NULL, "1", &a), CKT_ERR_INVALID_ARGUMENT);
  cr_assert_eq(ckt_addr_parse("127.0.0.1", "1", NULL),
               CKT_ERR_INVALID_ARGUMENT);
}

Test(udp, addr_format_truncates_and_handles_unknown) {
  ckt_addr a;
  char s[8];

  cr_assert_eq(ckt_addr_parse("127.0.0.1", "4433", &a), CKT_OK);
  memset(s, 'x', sizeof(s));
  ckt_addr_format(&a, s, sizeof(s));
  cr_assert_str_eq(s, "127.0.0");
  memset(&a, 0, sizeof(a));
  fmt_eq(&a, "(unknown)");
  fmt_eq(NULL, "(unknown)");
  cr_assert_eq(ckt_addr_port(&a), 0);
  cr_assert_not(ckt_addr_equal(NULL, &a));
}

Test(udp, error_again_has_a_message) {
  cr_assert_eq(CKT_ERR_AGAIN, -18);
  cr_assert_str_eq(ckt_strerror(CKT_ERR_AGAIN),
                   "operation would block; try again");
}

Test(udp, open_binds_port_zero_to_a_real_port) {
  ckt_udp u;
  int v, fl;
  socklen_t vl = sizeof(v);
  char s[CKT_ADDR_STRLEN];

  open_on(&u, "127.0.0.1");
  cr_assert_geq(u.fd, 0);
  cr_assert_neq(ckt_addr_port(&u.local), 0);
  ckt_addr_format(&u.local, s, sizeof(s));
  cr_assert_eq(strncmp(s, "127.0.0.1:", 10), 0, "bound to %s", s);
  fl = fcntl(u.fd, F_GETFL);
  cr_assert(fl & O_NONBLOCK);
  cr_assert(fcntl(u.fd, F_GETFD) & FD_CLOEXEC);
  cr_assert_eq(getsockopt(u.fd, IPPROTO_IP, IP_MTU_DISCOVER, &v, &vl), 0);
  cr_assert_eq(v, IP_PMTUDISC_DO, "DF must be set");
  vl = sizeof(v);
  cr_assert_eq(getsockopt(u.fd, IPPROTO_IP, IP_RECVERR, &v, &vl), 0);
  cr_assert_eq(v, 0);
  vl = sizeof(v);
  cr_assert_eq(getsockopt(u.fd, SOL_SOCKET, SO_RCVBUF, &v, &vl), 0);
  fprintf(stderr,
          "udp: bound %s, GSO (UDP_SEGMENT) %s, GRO (UDP_GRO) %s, "
          "SO_RCVBUF %d\n",
          s, u.gso ? "active" : "unavailable", u.gro ? "active" : "unavailable",
          v);

  /* Two sockets never share a port. */
  ckt_udp w;
  open_on(&w, "127.0.0.1");
  cr_assert_neq(ckt_addr_port(&w.local), ckt_addr_port(&u.local));
  /* Binding a taken port fails with EADDRINUSE, and *u is left closed. */
  ckt_udp x;
  cr_assert_eq(ckt_udp_open(&x, &u.local), CKT_ERR_IO);
  cr_assert_eq(errno, EADDRINUSE);
  cr_assert_eq(x.fd, -1);
  ckt_udp_close(&x);

  ckt_udp_close(&w);
  ckt_udp_close(&u);
  cr_assert_eq(u.fd, -1);
  ckt_udp_close(&u); /* twice is harmless */
}

Test(udp, recv_on_empty_socket_returns_zero) {
  ckt_udp u;
  ckt_udp_rxbuf *rx;
  ckt_udp_dgram d[4];

  open_on(&u, "127.0.0.1");
  cr_assert_eq(ckt_udp_rxbuf_new(&rx), CKT_OK);
  cr_assert_eq(ckt_udp_recv(&u, rx, d, 4), 0);
  cr_assert_eq(ckt_udp_recv(&u, rx, d, 0), 0);
  cr_assert_eq(u.datagrams_received, 0);
  cr_assert_eq(ckt_udp_recv(&u, NULL, d, 4), CKT_ERR_INVALID_ARGUMENT);
  cr_assert_eq(ckt_udp_send(&u, &u.local, (const uint8_t *)"x", 0, 0),
               CKT_ERR_INVALID_ARGUMENT);
  ckt_udp_rxbuf_free(rx);
  ckt_udp_close(&u);
}

Test(udp, gso_batch_of_20_arrives_as_20_datagrams) {
  ckt_udp a, b;

  open_on(&a, "127.0.0.1");
  open_on(&b, "127.0.0.1");
  int gso = a.gso;
  fprintf(stderr, "udp: sender gso=%d, receiver gro=%d\n", a.gso, b.gro);
  roundtrip(&a, &b, 19 * 1200 + 700, 1200, 64);
  if (a.gso && b.gro) {
    /* Loopback hands a GSO packet to a UDP_GRO socket whole: the split
     * into datagrams was done by ckt_udp_recv. */
    cr_assert_eq(b.datagrams_coalesced, 20, "coalesced %llu",
                 (unsigned long long)b.datagrams_coalesced);
  }
  fprintf(stderr, "udp: 20 datagrams, %llu received inside GRO batches\n",
          (unsigned long long)b.datagrams_coalesced);
  cr_assert_eq(a.gso, gso, "a working GSO stays on");
  ckt_udp_close(&a);
  ckt_udp_close(&b);
}

Test(udp, batch_without_offload) {
  ckt_udp a, b;

  open_on(&a, "127.0.0.1");
  open_on(&b, "127.0.0.1");
  ckt_udp_disable_offload(&a);
  ckt_udp_disable_offload(&b);
  cr_assert_eq(a.gso, 0);
  cr_assert_eq(b.gro, 0);
  roundtrip(&a, &b, 19 * 1200 + 700, 1200, 64);
  cr_assert_eq(b.datagrams_coalesced, 0);
  cr_assert_eq(a.gso, 0, "disabled GSO stays off");
  ckt_udp_close(&a);
  ckt_udp_close(&b);
}

Test(udp, gso_sender_to_receiver_without_gro) {
  ckt_udp a, b;

  open_on(&a, "127.0.0.1");
  open_on(&b, "127.0.0.1");
  ckt_udp_disable_offload(&b);
  roundtrip(&a, &b, 19 * 1200 + 700, 1200, 64);
  /* The kernel segments for a socket without GRO. */
  cr_assert_eq(b.datagrams_coalesced, 0);
  ckt_udp_close(&a);
  ckt_udp_close(&b);
}

Test(udp, small_output_array_loses_nothing) {
  ckt_udp a, b;

  open_on(&a, "127.0.0.1");
  open_on(&b, "127.0.0.1");
  /* A GRO batch of 20 handed out 3 at a time, then one at a time. */
  roundtrip(&a, &b, 19 * 1200 + 700, 1200, 3);
  roundtrip(&a, &b, 19 * 1200 + 700, 1200, 1);
  ckt_udp_close(&a);
  ckt_udp_close(&b);
}

Test(udp, counters_add_up_over_several_sends) {
  ckt_udp a, b;

  open_on(&a, "127.0.0.1");
  open_on(&b, "127.0.0.1");
  roundtrip(&a, &b, 19 * 1200 + 700, 1200, 64);
  roundtrip(&a, &b, 1000, 0, 64);    /* segment 0: one datagram */
  roundtrip(&a, &b, 1000, 1000, 64); /* segment == len: one datagram */
  roundtrip(&a, &b, 1000, 5000, 64); /* segment > len: one datagram */
  roundtrip(&b, &a, 3 * 1200, 1200, 64);
  cr_assert_eq(a.datagrams_sent, 23);
  cr_assert_eq(a.bytes_sent, 19 * 1200 + 700 + 3000);
  cr_assert_eq(b.datagrams_received, 23);
  cr_assert_eq(b.bytes_received, 19 * 1200 + 700 + 3000);
  cr_assert_eq(b.datagrams_sent, 3);
  cr_assert_eq(b.bytes_sent, 3600);
  cr_assert_eq(a.datagrams_received, 3);
  cr_assert_eq(a.bytes_received, 3600);
  ckt_udp_close(&a);
  ckt_udp_close(&b);
}

Test(udp, batch_of_65527_bytes_is_split) {
  ckt_udp a, b;

  open_on(&a, "127.0.0.1");
  open_on(&b, "127.0.0.1");
  /* 54 x 1200 fit one GSO send (64800 <= 65507); 727 bytes follow. */
  roundtrip(&a, &b, 65527, 1200, 64);
  ckt_udp_disable_offload(&a);
  ckt_udp_disable_offload(&b);
  roundtrip(&a, &b, 65527, 1200, 64);
  ckt_udp_close(&a);
  ckt_udp_close(&b);
}

Test(udp, more_than_64_segments_is_split) {
  ckt_udp a, b;

  open_on(&a, "127.0.0.1");
  open_on(&b, "127.0.0.1");
  roundtrip(&a, &b, 150 * 100 - 1, 100, 64);
  ckt_udp_disable_offload(&a);
  roundtrip(&a, &b, 150 * 100 - 1, 100, 64);
  ckt_udp_close(&a);
  ckt_udp_close(&b);
}

Test(udp, oversized_datagram_fails_with_emsgsize) {
  ckt_udp a, b;
  size_t len = 70000, sent = 1;
  uint8_t *batch = make_batch(len, len);

  open_on(&a, "127.0.0.1");
  open_on(&b, "127.0.0.1");
  cr_assert_eq(ckt_udp_send_partial(&a, &b.local, batch, len, 0, &sent),
               CKT_ERR_IO);
  cr_assert_eq(errno, EMSGSIZE);
  cr_assert_eq(sent, 0);
  /* Segments over the UDP maximum never go to GSO; the first one fails. */
  sent = 1;
  cr_assert_eq(ckt_udp_send_partial(&a, &b.local, batch, len, 66000, &sent),
               CKT_ERR_IO);
  cr_assert_eq(errno, EMSGSIZE);
  cr_assert_eq(sent, 0);
  cr_assert_eq(a.datagrams_sent, 0);
  cr_assert_eq(a.bytes_sent, 0);
  ckt_udp_close(&a);
  ckt_udp_close(&b);
  free(batch);
}

Test(udp, ipv6_loopback) {
  ckt_addr any, v4;
  ckt_udp a, b;
  int v;
  socklen_t vl = sizeof(v);
  char s[CKT_ADDR_STRLEN];
  const uint8_t one[1] = {1};

  cr_assert_eq(ckt_addr_parse("::1", "0", &any), CKT_OK);
  if (ckt_udp_open(&a, &any) != CKT_OK) {
    if (errno == EADDRNOTAVAIL || errno == EAFNOSUPPORT) {
      cr_skip_test("no ::1 on this machine: %s", strerror(errno));
    }
    cr_assert_fail("open [::1]:0: %s", strerror(errno));
  }
  open_on(&b, "::1");
  ckt_addr_format(&b.local, s, sizeof(s));
  cr_assert_eq(strncmp(s, "[::1]:", 6), 0, "bound to %s", s);
  cr_assert_neq(ckt_addr_port(&b.local), 0);
  cr_assert_eq(getsockopt(a.fd, IPPROTO_IPV6, IPV6_V6ONLY, &v, &vl), 0);
  cr_assert_eq(v, 1, "dual-stack must be off");
  vl = sizeof(v);
  cr_assert_eq(getsockopt(a.fd, IPPROTO_IPV6, IPV6_MTU_DISCOVER, &v, &vl), 0);
  cr_assert_eq(v, IPV6_PMTUDISC_DO);
  fprintf(stderr, "udp: IPv6 %s, gso=%d gro=%d\n", s, a.gso, b.gro);

  roundtrip(&a, &b, 19 * 1200 + 700, 1200, 64);
  roundtrip(&a, &b, 65527, 1200, 64);
  ckt_udp_disable_offload(&a);
  ckt_udp_disable_offload(&b);
  roundtrip(&a, &b, 19 * 1200 + 700, 1200, 64);

  /* An IPv6-only socket cannot reach an IPv4 peer. */
  cr_assert_eq(ckt_addr_parse("127.0.0.1", "9", &v4), CKT_OK);
  cr_assert_eq(ckt_udp_send(&a, &v4, one, 1, 0), CKT_ERR_IO);
  ckt_udp_close(&a);
  ckt_udp_close(&b);
}

Test(udp, gso_refused_by_the_kernel_falls_back_and_stays_off) {
  ckt_udp a, b;
  int gso;

  open_on(&a, "127.0.0.1");
  open_on(&b, "127.0.0.1");
  gso = a.gso;
  /* Without UDP checksums the kernel refuses GSO sends (EINVAL) but still
   * sends plain datagrams: the real condition the fallback is for. */
  cr_assert_eq(
      setsockopt(a.fd, SOL_SOCKET, SO_NO_CHECK, &(int){1}, sizeof(int)), 0);
  roundtrip(&a, &b, 19 * 1200 + 700, 1200, 64);
  cr_assert_eq(a.gso, 0, "the refusal is remembered");
  fprintf(stderr, "udp: GSO %s, after a refused GSO send: gso=%d\n",
          gso ? "was on" : "was never on", a.gso);
  roundtrip(&a, &b, 65527, 1200, 64);
  ckt_udp_close(&a);
  ckt_udp_close(&b);
}

Test(udp, ipv6_segment_over_the_mtu_fails_but_keeps_gso) {
  ckt_addr any;
  ckt_udp a, b;
  uint8_t *batch = make_batch(2600, 1300);

  cr_assert_eq(ckt_addr_parse("::1", "0", &any), CKT_OK);
  if (ckt_udp_open(&a, &any) != CKT_OK) {
    free(batch);
    if (errno == EADDRNOTAVAIL || errno == EAFNOSUPPORT) {
      cr_skip_test("no ::1 on this machine: %s", strerror(errno));
    }
    cr_assert_fail("open [::1]:0: %s", strerror(errno));
  }
  open_on(&b, "::1");
  /* A socket MTU of 1280 makes 1300-byte segments too big: PMTUDISC_DO
   * must refuse them rather than fragment, and that is no reason to stop
   * using GSO. */
  cr_assert_eq(
      setsockopt(a.fd, IPPROTO_IPV6, IPV6_MTU, &(int){1280}, sizeof(int)), 0);
  int gso = a.gso;
  cr_assert_eq(ckt_udp_send(&a, &b.local, batch, 2600, 1300), CKT_ERR_IO);
  cr_assert_eq(errno, EMSGSIZE);
  cr_assert_eq(a.gso, gso);
  cr_assert_eq(ckt_udp_send(&a, &b.local, batch, 1300, 0), CKT_ERR_IO);
  cr_assert_eq(errno, EMSGSIZE);
  cr_assert_eq(a.datagrams_sent, 0);
  roundtrip(&a, &b, 19 * 1200 + 700, 1200, 64);
  cr_assert_eq(a.gso, gso);
  ckt_udp_close(&a);
  ckt_udp_close(&b);
  free(batch);
}

Test(udp, same_failure_without_gso_keeps_gso) {
  ckt_udp a;
  ckt_addr port0;
  uint8_t *batch = make_batch(2400, 1200);

  open_on(&a, "127.0.0.1");
  int gso = a.gso;
  /* Port 0 is EINVAL with or without GSO: not GSO's fault. */
  cr_assert_eq(ckt_addr_parse("127.0.0.1", "0", &port0), CKT_OK);
  cr_assert_eq(ckt_udp_send(&a, &port0, batch, 2400, 1200), CKT_ERR_IO);
  cr_assert_eq(errno, EINVAL);
  cr_assert_eq(a.gso, gso);
  cr_assert_eq(a.datagrams_sent, 0);
  ckt_udp_close(&a);
  free(batch);
}

Test(udp, empty_datagram_is_received_once) {
  ckt_udp a, b;
  ckt_udp_rxbuf *rx;
  got *g = calloc(1, sizeof(*g));

  cr_assert_not_null(g);
  open_on(&a, "127.0.0.1");
  open_on(&b, "127.0.0.1");
  cr_assert_eq(ckt_udp_rxbuf_new(&rx), CKT_OK);
  /* ckt_udp_send refuses len 0 (QUIC never sends one), but a peer may. */
  cr_assert_eq(
      sendto(a.fd, "", 0, 0, (const struct sockaddr *)&b.local.ss, b.local.len),
      0);
  recv_n(&b, rx, 1, 8, g);
  cr_assert_eq(g->len[0], 0);
  cr_assert(ckt_addr_equal(&g->from[0], &a.local));
  got_free(g);
  free(g);
  ckt_udp_rxbuf_free(rx);
  ckt_udp_close(&a);
  ckt_udp_close(&b);
}
