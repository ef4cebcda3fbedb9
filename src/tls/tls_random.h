/*
 * tls_random.h — where wolfSSL's randomness comes from on this thread.
 *
 * Production leaves it alone: wolfSSL seeds its DRBGs from the OS.  The
 * simulator sets a hook on its thread so that every DRBG wolfSSL seeds
 * there (one per TLS session: client randoms, key shares) and every
 * RAND_bytes() call (ngtcp2's token nonces and path challenges) draw from
 * the scenario's PRNG: a simulated run is then reproducible from its seed.
 *
 * The first call installs two process-wide hooks in wolfSSL (a seed
 * callback and a RAND method); on threads without a hook they fall through
 * to the OS as before.
 */
#ifndef CKT_TLS_RANDOM_H
#define CKT_TLS_RANDOM_H

#include <stddef.h>
#include <stdint.h>

typedef void (*tls_random_fn)(void *user, uint8_t *buf, size_t len);

/* Sets (fn != NULL) or clears this thread's hook.  CKT_OK, CKT_ERR_CRYPTO
 * (wolfSSL would not take the hooks). */
int tls_random_set_hook(tls_random_fn fn, void *user);
/* This thread's hook (NULL, NULL: none): to step around it for a moment,
 * as the simulator's built-in identities are made. */
void tls_random_get_hook(tls_random_fn *fn, void **user);

#endif
