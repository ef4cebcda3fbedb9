/*
 * core_addr.h — socket addresses of either family, as every layer passes
 * them around (the runtime interface, the endpoint, the tools).
 */
#ifndef CKT_CORE_ADDR_H
#define CKT_CORE_ADDR_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* A socket address of either family.  len is what the kernel reported or
 * what ckt_addr_parse() filled in. */
typedef struct ckt_addr {
  struct sockaddr_storage ss;
  socklen_t len;
} ckt_addr;

/* Room for any ckt_addr_format() output, NUL included:
 * "[" v6 (45) "%" scope (10) "]:" port (5) NUL. */
#define CKT_ADDR_STRLEN 72

/* Parses a numeric IPv4 address ("127.0.0.1", strict dotted quad), an IPv6
 * address ("::1", "fe80::1%2" with scope), or a host name such as
 * "localhost" (getaddrinfo; the first address it returns is taken).  With
 * port_or_null == NULL the port must be part of host: "127.0.0.1:4433",
 * "[::1]:4433" (a bare IPv6 address with a port is ambiguous and refused).
 * With a separate port, host may still be bracketed ("[::1]").  Ports are
 * decimal 0..65535.
 * CKT_OK, CKT_ERR_INVALID_ARGUMENT (malformed, unknown name), CKT_ERR_NOMEM,
 * CKT_ERR_IO (resolver failure; errno set, EAGAIN for a temporary one). */
int ckt_addr_parse(const char *host, const char *port_or_null, ckt_addr *out);

/* Writes "127.0.0.1:4433" or "[::1]:4433" ("[fe80::1%2]:4433" with a
 * scope), truncated to outsz and always NUL-terminated; "(unknown)" for an
 * address of another family.  CKT_ADDR_STRLEN is always enough. */
void ckt_addr_format(const ckt_addr *a, char *out, size_t outsz);

/* 1 when both are the same family, address, port (and IPv6 scope), else 0.
 * IPv6 flow labels are ignored. */
int ckt_addr_equal(const ckt_addr *a, const ckt_addr *b);

/* The port in host byte order; 0 for a family without ports. */
uint16_t ckt_addr_port(const ckt_addr *a);

#endif
