/* libFuzzer harness for the JPEG decoder (and the resize/preprocess that follow it), which also
   checks that lmv_image_jpeg_info agrees with the decode and that its decode_memory is enough.

   clang -g -O1 -fsanitize=fuzzer,address,undefined tests/fuzz/fuzz_jpeg.c -o fuzz_jpeg -lm
   mkdir -p work && ./fuzz_jpeg -max_total_time=300 work tests/fuzz/corpus_jpeg

   New inputs go to the first directory (work/); tests/fuzz/corpus_jpeg/ is the small seed set
   (baseline, progressive, restarts, gray, 4:1:1, CMYK, EXIF-rotated) and crash_* files in it are
   regressions that once failed. The size limit keeps each input fast and the memory modest. */
#define LEMEVIT_IMPLEMENTATION
#include "../../lemevit.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    lmv_image img;
    lmv_image_info info;
    lmv_image_options opt = lmv_image_options_default();
    lmv_error err;
    lmv_arena arena;
    lmv_result r;
    void *buf;
    opt.max_pixels = (size_t)1 << 20;
    opt.ignore_orientation = size > 0 && (data[size - 1] & 1);
    /* the header info must agree with the decode: when it fails the decode fails too, and when it
       succeeds the decode fits in an arena of exactly decode_memory bytes */
    if (lmv_image_jpeg_info(data, size, &opt, &info, &err) != LMV_OK) {
        r = lmv_image_load_jpeg_memory(data, size, &opt, &img, &err);
        if (r == LMV_OK) __builtin_trap();
        return 0;
    }
    buf = malloc(info.decode_memory);
    if (!buf) return 0;
    lmv_arena_init(&arena, buf, info.decode_memory);
    opt.allocator = lmv_arena_allocator(&arena);
    r = lmv_image_load_jpeg_memory(data, size, &opt, &img, &err);
    if (r == LMV_ERR_OUT_OF_MEMORY) __builtin_trap();
    if (r == LMV_OK && (img.width != info.width || img.height != info.height || img.channels != info.channels))
        __builtin_trap();
    if (r == LMV_OK && (size_t)img.width * (size_t)img.height <= 65536) {
        lmv_preprocess pp;
        static float out[3 * 24 * 20];
        int i;
        memset(&pp, 0, sizeof pp);
        pp.resize = (int)(size % 3) * 16; /* 0: straight to the crop size */
        pp.crop_h = 24;
        pp.crop_w = 20;
        pp.interpolation = (lmv_interp)(size % 3);
        for (i = 0; i < 3; i++) {
            pp.mean[i] = 0.5f;
            pp.std[i] = 0.25f;
        }
        lmv_preprocess_image(&img, &pp, (size & 4) ? 1 : 3, out, NULL, &err);
    }
    free(buf); /* the image lives in the arena */
    return 0;
}
