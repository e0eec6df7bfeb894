/* lmv - the lemevit.h command-line tool.

     lmv info MODEL.lmv                       what is in a weight file
     lmv run MODEL.lmv IN.npy OUT.npy         logits (or --features) for a float32 NCHW input
     lmv bench MODEL.lmv                      load time, memory, latency, GFLOP/s
     lmv decode IMAGE.jpg OUT.ppm             the decoded pixels (PPM, or PGM for gray)
     lmv preprocess MODEL.lmv IMAGE.jpg OUT.npy   the model's input tensor for an image
     lmv eval MODEL.lmv DIR                   accuracy on a labelled folder (one sub-folder per class)
     lmv embed MODEL.lmv OUT.c [--name SYM]   a C source with the file as an aligned const array
     lmv explain MODEL.lmv IMAGE.jpg OUT.png  a heat map of a block's attention over the image

   lmv --help lists the commands; lmv COMMAND --help gives one command's arguments and options.

   Every failure prints the library's message and exits non-zero. Models are memory-mapped where
   the system allows it, so opening costs no copy. */
#define LEMEVIT_IMPLEMENTATION
#include "../lemevit.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <stdarg.h>
#include <time.h>
#include <sys/stat.h>
#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>
#include <dirent.h>
#define HAVE_MMAP 1
#endif

/* Each command's usage, printed by `lmv COMMAND --help` (or -h). */
static const char *usage_info =
    "usage: lmv info MODEL.lmv\n"
    "  family, config, parameters, preprocessing and labels of a weight file\n";
static const char *usage_run =
    "usage: lmv run MODEL.lmv IN.npy OUT.npy [options]\n"
    "  run the model on a float32 NCHW .npy input and write the logits (batch x classes) as .npy\n"
    "options:\n"
    "  --features            write the features instead: the pooled features (the head's input), or the\n"
    "                        projected embedding for a model with one (CLIP; see lmv info)\n"
    "  --threads N           threads, at most (default 0: all); fewer while that is faster\n"
    "  --trace DIR           also write every block's output of image 0 as DIR/NAME.npy\n"
    "  --attention BLOCK     with --trace: also the attention maps of BLOCK (e.g. blocks.3,\n"
    "                        stages.1.0, layers.2.blocks.1) as BLOCK.attn*.npy\n"
    "  --no-verify           skip the weight checksum (the header is always checked)\n"
    "  --int8-compute        int8 files: multiply in int8 (activations quantised per row),\n"
    "                        faster with AVX512-VNNI; default: widen to float32\n";
static const char *usage_bench =
    "usage: lmv bench MODEL.lmv [options]\n"
    "  time loading and inference on random input\n"
    "options:\n"
    "  --size H W            input size (default: the model's)\n"
    "  --batch N             images per run (default 1)\n"
    "  --threads N           threads, at most (default 0: all); fewer while that is faster\n"
    "  --exact-threads       every run on exactly --threads threads, fast or not (scaling)\n"
    "  --runs N              timed runs after one warm-up (default 10)\n"
    "  --json                one JSON object instead of text\n"
    "  --int8-compute        int8 files: multiply in int8 (see lmv run --help)\n"
    "  --simd PATH           kernels: auto (default), portable, avx2, avx512, avx512-novnni\n"
    "                        (AVX-512 without its int8 VNNI instructions) or neon; the\n"
    "                        environment variable LEMEVIT_SIMD sets the same for every command\n";
static const char *usage_gemm =
    "usage: lmv gemm M N K [options]\n"
    "  time the library's matrix multiply on a Linear's shape: C[M][N] = A[M][K] W[N][K]^T + b,\n"
    "  random data; M, N and K from 1 to 65536\n"
    "options:\n"
    "  --threads N           threads (default 0: all)\n"
    "  --runs N              timed runs after one warm-up (default: enough for ~0.3 s)\n"
    "  --dtype f32|f32p|f16|int8   how W is stored (default f32; f32p: in the GEMM's panels, as\n"
    "                        the converter writes matrix weights)\n"
    "  --int8-compute        with int8 W: quantise A and multiply in int8\n"
    "  --simd PATH           kernels: auto (default), portable, avx2, avx512, avx512-novnni or neon\n"
    "  --json                one JSON object instead of text\n";
static const char *usage_decode =
    "usage: lmv decode IMAGE.jpg OUT.ppm [options]\n"
    "  decode a JPEG or PNG, told apart by their first bytes (JPEG EXIF orientation applied), to PPM\n"
    "  (or PGM for gray)\n"
    "options:\n"
    "  --ignore-exif         keep the stored orientation\n"
    "  --max-pixels N        refuse larger images (default 178956970, Pillow's bound)\n"
    "  --max-scans N         refuse files with more scans (default 100)\n"
    "  --max-memory BYTES    refuse files whose decode needs more memory (default: no limit)\n";
static const char *usage_preprocess =
    "usage: lmv preprocess MODEL.lmv IMAGE.jpg OUT.npy [options]\n"
    "  the model's eval transform of an image, 1xCxHxW float32\n"
    "options:\n"
    "  --ignore-exif         keep the stored orientation\n";
static const char *usage_eval =
    "usage: lmv eval MODEL.lmv DIR [options]\n"
    "  classify every JPEG and PNG under DIR/<class>/ and print the accuracy, per-class\n"
    "  precision/recall/F1 and the confusion matrix. When every folder is named after one of the model's labels (case\n"
    "  ignored), a folder's images belong to that label's class, so a subset of the classes works;\n"
    "  otherwise there must be one folder per class, taken in sorted order (torchvision's\n"
    "  ImageFolder). Other files (not .jpg/.jpeg/.png) are skipped and listed.\n"
    "options:\n"
    "  --json                machine-readable result on stdout\n"
    "  --predictions FILE    also write one line per image: path, true class, predicted class\n"
    "  --int8-compute        int8 files: multiply in int8 (see lmv run --help)\n"
    "  --threads N           threads, at most (default 0: all); fewer while that is faster\n";
static const char *usage_embed =
    "usage: lmv embed FILE OUT.c [options]\n"
    "  write FILE as a C source to link into firmware: const unsigned char SYM[] (64-byte aligned,\n"
    "  so lmv_model_open_memory uses it in place) and const size_t SYM_size; a .lmv is checked\n"
    "  first, any other file (e.g. a JPEG) is embedded as is\n"
    "options:\n"
    "  --name SYM            the symbol (default: lmv_model_data)\n";

static const char *usage_explain =
    "usage: lmv explain MODEL.lmv IMAGE.jpg OUT.png [options]\n"
    "  where the model looks: a block's attention map, upsampled to the picture the model sees (its\n"
    "  eval crop, scaled up) and blended over it as a heat map (PNG); the top 5 classes as text.\n"
    "options:\n"
    "  --block NAME          ViT: blocks.N (default: the last); LeMeViT: stages.I.J (default: the last\n"
    "                        block of the last cross or dual-cross stage); Swin: layers.S.blocks.J\n"
    "                        (default: the last block of the last stage with more than one window)\n"
    "                        where the map is the attention each token receives, averaged over the\n"
    "                        image queries of its window, assembled over the image\n"
    "  --head N|mean         one head, or the mean over heads (default)\n"
    "  --token WHO           whose attention: ViT cls (the class token; the default when there is\n"
    "                        one) or patches (the mean over patch queries); LeMeViT meta:K (meta\n"
    "                        token K) or meta (the mean over meta tokens, default). A LeMeViT\n"
    "                        standard-attention block shows the mean over its image queries\n"
    "  --rollout             ViT: attention rollout over blocks 0 to the chosen one (heads averaged,\n"
    "                        identity added, rows normalised, multiplied)\n"
    "  --alpha A             heat-map opacity from 0 to 1 (default 0.5)\n"
    "  --scale N             scale the crop up N times (default: to at least 224 pixels a side)\n"
    "  --map OUT.npy         also write the map itself (rows x cols, float32)\n"
    "  --threads N           threads, at most (default 0: all); fewer while that is faster\n"
    "  --ignore-exif         keep the stored orientation\n";

static const char *usage =
    "usage: lmv COMMAND [ARGS]    (lmv COMMAND --help: that command's arguments and options)\n"
    "\n"
    "commands:\n"
    "  info MODEL.lmv                      what is in a weight file: family, config, labels\n"
    "  run MODEL.lmv IN.npy OUT.npy        the logits (or features) for a float32 NCHW .npy input\n"
    "  bench MODEL.lmv                     load time, latency, GFLOP/s, memory on random input\n"
    "  gemm M N K                          time the matrix multiply alone at one Linear's shape\n"
    "  decode IMAGE.jpg OUT.ppm            the decoded pixels of a JPEG or PNG as PPM/PGM\n"
    "  preprocess MODEL.lmv IMAGE.jpg OUT.npy   the model's input tensor for an image\n"
    "  eval MODEL.lmv DIR                  accuracy on a labelled folder (one sub-folder per class)\n"
    "  embed FILE OUT.c                    a C source with the file as an aligned const array\n"
    "  explain MODEL.lmv IMAGE.jpg OUT.png   a heat map of where the model looks, and its top 5\n"
    "\n"
    "Make MODEL.lmv from a PyTorch checkpoint with tools/convert.py.\n";

static int fail(const char *what, const lmv_error *e) {
    fprintf(stderr, "lmv: %s: %s\n", what, e->message[0] ? e->message : lmv_result_string(e->code));
    return 1;
}

/* A usage mistake: one line that says what is wrong and where the command's options are (exit 2). */
static int usage_error(const char *cmd, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "lmv %s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (see 'lmv %s --help')\n", cmd);
    return 2;
}

/* The value after the flag at argv[*i], or NULL after saying that it is missing. */
static const char *flag_value(const char *cmd, int argc, char **argv, int *i) {
    if (*i + 1 >= argc) {
        usage_error(cmd, "%s needs a value", argv[*i]);
        return NULL;
    }
    return argv[++*i];
}

/* A whole number from lo to hi, or 0 after saying what is wrong with it. */
static int parse_int(const char *cmd, const char *flag, const char *s, long lo, long hi, int *out) {
    char *end;
    long v;
    errno = 0;
    v = strtol(s, &end, 10);
    if (!*s || *end || errno == ERANGE || v < lo || v > hi) {
        usage_error(cmd, "%s takes a whole number from %ld to %ld, not '%s'", flag, lo, hi, s);
        return 0;
    }
    *out = (int)v;
    return 1;
}

/* A byte or pixel count: a whole number from 1 up, or 0 after saying what is wrong with it. */
static int parse_size(const char *cmd, const char *flag, const char *s, size_t *out) {
    char *end;
    unsigned long long v;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (!*s || *s == '-' || *end || errno == ERANGE || v == 0 || v > (unsigned long long)(size_t)-1) {
        usage_error(cmd, "%s takes a whole number from 1 up, not '%s'", flag, s);
        return 0;
    }
    *out = (size_t)v;
    return 1;
}

/* An option value that must be a whole number in range: the flag, its value, then the checks. */
/* A kernel path by name ("auto", "portable", "avx2", "avx512", "avx512-novnni", "neon") that this CPU runs; 0
   after saying what is wrong. `what` names where the name came from (an option, LEMEVIT_SIMD). */
static int parse_simd(const char *cmd, const char *what, const char *s, lmv_simd *out) {
    int k;
    for (k = LMV_SIMD_AUTO; k <= LMV_SIMD_AVX512_NOVNNI; k++)
        if (!strcmp(s, lmv_simd_name((lmv_simd)k))) {
            if (!lmv_simd_available((lmv_simd)k)) {
                fprintf(stderr, "lmv %s: %s asks for the %s kernels, which this CPU or build does not have; the best here is %s\n",
                        cmd, what, s, lmv_simd_name(lmv_simd_best()));
                return 0;
            }
            *out = (lmv_simd)k;
            return 1;
        }
    usage_error(cmd, "%s takes auto, portable, avx2, avx512, avx512-novnni or neon, not '%s'", what, s);
    return 0;
}

/* The kernel path from the environment: LEMEVIT_SIMD, or auto when it is unset or empty. */
static int env_simd(const char *cmd, lmv_simd *out) {
    const char *s = getenv("LEMEVIT_SIMD");
    *out = LMV_SIMD_AUTO;
    return !s || !*s || parse_simd(cmd, "LEMEVIT_SIMD", s, out);
}

#define SIMD_FLAG(cmd, dst)                                                   \
    do {                                                                      \
        const char *v_ = flag_value(cmd, argc, argv, &i);                     \
        if (!v_ || !parse_simd(cmd, "--simd", v_, dst)) goto usage_fail;      \
    } while (0)

#define INT_FLAG(cmd, flag, lo, hi, dst)                                      \
    do {                                                                      \
        const char *v_ = flag_value(cmd, argc, argv, &i);                     \
        if (!v_ || !parse_int(cmd, flag, v_, lo, hi, dst)) goto usage_fail;   \
    } while (0)

/* Refuses, with one sentence in err, a path that is neither a regular file nor a directory. The
   library's reader already says when a path is a directory (EISDIR) or cannot be sized (a device),
   and when it does not exist, but it has to open the path first, and opening a FIFO blocks until
   some other process writes into it (reading a terminal blocks too); plain C cannot ask first, so
   that one check is made here, before anything opens the path. */
static int check_file(const char *path, const char *kind, lmv_error *err) {
#ifdef HAVE_MMAP
    struct stat st;
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)) {
        lmv__fail(err, LMV_ERR_IO, "'%s' is not a regular file (a FIFO, device or socket): give the path of %s", path, kind);
        return 0;
    }
#else
    (void)path;
    (void)kind;
    (void)err;
#endif
    return 1;
}

/* Read a whole file into 64-byte aligned memory with the library's reader (free with free_file);
   NULL after printing why. */
static void *read_file(const char *path, const char *kind, size_t *size) {
    lmv_allocator a = lmv_open_options_default().allocator;
    lmv_error err;
    void *buf;
    if (!check_file(path, kind, &err)) {
        fail(path, &err);
        return NULL;
    }
    lmv__allocator_resolve(&a);
    if (lmv__read_file(path, kind, &a, &buf, size, &err) != LMV_OK) {
        fail(path, &err);
        return NULL;
    }
    return buf;
}

static void free_file(void *buf) {
    lmv_allocator a = lmv_open_options_default().allocator;
    lmv__allocator_resolve(&a);
    lmv__free(&a, buf);
}

/* How many bytes at s make one UTF-8 character (1 to 4), or, negated, how many make one
   ill-formed piece: a byte that cannot start a character, or a sequence's start that breaks off
   (its "maximal subpart", Unicode's rule, which Python's bytes.decode("utf-8", "replace") and
   web browsers follow). Overlong forms, surrogates and code points above U+10FFFF are ill-formed.
   Never reads past the terminating 0, which is not a continuation byte. */
static int utf8_length(const unsigned char *s) {
    unsigned lo = 0x80, hi = 0xBF;
    int n, k;
    if (s[0] < 0x80) return 1;
    if (s[0] >= 0xC2 && s[0] <= 0xDF) n = 2;
    else if (s[0] >= 0xE0 && s[0] <= 0xEF) {
        n = 3;
        if (s[0] == 0xE0) lo = 0xA0; /* not overlong */
        if (s[0] == 0xED) hi = 0x9F; /* not a surrogate */
    } else if (s[0] >= 0xF0 && s[0] <= 0xF4) {
        n = 4;
        if (s[0] == 0xF0) lo = 0x90; /* not overlong */
        if (s[0] == 0xF4) hi = 0x8F; /* not above U+10FFFF */
    } else
        return -1;
    if (s[1] < lo || s[1] > hi) return -1;
    for (k = 2; k < n; k++)
        if ((s[k] & 0xC0) != 0x80) return -k;
    return n;
}

/* `s` as a JSON string: quotes, backslashes and control characters escaped, each ill-formed piece
   of UTF-8 replaced by one U+FFFD, so any folder or model name gives valid JSON for every parser.
   examples/classify.c keeps a copy of its own (an example stands alone with lemevit.h); the tests
   hold both to Python's decoder on the same kinds of bad bytes. */
static void json_string(FILE *f, const char *s) {
    const unsigned char *p = (const unsigned char *)(s ? s : "");
    fputc('"', f);
    while (*p) {
        int len = utf8_length(p);
        if (len < 0) {
            fputs("\\ufffd", f);
            p += -len;
            continue;
        }
        if (len > 1) fwrite(p, 1, (size_t)len, f);
        else if (*p == '"' || *p == '\\') fprintf(f, "\\%c", *p);
        else if (*p < 0x20 || *p == 0x7F) fprintf(f, "\\u%04x", *p);
        else fputc(*p, f);
        p += len;
    }
    fputc('"', f);
}

static int write_npy(const char *path, const float *data, int ndim, const int *shape) {
    char header[256];
    size_t hl = lmv_npy_header(header, ndim, shape), count = 1;
    int i, ok;
    FILE *f = fopen(path, "wb");
    for (i = 0; i < ndim; i++) count *= (size_t)shape[i];
    if (!f) return 0;
    ok = fwrite(header, 1, hl, f) == hl && fwrite(data, sizeof(float), count, f) == count;
    return fclose(f) == 0 && ok;
}

/* The file mapping behind a model opened by open_model(), if any. */
typedef struct mapping {
    void *p;
    size_t n;
} mapping;

/* Open a model: memory-mapped (no copy; the library uses the mapping in place) where possible,
   else read into memory by the library. close_model() closes it and drops the mapping. */
static lmv_result open_model(const char *path, int verify, lmv_model **m, mapping *map, lmv_error *err) {
    lmv_open_options o = lmv_open_options_default();
    o.skip_verify = !verify;
    map->p = NULL;
    map->n = 0;
    *m = NULL;
    if (!check_file(path, "a .lmv file", err)) return err->code;
#ifdef HAVE_MMAP
    {
        int fd = open(path, O_RDONLY);
        struct stat st;
        /* anything else (a directory, an empty file) goes to the library's reader, which names it */
        if (fd >= 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0) {
            void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
            close(fd);
            if (p != MAP_FAILED) {
                lmv_result r = lmv_model_open_memory(p, (size_t)st.st_size, &o, m, err);
                if (r != LMV_OK) munmap(p, (size_t)st.st_size);
                else map->p = p, map->n = (size_t)st.st_size;
                return r;
            }
        } else if (fd >= 0) {
            close(fd);
        }
    }
#endif
    return lmv_model_open_file(path, &o, m, err);
}

static void close_model(lmv_model *m, mapping *map) {
    lmv_model_close(m);
#ifdef HAVE_MMAP
    if (map->p) munmap(map->p, map->n);
#endif
    map->p = NULL;
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static long peak_rss_kb(void) {
#ifdef HAVE_MMAP
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0) return ru.ru_maxrss;
#endif
    return -1;
}

/* A seeded generator for the timing inputs: the same numbers on every run and machine. */
static unsigned next_random(unsigned *seed) { return *seed = *seed * 1664525u + 1013904223u; }
static float next_uniform(unsigned *seed) { return (float)((next_random(seed) >> 8) & 0xFFFF) / 32768.0f - 1.0f; }

static int cmd_bench(int argc, char **argv) {
    const char *path = NULL;
    int h = 0, w = 0, batch = 1, threads = 0, exact = 0, runs = 10, json = 0, int8_compute = 0, i, rc = 1;
    double t0, open_mapped, open_verified, *times = NULL;
    size_t px, mem;
    lmv_model *m = NULL;
    mapping map = {NULL, 0};
    lmv_session *s = NULL;
    lmv_session_options so;
    lmv_error err;
    const lmv_model_info *in;
    float *x = NULL, *y = NULL;
    unsigned seed = 12345;
    lmv_simd simd;
    if (!env_simd("bench", &simd)) return 2;
    for (i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--size")) {
            if (i + 2 >= argc) return usage_error("bench", "--size needs two values, H and W");
            if (!parse_int("bench", "--size", argv[++i], 1, 1 << 15, &h) || !parse_int("bench", "--size", argv[++i], 1, 1 << 15, &w))
                return 2;
        } else if (!strcmp(argv[i], "--batch")) INT_FLAG("bench", "--batch", 1, 1 << 16, &batch);
        else if (!strcmp(argv[i], "--threads")) INT_FLAG("bench", "--threads", 0, 256, &threads);
        else if (!strcmp(argv[i], "--exact-threads")) exact = 1;
        else if (!strcmp(argv[i], "--int8-compute")) int8_compute = 1;
        else if (!strcmp(argv[i], "--simd")) SIMD_FLAG("bench", &simd);
        else if (!strcmp(argv[i], "--runs")) INT_FLAG("bench", "--runs", 1, 100000, &runs);
        else if (!strcmp(argv[i], "--json")) json = 1;
        else if (argv[i][0] == '-') return usage_error("bench", "unknown option '%s'", argv[i]);
        else if (path) return usage_error("bench", "unexpected argument '%s': give one MODEL.lmv", argv[i]);
        else path = argv[i];
    }
    if (!path) return usage_error("bench", "give a MODEL.lmv");
    t0 = now_ms();
    if (open_model(path, 1, &m, &map, &err) != LMV_OK) return fail(path, &err);
    open_verified = now_ms() - t0;
    close_model(m, &map);
    t0 = now_ms();
    if (open_model(path, 0, &m, &map, &err) != LMV_OK) return fail(path, &err);
    open_mapped = now_ms() - t0;
    in = lmv_model_info_get(m);
    if (!h) { h = in->img_h; w = in->img_w; }
    so = lmv_session_options_default();
    so.max_h = h;
    so.max_w = w;
    so.max_batch = batch;
    so.threads = threads;
    so.exact_threads = exact;
    so.int8_compute = int8_compute;
    so.simd = simd;
    if (lmv_session_memory(m, &so, &mem, &err) != LMV_OK || lmv_session_create(m, &so, &s, &err) != LMV_OK) {
        fail("session", &err);
        goto done;
    }
    px = (size_t)batch * in->in_chans * h * w;
    x = (float *)malloc(px * sizeof(float));
    y = (float *)malloc((size_t)batch * (size_t)(in->num_features > in->num_classes ? in->num_features : in->num_classes) * sizeof(float));
    times = (double *)malloc(sizeof(double) * (size_t)runs);
    if (!x || !y || !times) {
        fprintf(stderr, "lmv bench: out of memory for the input and output of batch %d at %dx%d\n", batch, h, w);
        goto done;
    }
    for (i = 0; i < (int)px; i++) x[i] = next_uniform(&seed);
    for (i = -1; i < runs; i++) {
        t0 = now_ms();
        if (lmv_run_features(s, x, batch, h, w, y, &err) != LMV_OK) {
            fail("run", &err);
            goto done;
        }
        if (i >= 0) times[i] = now_ms() - t0;
    }
    if (json) { /* every run's time in run order, before the sort: a slow period shows as a cluster */
        printf("{\"times_ms\": [");
        for (i = 0; i < runs; i++) printf("%s%.3f", i ? ", " : "", times[i]);
        printf("], ");
    }
    qsort(times, (size_t)runs, sizeof(double), cmp_double);
    {
        double med = runs % 2 ? times[runs / 2] : 0.5 * (times[runs / 2 - 1] + times[runs / 2]);
        double gmac = lmv_session_macs(s) / 1e9;
        if (json) {
            printf("\"model\": ");
            json_string(stdout, in->name);
            printf(", \"arch\": ");
            json_string(stdout, in->arch);
            printf(", \"params\": %zu, \"weight_bytes\": %zu, \"h\": %d, \"w\": %d, "
                   "\"batch\": %d, \"threads\": %d, \"exact_threads\": %s, \"runs\": %d, \"open_mapped_ms\": %.3f, \"open_verified_ms\": %.3f, "
                   "\"session_bytes\": %zu, \"median_ms\": %.3f, \"best_ms\": %.3f, \"gmac\": %.4f, \"peak_rss_kb\": %ld, "
                   "\"simd\": \"%s\"}\n",
                   in->num_params, in->weight_bytes, h, w, batch, threads, exact ? "true" : "false", runs, open_mapped, open_verified,
                   mem, med, times[0], gmac, peak_rss_kb(), lmv_simd_name(lmv_session_simd(s)));
        } else {
            printf("model     %s (%s), %.1f M parameters, %.1f MB of weights\n", in->name, in->arch, in->num_params / 1e6,
                   in->weight_bytes / 1e6);
            printf("open      %.1f ms (header checked), %.1f ms (weights checksummed too)\n", open_mapped, open_verified);
            printf("session   %.1f MB of activations for %dx%d, batch %d\n", mem / 1e6, h, w, batch);
            printf("kernels   %s\n", lmv_simd_name(lmv_session_simd(s)));
            printf("latency   median %.2f ms, best %.2f ms over %d runs\n", med, times[0], runs);
            printf("work      %.3f GMAC per run, %.1f GFLOP/s at the median\n", gmac, 2.0 * gmac / (med / 1e3));
            if (peak_rss_kb() >= 0) printf("peak RSS  %.1f MB\n", peak_rss_kb() / 1e3);
        }
    }
    rc = 0;
done:
    free(x);
    free(y);
    free(times);
    lmv_session_destroy(s);
    close_model(m, &map);
    return rc;
usage_fail:
    return 2;
}

/* The GEMM alone, at one shape: best and median of the timed runs. */
static int cmd_gemm(int argc, char **argv) {
    int dims[3] = {0, 0, 0}, nd = 0, threads = 0, runs = 0, json = 0, dtype = LMV_DTYPE_F32, int8_compute = 0, i;
    float *A, *W, *C, *bias, *scale;
    void *wq;
    double t0, one, *times, flops;
    size_t nk, j;
    unsigned seed = 99;
    lmv__ctx ctx;
    lmv__mat mat;
    lmv_simd simd;
    if (!env_simd("gemm", &simd)) return 2;
    for (i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--threads")) INT_FLAG("gemm", "--threads", 0, 256, &threads);
        else if (!strcmp(argv[i], "--simd")) SIMD_FLAG("gemm", &simd);
        else if (!strcmp(argv[i], "--runs")) INT_FLAG("gemm", "--runs", 1, 100000, &runs);
        else if (!strcmp(argv[i], "--json")) json = 1;
        else if (!strcmp(argv[i], "--int8-compute")) int8_compute = 1;
        else if (!strcmp(argv[i], "--dtype")) {
            const char *d = flag_value("gemm", argc, argv, &i);
            if (!d) return 2;
            dtype = !strcmp(d, "f32") ? LMV_DTYPE_F32 : !strcmp(d, "f16") ? LMV_DTYPE_F16 : !strcmp(d, "int8") ? LMV_DTYPE_INT8
                    : !strcmp(d, "f32p") ? LMV_DTYPE_F32P : -1;
            if (dtype < 0) return usage_error("gemm", "--dtype must be f32, f32p, f16 or int8, not '%s'", d);
        } else if (argv[i][0] == '-' && !(argv[i][1] >= '0' && argv[i][1] <= '9'))
            return usage_error("gemm", "unknown option '%s'", argv[i]);
        else if (nd == 3) return usage_error("gemm", "unexpected argument '%s': give three sizes, M N K", argv[i]);
        else if (!parse_int("gemm", nd == 0 ? "M" : nd == 1 ? "N" : "K", argv[i], 1, 1 << 16, &dims[nd])) return 2;
        else nd++;
    }
    if (nd != 3) return usage_error("gemm", "give three sizes, M N K (each from 1 to 65536)");
    nk = (size_t)dims[1] * dims[2];
    A = (float *)malloc(sizeof(float) * (size_t)dims[0] * dims[2]);
    W = (float *)malloc(sizeof(float) * nk);
    C = (float *)malloc(sizeof(float) * (size_t)dims[0] * dims[1]);
    bias = (float *)malloc(sizeof(float) * (size_t)dims[1]);
    scale = (float *)malloc(sizeof(float) * (size_t)dims[1]);
    wq = malloc(4 * ((size_t)dims[1] + 15) / 16 * 16 * dims[2]); /* f32p: whole panels of 16 rows */
    times = (double *)malloc(sizeof(double) * 100000);
    if (!A || !W || !C || !bias || !scale || !wq || !times) {
        fprintf(stderr, "lmv gemm: out of memory for a %dx%dx%d multiply: try smaller sizes\n", dims[0], dims[1], dims[2]);
        free(A); free(W); free(C); free(bias); free(scale); free(wq); free(times);
        return 1;
    }
    for (j = 0; j < (size_t)dims[0] * dims[2]; j++) A[j] = next_uniform(&seed);
    for (j = 0; j < nk; j++) {
        unsigned r = next_random(&seed);
        W[j] = next_uniform(&seed);
        if (dtype == LMV_DTYPE_INT8) ((signed char *)wq)[j] = (signed char)((int)(r % 255u) - 127);
        else ((uint16_t *)wq)[j] = (uint16_t)(0x3000u | ((r >> 3) & 0x8fffu)); /* halves of modest size */
    }
    for (j = 0; j < (size_t)dims[1]; j++) bias[j] = 0.01f * (float)(j % 17), scale[j] = 0.01f;
    if (dtype == LMV_DTYPE_F32P) /* W in panels: row n, column k at ((n / 16) * K + k) * 16 + n % 16 */
        for (j = 0; j < ((size_t)dims[1] + 15) / 16 * 16 * dims[2]; j++) {
            size_t n = j / ((size_t)dims[2] * 16) * 16 + j % 16, k = j / 16 % (size_t)dims[2];
            ((float *)wq)[j] = n < (size_t)dims[1] ? W[n * dims[2] + k] : 0.0f;
        }
    mat.dtype = dtype;
    mat.data = dtype == LMV_DTYPE_F32 ? (const void *)W : wq;
    mat.scale = scale;
    memset(&ctx, 0, sizeof ctx);
    ctx.threads = lmv__default_threads(threads);
    ctx.int8_compute = int8_compute;
    ctx.simd = simd ? (int)simd : (int)lmv_simd_best();
    flops = 2.0 * dims[0] * dims[1] * dims[2];
    t0 = now_ms();
    lmv__gemm(&ctx, dims[0], dims[1], dims[2], A, (size_t)dims[2], mat, (size_t)dims[2], 1, bias, C, (size_t)dims[1]);
    one = now_ms() - t0;
    if (runs < 1) runs = one > 0 ? (int)(300.0 / one) : 1000;
    if (runs < 3) runs = 3;
    if (runs > 100000) runs = 100000;
    for (i = 0; i < runs; i++) {
        t0 = now_ms();
        lmv__gemm(&ctx, dims[0], dims[1], dims[2], A, (size_t)dims[2], mat, (size_t)dims[2], 1, bias, C, (size_t)dims[1]);
        times[i] = now_ms() - t0;
    }
    qsort(times, (size_t)runs, sizeof(double), cmp_double);
    if (json)
        printf("{\"m\": %d, \"n\": %d, \"k\": %d, \"dtype\": \"%s\", \"threads\": %d, \"runs\": %d, \"best_ms\": %.5f, "
               "\"median_ms\": %.5f, \"gflops_best\": %.3f, \"gflops_median\": %.3f}\n",
               dims[0], dims[1], dims[2], lmv_dtype_name((lmv_dtype)dtype), ctx.threads, runs, times[0],
               times[runs / 2], flops / times[0] / 1e6, flops / times[runs / 2] / 1e6);
    else
        printf("gemm %dx%dx%d (%s weights), %d thread(s), %d runs: best %.3f ms (%.1f GFLOP/s), median %.3f ms (%.1f GFLOP/s)\n",
               dims[0], dims[1], dims[2], lmv_dtype_name((lmv_dtype)dtype), ctx.threads, runs, times[0],
               flops / times[0] / 1e6, times[runs / 2], flops / times[runs / 2] / 1e6);
    free(A); free(W); free(C); free(bias); free(scale); free(wq); free(times);
    return 0;
usage_fail:
    return 2;
}

/* One config value as text, for `info`. */
static void print_config_value(const lmv_config_entry *e) {
    int j;
    if (e->type == LMV_CONFIG_STRING) printf("%s", e->string);
    for (j = 0; j < e->count && (e->type == LMV_CONFIG_INTS || e->type == LMV_CONFIG_FLOATS); j++)
        e->type == LMV_CONFIG_INTS ? printf("%s%d", j ? "," : "", e->ints[j]) : printf("%s%g", j ? "," : "", e->floats[j]);
}

/* The meta key convert.assumed: the keys whose values the converter assumed because neither the
   checkpoint's tensors nor its metadata state them.  It is a string list; in the file each string
   follows its 4-byte little-endian length (NUL included), which is how the next one is found. */
static void print_assumed(const lmv_model *m) {
    lmv_config_entry e, v;
    const char *s;
    int i, j, k, found = 0;
    for (i = 0; !found && lmv_model_config(m, i, &e); i++)
        found = e.type == LMV_CONFIG_STRINGS && !strcmp(e.key, "convert.assumed");
    if (!found || e.count <= 0 || !e.string) return;
    printf("assumed      ");
    for (j = 0, s = e.string; j < e.count; j++) {
        const unsigned char *len = (const unsigned char *)s - 4;
        printf("%s%s=", j ? ", " : "", s);
        for (k = 0; lmv_model_config(m, k, &v); k++)
            if (!strcmp(v.key, s)) {
                print_config_value(&v);
                break;
            }
        s += (size_t)len[0] + ((size_t)len[1] << 8) + ((size_t)len[2] << 16) + ((size_t)len[3] << 24) + 4;
    }
    printf("\n             (not stated by the checkpoint: convert.py assumed them; its summary names the flag for each)\n");
}

/* Config entry `key` of the model, or NULL when the file has none (then out is not set). */
static const lmv_config_entry *find_config(const lmv_model *m, const char *key, lmv_config_entry *out) {
    int i;
    for (i = 0; lmv_model_config(m, i, out); i++)
        if (!strcmp(out->key, key)) return out;
    return NULL;
}

/* A ViT's pooling for `info`; for the attention-pool (map) head also its heads, as the library runs
   it (vit.map_heads, else the blocks' vit.num_heads), and its MLP's width (attn_pool.mlp.fc1's rows). */
static void print_vit_pooling(const lmv_model *m) {
    lmv_config_entry e;
    lmv_tensor_info t;
    const char *fc1 = "attn_pool.mlp.fc1.weight";
    int i, heads = 0, hidden = 0, stated = 0;
    if (!find_config(m, "vit.pool", &e) || e.type != LMV_CONFIG_STRING) return;
    if (strcmp(e.string, "map")) {
        printf("pooling      %s\n", e.string);
        return;
    }
    if (find_config(m, "vit.map_heads", &e) && e.type == LMV_CONFIG_INTS && e.count >= 1) heads = e.ints[0], stated = 1;
    else if (find_config(m, "vit.num_heads", &e) && e.type == LMV_CONFIG_INTS && e.count >= 1) heads = e.ints[0];
    for (i = 0; lmv_model_tensor(m, i, &t); i++)
        if ((size_t)t.name_len == strlen(fc1) && !memcmp(t.name, fc1, strlen(fc1)) && t.ndim >= 1) hidden = t.shape[0];
    printf("pooling      map (attention-pool head): heads %d (vit.map_heads%s), MLP width %d\n", heads,
           stated ? "" : " not in the file: the blocks' vit.num_heads", hidden);
}

static int cmd_info(int argc, char **argv) {
    lmv_model *m;
    mapping map;
    lmv_error err;
    const lmv_model_info *in;
    lmv_config_entry e;
    const char *interp[] = {"nearest", "bilinear", "bicubic"};
    const char *path = NULL;
    int i, j;
    for (i = 0; i < argc; i++) {
        if (argv[i][0] == '-') return usage_error("info", "unknown option '%s'", argv[i]);
        if (path) return usage_error("info", "unexpected argument '%s': give one MODEL.lmv", argv[i]);
        path = argv[i];
    }
    if (!path) return usage_error("info", "give a MODEL.lmv");
    if (open_model(path, 1, &m, &map, &err) != LMV_OK) return fail(path, &err);
    in = lmv_model_info_get(m);
    printf("model        %s\n", in->name);
    printf("family       %s (from %s)\n", in->arch, in->source);
    printf("input        %d x %d x %d\n", in->in_chans, in->img_h, in->img_w);
    printf("classes      %d%s\n", in->num_classes, in->has_labels ? " (labelled)" : "");
    printf("features     %d (%s)\n", in->num_features,
           in->projected ? "projected embedding: pooled features times proj" : "pooled features");
    if (in->family == LMV_FAMILY_VIT) print_vit_pooling(m);
    printf("parameters   %zu (%.1f MB of weights)\n", in->num_params, in->weight_bytes / 1e6);
    printf("kernels      %s (the best this CPU runs with this build; LEMEVIT_SIMD or --simd choose another)\n",
           lmv_simd_name(lmv_simd_best()));
    {
        size_t count[4] = {0, 0, 0, 0}, bytes[4] = {0, 0, 0, 0};
        lmv_tensor_info t;
        for (i = 0; lmv_model_tensor(m, i, &t); i++)
            if ((unsigned)t.dtype < 4) count[t.dtype]++, bytes[t.dtype] += t.nbytes;
        printf("storage     ");
        for (j = 0; j < 4; j++)
            if (count[j]) printf(" %s: %zu tensors, %.2f MB;", lmv_dtype_name((lmv_dtype)j), count[j], bytes[j] / 1e6);
        printf("\n");
    }
    printf("preprocess   resize %d %s, crop %dx%d (crop_pct %.3f), mean %.4f %.4f %.4f, std %.4f %.4f %.4f\n",
           in->preprocess.resize, interp[in->preprocess.interpolation], in->preprocess.crop_h, in->preprocess.crop_w,
           in->preprocess.crop_pct, in->preprocess.mean[0], in->preprocess.mean[1], in->preprocess.mean[2],
           in->preprocess.std[0], in->preprocess.std[1], in->preprocess.std[2]);
    printf("config\n");
    for (i = 0; lmv_model_config(m, i, &e); i++) {
        if (e.type == LMV_CONFIG_STRINGS) continue;
        printf("  %-20s ", e.key);
        if (e.type == LMV_CONFIG_STRING) printf("%s", e.string);
        for (j = 0; j < e.count && (e.type == LMV_CONFIG_INTS || e.type == LMV_CONFIG_FLOATS); j++)
            e.type == LMV_CONFIG_INTS ? printf("%s%d", j ? " " : "", e.ints[j]) : printf("%s%g", j ? " " : "", e.floats[j]);
        printf("\n");
    }
    print_assumed(m);
    if (in->has_labels) {
        printf("labels       ");
        for (i = 0; i < in->num_classes && i < 5; i++) printf("%s%s", i ? ", " : "", lmv_model_label(m, i));
        printf(in->num_classes > 5 ? ", ... (%d)\n" : "\n", in->num_classes);
    }
    close_model(m, &map);
    return 0;
}

typedef struct trace_dir {
    const char *dir;
    int failed;
} trace_dir;

static void trace_write(void *user, const char *name, const float *data, int ndim, const int *shape) {
    trace_dir *t = (trace_dir *)user;
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.npy", t->dir, name);
    if (!write_npy(path, data, ndim, shape)) t->failed = 1;
}

static int cmd_run(int argc, char **argv) {
    const char *paths[3];
    int npaths = 0, features = 0, threads = 0, verify = 1, int8_compute = 0, i, n, h, w, outdim, shape[2], rc = 1;
    const char *trace = NULL, *attention = NULL;
    void *buf = NULL;
    size_t size;
    lmv_npy npy;
    lmv_model *m = NULL;
    mapping map = {NULL, 0};
    lmv_session *s = NULL;
    lmv_session_options so;
    lmv_error err;
    float *out = NULL;
    trace_dir td;
    for (i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--features")) features = 1;
        else if (!strcmp(argv[i], "--no-verify")) verify = 0;
        else if (!strcmp(argv[i], "--threads")) INT_FLAG("run", "--threads", 0, 256, &threads);
        else if (!strcmp(argv[i], "--int8-compute")) int8_compute = 1;
        else if (!strcmp(argv[i], "--trace")) {
            if (!(trace = flag_value("run", argc, argv, &i))) return 2;
        } else if (!strcmp(argv[i], "--attention")) {
            if (!(attention = flag_value("run", argc, argv, &i))) return 2;
        } else if (argv[i][0] == '-') return usage_error("run", "unknown option '%s'", argv[i]);
        else if (npaths == 3) return usage_error("run", "unexpected argument '%s': give MODEL.lmv IN.npy OUT.npy", argv[i]);
        else paths[npaths++] = argv[i];
    }
    if (npaths != 3) return usage_error("run", "give MODEL.lmv IN.npy OUT.npy");
    if (attention && !trace) return usage_error("run", "--attention needs --trace DIR");
    if (open_model(paths[0], verify, &m, &map, &err) != LMV_OK) return fail(paths[0], &err);
    if (!(buf = read_file(paths[1], "a .npy file", &size))) goto done;
    if (lmv_npy_parse(buf, size, &npy, &err) != LMV_OK) {
        fail(paths[1], &err);
        goto done;
    }
    if (npy.ndim != 4 || npy.shape[1] != lmv_model_info_get(m)->in_chans) {
        fprintf(stderr, "lmv: %s: expected a float32 array of shape (N, %d, H, W)\n", paths[1], lmv_model_info_get(m)->in_chans);
        goto done;
    }
    n = npy.shape[0];
    h = npy.shape[2];
    w = npy.shape[3];
    so = lmv_session_options_default();
    so.max_h = h;
    so.max_w = w;
    so.max_batch = n;
    so.threads = threads;
    so.int8_compute = int8_compute;
    if (!env_simd("run", &so.simd)) goto done;
    if (lmv_session_create(m, &so, &s, &err) != LMV_OK) {
        fail("session", &err);
        goto done;
    }
    if (trace) {
        td.dir = trace;
        td.failed = 0;
        mkdir(trace, 0777);
        lmv_session_set_trace(s, trace_write, &td);
        lmv_session_trace_attention(s, attention);
    }
    outdim = features ? lmv_model_info_get(m)->num_features : lmv_model_info_get(m)->num_classes;
    out = (float *)malloc(sizeof(float) * (size_t)n * (size_t)(outdim ? outdim : 1));
    if (!out) {
        fprintf(stderr, "lmv: out of memory for the output of %d images\n", n);
        goto done;
    }
    if ((features ? lmv_run_features(s, npy.data, n, h, w, out, &err) : lmv_run(s, npy.data, n, h, w, out, &err)) != LMV_OK) {
        fail("run", &err);
        goto done;
    }
    shape[0] = n;
    shape[1] = outdim;
    if (!write_npy(paths[2], out, 2, shape)) {
        fprintf(stderr, "lmv: cannot write %s\n", paths[2]);
        goto done;
    }
    if (trace && td.failed) {
        fprintf(stderr, "lmv: cannot write trace files into %s\n", trace);
        goto done;
    }
    rc = 0;
done:
    free(out);
    free_file(buf);
    lmv_session_destroy(s);
    close_model(m, &map);
    return rc;
usage_fail:
    return 2;
}

static int cmd_decode(int argc, char **argv) {
    lmv_image_options io = lmv_image_options_default();
    lmv_image img;
    lmv_error err;
    const char *paths[2];
    int n = 0, i, ok;
    FILE *f;
    size_t bytes;
    for (i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--ignore-exif")) io.ignore_orientation = 1;
        else if (!strcmp(argv[i], "--max-pixels") || !strcmp(argv[i], "--max-memory")) {
            const char *flag = argv[i], *v = flag_value("decode", argc, argv, &i);
            if (!v || !parse_size("decode", flag, v, !strcmp(flag, "--max-pixels") ? &io.max_pixels : &io.max_memory))
                return 2;
        } else if (!strcmp(argv[i], "--max-scans")) {
            const char *v = flag_value("decode", argc, argv, &i);
            if (!v || !parse_int("decode", "--max-scans", v, 1, 1 << 20, &io.max_scans)) return 2;
        }
        else if (argv[i][0] == '-') return usage_error("decode", "unknown option '%s'", argv[i]);
        else if (n == 2) return usage_error("decode", "unexpected argument '%s': give IMAGE.jpg OUT.ppm", argv[i]);
        else paths[n++] = argv[i];
    }
    if (n != 2) return usage_error("decode", "give IMAGE.jpg OUT.ppm");
    if (!check_file(paths[0], "an image file", &err) || lmv_image_load_file(paths[0], &io, &img, &err) != LMV_OK)
        return fail(paths[0], &err);
    bytes = (size_t)img.width * img.height * img.channels;
    f = fopen(paths[1], "wb");
    ok = f && fprintf(f, "P%d\n%d %d\n255\n", img.channels == 1 ? 5 : 6, img.width, img.height) > 0 &&
         fwrite(img.pixels, 1, bytes, f) == bytes;
    if (f && fclose(f) != 0) ok = 0;
    lmv_image_free(&img);
    if (!ok) {
        fprintf(stderr, "lmv: cannot write %s\n", paths[1]);
        return 1;
    }
    return 0;
}

static int cmd_preprocess(int argc, char **argv) {
    lmv_image_options io = lmv_image_options_default();
    lmv_image img;
    lmv_model *m = NULL;
    mapping map = {NULL, 0};
    lmv_error err;
    const lmv_model_info *in;
    const char *paths[3];
    int n = 0, i, shape[4], rc = 1, have_img = 0;
    float *x = NULL;
    for (i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--ignore-exif")) io.ignore_orientation = 1;
        else if (argv[i][0] == '-') return usage_error("preprocess", "unknown option '%s'", argv[i]);
        else if (n == 3)
            return usage_error("preprocess", "unexpected argument '%s': give MODEL.lmv IMAGE.jpg OUT.npy", argv[i]);
        else paths[n++] = argv[i];
    }
    if (n != 3) return usage_error("preprocess", "give MODEL.lmv IMAGE.jpg OUT.npy");
    if (open_model(paths[0], 0, &m, &map, &err) != LMV_OK) return fail(paths[0], &err);
    in = lmv_model_info_get(m);
    if (!check_file(paths[1], "an image file", &err) || lmv_image_load_file(paths[1], &io, &img, &err) != LMV_OK) {
        fail(paths[1], &err);
        goto done;
    }
    have_img = 1;
    shape[0] = 1;
    shape[1] = in->in_chans;
    shape[2] = in->preprocess.crop_h;
    shape[3] = in->preprocess.crop_w;
    x = (float *)malloc(sizeof(float) * (size_t)shape[1] * shape[2] * shape[3]);
    if (!x) {
        fprintf(stderr, "lmv: out of memory for a %dx%dx%d input\n", shape[1], shape[2], shape[3]);
        goto done;
    }
    if (lmv_preprocess_image(&img, &in->preprocess, in->in_chans, x, NULL, &err) != LMV_OK) {
        fail(paths[1], &err);
        goto done;
    }
    if (!write_npy(paths[2], x, 4, shape)) {
        fprintf(stderr, "lmv: cannot write %s\n", paths[2]);
        goto done;
    }
    rc = 0;
done:
    free(x);
    if (have_img) lmv_image_free(&img);
    close_model(m, &map);
    return rc;
}

/* ---- eval: an ImageFolder-style directory ---- */

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int is_jpeg_name(const char *name) {
    const char *dot = strrchr(name, '.');
    char ext[8];
    int i;
    if (!dot || strlen(dot) > 5) return 0;
    for (i = 0; dot[i]; i++) ext[i] = (char)(dot[i] >= 'A' && dot[i] <= 'Z' ? dot[i] + 32 : dot[i]);
    ext[i] = 0;
    return !strcmp(ext, ".jpg") || !strcmp(ext, ".jpeg") || !strcmp(ext, ".jpe") || !strcmp(ext, ".jfif") ||
           !strcmp(ext, ".png");
}

/* Whether two names are equal, ASCII case ignored. */
static int same_name(const char *a, const char *b) {
    if (!a || !b) return 0;
    for (; *a && *b; a++, b++) {
        int x = *a >= 'A' && *a <= 'Z' ? *a + 32 : *a, y = *b >= 'A' && *b <= 'Z' ? *b + 32 : *b;
        if (x != y) return 0;
    }
    return *a == *b;
}

/* A growing list of strings, each its own allocation. */
typedef struct strlist {
    char **v;
    int n, cap;
} strlist;

/* Add `name`, or `dir/name` when dir is given; 0 when out of memory. */
static int strlist_add(strlist *l, const char *dir, const char *name) {
    size_t a = dir ? strlen(dir) + 1 : 0, b = strlen(name);
    char *p;
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 64;
        char **v = (char **)realloc(l->v, sizeof(char *) * (size_t)cap);
        if (!v) return 0;
        l->v = v;
        l->cap = cap;
    }
    if (!(p = (char *)malloc(a + b + 1))) return 0;
    if (dir) {
        memcpy(p, dir, a - 1);
        p[a - 1] = '/';
    }
    memcpy(p + a, name, b + 1);
    l->v[l->n++] = p;
    return 1;
}

static void strlist_free(strlist *l) {
    int i;
    for (i = 0; i < l->n; i++) free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = l->cap = 0;
}

/* The entries of `dir`: sub-folders (want_dirs) or JPEG and PNG files go to `keep` by name, sorted; every
   other entry (hidden ones, other files, links to nothing, FIFOs) to `skipped` as dir/name.
   1 when done, 0 when dir cannot be listed (errno says why), -1 when out of memory. */
static int list_dir(const char *dir, int want_dirs, strlist *keep, strlist *skipped) {
#ifdef HAVE_MMAP
    DIR *d = opendir(dir);
    struct dirent *e;
    struct stat st;
    char path[4096];
    int ok = 1;
    if (!d) return 0;
    while (ok && (e = readdir(d)) != NULL) {
        int take;
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= sizeof path || stat(path, &st) != 0) take = 0;
        else if (want_dirs) take = S_ISDIR(st.st_mode) && e->d_name[0] != '.';
        else take = S_ISREG(st.st_mode) && e->d_name[0] != '.' && is_jpeg_name(e->d_name);
        ok = take ? strlist_add(keep, NULL, e->d_name) : strlist_add(skipped, dir, e->d_name);
    }
    closedir(d);
    if (!ok) return -1;
    if (keep->n) qsort(keep->v, (size_t)keep->n, sizeof(char *), cmp_str);
    return 1;
#else
    (void)dir; (void)want_dirs; (void)keep; (void)skipped; (void)is_jpeg_name; (void)strlist_add;
    return 0; /* no directory listing in plain C */
#endif
}

static void progress(int done, int total, double t0) {
    int width = 40, filled = total ? (int)((double)done / total * width) : width, i;
    double el = (now_ms() - t0) / 1e3, eta = done ? el / done * (total - done) : 0;
    fprintf(stderr, "\r[");
    for (i = 0; i < width; i++) fputc(i < filled ? '#' : '.', stderr);
    fprintf(stderr, "] %d/%d  %.0f img/s  ETA %.0fs ", done, total, el > 0 ? done / el : 0.0, eta);
}

/* Up to `max` of the names, comma-separated, then how many more. */
static void print_names(FILE *f, char *const *v, int n, int max) {
    int i;
    for (i = 0; i < n && i < max; i++) fprintf(f, "%s%s", i ? ", " : "", v[i]);
    if (n > max) fprintf(f, " and %d more", n - max);
}

#define SKIPPED_SHOWN 10

static int cmd_eval(int argc, char **argv) {
    const char *paths[2], *pred_path = NULL;
    int n = 0, i, c, k, r, json = 0, threads = 0, int8_compute = 0, nclass = 0, nmodel, total = 0, done = 0, correct = 0;
    int failed = 0, outside = 0, by_label = 0, rc = 1;
    char path[4096];
    strlist classes = {NULL, 0, 0}, skipped = {NULL, 0, 0}, *files = NULL;
    int *cls = NULL, *col = NULL, *confusion = NULL, *seen = NULL, *out_of = NULL;
    lmv_model *m = NULL;
    mapping map = {NULL, 0};
    lmv_session *s = NULL;
    lmv_session_options so = lmv_session_options_default();
    lmv_error err;
    lmv_prediction top[1];
    FILE *pred = NULL;
    double t0;
    for (i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) json = 1;
        else if (!strcmp(argv[i], "--threads")) INT_FLAG("eval", "--threads", 0, 256, &threads);
        else if (!strcmp(argv[i], "--int8-compute")) int8_compute = 1;
        else if (!strcmp(argv[i], "--predictions")) {
            if (!(pred_path = flag_value("eval", argc, argv, &i))) return 2;
        } else if (argv[i][0] == '-') return usage_error("eval", "unknown option '%s'", argv[i]);
        else if (n == 2) return usage_error("eval", "unexpected argument '%s': give MODEL.lmv DIR", argv[i]);
        else paths[n++] = argv[i];
    }
    if (n != 2) return usage_error("eval", "give MODEL.lmv DIR");
    if (open_model(paths[0], 1, &m, &map, &err) != LMV_OK) return fail(paths[0], &err);
    nmodel = lmv_model_info_get(m)->num_classes;
#ifndef HAVE_MMAP
    fprintf(stderr, "lmv eval: this build cannot list folders (it was built without POSIX)\n");
    goto done;
#endif
    r = list_dir(paths[1], 1, &classes, &skipped);
    if (r <= 0) {
        if (r < 0) fprintf(stderr, "lmv eval: out of memory listing '%s'\n", paths[1]);
        else fprintf(stderr, "lmv eval: cannot list '%s' (%s): give a folder with one sub-folder per class\n", paths[1],
                     strerror(errno));
        goto done;
    }
    nclass = classes.n;
    if (nclass == 0) {
        fprintf(stderr, "lmv eval: '%s' has no class sub-folders: lay the images out as DIR/<class>/<image>.jpg\n", paths[1]);
        goto done;
    }
    if (nmodel < 1) {
        fprintf(stderr, "lmv eval: %s has no classifier head (it gives features only): there is nothing to evaluate\n", paths[0]);
        rc = 2;
        goto done;
    }
    cls = (int *)malloc(sizeof(int) * (size_t)nclass);
    col = (int *)malloc(sizeof(int) * (size_t)nmodel);
    files = (strlist *)calloc((size_t)nclass, sizeof(strlist));
    confusion = (int *)calloc((size_t)nclass * (size_t)nclass, sizeof(int));
    seen = (int *)calloc((size_t)nclass, sizeof(int));
    out_of = (int *)calloc((size_t)nclass, sizeof(int));
    if (!cls || !col || !files || !confusion || !seen || !out_of) {
        fprintf(stderr, "lmv eval: out of memory for %d classes\n", nclass);
        goto done;
    }
    /* Folders named after the model's labels are those classes; otherwise one folder per class, in
       sorted order. */
    by_label = lmv_model_info_get(m)->has_labels;
    for (c = 0; c < nclass && by_label; c++) {
        cls[c] = -1;
        for (k = 0; k < nmodel && cls[c] < 0; k++)
            if (same_name(classes.v[c], lmv_model_label(m, k))) cls[c] = k;
        if (cls[c] < 0) by_label = 0;
    }
    for (c = 0; c < nclass && by_label; c++)
        for (k = 0; k < c; k++)
            if (cls[k] == cls[c]) {
                fprintf(stderr, "lmv eval: the folders '%s' and '%s' both name the class '%s': merge them into one\n",
                        classes.v[k], classes.v[c], lmv_model_label(m, cls[c]));
                rc = 2;
                goto done;
            }
    if (!by_label) {
        if (nclass != nmodel) {
            fprintf(stderr, "lmv eval: the %d folders of '%s' (", nclass, paths[1]);
            print_names(stderr, classes.v, nclass, 4);
            if (lmv_model_info_get(m)->has_labels) {
                fprintf(stderr, ") are not all labels of the model and it has %d classes, so they cannot be taken in order: "
                                "name each folder after its class (", nmodel);
                for (k = 0; k < nmodel && k < 4; k++) fprintf(stderr, "%s%s", k ? ", " : "", lmv_model_label(m, k));
                fprintf(stderr, "%s) or give one folder per class\n", nmodel > 4 ? ", ..." : "");
            } else
                fprintf(stderr, ") cannot be matched to the model's %d classes (it has no labels): give one folder per class, "
                                "in class order when sorted\n", nmodel);
            rc = 2;
            goto done;
        }
        for (c = 0; c < nclass; c++) cls[c] = c;
        fprintf(stderr, "lmv eval: the folder names are not all the model's labels, so the folders are taken in sorted order "
                        "as classes 0..%d: ", nmodel - 1);
        for (c = 0; c < nclass && c < 5; c++) {
            const char *l = lmv_model_label(m, c);
            fprintf(stderr, "%s%s -> %d%s%s%s", c ? ", " : "", classes.v[c], c, l ? " (" : "", l ? l : "", l ? ")" : "");
        }
        fprintf(stderr, "%s\n", nclass > 5 ? ", ..." : "");
    }
    for (k = 0; k < nmodel; k++) col[k] = -1;
    for (c = 0; c < nclass; c++) col[cls[c]] = c;
    for (c = 0; c < nclass; c++) {
        snprintf(path, sizeof path, "%s/%s", paths[1], classes.v[c]);
        r = list_dir(path, 0, &files[c], &skipped);
        if (r <= 0) {
            if (r < 0) fprintf(stderr, "lmv eval: out of memory listing '%s'\n", path);
            else fprintf(stderr, "lmv eval: cannot list '%s' (%s)\n", path, strerror(errno));
            goto done;
        }
        total += files[c].n;
    }
    if (skipped.n) {
        qsort(skipped.v, (size_t)skipped.n, sizeof(char *), cmp_str);
        fprintf(stderr, "lmv eval: skipped %d %s: ", skipped.n,
                skipped.n == 1 ? "entry that is not a JPEG or PNG file" : "entries that are not JPEG or PNG files");
        print_names(stderr, skipped.v, skipped.n, SKIPPED_SHOWN);
        fprintf(stderr, "\n");
    }
    if (total == 0) {
        fprintf(stderr, "lmv eval: no JPEG or PNG files in the class folders of '%s' (expected DIR/<class>/<image>.jpg)\n", paths[1]);
        goto done;
    }
    so.threads = threads;
    so.int8_compute = int8_compute;
    if (!env_simd("eval", &so.simd)) goto done;
    if (lmv_session_create(m, &so, &s, &err) != LMV_OK) {
        fail("session", &err);
        goto done;
    }
    if (pred_path && !(pred = fopen(pred_path, "w"))) {
        fprintf(stderr, "lmv eval: cannot write %s: %s\n", pred_path, strerror(errno));
        goto done;
    }
    t0 = now_ms();
    for (c = 0; c < nclass; c++)
        for (i = 0; i < files[c].n; i++) {
            int p;
            snprintf(path, sizeof path, "%s/%s/%s", paths[1], classes.v[c], files[c].v[i]);
            if (lmv_classify_file(s, path, NULL, 1, top, NULL, &err) != LMV_OK) {
                fprintf(stderr, "\nlmv: %s: %s\n", path, err.message);
                failed++;
                continue;
            }
            p = top[0].index >= 0 && top[0].index < nmodel ? col[top[0].index] : -1;
            if (p >= 0) confusion[c * nclass + p]++;
            else out_of[c]++, outside++; /* a class none of the folders holds */
            seen[c]++;
            correct += top[0].index == cls[c];
            if (pred) fprintf(pred, "%s\t%d\t%d\n", path, cls[c], top[0].index);
            if (++done % 50 == 0 || done + failed == total) progress(done, total, t0);
        }
    fprintf(stderr, "\n");
    if (pred && fclose(pred) != 0) {
        pred = NULL;
        fprintf(stderr, "lmv eval: cannot write %s\n", pred_path);
        goto done;
    }
    pred = NULL;
    {
        double mp = 0, mr = 0, mf = 0, acc = done ? 100.0 * correct / done : 0;
        if (json) {
            printf("{\"model\": ");
            json_string(stdout, lmv_model_info_get(m)->name);
            printf(", \"images\": %d, \"failed\": %d, \"correct\": %d, \"accuracy\": %.4f, \"outside\": %d, \"mapping\": \"%s\", "
                   "\"skipped\": %d, \"skipped_files\": [", done, failed, correct, acc, outside, by_label ? "labels" : "sorted",
                   skipped.n);
            for (i = 0; i < skipped.n && i < SKIPPED_SHOWN; i++) {
                if (i) printf(", ");
                json_string(stdout, skipped.v[i]);
            }
            printf("], \"classes\": [");
        } else {
            printf("%d images, %d classes: accuracy %.2f%% (%d correct)%s\n", done, nclass, acc, correct,
                   failed ? " -- some images failed to decode" : "");
            if (outside) printf("%d predictions fell outside the folders' classes (counted as wrong)\n", outside);
            if (skipped.n) printf("%d %s skipped: not %s\n", skipped.n, skipped.n == 1 ? "entry" : "entries",
                                  skipped.n == 1 ? "a JPEG or PNG file" : "JPEG or PNG files");
            printf("\n%-16s %9s %9s %9s %7s\n", "class", "precision", "recall", "f1", "images");
        }
        for (c = 0; c < nclass; c++) {
            int tp = confusion[c * nclass + c], colsum = 0, row = seen[c];
            double p, rc_, f1;
            for (r = 0; r < nclass; r++) colsum += confusion[r * nclass + c];
            p = colsum ? (double)tp / colsum : 0;
            rc_ = row ? (double)tp / row : 0;
            f1 = p + rc_ > 0 ? 2 * p * rc_ / (p + rc_) : 0;
            mp += p / nclass;
            mr += rc_ / nclass;
            mf += f1 / nclass;
            if (json) {
                const char *l = lmv_model_label(m, cls[c]);
                printf("%s{\"name\": ", c ? ", " : "");
                json_string(stdout, classes.v[c]);
                printf(", \"class\": %d, \"label\": ", cls[c]);
                if (l) json_string(stdout, l);
                else printf("null");
                printf(", \"precision\": %.6f, \"recall\": %.6f, \"f1\": %.6f, \"images\": %d, \"outside\": %d}", p, rc_, f1, row,
                       out_of[c]);
            } else printf("%-16s %9.4f %9.4f %9.4f %7d\n", classes.v[c], p, rc_, f1, row);
        }
        if (json) {
            printf("], \"macro_precision\": %.6f, \"macro_recall\": %.6f, \"macro_f1\": %.6f, \"confusion\": [", mp, mr, mf);
            for (c = 0; c < nclass; c++) {
                printf("%s[", c ? ", " : "");
                for (r = 0; r < nclass; r++) printf("%s%d", r ? ", " : "", confusion[c * nclass + r]);
                printf("]");
            }
            printf("]}\n");
        } else {
            printf("%-16s %9.4f %9.4f %9.4f %7d\n\nconfusion matrix (rows: true class, columns: predicted%s)\n", "macro avg", mp,
                   mr, mf, done, outside ? "; last: outside the folders' classes" : "");
            for (c = 0; c < nclass; c++) {
                printf("%-16s", classes.v[c]);
                for (r = 0; r < nclass; r++) printf(" %5d", confusion[c * nclass + r]);
                if (outside) printf(" %5d", out_of[c]);
                printf("\n");
            }
        }
    }
    rc = failed ? 1 : 0;
done:
    if (pred) fclose(pred);
    for (c = 0; files && c < nclass; c++) strlist_free(&files[c]);
    free(files);
    strlist_free(&classes);
    strlist_free(&skipped);
    free(cls);
    free(col);
    free(seen);
    free(out_of);
    free(confusion);
    lmv_session_destroy(s);
    close_model(m, &map);
    return rc;
usage_fail:
    return 2;
}

/* ---- embed: a file as a C array for firmware ---- */

/* The file's name without its directory, safe inside a C comment. */
static const char *base_name(const char *path) {
    static char out[256];
    const char *b = strrchr(path, '/');
    size_t n = 0;
    for (b = b ? b + 1 : path; *b && n + 1 < sizeof out; b++) out[n++] = *b == '*' ? '_' : *b;
    out[n] = 0;
    return out;
}

static int valid_symbol(const char *s) {
    const char *p;
    if (!*s || (*s >= '0' && *s <= '9')) return 0;
    for (p = s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '_')) return 0;
    return p - s < 200;
}

/* 16 bytes a line as "0x..," keeps the source about 5x the binary and every compiler fast on it.
   The alignment attribute is what lets lmv_model_open_memory use the array in place at full speed
   (tensors are 64-byte aligned inside the file); a compiler without one still gets 4 bytes, which
   the library accepts. */
static int cmd_embed(int argc, char **argv) {
    const char *paths[2], *name = "lmv_model_data";
    int npaths = 0, i;
    size_t size, k;
    unsigned char *buf;
    FILE *f;
    for (i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--name")) {
            if (!(name = flag_value("embed", argc, argv, &i))) return 2;
        } else if (argv[i][0] == '-') return usage_error("embed", "unknown option '%s'", argv[i]);
        else if (npaths == 2) return usage_error("embed", "unexpected argument '%s': give FILE OUT.c", argv[i]);
        else paths[npaths++] = argv[i];
    }
    if (npaths != 2) return usage_error("embed", "give FILE OUT.c");
    if (!valid_symbol(name)) {
        fprintf(stderr, "lmv embed: '%s' is not a C identifier: give --name letters, digits and '_', not starting with a digit\n", name);
        return 2;
    }
    if (!(buf = (unsigned char *)read_file(paths[0], "the file to embed", &size))) return 1;
    if (size >= 8 && !memcmp(buf, "LEMEVIT", 8)) { /* a weight file: refuse to embed a damaged one */
        lmv_model *m;
        lmv_error err;
        if (lmv_model_open_memory(buf, size, NULL, &m, &err) != LMV_OK) {
            free_file(buf);
            return fail(paths[0], &err);
        }
        lmv_model_close(m);
    }
    f = fopen(paths[1], "w");
    if (!f) {
        fprintf(stderr, "lmv: cannot write %s: %s\n", paths[1], strerror(errno));
        free_file(buf);
        return 1;
    }
    fprintf(f,
            "/* Generated by `lmv embed` from %s (%zu bytes). Do not edit; regenerate instead. */\n"
            "#include <stddef.h>\n"
            "#if defined(__GNUC__) || defined(__clang__)\n"
            "#define LMV_EMBED_ALIGNED_ __attribute__((aligned(64)))\n"
            "#else\n"
            "#define LMV_EMBED_ALIGNED_\n"
            "#endif\n"
            "#ifdef __cplusplus\n"
            "extern \"C\" {\n"
            "#endif\n"
            "extern const unsigned char %s[];\n"
            "extern const size_t %s_size;\n"
            "#if defined(_MSC_VER) && !defined(__clang__)\n"
            "__declspec(align(64))\n"
            "#endif\n"
            "const unsigned char %s[%zu] LMV_EMBED_ALIGNED_ = {\n",
            base_name(paths[0]), size, name, name, name, size ? size : 1);
    for (k = 0; k < size; k++) fprintf(f, "0x%02x,%s", buf[k], (k % 16 == 15 || k + 1 == size) ? "\n" : "");
    if (!size) fprintf(f, "0\n");
    fprintf(f, "};\nconst size_t %s_size = %zu;\n#ifdef __cplusplus\n}\n#endif\n", name, size);
    free_file(buf);
    if (ferror(f) | fclose(f)) {
        fprintf(stderr, "lmv: cannot write %s\n", paths[1]);
        return 1;
    }
    return 0;
}

/* ---- explain: pictures of attention ---- */

/* What the trace callback keeps from a run: the attention maps of one block and the shapes that
   say how tokens lie on the image. */
typedef struct explain_trace {
    char block[80];
    float *attn[2];        /* ViT: [0] = "<block>.attn"; LeMeViT: [0] = attn_c, [1] = attn_x;
                              Swin: [0] = attn [windows][heads][N][N], [1] = attn_tokens [windows][N] */
    int shape[2][4];
    int patches;           /* ViT: rows of "patch_embed" */
    int grid_h, grid_w;    /* LeMeViT: the block's map, from "<block>.x"; Swin: from "<block>" */
    int blocks;            /* ViT: how many "blocks.N" */
    int window[8];         /* Swin: the window size of each stage (set before the run) */
    int n_windows;         /* how many: 1 (every stage) or one per stage */
    char swin_last[32];    /* Swin: the last block, and the last of a stage with more than one window */
    char swin_multi[32];
    int failed;
} explain_trace;

static void explain_keep(void *user, const char *name, const float *data, int ndim, const int *shape) {
    explain_trace *t = (explain_trace *)user;
    size_t len = strlen(t->block), n;
    int k, end = 0, which = -1, stage = -1;
    if (!strcmp(name, "patch_embed") && ndim == 2) t->patches = shape[0];
    if (sscanf(name, "blocks.%d%n", &k, &end) == 1 && !name[end] && k + 1 > t->blocks) t->blocks = k + 1;
    if (sscanf(name, "layers.%d.blocks.%d%n", &stage, &k, &end) == 2 && !name[end] && ndim == 3 && strlen(name) < 32) {
        int ws = t->n_windows > 0 && stage >= 0 ? t->window[stage < t->n_windows ? stage : t->n_windows - 1] : 0;
        strcpy(t->swin_last, name);
        if (ws > 0 && (shape[0] + ws - 1) / ws * ((shape[1] + ws - 1) / ws) > 1) strcpy(t->swin_multi, name);
    }
    if (!len || strncmp(name, t->block, len)) return;
    if (!name[len] && ndim == 3) t->grid_h = shape[0], t->grid_w = shape[1]; /* Swin: the block's output */
    if (name[len] != '.') return;
    if (!strcmp(name + len, ".x") && ndim == 3) t->grid_h = shape[0], t->grid_w = shape[1];
    if (!strcmp(name + len, ".attn") || !strcmp(name + len, ".attn_c")) which = 0;
    if (!strcmp(name + len, ".attn_x") || !strcmp(name + len, ".attn_tokens")) which = 1;
    if (which < 0 || ndim < 2 || ndim > 4) return;
    for (n = 1, k = 0; k < ndim; k++) n *= (size_t)shape[k];
    free(t->attn[which]);
    if (!(t->attn[which] = (float *)malloc(sizeof(float) * n))) {
        t->failed = 1;
        return;
    }
    memcpy(t->attn[which], data, sizeof(float) * n);
    memset(t->shape[which], 0, sizeof t->shape[which]);
    memcpy(t->shape[which], shape, sizeof(int) * (size_t)ndim);
}

static void explain_reset(explain_trace *t, const char *block) {
    int window[8], n = t->n_windows;
    memcpy(window, t->window, sizeof window);
    free(t->attn[0]);
    free(t->attn[1]);
    memset(t, 0, sizeof *t);
    memcpy(t->window, window, sizeof window);
    t->n_windows = n;
    snprintf(t->block, sizeof t->block, "%s", block);
}

/* Swin: the map over the stage's gh x gw tokens from one block's window maps a [windows][heads]
   [N][N] and slots tok [windows][N] (the token index of each slot, -1 for padding): each token
   gets the attention it receives (head `head`, -1: the mean over heads) averaged over its
   window's image queries (padding queries are dropped, as the model drops their outputs). 0 when
   the slots do not cover every token once. */
static int explain_swin(const float *a, const int *shape, const float *tok, int head, int gh, int gw, float *map) {
    int nwin = shape[0], heads = shape[1], N = shape[2], w, h, q, p, real, seen = 0;
    for (p = 0; p < gh * gw; p++) map[p] = -1.0f;
    for (w = 0; w < nwin; w++) {
        const float *slot = tok + (size_t)w * N;
        for (real = 0, q = 0; q < N; q++) real += slot[q] >= 0.0f;
        for (p = 0; p < N; p++) {
            double acc = 0.0;
            int k = (int)slot[p];
            if (slot[p] < 0.0f) continue;
            if (k >= gh * gw || map[k] >= 0.0f) return 0;
            for (h = 0; h < heads; h++) {
                if (head >= 0 && h != head) continue;
                for (q = 0; q < N; q++)
                    if (slot[q] >= 0.0f) acc += a[(((size_t)w * heads + h) * N + q) * N + p];
            }
            map[k] = (float)(acc / real / (head >= 0 ? 1 : heads));
            seen++;
        }
    }
    return seen == gh * gw;
}

/* The map over keys [k0, k0 + nk) of a [heads][queries][keys] block: head `head` (-1: the mean
   over heads) of query row q (-1: the mean over rows [q0, queries)). */
static void explain_rows(const float *a, const int *shape, int head, int q, int q0, int k0, int nk, float *map) {
    int h, r, k, rows = 0;
    double *acc = (double *)calloc((size_t)nk, sizeof(double));
    if (!acc) return;
    for (h = 0; h < shape[0]; h++) {
        if (head >= 0 && h != head) continue;
        for (r = q >= 0 ? q : q0; r < (q >= 0 ? q + 1 : shape[1]); r++, rows++)
            for (k = 0; k < nk; k++) acc[k] += a[((size_t)h * shape[1] + r) * shape[2] + k0 + k];
    }
    for (k = 0; k < nk; k++) map[k] = (float)(acc[k] / (rows ? rows : 1));
    free(acc);
}

/* LeMeViT's default block: the last block of the last cross (C) or dual-cross (D, E) stage (out
   NULL: the type letter of stage `stage`, 0 when unknown). */
static int explain_lemevit_block(const lmv_model *m, char *out, size_t cap, int stage) {
    lmv_config_entry e, types, depths;
    int i, have = 0, last = -1;
    memset(&types, 0, sizeof types);
    memset(&depths, 0, sizeof depths);
    for (i = 0; lmv_model_config(m, i, &e); i++) {
        if (!strcmp(e.key, "lemevit.attn_types") && e.type == LMV_CONFIG_STRING) types = e, have |= 1;
        if (!strcmp(e.key, "lemevit.depths") && e.type == LMV_CONFIG_INTS) depths = e, have |= 2;
    }
    if (have != 3) return 0;
    if (!out) return stage >= 0 && stage < depths.count && stage < (int)strlen(types.string) ? types.string[stage] : 0;
    for (i = 0; types.string[i] && i < depths.count; i++)
        if (types.string[i] != 'S' && depths.ints[i] > 0) last = i;
    if (last < 0) return 0;
    snprintf(out, cap, "stages.%d.%d", last, depths.ints[last] - 1);
    return 1;
}

static int cmd_explain(int argc, char **argv) {
    const char *paths[3], *block = NULL, *map_path = NULL, *token = NULL;
    int npaths = 0, head = -1, rollout = 0, scale = 0, threads = 0, i, rc = 1, have_img = 0, gh = 0, gw = 0, prefix = 0;
    int meta = -2; /* LeMeViT: -1 the mean over meta tokens, K >= 0 one of them */
    int image_queries = 0; /* LeMeViT standard-attention block: the map is the mean over image queries */
    int cls = -1;  /* ViT: 1 the class token, 0 the mean over patch queries, -1 the default */
    double alpha = 0.5;
    lmv_image_options io = lmv_image_options_default();
    lmv_image img, pic;
    lmv_model *m = NULL;
    mapping mp = {NULL, 0};
    lmv_session *s = NULL;
    lmv_session_options so = lmv_session_options_default();
    lmv_error err;
    const lmv_model_info *in;
    const lmv_preprocess *pp;
    explain_trace t;
    char name[80];
    float *x = NULL, *logits = NULL, *map = NULL, prob[5];
    double *roll = NULL, *step = NULL, *tmp = NULL;
    int top[5], ntop, c, y, shape[2];
    memset(&t, 0, sizeof t);
    memset(&pic, 0, sizeof pic);
    for (i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--block")) {
            if (!(block = flag_value("explain", argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--head")) {
            const char *v = flag_value("explain", argc, argv, &i);
            if (!v) return 2;
            if (strcmp(v, "mean") && !parse_int("explain", "--head", v, 0, 4095, &head)) return 2;
        } else if (!strcmp(a, "--token")) {
            if (!(token = flag_value("explain", argc, argv, &i))) return 2;
            if (!strcmp(token, "cls")) cls = 1;
            else if (!strcmp(token, "patches")) cls = 0;
            else if (!strcmp(token, "meta")) meta = -1;
            else if (!strncmp(token, "meta:", 5)) {
                if (!parse_int("explain", "--token meta:K", token + 5, 0, 65535, &meta)) return 2;
            } else
                return usage_error("explain", "--token takes cls, patches, meta or meta:K, not '%s'", token);
        } else if (!strcmp(a, "--rollout")) rollout = 1;
        else if (!strcmp(a, "--scale")) INT_FLAG("explain", "--scale", 1, 64, &scale);
        else if (!strcmp(a, "--threads")) INT_FLAG("explain", "--threads", 0, 256, &threads);
        else if (!strcmp(a, "--alpha")) {
            const char *v = flag_value("explain", argc, argv, &i);
            char *end;
            if (!v) return 2;
            alpha = strtod(v, &end);
            if (!*v || *end || !(alpha >= 0.0 && alpha <= 1.0))
                return usage_error("explain", "--alpha takes a number from 0 to 1, not '%s'", v);
        } else if (!strcmp(a, "--map")) {
            if (!(map_path = flag_value("explain", argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--ignore-exif")) io.ignore_orientation = 1;
        else if (a[0] == '-') return usage_error("explain", "unknown option '%s'", a);
        else if (npaths == 3) return usage_error("explain", "unexpected argument '%s': give MODEL.lmv IMAGE.jpg OUT.png", a);
        else paths[npaths++] = a;
    }
    if (npaths != 3) return usage_error("explain", "give MODEL.lmv IMAGE.jpg OUT.png");
    if (rollout && head >= 0) return usage_error("explain", "--rollout averages the heads of every block; drop --head");
    if (open_model(paths[0], 1, &m, &mp, &err) != LMV_OK) return fail(paths[0], &err);
    in = lmv_model_info_get(m);
    pp = &in->preprocess;
    if (in->family != LMV_FAMILY_VIT && in->family != LMV_FAMILY_LEMEVIT && in->family != LMV_FAMILY_SWIN) {
        fprintf(stderr, "lmv explain: %s is a %s model; attention maps are captured for ViT, Swin and LeMeViT models only\n",
                paths[0], in->arch);
        goto done;
    }
    if (in->family == LMV_FAMILY_SWIN && (token || rollout)) {
        usage_error("explain", "%s is not for Swin models: a Swin map is each token's attention averaged over its window",
                    rollout ? "--rollout" : "--token");
        rc = 2;
        goto done;
    }
    if (in->family == LMV_FAMILY_SWIN) {
        lmv_config_entry e;
        for (i = 0; lmv_model_config(m, i, &e); i++)
            if (!strcmp(e.key, "swin.window_size") && e.type == LMV_CONFIG_INTS && e.count >= 1) {
                for (t.n_windows = 0; t.n_windows < e.count && t.n_windows < 8; t.n_windows++)
                    t.window[t.n_windows] = e.ints[t.n_windows];
            }
    }
    if (in->family == LMV_FAMILY_VIT && meta != -2) {
        usage_error("explain", "--token meta is for LeMeViT models; a ViT takes --token cls or patches");
        rc = 2;
        goto done;
    }
    if (in->family == LMV_FAMILY_LEMEVIT && (cls >= 0 || rollout)) {
        usage_error("explain", "%s is for ViT models; a LeMeViT takes --token meta or meta:K", rollout ? "--rollout" : "--token cls|patches");
        rc = 2;
        goto done;
    }
    if (!check_file(paths[1], "a JPEG file", &err) || lmv_image_load_jpeg_file(paths[1], &io, &img, &err) != LMV_OK) {
        fail(paths[1], &err);
        goto done;
    }
    have_img = 1;
    x = (float *)malloc(sizeof(float) * (size_t)in->in_chans * pp->crop_h * pp->crop_w);
    logits = (float *)malloc(sizeof(float) * (size_t)(in->num_classes > in->num_features ? in->num_classes
                                                                                      : in->num_features));
    if (!x || !logits) {
        fprintf(stderr, "lmv explain: out of memory\n");
        goto done;
    }
    if (lmv_preprocess_image(&img, pp, in->in_chans, x, NULL, &err) != LMV_OK) {
        fail(paths[1], &err);
        goto done;
    }
    so.max_h = pp->crop_h;
    so.max_w = pp->crop_w;
    so.threads = threads;
    if (lmv_session_create(m, &so, &s, &err) != LMV_OK) {
        fail("session", &err);
        goto done;
    }
    /* which block: the one asked for, or the last ViT block / last LeMeViT cross block / last Swin
       block of a stage with more than one window */
    lmv_session_set_trace(s, explain_keep, &t);
    if (block) snprintf(name, sizeof name, "%s", block);
    else if (in->family == LMV_FAMILY_LEMEVIT) {
        if (!explain_lemevit_block(m, name, sizeof name, 0)) {
            fprintf(stderr, "lmv explain: %s has no cross or dual-cross stage; give --block stages.I.J\n", paths[0]);
            goto done;
        }
    } else {
        explain_reset(&t, "");
        if ((in->num_classes ? lmv_run(s, x, 1, pp->crop_h, pp->crop_w, logits, &err)
                             : lmv_run_features(s, x, 1, pp->crop_h, pp->crop_w, logits, &err)) != LMV_OK) {
            fail("run", &err);
            goto done;
        }
        if (in->family == LMV_FAMILY_SWIN)
            snprintf(name, sizeof name, "%s", t.swin_multi[0] ? t.swin_multi : t.swin_last);
        else
            snprintf(name, sizeof name, "blocks.%d", t.blocks - 1);
    }
    explain_reset(&t, name);
    lmv_session_trace_attention(s, name);
    if ((in->num_classes ? lmv_run(s, x, 1, pp->crop_h, pp->crop_w, logits, &err)
                         : lmv_run_features(s, x, 1, pp->crop_h, pp->crop_w, logits, &err)) != LMV_OK) {
        fail("run", &err);
        goto done;
    }
    if (t.failed) {
        fprintf(stderr, "lmv explain: out of memory for the attention maps\n");
        goto done;
    }
    if (!t.attn[0] && !t.attn[1]) {
        fprintf(stderr, "lmv explain: no attention maps from block '%s'; give a block of this model (%s)\n", name,
                in->family == LMV_FAMILY_VIT    ? "blocks.0, blocks.1, ..."
                : in->family == LMV_FAMILY_SWIN ? "layers.S.blocks.J, e.g. layers.0.blocks.0"
                                                : "stages.I.J, e.g. stages.0.0");
        goto done;
    }
    if (in->family == LMV_FAMILY_SWIN) {
        gh = t.grid_h;
        gw = t.grid_w;
        if (!t.attn[0] || !t.attn[1] || !gh || !gw || t.shape[1][0] != t.shape[0][0] || t.shape[1][1] != t.shape[0][2]) {
            fprintf(stderr, "lmv explain: block '%s' gave no window maps with their token slots\n", name);
            goto done;
        }
        if (head >= t.shape[0][1]) {
            usage_error("explain", "--head %d: block '%s' has %d heads (0 to %d)", head, name, t.shape[0][1], t.shape[0][1] - 1);
            rc = 2;
            goto done;
        }
    } else if (in->family == LMV_FAMILY_VIT) {
        int T = t.shape[0][1];
        for (gh = 1; gh <= t.patches; gh++) /* the grid with the crop's aspect: gh / gw = crop_h / crop_w */
            if (t.patches % gh == 0 && (long)gh * pp->crop_w == (long)(t.patches / gh) * pp->crop_h) break;
        gw = gh <= t.patches ? t.patches / gh : 0;
        prefix = T - t.patches;
        if (!gw || prefix < 0) {
            fprintf(stderr, "lmv explain: cannot lay %d patch tokens on a %dx%d crop\n", t.patches, pp->crop_h, pp->crop_w);
            goto done;
        }
        if (cls < 0) cls = prefix > 0;
        if (cls && prefix == 0) {
            usage_error("explain", "this model has no class token; use --token patches");
            rc = 2;
            goto done;
        }
        if (head >= t.shape[0][0]) {
            usage_error("explain", "--head %d: block '%s' has %d heads (0 to %d)", head, name, t.shape[0][0], t.shape[0][0] - 1);
            rc = 2;
            goto done;
        }
    } else {
        int which;
        gh = t.grid_h;
        gw = t.grid_w;
        /* cross and dual-cross blocks: meta queries over image tokens; standard blocks: image over image */
        int stage = -1;
        sscanf(name, "stages.%d", &stage);
        which = explain_lemevit_block(m, NULL, 0, stage) == 'S'; /* the stage's type, from the config */
        if (!t.attn[which] || t.shape[which][2] != gh * gw) {
            fprintf(stderr, "lmv explain: block '%s' has no attention over image tokens\n", name);
            goto done;
        }
        if (which == 1 && meta != -2) {
            usage_error("explain", "block '%s' is a standard-attention block: its queries are image tokens, not meta tokens",
                        name);
            rc = 2;
            goto done;
        }
        if (which == 0 && meta >= t.shape[0][1]) {
            usage_error("explain", "--token meta:%d: the model has %d meta tokens (0 to %d)", meta, t.shape[0][1],
                        t.shape[0][1] - 1);
            rc = 2;
            goto done;
        }
        if (head >= t.shape[which][0]) {
            usage_error("explain", "--head %d: block '%s' has %d heads (0 to %d)", head, name, t.shape[which][0],
                        t.shape[which][0] - 1);
            rc = 2;
            goto done;
        }
        image_queries = which == 1;
        if (which == 1) { /* the mean over image queries, as ViT's "patches" */
            float *keep = t.attn[0];
            t.attn[0] = t.attn[1], t.attn[1] = keep;
            memcpy(t.shape[0], t.shape[1], sizeof t.shape[0]);
        }
        if (meta == -2) meta = -1;
    }
    map = (float *)malloc(sizeof(float) * (size_t)gh * gw);
    if (!map) goto done;
    if (rollout) {
        /* Abnar & Zuidema: per block, heads averaged, plus the identity, rows normalised; the
           product over blocks 0..B, from the first */
        int T = t.shape[0][1], b, last, r, k, j;
        if (sscanf(name, "blocks.%d", &last) != 1) last = 0;
        roll = (double *)calloc((size_t)T * T, sizeof(double));
        step = (double *)calloc((size_t)T * T, sizeof(double));
        tmp = (double *)calloc((size_t)T * T, sizeof(double));
        if (!roll || !step || !tmp) goto done;
        for (r = 0; r < T; r++) roll[(size_t)r * T + r] = 1.0;
        for (b = 0; b <= last; b++) {
            snprintf(name, sizeof name, "blocks.%d", b);
            explain_reset(&t, name);
            lmv_session_trace_attention(s, name);
            if (lmv_run_features(s, x, 1, pp->crop_h, pp->crop_w, logits, &err) != LMV_OK || !t.attn[0]) {
                fail("run", &err);
                goto done;
            }
            for (r = 0; r < T; r++) {
                double sum = 0.0;
                for (k = 0; k < T; k++) {
                    double v = 0.0;
                    int h;
                    for (h = 0; h < t.shape[0][0]; h++) v += t.attn[0][((size_t)h * T + r) * T + k];
                    v = 0.5 * v / t.shape[0][0] + (r == k ? 0.5 : 0.0);
                    step[(size_t)r * T + k] = v;
                    sum += v;
                }
                for (k = 0; k < T; k++) step[(size_t)r * T + k] /= sum;
            }
            for (r = 0; r < T; r++) /* roll = step x roll */
                for (k = 0; k < T; k++) {
                    double v = 0.0;
                    for (j = 0; j < T; j++) v += step[(size_t)r * T + j] * roll[(size_t)j * T + k];
                    tmp[(size_t)r * T + k] = v;
                }
            memcpy(roll, tmp, sizeof(double) * (size_t)T * T);
        }
        for (k = 0; k < gh * gw; k++) {
            double v = 0.0;
            int q0 = cls ? 0 : prefix, q1 = cls ? 1 : T;
            for (r = q0; r < q1; r++) v += roll[(size_t)r * T + prefix + k];
            map[k] = (float)(v / (q1 - q0));
        }
        lmv_run(s, x, 1, pp->crop_h, pp->crop_w, logits, &err); /* the logits again, for the top 5 */
    } else if (in->family == LMV_FAMILY_SWIN) {
        if (!explain_swin(t.attn[0], t.shape[0], t.attn[1], head, gh, gw, map)) {
            fprintf(stderr, "lmv explain: block '%s': the window slots do not cover its %dx%d tokens once each\n", name, gh,
                    gw);
            goto done;
        }
    } else if (in->family == LMV_FAMILY_VIT)
        explain_rows(t.attn[0], t.shape[0], head, cls ? 0 : -1, prefix, prefix, gh * gw, map);
    else
        explain_rows(t.attn[0], t.shape[0], head, image_queries ? -1 : meta, 0, 0, gh * gw, map);

    /* the picture: the model's input (its eval crop) back in pixels, scaled up, the map over it */
    if (!scale) {
        int side = pp->crop_h < pp->crop_w ? pp->crop_h : pp->crop_w;
        scale = (224 + side - 1) / side;
        if (scale < 1) scale = 1;
    }
    pic.width = pp->crop_w * scale;
    pic.height = pp->crop_h * scale;
    pic.channels = 3;
    if (!(pic.pixels = (unsigned char *)malloc((size_t)pic.width * pic.height * 3))) goto done;
    for (y = 0; y < pic.height; y++)
        for (i = 0; i < pic.width; i++)
            for (c = 0; c < 3; c++) {
                int ch = in->in_chans == 3 ? c : 0;
                double v = x[((size_t)ch * pp->crop_h + y / scale) * pp->crop_w + i / scale] * (double)pp->std[ch] +
                           pp->mean[ch];
                v = floor(v * 255.0 + 0.5);
                pic.pixels[((size_t)y * pic.width + i) * 3 + c] = (unsigned char)(v < 0 ? 0 : v > 255 ? 255 : v);
            }
    if (lmv_image_overlay_heatmap(&pic, map, gw, gh, (float)alpha, &err) != LMV_OK ||
        lmv_image_write_png(&pic, paths[2], &err) != LMV_OK) {
        fail(paths[2], &err);
        goto done;
    }
    shape[0] = gh;
    shape[1] = gw;
    if (map_path && !write_npy(map_path, map, 2, shape)) {
        fprintf(stderr, "lmv: cannot write %s\n", map_path);
        goto done;
    }
    {
        int best = 0;
        char hname[16] = "mean";
        if (head >= 0) snprintf(hname, sizeof hname, "%d", head);
        for (i = 1; i < gh * gw; i++)
            if (map[i] > map[best]) best = i;
        printf("%s: attention of %s%s, %s, head %s; hottest patch row %d col %d of %dx%d\n", paths[1],
               rollout ? "blocks.0 to " : "", name,
               in->family == LMV_FAMILY_SWIN  ? "received by each token, averaged over its window's image queries"
               : in->family == LMV_FAMILY_VIT ? (cls ? "from the class token" : "averaged over patch queries")
               : image_queries ? "averaged over image queries"
               : meta < 0 ? "averaged over meta tokens" : "from one meta token",
               hname, best / gw, best % gw, gh, gw);
    }
    if (meta >= 0 && !image_queries) printf("meta token %d\n", meta);
    if (in->num_classes) {
        ntop = lmv_topk(logits, in->num_classes, 5, top, prob);
        for (i = 0; i < ntop; i++) {
            const char *l = lmv_model_label(m, top[i]);
            if (l) printf("  %6.2f%%  %s\n", 100.0 * prob[i], l);
            else printf("  %6.2f%%  class %d\n", 100.0 * prob[i], top[i]);
        }
    }
    rc = 0;
done:
    explain_reset(&t, "");
    free(pic.pixels);
    free(map);
    free(roll);
    free(step);
    free(tmp);
    free(x);
    free(logits);
    if (have_img) lmv_image_free(&img);
    lmv_session_destroy(s);
    close_model(m, &mp);
    return rc;
usage_fail:
    return 2;
}

static const struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char **usage;
} commands[] = {
    {"info", cmd_info, &usage_info},       {"run", cmd_run, &usage_run},          {"bench", cmd_bench, &usage_bench},
    {"gemm", cmd_gemm, &usage_gemm},       {"decode", cmd_decode, &usage_decode}, {"preprocess", cmd_preprocess, &usage_preprocess},
    {"eval", cmd_eval, &usage_eval},       {"embed", cmd_embed, &usage_embed},    {"explain", cmd_explain, &usage_explain},
};

int main(int argc, char **argv) {
    size_t c;
    int i;
    if (argc < 2) {
        fputs(usage, stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        /* lmv help COMMAND: that command's usage */
        for (c = 0; argc > 2 && c < sizeof commands / sizeof commands[0]; c++)
            if (!strcmp(argv[2], commands[c].name)) {
                fputs(*commands[c].usage, stdout);
                return 0;
            }
        fputs(usage, stdout);
        return 0;
    }
    for (c = 0; c < sizeof commands / sizeof commands[0]; c++)
        if (!strcmp(argv[1], commands[c].name)) {
            for (i = 2; i < argc; i++)
                if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
                    fputs(*commands[c].usage, stdout);
                    return 0;
                }
            return commands[c].run(argc - 2, argv + 2);
        }
    fprintf(stderr, "lmv: unknown command '%s' (see 'lmv --help' for the commands)\n", argv[1]);
    return 2;
}
