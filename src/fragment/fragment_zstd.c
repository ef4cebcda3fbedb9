/* fragment_zstd.c — the compressed-message frame (docs/wire.md,
 * "Compressed messages") and the codec names of ckt/message.h. */
#include "fragment_zstd.h"

#include <stdlib.h>
#include <string.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "ckt/error.h"
#include "core_buf.h"
#include "core_cursor.h"
#include "fragment_codec.h"
#include "fragment_fields.h"

/* The decoder's window bound (128 MiB).  ckt_zframe_decode() decodes into
 * a flat buffer of the announced size, where zstd needs no window of its
 * own; the bound is for any streaming use of the context, where a frame's
 * window descriptor would otherwise choose the allocation. */
#define ZCTX_WINDOW_LOG_MAX 27

struct ckt_zctx {
  ZSTD_CCtx *cctx;
  ZSTD_DCtx *dctx;
  uint8_t *scratch; /* ckt_zframe_seal()'s compressed output */
  size_t scratch_cap;
};

/* ---- codec names ---- */

static const struct {
  const char *name;
  int codec;
} codec_names[] = {
    /* ckt_codec_name() returns the first name of each codec. */
    {"auto", CKT_CODEC_AUTO},           {"none", CKT_CODEC_NONE},
    {"zstd:fast", CKT_CODEC_ZSTD_FAST}, {"zstd:01", CKT_CODEC_ZSTD_1},
    {"zstd:03", CKT_CODEC_ZSTD_3},      {"zstd:07", CKT_CODEC_ZSTD_7},
    {"zstd:11", CKT_CODEC_ZSTD_11},     {"off", CKT_CODEC_NONE},
    {"zstd", CKT_CODEC_ZSTD_1},         {"zstd:1", CKT_CODEC_ZSTD_1},
    {"zstd:3", CKT_CODEC_ZSTD_3},       {"zstd:7", CKT_CODEC_ZSTD_7},
};

const char *ckt_codec_name(int codec) {
  size_t i;
  for (i = 0; i < sizeof(codec_names) / sizeof(codec_names[0]); ++i) {
    if (codec_names[i].codec == codec) {
      return codec_names[i].name;
    }
  }
  return "?";
}

int ckt_codec_parse(const char *name, int *codec) {
  size_t i;
  if (!name || !codec) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  for (i = 0; i < sizeof(codec_names) / sizeof(codec_names[0]); ++i) {
    if (strcmp(codec_names[i].name, name) == 0) {
      *codec = codec_names[i].codec;
      return CKT_OK;
    }
  }
  return CKT_ERR_INVALID_ARGUMENT;
}

static int codec_is_zstd(int codec) {
  return codec >= CKT_CODEC_ZSTD_FAST && codec <= CKT_CODEC_ZSTD_11;
}

int ckt_codec_level(int codec) {
  static const int levels[] = {-5, 1, 3, 7, 11};
  return codec_is_zstd(codec) ? levels[codec - CKT_CODEC_ZSTD_FAST] : 0;
}

/* ---- contexts ---- */

ckt_zctx *ckt_zctx_new(void) {
  ckt_zctx *z = calloc(1, sizeof(*z));
  if (!z) {
    goto fail_alloc;
  }
  z->cctx = ZSTD_createCCtx();
  if (!z->cctx) {
    goto fail_cctx;
  }
  z->dctx = ZSTD_createDCtx();
  if (!z->dctx) {
    goto fail_dctx;
  }
  /* The content size lets the receiver check the length before it
   * decodes; no checksum, as QUIC's AEAD already protects the bytes. */
  if (ZSTD_isError(
          ZSTD_CCtx_setParameter(z->cctx, ZSTD_c_contentSizeFlag, 1)) ||
      ZSTD_isError(ZSTD_CCtx_setParameter(z->cctx, ZSTD_c_checksumFlag, 0)) ||
      ZSTD_isError(ZSTD_DCtx_setParameter(z->dctx, ZSTD_d_windowLogMax,
                                          ZCTX_WINDOW_LOG_MAX))) {
    goto fail_params;
  }
  return z;

fail_params:
  ZSTD_freeDCtx(z->dctx);
fail_dctx:
  ZSTD_freeCCtx(z->cctx);
fail_cctx:
  free(z);
fail_alloc:
  return NULL;
}

void ckt_zctx_free(ckt_zctx *z) {
  if (!z) {
    return;
  }
  ZSTD_freeCCtx(z->cctx);
  ZSTD_freeDCtx(z->dctx);
  free(z->scratch);
  free(z);
}

/* ---- is it worth compressing? ---- */

/* The sample: WORTH_WINDOWS windows spread from the buffer's start to its
 * end, each 1/128 of it but between 16 and 128 bytes, so 1 KiB at most;
 * the whole buffer when that is shorter.  A sample this small still tells
 * random bytes from skewed ones (worth_skewed), and keeps the test within
 * a few percent of a copy of the buffer, which is what the stored form
 * costs. */
#define WORTH_MIN_LEN 64
#define WORTH_WINDOWS 8
#define WORTH_WINDOW_MIN 16
#define WORTH_WINDOW_MAX 128
/* The repeat search looks at the start of each window only: it runs on
 * data that looks random, where it has to be cheapest. */
#define WORTH_REPEAT_SPAN 64
#define WORTH_HASH_BITS 9

/* Fills win and wlen with the sample's windows; returns their count. */
static size_t worth_windows(const uint8_t *raw, size_t len,
                            const uint8_t *win[WORTH_WINDOWS],
                            size_t wlen[WORTH_WINDOWS]) {
  size_t w = len / (WORTH_WINDOWS * 16), i, n = 0;
  w = w < WORTH_WINDOW_MIN ? WORTH_WINDOW_MIN
                           : (w > WORTH_WINDOW_MAX ? WORTH_WINDOW_MAX : w);
  if (len <= WORTH_WINDOWS * w) {
    for (i = 0; i < len; i += w) {
      win[n] = raw + i;
      wlen[n++] = len - i < w ? len - i : w;
    }
    return n;
  }
  for (i = 0; i < WORTH_WINDOWS; ++i) {
    win[i] = raw + i * ((len - w) / (WORTH_WINDOWS - 1));
    wlen[i] = w;
  }
  return WORTH_WINDOWS;
}

static uint32_t worth_load32(const uint8_t *p) {
  uint32_t v;
  memcpy(&v, p, sizeof(v));
  return v;
}

/* 1 when the sample's collision entropy, -log2(sum p^2), is below 7 bits
 * per byte.  sum p^2 is estimated without bias by the pairs of equal bytes,
 * (sum c^2 - n) / (n (n - 1)), which random bytes keep near 1/256 however
 * small the sample, and compared with 2^-7: no logarithm needed.  The
 * collision entropy is at most the Shannon entropy, so this errs towards
 * trying zstd. */
static int worth_skewed(const uint8_t *const win[], const size_t wlen[],
                        size_t nwin) {
  /* Four histograms, so that runs of one byte value do not serialise the
   * increments; 16-bit counts, as the sample is at most 1 KiB. */
  uint16_t hist[4][256];
  uint64_t squares = 0, n = 0;
  size_t i, j;
  memset(hist, 0, sizeof(hist));
  for (i = 0; i < nwin; ++i) {
    const uint8_t *p = win[i];
    for (j = 0; j + 4 <= wlen[i]; j += 4) {
      hist[0][p[j]]++;
      hist[1][p[j + 1]]++;
      hist[2][p[j + 2]]++;
      hist[3][p[j + 3]]++;
    }
    for (; j < wlen[i]; ++j) {
      hist[0][p[j]]++;
    }
    n += wlen[i];
  }
  for (i = 0; i < 256; ++i) {
    uint64_t c = (uint64_t)hist[0][i] + hist[1][i] + hist[2][i] + hist[3][i];
    squares += c * c;
  }
  return (squares - n) * 128 > n * (n - 1);
}

/* 1 when at least 1/16 of the 4-byte sequences at the windows' starts were
 * seen before in them: what LZ finds in data whose bytes look uniform (a
 * repeated random block, say; the windows share one table, so a block
 * repeated at a distance of up to a few windows' spacing counts too).
 * Random data has next to none. */
static int worth_repeats(const uint8_t *const win[], const size_t wlen[],
                         size_t nwin) {
  /* The sequences themselves, not where they are: no second load. */
  uint32_t seen[1u << WORTH_HASH_BITS];
  size_t i, j, n = 0, hits = 0;
  memset(seen, 0, sizeof(seen));
  for (i = 0; i < nwin; ++i) {
    size_t span = wlen[i] < WORTH_REPEAT_SPAN ? wlen[i] : WORTH_REPEAT_SPAN;
    for (j = 0; j + 4 <= span; ++j) {
      uint32_t v = worth_load32(win[i] + j);
      uint32_t h = (v * 2654435761u) >> (32 - WORTH_HASH_BITS);
      hits += seen[h] == v;
      seen[h] = v;
    }
    n += j;
  }
  return hits * 16 > n;
}

int ckt_compress_worthwhile(const uint8_t *raw, size_t len) {
  const uint8_t *win[WORTH_WINDOWS];
  size_t wlen[WORTH_WINDOWS], nwin;

  if (!raw || len < WORTH_MIN_LEN) {
    return 0;
  }
  nwin = worth_windows(raw, len, win, wlen);
  return worth_skewed(win, wlen, nwin) || worth_repeats(win, wlen, nwin);
}

/* ---- encoding ---- */

/* Writes the frame header and prefix at p. */
static void zframe_put_head(uint8_t *p, int codec, size_t raw_len,
                            size_t data_len) {
  ckt_frame_header_encode(p, CKT_FRAME_ZMESSAGE,
                          (uint32_t)(CKT_ZFRAME_PREFIX_LEN + data_len));
  p[CKT_FRAME_HEADER_LEN] = (uint8_t)codec;
  ckt_fields_put_be(p + CKT_FRAME_HEADER_LEN + 1, raw_len, 4);
}

/* Appends the stored form (the size was checked). */
static int zframe_append_stored(int codec, const uint8_t *raw, size_t raw_len,
                                ckt_buf *out) {
  uint8_t head[CKT_FRAME_HEADER_LEN + CKT_ZFRAME_PREFIX_LEN];
  size_t start = out->len;
  int rv;
  zframe_put_head(head, codec, raw_len, raw_len);
  if ((rv = ckt_buf_append(out, head, sizeof(head))) != CKT_OK ||
      (rv = ckt_buf_append(out, raw, raw_len)) != CKT_OK) {
    out->len = start;
    if (out->data) {
      out->data[start] = 0;
    }
  }
  return rv;
}

/* Compresses raw into dst[0..cap); the size on success, 0 when zstd failed
 * (out of memory for its work space too: the caller then stores) or its
 * output does not fit in cap. */
static size_t zframe_compress(ckt_zctx *z, int codec, const uint8_t *raw,
                              size_t raw_len, uint8_t *dst, size_t cap) {
  size_t n;
  if (ZSTD_isError(ZSTD_CCtx_setParameter(z->cctx, ZSTD_c_compressionLevel,
                                          ckt_codec_level(codec)))) {
    return 0;
  }
  n = ZSTD_compress2(z->cctx, dst, cap, raw, raw_len);
  return ZSTD_isError(n) ? 0 : n;
}

int ckt_zframe_encode(ckt_zctx *z, int codec, int store_only,
                      const uint8_t *raw, size_t raw_len, ckt_buf *out) {
  const size_t head = CKT_FRAME_HEADER_LEN + CKT_ZFRAME_PREFIX_LEN;
  size_t start, room, n;
  int reserved = 0, rv;

  if (!z || !out || (!raw && raw_len) || !codec_is_zstd(codec) ||
      raw_len > UINT32_MAX - CKT_ZFRAME_PREFIX_LEN) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  if (out->len > out->limit || out->limit - out->len < head ||
      out->limit - out->len - head < raw_len) {
    return CKT_ERR_TOO_LARGE;
  }
  if (store_only || !ckt_compress_worthwhile(raw, raw_len)) {
    return zframe_append_stored(codec, raw, raw_len, out);
  }
  /* zstd writes straight into out, and only output smaller than raw is
   * used, so the stored form's size is room enough.  When out lacks it,
   * the stored form itself makes it (ckt_buf cannot grow without
   * writing), and is what remains if compression does not pay. */
  start = out->len;
  room = out->cap > start ? out->cap - start - 1 : 0;
  if (room < head + raw_len) {
    if ((rv = zframe_append_stored(codec, raw, raw_len, out)) != CKT_OK) {
      return rv;
    }
    reserved = 1;
  }
  n = zframe_compress(z, codec, raw, raw_len, out->data + start + head,
                      raw_len - 1);
  if (n > 0) {
    zframe_put_head(out->data + start, codec, raw_len, n);
    out->len = start + head + n;
    out->data[out->len] = 0;
    return CKT_OK;
  }
  if (!reserved) {
    return zframe_append_stored(codec, raw, raw_len, out);
  }
  /* zstd may have written over the stored copy. */
  memcpy(out->data + start + head, raw, raw_len);
  return CKT_OK;
}

int ckt_zframe_seal(ckt_zctx *z, int codec, int store_only, ckt_buf *b,
                    size_t start) {
  const size_t head = CKT_FRAME_HEADER_LEN + CKT_ZFRAME_PREFIX_LEN;
  uint8_t *raw;
  size_t raw_len, n;

  if (!z || !b || !codec_is_zstd(codec) || start > b->len ||
      b->len - start < head ||
      b->len - start - head > UINT32_MAX - CKT_ZFRAME_PREFIX_LEN) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  raw = b->data + start + head;
  raw_len = b->len - start - head;
  if (!store_only && ckt_compress_worthwhile(raw, raw_len)) {
    if (z->scratch_cap < raw_len) {
      uint8_t *p = realloc(z->scratch, raw_len);
      if (p) {
        z->scratch = p;
        z->scratch_cap = raw_len;
      }
    }
    /* Only output smaller than the message is kept; out of memory for
     * the scratch buffer, the message is stored. */
    n = z->scratch_cap >= raw_len
            ? zframe_compress(z, codec, raw, raw_len, z->scratch, raw_len - 1)
            : 0;
    if (n > 0) {
      memcpy(raw, z->scratch, n);
      zframe_put_head(b->data + start, codec, raw_len, n);
      b->len = start + head + n;
      b->data[b->len] = 0;
      return CKT_OK;
    }
  }
  zframe_put_head(b->data + start, codec, raw_len, raw_len);
  return CKT_OK;
}

/* ---- decoding ---- */

/* Gives raw (empty, from ckt_buf_init) exactly n bytes and the NUL. */
static int zframe_raw_alloc(ckt_buf *raw, size_t n) {
  if (n == 0) {
    return CKT_OK;
  }
  raw->data = malloc(n + 1);
  if (!raw->data) {
    return CKT_ERR_NOMEM;
  }
  raw->cap = n + 1;
  raw->data[0] = 0;
  return CKT_OK;
}

static uint32_t zframe_le32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
         (uint32_t)p[3] << 24;
}

/* Decompresses data[0..len), which must be exactly one zstd frame of
 * exactly raw_len bytes, into raw's raw_len bytes. */
static int zframe_decompress(ckt_zctx *z, const uint8_t *data, size_t len,
                             size_t raw_len, ckt_buf *raw) {
  unsigned long long content;
  size_t frame_len, got;
  int rv;

  /* Checked before allocating: the format of today's zstd only (the
   * library may also read legacy formats, and skippable frames), a size
   * the frame contradicts, a cut frame, bytes or another frame after it. */
  if (len < 4 || zframe_le32(data) != ZSTD_MAGICNUMBER) {
    return CKT_ERR_FORMAT;
  }
  content = ZSTD_getFrameContentSize(data, len);
  frame_len = ZSTD_findFrameCompressedSize(data, len);
  if (content == ZSTD_CONTENTSIZE_ERROR ||
      (content != ZSTD_CONTENTSIZE_UNKNOWN && content != raw_len) ||
      ZSTD_isError(frame_len) || frame_len != len) {
    return CKT_ERR_FORMAT;
  }
  if ((rv = zframe_raw_alloc(raw, raw_len)) != CKT_OK) {
    return rv;
  }
  got = ZSTD_decompressDCtx(z->dctx, raw->data, raw_len, data, len);
  if (ZSTD_isError(got)) {
    return ZSTD_getErrorCode(got) == ZSTD_error_memory_allocation
               ? CKT_ERR_NOMEM
               : CKT_ERR_FORMAT;
  }
  if (got != raw_len) {
    return CKT_ERR_FORMAT;
  }
  raw->len = raw_len;
  raw->data[raw_len] = 0;
  return CKT_OK;
}

static int zframe_decode_body(ckt_zctx *z, const uint8_t *body, size_t len,
                              ckt_buf *raw, int *codec) {
  ckt_cursor c;
  uint8_t cod;
  uint32_t raw_len;
  const uint8_t *data;
  size_t data_len;
  int rv;

  ckt_cursor_init(&c, body, len);
  if (ckt_cursor_u8(&c, &cod) != 0 || ckt_cursor_be32(&c, &raw_len) != 0) {
    return CKT_ERR_FORMAT;
  }
  if (!codec_is_zstd(cod)) {
    return CKT_ERR_FORMAT;
  }
  /* Refused as soon as it is read, before the data is looked at. */
  if (raw_len > raw->limit) {
    return CKT_ERR_TOO_LARGE;
  }
  data_len = c.left;
  if (data_len > raw_len || ckt_cursor_take(&c, &data, data_len) != 0) {
    return CKT_ERR_FORMAT;
  }
  if (data_len < raw_len) {
    rv = zframe_decompress(z, data, data_len, raw_len, raw);
  } else if ((rv = zframe_raw_alloc(raw, raw_len)) == CKT_OK) {
    if (raw_len) {
      memcpy(raw->data, data, raw_len);
      raw->data[raw_len] = 0;
    }
    raw->len = raw_len;
  }
  if (rv == CKT_OK) {
    *codec = cod;
  }
  return rv;
}

int ckt_zframe_decode(ckt_zctx *z, const uint8_t *body, size_t len,
                      size_t max_raw, ckt_buf *raw, int *codec) {
  int rv;
  if (!raw) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  ckt_buf_init(raw, max_raw);
  if (!z || !codec || (!body && len)) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  rv = zframe_decode_body(z, body, len, raw, codec);
  if (rv != CKT_OK) {
    ckt_buf_free(raw);
  }
  return rv;
}
