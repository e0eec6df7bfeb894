/* classify - the top classes of JPEG and PNG photos, with any converted model.

     build/classify MODEL.lmv PATH... [--top K] [--threads N] [--ignore-exif] [--json]

   A PATH is a JPEG or PNG file or a folder (every JPEG and PNG under it, recursively, in sorted order; folders
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
    "  PATH            a JPEG or PNG file, or a folder: every JPEG and PNG under it (by .jpg/.jpeg/\n"
    "                  .png name or JPEG/PNG signature), recursively, in sorted order; other files\n"
    "                  are counted as skipped\n"
    "  --top K         how many classes to print per image (1..64, default 5)\n"
    "  --threads N     threads, at most (default 0: all); fewer while faster\n"
    "  --ignore-exif   do not rotate images by their EXIF orientation (PIL's Image.open\n"
    "                  does not either)\n"
    "  --max-pixels N  refuse larger images (default 178956970, Pillow's bound)\n"
    "  --json          one JSON object per image on stdout (JSON Lines):\n"
    "                  {\"path\", \"top\": [{\"index\", \"label\", \"prob\"}...], \"ms\"} or\n"
    "                  {\"path\", \"error\", \"code\"} for an image that failed\n"
    "  -h, --help      print this help\n"
    "environment: LEMEVIT_SIMD=portable|avx2|avx512|avx512-novnni runs other kernels than the best this CPU has\n"
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
    if (l->count == l->cap) l->paths = (char **)xrealloc(l->paths, sizeof(char *) * (size_t)(l->cap = 2 * l->cap + 16));
    l->paths[l->count] = strcpy((char *)xrealloc(NULL, strlen(path) + 1), path);
    l->count++;
}

static void list_free(path_list *l) {
    while (l->count) free(l->paths[--l->count]);
    free(l->paths);
}

#ifdef HAVE_FOLDERS
static int compare_paths(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A JPEG or PNG by its name (.jpg, .jpeg, .png in any case) or, failing that, by its first bytes
   (FF D8 FF, or 89 'PNG'); which decoder reads it is decided by the bytes alone. */
static int looks_like_image(const char *path, const char *name) {
    const char *dot = strrchr(name, '.');
    unsigned char sig[4] = {0, 0, 0, 0};
    char ext[6] = "";
    FILE *f;
    int i;
    for (i = 0; dot && dot[i] && i < 5; i++) ext[i] = (char)(dot[i] >= 'A' && dot[i] <= 'Z' ? dot[i] + 32 : dot[i]);
    if (dot && !dot[i] && (!strcmp(ext, ".jpg") || !strcmp(ext, ".jpeg") || !strcmp(ext, ".png"))) return 1;
    if (!(f = fopen(path, "rb"))) return 0;
    i = fread(sig, 1, 4, f) == 4 && ((sig[0] == 0xFF && sig[1] == 0xD8 && sig[2] == 0xFF) ||
                                     (sig[0] == 0x89 && sig[1] == 'P' && sig[2] == 'N' && sig[3] == 'G'));
    fclose(f);
    return i;
}

/* Adds every JPEG and PNG under `dir` to `images`, recursively (unsorted), counting the other entries in
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
        size_t n = strlen(dir);
        char *path = (char *)xrealloc(NULL, n + strlen(names.paths[i]) + 2);
        struct stat st;
        sprintf(path, "%s%s%s", dir, n && dir[n - 1] == '/' ? "" : "/", names.paths[i]); /* no doubled slash */
        if (lstat(path, &st) != 0 || (S_ISLNK(st.st_mode) && (stat(path, &st) != 0 || S_ISDIR(st.st_mode))))
            (*skipped)++; /* gone, a broken link or a link to a folder */
        else if (S_ISDIR(st.st_mode))
            ok &= walk_folder(path, images, skipped);
        else if (S_ISREG(st.st_mode) && looks_like_image(path, names.paths[i]))
            list_add(images, path);
        else
            (*skipped)++;
        free(path);
    }
    list_free(&names);
    return ok;
}
#endif

/* Adds one command-line PATH: a file as it is, a folder as the sorted JPEGs and PNGs under it.
   Returns 0 when a folder could not be read or held no image (said on stderr). */
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
    if (skipped)
        fprintf(stderr, "classify: %s: skipped %d %s not JPEG or PNG images\n", path, skipped,
                skipped == 1 ? "entry that is" : "entries that are");
    if (images->count == first) {
        fprintf(stderr, "classify: %s: no JPEG or PNG images in this folder\n", path);
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

/* How many bytes at s make one UTF-8 character (1 to 4), or, negated, how many make one
   ill-formed piece: a byte that cannot start a character, or a sequence's start that breaks off
   (its "maximal subpart", Unicode's rule, which Python's bytes.decode("utf-8", "replace") and
   web browsers follow). Overlong forms, surrogates and code points above U+10FFFF are ill-formed.
   Never reads past the terminating 0, which is not a continuation byte. */
static int utf8_length(const unsigned char *s) {
    int n = s[0] < 0x80 ? 1 : s[0] < 0xC2 ? -1 : s[0] < 0xE0 ? 2 : s[0] < 0xF0 ? 3 : s[0] < 0xF5 ? 4 : -1, k;
    unsigned lo = s[0] == 0xE0 ? 0xA0 : s[0] == 0xF0 ? 0x90 : 0x80;  /* not overlong */
    unsigned hi = s[0] == 0xED ? 0x9F : s[0] == 0xF4 ? 0x8F : 0xBF;  /* no surrogate, nothing past U+10FFFF */
    if (n <= 1) return n;
    if (s[1] < lo || s[1] > hi) return -1;
    for (k = 2; k < n; k++)
        if ((s[k] & 0xC0) != 0x80) return -k;
    return n;
}

/* A JSON string. Well-formed UTF-8 is copied as it is; each ill-formed piece (a file name in
   another encoding) becomes one U+FFFD, which every JSON parser accepts. Quotes, backslashes and
   control characters are escaped. tools/lmv.c has its own copy of this and of utf8_length(): this
   example is one file plus lemevit.h for a user to copy, and JSON output is not the inference
   library's business, so neither belongs in lemevit.h. */
static void json_string(const char *str) {
    const unsigned char *s = (const unsigned char *)str;
    putchar('"');
    while (*s) {
        int n = utf8_length(s);
        if (n < 0) { fputs("\\ufffd", stdout); s += -n; }
        else if (n > 1) { fwrite(s, 1, (size_t)n, stdout); s += n; }
        else if (*s == '"' || *s == '\\') { putchar('\\'); putchar(*s++); }
        else if (*s < 0x20 || *s == 0x7F) printf("\\u%04x", *s++); /* \n, \t ... as \u000a, \u0009 */
        else putchar(*s++);
    }
    putchar('"');
}

/* One image's answer (n rows of top) or its error, as text or as one JSON line. */
static void print_result(int json, const char *path, const lmv_prediction *top, int n, double ms, const lmv_error *err) {
    int j;
    if (!json) {
        if (!top) fprintf(stderr, "classify: %s: %s\n", path, err->message);
        else printf("%s (%.1f ms)\n", path, ms);
        for (j = 0; top && j < n; j++) {
            if (top[j].label) printf("  %6.2f%%  %s\n", 100.0 * top[j].prob, top[j].label);
            else printf("  %6.2f%%  class %d\n", 100.0 * top[j].prob, top[j].index);
        }
        return;
    }
    printf("{\"path\": ");
    json_string(path);
    if (!top) {
        printf(", \"error\": ");
        json_string(err->message);
        printf(", \"code\": \"%s\"}\n", lmv_result_name(err->code));
        return;
    }
    printf(", \"top\": [");
    for (j = 0; j < n; j++) {
        printf("%s{\"index\": %d, \"label\": ", j ? ", " : "", top[j].index);
        if (top[j].label) json_string(top[j].label);
        else printf("null");
        printf(", \"prob\": %.9g}", top[j].prob); /* %.9g: the float comes back exactly */
    }
    printf("], \"ms\": %.3f}\n", ms);
}

/* ---- the command line --------------------------------------------------------------------- */

/* One line that says what is wrong on the command line; returns 2, the exit status for it. */
static int usage_error(const char *fmt, ...) {
    va_list ap;
    fputs("classify: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\nrun 'classify --help' for usage\n", stderr);
    return 2;
}

/* The whole number after the option at argv[*i], from lo to hi; a usage error (exit 2) otherwise. */
static long number_option(int argc, char **argv, int *i, long lo, long hi) {
    const char *option = argv[*i], *s = *i + 1 < argc ? argv[++*i] : NULL;
    char *end;
    long v;
    if (!s) exit(usage_error("%s needs a number from %ld to %ld", option, lo, hi));
    errno = 0;
    v = strtol(s, &end, 10);
    if (end == s || *end || errno || v < lo || v > hi)
        exit(usage_error("%s takes a whole number from %ld to %ld, not '%s'", option, lo, hi, s));
    return v;
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
    int k = 5, json = 0, nargs = 0, options_done = 0, failed = 0, rc = 2, i, n;

    for (i = 1; i < argc; i++) { /* options may come anywhere; "--" ends them */
        const char *a = argv[i];
        if (options_done || a[0] != '-' || !a[1]) args[nargs++] = argv[i];
        else if (!strcmp(a, "--")) options_done = 1;
        else if (!strcmp(a, "-h") || !strcmp(a, "--help")) { fputs(usage, stdout); rc = 0; goto done; }
        else if (!strcmp(a, "--ignore-exif")) io.ignore_orientation = 1;
        else if (!strcmp(a, "--json")) json = 1;
        else if (!strcmp(a, "--top")) k = (int)number_option(argc, argv, &i, 1, MAX_TOP);
        else if (!strcmp(a, "--threads")) so.threads = (int)number_option(argc, argv, &i, 0, 4096);
        else if (!strcmp(a, "--max-pixels")) io.max_pixels = (size_t)number_option(argc, argv, &i, 1, 2147483647);
        else {
            usage_error("unknown option '%s'", a);
            goto done;
        }
    }
    if (nargs < 2) {
        if (argc == 1) fputs(usage, stderr);
        else if (nargs == 0) usage_error("no model given; the first argument is the .lmv file");
        else usage_error("no images given; pass JPEG or PNG files or folders after the model");
        goto done;
    }
    for (i = 1; i < nargs; i++)
        if (!add_path(args[i], &images)) failed = 1;

    rc = 1;
    if (lmv_model_open_file(args[0], NULL, &model, &err) != LMV_OK) {
        fprintf(stderr, "classify: %s: %s\n", args[0], err.message);
        goto done;
    }
    {   /* LEMEVIT_SIMD=portable|avx2|avx512|avx512-novnni|neon: other kernels than the best this CPU runs */
        const char *e = getenv("LEMEVIT_SIMD");
        int s;
        for (s = LMV_SIMD_AUTO; e && *e && s <= LMV_SIMD_AVX512_NOVNNI && strcmp(e, lmv_simd_name((lmv_simd)s)); s++) {}
        if (s > LMV_SIMD_AVX512_NOVNNI) {
            fprintf(stderr, "classify: LEMEVIT_SIMD is '%s'; give auto, portable, avx2, avx512, avx512-novnni or neon\n", e);
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
        int ok = lmv_classify_file(sess, path, &io, k, top, &n, &err) == LMV_OK;
        print_result(json, path, ok ? top : NULL, n, now_ms() - t0, &err);
        failed |= !ok;
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
