/*
 * tlstcp — bulk TLS 1.3 over TCP with wolfSSL: the yardstick for ckt's
 * QUIC bulk transfer (same library, same Ed25519 certificates, same suite).
 *
 *   tlstcp -serve -addr 127.0.0.1:7420 -cert node.crt -key node.key -ca ca.crt
 *   tlstcp -to 127.0.0.1:7420 -cert client.crt -key client.key -ca ca.crt \
 *          -bytes 1073741824 [-aes] [-chunk 262144]
 *
 * Both ends authenticate with certificates from the CA (the server demands
 * one), speak TLS 1.3 only, with X25519 and Ed25519 signatures as ckt does,
 * and one suite: TLS_CHACHA20_POLY1305_SHA256, or TLS_AES_128_GCM_SHA256
 * with -aes.  The client sends an 8-byte big-endian length and that many
 * bytes; the server reads them all and answers with the 8-byte count it got.
 * The client prints the handshake time (TCP connect + TLS handshake) and the
 * transfer time (after the handshake until the answer), one line.
 */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>

#include "cmdline.h"

enum {
  HDR_LEN = 8,
  IDLE_SECS = 30 /* the server drops a client silent this long */
};

typedef struct suite {
  const char *wolf; /* wolfSSL's name, for the cipher list */
  const char *iana; /* the RFC 8446 name, for the output */
} suite;

static const suite suite_chacha = {"TLS13-CHACHA20-POLY1305-SHA256",
                                   "TLS_CHACHA20_POLY1305_SHA256"};
static const suite suite_aes = {"TLS13-AES128-GCM-SHA256",
                                "TLS_AES_128_GCM_SHA256"};

/* ---- flags ------------------------------------------------------------- */

typedef struct opts {
  int serve, aes;
  const char *addr, *to, *cert, *key, *ca;
  unsigned long long bytes, chunk;
} opts;

/* ---- helpers ------------------------------------------------------------ */

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* HOST:PORT or [HOST]:PORT, numeric only. */
static int resolve(const char *hostport, struct sockaddr_storage *ss,
                   socklen_t *sslen) {
  char host[256];
  const char *colon = strrchr(hostport, ':');
  const char *h = hostport;
  size_t hlen;
  struct addrinfo hints, *res;
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
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
  if (getaddrinfo(host, colon + 1, &hints, &res) != 0) {
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

/* wolfSSL's reason for the last failure on ssl, after a call returned rv. */
static const char *ssl_reason(WOLFSSL *ssl, int rv, char *buf, size_t len) {
  int err = wolfSSL_get_error(ssl, rv);
  if (err == WOLFSSL_ERROR_WANT_READ || err == WOLFSSL_ERROR_WANT_WRITE) {
    snprintf(buf, len, "timed out");
  } else if (err == WOLFSSL_ERROR_SYSCALL || err == SOCKET_ERROR_E) {
    snprintf(buf, len, "%s", errno ? strerror(errno) : "connection closed");
  } else if (err == WOLFSSL_ERROR_ZERO_RETURN || err == SOCKET_PEER_CLOSED_E) {
    snprintf(buf, len, "the peer closed the connection");
  } else {
    char s[WOLFSSL_MAX_ERROR_SZ];
    WOLFSSL_ALERT_HISTORY h;
    wolfSSL_ERR_error_string_n((unsigned long)err, s, sizeof(s));
    memset(&h, 0, sizeof(h));
    if (err == FATAL_ERROR &&
        wolfSSL_get_alert_history(ssl, &h) == WOLFSSL_SUCCESS &&
        h.last_rx.code > 0) {
      /* The peer refused: its alert says why (bad_certificate, ...). */
      snprintf(buf, len, "the peer sent the alert '%s' (wolfSSL error %d)",
               wolfSSL_alert_desc_string_long(h.last_rx.code), err);
    } else {
      snprintf(buf, len, "%s (wolfSSL error %d)", s, err);
    }
  }
  return buf;
}

static int write_all(WOLFSSL *ssl, const unsigned char *p, size_t len,
                     char *why, size_t whylen) {
  while (len > 0) {
    int n = len > 0x40000000u ? 0x40000000 : (int)len;
    int rv = wolfSSL_write(ssl, p, n);
    if (rv <= 0) {
      ssl_reason(ssl, rv, why, whylen);
      return -1;
    }
    p += rv;
    len -= (size_t)rv;
  }
  return 0;
}

static int read_all(WOLFSSL *ssl, unsigned char *p, size_t len, char *why,
                    size_t whylen) {
  while (len > 0) {
    int rv = wolfSSL_read(ssl, p, len > 0x40000000u ? 0x40000000 : (int)len);
    if (rv <= 0) {
      ssl_reason(ssl, rv, why, whylen);
      return -1;
    }
    p += rv;
    len -= (size_t)rv;
  }
  return 0;
}

/* A context with ckt's TLS settings; prints why and returns NULL if the
 * files do not load. */
static WOLFSSL_CTX *make_ctx(const opts *o, const suite *s) {
  int groups[1] = {WOLFSSL_ECC_X25519};
  WOLFSSL_CTX *ctx = wolfSSL_CTX_new(o->serve ? wolfTLSv1_3_server_method()
                                              : wolfTLSv1_3_client_method());
  if (!ctx) {
    fprintf(stderr, "tlstcp: cannot make a TLS context.\n");
    return NULL;
  }
  if (wolfSSL_CTX_set_cipher_list(ctx, s->wolf) != WOLFSSL_SUCCESS ||
      wolfSSL_CTX_set_groups(ctx, groups, 1) != WOLFSSL_SUCCESS ||
      wolfSSL_CTX_set1_sigalgs_list(ctx, "ED25519") != WOLFSSL_SUCCESS) {
    fprintf(stderr, "tlstcp: this wolfSSL lacks %s, X25519 or Ed25519.\n",
            s->iana);
    goto fail;
  }
  if (wolfSSL_CTX_use_certificate_chain_file(ctx, o->cert) != WOLFSSL_SUCCESS) {
    fprintf(stderr, "tlstcp: cannot load the certificate %s (PEM).\n", o->cert);
    goto fail;
  }
  if (wolfSSL_CTX_use_PrivateKey_file(ctx, o->key, WOLFSSL_FILETYPE_PEM) !=
      WOLFSSL_SUCCESS) {
    fprintf(stderr,
            "tlstcp: cannot load the private key %s (unencrypted PEM "
            "PKCS#8).\n",
            o->key);
    goto fail;
  }
  if (wolfSSL_CTX_check_private_key(ctx) != WOLFSSL_SUCCESS) {
    fprintf(stderr, "tlstcp: the key %s does not match the certificate %s.\n",
            o->key, o->cert);
    goto fail;
  }
  if (wolfSSL_CTX_load_verify_locations(ctx, o->ca, NULL) != WOLFSSL_SUCCESS) {
    fprintf(stderr, "tlstcp: cannot load the CA certificate %s (PEM).\n",
            o->ca);
    goto fail;
  }
  wolfSSL_CTX_set_verify(
      ctx, WOLFSSL_VERIFY_PEER | WOLFSSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
  if (o->serve) {
    /* Every connection is a full handshake, as in ckt. */
    wolfSSL_CTX_no_ticket_TLSv13(ctx);
  }
  return ctx;

fail:
  wolfSSL_CTX_free(ctx);
  return NULL;
}

static void set_nodelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* ---- server ------------------------------------------------------------- */

/* One client: handshake, the length, the bytes, the answer.  Failures are
 * reported and the server goes on with the next client. */
static void serve_one(WOLFSSL_CTX *ctx, int fd, const char *peer,
                      unsigned char *buf, size_t buflen) {
  unsigned char hdr[HDR_LEN];
  char why[160];
  WOLFSSL *ssl = wolfSSL_new(ctx);
  uint64_t want, got = 0;
  int rv;

  if (!ssl || wolfSSL_set_fd(ssl, fd) != WOLFSSL_SUCCESS) {
    fprintf(stderr, "tlstcp: out of memory for a connection.\n");
    goto done;
  }
  if ((rv = wolfSSL_accept(ssl)) != WOLFSSL_SUCCESS) {
    fprintf(stderr, "tlstcp: handshake with %s failed: %s\n", peer,
            ssl_reason(ssl, rv, why, sizeof(why)));
    goto done;
  }
  if (read_all(ssl, hdr, sizeof(hdr), why, sizeof(why)) != 0) {
    fprintf(stderr, "tlstcp: reading the length from %s: %s\n", peer, why);
    goto done;
  }
  want = get_u64(hdr);
  while (got < want) {
    uint64_t left = want - got;
    rv = wolfSSL_read(ssl, buf, left < buflen ? (int)left : (int)buflen);
    if (rv <= 0) {
      fprintf(stderr, "tlstcp: %s stopped after %llu of %llu bytes: %s\n", peer,
              (unsigned long long)got, (unsigned long long)want,
              ssl_reason(ssl, rv, why, sizeof(why)));
      goto done;
    }
    got += (uint64_t)rv;
  }
  put_u64(hdr, got);
  if (write_all(ssl, hdr, sizeof(hdr), why, sizeof(why)) != 0) {
    fprintf(stderr, "tlstcp: answering %s: %s\n", peer, why);
    goto done;
  }
  wolfSSL_shutdown(ssl);

done:
  wolfSSL_free(ssl);
  close(fd);
}

static int serve(const opts *o, const suite *s) {
  struct sockaddr_storage ss;
  socklen_t sslen;
  char name[NI_MAXHOST + NI_MAXSERV + 4];
  size_t buflen = 256 * 1024;
  unsigned char *buf = malloc(buflen);
  WOLFSSL_CTX *ctx;
  struct timeval idle = {IDLE_SECS, 0};
  int fd, one = 1;

  if (!buf) {
    fprintf(stderr, "tlstcp: out of memory.\n");
    return 1;
  }
  if (resolve(o->addr, &ss, &sslen) != 0) {
    fprintf(stderr, "tlstcp: '%s' is not a numeric HOST:PORT.\n", o->addr);
    return 1;
  }
  if (!(ctx = make_ctx(o, s))) {
    return 1;
  }
  fd = socket(ss.ss_family, SOCK_STREAM, 0);
  if (fd < 0 ||
      setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
      bind(fd, (struct sockaddr *)&ss, sslen) != 0 || listen(fd, 16) != 0) {
    fprintf(stderr, "tlstcp: cannot listen on %s: %s\n", o->addr,
            strerror(errno));
    return 1;
  }
  sslen = sizeof(ss);
  getsockname(fd, (struct sockaddr *)&ss, &sslen);
  format_addr(&ss, sslen, name, sizeof(name));
  printf("listening %s suite=%s\n", name, s->iana);
  fflush(stdout);

  for (;;) {
    struct sockaddr_storage peer;
    socklen_t peerlen = sizeof(peer);
    int c = accept(fd, (struct sockaddr *)&peer, &peerlen);
    if (c < 0) {
      if (errno == EINTR || errno == ECONNABORTED) {
        continue;
      }
      fprintf(stderr, "tlstcp: accept: %s\n", strerror(errno));
      return 1;
    }
    set_nodelay(c);
    /* A client that stalls must not hold the server forever. */
    setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &idle, sizeof(idle));
    format_addr(&peer, peerlen, name, sizeof(name));
    serve_one(ctx, c, name, buf, buflen);
  }
}

/* ---- client ------------------------------------------------------------- */

static int send_bulk(const opts *o, const suite *s) {
  struct sockaddr_storage ss;
  socklen_t sslen;
  unsigned char hdr[HDR_LEN], *buf = NULL;
  char why[160];
  WOLFSSL_CTX *ctx;
  WOLFSSL *ssl = NULL;
  const char *got_suite;
  uint64_t t0, t1, t2, left;
  int fd = -1, rv, ok = 1;

  if (resolve(o->to, &ss, &sslen) != 0) {
    fprintf(stderr, "tlstcp: '%s' is not a numeric HOST:PORT.\n", o->to);
    return 1;
  }
  if (!(buf = malloc(o->chunk))) {
    fprintf(stderr, "tlstcp: out of memory for a %llu-byte chunk.\n", o->chunk);
    return 1;
  }
  memset(buf, 0xa5, o->chunk);
  if (!(ctx = make_ctx(o, s))) {
    free(buf);
    return 1;
  }

  t0 = now_ns();
  fd = socket(ss.ss_family, SOCK_STREAM, 0);
  if (fd < 0 || connect(fd, (struct sockaddr *)&ss, sslen) != 0) {
    fprintf(stderr, "tlstcp: cannot connect to %s: %s%s\n", o->to,
            strerror(errno),
            errno == ECONNREFUSED ? " (is tlstcp -serve running there?)" : "");
    goto done;
  }
  set_nodelay(fd);
  if (!(ssl = wolfSSL_new(ctx)) || wolfSSL_set_fd(ssl, fd) != WOLFSSL_SUCCESS) {
    fprintf(stderr, "tlstcp: out of memory for a connection.\n");
    goto done;
  }
  if ((rv = wolfSSL_connect(ssl)) != WOLFSSL_SUCCESS) {
    fprintf(stderr, "tlstcp: TLS handshake with %s failed: %s\n", o->to,
            ssl_reason(ssl, rv, why, sizeof(why)));
    goto done;
  }
  t1 = now_ns();
  got_suite = wolfSSL_get_cipher_name(ssl);
  if (!got_suite || strcmp(got_suite, s->wolf) != 0) {
    fprintf(stderr, "tlstcp: asked for %s but the connection uses %s.\n",
            s->iana, got_suite ? got_suite : "no suite");
    goto done;
  }

  put_u64(hdr, o->bytes);
  if (write_all(ssl, hdr, sizeof(hdr), why, sizeof(why)) != 0) {
    fprintf(stderr, "tlstcp: sending the length to %s: %s\n", o->to, why);
    goto done;
  }
  for (left = o->bytes; left > 0;) {
    size_t n = left < o->chunk ? (size_t)left : (size_t)o->chunk;
    if (write_all(ssl, buf, n, why, sizeof(why)) != 0) {
      fprintf(stderr,
              "tlstcp: sending to %s failed after %llu of %llu "
              "bytes: %s\n",
              o->to, o->bytes - left, o->bytes, why);
      goto done;
    }
    left -= n;
  }
  if (read_all(ssl, hdr, sizeof(hdr), why, sizeof(why)) != 0) {
    fprintf(stderr, "tlstcp: waiting for the answer from %s: %s\n", o->to, why);
    goto done;
  }
  t2 = now_ns();
  if (get_u64(hdr) != o->bytes) {
    fprintf(stderr, "tlstcp: %s says it got %llu of %llu bytes.\n", o->to,
            (unsigned long long)get_u64(hdr), o->bytes);
    goto done;
  }
  wolfSSL_shutdown(ssl);
  printf("tlstcp bytes=%llu suite=%s handshake_ms=%.3f secs=%.4f gbps=%.3f\n",
         o->bytes, s->iana, (double)(t1 - t0) / 1e6, (double)(t2 - t1) / 1e9,
         (double)o->bytes * 8 / ((double)(t2 - t1) / 1e9) / 1e9);
  ok = 0;

done:
  wolfSSL_free(ssl);
  if (fd >= 0) {
    close(fd);
  }
  wolfSSL_CTX_free(ctx);
  free(buf);
  return ok;
}

int main(int argc, char **argv) {
  opts o;
  unsigned long bytes = ~0ul, chunk = 256 * 1024; /* ~0: not given */
  const suite *s;
  int rv;

  memset(&o, 0, sizeof(o));
  {
    const cmd_flag flags[] = {
        {"serve", CMD_BOOL, &o.serve, 0, 0, NULL,
         "accept clients, one at a time, until killed"},
        {"addr", CMD_STRING, &o.addr, 0, 0, "HOST:PORT",
         "serve on HOST:PORT (PORT 0: any free port)"},
        {"to", CMD_STRING, &o.to, 0, 0, "HOST:PORT",
         "the tlstcp -serve to send to"},
        {"cert", CMD_STRING, &o.cert, 0, 0, "CRT",
         "this end's certificate (PEM, e.g. selfy's node.crt)"},
        {"key", CMD_STRING, &o.key, 0, 0, "KEY",
         "its private key (unencrypted PEM, selfy -nopass)"},
        {"ca", CMD_STRING, &o.ca, 0, 0, "CA",
         "the CA certificate the peer's must chain to (PEM)"},
        {"bytes", CMD_UINT, &bytes, 0, 1ul << 50, "N",
         "bytes to send (client; required)"},
        {"chunk", CMD_UINT, &chunk, 1, 64ul << 20, "BYTES",
         "bytes per wolfSSL_write (default 262144)"},
        {"aes", CMD_BOOL, &o.aes, 0, 0, NULL,
         "use TLS_AES_128_GCM_SHA256 instead of\n"
         "TLS_CHACHA20_POLY1305_SHA256"},
    };
    const cmd_spec spec = {
        "tlstcp",
        "-serve -addr HOST:PORT -cert CRT -key KEY -ca CA [-aes]\n"
        "       tlstcp -to HOST:PORT -cert CRT -key KEY -ca CA -bytes N "
        "[-aes] [-chunk BYTES]",
        "Bulk TLS 1.3 over TCP (wolfSSL, mutual certificate authentication): "
        "the\nclient sends N bytes, the server acknowledges them; the client "
        "prints the\nhandshake time and the throughput.",
        flags,
        sizeof(flags) / sizeof(flags[0]),
        NULL};
    int first = cmd_parse(&spec, argc, argv);
    if (first < argc) {
      cmd_usage_error("tlstcp", "unexpected argument '%s'.", argv[first]);
    }
  }
  o.bytes = bytes;
  o.chunk = chunk;
  if (!o.cert || !o.key || !o.ca) {
    cmd_usage_error("tlstcp", "both ends need -cert, -key and -ca.");
  }
  if (o.serve) {
    if (!o.addr || o.to) {
      cmd_usage_error("tlstcp", "-serve needs -addr HOST:PORT and no -to.");
    }
  } else if (!o.to || o.addr) {
    cmd_usage_error("tlstcp",
                    "give -serve -addr HOST:PORT, or -to HOST:PORT -bytes N.");
  } else if (bytes == ~0ul) {
    cmd_usage_error("tlstcp", "the client needs -bytes N.");
  }
  s = o.aes ? &suite_aes : &suite_chacha;
  signal(SIGPIPE, SIG_IGN);
  if (wolfSSL_Init() != WOLFSSL_SUCCESS) {
    fprintf(stderr, "tlstcp: wolfSSL does not initialise.\n");
    return 1;
  }
  rv = o.serve ? serve(&o, s) : send_bulk(&o, s);
  wolfSSL_Cleanup();
  return rv;
}
