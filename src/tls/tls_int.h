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

#endif
