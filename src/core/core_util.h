/*
 * core_util.h — small helpers every layer uses: wiping secrets, OS
 * randomness, hex.
 */
#ifndef CKT_CORE_UTIL_H
#define CKT_CORE_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* Counters written by one thread (the loop) and read by any: relaxed
 * atomic loads and stores, no locked instruction on the hot path. */
#define CKT_COUNTER_ADD(field, v)                                              \
  __atomic_store_n(&(field),                                                   \
                   __atomic_load_n(&(field), __ATOMIC_RELAXED) + (v),          \
                   __ATOMIC_RELAXED)
#define CKT_COUNTER_GET(field) __atomic_load_n(&(field), __ATOMIC_RELAXED)

/* Zeroes memory in a way the compiler may not elide. */
void ckt_secure_zero(void *p, size_t n);
/* Fills buf with bytes from the kernel's CSPRNG (getrandom).
 * CKT_OK or CKT_ERR_IO. */
int ckt_random_bytes(void *buf, size_t n);
/* Writes 2*n lowercase hex digits and a NUL into out (size >= 2n+1);
 * with sep != 0, puts sep between bytes (size >= 3n). */
void ckt_hex_encode(char *out, const uint8_t *in, size_t n, char sep);
/* Reads exactly 2*n hex digits (either case) from in into out.  1 if all
 * were hex digits, 0 otherwise (out is then partly written). */
int ckt_hex_decode(uint8_t *out, const char *in, size_t n);

#endif
