/* classify - the top classes of JPEG photos, with any converted model.

     build/classify MODEL.lmv PATH... [--top K] [--threads N] [--ignore-exif] [--json]

   A PATH is a JPEG file or a folder (every JPEG under it, recursively, in sorted order; folders
   need a POSIX system). Each image goes through the model's own eval transform (the resize, crop
   and normalisation its training used, stored in the .lmv file), so the answer is the one PyTorch
   gives for the same file through Pillow and timm/torchvision. Exit status: 0 when every image was
   classified, 1 when some failed (the others are still printed), 2 for a usage error. */
#if (defined(__unix__) || defined(__APPLE__)) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L /* clock_gettime, lstat, opendir */
#endif
#define LEMEVIT_IMPLEMENTATION
#include "../lemevit.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__unix__) || defined(__APPLE__)
#include <dirent.h>
#include <sys/stat.h>
#define HAVE_FOLDERS 1
#endif

#define MAX_TOP 64

static const char usage[] =
    "usage: classify MODEL.lmv PATH... [--top K] [--threads N] [--ignore-exif] [--json]\n"
    "                [--max-pixels N]\n"
    "  PATH            a JPEG file, or a folder: every JPEG under it (by .jpg/.jpeg name or JPEG\n"
    "                  signature), recursively, in sorted order; other files are counted as skipped\n"
    "  --top K         how many classes to print per image (1..64, default 5)\n"
    "  --threads N     threads to use (default 0: all)\n"
    "  --ignore-exif   do not rotate images by their EXIF orientation (PIL's Image.open\n"
    "                  does not either)\n"
    "  --max-pixels N  refuse larger images (default 178956970, Pillow's bound)\n"
    "  --json          one JSON object per image on stdout (JSON Lines):\n"
    "                  {\"path\", \"top\": [{\"index\", \"label\", \"prob\"}...], \"ms\"} or\n"
    "                  {\"path\", \"error\", \"code\"} for an image that failed\n"
    "  -h, --help      print this help\n"
    "environment: LEMEVIT_SIMD=portable|avx2|avx512 runs other kernels than the best this CPU has\n"
    "exit status: 0 every image classified, 1 some failed (the others are still printed), 2 usage error\n";

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* ---- the list of images to classify ---------------------------------------------------------- */

typedef struct path_list {
    char **paths;
    int count, cap;
} path_list;

/* realloc that ends the program when memory runs out: a command-line tool has nothing better to do. */
static void *xrealloc(void *p, size_t size) {
    p = realloc(p, size);
    if (!p) {
        fprintf(stderr, "classify: out of memory\n");
        exit(1);
    }
    return p;
}

static void list_add(path_list *l, const char *path) {
    if (l->count == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 16;
        l->paths = (char **)xrealloc(l->paths, sizeof(char *) * (size_t)l->cap);
    }
    l->paths[l->count] = (char *)xrealloc(NULL, strlen(path) + 1);
    strcpy(l->paths[l->count++], path);
}

static void list_free(path_list *l) {
    int i;
    for (i = 0; i < l->count; i++) free(l->paths[i]);
    free(l->paths);
    l->paths = NULL;
    l->count = l->cap = 0;
}

#ifdef HAVE_FOLDERS
static int compare_paths(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* "dir/name", without doubling a trailing slash; free() the result. */
static char *join_path(const char *dir, const char *name) {
    size_t n = strlen(dir);
    char *p = (char *)xrealloc(NULL, n + strlen(name) + 2);
    strcpy(p, dir);
    if (n == 0 || dir[n - 1] != '/') strcat(p, "/");
    strcat(p, name);
    return p;
}

/* A JPEG by its name (.jpg, .jpeg in any case) or, failing that, by its first bytes (FF D8 FF). */
static int looks_like_jpeg(const char *path, const char *name) {
    const char *dot = strrchr(name, '.');
    unsigned char sig[3];
    FILE *f;
    int yes;
    if (dot) {
        char ext[6];
        int i;
        for (i = 0; dot[i] && i < 5; i++) ext[i] = (char)(dot[i] >= 'A' && dot[i] <= 'Z' ? dot[i] + 32 : dot[i]);
        ext[i] = 0;
        if (!dot[i] && (!strcmp(ext, ".jpg") || !strcmp(ext, ".jpeg"))) return 1;
    }
    f = fopen(path, "rb");
    if (!f) return 0;
    yes = fread(sig, 1, 3, f) == 3 && sig[0] == 0xFF && sig[1] == 0xD8 && sig[2] == 0xFF;
    fclose(f);
    return yes;
}

/* Adds every JPEG under `dir` to `images`, recursively (unsorted), counting the other entries in
   *skipped. Symbolic links to folders are not followed (so a link loop cannot recurse forever).
   Returns 0 when a folder could not be read (after saying so on stderr). */
static int walk_folder(const char *dir, path_list *images, int *skipped) {
    path_list names = {NULL, 0, 0};
    struct dirent *e;
    int i, ok = 1;
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "classify: %s: cannot read the folder: %s\n", dir, strerror(errno));
        return 0;
    }
    while ((e = readdir(d)) != NULL) /* names first, so no folder stays open while we recurse */
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) list_add(&names, e->d_name);
    closedir(d);
    for (i = 0; i < names.count; i++) {
        char *path = join_path(dir, names.paths[i]);
        struct stat st;
        if (lstat(path, &st) != 0 || (S_ISLNK(st.st_mode) && (stat(path, &st) != 0 || S_ISDIR(st.st_mode))))
            (*skipped)++; /* gone, a broken link or a link to a folder */
        else if (S_ISDIR(st.st_mode))
            ok &= walk_folder(path, images, skipped);
        else if (S_ISREG(st.st_mode) && looks_like_jpeg(path, names.paths[i]))
            list_add(images, path);
        else
            (*skipped)++;
        free(path);
    }
    list_free(&names);
    return ok;
}
#endif

/* Adds one command-line PATH: a file as it is, a folder as the sorted JPEGs under it.
   Returns 0 when a folder could not be read or held no JPEG (said on stderr). */
static int add_path(const char *path, path_list *images) {
#ifdef HAVE_FOLDERS
    struct stat st;
    int first = images->count, skipped = 0, ok;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) {
        list_add(images, path); /* a file, or nothing: classifying it says what is wrong */
        return 1;
    }
    ok = walk_folder(path, images, &skipped);
    if (images->count > first)
        qsort(images->paths + first, (size_t)(images->count - first), sizeof(char *), compare_paths);
    if (skipped == 1) fprintf(stderr, "classify: %s: skipped 1 entry that is not a JPEG image\n", path);
    if (skipped > 1) fprintf(stderr, "classify: %s: skipped %d entries that are not JPEG images\n", path, skipped);
    if (images->count == first) {
        fprintf(stderr, "classify: %s: no JPEG images in this folder\n", path);
        ok = 0;
    }
    return ok;
#else
    size_t n = strlen(path);
    if (n && (path[n - 1] == '/' || path[n - 1] == '\\')) {
        fprintf(stderr, "classify: %s: folders need a POSIX system; pass files\n", path);
        return 0;
    }
    list_add(images, path);
    return 1;
#endif
}

/* ---- output ------------------------------------------------------------------------------- */

/* The name of an lmv_result, as written in lemevit.h. */
static const char *result_name(lmv_result r) {
    switch (r) {
    case LMV_OK: return "LMV_OK";
    case LMV_ERR_INVALID_ARGUMENT: return "LMV_ERR_INVALID_ARGUMENT";
    case LMV_ERR_OUT_OF_MEMORY: return "LMV_ERR_OUT_OF_MEMORY";
    case LMV_ERR_IO: return "LMV_ERR_IO";
    case LMV_ERR_BAD_MAGIC: return "LMV_ERR_BAD_MAGIC";
    case LMV_ERR_VERSION: return "LMV_ERR_VERSION";
    case LMV_ERR_ENDIAN: return "LMV_ERR_ENDIAN";
    case LMV_ERR_TRUNCATED: return "LMV_ERR_TRUNCATED";
    case LMV_ERR_CHECKSUM: return "LMV_ERR_CHECKSUM";
    case LMV_ERR_CORRUPT: return "LMV_ERR_CORRUPT";
    case LMV_ERR_MISSING_TENSOR: return "LMV_ERR_MISSING_TENSOR";
    case LMV_ERR_SHAPE: return "LMV_ERR_SHAPE";
    case LMV_ERR_UNSUPPORTED: return "LMV_ERR_UNSUPPORTED";
    case LMV_ERR_INPUT_SIZE: return "LMV_ERR_INPUT_SIZE";
    case LMV_ERR_ALIGNMENT: return "LMV_ERR_ALIGNMENT";
    case LMV_ERR_LIMIT: return "LMV_ERR_LIMIT";
    case LMV_ERR_BAD_INPUT: return "LMV_ERR_BAD_INPUT";
    case LMV_ERR_IMAGE: return "LMV_ERR_IMAGE";
    }
    return "LMV_ERR_UNKNOWN";
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

/* A JSON string. Well-formed UTF-8 is copied as it is; each ill-formed piece (a file name in
   another encoding) becomes one U+FFFD, which every JSON parser accepts. Quotes, backslashes and
   control characters are escaped. */
static void json_string(const char *str) {
    const unsigned char *s = (const unsigned char *)str;
    putchar('"');
    while (*s) {
        int n = utf8_length(s);
        if (n < 0) { fputs("\\ufffd", stdout); s += -n; }
        else if (n > 1) { fwrite(s, 1, (size_t)n, stdout); s += n; }
        else if (*s == '"' || *s == '\\') { putchar('\\'); putchar(*s++); }
        else if (*s == '\n') { fputs("\\n", stdout); s++; }
        else if (*s == '\t') { fputs("\\t", stdout); s++; }
        else if (*s == '\r') { fputs("\\r", stdout); s++; }
        else if (*s < 0x20 || *s == 0x7F) printf("\\u%04x", *s++);
        else putchar(*s++);
    }
    putchar('"');
}

static void print_json_result(const char *path, const lmv_prediction *top, int n, double ms) {
    int j;
    printf("{\"path\": ");
    json_string(path);
    printf(", \"top\": [");
    for (j = 0; j < n; j++) {
        printf("%s{\"index\": %d, \"label\": ", j ? ", " : "", top[j].index);
        if (top[j].label) json_string(top[j].label);
        else printf("null");
        printf(", \"prob\": %.9g}", top[j].prob); /* %.9g: the float comes back exactly */
    }
    printf("], \"ms\": %.3f}\n", ms);
}

static void print_json_error(const char *path, const lmv_error *err) {
    printf("{\"path\": ");
    json_string(path);
    printf(", \"error\": ");
    json_string(err->message);
    printf(", \"code\": \"%s\"}\n", result_name(err->code));
}

static void print_text_result(const char *path, const lmv_prediction *top, int n, double ms) {
    int j;
    printf("%s (%.1f ms)\n", path, ms);
    for (j = 0; j < n; j++) {
        if (top[j].label) printf("  %6.2f%%  %s\n", 100.0 * top[j].prob, top[j].label);
        else printf("  %6.2f%%  class %d\n", 100.0 * top[j].prob, top[j].index);
    }
}

/* ---- the command line --------------------------------------------------------------------- */

/* One line that says what is wrong on the command line; the caller exits with status 2. */
static void usage_error(const char *fmt, ...) {
    va_list ap;
    fputs("classify: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\nrun 'classify --help' for usage\n", stderr);
}

/* The whole number after the option at argv[*i], from lo to hi; 0 after saying what is wrong. */
static int number_option(int argc, char **argv, int *i, long lo, long hi, long *out) {
    const char *option = argv[*i], *s;
    char *end;
    if (*i + 1 == argc) {
        usage_error("%s needs a number from %ld to %ld", option, lo, hi);
        return 0;
    }
    s = argv[++*i];
    errno = 0;
    *out = strtol(s, &end, 10);
    if (end == s || *end || errno || *out < lo || *out > hi) {
        usage_error("%s takes a whole number from %ld to %ld, not '%s'", option, lo, hi, s);
        return 0;
    }
    return 1;
}

int main(int argc, char **argv) {
    lmv_model *model = NULL;
    lmv_session *sess = NULL;
    lmv_session_options so = lmv_session_options_default();
    lmv_image_options io = lmv_image_options_default();
    lmv_prediction top[MAX_TOP];
    lmv_error err;
    path_list images = {NULL, 0, 0};
    char **args = (char **)xrealloc(NULL, sizeof(char *) * (size_t)argc); /* the model and the PATHs */
    long v;
    int k = 5, json = 0, nargs = 0, options_done = 0, failed = 0, rc = 2, i, n;

    for (i = 1; i < argc; i++) { /* options may come anywhere; "--" ends them */
        const char *a = argv[i];
        if (options_done || a[0] != '-' || !a[1]) args[nargs++] = argv[i];
        else if (!strcmp(a, "--")) options_done = 1;
        else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(usage, stdout);
            rc = 0;
            goto done;
        } else if (!strcmp(a, "--ignore-exif")) io.ignore_orientation = 1;
        else if (!strcmp(a, "--json")) json = 1;
        else if (!strcmp(a, "--top")) {
            if (!number_option(argc, argv, &i, 1, MAX_TOP, &v)) goto done;
            k = (int)v;
        } else if (!strcmp(a, "--threads")) {
            if (!number_option(argc, argv, &i, 0, 4096, &v)) goto done;
            so.threads = (int)v;
        } else if (!strcmp(a, "--max-pixels")) {
            if (!number_option(argc, argv, &i, 1, 2147483647, &v)) goto done;
            io.max_pixels = (size_t)v;
        } else {
            usage_error("unknown option '%s'", a);
            goto done;
        }
    }
    if (nargs < 2) {
        if (argc == 1) fputs(usage, stderr);
        else if (nargs == 0) usage_error("no model given; the first argument is the .lmv file");
        else usage_error("no images given; pass JPEG files or folders after the model");
        goto done;
    }
    for (i = 1; i < nargs; i++)
        if (!add_path(args[i], &images)) failed = 1;

    rc = 1;
    if (lmv_model_open_file(args[0], NULL, &model, &err) != LMV_OK) {
        fprintf(stderr, "classify: %s: %s\n", args[0], err.message);
        goto done;
    }
    {   /* LEMEVIT_SIMD=portable|avx2|avx512|neon: other kernels than the best this CPU runs */
        const char *e = getenv("LEMEVIT_SIMD");
        int s;
        for (s = LMV_SIMD_AUTO; e && *e && s <= LMV_SIMD_NEON && strcmp(e, lmv_simd_name((lmv_simd)s)); s++) {}
        if (s > LMV_SIMD_NEON) {
            fprintf(stderr, "classify: LEMEVIT_SIMD is '%s'; give auto, portable, avx2, avx512 or neon\n", e);
            rc = 2;
            goto done;
        }
        if (e && *e) so.simd = (lmv_simd)s;
    }
    if (lmv_session_create(model, &so, &sess, &err) != LMV_OK) {
        fprintf(stderr, "classify: %s\n", err.message);
        goto done;
    }
    for (i = 0; i < images.count; i++) {
        const char *path = images.paths[i];
        double t0 = now_ms();
        if (lmv_classify_file(sess, path, &io, k, top, &n, &err) != LMV_OK) {
            if (json) print_json_error(path, &err);
            else fprintf(stderr, "classify: %s: %s\n", path, err.message);
            failed = 1;
        } else if (json) {
            print_json_result(path, top, n, now_ms() - t0);
        } else {
            print_text_result(path, top, n, now_ms() - t0);
        }
        fflush(stdout); /* a line at a time, for whoever reads the pipe */
    }
    rc = failed;
done:
    lmv_session_destroy(sess);
    lmv_model_close(model);
    list_free(&images);
    free(args);
    return rc;
}
