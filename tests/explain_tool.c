/* explain_tool - drives the heat-map overlay and the PNG encoder of lemevit.h for
   tests/test_explain.py.

   explain_tool png IN.ppm|IN.pgm OUT.png
       lmv_image_encode_png into a block of exactly lmv_image_png_size() bytes (so ASan sees any
       write past it), lmv_image_write_png to OUT.png.file, and a buffer one byte short (it must be
       refused, untouched); prints "OK SIZE SAME SHORT-CODE UNTOUCHED"
   explain_tool overlay IN.ppm MAP.npy ALPHA OUT.ppm
       lmv_image_overlay_heatmap with a 2-D float32 map; prints "OK" or "ERROR CODE message"
   explain_tool refusals
       one line per refused call: "NAME CODE" */
#define LEMEVIT_IMPLEMENTATION
#include "../lemevit.h"
#include "test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* a binary PPM/PGM as written by Pillow (no comments) */
static int read_pnm(const char *path, lmv_image *img) {
    FILE *f = fopen(path, "rb");
    char magic[3] = {0};
    int maxval, ok;
    size_t n;
    memset(img, 0, sizeof *img);
    if (!f) return 0;
    ok = fscanf(f, "%2s %d %d %d", magic, &img->width, &img->height, &maxval) == 4 && fgetc(f) != EOF &&
         maxval == 255 && (!strcmp(magic, "P5") || !strcmp(magic, "P6"));
    if (ok) {
        img->channels = magic[1] == '6' ? 3 : 1;
        n = (size_t)img->width * img->height * img->channels;
        img->pixels = (unsigned char *)malloc(n);
        ok = fread(img->pixels, 1, n, f) == n;
    }
    fclose(f);
    return ok;
}

static int cmd_png(const char *in, const char *out) {
    lmv_image img;
    lmv_error e;
    size_t need, got = 0, n2 = 0, i;
    unsigned char *buf, *guard, *file;
    int untouched = 1;
    lmv_result small;
    char path[4096];
    FILE *f;
    if (!read_pnm(in, &img)) return printf("ERROR cannot read %s\n", in), 1;
    need = lmv_image_png_size(&img);
    buf = (unsigned char *)malloc(need);
    if (lmv_image_encode_png(&img, buf, need, &got, &e) != LMV_OK)
        return printf("ERROR %s %s\n", lmv_result_name(e.code), e.message), 1;
    f = fopen(out, "wb");
    if (!f || fwrite(buf, 1, got, f) != got || fclose(f) != 0) return printf("ERROR cannot write %s\n", out), 1;
    snprintf(path, sizeof path, "%s.file", out);
    if (lmv_image_write_png(&img, path, &e) != LMV_OK) return printf("ERROR %s %s\n", lmv_result_name(e.code), e.message), 1;
    file = tu_read_file(path, &n2);
    guard = (unsigned char *)malloc(need + 16);
    memset(guard, 0xA5, need + 16);
    small = lmv_image_encode_png(&img, guard, need - 1, NULL, &e);
    for (i = 0; i < need + 16; i++) untouched &= guard[i] == 0xA5;
    printf("OK %zu %d %s %d\n", got, file && n2 == got && memcmp(file, buf, got) == 0, lmv_result_name(small), untouched);
    free(buf);
    free(guard);
    free(file);
    free(img.pixels);
    return 0;
}

static int cmd_overlay(const char *in, const char *map_path, const char *alpha, const char *out) {
    lmv_image img;
    lmv_error e;
    lmv_npy npy;
    size_t n = 0;
    unsigned char *raw = tu_read_file(map_path, &n), *copy;
    FILE *f;
    if (!raw || !read_pnm(in, &img)) return printf("ERROR cannot read the inputs\n"), 1;
    copy = (unsigned char *)malloc(n + 64); /* the floats 4-byte aligned, as lmv_npy_parse wants */
    memcpy(copy, raw, n);
    if (lmv_npy_parse(copy, n, &npy, &e) != LMV_OK || npy.ndim != 2)
        return printf("ERROR %s\n", e.message), 1;
    if (lmv_image_overlay_heatmap(&img, npy.data, npy.shape[1], npy.shape[0], (float)atof(alpha), &e) != LMV_OK)
        return printf("ERROR %s %s\n", lmv_result_name(e.code), e.message), 0;
    f = fopen(out, "wb");
    fprintf(f, "P6\n%d %d\n255\n", img.width, img.height);
    fwrite(img.pixels, 1, (size_t)img.width * img.height * 3, f);
    fclose(f);
    printf("OK\n");
    free(raw);
    free(copy);
    free(img.pixels);
    return 0;
}

static void refuse(const char *name, lmv_result r) { printf("%s %s\n", name, lmv_result_name(r)); }

static int cmd_refusals(void) {
    unsigned char px[12] = {0}, out[256];
    float map[4] = {0, 1, 2, 3}, bad[4] = {0, 1, 2, 3};
    lmv_image rgb, gray, two;
    lmv_error e;
    bad[2] = (float)(1e308 * 10.0); /* infinite */
    rgb.width = 2, rgb.height = 2, rgb.channels = 3, rgb.pixels = px;
    memset(&rgb.allocator, 0, sizeof rgb.allocator);
    gray = rgb, gray.channels = 1;
    two = rgb, two.channels = 2;
    refuse("overlay-gray", lmv_image_overlay_heatmap(&gray, map, 2, 2, 0.5f, &e));
    refuse("overlay-inf", lmv_image_overlay_heatmap(&rgb, bad, 2, 2, 0.5f, &e));
    refuse("overlay-alpha", lmv_image_overlay_heatmap(&rgb, map, 2, 2, 1.5f, &e));
    refuse("overlay-zero-map", lmv_image_overlay_heatmap(&rgb, map, 0, 2, 0.5f, &e));
    refuse("overlay-null-map", lmv_image_overlay_heatmap(&rgb, NULL, 2, 2, 0.5f, &e));
    printf("png-size-two-channels %zu\n", lmv_image_png_size(&two));
    refuse("encode-two-channels", lmv_image_encode_png(&two, out, sizeof out, NULL, &e));
    refuse("encode-null-buffer", lmv_image_encode_png(&rgb, NULL, 0, NULL, &e));
    refuse("write-no-folder", lmv_image_write_png(&rgb, "no/such/folder/x.png", &e));
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 4 && !strcmp(argv[1], "png")) return cmd_png(argv[2], argv[3]);
    if (argc == 6 && !strcmp(argv[1], "overlay")) return cmd_overlay(argv[2], argv[3], argv[4], argv[5]);
    if (argc == 2 && !strcmp(argv[1], "refusals")) return cmd_refusals();
    fprintf(stderr, "usage: explain_tool png IN.ppm OUT.png | overlay IN.ppm MAP.npy ALPHA OUT.ppm | refusals\n");
    return 1;
}
