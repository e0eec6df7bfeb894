/* lmv - the lemevit.h command-line tool.

     lmv info MODEL.lmv                       what is in a weight file
     lmv run MODEL.lmv IN.npy OUT.npy         logits (or --features) for a float32 NCHW input
     lmv bench MODEL.lmv                      load time, memory, latency, GFLOP/s

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
    "  bench MODEL.lmv                   time loading and inference on random input\n"
    "      --size H W                    input size (default: the model's)\n"
    "      --batch N                     images per run (default 1)\n"
    "      --threads N                   threads (default: all)\n"
    "      --runs N                      timed runs after one warm-up (default 10)\n"
    "      --json                        one JSON object instead of text\n"
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

/* Open a model: memory-mapped (no copy; the library uses the mapping in place) where possible,
   else read into memory by the library. The mapping is left to the process's exit. */
static lmv_result open_model(const char *path, int verify, lmv_model **m, lmv_error *err) {
    lmv_open_options o = lmv_open_options_default();
    o.verify_data = verify;
#ifdef HAVE_MMAP
    {
        int fd = open(path, O_RDONLY);
        struct stat st;
        if (fd >= 0 && fstat(fd, &st) == 0 && st.st_size > 0) {
            void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
            close(fd);
            if (p != MAP_FAILED) return lmv_model_open_memory(p, (size_t)st.st_size, &o, m, err);
        } else if (fd >= 0) {
            close(fd);
        }
    }
#endif
    return lmv_model_open_file(path, &o, m, err);
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

static int cmd_bench(int argc, char **argv) {
    const char *path = NULL;
    int h = 0, w = 0, batch = 1, threads = 0, runs = 10, json = 0, i;
    double t0, open_mapped, open_verified, *times;
    size_t px, mem;
    lmv_model *m;
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
    if (open_model(path, 1, &m, &err) != LMV_OK) return fail(path, &err);
    open_verified = now_ms() - t0;
    lmv_model_close(m);
    t0 = now_ms();
    if (open_model(path, 0, &m, &err) != LMV_OK) return fail(path, &err);
    open_mapped = now_ms() - t0;
    in = lmv_model_info(m);
    if (!h) { h = in->img_h; w = in->img_w; }
    so = lmv_session_options_default();
    so.max_h = h;
    so.max_w = w;
    so.threads = threads;
    if (lmv_session_memory(m, &so, &mem, &err) != LMV_OK || lmv_session_create(m, &so, &s, &err) != LMV_OK)
        return fail("session", &err);
    px = (size_t)batch * in->in_chans * h * w;
    x = (float *)malloc(px * sizeof(float));
    y = (float *)malloc((size_t)batch * (size_t)(in->num_features > in->num_classes ? in->num_features : in->num_classes) * sizeof(float));
    times = (double *)malloc(sizeof(double) * (size_t)runs);
    if (!x || !y || !times) return 1;
    for (i = 0; i < (int)px; i++) {
        seed = seed * 1664525u + 1013904223u;
        x[i] = (float)((seed >> 8) & 0xFFFF) / 32768.0f - 1.0f;
    }
    for (i = -1; i < runs; i++) {
        t0 = now_ms();
        if (lmv_run_features(s, x, batch, h, w, y, &err) != LMV_OK) return fail("run", &err);
        if (i >= 0) times[i] = now_ms() - t0;
    }
    qsort(times, (size_t)runs, sizeof(double), cmp_double);
    {
        double med = runs % 2 ? times[runs / 2] : 0.5 * (times[runs / 2 - 1] + times[runs / 2]);
        double gmac = lmv_session_macs(s) / 1e9;
        if (json)
            printf("{\"model\": \"%s\", \"arch\": \"%s\", \"params\": %zu, \"weight_bytes\": %zu, \"h\": %d, \"w\": %d, "
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
    lmv_model_close(m);
    return 0;
}

static int cmd_info(int argc, char **argv) {
    lmv_model *m;
    lmv_error err;
    const lmv_model_info *in;
    lmv_config_entry e;
    const char *interp[] = {"nearest", "bilinear", "bicubic"};
    int i, j;
    if (argc != 1) {
        fputs(usage, stderr);
        return 2;
    }
    if (open_model(argv[0], 1, &m, &err) != LMV_OK) return fail(argv[0], &err);
    in = lmv_model_info(m);
    printf("model        %s\n", in->name);
    printf("family       %s (from %s)\n", in->arch, in->source);
    printf("input        %d x %d x %d\n", in->in_chans, in->img_h, in->img_w);
    printf("classes      %d%s\n", in->num_classes, in->has_labels ? " (labelled)" : "");
    printf("features     %d\n", in->num_features);
    printf("parameters   %zu (%.1f MB of weights)\n", in->num_params, in->weight_bytes / 1e6);
    printf("preprocess   resize %d %s, crop %dx%d (crop_pct %.3f), mean %.4f %.4f %.4f, std %.4f %.4f %.4f\n",
           in->preprocess.resize, interp[in->preprocess.interpolation], in->preprocess.crop_h, in->preprocess.crop_w,
           in->preprocess.crop_pct, in->preprocess.mean[0], in->preprocess.mean[1], in->preprocess.mean[2],
           in->preprocess.std[0], in->preprocess.std[1], in->preprocess.std[2]);
    printf("config\n");
    for (i = 0; lmv_model_config(m, i, &e); i++) {
        if (e.type == 4) continue;
        printf("  %-20s ", e.key);
        if (e.type == 3) printf("%s", e.string);
        for (j = 0; j < e.count && e.type <= 2; j++)
            e.type == 1 ? printf("%s%d", j ? " " : "", e.ints[j]) : printf("%s%g", j ? " " : "", e.floats[j]);
        printf("\n");
    }
    if (in->has_labels) {
        printf("labels       ");
        for (i = 0; i < in->num_classes && i < 5; i++) printf("%s%s", i ? ", " : "", lmv_model_label(m, i));
        printf(in->num_classes > 5 ? ", ... (%d)\n" : "\n", in->num_classes);
    }
    lmv_model_close(m);
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
    int npaths = 0, features = 0, threads = 0, verify = 1, i, n, h, w, outdim, shape[2];
    const char *trace = NULL, *attention = NULL;
    void *buf;
    size_t size;
    lmv_npy npy;
    lmv_model *m;
    lmv_session *s;
    lmv_session_options so;
    lmv_error err;
    float *out;
    trace_dir td;
    for (i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--features")) features = 1;
        else if (!strcmp(argv[i], "--no-verify")) verify = 0;
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
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
    if (open_model(paths[0], verify, &m, &err) != LMV_OK) return fail(paths[0], &err);
    buf = read_file(paths[1], &size);
    if (!buf) {
        fprintf(stderr, "lmv: %s: %s\n", paths[1], strerror(errno));
        return 1;
    }
    if (lmv_npy_parse(buf, size, &npy, &err) != LMV_OK) return fail(paths[1], &err);
    if (npy.ndim != 4 || npy.shape[1] != lmv_model_info(m)->in_chans) {
        fprintf(stderr, "lmv: %s: expected a float32 array of shape (N, %d, H, W)\n", paths[1], lmv_model_info(m)->in_chans);
        return 1;
    }
    n = npy.shape[0];
    h = npy.shape[2];
    w = npy.shape[3];
    so = lmv_session_options_default();
    so.max_h = h;
    so.max_w = w;
    so.threads = threads;
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
    outdim = features ? lmv_model_info(m)->num_features : lmv_model_info(m)->num_classes;
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
    lmv_model_close(m);
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
    fprintf(stderr, "lmv: unknown command '%s'\n\n%s", argv[1], usage);
    return 2;
}
