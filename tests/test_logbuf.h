/*
 * test_logbuf.h — a node's log lines kept in memory, for tests that assert
 * what a node said (refusals, lost peers).  Header-only: each test binary
 * includes it once.
 */
#ifndef CKT_TEST_LOGBUF_H
#define CKT_TEST_LOGBUF_H

#include <pthread.h>
#include <stdio.h>
#include <string.h>

typedef struct logbuf {
  pthread_mutex_t mu;
  char text[16384];
  size_t len;
} logbuf;

static inline void logbuf_init(logbuf *l) {
  memset(l, 0, sizeof(*l));
  pthread_mutex_init(&l->mu, NULL);
}

/* A ckt_node_config.log callback; user is the logbuf. */
static inline void log_line(void *user, const char *line) {
  logbuf *l = user;
  pthread_mutex_lock(&l->mu);
  l->len += (size_t)snprintf(l->text + l->len, sizeof(l->text) - l->len, "%s\n",
                             line);
  if (l->len >= sizeof(l->text)) {
    l->len = sizeof(l->text) - 1;
  }
  pthread_mutex_unlock(&l->mu);
}

static inline int log_has(logbuf *l, const char *needle) {
  int yes;
  pthread_mutex_lock(&l->mu);
  yes = strstr(l->text, needle) != NULL;
  pthread_mutex_unlock(&l->mu);
  return yes;
}

#endif
