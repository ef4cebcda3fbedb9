/*
 * ckt/call.h — calls in progress: streaming (upload, download, bistream),
 * cancellation, deadlines and handlers that answer later.
 *
 * The plain Message API (ckt/node.h) covers one request and one reply with
 * a handler that answers at once.  This header adds, on the same node:
 *
 *  - a caller-side handle, ckt_call, for any call: it can be cancelled, and
 *    a streaming call sends its parts through it;
 *  - a server-side handle, ckt_srvcall, for a call being served by an
 *    asynchronous or streaming handler: the handler answers whenever it is
 *    ready, from any thread, and learns when the caller cancels, the
 *    deadline passes or the connection dies;
 *  - three streaming shapes, after rpc25519's: the caller uploads a stream
 *    of parts to an upload handler (UploadReaderFunc), a download handler
 *    streams parts to the caller (ServerSendsDownloadFunc), a bistream
 *    handler does both at once (BistreamFunc).
 *
 * Each call is one bidirectional QUIC stream: parts travel in order (FIFO)
 * and flow control carries back-pressure end to end: a sender whose peer
 * does not read gets CKT_ERR_AGAIN (on the loop thread) or blocks (on any
 * other thread), and a reader can pause.  docs/wire.md, "Streaming calls",
 * has the layout; docs/peers.md has examples.
 *
 * Threading: callbacks and handlers run on the node's loop thread and must
 * not block.  Functions say from which threads they may be called.
 *
 * Ownership: a function that sends a message takes it (freed once encoded,
 * also on error), except that a send refused with CKT_ERR_AGAIN leaves the
 * message with the caller, to send again.  Messages handed to callbacks
 * belong to the node and are valid during the callback only.
 */
#ifndef CKT_CALL_H
#define CKT_CALL_H

#include <stddef.h>
#include <stdint.h>

#include "ckt/error.h"
#include "ckt/message.h"
#include "ckt/node.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What kind of call; the service must be registered for the same kind. */
enum {
  CKT_CALL_UNARY = 0,    /* one request, one reply */
  CKT_CALL_UPLOAD = 1,   /* request, parts from the caller, one reply */
  CKT_CALL_DOWNLOAD = 2, /* request, parts from the server, one reply */
  CKT_CALL_BISTREAM = 3  /* request, parts both ways, one reply */
};

/* A timeout meaning "no deadline" (streaming calls may run for hours). */
#define CKT_NO_TIMEOUT UINT32_MAX

/* ---- the caller's side -------------------------------------------------- */

typedef struct ckt_call ckt_call;

/* A part the server streamed (download, bistream), in order; its
 * LAST_PART flag marks the server's last part.  The final reply still
 * follows, through `done`. */
typedef void (*ckt_call_part_cb)(ckt_node *n, ckt_call *c,
                                 const ckt_message *part, void *user);
/* ckt_call_send() said CKT_ERR_AGAIN and there is room again. */
typedef void (*ckt_call_writable_cb)(ckt_node *n, ckt_call *c, void *user);

typedef struct ckt_call_opts {
  int kind; /* CKT_CALL_*; 0: unary */
  /* The call's deadline, from now; it travels with the request and the
   * server enforces it too.  0: the node's call_timeout_ms for a unary
   * call, no deadline for a streaming one; CKT_NO_TIMEOUT: none. */
  uint32_t timeout_ms;
  /* Required.  Runs exactly once, on the loop thread, with the final
   * reply or why there is none (ckt_call_done in ckt/node.h): besides
   * those codes, CKT_ERR_CANCELED (cancelled before the request left this
   * node: the server never saw it) and CKT_ERR_CANCEL_SENT (cancelled
   * after it left: the server was told to abandon it). */
  ckt_call_done done;
  /* Download and bistream: each part from the server (required for those
   * kinds). */
  ckt_call_part_cb on_part;
  /* Upload and bistream: optional, see ckt_call_send(). */
  ckt_call_writable_cb on_writable;
  void *user;
} ckt_call_opts;

/* Starts a call of any kind to req->service at `peer` ("host:port"),
 * dialing if needed.  When `out` is not NULL it receives a handle the
 * caller must release with ckt_call_release() (the handle stays valid
 * until then, also after `done` ran).  Any thread.
 * Returns CKT_OK when the call is under way (done will run exactly once),
 * or an error and done is not called: CKT_ERR_INVALID_ARGUMENT (NULL
 * arguments, unknown kind, no on_part for a download or bistream, a
 * host name on a simulated node), CKT_ERR_TOO_LARGE, CKT_ERR_CLOSED,
 * CKT_ERR_NOMEM. */
CKT_EXTERN int ckt_node_call_start(ckt_node *n, const char *peer,
                                   ckt_message *req, const ckt_call_opts *opts,
                                   ckt_call **out);

/* Sends the next part of an upload or bistream (its service, args,
 * subject and payload; the node fills in the rest); last != 0 marks the
 * caller's last part (the request itself counts as part 0 and is never
 * the last).  On the loop thread: CKT_ERR_AGAIN when max_queued_per_circuit
 * bytes already wait for the server (part not taken; on_writable runs when
 * there is room).  On any other thread: waits for room instead.
 * CKT_OK; CKT_ERR_AGAIN; CKT_ERR_INVALID_ARGUMENT (NULL, not an upload or
 * bistream, the last part was already sent); CKT_ERR_CLOSED (the call has
 * finished: done ran or is about to); CKT_ERR_TOO_LARGE; CKT_ERR_NOMEM. */
CKT_EXTERN int ckt_call_send(ckt_call *c, ckt_message *part, int last);

/* Cancels the call; any thread.  If the request has not left this node,
 * done runs with CKT_ERR_CANCELED; else the stream is reset with
 * application error 0x10, which the server's handler sees, and done runs
 * with CKT_ERR_CANCEL_SENT.  If the reply wins the race (a cancel from
 * another thread), done reports the reply.  CKT_OK (done will report the
 * outcome), CKT_ERR_CLOSED (done already ran), CKT_ERR_INVALID_ARGUMENT. */
CKT_EXTERN int ckt_call_cancel(ckt_call *c);

/* Stops (on != 0) or resumes reading the server's parts: while paused,
 * this call's stream gets no new flow-control credit, so the server's
 * sends soon wait.  Any thread.  CKT_OK, CKT_ERR_INVALID_ARGUMENT. */
CKT_EXTERN int ckt_call_pause(ckt_call *c, int on);

/* The call's ID (the request's call_id).  Any thread. */
CKT_EXTERN uint64_t ckt_call_id(const ckt_call *c);

/* Releases the caller's handle (not the call: a call still in progress
 * goes on and done still runs; cancel it first to stop it).  NULL fine. */
CKT_EXTERN void ckt_call_release(ckt_call *c);

/* ---- the server's side -------------------------------------------------- */

typedef struct ckt_srvcall ckt_srvcall;

/* An asynchronous unary handler, or a download handler: gets the request
 * and answers with ckt_srvcall_reply() now or later, from any thread; a
 * download handler first sends parts with ckt_srvcall_send(). */
typedef void (*ckt_serve_fn)(ckt_srvcall *sc, const ckt_message *req,
                             void *user);
/* An upload or bistream handler: called for the request (part 0) and then
 * for each part from the caller, in order; last != 0 on the caller's last
 * part.  Answers with ckt_srvcall_reply(), usually after the last part
 * (earlier ends the upload: later parts are refused). */
typedef void (*ckt_parts_fn)(ckt_srvcall *sc, const ckt_message *part, int last,
                             void *user);
/* The call ended before the handler answered.  why: CKT_ERR_CANCELED (the
 * caller cancelled or gave up), CKT_ERR_TIMEOUT (the deadline passed),
 * CKT_ERR_CONNECTION (the connection died), CKT_ERR_CLOSED (this node is
 * stopping).  The handler must still call ckt_srvcall_reply() to release
 * the handle (the reply is then discarded). */
typedef void (*ckt_srvcall_cancel_cb)(ckt_srvcall *sc, int why, void *user);
/* ckt_srvcall_send() said CKT_ERR_AGAIN and there is room again. */
typedef void (*ckt_srvcall_writable_cb)(ckt_srvcall *sc, void *user);

/* Registers a handler for a service name, replacing any handler of any
 * kind under that name.  Callers must start calls of the same kind: a
 * mismatch is refused with CKT_ERR_REMOTE ("service 'x' is an upload
 * service").  CKT_OK, CKT_ERR_INVALID_ARGUMENT (NULL, empty or > 255
 * bytes), CKT_ERR_NOMEM.  Any thread. */
CKT_EXTERN int ckt_node_register_async(ckt_node *n, const char *service,
                                       ckt_serve_fn fn, void *user);
CKT_EXTERN int ckt_node_register_upload(ckt_node *n, const char *service,
                                        ckt_parts_fn fn, void *user);
CKT_EXTERN int ckt_node_register_download(ckt_node *n, const char *service,
                                          ckt_serve_fn fn, void *user);
CKT_EXTERN int ckt_node_register_bistream(ckt_node *n, const char *service,
                                          ckt_parts_fn fn, void *user);

/* Finishes the call: sends reply (NULL: an empty reply) as the final
 * answer, an ERROR when reply->type is CKT_MSG_ERROR or reply->err is set
 * (the caller gets CKT_ERR_REMOTE with that text).  Must be called exactly
 * once per call, also after a cancellation; the handle is freed by it.
 * Any thread.  CKT_OK (sent, or discarded after a cancellation: then
 * CKT_ERR_CANCELED), CKT_ERR_TOO_LARGE (the caller gets an ERROR saying so
 * instead), CKT_ERR_INVALID_ARGUMENT (sc NULL). */
CKT_EXTERN int ckt_srvcall_reply(ckt_srvcall *sc, ckt_message *reply);

/* Sends a part to the caller (download, bistream); last != 0 marks the
 * last part.  Loop thread: CKT_ERR_AGAIN when max_queued_per_circuit bytes
 * already wait (part not taken; the writable callback runs when there is
 * room).  Any other thread: waits for room instead.  CKT_OK,
 * CKT_ERR_AGAIN, CKT_ERR_CANCELED (the call was cancelled: stop sending),
 * CKT_ERR_INVALID_ARGUMENT (not a download or bistream, or after the
 * last part or the reply), CKT_ERR_TOO_LARGE, CKT_ERR_NOMEM. */
CKT_EXTERN int ckt_srvcall_send(ckt_srvcall *sc, ckt_message *part, int last);

/* 0 while the call is live, else why it ended early (the codes of
 * ckt_srvcall_cancel_cb).  Any thread: a long handler polls it. */
CKT_EXTERN int ckt_srvcall_cancelled(const ckt_srvcall *sc);
/* Sets the cancel callback (NULL: none); if the call already ended, it
 * runs at once.  Loop thread. */
CKT_EXTERN void ckt_srvcall_on_cancel(ckt_srvcall *sc, ckt_srvcall_cancel_cb cb,
                                      void *user);
/* Sets the writable callback (NULL: none).  Loop thread. */
CKT_EXTERN void ckt_srvcall_on_writable(ckt_srvcall *sc,
                                        ckt_srvcall_writable_cb cb, void *user);
/* Stops (on != 0) or resumes reading the caller's parts (upload,
 * bistream): back-pressure for a handler that cannot keep up.  Any
 * thread.  CKT_OK, CKT_ERR_INVALID_ARGUMENT. */
CKT_EXTERN int ckt_srvcall_pause(ckt_srvcall *sc, int on);

/* Facts about the call; any thread. */
CKT_EXTERN ckt_node *ckt_srvcall_node(const ckt_srvcall *sc);
CKT_EXTERN uint64_t ckt_srvcall_id(const ckt_srvcall *sc);
/* The caller's address ("host:port"), as in req->from. */
CKT_EXTERN const char *ckt_srvcall_peer(const ckt_srvcall *sc);
/* The deadline the caller set (Unix ns), 0 for none. */
CKT_EXTERN int64_t ckt_srvcall_deadline(const ckt_srvcall *sc);

#ifdef __cplusplus
}
#endif

#endif /* CKT_CALL_H */
