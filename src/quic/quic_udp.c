/* quic_udp.c — the UDP socket with GSO/GRO batching. */
#include "quic_udp.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "ckt/error.h"
#include "core_util.h"

/* Older libc headers lack these; the values are the kernel ABI. */
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif

#define SOCKET_BUFFER_BYTES (4 * 1024 * 1024)

/* ---- socket ------------------------------------------------------------- */

static int set_int(int fd, int level, int name, int value) {
  return setsockopt(fd, level, name, &value, sizeof(value));
}

/* Turns an offload option on; 1 if it took, 0 if the kernel does not have
 * it (ENOPROTOOPT: unknown option, EINVAL: refused for this socket), -1
 * for any other failure, which is a real error. */
static int try_offload(int fd, int name, int value) {
  if (set_int(fd, IPPROTO_UDP, name, value) == 0) {
    return 1;
  }
  return errno == ENOPROTOOPT || errno == EINVAL ? 0 : -1;
}

int ckt_udp_open(ckt_udp *u, const ckt_addr *bind_addr) {
  int fd, fam, saved, rv;
  socklen_t need;

  if (!u) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  memset(u, 0, sizeof(*u));
  u->fd = -1;
  if (!bind_addr) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  fam = bind_addr->ss.ss_family;
  need = fam == AF_INET    ? sizeof(struct sockaddr_in)
         : fam == AF_INET6 ? sizeof(struct sockaddr_in6)
                           : 0;
  if (need == 0 || bind_addr->len < need) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  fd = socket(fam, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_UDP);
  if (fd < 0) {
    return CKT_ERR_IO;
  }
  /* Bigger buffers ride out bursts between loop iterations; the kernel
   * clamps to its maximum, and a smaller buffer still works. */
  (void)set_int(fd, SOL_SOCKET, SO_RCVBUF, SOCKET_BUFFER_BYTES);
  (void)set_int(fd, SOL_SOCKET, SO_SNDBUF, SOCKET_BUFFER_BYTES);
  if (fam == AF_INET) {
    if (set_int(fd, IPPROTO_IP, IP_RECVERR, 0) != 0 ||
        set_int(fd, IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO) != 0) {
      goto fail;
    }
  } else {
    if (set_int(fd, IPPROTO_IPV6, IPV6_V6ONLY, 1) != 0 ||
        set_int(fd, IPPROTO_IPV6, IPV6_RECVERR, 0) != 0 ||
        set_int(fd, IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO) != 0) {
      goto fail;
    }
  }
  /* Setting the socket's default segment size to 0 changes nothing but
   * tells whether the kernel knows UDP_SEGMENT; whether the device accepts
   * GSO shows only at the first send. */
  rv = try_offload(fd, UDP_SEGMENT, 0);
  if (rv < 0) {
    goto fail;
  }
  u->gso = rv;
  rv = try_offload(fd, UDP_GRO, 1);
  if (rv < 0) {
    goto fail;
  }
  u->gro = rv;
  if (bind(fd, (const struct sockaddr *)&bind_addr->ss, bind_addr->len) != 0) {
    goto fail;
  }
  u->local.len = sizeof(u->local.ss);
  if (getsockname(fd, (struct sockaddr *)&u->local.ss, &u->local.len) != 0) {
    goto fail;
  }
  u->fd = fd;
  return CKT_OK;

fail:
  saved = errno;
  close(fd);
  memset(u, 0, sizeof(*u));
  u->fd = -1;
  errno = saved;
  return CKT_ERR_IO;
}

void ckt_udp_close(ckt_udp *u) {
  if (u && u->fd >= 0) {
    close(u->fd);
    u->fd = -1;
  }
}

void ckt_udp_disable_offload(ckt_udp *u) {
  if (!u) {
    return;
  }
  u->gso = 0;
  if (u->fd >= 0 && u->gro) {
    /* Failure leaves GRO on, which ckt_udp_recv() handles anyway. */
    (void)set_int(u->fd, IPPROTO_UDP, UDP_GRO, 0);
  }
  u->gro = 0;
}

/* ---- receive ------------------------------------------------------------ */

/* Room for the UDP_GRO cmsg, with slack in case another option is on. */
#define RX_CONTROL_BYTES 64

struct ckt_udp_rxbuf {
  uint8_t *data; /* CKT_UDP_RX_SLOTS * CKT_UDP_RX_SLOT_SIZE bytes */
  struct mmsghdr msgs[CKT_UDP_RX_SLOTS];
  struct iovec iov[CKT_UDP_RX_SLOTS];
  ckt_addr from[CKT_UDP_RX_SLOTS];
  union {
    char buf[RX_CONTROL_BYTES];
    struct cmsghdr align;
  } control[CKT_UDP_RX_SLOTS];
  /* Per filled slot: GRO segment size (0: one datagram), or drop it. */
  size_t segment[CKT_UDP_RX_SLOTS];
  int drop[CKT_UDP_RX_SLOTS];
  /* Datagrams not handed out yet: slots [slot, filled), from byte `off`
   * of slot `slot`. */
  size_t filled, slot, off;
};

int ckt_udp_rxbuf_new(ckt_udp_rxbuf **out) {
  ckt_udp_rxbuf *rx;
  size_t i;

  if (!out) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  *out = NULL;
  rx = calloc(1, sizeof(*rx));
  if (!rx) {
    return CKT_ERR_NOMEM;
  }
  rx->data = malloc((size_t)CKT_UDP_RX_SLOTS * CKT_UDP_RX_SLOT_SIZE);
  if (!rx->data) {
    free(rx);
    return CKT_ERR_NOMEM;
  }
  for (i = 0; i < CKT_UDP_RX_SLOTS; ++i) {
    struct msghdr *h = &rx->msgs[i].msg_hdr;
    rx->iov[i].iov_base = rx->data + i * CKT_UDP_RX_SLOT_SIZE;
    h->msg_iov = &rx->iov[i];
    h->msg_iovlen = 1;
    h->msg_name = &rx->from[i].ss;
    h->msg_control = rx->control[i].buf;
  }
  *out = rx;
  return CKT_OK;
}

void ckt_udp_rxbuf_free(ckt_udp_rxbuf *rx) {
  if (rx) {
    free(rx->data);
    free(rx);
  }
}

/* Hands out pending datagrams, GRO batches cut at their segment size. */
static size_t drain(ckt_udp_rxbuf *rx, ckt_udp_dgram *out, size_t max_out) {
  size_t n = 0;

  while (n < max_out && rx->slot < rx->filled) {
    size_t s = rx->slot, len = rx->msgs[s].msg_len, dlen;
    if (rx->drop[s]) {
      rx->slot++;
      rx->off = 0;
      continue;
    }
    dlen = len - rx->off;
    if (rx->segment[s] && rx->segment[s] < dlen) {
      dlen = rx->segment[s];
    }
    out[n].data = rx->data + s * CKT_UDP_RX_SLOT_SIZE + rx->off;
    out[n].len = dlen;
    out[n].from = rx->from[s];
    n++;
    rx->off += dlen;
    /* >= so that an empty datagram (legal in UDP) is handed out once. */
    if (rx->off >= len) {
      rx->slot++;
      rx->off = 0;
    }
  }
  return n;
}

/* Reads the segment size from the UDP_GRO cmsg, validates the slot and
 * counts its datagrams. */
static void account_slot(ckt_udp *u, ckt_udp_rxbuf *rx, size_t s) {
  struct msghdr *h = &rx->msgs[s].msg_hdr;
  struct cmsghdr *cm;
  size_t len = rx->msgs[s].msg_len, seg = 0, count;

  rx->from[s].len = h->msg_namelen;
  rx->segment[s] = 0;
  rx->drop[s] = (h->msg_flags & MSG_TRUNC) != 0;
  if (rx->drop[s]) {
    return;
  }
  for (cm = CMSG_FIRSTHDR(h); cm; cm = CMSG_NXTHDR(h, cm)) {
    if (cm->cmsg_level == IPPROTO_UDP && cm->cmsg_type == UDP_GRO &&
        cm->cmsg_len >= CMSG_LEN(sizeof(int))) {
      int v;
      memcpy(&v, CMSG_DATA(cm), sizeof(v));
      if (v > 0) {
        seg = (size_t)v;
      }
    }
  }
  rx->segment[s] = seg;
  count = seg && len > seg ? (len + seg - 1) / seg : 1;
  CKT_COUNTER_ADD(u->datagrams_received, count);
  CKT_COUNTER_ADD(u->bytes_received, len);
  if (count > 1) {
    CKT_COUNTER_ADD(u->datagrams_coalesced, count);
  }
}

int ckt_udp_recv(ckt_udp *u, ckt_udp_rxbuf *rx, ckt_udp_dgram *out,
                 size_t max_out) {
  size_t n, i, vlen;
  int r;

  if (!u || !rx || (!out && max_out) || u->fd < 0) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  if (max_out == 0) {
    return 0;
  }
  /* Leftovers from the last batch first, so nothing is reordered. */
  n = drain(rx, out, max_out);
  if (n > 0) {
    return (int)n;
  }
  /* Each filled slot gives at least one datagram, so asking for no more
   * slots than max_out wastes no kernel work; GRO surplus stays pending. */
  vlen = max_out < CKT_UDP_RX_SLOTS ? max_out : CKT_UDP_RX_SLOTS;
  do {
    for (i = 0; i < vlen; ++i) {
      struct msghdr *h = &rx->msgs[i].msg_hdr;
      rx->iov[i].iov_len = CKT_UDP_RX_SLOT_SIZE;
      h->msg_namelen = sizeof(rx->from[i].ss);
      h->msg_controllen = sizeof(rx->control[i].buf);
      h->msg_flags = 0;
    }
    r = recvmmsg(u->fd, rx->msgs, (unsigned)vlen, 0, NULL);
    if (r < 0) {
      if (errno == EINTR) {
        continue;
      }
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        return 0;
      }
      return CKT_ERR_IO;
    }
    rx->filled = (size_t)r;
    rx->slot = 0;
    rx->off = 0;
    for (i = 0; i < rx->filled; ++i) {
      account_slot(u, rx, i);
    }
    n = drain(rx, out, max_out);
    /* n == 0 with r > 0: every slot was dropped; read on. */
  } while (n == 0 && r != 0);
  return (int)n;
}

/* ---- send --------------------------------------------------------------- */

/* msghdr fields are not const, but for sending the kernel only reads. */
static void *unconst(const void *p) {
  return (void *)(uintptr_t)p;
}

static int send_error(void) {
  return errno == EAGAIN || errno == EWOULDBLOCK ? CKT_ERR_AGAIN : CKT_ERR_IO;
}

/* One message per datagram, up to 64 per sendmmsg.  Adds what went out to
 * *done. */
static int send_plain(ckt_udp *u, const ckt_addr *to, const uint8_t *p,
                      size_t len, size_t seg, size_t *done) {
  struct mmsghdr msgs[CKT_UDP_GSO_MAX_SEGMENTS];
  struct iovec iov[CKT_UDP_GSO_MAX_SEGMENTS];
  size_t off = 0;

  while (off < len) {
    size_t n = 0, pos = off;
    int r, i;
    memset(msgs, 0, sizeof(msgs));
    while (n < CKT_UDP_GSO_MAX_SEGMENTS && pos < len) {
      size_t d = len - pos < seg ? len - pos : seg;
      iov[n].iov_base = unconst(p + pos);
      iov[n].iov_len = d;
      msgs[n].msg_hdr.msg_name = unconst(&to->ss);
      msgs[n].msg_hdr.msg_namelen = to->len;
      msgs[n].msg_hdr.msg_iov = &iov[n];
      msgs[n].msg_hdr.msg_iovlen = 1;
      pos += d;
      n++;
    }
    r = sendmmsg(u->fd, msgs, (unsigned)n, 0);
    if (r < 0) {
      if (errno == EINTR) {
        continue;
      }
      return send_error();
    }
    /* A short count means message r failed; the next call reports why. */
    for (i = 0; i < r; ++i) {
      off += iov[i].iov_len;
      *done += iov[i].iov_len;
      CKT_COUNTER_ADD(u->bytes_sent, iov[i].iov_len);
      CKT_COUNTER_ADD(u->datagrams_sent, 1);
    }
  }
  return CKT_OK;
}

/* One sendmsg with UDP_SEGMENT for each run of up to 64 datagrams. */
static int send_gso(ckt_udp *u, const ckt_addr *to, const uint8_t *p,
                    size_t len, size_t seg, size_t *done) {
  size_t per = CKT_UDP_MAX_PAYLOAD / seg, off = 0;

  if (per > CKT_UDP_GSO_MAX_SEGMENTS) {
    per = CKT_UDP_GSO_MAX_SEGMENTS;
  }
  while (off < len) {
    size_t chunk = len - off < per * seg ? len - off : per * seg;
    union {
      char buf[CMSG_SPACE(sizeof(uint16_t))];
      struct cmsghdr align;
    } control;
    struct msghdr h;
    struct iovec iov;
    struct cmsghdr *cm;
    uint16_t seg16 = (uint16_t)seg;
    ssize_t r;
    int rv;

    if (chunk <= seg) {
      /* A lone datagram needs no GSO (nor its MTU restrictions). */
      return send_plain(u, to, p + off, chunk, seg, done);
    }
    memset(&h, 0, sizeof(h));
    memset(&control, 0, sizeof(control));
    iov.iov_base = unconst(p + off);
    iov.iov_len = chunk;
    h.msg_name = unconst(&to->ss);
    h.msg_namelen = to->len;
    h.msg_iov = &iov;
    h.msg_iovlen = 1;
    h.msg_control = control.buf;
    h.msg_controllen = sizeof(control.buf);
    cm = CMSG_FIRSTHDR(&h);
    cm->cmsg_level = IPPROTO_UDP;
    cm->cmsg_type = UDP_SEGMENT;
    cm->cmsg_len = CMSG_LEN(sizeof(seg16));
    memcpy(CMSG_DATA(cm), &seg16, sizeof(seg16));
    do {
      r = sendmsg(u->fd, &h, 0);
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
      size_t before = *done;
      if (errno != EIO && errno != EINVAL) {
        return send_error();
      }
      /* EIO: the device cannot checksum GSO packets; EINVAL: GSO refused,
       * or a segment over the path MTU.  Sending one by one tells which. */
      rv = send_plain(u, to, p + off, chunk, seg, done);
      if (*done == before) {
        return rv; /* same failure without GSO: keep GSO */
      }
      u->gso = 0;
      off += *done - before;
      if (rv != CKT_OK) {
        return rv;
      }
      return send_plain(u, to, p + off, len - off, seg, done);
    }
    off += chunk;
    *done += chunk;
    CKT_COUNTER_ADD(u->bytes_sent, chunk);
    CKT_COUNTER_ADD(u->datagrams_sent, (chunk + seg - 1) / seg);
  }
  return CKT_OK;
}

int ckt_udp_send_partial(ckt_udp *u, const ckt_addr *to, const uint8_t *data,
                         size_t len, size_t segment, size_t *sent) {
  size_t done = 0;
  int rv;

  if (sent) {
    *sent = 0;
  }
  if (!u || u->fd < 0 || !to || !data || len == 0) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  if (segment == 0 || segment >= len) {
    segment = len;
  }
  if (u->gso && segment < len && segment <= CKT_UDP_MAX_PAYLOAD) {
    rv = send_gso(u, to, data, len, segment, &done);
  } else {
    rv = send_plain(u, to, data, len, segment, &done);
  }
  if (sent) {
    *sent = done;
  }
  return rv;
}

int ckt_udp_send(ckt_udp *u, const ckt_addr *to, const uint8_t *data,
                 size_t len, size_t segment) {
  return ckt_udp_send_partial(u, to, data, len, segment, NULL);
}
