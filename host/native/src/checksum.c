// CRC-32C (Castagnoli, the iSCSI/ext4/btrfs polynomial) for the device-state container and the
// pre-copy rounds: node:zlib's CRC-32 runs at ~4.4 GB/s here and was a fifth of a state
// transfer's CPU time on each side. x86-64 CPUs since 2008 have an instruction for CRC-32C
// (SSE4.2 crc32); three independent streams hide its 3-cycle latency, and the three partial
// CRCs are joined with a precomputed "shift by LANE zero bytes" operator. Without SSE4.2 a
// portable slicing-by-8 table does the same arithmetic; which one runs is decided once at load
// (crc32cImpl says which), never per call.
//
// copyCrc32c copies and checksums in one pass: each byte is read once, where a copy followed by
// a checksum reads every byte twice. The CRC is always that of the bytes dst received, even
// when another thread writes src meanwhile (a live pre-copy round staging a disk the guest
// writes): each word is loaded once and both stored and checksummed, and the tail is
// checksummed from dst.
//
// Convention (as zlib's crc32 and node:zlib's): crc = crc32c(bytes, seed) continues a CRC whose
// value so far is `seed` (0 to start), so crc32c(a ‖ b) === crc32c(b, crc32c(a)).
#include "common.h"

#include <pthread.h>
#include <stdint.h>
#include <string.h>
#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

#define POLY 0x82F63B78u // CRC-32C, bit-reflected
// Bytes per stream in the 3-way loop: long enough that joining costs nothing next to it.
#define LANE 8192

static uint32_t table[8][256];
// shift_tab[k][b]: the register b << 8k after LANE zero bytes (the operator is linear, so a
// register's image is the XOR of its four bytes' images).
static uint32_t shift_tab[4][256];
static bool have_sse42;
static pthread_once_t tables_once = PTHREAD_ONCE_INIT;

// --- portable ------------------------------------------------------------------------------

static uint32_t raw_table(uint32_t crc, const uint8_t *p, size_t n) {
  while (n > 0 && ((uintptr_t)p & 7) != 0) {
    crc = table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    n--;
  }
  while (n >= 8) {
    uint64_t w;
    memcpy(&w, p, 8);
    w ^= crc;
    crc = table[7][w & 0xff] ^ table[6][(w >> 8) & 0xff] ^ table[5][(w >> 16) & 0xff] ^ table[4][(w >> 24) & 0xff] ^
          table[3][(w >> 32) & 0xff] ^ table[2][(w >> 40) & 0xff] ^ table[1][(w >> 48) & 0xff] ^ table[0][w >> 56];
    p += 8;
    n -= 8;
  }
  while (n-- > 0) crc = table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
  return crc;
}

static uint32_t shift_lane(uint32_t crc) {
  return shift_tab[0][crc & 0xff] ^ shift_tab[1][(crc >> 8) & 0xff] ^ shift_tab[2][(crc >> 16) & 0xff] ^
         shift_tab[3][crc >> 24];
}

// --- SSE4.2 --------------------------------------------------------------------------------

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t raw_hw_tail(uint32_t crc, const uint8_t *p, size_t n) {
  uint64_t c = crc;
  while (n >= 8) {
    uint64_t w;
    memcpy(&w, p, 8);
    c = _mm_crc32_u64(c, w);
    p += 8;
    n -= 8;
  }
  crc = (uint32_t)c;
  while (n-- > 0) crc = _mm_crc32_u8(crc, *p++);
  return crc;
}

// dst may be NULL (checksum only); else the bytes are copied to dst as they are read.
__attribute__((target("sse4.2"))) static uint32_t raw_hw(uint32_t crc, const uint8_t *p, uint8_t *dst, size_t n) {
  while (n >= 3 * LANE) {
    uint64_t a = crc, b = 0, c = 0;
    const uint8_t *pa = p, *pb = p + LANE, *pc = p + 2 * LANE;
    if (dst) {
      uint8_t *da = dst, *db = dst + LANE, *dc = dst + 2 * LANE;
      for (size_t i = 0; i < LANE; i += 8) {
        uint64_t wa, wb, wc;
        memcpy(&wa, pa + i, 8);
        memcpy(&wb, pb + i, 8);
        memcpy(&wc, pc + i, 8);
        memcpy(da + i, &wa, 8);
        memcpy(db + i, &wb, 8);
        memcpy(dc + i, &wc, 8);
        a = _mm_crc32_u64(a, wa);
        b = _mm_crc32_u64(b, wb);
        c = _mm_crc32_u64(c, wc);
      }
      dst += 3 * LANE;
    } else {
      for (size_t i = 0; i < LANE; i += 8) {
        uint64_t wa, wb, wc;
        memcpy(&wa, pa + i, 8);
        memcpy(&wb, pb + i, 8);
        memcpy(&wc, pc + i, 8);
        a = _mm_crc32_u64(a, wa);
        b = _mm_crc32_u64(b, wb);
        c = _mm_crc32_u64(c, wc);
      }
    }
    // raw(crc, A‖B‖C) = shift(shift(raw(crc, A)) ^ raw(0, B)) ^ raw(0, C)
    crc = shift_lane(shift_lane((uint32_t)a) ^ (uint32_t)b) ^ (uint32_t)c;
    p += 3 * LANE;
    n -= 3 * LANE;
  }
  // The tail is checksummed from dst: src may be memory another thread writes (a memory disk a
  // live pre-copy round copies out), and the CRC must be of the bytes copied, not of a second read.
  if (dst && n > 0) {
    memcpy(dst, p, n);
    p = dst;
  }
  return raw_hw_tail(crc, p, n);
}
#endif

static void init_tables(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = (c >> 1) ^ (POLY & (0u - (c & 1)));
    table[0][i] = c;
  }
  for (int t = 1; t < 8; t++)
    for (int i = 0; i < 256; i++) table[t][i] = table[0][table[t - 1][i] & 0xff] ^ (table[t - 1][i] >> 8);
  // The image of each of the 32 register bits after LANE zero bytes, then every byte's image.
  static const uint8_t zeros[LANE];
  uint32_t bit[32];
  for (int j = 0; j < 32; j++) bit[j] = raw_table(1u << j, zeros, LANE);
  for (int k = 0; k < 4; k++)
    for (int b = 0; b < 256; b++) {
      uint32_t v = 0;
      for (int j = 0; j < 8; j++)
        if (b & (1 << j)) v ^= bit[8 * k + j];
      shift_tab[k][b] = v;
    }
#if defined(__x86_64__)
  __builtin_cpu_init();
  have_sse42 = __builtin_cpu_supports("sse4.2");
#endif
}

static uint32_t crc32c_raw(uint32_t crc, const uint8_t *p, uint8_t *dst, size_t n, bool portable) {
#if defined(__x86_64__)
  if (have_sse42 && !portable) return raw_hw(crc, p, dst, n);
#endif
  if (dst) {
    memcpy(dst, p, n);
    p = dst; // the bytes copied, not a second read of src (see raw_hw's tail)
  }
  return raw_table(crc, p, n);
}

static bool get_seed(napi_env env, napi_value v, const char *fn, uint32_t *seed) {
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok) return throw_napi(env, napi_generic_failure, fn);
  if (t == napi_undefined) {
    *seed = 0;
    return true;
  }
  uint64_t s;
  if (!get_u64(env, v, fn, "seed", &s)) return false;
  if (s > 0xffffffffu) return throw_range(env, "%s: seed %llu is not a 32-bit CRC", fn, (unsigned long long)s);
  *seed = (uint32_t)s;
  return true;
}

// crc32c(bytes, seed = 0, portable = false): `portable` runs the table code even where SSE4.2
// exists (the tests compare both).
static napi_value crc32c_fn(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  void *data;
  size_t len;
  uint32_t seed = 0;
  bool portable = false;
  if (!get_args(env, info, 3, 1, argv, NULL, "crc32c") || !get_bytes(env, argv[0], "crc32c", "bytes", &data, &len) ||
      !get_seed(env, argv[1], "crc32c", &seed))
    return NULL;
  napi_valuetype t;
  napi_typeof(env, argv[2], &t);
  if (t != napi_undefined && !get_bool(env, argv[2], "crc32c", "portable", &portable)) return NULL;
  return make_number(env, (double)(~crc32c_raw(~seed, data, NULL, len, portable)));
}

// copyCrc32c(dst, src, seed = 0): copies all of src to the start of dst (which must hold it;
// they must not overlap) and returns the CRC-32C of src continued from seed.
static napi_value copy_crc32c_fn(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  void *dst, *src;
  size_t dlen, slen;
  uint32_t seed = 0;
  if (!get_args(env, info, 3, 2, argv, NULL, "copyCrc32c") || !get_bytes(env, argv[0], "copyCrc32c", "dst", &dst, &dlen) ||
      !get_bytes(env, argv[1], "copyCrc32c", "src", &src, &slen) || !get_seed(env, argv[2], "copyCrc32c", &seed))
    return NULL;
  if (slen > dlen) {
    throw_range(env, "copyCrc32c: src is %zu bytes, dst only %zu", slen, dlen);
    return NULL;
  }
  const uint8_t *s = src;
  uint8_t *d = dst;
  if (slen > 0 && ((d < s && d + slen > s) || (s < d && s + slen > d) || s == d)) {
    throw_range(env, "copyCrc32c: src and dst overlap");
    return NULL;
  }
  return make_number(env, (double)(~crc32c_raw(~seed, s, d, slen, false)));
}

bool init_checksum(napi_env env, napi_value exports) {
  pthread_once(&tables_once, init_tables); // once per process, whichever thread loads first
  napi_value impl;
  if (napi_create_string_utf8(env, have_sse42 ? "sse4.2" : "table", NAPI_AUTO_LENGTH, &impl) != napi_ok) return false;
  napi_property_descriptor props[] = {{"crc32cImpl", NULL, NULL, NULL, NULL, impl, napi_enumerable, NULL}};
  return napi_define_properties(env, exports, 1, props) == napi_ok && set_fn(env, exports, "crc32c", crc32c_fn) &&
         set_fn(env, exports, "copyCrc32c", copy_crc32c_fn);
}
