/*
 * Byte scanning the Line splitter needs beyond <string.h>'s memchr.
 *
 *   bt_memrchr(p, c, n)           last c in p[0..n), or NULL; the C library's memrchr
 *                                  where it has one (glibc, musl, the BSDs), else the
 *                                  portable version below (macOS, Windows), which is also
 *                                  compiled everywhere so tests can check it.
 *   bt_count_byte(p, n, c)        how many bytes of p[0..n) equal c (SSE2 on x86-64).
 *   bt_nth_byte(p, n, c, k, &m)   the k-th (k >= 1) c in p[0..n), or NULL with m set to
 *                                  how many there are (fewer than k).
 *   bt_prefetch(p)                a hint to load p's cache line (no-op where unknown).
 *
 * Define BT_NO_LIBC_MEMRCHR to force the portable memrchr on any platform.
 */
#ifndef BT_MEMRCHR_H
#define BT_MEMRCHR_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Word at a time from the end: a word holds c where (w ^ pattern) has a zero byte. */
static const void *bt_memrchr_portable(const void *s, int c, size_t n) {
    const unsigned char *p = (const unsigned char *)s + n;
    const unsigned char b = (unsigned char)c;
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    const uint64_t pattern = ones * b;
    while (n && ((uintptr_t)p & 7)) {
        --p;
        --n;
        if (*p == b) return p;
    }
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p - 8, 8);
        w ^= pattern;
        if ((w - ones) & ~w & highs) break; /* some byte of this word matches */
        p -= 8;
        n -= 8;
    }
    while (n--) {
        --p;
        if (*p == b) return p;
    }
    return NULL;
}

#if defined(BT_NO_LIBC_MEMRCHR) || defined(__APPLE__) || defined(_WIN32)
#define BT_LIBC_MEMRCHR 0
#define bt_memrchr bt_memrchr_portable
#else
#define BT_LIBC_MEMRCHR 1
/* Python.h defines _GNU_SOURCE on Linux, which declares memrchr in <string.h>. */
static inline const void *bt_memrchr(const void *s, int c, size_t n) {
    return memrchr(s, c, n);
}
#endif

#if defined(__GNUC__) || defined(__clang__)
#define bt_prefetch(p) __builtin_prefetch((const void *)(p), 0, 2)
#else
#define bt_prefetch(p) ((void)(p))
#endif

#if defined(__x86_64__) || defined(_M_X64)
#include <emmintrin.h>
static size_t bt_count_byte(const unsigned char *p, size_t n, unsigned char c) {
    size_t total = 0;
    const __m128i needle = _mm_set1_epi8((char)c);
    while (n >= 16) {
        /* Byte lanes count matches (as 0 - (-1) steps) for at most 255 blocks, then are
           summed into two 64-bit lanes by _mm_sad_epu8. */
        size_t blocks = n / 16 > 255 ? 255 : n / 16;
        __m128i acc = _mm_setzero_si128();
        for (size_t k = 0; k < blocks; k++, p += 16) {
            __m128i v = _mm_loadu_si128((const __m128i *)p);
            acc = _mm_sub_epi8(acc, _mm_cmpeq_epi8(v, needle));
        }
        __m128i sums = _mm_sad_epu8(acc, _mm_setzero_si128());
        total += (size_t)_mm_cvtsi128_si64(sums) +
                 (size_t)_mm_cvtsi128_si64(_mm_unpackhi_epi64(sums, sums));
        n -= blocks * 16;
    }
    while (n--) total += *p++ == c;
    return total;
}
#else
static size_t bt_count_byte(const unsigned char *p, size_t n, unsigned char c) {
    size_t total = 0;
    for (size_t i = 0; i < n; i++) total += p[i] == c;
    return total;
}
#endif

/* Counted a block at a time (vectorised), then memchr in the block where the k-th lies:
   a cap of thousands of records costs one count over the body, not a call per record. */
enum { BT_NTH_BLOCK = 4096, BT_NTH_DIRECT = 16 };

static const unsigned char *bt_nth_byte(const unsigned char *p, size_t n, unsigned char c,
                                        size_t k, size_t *found) {
    size_t seen = 0;
    const unsigned char *end = p + n;
    if (k <= BT_NTH_DIRECT) { /* a small cap: the k-th is likely near */
        const unsigned char *q = p;
        while (q < end && (q = (const unsigned char *)memchr(q, c, end - q)) != NULL) {
            if (++seen == k) return q;
            q++;
        }
        *found = seen;
        return NULL;
    }
    while (p < end) {
        size_t step = end - p < BT_NTH_BLOCK ? (size_t)(end - p) : BT_NTH_BLOCK;
        size_t m = bt_count_byte(p, step, c);
        if (seen + m >= k) {
            const unsigned char *q = p;
            for (;;) {
                q = (const unsigned char *)memchr(q, c, p + step - q);
                if (++seen == k) return q;
                q++;
            }
        }
        seen += m;
        p += step;
    }
    *found = seen;
    return NULL;
}

#endif
