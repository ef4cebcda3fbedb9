/*
 * tls_der.h — the few DER reads ckt does itself (PKCS#8 key envelopes),
 * on bounded cursors.  Certificates are parsed by wolfSSL.
 */
#ifndef CKT_TLS_DER_H
#define CKT_TLS_DER_H

#include <stddef.h>
#include <stdint.h>

#include "core_cursor.h"

#define CKT_DER_SEQUENCE 0x30
#define CKT_DER_INTEGER 0x02
#define CKT_DER_OCTET_STRING 0x04
#define CKT_DER_BIT_STRING 0x03
#define CKT_DER_OID 0x06
#define CKT_DER_NULL 0x05

/* Reads one TLV with the expected tag; *value covers its contents.
 * Returns 0, or -1 on a wrong tag, indefinite or overlong length, or
 * truncation (and marks c bad). */
int ckt_der_expect(ckt_cursor *c, uint8_t tag, ckt_cursor *value);

/* Peeks at the next tag; -1 at the end. */
int ckt_der_peek_tag(const ckt_cursor *c);

#endif
