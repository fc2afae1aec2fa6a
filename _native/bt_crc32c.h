/*
 * CRC-32C (Castagnoli), as TFRecord frames use it.
 *
 *   polynomial 0x1EDC6F41, reflected 0x82F63B78; init and final xor 0xFFFFFFFF
 *   check value: crc32c("123456789") = 0xE3069283
 *
 * Two implementations behind one entry point, chosen once at run time:
 *   - the SSE4.2 `crc32` instruction on x86-64 (or the ARMv8 CRC extension),
 *   - slice-by-8 tables built on first use, for every other CPU.
 * The state passed between calls is the *finalised* CRC, so callers can feed
 * a frame in pieces: c = bt_crc32c_update(0, a, n); c = bt_crc32c_update(c, b, m).
 */
#ifndef BT_CRC32C_H
#define BT_CRC32C_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define BT_CRC32C_POLY 0x82F63B78u

static uint32_t bt_crc32c_table[8][256];
static int bt_crc32c_table_ready = 0;

static void bt_crc32c_build_table(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ BT_CRC32C_POLY : c >> 1;
        bt_crc32c_table[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = bt_crc32c_table[0][n];
        for (int t = 1; t < 8; t++) {
            c = bt_crc32c_table[0][c & 0xFF] ^ (c >> 8);
            bt_crc32c_table[t][n] = c;
        }
    }
    bt_crc32c_table_ready = 1;
}

static uint32_t bt_crc32c_sw(uint32_t crc, const unsigned char *p, size_t n) {
    uint32_t c = ~crc;
    if (!bt_crc32c_table_ready) bt_crc32c_build_table();
    while (n && ((uintptr_t)p & 7)) {
        c = bt_crc32c_table[0][(c ^ *p++) & 0xFF] ^ (c >> 8);
        n--;
    }
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        w = __builtin_bswap64(w);
#endif
        w ^= c;
        c = bt_crc32c_table[7][w & 0xFF] ^ bt_crc32c_table[6][(w >> 8) & 0xFF] ^
            bt_crc32c_table[5][(w >> 16) & 0xFF] ^ bt_crc32c_table[4][(w >> 24) & 0xFF] ^
            bt_crc32c_table[3][(w >> 32) & 0xFF] ^ bt_crc32c_table[2][(w >> 40) & 0xFF] ^
            bt_crc32c_table[1][(w >> 48) & 0xFF] ^ bt_crc32c_table[0][w >> 56];
        p += 8;
        n -= 8;
    }
    while (n--) c = bt_crc32c_table[0][(c ^ *p++) & 0xFF] ^ (c >> 8);
    return ~c;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define BT_CRC32C_HW 1
#include <nmmintrin.h>
__attribute__((target("sse4.2")))
static uint32_t bt_crc32c_hw(uint32_t crc, const unsigned char *p, size_t n) {
    uint64_t c = (uint32_t)~crc;
    while (n && ((uintptr_t)p & 7)) {
        c = _mm_crc32_u8((uint32_t)c, *p++);
        n--;
    }
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = _mm_crc32_u64(c, w);
        p += 8;
        n -= 8;
    }
    while (n--) c = _mm_crc32_u8((uint32_t)c, *p++);
    return ~(uint32_t)c;
}
static int bt_crc32c_cpu_has_hw(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("sse4.2");
}
#elif defined(__aarch64__) && defined(__ARM_FEATURE_CRC32)
#define BT_CRC32C_HW 1
#include <arm_acle.h>
static uint32_t bt_crc32c_hw(uint32_t crc, const unsigned char *p, size_t n) {
    uint32_t c = ~crc;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = __crc32cd(c, w);
        p += 8;
        n -= 8;
    }
    while (n--) c = __crc32cb(c, *p++);
    return ~c;
}
static int bt_crc32c_cpu_has_hw(void) { return 1; }
#else
#define BT_CRC32C_HW 0
static uint32_t bt_crc32c_hw(uint32_t crc, const unsigned char *p, size_t n) {
    return bt_crc32c_sw(crc, p, n);
}
static int bt_crc32c_cpu_has_hw(void) { return 0; }
#endif

/* -1 = not yet probed; 0 = tables; 1 = instruction. */
static int bt_crc32c_mode = -1;

static inline uint32_t bt_crc32c_update(uint32_t crc, const unsigned char *p, size_t n) {
    if (bt_crc32c_mode < 0) bt_crc32c_mode = bt_crc32c_cpu_has_hw();
    return bt_crc32c_mode ? bt_crc32c_hw(crc, p, n) : bt_crc32c_sw(crc, p, n);
}

/* TFRecord's mask: rotate right by 15 and add a constant. */
static inline uint32_t bt_crc32c_mask(uint32_t crc) {
    return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

#endif
