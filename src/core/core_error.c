/* core_error.c — ckt_strerror(). */
#include "ckt/error.h"

const char *ckt_strerror(int err) {
  switch (err) {
  case CKT_OK:
    return "success";
  case CKT_ERR_INVALID_ARGUMENT:
    return "invalid argument";
  case CKT_ERR_NOMEM:
    return "out of memory";
  case CKT_ERR_IO:
    return "input/output error";
  case CKT_ERR_EXISTS:
    return "file already exists (ckt never overwrites it)";
  case CKT_ERR_NOT_FOUND:
    return "file not found";
  case CKT_ERR_FORMAT:
    return "malformed data";
  case CKT_ERR_TOO_LARGE:
    return "data exceeds a size limit";
  case CKT_ERR_KEY_TYPE:
    return "key is not Ed25519 (ckt accepts only Ed25519 keys)";
  case CKT_ERR_PASSPHRASE:
    return "wrong passphrase, or the key file was altered";
  case CKT_ERR_PASSPHRASE_REQUIRED:
    return "the key is encrypted and no passphrase was given";
  case CKT_ERR_CERT_UNTRUSTED:
    return "certificate is not signed by the trusted CA";
  case CKT_ERR_CERT_EXPIRED:
    return "certificate has expired";
  case CKT_ERR_CERT_NOT_YET_VALID:
    return "certificate is not valid yet";
  case CKT_ERR_CERT_NOT_CA:
    return "certificate is not a CA certificate";
  case CKT_ERR_KEY_MISMATCH:
    return "private key does not match the certificate";
  case CKT_ERR_CRYPTO:
    return "internal cryptographic failure";
  case CKT_ERR_CANCELED:
    return "canceled";
  case CKT_ERR_AGAIN:
    return "operation would block; try again";
  case CKT_ERR_TIMEOUT:
    return "timed out";
  case CKT_ERR_CONNECTION:
    return "connection failed or lost";
  case CKT_ERR_TLS:
    return "TLS handshake refused";
  case CKT_ERR_CLOSED:
    return "closed";
  case CKT_ERR_REMOTE:
    return "the remote handler reported an error";
  case CKT_ERR_NO_SERVICE:
    return "no such service on the remote node";
  case CKT_ERR_LIMIT:
    return "a configured limit was reached";
  case CKT_ERR_PSK:
    return "the pre-shared keys differ (or one side has none)";
  case CKT_ERR_CANCEL_SENT:
    return "cancelled; the peer was asked to abandon the call";
  case CKT_ERR_LOCKED_OUT:
    return "the known-keys file is read-only and lists no key: no peer could "
           "ever be accepted";
  default:
    return "unknown error";
  }
}
