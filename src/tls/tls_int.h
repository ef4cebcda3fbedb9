/*
 * tls_int.h — internals shared by the tls layer's files.
 */
#ifndef CKT_TLS_INT_H
#define CKT_TLS_INT_H

#include <stddef.h>
#include <stdint.h>

/* Initialises libsodium and wolfSSL once per process (pthread_once).
 * CKT_OK or CKT_ERR_CRYPTO. */
int ckt_tls_init(void);

struct ckt_cert_info;
/* ckt_cert_describe() for a DER certificate (as the TLS stack hands it
 * over).  CKT_OK, CKT_ERR_FORMAT, CKT_ERR_TOO_LARGE, CKT_ERR_NOMEM. */
int ckt_cert_describe_der(const uint8_t *der, size_t len,
                          struct ckt_cert_info *info);

#endif
