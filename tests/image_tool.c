/* image_tool - drives the image section of lemevit.h for tests/test_image.py.

   image_tool decode IN.jpg OUT.ppm|OUT.pgm [--ignore-orientation] [--max-pixels N]
                                           [--max-scans N] [--max-memory BYTES]
   image_tool resize IN.ppm|IN.pgm W H nearest|bilinear|bicubic OUT.ppm|OUT.pgm
   image_tool preprocess IN.jpg|IN.ppm|IN.pgm RESIZE CROP_H CROP_W INTERP CHANS M0 M1 M2 S0 S1 S2 OUT.npy
   image_tool info IN.jpg               header info, and decodes in arenas of exactly and just under decode_memory
   image_tool truncations IN.jpg        one line per prefix length: "LEN CODE CRC32-OF-PIXELS"
   image_tool flips IN.jpg TRIALS SEED  corrupt 1-4 random bytes per trial; prints "CODE COUNT" lines

   Results print as "OK w h channels" or "ERROR CODE message"; the exit status is 0 for OK,
   2 for a decoder error and 1 for a usage or I/O problem. */
#define LEMEVIT_IMPLEMENTATION
#include "../lemevit.h"
#include "test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* Binary PGM (P5) or PPM (P6) with maxval 255; the image owns malloc'd pixels. */
static int read_pnm(const char *path, lmv_image *img) {
    size_t n, pos = 2;
    unsigned char *d = tu_read_file(path, &n);
    int v[3], i;
    if (!d || n < 2 || d[0] != 'P' || (d[1] != '5' && d[1] != '6')) {
        free(d);
        return 0;
    }
    for (i = 0; i < 3; i++) {
        while (pos < n && (d[pos] == ' ' || d[pos] == '\n' || d[pos] == '\r' || d[pos] == '\t' || d[pos] == '#')) {
            if (d[pos] == '#') while (pos < n && d[pos] != '\n') pos++;
            else pos++;
        }
        v[i] = 0;
        while (pos < n && d[pos] >= '0' && d[pos] <= '9') v[i] = v[i] * 10 + (d[pos++] - '0');
    }
    pos++;
    memset(img, 0, sizeof *img);
    img->width = v[0];
    img->height = v[1];
    img->channels = d[1] == '6' ? 3 : 1;
    if (v[2] != 255 || n - pos < (size_t)v[0] * v[1] * img->channels) {
        free(d);
        return 0;
    }
    img->pixels = (unsigned char *)malloc((size_t)v[0] * v[1] * img->channels);
    memcpy(img->pixels, d + pos, (size_t)v[0] * v[1] * img->channels);
    free(d);
    return 1;
}

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

static lmv_interp parse_interp(const char *s) {
    if (strcmp(s, "nearest") == 0) return LMV_INTERP_NEAREST;
    if (strcmp(s, "bilinear") == 0) return LMV_INTERP_BILINEAR;
    return LMV_INTERP_BICUBIC;
}

static unsigned long crc32_of(const unsigned char *p, size_t n) {
    unsigned long crc = 0xFFFFFFFFul;
    size_t i;
    int k;
    for (i = 0; i < n; i++) {
        crc ^= p[i];
        for (k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xEDB88320ul & (0ul - (crc & 1ul)));
    }
    return crc ^ 0xFFFFFFFFul;
}

static int report(lmv_result r, const lmv_error *err, const lmv_image *img) {
    if (r != LMV_OK) {
        printf("ERROR %s %s\n", lmv_result_name(r), err->message);
        return 2;
    }
    printf("OK %d %d %d\n", img->width, img->height, img->channels);
    return 0;
}

/* Load a JPEG with the library, or a PNM with the helper above. */
static lmv_result load_any(const char *path, const lmv_image_options *o, lmv_image *img, lmv_error *err) {
    if (ends_with(path, ".ppm") || ends_with(path, ".pgm")) {
        if (!read_pnm(path, img)) {
            strcpy(err->message, "cannot read the PNM file");
            err->code = LMV_ERR_IO;
            return LMV_ERR_IO;
        }
        return LMV_OK;
    }
    return lmv_image_load_jpeg_file(path, o, img, err);
}

static void free_any(const char *path, lmv_image *img) {
    if (ends_with(path, ".ppm") || ends_with(path, ".pgm")) free(img->pixels);
    else lmv_image_free(img);
}

int main(int argc, char **argv) {
    lmv_error err;
    lmv_image img, out;
    lmv_image_options o = lmv_image_options_default();
    lmv_result r;
    int i;
    memset(&img, 0, sizeof img);
    memset(&out, 0, sizeof out);
    if (argc < 3) {
        fprintf(stderr, "usage: see the comment at the top of tests/image_tool.c\n");
        return 1;
    }
    if (strcmp(argv[1], "decode") == 0 && argc >= 4) {
        for (i = 4; i < argc; i++) {
            if (strcmp(argv[i], "--ignore-orientation") == 0) o.ignore_orientation = 1;
            else if (strcmp(argv[i], "--max-pixels") == 0 && i + 1 < argc) o.max_pixels = (size_t)strtoull(argv[++i], NULL, 10);
            else if (strcmp(argv[i], "--max-scans") == 0 && i + 1 < argc) o.max_scans = atoi(argv[++i]);
            else if (strcmp(argv[i], "--max-memory") == 0 && i + 1 < argc) o.max_memory = (size_t)strtoull(argv[++i], NULL, 10);
        }
        r = lmv_image_load_jpeg_file(argv[2], &o, &img, &err);
        if (r == LMV_OK && !write_pnm(argv[3], &img)) {
            lmv_image_free(&img);
            return 1;
        }
        i = report(r, &err, &img);
        lmv_image_free(&img);
        return i;
    }
    if (strcmp(argv[1], "resize") == 0 && argc == 7) {
        if (!read_pnm(argv[2], &img)) return 1;
        r = lmv_image_resize(&img, atoi(argv[3]), atoi(argv[4]), parse_interp(argv[5]), NULL, &out, &err);
        free(img.pixels);
        if (r == LMV_OK && !write_pnm(argv[6], &out)) return 1;
        i = report(r, &err, &out);
        lmv_image_free(&out);
        return i;
    }
    if (strcmp(argv[1], "preprocess") == 0 && argc == 15) {
        lmv_preprocess pp;
        int chans = atoi(argv[7]), shape[3];
        float *t;
        size_t n;
        char hdr[256];
        size_t hl;
        FILE *f;
        memset(&pp, 0, sizeof pp);
        pp.resize = atoi(argv[3]);
        pp.crop_h = atoi(argv[4]);
        pp.crop_w = atoi(argv[5]);
        pp.interpolation = parse_interp(argv[6]);
        for (i = 0; i < 3; i++) {
            pp.mean[i] = (float)strtod(argv[8 + i], NULL); /* Python float -> float32, as torch */
            pp.std[i] = (float)strtod(argv[11 + i], NULL);
        }
        r = load_any(argv[2], &o, &img, &err);
        if (r != LMV_OK) return report(r, &err, &img);
        n = (size_t)chans * pp.crop_h * pp.crop_w;
        t = (float *)malloc(n * sizeof(float));
        r = lmv_preprocess_image(&img, &pp, chans, t, NULL, &err);
        free_any(argv[2], &img);
        if (r != LMV_OK) {
            free(t);
            return report(r, &err, &img);
        }
        shape[0] = chans;
        shape[1] = pp.crop_h;
        shape[2] = pp.crop_w;
        hl = lmv_npy_header(hdr, 3, shape);
        f = fopen(argv[14], "wb");
        if (!f || fwrite(hdr, 1, hl, f) != hl || fwrite(t, sizeof(float), n, f) != n) return 1;
        fclose(f);
        free(t);
        printf("OK %d %d %d\n", pp.crop_w, pp.crop_h, chans);
        return 0;
    }
    if (strcmp(argv[1], "info") == 0) {
        /* the header info, then decodes inside arenas of exactly decode_memory and 16 bytes less */
        size_t n;
        unsigned char *d = tu_read_file(argv[2], &n), *buf;
        lmv_image_info info;
        lmv_arena arena;
        lmv_result r2;
        if (!d) return 1;
        r = lmv_image_jpeg_info(d, n, NULL, &info, &err);
        if (r != LMV_OK) {
            free(d);
            return report(r, &err, &img);
        }
        buf = (unsigned char *)malloc(info.decode_memory);
        lmv_arena_init(&arena, buf, info.decode_memory);
        o.allocator = lmv_arena_allocator(&arena);
        r = lmv_image_load_jpeg_memory(d, n, &o, &img, &err);
        lmv_arena_init(&arena, buf, info.decode_memory - 16);
        r2 = lmv_image_load_jpeg_memory(d, n, &o, &out, &err);
        printf("INFO %d %d %d %d %zu exact:%s %d %d smaller:%s\n", info.width, info.height, info.channels,
               info.progressive, info.decode_memory, lmv_result_name(r), img.width, img.height, lmv_result_name(r2));
        free(buf);
        free(d);
        return 0;
    }
    if (strcmp(argv[1], "truncations") == 0) {
        size_t n, len;
        unsigned char *d = tu_read_file(argv[2], &n);
        if (!d) return 1;
        for (len = 0; len <= n; len++) {
            /* a fresh copy of exactly len bytes, so a read past the end is caught by ASan */
            unsigned char *cut = (unsigned char *)malloc(len ? len : 1);
            memcpy(cut, d, len);
            r = lmv_image_load_jpeg_memory(cut, len, NULL, &img, &err);
            printf("%zu %s %lu\n", len, lmv_result_name(r),
                   r == LMV_OK ? crc32_of(img.pixels, (size_t)img.width * img.height * img.channels) : 0ul);
            if (r == LMV_OK) lmv_image_free(&img);
            free(cut);
        }
        free(d);
        return 0;
    }
    if (strcmp(argv[1], "flips") == 0 && argc == 5) {
        size_t n;
        unsigned char *d = tu_read_file(argv[2], &n), *m;
        long trials = atol(argv[3]), t, counts[32];
        unsigned long long s = strtoull(argv[4], NULL, 10) * 2862933555777941757ull + 3037000493ull;
        if (!d || n == 0) return 1;
        memset(counts, 0, sizeof counts);
        m = (unsigned char *)malloc(n);
        o.max_pixels = (size_t)1 << 22;
        for (t = 0; t < trials; t++) {
            int k, nflip;
            memcpy(m, d, n);
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            nflip = 1 + (int)((s >> 33) % 4);
            for (k = 0; k < nflip; k++) {
                s = s * 6364136223846793005ull + 1442695040888963407ull;
                m[(s >> 20) % n] ^= (unsigned char)(1u << ((s >> 12) & 7));
                s = s * 6364136223846793005ull + 1442695040888963407ull;
                if ((s >> 40) % 4 == 0) m[(s >> 20) % n] = (unsigned char)(s >> 50); /* sometimes a whole byte */
            }
            r = lmv_image_load_jpeg_memory(m, n, &o, &img, &err);
            if ((int)r >= 0 && (int)r < 32) counts[r]++;
            if (r == LMV_OK) lmv_image_free(&img);
        }
        for (i = 0; i < 32; i++)
            if (counts[i]) printf("%s %ld\n", lmv_result_name((lmv_result)i), counts[i]);
        free(m);
        free(d);
        return 0;
    }
    fprintf(stderr, "usage: see the comment at the top of tests/image_tool.c\n");
    return 1;
}
