/* tls_init.c — one-time initialisation of the crypto libraries. */
#include <pthread.h>
#include <sodium.h>

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>

#include "ckt/error.h"
#include "tls_int.h"

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static int init_result = CKT_ERR_CRYPTO;

static void init_libs(void) {
  if (sodium_init() < 0 || wolfSSL_Init() != WOLFSSL_SUCCESS) {
    init_result = CKT_ERR_CRYPTO;
    return;
  }
  init_result = CKT_OK;
}

int ckt_tls_init(void) {
  pthread_once(&init_once, init_libs);
  return init_result;
}
