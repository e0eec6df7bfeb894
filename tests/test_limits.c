/* The documented limits (top of lemevit.h), each probed just over and at the limit: a file or
   input one step past it gets LMV_ERR_LIMIT, one at it does not. Header fields are changed in a
   real model with the header CRC recomputed, so the limit check, not the CRC, answers.

     test_limits VIT.lmv LEMEVIT.lmv PICTURE.jpg       (tests/test_limits.py passes the corpus files) */
#define LEMEVIT_IMPLEMENTATION
#include "../lemevit.h"
#include "test_util.h"

#include <stdio.h>
#include <stdlib.h>

static int passed, failed;

static void check(const char *name, lmv_result got, int want_limit, const lmv_error *e) {
    int ok = want_limit ? got == LMV_ERR_LIMIT : got != LMV_ERR_LIMIT;
    if (ok) passed++;
    else failed++;
    if (ok) printf("PASS %s (%s%s%s)\n", name, lmv_result_string(got), e && got ? ": " : "", e && got ? e->message : "");
    else printf("FAIL %s: got %s%s%s\n", name, lmv_result_string(got), e && got ? ": " : "", e && got ? e->message : "");
}

static void put32(unsigned char *p, uint32_t v) { p[0] = (unsigned char)v; p[1] = (unsigned char)(v >> 8); p[2] = (unsigned char)(v >> 16); p[3] = (unsigned char)(v >> 24); }
static void put64(unsigned char *p, uint64_t v) { put32(p, (uint32_t)v); put32(p + 4, (uint32_t)(v >> 32)); }

/* A copy of the model with one header field changed and the header CRC made right again. */
static lmv_result open_patched(const unsigned char *src, size_t n, size_t off, int width, uint64_t value, lmv_error *e) {
    static lmv__crc crc;
    unsigned char *f = (unsigned char *)malloc(n);
    lmv_model *m;
    lmv_result r;
    uint32_t c;
    memcpy(f, src, n);
    if (width == 1) f[off] = (unsigned char)value;
    else if (width == 4) put32(f + off, (uint32_t)value);
    else put64(f + off, value);
    lmv__crc_init(&crc);
    c = lmv__crc_update(&crc, 0, f, 80);
    c = lmv__crc_update(&crc, c, f + lmv__rd64(f + 24), (size_t)lmv__rd64(f + 32));
    c = lmv__crc_update(&crc, c, f + lmv__rd64(f + 40), (size_t)lmv__rd64(f + 48));
    put32(f + 80, c);
    r = lmv_model_open_memory(f, n, NULL, &m, e);
    if (r == LMV_OK) lmv_model_close(m);
    free(f);
    return r;
}

static lmv_result session_memory(const lmv_model *m, int h, int w, int batch, lmv_error *e) {
    lmv_session_options so = lmv_session_options_default();
    size_t bytes;
    so.max_h = h;
    so.max_w = w;
    so.max_batch = batch;
    so.threads = 1;
    return lmv_session_memory(m, &so, &bytes, e);
}

int main(int argc, char **argv) {
    unsigned char *vit, *lm, *jpeg;
    size_t nv, nl, nj;
    lmv_error e;
    lmv_model *mv, *ml;
    lmv_session *s;
    lmv_image_options io = lmv_image_options_default();
    lmv_image_info ii;
    lmv_image img;
    float x[3 * 16 * 16], y[16];
    uint64_t table_off;
    if (argc != 4 || !(vit = tu_read_file(argv[1], &nv)) || !(lm = tu_read_file(argv[2], &nl)) || !(jpeg = tu_read_file(argv[3], &nj))) {
        printf("FAIL usage: test_limits VIT.lmv LEMEVIT.lmv PICTURE.jpg\n0 passed, 1 failed\n");
        return 1;
    }
    /* the weight file */
    check("tensors per file: 65537 is over the limit", open_patched(vit, nv, 60, 4, 65537, &e), 1, &e);
    check("tensors per file: 65536 is not", open_patched(vit, nv, 60, 4, 65536, &e), 0, &e);
    check("meta entries: 4097 is over the limit", open_patched(vit, nv, 56, 4, 4097, &e), 1, &e);
    check("meta entries: 4096 is not", open_patched(vit, nv, 56, 4, 4096, &e), 0, &e);
    check("file size field: 2^48 is over the limit", open_patched(vit, nv, 16, 8, (uint64_t)1 << 48, &e), 1, &e);
    check("file size field: 2^48 - 1 is not", open_patched(vit, nv, 16, 8, ((uint64_t)1 << 48) - 1, &e), 0, &e);
    table_off = lmv__rd64(vit + 40);
    check("dimensions per tensor: 7 is over the limit", open_patched(vit, nv, (size_t)table_off + 3, 1, 7, &e), 1, &e);
    check("dimensions per tensor: 6 is not", open_patched(vit, nv, (size_t)table_off + 3, 1, 6, &e), 0, &e);

    if (lmv_model_open_memory(vit, nv, NULL, &mv, &e) != LMV_OK || lmv_model_open_memory(lm, nl, NULL, &ml, &e) != LMV_OK) {
        printf("FAIL the models open: %s\n%d passed, %d failed\n", e.message, passed, failed + 1);
        return 1;
    }
    /* tokens per attention: ViT patch 8 (+1 class token), LeMeViT stage 0 at 1/4 of the input */
    check("ViT tokens: 8192x8192 (1<<20 patches + class token) is over the limit", session_memory(mv, 8192, 8192, 1, &e), 1, &e);
    check("ViT tokens: 8192x8184 is not", session_memory(mv, 8192, 8184, 1, &e), 0, &e);
    check("LeMeViT tokens: 4100x4100 (1025^2 in stage 0) is over the limit", session_memory(ml, 4100, 4100, 1, &e), 1, &e);
    check("LeMeViT tokens: 4096x4096 (1<<20) is not", session_memory(ml, 4096, 4096, 1, &e), 0, &e);
    /* input side and batch */
    check("input side: 32769 is over the limit", session_memory(mv, 32769, 16, 1, &e), 1, &e);
    check("input side: 32768 is not", session_memory(mv, 32768, 16, 1, &e), 0, &e);
    check("session batch: 65537 is over the limit", session_memory(mv, 16, 16, 65537, &e), 1, &e);
    check("session batch: 65536 is not", session_memory(mv, 16, 16, 65536, &e), 0, &e);
    if (lmv_session_create(mv, NULL, &s, &e) == LMV_OK) {
        memset(x, 0, sizeof x);
        check("lmv_run batch: 65537 is over the limit", lmv_run(s, x, 65537, 16, 16, y, &e), 1, &e);
        check("lmv_run batch: 1 is not", lmv_run(s, x, 1, 16, 16, y, &e), 0, &e);
        lmv_session_destroy(s);
    }
    lmv_model_close(mv);
    lmv_model_close(ml);
    /* image pixels: the 32x32 picture against max_pixels */
    io.max_pixels = 32 * 32 - 1;
    check("JPEG pixels: 1024 over max_pixels 1023 (info)", lmv_image_jpeg_info(jpeg, nj, &io, &ii, &e), 1, &e);
    check("JPEG pixels: 1024 over max_pixels 1023 (decode)", lmv_image_load_jpeg_memory(jpeg, nj, &io, &img, &e), 1, &e);
    io.max_pixels = 32 * 32;
    check("JPEG pixels: 1024 at max_pixels 1024", lmv_image_load_jpeg_memory(jpeg, nj, &io, &img, &e), 0, &e);
    lmv_image_free(&img);
    {   /* .npy: 8 dimensions at most */
        char buf[512];
        int shape[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
        size_t hl = lmv_npy_header(buf, 8, shape);
        lmv_npy npy;
        memset(buf + hl, 0, 4);
        check(".npy dimensions: 8 is not over the limit", lmv_npy_parse(buf, hl + 4, &npy, &e), 0, &e);
        memcpy(buf, "\x93NUMPY\x01\x00", 8);
        strcpy(buf + 10, "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1, 1, 1, 1, 1, 1, 1, 1), }");
        buf[8] = (char)strlen(buf + 10);
        buf[9] = 0;
        check(".npy dimensions: 9 is over the limit", lmv_npy_parse(buf, 10 + strlen(buf + 10) + 4, &npy, &e), 1, &e);
    }
    free(vit);
    free(lm);
    free(jpeg);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
