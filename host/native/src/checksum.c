// CRC-32C (Castagnoli, the iSCSI/ext4/btrfs polynomial) for the device-state container and the
// pre-copy rounds: node:zlib's CRC-32 runs at ~4.4 GB/s here and was a fifth of a state
// transfer's CPU time on each side. Intel's ISA-L computes it (crc32_iscsi): it picks its code for
// the CPU once at load, carry-less-multiply folding where the CPU has it (AVX-512 VPCLMULQDQ:
// ~55 GB/s from cache here, against ~15 GB/s for three interleaved SSE4.2 crc32 streams). A
// portable slicing-by-8 table does the same arithmetic for the tests to compare with.
//
// copyCrc32c copies and checksums in one pass over src: each chunk of COPY_CHUNK bytes is copied,
// then checksummed from dst while it is still in the first-level cache. The CRC is always that of
// the bytes dst received, even when another thread writes src meanwhile (a live pre-copy round
// staging a disk the guest writes): src is read once, and the CRC read is of dst.
//
// Convention (as zlib's crc32 and node:zlib's): crc = crc32c(bytes, seed) continues a CRC whose
// value so far is `seed` (0 to start), so crc32c(a ‖ b) === crc32c(b, crc32c(a)). ISA-L's
// crc32_iscsi is the bare register update (no inversion in or out), so it runs on ~seed and its
// result is inverted, as the table code's.
#include "common.h"

#include <isa-l/crc.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#define POLY 0x82F63B78u // CRC-32C, bit-reflected
// Bytes copied then checksummed at a time: well inside a 32 KiB first-level data cache, so the
// checksum reads dst from it. Measured here (AMD EPYC, 256 MiB from memory): 4-8 KiB ~20 ms,
// 16-128 KiB ~26 ms, the SSE4.2 fused loop this replaced ~34 ms; 1 MiB from cache ~41 us in all.
#define COPY_CHUNK (8u << 10)
// crc32_iscsi takes an int length.
#define ISAL_MAX (1u << 30)

static uint32_t table[8][256];
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

static void init_tables(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = (c >> 1) ^ (POLY & (0u - (c & 1)));
    table[0][i] = c;
  }
  for (int t = 1; t < 8; t++)
    for (int i = 0; i < 256; i++) table[t][i] = table[0][table[t - 1][i] & 0xff] ^ (table[t - 1][i] >> 8);
}

// --- ISA-L ---------------------------------------------------------------------------------

static uint32_t raw_isal(uint32_t crc, const uint8_t *p, size_t n) {
  while (n > 0) {
    size_t k = n < ISAL_MAX ? n : ISAL_MAX;
    crc = crc32_iscsi((unsigned char *)p, (int)k, crc);
    p += k;
    n -= k;
  }
  return crc;
}

// dst may be NULL (checksum only); else the bytes are copied to dst and checksummed from there:
// src may be memory another thread writes (a memory disk a live pre-copy round copies out), and
// the CRC must be of the bytes copied, not of a second read.
static uint32_t crc32c_raw(uint32_t crc, const uint8_t *p, uint8_t *dst, size_t n, bool portable) {
  if (!dst) return portable ? raw_table(crc, p, n) : raw_isal(crc, p, n);
  while (n > 0) {
    size_t k = n < COPY_CHUNK ? n : COPY_CHUNK;
    memcpy(dst, p, k);
    crc = portable ? raw_table(crc, dst, k) : raw_isal(crc, dst, k);
    p += k;
    dst += k;
    n -= k;
  }
  return crc;
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

// crc32c(bytes, seed = 0, portable = false): `portable` runs the table code instead of ISA-L's
// (the tests compare both).
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
  if (napi_create_string_utf8(env, "isa-l", NAPI_AUTO_LENGTH, &impl) != napi_ok) return false;
  napi_property_descriptor props[] = {{"crc32cImpl", NULL, NULL, NULL, NULL, impl, napi_enumerable, NULL}};
  return napi_define_properties(env, exports, 1, props) == napi_ok && set_fn(env, exports, "crc32c", crc32c_fn) &&
         set_fn(env, exports, "copyCrc32c", copy_crc32c_fn);
}
