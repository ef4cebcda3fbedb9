/*
 * quic_udp.h — the UDP socket under the QUIC endpoint (Linux).
 *
 * One non-blocking socket serves every connection of a node, in both roles,
 * so it is unconnected and addresses travel with each datagram.  Batching
 * uses the kernel's UDP offloads when they work: UDP_SEGMENT (GSO) turns a
 * run of equal-sized datagrams into one sendmsg, UDP_GRO hands several
 * datagrams of one sender over in one buffer.  Both are probed at run time;
 * when the kernel or the device refuses them the socket falls back to one
 * datagram per message and remembers that, so callers never see the
 * difference except in the `gso`/`gro` flags.
 */
#ifndef CKT_QUIC_UDP_H
#define CKT_QUIC_UDP_H

#include <stddef.h>
#include <stdint.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "core_addr.h"

typedef struct ckt_udp {
  int fd;         /* -1 when closed */
  ckt_addr local; /* bound address (the actual port after binding port 0) */
  int gso;        /* 1 while UDP_SEGMENT is in use */
  int gro;        /* 1 while UDP_GRO is enabled on the socket */
  /* UDP payload bytes and datagrams (a GSO/GRO batch counts each of its
   * datagrams). */
  uint64_t bytes_sent, bytes_received, datagrams_sent, datagrams_received;
  /* Received datagrams that arrived inside a GRO batch of two or more:
   * shows that the offload is really doing something. */
  uint64_t datagrams_coalesced;
} ckt_udp;

/* Opens a non-blocking, close-on-exec UDP socket bound to bind_addr.
 * Setup: send and receive buffers raised towards 4 MiB (the kernel caps
 * them at net.core.[rw]mem_max; failure is ignored), IP(V6)_RECVERR off
 * (ICMP errors about one peer must not fail calls on a socket shared by
 * all peers), IP(V6)_MTU_DISCOVER = PMTUDISC_DO (DF set and no local
 * fragmentation, as QUIC requires), IPV6_V6ONLY on (an IPv6 socket never
 * sees v4-mapped peers), UDP_GRO on when the kernel has it, UDP_SEGMENT
 * probed.  On failure *u is closed (fd -1).
 * CKT_OK, CKT_ERR_INVALID_ARGUMENT (NULL, not IPv4/IPv6), CKT_ERR_IO
 * (errno set: EADDRINUSE, EADDRNOTAVAIL when the machine lacks the
 * address, ...). */
int ckt_udp_open(ckt_udp *u, const ckt_addr *bind_addr);

/* Closes the socket; safe to call twice or after a failed open. */
void ckt_udp_close(ckt_udp *u);

/* Switches both offloads off for good on this socket (GSO not used, UDP_GRO
 * turned off), to exercise the fallback paths. */
void ckt_udp_disable_offload(ckt_udp *u);

/* One received datagram.  data points into the ckt_udp_rxbuf. */
typedef struct ckt_udp_dgram {
  const uint8_t *data;
  size_t len;
  ckt_addr from;
} ckt_udp_dgram;

/* Receive buffers: CKT_UDP_RX_SLOTS kernel messages of CKT_UDP_RX_SLOT_SIZE
 * bytes each (64 KiB holds the largest datagram and the largest GRO batch,
 * which the kernel keeps under 64 KiB), with their iovecs, addresses and
 * control buffers.  It also keeps the datagrams of the last batch that did
 * not fit into the caller's array, so nothing is lost when max_out is
 * small.  One rxbuf belongs to one socket at a time. */
#define CKT_UDP_RX_SLOTS 16
#define CKT_UDP_RX_SLOT_SIZE 65536
typedef struct ckt_udp_rxbuf ckt_udp_rxbuf;

/* CKT_OK, CKT_ERR_INVALID_ARGUMENT, CKT_ERR_NOMEM. */
int ckt_udp_rxbuf_new(ckt_udp_rxbuf **out);
/* NULL is allowed. */
void ckt_udp_rxbuf_free(ckt_udp_rxbuf *rx);

/* Fills out[0..max_out) with received datagrams, one entry per datagram
 * (GRO batches are split at their segment size), in arrival order.  First
 * hands out what is left of the previous batch; only when that is empty
 * does it read the socket (one recvmmsg).  Returns the number of datagrams,
 * 0 when nothing is pending (EAGAIN) or max_out is 0, or
 * CKT_ERR_INVALID_ARGUMENT / CKT_ERR_IO (errno set).  Truncated datagrams
 * cannot occur with 64 KiB slots and would be dropped.  The data pointers
 * stay valid until the next call with this rxbuf. */
int ckt_udp_recv(ckt_udp *u, ckt_udp_rxbuf *rx, ckt_udp_dgram *out,
                 size_t max_out);

/* Largest UDP payload of one datagram, and of one GSO batch, over IPv4
 * (65535 minus the IPv4 and UDP headers); the kernel's segment cap. */
#define CKT_UDP_MAX_PAYLOAD 65507
#define CKT_UDP_GSO_MAX_SEGMENTS 64

/* Sends data[0..len), made of datagrams of `segment` bytes each (the last
 * may be shorter), to one destination.  segment == 0 or segment >= len
 * sends one datagram.  With GSO each sendmsg carries up to 64 datagrams
 * and at most CKT_UDP_MAX_PAYLOAD bytes; larger batches are split.  If the
 * kernel rejects a GSO send (EIO: device without checksum offload; EINVAL)
 * but the same datagrams go out one by one, GSO is switched off for good
 * (u->gso = 0); if they fail one by one too, that error is returned and GSO
 * stays on (EINVAL also means a segment larger than the path MTU).
 * CKT_OK, CKT_ERR_INVALID_ARGUMENT (NULL, len 0), CKT_ERR_AGAIN (socket
 * buffer full), CKT_ERR_IO (errno set, e.g. EMSGSIZE).  After an error some
 * leading datagrams may already be gone: ckt_udp_send_partial() says how
 * many. */
int ckt_udp_send(ckt_udp *u, const ckt_addr *to, const uint8_t *data,
                 size_t len, size_t segment);

/* ckt_udp_send(), also storing in *sent (may be NULL) how many bytes, always
 * whole datagrams, the kernel accepted — on success len, on error the
 * prefix that went out before it, so the caller can keep the rest queued
 * after CKT_ERR_AGAIN. */
int ckt_udp_send_partial(ckt_udp *u, const ckt_addr *to, const uint8_t *data,
                         size_t len, size_t segment, size_t *sent);

#endif
