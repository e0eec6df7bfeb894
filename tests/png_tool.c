/* png_tool - drives the PNG decoder of lemevit.h for tests/test_png.py.

   png_tool [--max-pixels N] [--max-memory BYTES] [--ignore-orientation] OUTDIR FILE...

   Each FILE is decoded with lmv_image_load_file (the decoder picked by the first bytes, not the
   name) and, when that works, written to OUTDIR/<index>.pnm (P5 gray, P6 RGB). For a PNG the
   tool also checks the exact memory query: lmv_image_png_info (and lmv_image_probe) must agree
   with the decode, a
   decode in an lmv_arena of exactly decode_memory bytes must give the same pixels, and one of
   16 bytes less must fail with LMV_ERR_OUT_OF_MEMORY. One line per file:
   "OK w h channels", "ERROR CODE message", or "BAD what" when the decoder broke its contract.
   The exit status is 0 unless a usage or I/O problem stopped the tool. */
#define LEMEVIT_IMPLEMENTATION
#include "../lemevit.h"
#include "test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int write_pnm(const char *path, const lmv_image *img) {
    FILE *f = fopen(path, "wb");
    size_t n = (size_t)img->width * img->height * img->channels;
    if (!f) return 0;
    fprintf(f, "P%c\n%d %d\n255\n", img->channels == 3 ? '6' : '5', img->width, img->height);
    if (fwrite(img->pixels, 1, n, f) != n) {
        fclose(f);
        return 0;
    }
    return fclose(f) == 0;
}

/* The memory contract of one PNG that decoded: returns NULL when it holds, else what broke. */
static const char *check_arena(const unsigned char *data, size_t n, const lmv_image_options *opt, const lmv_image *img) {
    lmv_image_info info;
    lmv_image a_img;
    lmv_image_options o = *opt;
    lmv_error err;
    lmv_arena arena;
    unsigned char *buf;
    const char *bad = NULL;
    lmv_image_info probed;
    if (lmv_image_png_info(data, n, opt, &info, &err) != LMV_OK) return "lmv_image_png_info failed on a file that decodes";
    if (lmv_image_probe(data, n, opt, &probed, &err) != LMV_OK || memcmp(&probed, &info, sizeof info) != 0)
        return "lmv_image_probe disagrees with lmv_image_png_info";
    if (info.width != img->width || info.height != img->height || info.channels != img->channels)
        return "lmv_image_png_info disagrees with the decode";
    buf = (unsigned char *)malloc(info.decode_memory);
    if (!buf) return NULL;
    lmv_arena_init(&arena, buf, info.decode_memory);
    o.allocator = lmv_arena_allocator(&arena);
    if (lmv_image_load_png_memory(data, n, &o, &a_img, &err) != LMV_OK)
        bad = "the decode does not fit in an arena of decode_memory bytes";
    else if (memcmp(a_img.pixels, img->pixels, (size_t)img->width * img->height * img->channels) != 0)
        bad = "the decode in an arena gives other pixels";
    lmv_arena_init(&arena, buf, info.decode_memory - 16);
    if (!bad && lmv_image_load_png_memory(data, n, &o, &a_img, &err) != LMV_ERR_OUT_OF_MEMORY)
        bad = "decode_memory is not tight: 16 bytes less still decodes";
    free(buf);
    return bad;
}

int main(int argc, char **argv) {
    lmv_image_options opt = lmv_image_options_default();
    int i = 1, k;
    char path[4096];
    while (i + 1 < argc && !strncmp(argv[i], "--", 2)) {
        if (!strcmp(argv[i], "--max-pixels")) opt.max_pixels = (size_t)strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--max-memory")) opt.max_memory = (size_t)strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--ignore-orientation")) {
            opt.ignore_orientation = 1;
            i += 1;
            continue;
        } else break;
        i += 2;
    }
    if (i >= argc) {
        fprintf(stderr, "usage: png_tool [--max-pixels N] [--max-memory BYTES] [--ignore-orientation] OUTDIR FILE...\n");
        return 1;
    }
    for (k = i + 1; k < argc; k++) {
        lmv_image img;
        lmv_error err;
        lmv_result r = lmv_image_load_file(argv[k], &opt, &img, &err);
        if (r != LMV_OK) {
            if (img.pixels) printf("BAD a failed decode left pixels behind\n");
            else printf("ERROR %s %s\n", lmv_result_name(r), err.message);
        } else {
            size_t n;
            unsigned char *data = tu_read_file(argv[k], &n);
            const char *bad = NULL;
            if (!data) return 1;
            if (n >= 4 && data[0] == 0x89 && data[1] == 'P') bad = check_arena(data, n, &opt, &img);
            free(data);
            snprintf(path, sizeof path, "%s/%d.pnm", argv[i], k - i - 1);
            if (!write_pnm(path, &img)) return 1;
            if (bad) printf("BAD %s\n", bad);
            else printf("OK %d %d %d\n", img.width, img.height, img.channels);
            lmv_image_free(&img);
        }
    }
    return 0;
}
