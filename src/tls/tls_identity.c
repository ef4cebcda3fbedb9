/*
 * tls_identity.c — identities on disk in selfy's layout:
 *   <private_dir>/ca.crt, ca.key        the deployment's CA
 *   <cert_dir>/<name>.crt, <name>.key   a node's or client's identity
 * Files are created atomically and never overwritten; keys are 0600 and
 * the directories that hold them 0700.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ckt/identity.h"
#include "core_buf.h"
#include "core_file.h"
#include "core_util.h"

#define PASS_MAX 1024

typedef struct pass {
  char buf[PASS_MAX];
  int len; /* -1: no passphrase (plain key) */
} pass;

static int path_join(char *out, const char *dir, const char *name,
                     const char *ext) {
  int n = snprintf(out, PATH_MAX, "%s/%s%s", dir, name, ext);
  if (n < 0 || n >= PATH_MAX) {
    errno = ENAMETOOLONG;
    return CKT_ERR_IO;
  }
  return CKT_OK;
}

static int ask(const ckt_identity_options *opt, const char *what, int confirm,
               pass *p) {
  int n;
  p->len = -1;
  if (!opt || !opt->passphrase) {
    return CKT_OK;
  }
  n = opt->passphrase(opt->passphrase_user, what, confirm, p->buf,
                      sizeof(p->buf));
  if (n < 0) {
    return n;
  }
  if ((size_t)n >= sizeof(p->buf)) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  p->len = n;
  return CKT_OK;
}

static void pass_wipe(pass *p) {
  ckt_secure_zero(p, sizeof(*p));
}

int ckt_config_dir(char *out, size_t outsz) {
  const char *d = getenv("CKT_CONFIG_DIR");
  const char *xdg = getenv("XDG_CONFIG_HOME");
  const char *home = getenv("HOME");
  int n;
  if (d && *d) {
    n = snprintf(out, outsz, "%s", d);
  } else if (xdg && *xdg) {
    n = snprintf(out, outsz, "%s/ckt", xdg);
  } else if (home && *home) {
    n = snprintf(out, outsz, "%s/.config/ckt", home);
  } else {
    n = snprintf(out, outsz, ".config/ckt");
  }
  return n >= 0 && (size_t)n < outsz ? CKT_OK : CKT_ERR_TOO_LARGE;
}

int ckt_pem_file_read(const char *path, char **pem, size_t *len) {
  ckt_buf b;
  int rv;
  if (!path || !pem) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  ckt_buf_init(&b, CKT_IDENTITY_FILE_MAX);
  rv = ckt_file_read(path, CKT_IDENTITY_FILE_MAX, &b);
  if (rv != CKT_OK) {
    int saved = errno;
    ckt_buf_free(&b);
    errno = saved;
    return rv;
  }
  *pem = (char *)ckt_buf_release(&b, len);
  return *pem ? CKT_OK : CKT_ERR_NOMEM;
}

int ckt_key_load(const char *path, const ckt_identity_options *opt,
                 ckt_ed25519_key *key) {
  char *text;
  size_t len;
  pass p;
  int rv;

  if ((rv = ckt_pem_file_read(path, &text, &len)) != CKT_OK) {
    return rv;
  }
  p.len = -1;
  /* The decoder, not ckt_key_pem_is_encrypted() (which says 0 when out of
   * memory), tells when a passphrase is needed. */
  rv = ckt_key_from_pem(text, len, NULL, 0, key);
  if (rv == CKT_ERR_PASSPHRASE_REQUIRED) {
    rv = ask(opt, path, 0, &p);
    if (rv == CKT_OK) {
      rv = ckt_key_from_pem(text, len, p.len >= 0 ? p.buf : NULL,
                            p.len >= 0 ? (size_t)p.len : 0, key);
    }
  }
  pass_wipe(&p);
  ckt_secure_zero(text, len);
  ckt_free(text);
  return rv;
}

/* Makes a key, encrypts it if a passphrase callback is set, and writes it
 * to key_path (0600).  The key stays in *key for signing. */
static int write_new_key(const char *key_path, const ckt_identity_options *opt,
                         ckt_ed25519_key *key) {
  char *pem = NULL;
  size_t pemlen = 0;
  pass p;
  int rv;

  if ((rv = ckt_key_generate(key)) != CKT_OK) {
    return rv;
  }
  if ((rv = ask(opt, key_path, 1, &p)) == CKT_OK) {
    rv = ckt_key_to_pem(key, p.len >= 0 ? p.buf : NULL,
                        p.len >= 0 ? (size_t)p.len : 0, &pem, &pemlen);
  }
  pass_wipe(&p);
  if (rv == CKT_OK) {
    rv = ckt_file_create(key_path, pem, pemlen, 0600);
  }
  if (pem) {
    ckt_secure_zero(pem, pemlen);
    ckt_free(pem);
  }
  return rv;
}

/* Writes cert_pem to crt_path; on failure removes the key written just
 * before it, so that no half identity is left behind. */
static int write_cert_or_undo(const char *crt_path, const char *key_path,
                              const char *pem, size_t pemlen) {
  int rv = ckt_file_create(crt_path, pem, pemlen, 0644);
  if (rv != CKT_OK) {
    int saved = errno;
    unlink(key_path);
    errno = saved;
  }
  return rv;
}

/* Writes private_dir/ca.key and ca.crt; hands back the key and the
 * certificate so that a caller signing right away need not reload them. */
static int make_ca(const char *private_dir, const ckt_identity_options *opt,
                   ckt_ed25519_key *key, char **pem, size_t *pemlen) {
  char crt[PATH_MAX], keyp[PATH_MAX];
  int rv;

  if ((rv = path_join(crt, private_dir, "ca", ".crt")) != CKT_OK ||
      (rv = path_join(keyp, private_dir, "ca", ".key")) != CKT_OK) {
    return rv;
  }
  if (ckt_path_exists(crt) || ckt_path_exists(keyp)) {
    return CKT_ERR_EXISTS;
  }
  if ((rv = ckt_dir_create(private_dir, 0700)) != CKT_OK ||
      (rv = write_new_key(keyp, opt, key)) != CKT_OK) {
    return rv;
  }
  rv = ckt_cert_make_ca(key, opt ? &opt->cert : NULL, pem, pemlen);
  if (rv == CKT_OK) {
    rv = write_cert_or_undo(crt, keyp, *pem, *pemlen);
    if (rv != CKT_OK) {
      ckt_free(*pem);
      *pem = NULL;
    }
  } else {
    unlink(keyp);
  }
  return rv;
}

int ckt_identity_make_ca(const char *private_dir,
                         const ckt_identity_options *opt) {
  ckt_ed25519_key key;
  char *pem = NULL;
  size_t pemlen = 0;
  int rv;

  if (!private_dir || !*private_dir) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  rv = make_ca(private_dir, opt, &key, &pem, &pemlen);
  ckt_key_wipe(&key);
  ckt_free(pem);
  return rv;
}

static int name_ok(const char *name) {
  size_t i, n = name ? strlen(name) : 0;
  if (n == 0 || n > 64 || strcmp(name, ".") == 0 || strcmp(name, "..") == 0) {
    return 0;
  }
  for (i = 0; i < n; ++i) {
    if (name[i] == '/' || (unsigned char)name[i] <= 0x20 ||
        (unsigned char)name[i] > 0x7e) {
      return 0;
    }
  }
  return 1;
}

/* Puts a copy of the CA certificate (public) beside the identities, so
 * that the certs directory alone is what another host needs to verify its
 * peers.  An existing ca.crt there is left alone. */
static int publish_ca(const char *cert_dir, const char *ca_pem, size_t ca_len) {
  char path[PATH_MAX];
  int rv = path_join(path, cert_dir, "ca", ".crt");
  if (rv != CKT_OK) {
    return rv;
  }
  rv = ckt_file_create(path, ca_pem, ca_len, 0644);
  return rv == CKT_ERR_EXISTS ? CKT_OK : rv;
}

int ckt_identity_make(const char *cert_dir, const char *name,
                      const char *private_dir, const ckt_identity_options *opt,
                      int *ca_created) {
  char crt[PATH_MAX], keyp[PATH_MAX], ca_crt[PATH_MAX], ca_keyp[PATH_MAX];
  ckt_identity_options o;
  ckt_ed25519_key ca_key, key;
  char *ca_pem = NULL, *pem = NULL;
  size_t ca_len = 0, pemlen = 0;
  int rv;

  if (ca_created) {
    *ca_created = 0;
  }
  if (!cert_dir || !*cert_dir || !private_dir || !*private_dir ||
      !name_ok(name)) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  if ((rv = path_join(crt, cert_dir, name, ".crt")) != CKT_OK ||
      (rv = path_join(keyp, cert_dir, name, ".key")) != CKT_OK ||
      (rv = path_join(ca_crt, private_dir, "ca", ".crt")) != CKT_OK ||
      (rv = path_join(ca_keyp, private_dir, "ca", ".key")) != CKT_OK) {
    return rv;
  }
  if (ckt_path_exists(crt) || ckt_path_exists(keyp)) {
    return CKT_ERR_EXISTS;
  }
  memset(&ca_key, 0, sizeof(ca_key));
  memset(&key, 0, sizeof(key));
  if (!ckt_path_exists(ca_crt) && !ckt_path_exists(ca_keyp)) {
    rv = make_ca(private_dir, opt, &ca_key, &ca_pem, &ca_len);
    if (rv != CKT_OK) {
      goto done;
    }
    if (ca_created) {
      *ca_created = 1;
    }
  } else if ((rv = ckt_pem_file_read(ca_crt, &ca_pem, &ca_len)) != CKT_OK ||
             (rv = ckt_key_load(ca_keyp, opt, &ca_key)) != CKT_OK ||
             (rv = ckt_cert_check_key(ca_pem, ca_len, &ca_key)) != CKT_OK) {
    goto done;
  }
  if ((rv = ckt_dir_create(cert_dir, 0700)) != CKT_OK) {
    goto done;
  }
  if (opt) {
    o = *opt;
  } else {
    memset(&o, 0, sizeof(o));
  }
  if (!o.cert.unit) {
    o.cert.unit = name;
  }
  if ((rv = write_new_key(keyp, &o, &key)) != CKT_OK) {
    goto done;
  }
  rv =
      ckt_cert_make_leaf(&key, &ca_key, ca_pem, ca_len, &o.cert, &pem, &pemlen);
  if (rv == CKT_OK) {
    rv = write_cert_or_undo(crt, keyp, pem, pemlen);
  } else {
    unlink(keyp);
  }
  if (rv == CKT_OK) {
    rv = publish_ca(cert_dir, ca_pem, ca_len);
  }

done:
  ckt_key_wipe(&ca_key);
  ckt_key_wipe(&key);
  ckt_free(ca_pem);
  ckt_free(pem);
  return rv;
}

int ckt_identity_load(const char *cert_dir, const char *name,
                      const ckt_identity_options *opt, char **cert_pem,
                      size_t *cert_pemlen, ckt_ed25519_key *key) {
  char crt[PATH_MAX], keyp[PATH_MAX];
  char *pem = NULL;
  size_t len = 0;
  int rv;

  if (!cert_dir || !name_ok(name) || !cert_pem || !key) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  if ((rv = path_join(crt, cert_dir, name, ".crt")) != CKT_OK ||
      (rv = path_join(keyp, cert_dir, name, ".key")) != CKT_OK ||
      (rv = ckt_pem_file_read(crt, &pem, &len)) != CKT_OK) {
    return rv;
  }
  rv = ckt_key_load(keyp, opt, key);
  if (rv == CKT_OK) {
    rv = ckt_cert_check_key(pem, len, key);
  }
  if (rv != CKT_OK) {
    ckt_key_wipe(key);
    ckt_free(pem);
    return rv;
  }
  *cert_pem = pem;
  if (cert_pemlen) {
    *cert_pemlen = len;
  }
  return CKT_OK;
}

static int make_parent_dir(const char *path) {
  char dir[PATH_MAX];
  char *slash;
  if (strlen(path) >= sizeof(dir)) {
    errno = ENAMETOOLONG;
    return CKT_ERR_IO;
  }
  strcpy(dir, path);
  slash = strrchr(dir, '/');
  if (!slash || slash == dir) {
    return CKT_OK; /* the current or the root directory */
  }
  *slash = 0;
  return ckt_dir_create(dir, 0700);
}

int ckt_psk_create(const char *path) {
  uint8_t psk[CKT_PSK_LEN];
  int rv;
  if (!path || !*path) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  if (ckt_path_exists(path)) {
    return CKT_ERR_EXISTS;
  }
  if ((rv = make_parent_dir(path)) != CKT_OK) {
    return rv;
  }
  rv = ckt_random_bytes(psk, sizeof(psk));
  if (rv == CKT_OK) {
    rv = ckt_file_create(path, psk, sizeof(psk), 0600);
  }
  ckt_secure_zero(psk, sizeof(psk));
  return rv;
}
