/* lmv - the lemevit.h command-line tool.

     lmv info MODEL.lmv                       what is in a weight file
     lmv run MODEL.lmv IN.npy OUT.npy         logits (or --features) for a float32 NCHW input
     lmv bench MODEL.lmv                      load time, memory, latency, GFLOP/s
     lmv decode IMAGE.jpg OUT.ppm             the decoded pixels (PPM, or PGM for gray)
     lmv preprocess MODEL.lmv IMAGE.jpg OUT.npy   the model's input tensor for an image
     lmv eval MODEL.lmv DIR                   accuracy on a labelled folder (one sub-folder per class)
     lmv embed MODEL.lmv OUT.c [--name SYM]   a C source with the file as an aligned const array

   Every failure prints the library's message and exits non-zero. Models are memory-mapped where
   the system allows it, so opening costs no copy. */
#define LEMEVIT_IMPLEMENTATION
#include "../lemevit.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
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

static const char *usage =
    "usage: lmv COMMAND [ARGS]\n"
    "\n"
    "commands:\n"
    "  info MODEL.lmv                    family, config, parameters, preprocessing, labels\n"
    "  run MODEL.lmv IN.npy OUT.npy      run the model on a float32 NCHW .npy input and write\n"
    "                                    the logits (batch x classes) as .npy\n"
    "      --features                    write the pooled features (the head's input) instead\n"
    "      --threads N                   threads to use (default: all)\n"
    "      --trace DIR                   also write every block's output of image 0 as DIR/NAME.npy\n"
    "      --attention BLOCK             with --trace: also the attention maps of BLOCK (e.g.\n"
    "                                    blocks.3, stages.1.0) as BLOCK.attn*.npy\n"
    "      --no-verify                   skip the weight checksum (the header is always checked)\n"
    "      --int8-compute                int8 files: multiply in int8 (activations quantised per\n"
    "                                    row), faster with AVX512-VNNI; default: widen to float32\n"
    "  bench MODEL.lmv                   time loading and inference on random input\n"
    "      --size H W                    input size (default: the model's)\n"
    "      --batch N                     images per run (default 1)\n"
    "      --threads N                   threads (default: all)\n"
    "      --runs N                      timed runs after one warm-up (default 10)\n"
    "      --json                        one JSON object instead of text\n"
    "      --int8-compute                int8 files: multiply in int8 (see run)\n"
    "  gemm M N K                        time the library's matrix multiply on a Linear's shape:\n"
    "                                    C[M][N] = A[M][K] W[N][K]^T + b, random data\n"
    "      --threads N                   threads (default: all)\n"
    "      --runs N                      timed runs after one warm-up (default: enough for ~0.3 s)\n"
    "      --dtype f32|f32p|f16|int8     how W is stored (default f32; f32p: in the GEMM's panels,\n"
    "                                    as the converter writes matrix weights)\n"
    "      --int8-compute                with int8 W: quantise A and multiply in int8\n"
    "      --json                        one JSON object instead of text\n"
    "  decode IMAGE.jpg OUT.ppm          decode a JPEG (EXIF orientation applied) to PPM/PGM\n"
    "      --ignore-exif                 keep the stored orientation\n"
    "  preprocess MODEL.lmv IMAGE.jpg OUT.npy\n"
    "                                    the model's eval transform of an image, 1xCxHxW float32\n"
    "      --ignore-exif                 keep the stored orientation\n"
    "  eval MODEL.lmv DIR                classify every JPEG under DIR/<class>/ (class indices from\n"
    "                                    the sorted folder names, like torchvision's ImageFolder):\n"
    "                                    accuracy, per-class precision/recall/F1, confusion matrix\n"
    "      --json                        machine-readable result on stdout\n"
    "      --predictions FILE            also write one line per image: path, true, predicted\n"
    "      --int8-compute                int8 files: multiply in int8 (see run)\n"
    "      --threads N                   threads (default: all)\n"
    "  embed FILE OUT.c                  write FILE as a C source to link into firmware:\n"
    "                                    const unsigned char SYM[] (64-byte aligned, so\n"
    "                                    lmv_model_open_memory uses it in place) and\n"
    "                                    const size_t SYM_size; a .lmv is checked first,\n"
    "                                    any other file (e.g. a JPEG) is embedded as is\n"
    "      --name SYM                    the symbol (default: lmv_model_data)\n"
    "\n"
    "Make MODEL.lmv from a PyTorch checkpoint with tools/convert.py.\n";

static int fail(const char *what, const lmv_error *e) {
    fprintf(stderr, "lmv: %s: %s\n", what, e->message[0] ? e->message : lmv_result_string(e->code));
    return 1;
}

/* Read a whole file into 64-byte aligned memory. */
static void *read_file(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    long n;
    void *buf = NULL;
    if (!f) return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0) {
        size_t cap = ((size_t)n + 63) & ~(size_t)63;
        buf = malloc(cap ? cap : 64);
        if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
            free(buf);
            buf = NULL;
        }
        *size = (size_t)n;
    }
    fclose(f);
    return buf;
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
#ifdef HAVE_MMAP
    {
        int fd = open(path, O_RDONLY);
        struct stat st;
        if (fd >= 0 && fstat(fd, &st) == 0 && st.st_size > 0) {
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
    int h = 0, w = 0, batch = 1, threads = 0, runs = 10, json = 0, int8_compute = 0, i;
    double t0, open_mapped, open_verified, *times;
    size_t px, mem;
    lmv_model *m;
    mapping map;
    lmv_session *s;
    lmv_session_options so;
    lmv_error err;
    const lmv_model_info *in;
    float *x, *y;
    unsigned seed = 12345;
    for (i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--size") && i + 2 < argc) { h = atoi(argv[++i]); w = atoi(argv[++i]); }
        else if (!strcmp(argv[i], "--batch") && i + 1 < argc) batch = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--int8-compute")) int8_compute = 1;
        else if (!strcmp(argv[i], "--runs") && i + 1 < argc) runs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--json")) json = 1;
        else if (argv[i][0] != '-' && !path) path = argv[i];
        else {
            fprintf(stderr, "lmv bench: unexpected argument '%s'\n\n%s", argv[i], usage);
            return 2;
        }
    }
    if (!path || batch < 1 || runs < 1) {
        fputs(usage, stderr);
        return 2;
    }
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
    so.int8_compute = int8_compute;
    if (lmv_session_memory(m, &so, &mem, &err) != LMV_OK || lmv_session_create(m, &so, &s, &err) != LMV_OK)
        return fail("session", &err);
    px = (size_t)batch * in->in_chans * h * w;
    x = (float *)malloc(px * sizeof(float));
    y = (float *)malloc((size_t)batch * (size_t)(in->num_features > in->num_classes ? in->num_features : in->num_classes) * sizeof(float));
    times = (double *)malloc(sizeof(double) * (size_t)runs);
    if (!x || !y || !times) return 1;
    for (i = 0; i < (int)px; i++) x[i] = next_uniform(&seed);
    for (i = -1; i < runs; i++) {
        t0 = now_ms();
        if (lmv_run_features(s, x, batch, h, w, y, &err) != LMV_OK) return fail("run", &err);
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
        if (json)
            printf("\"model\": \"%s\", \"arch\": \"%s\", \"params\": %zu, \"weight_bytes\": %zu, \"h\": %d, \"w\": %d, "
                   "\"batch\": %d, \"threads\": %d, \"runs\": %d, \"open_mapped_ms\": %.3f, \"open_verified_ms\": %.3f, "
                   "\"session_bytes\": %zu, \"median_ms\": %.3f, \"best_ms\": %.3f, \"gmac\": %.4f, \"peak_rss_kb\": %ld}\n",
                   in->name, in->arch, in->num_params, in->weight_bytes, h, w, batch, threads, runs, open_mapped, open_verified,
                   mem, med, times[0], gmac, peak_rss_kb());
        else {
            printf("model     %s (%s), %.1f M parameters, %.1f MB of weights\n", in->name, in->arch, in->num_params / 1e6,
                   in->weight_bytes / 1e6);
            printf("open      %.1f ms (header checked), %.1f ms (weights checksummed too)\n", open_mapped, open_verified);
            printf("session   %.1f MB of activations for %dx%d, batch %d\n", mem / 1e6, h, w, batch);
            printf("latency   median %.2f ms, best %.2f ms over %d runs\n", med, times[0], runs);
            printf("work      %.3f GMAC per run, %.1f GFLOP/s at the median\n", gmac, 2.0 * gmac / (med / 1e3));
            if (peak_rss_kb() >= 0) printf("peak RSS  %.1f MB\n", peak_rss_kb() / 1e3);
        }
    }
    free(x);
    free(y);
    free(times);
    lmv_session_destroy(s);
    close_model(m, &map);
    return 0;
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
    for (i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--runs") && i + 1 < argc) runs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--json")) json = 1;
        else if (!strcmp(argv[i], "--int8-compute")) int8_compute = 1;
        else if (!strcmp(argv[i], "--dtype") && i + 1 < argc) {
            const char *d = argv[++i];
            dtype = !strcmp(d, "f32") ? LMV_DTYPE_F32 : !strcmp(d, "f16") ? LMV_DTYPE_F16 : !strcmp(d, "int8") ? LMV_DTYPE_INT8
                    : !strcmp(d, "f32p") ? LMV_DTYPE_F32P : -1;
            if (dtype < 0) {
                fprintf(stderr, "lmv gemm: --dtype must be f32, f32p, f16 or int8\n");
                return 2;
            }
        } else if (argv[i][0] != '-' && nd < 3) dims[nd++] = atoi(argv[i]);
        else {
            fprintf(stderr, "lmv gemm: unexpected argument '%s'\n\n%s", argv[i], usage);
            return 2;
        }
    }
    if (nd != 3 || dims[0] < 1 || dims[1] < 1 || dims[2] < 1 || dims[0] > 1 << 16 || dims[1] > 1 << 16 || dims[2] > 1 << 16) {
        fprintf(stderr, "lmv gemm: give M N K, each 1..65536\n\n%s", usage);
        return 2;
    }
    nk = (size_t)dims[1] * dims[2];
    A = (float *)malloc(sizeof(float) * (size_t)dims[0] * dims[2]);
    W = (float *)malloc(sizeof(float) * nk);
    C = (float *)malloc(sizeof(float) * (size_t)dims[0] * dims[1]);
    bias = (float *)malloc(sizeof(float) * (size_t)dims[1]);
    scale = (float *)malloc(sizeof(float) * (size_t)dims[1]);
    wq = malloc(4 * ((size_t)dims[1] + 15) / 16 * 16 * dims[2]); /* f32p: whole panels of 16 rows */
    times = (double *)malloc(sizeof(double) * 100000);
    if (!A || !W || !C || !bias || !scale || !wq || !times) {
        fprintf(stderr, "lmv gemm: out of memory\n");
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
}

static int cmd_info(int argc, char **argv) {
    lmv_model *m;
    mapping map;
    lmv_error err;
    const lmv_model_info *in;
    lmv_config_entry e;
    const char *interp[] = {"nearest", "bilinear", "bicubic"};
    int i, j;
    if (argc != 1) {
        fputs(usage, stderr);
        return 2;
    }
    if (open_model(argv[0], 1, &m, &map, &err) != LMV_OK) return fail(argv[0], &err);
    in = lmv_model_info_get(m);
    printf("model        %s\n", in->name);
    printf("family       %s (from %s)\n", in->arch, in->source);
    printf("input        %d x %d x %d\n", in->in_chans, in->img_h, in->img_w);
    printf("classes      %d%s\n", in->num_classes, in->has_labels ? " (labelled)" : "");
    printf("features     %d\n", in->num_features);
    printf("parameters   %zu (%.1f MB of weights)\n", in->num_params, in->weight_bytes / 1e6);
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
    int npaths = 0, features = 0, threads = 0, verify = 1, int8_compute = 0, i, n, h, w, outdim, shape[2];
    const char *trace = NULL, *attention = NULL;
    void *buf;
    size_t size;
    lmv_npy npy;
    lmv_model *m;
    mapping map;
    lmv_session *s;
    lmv_session_options so;
    lmv_error err;
    float *out;
    trace_dir td;
    for (i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--features")) features = 1;
        else if (!strcmp(argv[i], "--no-verify")) verify = 0;
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--int8-compute")) int8_compute = 1;
        else if (!strcmp(argv[i], "--trace") && i + 1 < argc) trace = argv[++i];
        else if (!strcmp(argv[i], "--attention") && i + 1 < argc) attention = argv[++i];
        else if (argv[i][0] == '-' || npaths == 3) {
            fprintf(stderr, "lmv run: unexpected argument '%s'\n\n%s", argv[i], usage);
            return 2;
        } else paths[npaths++] = argv[i];
    }
    if (npaths != 3) {
        fputs(usage, stderr);
        return 2;
    }
    if (open_model(paths[0], verify, &m, &map, &err) != LMV_OK) return fail(paths[0], &err);
    buf = read_file(paths[1], &size);
    if (!buf) {
        fprintf(stderr, "lmv: %s: %s\n", paths[1], strerror(errno));
        return 1;
    }
    if (lmv_npy_parse(buf, size, &npy, &err) != LMV_OK) return fail(paths[1], &err);
    if (npy.ndim != 4 || npy.shape[1] != lmv_model_info_get(m)->in_chans) {
        fprintf(stderr, "lmv: %s: expected a float32 array of shape (N, %d, H, W)\n", paths[1], lmv_model_info_get(m)->in_chans);
        return 1;
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
    if (lmv_session_create(m, &so, &s, &err) != LMV_OK) return fail("session", &err);
    if (trace) {
        td.dir = trace;
        td.failed = 0;
        mkdir(trace, 0777);
        lmv_session_set_trace(s, trace_write, &td);
        lmv_session_trace_attention(s, attention);
    } else if (attention) {
        fprintf(stderr, "lmv run: --attention needs --trace DIR\n");
        return 2;
    }
    outdim = features ? lmv_model_info_get(m)->num_features : lmv_model_info_get(m)->num_classes;
    out = (float *)malloc(sizeof(float) * (size_t)n * (size_t)(outdim ? outdim : 1));
    if (!out) return 1;
    if ((features ? lmv_run_features(s, npy.data, n, h, w, out, &err) : lmv_run(s, npy.data, n, h, w, out, &err)) != LMV_OK)
        return fail("run", &err);
    shape[0] = n;
    shape[1] = outdim;
    if (!write_npy(paths[2], out, 2, shape)) {
        fprintf(stderr, "lmv: cannot write %s\n", paths[2]);
        return 1;
    }
    if (trace && td.failed) {
        fprintf(stderr, "lmv: cannot write trace files into %s\n", trace);
        return 1;
    }
    free(out);
    free(buf);
    lmv_session_destroy(s);
    close_model(m, &map);
    return 0;
}

static int cmd_decode(int argc, char **argv) {
    lmv_image_options io = lmv_image_options_default();
    lmv_image img;
    lmv_error err;
    const char *paths[2];
    int n = 0, i;
    FILE *f;
    for (i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--ignore-exif")) io.ignore_orientation = 1;
        else if (argv[i][0] != '-' && n < 2) paths[n++] = argv[i];
        else {
            fputs(usage, stderr);
            return 2;
        }
    }
    if (n != 2) {
        fputs(usage, stderr);
        return 2;
    }
    if (lmv_image_load_jpeg_file(paths[0], &io, &img, &err) != LMV_OK) return fail(paths[0], &err);
    f = fopen(paths[1], "wb");
    if (!f || fprintf(f, "P%d\n%d %d\n255\n", img.channels == 1 ? 5 : 6, img.width, img.height) < 0 ||
        fwrite(img.pixels, 1, (size_t)img.width * img.height * img.channels, f) != (size_t)img.width * img.height * img.channels) {
        fprintf(stderr, "lmv: cannot write %s\n", paths[1]);
        return 1;
    }
    fclose(f);
    lmv_image_free(&img);
    return 0;
}

static int cmd_preprocess(int argc, char **argv) {
    lmv_image_options io = lmv_image_options_default();
    lmv_image img;
    lmv_model *m;
    mapping map;
    lmv_error err;
    const lmv_model_info *in;
    const char *paths[3];
    int n = 0, i, shape[4];
    float *x;
    for (i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--ignore-exif")) io.ignore_orientation = 1;
        else if (argv[i][0] != '-' && n < 3) paths[n++] = argv[i];
        else {
            fputs(usage, stderr);
            return 2;
        }
    }
    if (n != 3) {
        fputs(usage, stderr);
        return 2;
    }
    if (open_model(paths[0], 0, &m, &map, &err) != LMV_OK) return fail(paths[0], &err);
    in = lmv_model_info_get(m);
    if (lmv_image_load_jpeg_file(paths[1], &io, &img, &err) != LMV_OK) return fail(paths[1], &err);
    shape[0] = 1;
    shape[1] = in->in_chans;
    shape[2] = in->preprocess.crop_h;
    shape[3] = in->preprocess.crop_w;
    x = (float *)malloc(sizeof(float) * (size_t)shape[1] * shape[2] * shape[3]);
    if (!x) return 1;
    if (lmv_preprocess_image(&img, &in->preprocess, in->in_chans, x, NULL, &err) != LMV_OK) return fail(paths[1], &err);
    if (!write_npy(paths[2], x, 4, shape)) {
        fprintf(stderr, "lmv: cannot write %s\n", paths[2]);
        return 1;
    }
    free(x);
    lmv_image_free(&img);
    close_model(m, &map);
    return 0;
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
    return !strcmp(ext, ".jpg") || !strcmp(ext, ".jpeg") || !strcmp(ext, ".jpe") || !strcmp(ext, ".jfif");
}

/* Sorted names of the entries of `dir` (sub-folders when want_dirs, else JPEG files). */
static char **list_dir(const char *dir, int want_dirs, int *count) {
    char **names = NULL, path[4096];
    int n = 0, cap = 0;
    *count = 0;
#ifdef HAVE_MMAP
    {
        DIR *d = opendir(dir);
        struct dirent *e;
        struct stat st;
        if (!d) return NULL;
        while ((e = readdir(d)) != NULL) {
            if (e->d_name[0] == '.') continue;
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            if (stat(path, &st) != 0 || (want_dirs ? !S_ISDIR(st.st_mode) : !S_ISREG(st.st_mode))) continue;
            if (!want_dirs && !is_jpeg_name(e->d_name)) continue;
            if (n == cap) {
                cap = cap ? 2 * cap : 64;
                names = (char **)realloc(names, sizeof(char *) * (size_t)cap);
                if (!names) break;
            }
            names[n] = (char *)malloc(strlen(e->d_name) + 1);
            strcpy(names[n++], e->d_name);
        }
        closedir(d);
    }
#else
    (void)dir; (void)want_dirs; (void)path; (void)cap;
#endif
    if (names) qsort(names, (size_t)n, sizeof(char *), cmp_str);
    *count = n;
    return names;
}

static void progress(int done, int total, double t0) {
    int width = 40, filled = total ? (int)((double)done / total * width) : width, i;
    double el = (now_ms() - t0) / 1e3, eta = done ? el / done * (total - done) : 0;
    fprintf(stderr, "\r[");
    for (i = 0; i < width; i++) fputc(i < filled ? '#' : '.', stderr);
    fprintf(stderr, "] %d/%d  %.0f img/s  ETA %.0fs ", done, total, el > 0 ? done / el : 0.0, eta);
}

static int cmd_eval(int argc, char **argv) {
    const char *paths[2], *pred_path = NULL;
    int n = 0, i, c, json = 0, threads = 0, nclass, total = 0, done = 0, correct = 0, failed = 0;
    char **classes, path[4096];
    int *counts, *confusion, *seen;
    char ***files;
    lmv_model *m;
    mapping map;
    lmv_session *s;
    lmv_session_options so = lmv_session_options_default();
    int int8_compute = 0;
    lmv_error err;
    lmv_prediction top[1];
    FILE *pred = NULL;
    double t0;
    for (i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) json = 1;
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--int8-compute")) int8_compute = 1;
        else if (!strcmp(argv[i], "--predictions") && i + 1 < argc) pred_path = argv[++i];
        else if (argv[i][0] != '-' && n < 2) paths[n++] = argv[i];
        else {
            fputs(usage, stderr);
            return 2;
        }
    }
    if (n != 2) {
        fputs(usage, stderr);
        return 2;
    }
    if (open_model(paths[0], 1, &m, &map, &err) != LMV_OK) return fail(paths[0], &err);
    classes = list_dir(paths[1], 1, &nclass);
    if (!classes || nclass == 0) {
        fprintf(stderr, "lmv: %s: no class sub-folders found (expected DIR/<class>/<image>.jpg)\n", paths[1]);
        return 1;
    }
    if (nclass > lmv_model_info_get(m)->num_classes) {
        fprintf(stderr, "lmv: %s has %d class folders but the model has %d classes\n", paths[1], nclass,
                lmv_model_info_get(m)->num_classes);
        return 1;
    }
    files = (char ***)calloc((size_t)nclass, sizeof(char **));
    counts = (int *)calloc((size_t)nclass, sizeof(int));
    confusion = (int *)calloc((size_t)nclass * (size_t)nclass, sizeof(int));
    seen = (int *)calloc((size_t)nclass, sizeof(int));
    for (c = 0; c < nclass; c++) {
        snprintf(path, sizeof path, "%s/%s", paths[1], classes[c]);
        files[c] = list_dir(path, 0, &counts[c]);
        total += counts[c];
    }
    so.threads = threads;
    so.int8_compute = int8_compute;
    if (lmv_session_create(m, &so, &s, &err) != LMV_OK) return fail("session", &err);
    if (pred_path && !(pred = fopen(pred_path, "w"))) {
        fprintf(stderr, "lmv: cannot write %s\n", pred_path);
        return 1;
    }
    t0 = now_ms();
    for (c = 0; c < nclass; c++)
        for (i = 0; i < counts[c]; i++) {
            int p;
            snprintf(path, sizeof path, "%s/%s/%s", paths[1], classes[c], files[c][i]);
            if (lmv_classify_file(s, path, NULL, 1, top, NULL, &err) != LMV_OK) {
                fprintf(stderr, "\nlmv: %s: %s\n", path, err.message);
                failed++;
                continue;
            }
            p = top[0].index < nclass ? top[0].index : -1; /* a class beyond the folders is simply wrong */
            if (p >= 0) confusion[c * nclass + p]++;
            seen[c]++;
            correct += p == c;
            if (pred) fprintf(pred, "%s\t%d\t%d\n", path, c, top[0].index);
            if (++done % 50 == 0 || done == total) progress(done, total, t0);
        }
    fprintf(stderr, "\n");
    if (pred) fclose(pred);
    {
        double mp = 0, mr = 0, mf = 0, acc = done ? 100.0 * correct / done : 0;
        int r;
        if (json) printf("{\"model\": \"%s\", \"images\": %d, \"failed\": %d, \"correct\": %d, \"accuracy\": %.4f, \"classes\": [", lmv_model_info_get(m)->name, done, failed, correct, acc);
        else printf("%d images, %d classes: accuracy %.2f%% (%d correct)%s\n\n%-16s %9s %9s %9s %7s\n", done, nclass, acc,
                    correct, failed ? " -- some images failed to decode" : "", "class", "precision", "recall", "f1", "images");
        for (c = 0; c < nclass; c++) {
            int tp = confusion[c * nclass + c], col = 0, row = seen[c];
            double p, rc, f1;
            for (r = 0; r < nclass; r++) col += confusion[r * nclass + c];
            p = col ? (double)tp / col : 0;
            rc = row ? (double)tp / row : 0;
            f1 = p + rc > 0 ? 2 * p * rc / (p + rc) : 0;
            mp += p / nclass;
            mr += rc / nclass;
            mf += f1 / nclass;
            if (json)
                printf("%s{\"name\": \"%s\", \"precision\": %.6f, \"recall\": %.6f, \"f1\": %.6f, \"images\": %d}",
                       c ? ", " : "", classes[c], p, rc, f1, row);
            else printf("%-16s %9.4f %9.4f %9.4f %7d\n", classes[c], p, rc, f1, row);
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
            printf("%-16s %9.4f %9.4f %9.4f %7d\n\nconfusion matrix (rows: true class, columns: predicted)\n", "macro avg", mp, mr,
                   mf, done);
            for (c = 0; c < nclass; c++) {
                printf("%-16s", classes[c]);
                for (r = 0; r < nclass; r++) printf(" %5d", confusion[c * nclass + r]);
                printf("\n");
            }
        }
    }
    for (c = 0; c < nclass; c++) {
        for (i = 0; i < counts[c]; i++) free(files[c][i]);
        free(files[c]);
        free(classes[c]);
    }
    free(files);
    free(classes);
    free(counts);
    free(seen);
    free(confusion);
    lmv_session_destroy(s);
    close_model(m, &map);
    return failed ? 1 : 0;
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
        if (!strcmp(argv[i], "--name") && i + 1 < argc) name = argv[++i];
        else if (argv[i][0] == '-' || npaths == 2) {
            fprintf(stderr, "lmv embed: unexpected argument '%s'\n\n%s", argv[i], usage);
            return 2;
        } else paths[npaths++] = argv[i];
    }
    if (npaths != 2) {
        fputs(usage, stderr);
        return 2;
    }
    if (!valid_symbol(name)) {
        fprintf(stderr, "lmv embed: '%s' is not a C identifier\n", name);
        return 2;
    }
    buf = (unsigned char *)read_file(paths[0], &size);
    if (!buf) {
        fprintf(stderr, "lmv: %s: %s\n", paths[0], strerror(errno));
        return 1;
    }
    if (size >= 8 && !memcmp(buf, "LEMEVIT", 8)) { /* a weight file: refuse to embed a damaged one */
        lmv_model *m;
        lmv_error err;
        if (lmv_model_open_memory(buf, size, NULL, &m, &err) != LMV_OK) return fail(paths[0], &err);
        lmv_model_close(m);
    }
    f = fopen(paths[1], "w");
    if (!f) {
        fprintf(stderr, "lmv: %s: %s\n", paths[1], strerror(errno));
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
    free(buf);
    if (ferror(f) | fclose(f)) {
        fprintf(stderr, "lmv: cannot write %s\n", paths[1]);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        fputs(usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "info")) return cmd_info(argc - 2, argv + 2);
    if (!strcmp(argv[1], "run")) return cmd_run(argc - 2, argv + 2);
    if (!strcmp(argv[1], "bench")) return cmd_bench(argc - 2, argv + 2);
    if (!strcmp(argv[1], "gemm")) return cmd_gemm(argc - 2, argv + 2);
    if (!strcmp(argv[1], "decode")) return cmd_decode(argc - 2, argv + 2);
    if (!strcmp(argv[1], "preprocess")) return cmd_preprocess(argc - 2, argv + 2);
    if (!strcmp(argv[1], "eval")) return cmd_eval(argc - 2, argv + 2);
    if (!strcmp(argv[1], "embed")) return cmd_embed(argc - 2, argv + 2);
    fprintf(stderr, "lmv: unknown command '%s'\n\n%s", argv[1], usage);
    return 2;
}
