/* tls_random.c — a per-thread source for wolfSSL's randomness (see
 * tls_random.h). */
#include <pthread.h>

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfcrypt/random.h>

#include "ckt/error.h"
#include "core_util.h"
#include "tls_int.h"
#include "tls_random.h"

#ifndef WC_RNG_SEED_CB
#error "wolfSSL must be built with -DWC_RNG_SEED_CB (scripts/bootstrap does)"
#endif

static _Thread_local tls_random_fn hook_fn;
static _Thread_local void *hook_user;

static pthread_once_t install_once = PTHREAD_ONCE_INIT;
static int install_result = CKT_ERR_CRYPTO;

static int seed_cb(OS_Seed *os, byte *out, word32 sz) {
  if (hook_fn) {
    hook_fn(hook_user, out, sz);
    return 0;
  }
  return wc_GenerateSeed(os, out, sz);
}

static int rand_bytes(unsigned char *buf, int len) {
  if (len < 0) {
    return 0;
  }
  if (hook_fn) {
    hook_fn(hook_user, buf, (size_t)len);
    return 1;
  }
  return ckt_random_bytes(buf, (size_t)len) == CKT_OK;
}

static int rand_status(void) {
  return 1;
}

static const WOLFSSL_RAND_METHOD rand_method = {
    .bytes = rand_bytes,
    .pseudorand = rand_bytes,
    .status = rand_status,
};

static void install(void) {
  if (ckt_tls_init() != CKT_OK || wc_SetSeed_Cb(seed_cb) != 0 ||
      wolfSSL_RAND_set_rand_method(&rand_method) != WOLFSSL_SUCCESS) {
    install_result = CKT_ERR_CRYPTO;
    return;
  }
  install_result = CKT_OK;
}

int tls_random_set_hook(tls_random_fn fn, void *user) {
  pthread_once(&install_once, install);
  if (install_result != CKT_OK) {
    return install_result;
  }
  hook_fn = fn;
  hook_user = user;
  return CKT_OK;
}

void tls_random_get_hook(tls_random_fn *fn, void **user) {
  *fn = hook_fn;
  *user = hook_user;
}
