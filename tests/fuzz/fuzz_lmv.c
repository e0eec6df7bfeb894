/* libFuzzer harness for the weight-file loader: open (parse, validate, bind the family), plan a
   session, and run it once on a small input. Checks that lmv_session_memory is exact (an arena of
   that size is enough for lmv_session_create) and that nothing reads or writes out of bounds.

   clang -g -O1 -fsanitize=fuzzer,address,undefined tests/fuzz/fuzz_lmv.c -o fuzz_lmv -lm
   mkdir -p work && ./fuzz_lmv -max_total_time=300 work tests/fuzz/corpus_lmv

   Most mutations would only break a CRC, so the harness recomputes both CRCs first (unless the
   last byte is odd), as the loader's mutation test does: the structural checks get the inputs.
   tests/fuzz/corpus_lmv/ holds one tiny model per family; tests/fuzz/regressions/lmv_* are inputs
   that once failed. */
#define LEMEVIT_IMPLEMENTATION
#include "../../lemevit.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void put32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v; p[1] = (unsigned char)(v >> 8); p[2] = (unsigned char)(v >> 16); p[3] = (unsigned char)(v >> 24);
}

/* Recompute the header and data CRCs where the header's own offsets allow it. */
static void fix_crcs(unsigned char *f, size_t n) {
    static lmv__crc crc;
    static int ready;
    uint64_t meta_off, meta_size, table_off, table_size, data_off, data_size;
    uint32_t c;
    if (n < LMV__HEADER_SIZE || memcmp(f, "LEMEVIT", 8) != 0) return;
    if (!ready) { lmv__crc_init(&crc); ready = 1; }
    meta_off = lmv__rd64(f + 24); meta_size = lmv__rd64(f + 32);
    table_off = lmv__rd64(f + 40); table_size = lmv__rd64(f + 48);
    data_off = lmv__rd64(f + 64); data_size = lmv__rd64(f + 72);
    if (meta_off > n || meta_size > n - meta_off || table_off > n || table_size > n - table_off) return;
    c = lmv__crc_update(&crc, 0, f, 80);
    c = lmv__crc_update(&crc, c, f + meta_off, (size_t)meta_size);
    c = lmv__crc_update(&crc, c, f + table_off, (size_t)table_size);
    put32(f + 80, c);
    if (data_off <= n && data_size <= n - data_off) put32(f + 84, lmv__crc_update(&crc, 0, f + data_off, (size_t)data_size));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    lmv_model *m;
    lmv_session *s;
    lmv_session_options so = lmv_session_options_default();
    lmv_open_options oo = lmv_open_options_default();
    lmv_error err;
    const lmv_model_info *in;
    unsigned char *copy;
    size_t need;
    void *mem;
    lmv_arena arena;
    if (size == 0) return 0;
    copy = (unsigned char *)malloc(size); /* malloc'd: 16-byte aligned, as a loader would have it */
    if (!copy) return 0;
    memcpy(copy, data, size);
    if (!(data[size - 1] & 1)) fix_crcs(copy, size);
    oo.skip_verify = (data[size - 1] & 2) != 0;
    if (lmv_model_open_memory(copy, size, &oo, &m, &err) != LMV_OK) {
        free(copy);
        return 0;
    }
    in = lmv_model_info_get(m);
    /* a small input keeps each run fast: the native size when it is small, else 16 x 16 */
    so.max_h = in->img_h <= 64 ? in->img_h : 16;
    so.max_w = in->img_w <= 64 ? in->img_w : 16;
    so.threads = 1;
    if (lmv_session_memory(m, &so, &need, &err) == LMV_OK && need <= ((size_t)64 << 20) && (mem = malloc(need)) != NULL) {
        lmv_arena_init(&arena, mem, need);
        so.allocator = lmv_arena_allocator(&arena);
        if (lmv_session_create(m, &so, &s, &err) != LMV_OK) {
            if (err.code == LMV_ERR_OUT_OF_MEMORY) __builtin_trap(); /* lmv_session_memory was not enough */
        } else {
            size_t nin = (size_t)in->in_chans * so.max_h * so.max_w, i;
            float *x = (float *)malloc(nin * sizeof(float));
            float *y = (float *)malloc(sizeof(float) * (size_t)(in->num_classes + in->num_features + 1));
            if (x && y) {
                for (i = 0; i < nin; i++) x[i] = (float)((i * 2654435761u) % 1000) / 500.0f - 1.0f;
                if (in->num_classes) lmv_run(s, x, 1, so.max_h, so.max_w, y, &err);
                lmv_run_features(s, x, 1, so.max_h, so.max_w, y, &err);
            }
            free(x);
            free(y);
            lmv_session_destroy(s);
        }
        free(mem);
    }
    {   /* every accessor over every index */
        lmv_config_entry e;
        lmv_tensor_info t;
        int i;
        for (i = 0; lmv_model_config(m, i, &e); i++) {}
        for (i = 0; lmv_model_tensor(m, i, &t); i++) {}
        for (i = -1; i <= in->num_classes; i++) lmv_model_label(m, i);
    }
    lmv_model_close(m);
    free(copy);
    return 0;
}
