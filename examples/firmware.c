/* firmware - a firmware task: a model and a JPEG linked in as const arrays, one static buffer for
   all memory, no malloc, no stdio, no OS. `make firmware` links it with build/fw/model_data.c and
   image_data.c (`lmv embed`) and build/fw/firmware_arena.h (FW_ARENA_BYTES, the arena this task
   needs, measured on the host by examples/firmware_plan.c). examples/cortex-m/ boots the same code
   on a Cortex-M7. On a device the picture comes from a camera into RAM; the code is the same.
   main() returns the class index, or 200 + the lmv_result of the step that failed.
   Built with -DLEMEVIT_NO_JPEG it has no decoder at all and classifies raw RGB pixels
   (fw_classify_rgb), as from a camera with an RGB output. */
#define LEMEVIT_NO_STDIO   /* no files, no printf */
#define LEMEVIT_NO_MALLOC  /* every byte comes from the arena */
#define LEMEVIT_NO_PNG     /* the pictures are JPEG or raw pixels: no PNG decoder (nor its inflate) linked */
#define LEMEVIT_IMPLEMENTATION
#include "../lemevit.h"

/* Open the model in place (the weights stay in flash) and make a one-thread session, both from
   the arena. NULL when that fails, with the reason in *r. */
lmv_session *fw_start(lmv_arena *arena, const void *model, size_t size, lmv_result *r) {
    lmv_open_options oo = lmv_open_options_default();
    lmv_session_options so = lmv_session_options_default();
    lmv_model *m;
    lmv_session *s = NULL;
    oo.allocator = so.allocator = lmv_arena_allocator(arena);
    so.threads = 1;
#ifdef FW_INT8_COMPUTE
    so.int8_compute = 1; /* int8 weights multiplied in int8 */
#endif
    if ((*r = lmv_model_open_memory(model, size, &oo, &m, NULL)) == LMV_OK) *r = lmv_session_create(m, &so, &s, NULL);
    return s;
}

/* Classify one picture, JPEG bytes in memory (a file or a camera frame), into top[0..k-1]: decode,
   the model's eval transform, run. Its memory sits above a mark and is dropped afterwards, so a
   loop over frames keeps the arena at one peak. Returns the rows written, or -(lmv_result). */
#ifndef LEMEVIT_NO_JPEG
int fw_classify(lmv_session *s, lmv_arena *arena, const void *jpeg, size_t size, int k, lmv_prediction *top) {
    size_t mark = lmv_arena_mark(arena);
    int n = 0;
    lmv_result r = lmv_classify_jpeg(s, jpeg, size, NULL, k, top, &n, NULL);
    lmv_arena_release(arena, mark);
    return r == LMV_OK ? n : -(int)r;
}
#endif

/* The same from raw pixels: `rgb` is h rows of w * 3 bytes (R, G, B), no padding, as a camera with
   an RGB output fills a frame buffer. No decoder: an lmv_image over the bytes, the model's eval
   transform (lmv_preprocess_image, inside lmv_classify_image), run. */
int fw_classify_rgb(lmv_session *s, lmv_arena *arena, const unsigned char *rgb, int w, int h, int k,
                    lmv_prediction *top) {
    size_t mark = lmv_arena_mark(arena);
    lmv_image img;
    int n = 0;
    lmv_result r;
    memset(&img, 0, sizeof img); /* no allocator: the pixels are not the library's to free */
    img.width = w, img.height = h, img.channels = 3;
    img.pixels = (unsigned char *)rgb; /* only read: the frame may sit in flash */
    r = lmv_classify_image(s, &img, k, top, &n, NULL);
    lmv_arena_release(arena, mark);
    return r == LMV_OK ? n : -(int)r;
}

#ifndef FIRMWARE_NO_MAIN
#ifndef FW_ARENA_BYTES
#include "firmware_arena.h" /* FW_ARENA_BYTES */
#endif
/* `lmv embed`'s arrays are C: from C++ they are named with C linkage */
#ifdef __cplusplus
extern "C" {
#endif
extern const unsigned char fw_model[], fw_image[];
extern const size_t fw_model_size, fw_image_size;
#ifdef __cplusplus
}
#endif

/* The only RAM the library uses, 64-byte aligned for the kernels' aligned loads. */
#if defined(__GNUC__) || defined(__clang__)
__attribute__((aligned(64)))
#endif
static unsigned char arena_memory[FW_ARENA_BYTES];

int main(void) {
    lmv_arena arena;
    lmv_prediction top;
    lmv_result r;
    lmv_session *s;
    int n;
    lmv_arena_init(&arena, arena_memory, sizeof arena_memory);
    if (!(s = fw_start(&arena, fw_model, fw_model_size, &r))) return 200 + (int)r;
    n = fw_classify(s, &arena, fw_image, fw_image_size, 1, &top);
    return n < 0 ? 200 - n : top.index < 200 ? top.index : 199;
}
#endif
