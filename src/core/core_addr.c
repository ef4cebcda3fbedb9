/* core_addr.c — socket addresses: strict parsing, formatting, comparing. */
#include "core_addr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckt/error.h"

/* Longest host part ckt_addr_parse() accepts (DNS names stop at 253). */
#define HOST_MAX 255
#define NAME_CHARS                                                             \
  "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-."

static int parse_port(const char *s) {
  long v = 0;
  size_t i;

  if (!*s) {
    return -1;
  }
  for (i = 0; s[i]; ++i) {
    /* Digits only: strtoul() would take signs, spaces and "0x". */
    if (s[i] < '0' || s[i] > '9' || i >= 5) {
      return -1;
    }
    v = v * 10 + (s[i] - '0');
  }
  return v <= 65535 ? (int)v : -1;
}

/* errno must be cleared before the getaddrinfo() that returned rv. */
static int resolver_error(int rv) {
  switch (rv) {
  case EAI_MEMORY:
    return CKT_ERR_NOMEM;
  case EAI_SYSTEM:
    return CKT_ERR_IO; /* errno set by getaddrinfo */
  case EAI_AGAIN:
    errno = EAGAIN;
    return CKT_ERR_IO;
  default:
    /* glibc says EAI_NONAME when a lookup service ran out of memory:
     * malloc's ENOMEM tells that from an unknown name. */
    return errno == ENOMEM ? CKT_ERR_NOMEM : CKT_ERR_INVALID_ARGUMENT;
  }
}

static int resolve(const char *host, const char *port, int portnum,
                   ckt_addr *out) {
  struct addrinfo hints, *res = NULL, *ai;
  int rv;

  memset(&hints, 0, sizeof(hints));
  hints.ai_socktype = SOCK_DGRAM;
  hints.ai_protocol = IPPROTO_UDP;
  hints.ai_flags = AI_NUMERICSERV;
  if (strchr(host, ':')) {
    /* getaddrinfo rather than inet_pton: it also reads "%scope". */
    hints.ai_family = AF_INET6;
    hints.ai_flags |= AI_NUMERICHOST;
  } else if (strspn(host, "0123456789.") == strlen(host)) {
    /* Looks numeric, so it must be a strict dotted quad: getaddrinfo would
     * take inet_aton's "127.1" and "0x7f.1" forms. */
    struct sockaddr_in *sin = (struct sockaddr_in *)&out->ss;
    if (inet_pton(AF_INET, host, &sin->sin_addr) != 1) {
      return CKT_ERR_INVALID_ARGUMENT;
    }
    sin->sin_family = AF_INET;
    sin->sin_port = htons((uint16_t)portnum);
    out->len = sizeof(*sin);
    return CKT_OK;
  } else {
    struct in_addr ignored;
    /* A host name: letters, digits, '-' and '.' only, so junk never
     * reaches the resolver, and nothing inet_aton reads as a number
     * ("0x7f.1", "1.2.3.4 x"), which getaddrinfo would accept. */
    if (strspn(host, NAME_CHARS) != strlen(host) ||
        inet_aton(host, &ignored) != 0) {
      return CKT_ERR_INVALID_ARGUMENT;
    }
    hints.ai_family = AF_UNSPEC;
  }
  errno = 0;
  rv = getaddrinfo(host, port, &hints, &res);
  if (rv != 0) {
    return resolver_error(rv);
  }
  rv = CKT_ERR_INVALID_ARGUMENT;
  for (ai = res; ai; ai = ai->ai_next) {
    if ((ai->ai_family == AF_INET || ai->ai_family == AF_INET6) &&
        ai->ai_addrlen <= sizeof(out->ss)) {
      memcpy(&out->ss, ai->ai_addr, ai->ai_addrlen);
      out->len = ai->ai_addrlen;
      rv = CKT_OK;
      break;
    }
  }
  freeaddrinfo(res);
  return rv;
}

int ckt_addr_parse(const char *host, const char *port_or_null, ckt_addr *out) {
  char h[HOST_MAX + 1];
  const char *hstart = host, *hend, *port = port_or_null;
  size_t hlen;
  int portnum, rv;

  if (!host || !out) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  memset(out, 0, sizeof(*out));
  hend = host + strlen(host);
  if (host[0] == '[') {
    const char *close = strchr(host, ']');
    if (!close) {
      return CKT_ERR_INVALID_ARGUMENT;
    }
    hstart = host + 1;
    hend = close;
    if (!port) {
      if (close[1] != ':') {
        return CKT_ERR_INVALID_ARGUMENT;
      }
      port = close + 2;
    } else if (close[1] != 0) {
      return CKT_ERR_INVALID_ARGUMENT;
    }
    /* Brackets are for IPv6 addresses only. */
    if (!memchr(hstart, ':', (size_t)(hend - hstart))) {
      return CKT_ERR_INVALID_ARGUMENT;
    }
  } else if (!port) {
    const char *colon = strrchr(host, ':');
    /* Without brackets a second colon makes the split ambiguous. */
    if (!colon || strchr(host, ':') != colon) {
      return CKT_ERR_INVALID_ARGUMENT;
    }
    hend = colon;
    port = colon + 1;
  }
  hlen = (size_t)(hend - hstart);
  if (hlen == 0 || hlen > HOST_MAX) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  memcpy(h, hstart, hlen);
  h[hlen] = 0;
  portnum = parse_port(port);
  if (portnum < 0) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  rv = resolve(h, port, portnum, out);
  if (rv != CKT_OK) {
    int saved = errno;
    memset(out, 0, sizeof(*out));
    errno = saved;
  }
  return rv;
}

void ckt_addr_format(const ckt_addr *a, char *out, size_t outsz) {
  char host[INET6_ADDRSTRLEN];

  if (!out || outsz == 0) {
    return;
  }
  if (a && a->ss.ss_family == AF_INET && a->len >= sizeof(struct sockaddr_in)) {
    const struct sockaddr_in *sin = (const struct sockaddr_in *)&a->ss;
    inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
    snprintf(out, outsz, "%s:%u", host, (unsigned)ntohs(sin->sin_port));
  } else if (a && a->ss.ss_family == AF_INET6 &&
             a->len >= sizeof(struct sockaddr_in6)) {
    const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&a->ss;
    inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
    if (sin6->sin6_scope_id) {
      /* The numeric scope, which ckt_addr_parse() reads back. */
      snprintf(out, outsz, "[%s%%%u]:%u", host, (unsigned)sin6->sin6_scope_id,
               (unsigned)ntohs(sin6->sin6_port));
    } else {
      snprintf(out, outsz, "[%s]:%u", host, (unsigned)ntohs(sin6->sin6_port));
    }
  } else {
    snprintf(out, outsz, "(unknown)");
  }
}

int ckt_addr_equal(const ckt_addr *a, const ckt_addr *b) {
  if (!a || !b || a->ss.ss_family != b->ss.ss_family) {
    return 0;
  }
  if (a->ss.ss_family == AF_INET) {
    const struct sockaddr_in *x = (const struct sockaddr_in *)&a->ss;
    const struct sockaddr_in *y = (const struct sockaddr_in *)&b->ss;
    return x->sin_port == y->sin_port &&
           x->sin_addr.s_addr == y->sin_addr.s_addr;
  }
  if (a->ss.ss_family == AF_INET6) {
    const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)&a->ss;
    const struct sockaddr_in6 *y = (const struct sockaddr_in6 *)&b->ss;
    return x->sin6_port == y->sin6_port &&
           x->sin6_scope_id == y->sin6_scope_id &&
           memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
  }
  return a->len == b->len && a->len <= sizeof(a->ss) &&
         memcmp(&a->ss, &b->ss, a->len) == 0;
}

uint16_t ckt_addr_port(const ckt_addr *a) {
  if (!a) {
    return 0;
  }
  if (a->ss.ss_family == AF_INET) {
    return ntohs(((const struct sockaddr_in *)&a->ss)->sin_port);
  }
  if (a->ss.ss_family == AF_INET6) {
    return ntohs(((const struct sockaddr_in6 *)&a->ss)->sin6_port);
  }
  return 0;
}
