/*
 * peer_sim.c — the simulation's built-in identities.
 *
 * A simulated node with no cert_dir presents an identity derived from its
 * host's index: the Ed25519 seed is BLAKE2b("ckt sim identity", index),
 * the certificate has a fixed serial and validity (2000-01-01 for 100
 * years), and the CA is made the same way.  Ed25519 signatures are
 * deterministic, so the bytes are the same in every process and every
 * simulation — what a trace hash depends on is the seed alone.
 *
 * They are made once per process and kept (a few hundred microseconds
 * each); the simulation's random hook is stepped around while they are
 * made, so making them does not shift anyone's random stream.
 */
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckt/identity.h"
#include "ckt/sim.h"
#include "peer_int.h"
#include "tls_random.h"

#define SIM_NOT_BEFORE 946684800 /* 2000-01-01T00:00:00Z */
#define SIM_VALID_DAYS 36500

typedef struct sim_ident {
  char *pem;
  size_t pem_len;
  ckt_ed25519_key key;
} sim_ident;

static pthread_mutex_t cache_mu = PTHREAD_MUTEX_INITIALIZER;
static sim_ident cache_ca;
static sim_ident *cache_leaves[CKT_SIM_MAX_HOSTS];

static void derive_key(const char *what, int index, ckt_ed25519_key *key) {
  uint8_t sk[crypto_sign_SECRETKEYBYTES];
  char label[64];
  int n = snprintf(label, sizeof(label), "ckt sim identity %s %d", what, index);
  crypto_generichash(key->seed, sizeof(key->seed), (const uint8_t *)label,
                     (size_t)n, NULL, 0);
  crypto_sign_seed_keypair(key->pub, sk, key->seed);
  sodium_memzero(sk, sizeof(sk));
}

static void fixed_options(ckt_cert_options *o, const char *unit,
                          const uint8_t *serial, size_t serial_len) {
  memset(o, 0, sizeof(*o));
  o->unit = unit;
  o->not_before = SIM_NOT_BEFORE;
  o->valid_days = SIM_VALID_DAYS;
  o->serial = serial;
  o->serial_len = serial_len;
}

static int make_ca(void) {
  static const uint8_t serial[] = {0x01};
  ckt_cert_options o;
  derive_key("ca", 0, &cache_ca.key);
  fixed_options(&o, "sim CA", serial, sizeof(serial));
  o.common_name = "ckt simulation CA";
  return ckt_cert_make_ca(&cache_ca.key, &o, &cache_ca.pem, &cache_ca.pem_len);
}

static int make_leaf(int index, sim_ident **out) {
  uint8_t serial[3] = {0x02, (uint8_t)(index >> 8), (uint8_t)index};
  char unit[32];
  ckt_cert_options o;
  sim_ident *id = calloc(1, sizeof(*id));
  int rv;
  if (!id) {
    return CKT_ERR_NOMEM;
  }
  derive_key("host", index, &id->key);
  snprintf(unit, sizeof(unit), "sim-%d", index);
  fixed_options(&o, unit, serial, sizeof(serial));
  rv = ckt_cert_make_leaf(&id->key, &cache_ca.key, cache_ca.pem,
                          cache_ca.pem_len, &o, &id->pem, &id->pem_len);
  if (rv != CKT_OK) {
    ckt_key_wipe(&id->key);
    free(id);
    return rv;
  }
  *out = id;
  return CKT_OK;
}

int peer_sim_identity(int index, const char **cert, size_t *cert_len,
                      ckt_ed25519_key *key, const char **ca, size_t *ca_len) {
  tls_random_fn fn;
  void *user;
  int rv = CKT_OK;

  if (index < 0 || index >= CKT_SIM_MAX_HOSTS) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  pthread_mutex_lock(&cache_mu);
  tls_random_get_hook(&fn, &user);
  if (fn) {
    tls_random_set_hook(NULL, NULL);
  }
  if (!cache_ca.pem) {
    rv = make_ca();
  }
  if (rv == CKT_OK && !cache_leaves[index]) {
    rv = make_leaf(index, &cache_leaves[index]);
  }
  if (fn) {
    tls_random_set_hook(fn, user);
  }
  if (rv == CKT_OK) {
    *cert = cache_leaves[index]->pem;
    *cert_len = cache_leaves[index]->pem_len;
    *key = cache_leaves[index]->key;
    *ca = cache_ca.pem;
    *ca_len = cache_ca.pem_len;
  }
  pthread_mutex_unlock(&cache_mu);
  return rv;
}
