/*
 * ckt/node.h — a node and the Message API.
 *
 * A node owns one UDP port and serves both roles on it: it accepts QUIC
 * connections (when `serve` is set) and dials them, any number each way.
 * Every connection is mutually authenticated TLS 1.3 with CA-signed
 * Ed25519 certificates.  On top runs the Message API of rpc25519: two-way
 * calls and one-way messages to named services, and pushes from a server
 * to a connected client.  Each call travels on its own QUIC stream.
 *
 * Threading: a node runs an event loop on one thread (ckt_node_start()
 * makes one; ckt_node_run() uses the caller's).  Handlers and completion
 * callbacks run on that loop thread and must not block.  Every function
 * below may be called from any thread unless it says otherwise; those
 * called from another thread hand their work to the loop.
 *
 * Ownership: functions that send a message take ownership of it (it is
 * freed once encoded, also on error).  Messages passed to handlers and
 * callbacks belong to the node and are valid during the call only.
 */
#ifndef CKT_NODE_H
#define CKT_NODE_H

#include <stddef.h>
#include <stdint.h>

#include "ckt/error.h"
#include "ckt/identity.h"
#include "ckt/message.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ckt_node ckt_node;

#define CKT_DEFAULT_PORT 7100
#define CKT_DEFAULT_CALL_TIMEOUT_MS 10000u
#define CKT_DEFAULT_IDLE_TIMEOUT_MS 30000u

typedef struct ckt_node_config {
  /* "host:port" to bind ("127.0.0.1:7100", "[::1]:0"); NULL: "0.0.0.0:0"
   * (any port, for a node that only dials). */
  const char *listen;
  /* 1: accept connections (server role).  Dialing always works. */
  int serve;
  /* Directory of identities in selfy's layout; NULL: $CKT_CONFIG_DIR/certs
   * (see ckt_config_dir()). */
  const char *cert_dir;
  /* Identity presented when accepting; NULL: "node" (node.crt/node.key).
   * Required when serve is set. */
  const char *server_name;
  /* Identity presented when dialing; NULL: "client".  When that identity
   * does not exist and serve is set, the server identity is used. */
  const char *client_name;
  /* CA certificate peers must be signed by; NULL: <cert_dir>/ca.crt. */
  const char *ca_file;
  /* Known keys (docs/identity.md, "Known keys"): the file of client keys
   * consulted when accepting a connection, and of server keys consulted
   * when dialing.  NULL: <cert_dir>/known_client_keys and
   * <cert_dir>/known_server_keys (none for a simulated node on built-in
   * identities).  At each handshake, after the CA check: no file, no
   * check; a writable file records each new key (trust on first use); a
   * read-only one (no write bit for anyone, root included) admits only
   * the keys it lists (lockdown). */
  const char *known_client_keys;
  const char *known_server_keys;
  /* Asked for the passphrase of encrypted key files; NULL: only plain
   * keys can be used. */
  ckt_passphrase_cb passphrase;
  void *passphrase_user;
  /* 0: TLS_CHACHA20_POLY1305_SHA256 (default); 1: TLS_AES_128_GCM_SHA256. */
  int aes_gcm;
  /* INSECURE, for debugging only: peers' certificates are not checked
   * against the CA (they must still be Ed25519).  Logged loudly. */
  int insecure_skip_verify;
  /* A peer that sends nothing for this long is declared dead (0: 30 s).
   * Live peers keep idle connections up with PINGs every keepalive_ms
   * (0: a third of idle_timeout_ms), indefinitely. */
  uint32_t idle_timeout_ms;
  uint32_t keepalive_ms;
  uint32_t handshake_timeout_ms; /* 0: 10 s */
  uint32_t call_timeout_ms;      /* default per call; 0: 10 s */
  /* Largest message payload sent or accepted; 0: 16 MiB.  Bigger
   * messages fail with CKT_ERR_TOO_LARGE before anything is sent. */
  size_t max_message_size;
  /* 1: validate client addresses with a Retry round trip. */
  int retry;
  /* Connections in both roles together; 0: 4096. */
  size_t max_connections;
  /* Limits against hostile or runaway peers; 0 means the default given.
   * Accepted connections from one IP address (0: a quarter of
   * max_connections, 1024 by default).  Beyond, new ones are refused. */
  size_t max_connections_per_address;
  /* New handshakes accepted per second (0: 1000).  Beyond, a client must
   * first prove its address with a Retry round trip, which costs this
   * node no state. */
  uint32_t max_handshakes_per_second;
  /* Calls and circuits in flight on one connection that the peer may
   * open (0: 1024; QUIC's stream limit: the peer waits for more). */
  uint32_t max_circuits_per_connection;
  /* Bytes a circuit may have sent but not yet acknowledged before
   * ckt_circuit_send() says CKT_ERR_AGAIN (0: CKT_CIRCUIT_QUEUE_MAX). */
  uint64_t max_queued_per_circuit;
  /* The same for a whole connection (0: 64 MiB; never less than the
   * largest frame, max_message_size and a header). */
  uint64_t max_queued_per_connection;
  /* A pre-shared key file (32..64 raw bytes, `selfy -gensym`): every
   * connection then runs a second key exchange only holders of the same
   * file complete, and every frame is sealed with its keys
   * (docs/security.md).  Both ends must use the same file; a peer with
   * another key, or none, is refused with CKT_ERR_PSK.  NULL: off. */
  const char *psk_file;
  /* The codec (CKT_CODEC_*, ckt/message.h) of the calls, one-way
   * messages and uploads this node starts, unless a message names its
   * own; 0: CKT_CODEC_NONE.  Replies, pushes and downloads answer each
   * peer with the codec it last used, whatever this says. */
  int codec;
  /* Log lines (refused handshakes, lost peers, warnings); NULL: stderr. */
  void (*log)(void *user, const char *line);
  void *log_user;
} ckt_node_config;

/* Handler of two-way calls.  Fill `reply` (payload, args, subject) and
 * return 0; or set reply->err (ckt_message_set_err) and return nonzero:
 * the caller then gets CKT_ERR_REMOTE and that text. */
typedef int (*ckt_call_handler)(ckt_node *n, const ckt_message *req,
                                ckt_message *reply, void *user);
/* Handler of one-way messages and pushes. */
typedef void (*ckt_oneway_handler)(ckt_node *n, const ckt_message *msg,
                                   void *user);
/* Completion of an asynchronous call, on the loop thread.  err is CKT_OK
 * with the reply, or CKT_ERR_TIMEOUT, CKT_ERR_CONNECTION, CKT_ERR_TLS,
 * CKT_ERR_REMOTE, CKT_ERR_NO_SERVICE, CKT_ERR_CLOSED, CKT_ERR_TOO_LARGE,
 * CKT_ERR_INVALID_ARGUMENT, CKT_ERR_NOMEM; `reply` is never NULL: on errors its
 * err field says what happened in one sentence. */
typedef void (*ckt_call_done)(ckt_node *n, int err, const ckt_message *reply,
                              void *user);

/* Fills cfg with defaults (all zero/NULL). */
CKT_EXTERN void ckt_node_config_init(ckt_node_config *cfg);

/* Loads identities and known keys, binds the port, builds TLS contexts.
 * CKT_OK; CKT_ERR_INVALID_ARGUMENT (bad listen address); the codes of
 * ckt_identity_load() for the certificates (CKT_ERR_NOT_FOUND,
 * CKT_ERR_PASSPHRASE...); for a known-keys file: CKT_ERR_FORMAT (a bad
 * line, logged with its number), CKT_ERR_TOO_LARGE, CKT_ERR_LOCKED_OUT
 * (read-only with no key), CKT_ERR_IO (unreadable, not a regular file);
 * CKT_ERR_IO (bind: errno set); CKT_ERR_NOMEM.  What went wrong is also
 * logged in one sentence. */
CKT_EXTERN int ckt_node_new(const ckt_node_config *cfg, ckt_node **out);
/* Runs the loop on a new thread.  CKT_OK, CKT_ERR_IO. */
CKT_EXTERN int ckt_node_start(ckt_node *n);
/* Runs the loop on the calling thread until ckt_node_stop(). */
CKT_EXTERN void ckt_node_run(ckt_node *n);
/* Closes every connection and stops the loop; pending calls finish with
 * CKT_ERR_CLOSED.  Waits for the loop thread made by ckt_node_start(). */
CKT_EXTERN void ckt_node_stop(ckt_node *n);
/* Stops (if running) and frees.  Not from the loop thread. */
CKT_EXTERN void ckt_node_free(ckt_node *n);

/* The bound address, "127.0.0.1:40123". */
CKT_EXTERN void ckt_node_address(const ckt_node *n, char *out, size_t outsz);

/* Registers a handler for a service name (replacing any).  CKT_OK,
 * CKT_ERR_INVALID_ARGUMENT (empty or > 255 bytes), CKT_ERR_NOMEM. */
CKT_EXTERN int ckt_node_register_call(ckt_node *n, const char *service,
                                      ckt_call_handler fn, void *user);
CKT_EXTERN int ckt_node_register_oneway(ckt_node *n, const char *service,
                                        ckt_oneway_handler fn, void *user);

/* Calls req->service on the node at `peer` ("host:port"), dialing it if no
 * connection is up.  timeout_ms 0: the node's call_timeout_ms; the
 * deadline travels with the request.  done runs on the loop thread.
 * Returns CKT_OK when the call is under way (done will run exactly once),
 * or an error and done is not called: CKT_ERR_INVALID_ARGUMENT,
 * CKT_ERR_TOO_LARGE, CKT_ERR_CLOSED, CKT_ERR_NOMEM. */
CKT_EXTERN int ckt_node_call_async(ckt_node *n, const char *peer,
                                   ckt_message *req, uint32_t timeout_ms,
                                   ckt_call_done done, void *user);
/* The same, blocking the calling thread (not the loop thread) until the
 * reply, an error or the timeout.  *reply is set whenever the call got
 * under way, also on errors (its err says why); free it with
 * ckt_message_free().  Returns the call's error code. */
CKT_EXTERN int ckt_node_call(ckt_node *n, const char *peer, ckt_message *req,
                             uint32_t timeout_ms, ckt_message **reply);
/* Sends a one-way message to a service at `peer` (dialing if needed).
 * Fire and forget: CKT_OK once queued; delivery is not confirmed. */
CKT_EXTERN int ckt_node_send(ckt_node *n, const char *peer, ckt_message *msg);
/* Pushes a message to a client connected to this node, over the client's
 * own connection (never dialing): `client` is the address a handler saw
 * in req->from.  CKT_OK once queued, CKT_ERR_NOT_FOUND (no such
 * connection), CKT_ERR_TOO_LARGE, CKT_ERR_CLOSED. */
CKT_EXTERN int ckt_node_push(ckt_node *n, const char *client, ckt_message *msg);

typedef struct ckt_node_stats {
  uint64_t calls_sent, calls_answered, calls_failed, calls_served;
  uint64_t oneways_sent, oneways_received;
  uint64_t connections_open;
  uint64_t bytes_sent, bytes_received; /* UDP payload bytes */
  uint64_t datagrams_sent, datagrams_received;
  /* Datagrams that belonged to nobody or did not decode, and what the
   * endpoint answered to strangers. */
  uint64_t packets_dropped, stateless_resets_sent, version_negotiations_sent,
      retries_sent;
} ckt_node_stats;

/* A snapshot; safe from any thread. */
CKT_EXTERN void ckt_node_get_stats(ckt_node *n, ckt_node_stats *out);

/* Describes the connection to `peer` once it is up: the negotiated TLS
 * suite and the peer's Ed25519 key (hex).  CKT_OK, CKT_ERR_NOT_FOUND. */
CKT_EXTERN int ckt_node_peer_info(ckt_node *n, const char *peer, char *suite,
                                  size_t suite_sz, char *peer_key,
                                  size_t key_sz);

#ifdef __cplusplus
}
#endif

#endif /* CKT_NODE_H */
