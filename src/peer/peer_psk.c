/*
 * peer_psk.c — the pre-shared-key layer on a node's connections.
 *
 * When the node has a PSK (cfg.psk_file), each connection, once TLS is
 * done, runs the exchange of src/tls/tls_psk.h: each end opens one
 * unidirectional stream and sends its HELLO; on the peer's HELLO it
 * derives the keys and sends its CONFIRM; on the peer's CONFIRM the layer
 * is ready and the connection's calls and circuits may open streams.
 * From then on every frame is sealed; a peer can send frames as soon as
 * it is ready, which is after our CONFIRM, so we hold the keys by then.
 *
 * Failures close the connection with APP_PSK and one sentence, which the
 * other end hears too: another PSK (the CONFIRM does not open), no PSK on
 * one side (a PSK stream arrives at a node without one, or frames arrive
 * before the exchange), a HELLO not signed by the key TLS authenticated.
 */
#include <string.h>

#include "core_util.h"
#include "peer_int.h"

static void psk_fail(pconn *pc, const char *why) {
  node_log(pc->n, "connection to %s: %s", pc->name, why);
  ckt_conn_close(pc->conn, APP_PSK, why);
}

/* In conn_ready: the endpoint closes the connection with `why`. */
static int start_fail(pconn *pc, const char *why) {
  node_log(pc->n, "connection to %s: %s", pc->name, why);
  ckt_conn_set_why(pc->conn, why);
  return -1;
}

int psk_start(pconn *pc) {
  ckt_node *n = pc->n;
  uint8_t exporter[CKT_PSK_EXPORTER_LEN], seed[32];
  uint8_t hello[CKT_PSK_HELLO_LEN];
  int client = ckt_conn_is_client(pc->conn), rv;

  pc->psk_on = 1;
  n->rt->ops->random(n->rt, seed, sizeof(seed));
  if (ckt_conn_export(pc->conn, CKT_PSK_EXPORTER_LABEL, exporter,
                      sizeof(exporter)) != CKT_OK ||
      ckt_psk_hs_init(&pc->psk, n->psk, n->psk_len, client, exporter, seed) !=
          CKT_OK ||
      ckt_psk_hello_encode(&pc->psk, &n->id_key[client ? 0 : 1], hello) !=
          CKT_OK) {
    return start_fail(pc, "the pre-shared-key exchange could not start");
  }
  ckt_secure_zero(seed, sizeof(seed));
  rv = ckt_conn_open_stream(pc->conn, 0, NULL, &pc->psk_tx);
  if (rv == CKT_OK) {
    rv = ckt_stream_write(pc->psk_tx, hello, sizeof(hello), 0);
  }
  if (rv != CKT_OK) {
    return start_fail(pc,
                      "the pre-shared-key exchange could not open its stream");
  }
  return 0;
}

int psk_input(pconn *pc, const uint8_t *data, size_t len) {
  uint8_t peer_key[CKT_ED25519_KEY_LEN], confirm[CKT_PSK_CONFIRM_LEN];
  uint8_t rnd[16];
  ckt_node *n = pc->n;
  size_t had = pc->psk_in_len;
  int rv;

  if (len > sizeof(pc->psk_in) - had) {
    psk_fail(pc, "the peer's pre-shared-key stream is too long");
    return -1;
  }
  memcpy(pc->psk_in + had, data, len);
  pc->psk_in_len += len;
  if (had < CKT_PSK_HELLO_LEN && pc->psk_in_len >= CKT_PSK_HELLO_LEN) {
    if (strlen(ckt_conn_peer_key(pc->conn)) != 2 * CKT_ED25519_KEY_LEN ||
        !ckt_hex_decode(peer_key, ckt_conn_peer_key(pc->conn),
                        CKT_ED25519_KEY_LEN)) {
      psk_fail(pc, "the peer's key is unknown: no pre-shared-key exchange");
      return -1;
    }
    rv = ckt_psk_hello_accept(&pc->psk, pc->psk_in, peer_key);
    if (rv != CKT_OK) {
      psk_fail(pc, rv == CKT_ERR_FORMAT
                       ? "the peer's pre-shared-key stream is not ckt's"
                       : "the peer's pre-shared-key HELLO is not signed by "
                         "its TLS key, or not for this session");
      return -1;
    }
    n->rt->ops->random(n->rt, rnd, sizeof(rnd));
    if (ckt_psk_confirm_encode(&pc->psk, rnd, confirm) != CKT_OK ||
        ckt_stream_write(pc->psk_tx, confirm, sizeof(confirm), 1) != CKT_OK) {
      psk_fail(pc, "the pre-shared-key exchange could not finish");
      return -1;
    }
  }
  if (pc->psk_in_len == sizeof(pc->psk_in) && !pc->psk_ready) {
    if (ckt_psk_confirm_check(&pc->psk, pc->psk_in + CKT_PSK_HELLO_LEN) !=
        CKT_OK) {
      psk_fail(pc, "the pre-shared keys differ: the peer was given another "
                   "PSK file");
      return -1;
    }
    pc->psk_ready = 1;
    node_pconn_pump(pc);
  }
  return 0;
}

int node_stream_write(ckt_stream *s, const uint8_t *frames, size_t len,
                      int fin) {
  pconn *pc = ckt_conn_user(ckt_stream_conn(s));
  ckt_buf out;
  size_t off = 0;
  int rv = CKT_OK;

  if (!pc || !pc->psk_on) {
    return ckt_stream_write(s, frames, len, fin);
  }
  if (!pc->psk.have_keys) {
    return CKT_ERR_CLOSED; /* cannot happen: streams wait for the layer */
  }
  ckt_buf_init(&out, len + (len / CKT_FRAME_HEADER_LEN + 1) * CKT_PSK_OVERHEAD);
  while (rv == CKT_OK && off + CKT_FRAME_HEADER_LEN <= len) {
    uint8_t type, hdr[CKT_FRAME_HEADER_LEN], rnd[16];
    uint32_t blen;
    if (ckt_frame_header_decode(frames + off, &type, &blen) != CKT_OK ||
        blen > len - off - CKT_FRAME_HEADER_LEN ||
        blen > UINT32_MAX - CKT_PSK_OVERHEAD) {
      rv = CKT_ERR_INVALID_ARGUMENT; /* our own frames: a bug */
      break;
    }
    ckt_frame_header_encode(hdr, type, blen + CKT_PSK_OVERHEAD);
    pc->n->rt->ops->random(pc->n->rt, rnd, sizeof(rnd));
    rv = ckt_buf_append(&out, hdr, sizeof(hdr));
    if (rv == CKT_OK) {
      rv = ckt_psk_seal(&pc->psk, type, frames + off + CKT_FRAME_HEADER_LEN,
                        blen, rnd, &out);
    }
    off += CKT_FRAME_HEADER_LEN + blen;
  }
  if (rv == CKT_OK && off != len) {
    rv = CKT_ERR_INVALID_ARGUMENT;
  }
  if (rv == CKT_OK) {
    rv = ckt_stream_write(s, out.data, out.len, fin);
  }
  ckt_buf_free(&out);
  return rv;
}

int psk_open_body(pconn *pc, uint8_t type, ckt_buf *body) {
  ckt_buf plain;
  int rv;
  if (!pc || !pc->psk_on) {
    return CKT_OK;
  }
  if (!pc->psk.have_keys) {
    return CKT_ERR_PSK;
  }
  ckt_buf_init(&plain, body->len);
  rv = ckt_psk_open(&pc->psk, type, body->data, body->len, &plain);
  ckt_buf_free(body);
  *body = plain;
  return rv;
}
