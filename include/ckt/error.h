/*
 * ckt/error.h — error codes shared by every ckt function.
 *
 * Every ckt function that can fail returns an int: 0 (CKT_OK) on success or
 * one of the negative CKT_ERR_* codes below.  Each function's documentation
 * lists the codes it can return.  ckt_strerror() turns a code into one
 * short English sentence fragment; it is thread-safe and never returns NULL.
 *
 * When a function returns CKT_ERR_IO, errno still holds the system error of
 * the failing call, so tools can say "cannot open X: <strerror(errno)>".
 */
#ifndef CKT_ERROR_H
#define CKT_ERROR_H

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define CKT_EXTERN __attribute__((visibility("default")))
#else
#define CKT_EXTERN
#endif

enum {
  CKT_OK = 0,
  /* A caller passed a NULL pointer, an empty name, an out-of-range value. */
  CKT_ERR_INVALID_ARGUMENT = -1,
  /* An allocation failed. */
  CKT_ERR_NOMEM = -2,
  /* A system call failed; errno tells which. */
  CKT_ERR_IO = -3,
  /* The file to be created already exists; ckt never overwrites it. */
  CKT_ERR_EXISTS = -4,
  /* A file that must exist does not. */
  CKT_ERR_NOT_FOUND = -5,
  /* Input is malformed: bad PEM armor, bad DER, truncated data. */
  CKT_ERR_FORMAT = -6,
  /* Input exceeds a hard limit (file size, field length, count). */
  CKT_ERR_TOO_LARGE = -7,
  /* A key or certificate is not Ed25519. */
  CKT_ERR_KEY_TYPE = -8,
  /* The passphrase is wrong or the encrypted key file was altered. */
  CKT_ERR_PASSPHRASE = -9,
  /* The key file is encrypted and no passphrase was available. */
  CKT_ERR_PASSPHRASE_REQUIRED = -10,
  /* The certificate was not signed by the trusted CA. */
  CKT_ERR_CERT_UNTRUSTED = -11,
  /* The certificate's validity period has ended. */
  CKT_ERR_CERT_EXPIRED = -12,
  /* The certificate's validity period has not started yet. */
  CKT_ERR_CERT_NOT_YET_VALID = -13,
  /* The certificate meant to act as CA is not a CA (no CA flag). */
  CKT_ERR_CERT_NOT_CA = -14,
  /* A private key does not belong to the certificate it is paired with. */
  CKT_ERR_KEY_MISMATCH = -15,
  /* The crypto library failed internally (RNG, signing). */
  CKT_ERR_CRYPTO = -16,
  /* A passphrase callback gave up (user pressed Ctrl-D, no terminal); a
   * call was cancelled before its request left this node; a served call
   * was cancelled by its caller. */
  CKT_ERR_CANCELED = -17,
  /* A non-blocking operation would block (EAGAIN/EWOULDBLOCK): nothing is
   * wrong, retry once the descriptor is ready. */
  CKT_ERR_AGAIN = -18,
  /* A deadline passed: a call's timeout, a handshake that never finished,
   * or a peer that stopped answering (idle timeout). */
  CKT_ERR_TIMEOUT = -19,
  /* The connection failed or was lost (refused, reset, closed by the
   * peer); the error text says which. */
  CKT_ERR_CONNECTION = -20,
  /* The TLS handshake was refused by either side (wrong CA, no or expired
   * certificate, non-Ed25519 key); the error text says which side and
   * why. */
  CKT_ERR_TLS = -21,
  /* The node or connection was closed locally before the operation
   * finished. */
  CKT_ERR_CLOSED = -22,
  /* The remote handler reported an error; its text travels back. */
  CKT_ERR_REMOTE = -23,
  /* The remote node has no handler registered for the service. */
  CKT_ERR_NO_SERVICE = -24,
  /* A configured limit was reached (instances of a service, ...); the
   * error text names what holds it. */
  CKT_ERR_LIMIT = -25,
  /* A known-keys file is read-only (lockdown) and lists no key: no peer
   * could ever be accepted, so the node refuses to start.  Add keys to it
   * or make it writable (docs/identity.md, "Known keys"). */
  CKT_ERR_LOCKED_OUT = -26,
  /* The pre-shared-key layer failed: the peer's PSK differs from ours, or
   * one side has none, or a sealed frame did not open. */
  CKT_ERR_PSK = -27,
  /* A call was cancelled after its request left: the server was told to
   * abandon it (ckt/call.h). */
  CKT_ERR_CANCEL_SENT = -28
};

/* Returns a static, human-readable description of an error code.
 * Unknown codes give "unknown error".  Thread-safe. */
CKT_EXTERN const char *ckt_strerror(int err);

#ifdef __cplusplus
}
#endif

#endif /* CKT_ERROR_H */
