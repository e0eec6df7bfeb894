/* The public API as a user sees it: this program uses only what lemevit.h documents (no lmv__
   internals) and is compiled as C99 and as C++ by tests/test_api.py. Option structs are
   zero-initialised and must mean the defaults; the classify count, the memory trio of models and
   sessions, the enum-typed fields, the version macros, the .npy helper and LEMEVIT_ASSERT are
   checked here.

     test_api MODEL.lmv MODEL100.lmv PICTURE.jpg FORMAT_VERSION IN.npy OUT.npy
       MODEL.lmv      any model; MODEL100.lmv a model with 100 labelled classes
       FORMAT_VERSION the .lmv version tools/lmvfile.py writes
       IN.npy         numpy.arange(24, dtype='<f4').reshape(2, 3, 4), saved by numpy
       OUT.npy        written here: lmv_npy_header + the floats 0..5 as shape (2, 3)
   Prints `PASS name` / `FAIL name: why`, then `top I` lines (MODEL100's top 80 for PICTURE) for
   the script to compare with numpy, then `N passed, N failed`. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* the library's own invariants: count every check, and every one that does not hold */
static unsigned long api_asserts, api_assert_failures;
#define LEMEVIT_ASSERT(x) ((x) ? (void)api_asserts++ : (void)(api_asserts++, api_assert_failures++))
#define LEMEVIT_IMPLEMENTATION
#include "../lemevit.h"
#include "test_util.h"

#ifdef __cplusplus
#define ZERO {} /* C++: value-initialised, every field zero */
#else
#define ZERO {0}
#endif

static int passed, failed;

static int check(const char *name, int ok, const char *detail) {
    if (ok) passed++;
    else failed++;
    if (ok) printf("PASS %s\n", name);
    else printf("FAIL %s: %s\n", name, detail && *detail ? detail : "no");
    return ok;
}

/* a buffer at an address that is 64-byte aligned plus `off` */
static void *at(void *raw, size_t off) {
    unsigned char *p = (unsigned char *)raw;
    return p + ((64 - ((size_t)p & 63)) & 63) + off;
}

static void test_version(int format_version) {
    char want[32];
    sprintf(want, "%d.%d.%d", LEMEVIT_VERSION_MAJOR, LEMEVIT_VERSION_MINOR, LEMEVIT_VERSION_PATCH);
    check("LEMEVIT_VERSION_STRING is MAJOR.MINOR.PATCH", strcmp(want, LEMEVIT_VERSION_STRING) == 0, LEMEVIT_VERSION_STRING);
    check("LEMEVIT_FORMAT_VERSION is the version tools/lmvfile.py writes", LEMEVIT_FORMAT_VERSION == format_version, "");
}

/* lmv_result_name() spells each enumerator as the compiler's # operator does, and anything else
   as LMV_ERR_UNKNOWN */
#define SPELLED(x) ok &= strcmp(lmv_result_name(x), #x) == 0
static void test_result_names(void) {
    int ok = 1;
    SPELLED(LMV_OK); SPELLED(LMV_ERR_INVALID_ARGUMENT); SPELLED(LMV_ERR_OUT_OF_MEMORY); SPELLED(LMV_ERR_IO);
    SPELLED(LMV_ERR_BAD_MAGIC); SPELLED(LMV_ERR_VERSION); SPELLED(LMV_ERR_ENDIAN); SPELLED(LMV_ERR_TRUNCATED);
    SPELLED(LMV_ERR_CHECKSUM); SPELLED(LMV_ERR_CORRUPT); SPELLED(LMV_ERR_MISSING_TENSOR); SPELLED(LMV_ERR_SHAPE);
    SPELLED(LMV_ERR_UNSUPPORTED); SPELLED(LMV_ERR_INPUT_SIZE); SPELLED(LMV_ERR_ALIGNMENT); SPELLED(LMV_ERR_LIMIT);
    SPELLED(LMV_ERR_BAD_INPUT); SPELLED(LMV_ERR_IMAGE); SPELLED(LMV_ERR_FORMAT);
    check("lmv_result_name() spells every lmv_result as in the header", ok, "");
    check("lmv_result_name() of a value past the enum is LMV_ERR_UNKNOWN",
          strcmp(lmv_result_name((lmv_result)(LMV_ERR_FORMAT + 1)), "LMV_ERR_UNKNOWN") == 0 &&
              strcmp(lmv_result_name((lmv_result)-1), "LMV_ERR_UNKNOWN") == 0, "");
}

/* the JPEG with its frame header declaring w x h pixels (the data stays that of the picture) */
static unsigned char *resized_frame(const unsigned char *jpeg, size_t nj, int w, int h) {
    unsigned char *p = (unsigned char *)malloc(nj);
    size_t i;
    memcpy(p, jpeg, nj);
    for (i = 2; i + 9 < nj; i++)
        if (p[i] == 0xFF && (p[i + 1] == 0xC0 || p[i + 1] == 0xC1 || p[i + 1] == 0xC2)) {
            p[i + 5] = (unsigned char)(h >> 8), p[i + 6] = (unsigned char)h;
            p[i + 7] = (unsigned char)(w >> 8), p[i + 8] = (unsigned char)w;
            return p;
        }
    free(p);
    return NULL;
}

/* The defaults as lemevit.h documents them, field by field, and zero-filled options behaving as
   they do. */
static void test_defaults(const unsigned char *jpeg, size_t nj) {
    lmv_open_options od = lmv_open_options_default();
    lmv_session_options sd = lmv_session_options_default();
    lmv_image_options iz = ZERO, id = lmv_image_options_default();
    lmv_image_info a, b;
    lmv_image ia, ib;
    lmv_error e;
    unsigned char *over, *under;
    int w = 65500, h = (int)(LMV_IMAGE_MAX_PIXELS_DEFAULT / 65500);
    check("lmv_open_options_default(): malloc/free, the weights' CRC checked (skip_verify 0)",
          od.allocator.alloc == NULL && od.skip_verify == 0, "");
    check("lmv_session_options_default(): malloc/free, max_batch 1, OpenMP's threads (0), int8_compute 0",
          sd.allocator.alloc == NULL && sd.max_batch == 1 && sd.threads == 0 && sd.int8_compute == 0, "");
    check("lmv_image_options_default(): malloc/free, orientation applied, no memory limit",
          id.allocator.alloc == NULL && id.ignore_orientation == 0 && id.max_memory == 0, "");
    check("lmv_image_options_default(): the pixel and scan limits are the documented defaults (or 0, meaning them)",
          (id.max_pixels == 0 || id.max_pixels == LMV_IMAGE_MAX_PIXELS_DEFAULT) &&
              (id.max_scans == 0 || id.max_scans == LMV_IMAGE_MAX_SCANS_DEFAULT), "");
    check("zero and default lmv_image_options read the same JPEG header",
          lmv_image_jpeg_info(jpeg, nj, &iz, &a, &e) == LMV_OK && lmv_image_jpeg_info(jpeg, nj, &id, &b, &e) == LMV_OK &&
              memcmp(&a, &b, sizeof a) == 0, e.message);
    if (lmv_image_load_jpeg_memory(jpeg, nj, &iz, &ia, &e) == LMV_OK) {
        if (lmv_image_load_jpeg_memory(jpeg, nj, &id, &ib, &e) == LMV_OK) {
            check("zero and default lmv_image_options decode the same pixels",
                  ia.width == ib.width && ia.height == ib.height && ia.channels == ib.channels &&
                      memcmp(ia.pixels, ib.pixels, (size_t)ia.width * ia.height * ia.channels) == 0, "");
            lmv_image_free(&ib);
        } else check("default lmv_image_options decode", 0, e.message);
        lmv_image_free(&ia);
    } else check("zero lmv_image_options decode", 0, e.message);
    /* max_pixels 0 is LMV_IMAGE_MAX_PIXELS_DEFAULT: a header declaring one row more than fits under
       it is refused with LMV_ERR_LIMIT; one at it passes the limit (max_memory 0: no other) and is
       refused only because the picture's few bytes cannot hold that many pixels (LMV_ERR_IMAGE) */
    over = resized_frame(jpeg, nj, w, h + 1);
    under = resized_frame(jpeg, nj, w, h);
    if (check("the picture has a frame header", over && under, "")) {
        check("zero lmv_image_options: a header over LMV_IMAGE_MAX_PIXELS_DEFAULT pixels gives LMV_ERR_LIMIT",
              lmv_image_jpeg_info(over, nj, &iz, &a, &e) == LMV_ERR_LIMIT, e.message);
        check("zero lmv_image_options: a header at LMV_IMAGE_MAX_PIXELS_DEFAULT pixels passes the limit (LMV_ERR_IMAGE: too short)",
              lmv_image_jpeg_info(under, nj, &iz, &a, &e) == LMV_ERR_IMAGE, e.message);
        check("default lmv_image_options: the same two answers",
              lmv_image_jpeg_info(over, nj, &id, &a, &e) == LMV_ERR_LIMIT &&
                  lmv_image_jpeg_info(under, nj, &id, &b, &e) == LMV_ERR_IMAGE,
              e.message);
    }
    free(over);
    free(under);
}

/* zero-filled open options check the weights' CRC: a flipped last weight byte is refused, and
   skip_verify = 1 lets it through */
static void test_verify(const unsigned char *file, size_t n) {
    void *raw = malloc(n + 64);
    unsigned char *copy = (unsigned char *)at(raw, 0);
    lmv_open_options o = ZERO;
    lmv_model *m = NULL;
    lmv_error e;
    memcpy(copy, file, n);
    copy[n - 1] ^= 0x40;
    check("zero lmv_open_options refuse a damaged weight byte (LMV_ERR_CHECKSUM)",
          lmv_model_open_memory(copy, n, &o, &m, &e) == LMV_ERR_CHECKSUM, e.message);
    o.skip_verify = 1;
    check("skip_verify = 1 opens the same file (the header is still checked)",
          lmv_model_open_memory(copy, n, &o, &m, &e) == LMV_OK, e.message);
    lmv_model_close(m);
    copy[n - 1] ^= 0x40;
    copy[0] ^= 1;
    check("skip_verify = 1 still checks the header (bad magic)", lmv_model_open_memory(copy, n, &o, &m, &e) == LMV_ERR_BAD_MAGIC,
          e.message);
    free(raw);
}

static void test_types(const lmv_model *m) {
    const lmv_model_info *(*get)(const lmv_model *) = lmv_model_info_get; /* a function, not a macro */
    const lmv_model_info *in = get(m);
    lmv_config_entry ce;
    lmv_tensor_info ti;
    lmv_dtype dt;
    lmv_config_type ct;
    int i, strings = 0, ints_ok = 0, dtypes_ok = 1;
#ifdef lmv_model_info
    check("lmv_model_info is not a macro", 0, "it is still defined as one");
#endif
    check("lmv_model_info_get() returns the model's info", in && in->num_classes > 0 && in->in_chans == 3, "");
    check("lmv_model_info_get(NULL) is NULL", lmv_model_info_get(NULL) == NULL, "");
    for (i = 0; lmv_model_config(m, i, &ce); i++) {
        ct = ce.type; /* an lmv_config_type (C++ would refuse an int here) */
        if (!strcmp(ce.key, "arch")) strings += ct == LMV_CONFIG_STRING && !strcmp(ce.string, in->arch);
        if (!strcmp(ce.key, "img_size"))
            ints_ok = ct == LMV_CONFIG_INTS && ce.count == 2 && ce.ints[0] == in->img_h && ce.ints[1] == in->img_w;
    }
    check("config entries say what they hold: arch is LMV_CONFIG_STRING, img_size LMV_CONFIG_INTS", strings == 1 && ints_ok, "");
    for (i = 0; lmv_model_tensor(m, i, &ti); i++) {
        dt = ti.dtype; /* an lmv_dtype */
        if (dt != LMV_DTYPE_F32 && dt != LMV_DTYPE_F16 && dt != LMV_DTYPE_INT8 && dt != LMV_DTYPE_F32P) dtypes_ok = 0;
    }
    check("lmv_tensor_info.dtype is an lmv_dtype", i > 0 && dtypes_ok, "");
    check("lmv_dtype_name() names every lmv_dtype",
          !strcmp(lmv_dtype_name(LMV_DTYPE_F32), "f32") && !strcmp(lmv_dtype_name(LMV_DTYPE_F16), "f16") &&
              !strcmp(lmv_dtype_name(LMV_DTYPE_INT8), "int8") && !strcmp(lmv_dtype_name(LMV_DTYPE_F32P), "f32p") &&
              !strcmp(lmv_dtype_name((lmv_dtype)99), "unknown"),
          "");
}

/* one run of `m` on a constant input, into `out` (num_classes floats) */
static int run_once(lmv_session *s, const lmv_model *m, float *out) {
    const lmv_model_info *in = lmv_model_info_get(m);
    size_t i, nx = (size_t)in->in_chans * in->img_h * in->img_w;
    float *x = (float *)malloc(nx * sizeof(float));
    int ok;
    for (i = 0; i < nx; i++) x[i] = (float)(i % 7) * 0.25f - 0.5f;
    ok = lmv_run(s, x, 1, in->img_h, in->img_w, out, NULL) == LMV_OK;
    free(x);
    return ok;
}

/* lmv_model_memory, then lmv_model_open_prealloc in exactly that much memory (at an odd address)
   and lmv_model_open_memory from an arena of that size; 64 bytes less is refused cleanly. Every
   way gives the same logits. */
static void test_model_memory(const unsigned char *file, size_t n) {
    lmv_open_options o = ZERO;
    size_t bytes = 0;
    unsigned char *raw;
    void *mem;
    lmv_model *a = NULL, *b = NULL, *c = NULL;
    lmv_session *sa = NULL, *sc = NULL;
    lmv_arena arena;
    lmv_error e;
    float la[128], lc[128];
    if (!check("lmv_model_memory() counts the bytes of opening", lmv_model_memory(file, n, &o, &bytes, &e) == LMV_OK && bytes > 0,
               e.message))
        return;
    raw = (unsigned char *)malloc(bytes + 128);
    mem = at(raw, 1);
    check("lmv_model_open_prealloc() with 64 bytes fewer gives LMV_ERR_OUT_OF_MEMORY",
          lmv_model_open_prealloc(file, n, &o, mem, bytes - 64, &a, &e) == LMV_ERR_OUT_OF_MEMORY && a == NULL, e.message);
    check("lmv_model_open_prealloc() opens in exactly lmv_model_memory() bytes at an odd address",
          lmv_model_open_prealloc(file, n, &o, mem, bytes, &a, &e) == LMV_OK, e.message);
    check("lmv_model_open_memory() opens with the default allocator", lmv_model_open_memory(file, n, &o, &c, &e) == LMV_OK, e.message);
    if (a && c && lmv_session_create(a, NULL, &sa, &e) == LMV_OK && lmv_session_create(c, NULL, &sc, &e) == LMV_OK &&
        lmv_model_info_get(c)->num_classes <= 128) {
        check("a preallocated model runs to the same logits", run_once(sa, a, la) && run_once(sc, c, lc) &&
              memcmp(la, lc, sizeof(float) * (size_t)lmv_model_info_get(c)->num_classes) == 0, "");
    } else check("sessions on the preallocated and the allocated model", 0, e.message);
    lmv_session_destroy(sa);
    lmv_session_destroy(sc);
    lmv_model_close(a);
    lmv_arena_init(&arena, mem, bytes);
    o.allocator = lmv_arena_allocator(&arena);
    check("an lmv_arena of lmv_model_memory() bytes opens the model", lmv_model_open_memory(file, n, &o, &b, &e) == LMV_OK &&
          arena.peak <= bytes, e.message);
    lmv_model_close(b);
    lmv_model_close(c);
    free(raw);
}

/* lmv_image_jpeg_info's decode_memory, then lmv_image_load_jpeg_prealloc in exactly that much
   memory at an odd address: the same pixels as the allocating decode, and lmv_image_free() leaves
   the caller's memory alone. Fewer bytes, each in a block of exactly that size from malloc (so
   ASan sees a write past it), give LMV_ERR_OUT_OF_MEMORY, an empty image and no byte written
   past the end (a guard pattern after the block stays). */
static void test_jpeg_prealloc(const unsigned char *jpeg, size_t nj) {
    lmv_image_options o = ZERO;
    lmv_image_info info;
    lmv_image want, got;
    lmv_error e;
    unsigned char *raw, *mem;
    size_t sizes[5], k, j;
    int ok = 1;
    if (!check("lmv_image_jpeg_info() gives decode_memory", lmv_image_jpeg_info(jpeg, nj, &o, &info, &e) == LMV_OK &&
               info.decode_memory > 0, e.message))
        return;
    if (!check("lmv_image_load_jpeg_memory() decodes the picture", lmv_image_load_jpeg_memory(jpeg, nj, &o, &want, &e) == LMV_OK,
               e.message))
        return;
    raw = (unsigned char *)malloc(info.decode_memory + 1);
    mem = raw + 1;
    if (check("lmv_image_load_jpeg_prealloc() decodes in exactly decode_memory bytes at an odd address",
              lmv_image_load_jpeg_prealloc(jpeg, nj, &o, mem, info.decode_memory, &got, &e) == LMV_OK, e.message)) {
        check("the preallocated decode has the allocating decode's size and pixels",
              got.width == want.width && got.height == want.height && got.channels == want.channels &&
                  memcmp(got.pixels, want.pixels, (size_t)want.width * want.height * want.channels) == 0, "");
        check("its pixels lie in the given memory",
              got.pixels >= mem && got.pixels + (size_t)got.width * got.height * got.channels <= mem + info.decode_memory, "");
        lmv_image_free(&got); /* nothing to give back: must not free mem */
    }
    free(raw);
    sizes[0] = 0;
    sizes[1] = 1;
    sizes[2] = info.decode_memory / 2;
    sizes[3] = info.decode_memory - 16;
    sizes[4] = info.decode_memory - 1;
    for (k = 0; k < 5; k++) {
        raw = (unsigned char *)malloc(sizes[k] + 64);
        memset(raw + sizes[k], 0xA5, 64);
        memset(&got, 0x5A, sizeof got);
        ok &= lmv_image_load_jpeg_prealloc(jpeg, nj, &o, raw, sizes[k], &got, &e) == LMV_ERR_OUT_OF_MEMORY &&
              got.pixels == NULL && got.width == 0 && strstr(e.message, "decode_memory") != NULL;
        for (j = 0; j < 64; j++) ok &= raw[sizes[k] + j] == 0xA5;
        free(raw);
        raw = (unsigned char *)malloc(sizes[k] ? sizes[k] : 1); /* exactly that size: ASan sees any overrun */
        ok &= lmv_image_load_jpeg_prealloc(jpeg, nj, &o, raw, sizes[k], &got, &e) == LMV_ERR_OUT_OF_MEMORY;
        free(raw);
    }
    check("fewer than decode_memory bytes give LMV_ERR_OUT_OF_MEMORY, an empty image, a message naming decode_memory, "
          "and nothing written past them", ok, e.message);
    check("a NULL buffer gives LMV_ERR_INVALID_ARGUMENT",
          lmv_image_load_jpeg_prealloc(jpeg, nj, &o, NULL, info.decode_memory, &got, &e) == LMV_ERR_INVALID_ARGUMENT, e.message);
    lmv_image_free(&want);
}

/* lmv_session_memory with zero and default options, lmv_session_create_prealloc in that much
   (one byte less is refused), the same logits as lmv_session_create; room beyond it serves
   lmv_classify_*. */
static void test_session_memory(const lmv_model *m, const unsigned char *jpeg, size_t nj) {
    lmv_session_options z = ZERO, d = lmv_session_options_default();
    size_t need = 0, need_d = 0;
    unsigned char *raw;
    void *mem;
    lmv_session *s = NULL, *t = NULL;
    lmv_prediction top[4];
    lmv_error e;
    float ls[128], lt[128];
    int count = -1, classes = lmv_model_info_get(m)->num_classes;
    check("zero and default lmv_session_options plan the same memory",
          lmv_session_memory(m, &z, &need, &e) == LMV_OK && lmv_session_memory(m, &d, &need_d, &e) == LMV_OK && need == need_d,
          e.message);
    d.max_batch = 1; /* the documented defaults, spelled out: one image at the model's native size */
    d.max_h = lmv_model_info_get(m)->img_h;
    d.max_w = lmv_model_info_get(m)->img_w;
    check("zero lmv_session_options plan one image at the model's native size",
          lmv_session_memory(m, &d, &need_d, &e) == LMV_OK && need == need_d, e.message);
    raw = (unsigned char *)malloc(need + (1 << 20) + 128);
    mem = at(raw, 3);
    check("lmv_session_create_prealloc() with one byte less gives LMV_ERR_OUT_OF_MEMORY",
          lmv_session_create_prealloc(m, &z, mem, need - 1, &s, &e) == LMV_ERR_OUT_OF_MEMORY && s == NULL, e.message);
    check("lmv_session_create_prealloc() in exactly lmv_session_memory() bytes",
          lmv_session_create_prealloc(m, &z, mem, need, &s, &e) == LMV_OK, e.message);
    if (s && classes <= 128 && lmv_session_create(m, &z, &t, &e) == LMV_OK)
        check("a preallocated session runs to the same logits", run_once(s, m, ls) && run_once(t, m, lt) &&
              memcmp(ls, lt, sizeof(float) * (size_t)classes) == 0, "");
    lmv_session_destroy(s);
    lmv_session_destroy(t);
    s = NULL;
    if (lmv_session_create_prealloc(m, &z, mem, need + (1 << 20), &s, &e) == LMV_OK) {
        check("a preallocated session classifies from the room beyond lmv_session_memory()",
              lmv_classify_jpeg(s, jpeg, nj, NULL, 1, top, &count, &e) == LMV_OK && count == 1, e.message);
        lmv_session_destroy(s);
    } else check("lmv_session_create_prealloc() with room to spare", 0, e.message);
    free(raw);
}

/* lmv_classify_*: no cap on k, the count comes back; the top rows are printed for the script. */
static void test_classify(const lmv_model *m, const unsigned char *jpeg, size_t nj) {
    const lmv_model_info *in = lmv_model_info_get(m);
    lmv_session_options z = ZERO;
    lmv_session *s;
    lmv_prediction *top = (lmv_prediction *)malloc(sizeof(lmv_prediction) * 200);
    lmv_image img;
    lmv_error e;
    float *out = (float *)malloc(sizeof(float) * (size_t)(in->num_classes + in->num_features));
    int count = -1, i, labels = 1;
    if (!check("a session with zero-filled options", lmv_session_create(m, &z, &s, &e) == LMV_OK, e.message)) return;
    check("lmv_classify_jpeg(k = 80) returns 80 rows (no cap at 64)",
          lmv_classify_jpeg(s, jpeg, nj, NULL, 80, top, &count, &e) == LMV_OK && count == 80, e.message);
    for (i = 0; i < count; i++) {
        printf("top %d\n", top[i].index);
        if (!top[i].label || top[i].label != lmv_model_label(m, top[i].index)) labels = 0;
    }
    check("every row has its label", labels, "");
    check("k above the number of classes gives num_classes rows",
          lmv_classify_jpeg(s, jpeg, nj, NULL, 150, top, &count, &e) == LMV_OK && count == in->num_classes, e.message);
    count = -1;
    check("k = 0 is refused and the count is 0",
          lmv_classify_jpeg(s, jpeg, nj, NULL, 0, top, &count, &e) == LMV_ERR_INVALID_ARGUMENT && count == 0, e.message);
    check("the count may be NULL", lmv_classify_jpeg(s, jpeg, nj, NULL, 3, top, NULL, &e) == LMV_OK, e.message);
    if (lmv_image_load_jpeg_memory(jpeg, nj, NULL, &img, &e) == LMV_OK) {
        check("lmv_classify_image() gives the count too", lmv_classify_image(s, &img, 5, top, &count, &e) == LMV_OK && count == 5,
              e.message);
        check("lmv_run_image(LMV_OUTPUT_LOGITS)", lmv_run_image(s, &img, LMV_OUTPUT_LOGITS, out, &e) == LMV_OK, e.message);
        check("lmv_run_image(LMV_OUTPUT_FEATURES)", lmv_run_image(s, &img, LMV_OUTPUT_FEATURES, out, &e) == LMV_OK, e.message);
        check("lmv_run_image() refuses an lmv_output it does not know",
              lmv_run_image(s, &img, (lmv_output)7, out, &e) == LMV_ERR_INVALID_ARGUMENT, e.message);
        lmv_image_free(&img);
    } else check("decode the picture", 0, e.message);
    lmv_session_destroy(s);
    free(top);
    free(out);
}

/* The .npy helper: what numpy.save wrote parses in place; each documented error; the header
   lmv_npy_header writes is read back by numpy (in the script). */
static void test_npy(const char *in_path, const char *out_path) {
    size_t n, i, hl;
    unsigned char *buf = tu_read_file(in_path, &n), *raw, *copy;
    lmv_npy npy;
    lmv_error e;
    char hdr[256];
    int shape[2] = {2, 3}, ok = 1;
    float vals[6];
    FILE *f;
    if (!check("IN.npy readable", buf != NULL, in_path)) return;
    raw = (unsigned char *)malloc(n + 128);
    copy = (unsigned char *)at(raw, 0);
    memcpy(copy, buf, n);
    if (check("lmv_npy_parse() reads numpy.save's float32 array", lmv_npy_parse(copy, n, &npy, &e) == LMV_OK, e.message)) {
        for (i = 0; i < npy.count; i++) ok &= npy.data[i] == (float)i;
        check("shape (2, 3, 4) and the values of numpy.arange", npy.ndim == 3 && npy.shape[0] == 2 && npy.shape[1] == 3 &&
              npy.shape[2] == 4 && npy.count == 24 && ok, "");
    }
    check("a short buffer gives LMV_ERR_TRUNCATED", lmv_npy_parse(copy, n - 4, &npy, &e) == LMV_ERR_TRUNCATED, e.message);
    check("not a .npy gives LMV_ERR_BAD_INPUT", lmv_npy_parse("hello, world", 12, &npy, &e) == LMV_ERR_BAD_INPUT, e.message);
    memcpy(at(raw, 2), buf, n);
    check("data not 4-byte aligned gives LMV_ERR_ALIGNMENT", lmv_npy_parse(at(raw, 2), n, &npy, &e) == LMV_ERR_ALIGNMENT, e.message);
    memcpy(copy, buf, n);
    for (i = 0; i + 3 <= n; i++)
        if (!memcmp(copy + i, "<f4", 3) || !memcmp(copy + i, ">f4", 3)) { memcpy(copy + i + 1, "f8", 2); break; }
    check("float64 data gives LMV_ERR_BAD_INPUT", lmv_npy_parse(copy, n, &npy, &e) == LMV_ERR_BAD_INPUT, e.message);
    memset(copy, 0, 128);
    memcpy(copy, "\x93NUMPY\x01\x00", 8);
    strcpy((char *)copy + 10, "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1, 1, 1, 1, 1, 1, 1, 1), }");
    hl = strlen((char *)copy + 10);
    copy[8] = (unsigned char)hl;
    check("9 dimensions give LMV_ERR_LIMIT", lmv_npy_parse(copy, 10 + hl + 4, &npy, &e) == LMV_ERR_LIMIT, e.message);
    hl = lmv_npy_header(hdr, 2, shape);
    for (i = 0; i < 6; i++) vals[i] = (float)i;
    f = fopen(out_path, "wb");
    check("lmv_npy_header() + data written to OUT.npy", f && hl % 64 == 0 && fwrite(hdr, 1, hl, f) == hl &&
          fwrite(vals, sizeof(float), 6, f) == 6 && fclose(f) == 0, out_path);
    free(raw);
    free(buf);
}

/* A file with one tensor the graph does not read is refused with LMV_ERR_FORMAT, naming it, and
   no model is returned. */
static void test_stray(const char *path) {
    size_t n;
    unsigned char *data = tu_read_file(path, &n);
    lmv_model *m = NULL;
    lmv_error e;
    lmv_result r = data ? lmv_model_open_memory(data, n, NULL, &m, &e) : LMV_ERR_IO;
    check("STRAY.lmv (one unread tensor) is refused with LMV_ERR_FORMAT naming the tensor, and no model",
          r == LMV_ERR_FORMAT && e.code == LMV_ERR_FORMAT && strstr(e.message, "'blocks.0.attn.q_bias'") && !m,
          data ? e.message : path);
    check("lmv_result_string(LMV_ERR_FORMAT) says what it is",
          strcmp(lmv_result_string(LMV_ERR_FORMAT), "unknown error") != 0, lmv_result_string(LMV_ERR_FORMAT));
    lmv_model_close(m);
    free(data);
}

int main(int argc, char **argv) {
    size_t n1, n100, nj;
    unsigned char *m1, *m100, *jpeg;
    lmv_model *model = NULL, *model100 = NULL;
    lmv_error e;
    if (argc != 8) {
        fprintf(stderr, "usage: test_api MODEL.lmv MODEL100.lmv PICTURE.jpg FORMAT_VERSION IN.npy OUT.npy STRAY.lmv\n");
        return 2;
    }
    m1 = tu_read_file(argv[1], &n1);
    m100 = tu_read_file(argv[2], &n100);
    jpeg = tu_read_file(argv[3], &nj);
    if (!m1 || !m100 || !jpeg) {
        fprintf(stderr, "test_api: cannot read the inputs\n");
        return 2;
    }
    test_version(atoi(argv[4]));
    test_result_names();
    test_defaults(jpeg, nj);
    test_jpeg_prealloc(jpeg, nj);
    test_verify(m1, n1);
    if (check("MODEL.lmv opens with NULL options", lmv_model_open_memory(m1, n1, NULL, &model, &e) == LMV_OK, e.message)) {
        test_types(model);
        test_session_memory(model, jpeg, nj);
    }
    test_model_memory(m1, n1);
    if (check("MODEL100.lmv opens", lmv_model_open_memory(m100, n100, NULL, &model100, &e) == LMV_OK, e.message))
        test_classify(model100, jpeg, nj);
    test_npy(argv[5], argv[6]);
    test_stray(argv[7]);
    check("LEMEVIT_ASSERT is evaluated, and every invariant held", api_asserts > 0 && api_assert_failures == 0, "");
    lmv_model_close(model);
    lmv_model_close(model100);
    free(m1);
    free(m100);
    free(jpeg);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
