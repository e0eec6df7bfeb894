/* libFuzzer harness for the PNG decoder (through the by-signature loader, and the preprocess that
   follows it), which also checks that lmv_image_png_info agrees with the decode and that its
   decode_memory is enough.

   clang -g -O1 -fsanitize=fuzzer,address,undefined tests/fuzz/fuzz_png.c -o fuzz_png -lm
   mkdir -p work && ./fuzz_png -max_total_time=300 work tests/fuzz/corpus_png

   New inputs go to the first directory (work/); tests/fuzz/corpus_png/ is the small seed set
   (tests/fuzz/make_corpus.py: every colour type, 1-16 bits, Adam7, stored/fixed/dynamic blocks,
   several IDAT chunks). The pixel limit keeps each input fast and the memory modest. Two kinds
   of input: a PNG (its chunk CRCs made right, unless the last byte is odd, so that mutations get
   past them), or any other bytes, wrapped as the rows of a small PNG (see wrap()). */
#define LEMEVIT_IMPLEMENTATION
#include "../../lemevit.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void put32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* Mutations rarely keep a CRC right, so the CRC of every whole chunk is made right again: the
   fuzzer then reaches the chunk contents and the inflate. */
static void fix_crcs(unsigned char *d, size_t n) {
    size_t pos = 8;
    while (n - pos >= 12) {
        uint32_t len = lmv__be32(d + pos);
        if (len > n - pos - 12) break;
        put32(d + pos + 8 + len, lmv__crc32(0, d + pos + 4, (size_t)len + 4));
        pos += 12 + (size_t)len;
    }
}

/* Input without a PNG signature becomes a small PNG whose filtered rows are the input bytes
   (repeated to the size the header needs) in stored deflate blocks with the right Adler-32, so
   the unfiltering and the conversion of every colour type and depth see arbitrary data. */
static unsigned char *wrap(const uint8_t *data, size_t size, size_t *n) {
    static const unsigned char kinds[15][2] = {{0, 1}, {0, 2}, {0, 4}, {0, 8}, {0, 16}, {2, 8}, {2, 16}, {3, 1},
                                               {3, 2}, {3, 4}, {3, 8}, {4, 8}, {4, 16}, {6, 8}, {6, 16}};
    lmv__png g;
    unsigned char *d, *p;
    size_t raw, i, blocks, at;
    uint32_t a = 1, b = 0;
    int pass, npal;
    memset(&g, 0, sizeof g);
    g.ctype = kinds[data[0] % 15][0];
    g.depth = kinds[data[0] % 15][1];
    g.samples = g.ctype == 2 ? 3 : g.ctype == 4 ? 2 : g.ctype == 6 ? 4 : 1;
    g.width = 1 + data[1] % 24;
    g.height = 1 + data[2] % 24;
    g.interlace = data[0] >= 128;
    npal = 1 + data[2] / 4;
    data += 3;
    size -= 3;
    for (raw = 0, pass = 0; pass < (g.interlace ? 7 : 1); pass++) {
        int x0, y0, dx, dy, pw, ph;
        lmv__ppass(&g, pass, &x0, &y0, &dx, &dy, &pw, &ph);
        if (pw && ph) raw += (size_t)ph * (1 + lmv__prow_bytes(&g, pw));
    }
    blocks = (raw + 65534) / 65535;
    *n = 8 + 25 + (12 + (size_t)npal * 3) + 12 + 2 + blocks * 5 + raw + 4 + 12;
    d = p = (unsigned char *)malloc(*n);
    if (!d) return NULL;
    memcpy(p, "\x89PNG\r\n\x1a\n", 8);
    p += 8;
    put32(p, 13);
    memcpy(p + 4, "IHDR", 4);
    put32(p + 8, (uint32_t)g.width);
    put32(p + 12, (uint32_t)g.height);
    p[16] = (unsigned char)g.depth;
    p[17] = (unsigned char)g.ctype;
    p[18] = p[19] = 0;
    p[20] = (unsigned char)g.interlace;
    p += 25;
    put32(p, (uint32_t)npal * 3);
    memcpy(p + 4, "PLTE", 4);
    for (i = 0; i < (size_t)npal * 3; i++) p[8 + i] = (unsigned char)(i * 37);
    p += 12 + (size_t)npal * 3;
    put32(p, (uint32_t)(2 + blocks * 5 + raw + 4));
    memcpy(p + 4, "IDAT", 4);
    p += 8;
    *p++ = 0x78;
    *p++ = 0x01;
    for (at = 0; at < raw;) {
        size_t len = raw - at > 65535 ? 65535 : raw - at;
        p[0] = at + len == raw;
        p[1] = (unsigned char)len;
        p[2] = (unsigned char)(len >> 8);
        p[3] = (unsigned char)~len;
        p[4] = (unsigned char)(~len >> 8);
        p += 5;
        for (i = 0; i < len; i++, at++) {
            unsigned char v = size ? data[at % size] : 0;
            if (at % 7 == 0 && v > 4) v %= 6; /* mostly valid filter bytes where rows start */
            *p++ = v;
            a = (a + v) % 65521u;
            b = (b + a) % 65521u;
        }
    }
    put32(p, (b << 16) | a);
    p += 4;
    put32(p, 0);
    memcpy(p + 4, "IEND", 4);
    p += 12;
    fix_crcs(d, (size_t)(p - d));
    *n = (size_t)(p - d);
    return d;
}

int LLVMFuzzerTestOneInput(const uint8_t *in, size_t size) {
    unsigned char *data;
    lmv_image img;
    lmv_image_info info;
    lmv_image_options opt = lmv_image_options_default();
    lmv_error err;
    lmv_arena arena;
    lmv_result r;
    void *buf;
    opt.max_pixels = (size_t)1 << 20;
    opt.ignore_orientation = size > 0 && (in[size - 1] & 2);
    if (size > 0 && (in[size - 1] & 4)) { /* no pixel limit: the size arithmetic meets any IHDR */
        opt.max_pixels = SIZE_MAX;
        opt.max_memory = (size_t)64 << 20;
    }
    if (size >= 8 && in[0] == 0x89) {
        data = (unsigned char *)malloc(size);
        if (!data) return 0;
        memcpy(data, in, size);
        if (!(in[size - 1] & 1)) fix_crcs(data, size); /* odd last byte: the CRCs as they are */
    } else if (size >= 3) {
        data = wrap(in, size, &size);
        if (!data) return 0;
    } else {
        return 0;
    }
    /* the header info must agree with the decode: when it fails the decode fails too, and when it
       succeeds the decode fits in an arena of exactly decode_memory bytes */
    if (lmv_image_png_info(data, size, &opt, &info, &err) != LMV_OK) {
        r = lmv_image_load_memory(data, size, &opt, &img, &err);
        if (r == LMV_OK && size >= 4 && data[0] == 0x89) __builtin_trap();
        if (r == LMV_OK) lmv_image_free(&img);
        free(data);
        return 0;
    }
    if (info.decode_memory > ((size_t)64 << 20)) { /* the decode must refuse it before allocating */
        if (lmv_image_load_memory(data, size, &opt, &img, &err) != LMV_ERR_LIMIT) __builtin_trap();
        free(data);
        return 0;
    }
    buf = malloc(info.decode_memory);
    if (!buf) {
        free(data);
        return 0;
    }
    lmv_arena_init(&arena, buf, info.decode_memory);
    opt.allocator = lmv_arena_allocator(&arena);
    r = lmv_image_load_memory(data, size, &opt, &img, &err);
    if (r == LMV_ERR_OUT_OF_MEMORY) __builtin_trap();
    if (r == LMV_OK && (img.width != info.width || img.height != info.height || img.channels != info.channels))
        __builtin_trap();
    if (r == LMV_OK && (size_t)img.width * (size_t)img.height <= 65536) {
        lmv_preprocess pp;
        static float out[3 * 24 * 20];
        int i;
        memset(&pp, 0, sizeof pp);
        pp.resize = (int)(size % 3) * 16; /* 0: straight to the crop size */
        pp.crop_h = 24;
        pp.crop_w = 20;
        pp.interpolation = (lmv_interp)(size % 3);
        for (i = 0; i < 3; i++) {
            pp.mean[i] = 0.5f;
            pp.std[i] = 0.25f;
        }
        lmv_preprocess_image(&img, &pp, (size & 4) ? 1 : 3, out, NULL, &err);
    }
    free(buf); /* the image lives in the arena */
    free(data);
    return 0;
}
