/* firmware - the shape of a firmware task: a model and a JPEG linked in as const arrays, one
   static buffer for all memory, no malloc, no stdio, no OS. It decodes the picture, applies the
   model's eval transform, runs the model and reports the class index.

   What it links against (made at build time by `make firmware`, never committed):
     build/fw/model_data.c     `lmv embed MODEL.lmv model_data.c --name fw_model`
     build/fw/image_data.c     `lmv embed PICTURE.jpg image_data.c --name fw_image`
     build/fw/firmware_arena.h FW_ARENA_BYTES, the exact arena this task needs, measured on
                                     the host by examples/firmware_plan.c running fw_classify()
   On a device the picture would come from a camera into RAM; the code is the same.

   The answer: main() returns the class index (0..199), or 200 + the lmv_result code of the step
   that failed; fw_class and fw_status hold the same for a debugger or another task. */
#define LEMEVIT_NO_STDIO   /* no files, no printf */
#define LEMEVIT_NO_MALLOC  /* every byte comes from the arena below */
#define LEMEVIT_IMPLEMENTATION
#include "../lemevit.h"

volatile int fw_class = -1;         /* the class index of the picture, -1 until known */
volatile int fw_status = LMV_OK;    /* the lmv_result of the step that failed, or LMV_OK */
volatile size_t fw_arena_peak;      /* the most the arena held at once */
volatile size_t fw_arena_needed;    /* on LMV_ERR_OUT_OF_MEMORY: how many bytes the arena lacked */

/* Open the model in place, plan a single-threaded session for its native size, then classify the
   picture (decode, the model's eval transform, run, top class), everything from `arena`. The
   session is made once; the per-picture memory (pixels, input tensor, logits) sits above a mark
   and is dropped after each picture, so a loop over camera frames keeps the arena at the same peak.
   Returns the class index, or -(lmv_result) when a step fails. */
int fw_classify(lmv_arena *arena, const void *model_data, size_t model_size, const void *jpeg, size_t jpeg_size);

int fw_classify(lmv_arena *arena, const void *model_data, size_t model_size, const void *jpeg, size_t jpeg_size) {
    lmv_open_options oo = {0};
    lmv_session_options so = {0};
    lmv_prediction top;
    lmv_model *model;
    lmv_session *sess;
    lmv_result r;
    size_t need, mark;

    oo.allocator = so.allocator = lmv_arena_allocator(arena); /* the weights stay in flash; tables come from here */
    if ((r = lmv_model_open_memory(model_data, model_size, &oo, &model, NULL)) != LMV_OK) return -(int)r;
    so.threads = 1;
    if ((r = lmv_session_memory(model, &so, &need, NULL)) != LMV_OK) return -(int)r;
    if (need > arena->size - arena->used) { /* say how much is missing instead of failing inside */
        fw_arena_needed = need - (arena->size - arena->used);
        return -(int)LMV_ERR_OUT_OF_MEMORY;
    }
    if ((r = lmv_session_create(model, &so, &sess, NULL)) != LMV_OK) return -(int)r;

    mark = lmv_arena_mark(arena);
    r = lmv_classify_jpeg(sess, jpeg, jpeg_size, NULL, 1, &top, NULL, NULL); /* decode, preprocess, run, top-1 */
    lmv_arena_release(arena, mark); /* the next picture reuses the same bytes */
    if (r != LMV_OK) return -(int)r;

    fw_arena_peak = arena->peak;
    lmv_session_destroy(sess); /* no-ops with an arena; kept so the code is right with any allocator */
    lmv_model_close(model);
    return top.index;
}

#ifndef FIRMWARE_NO_MAIN
#ifndef FW_ARENA_BYTES
#include "firmware_arena.h" /* FW_ARENA_BYTES */
#endif

extern const unsigned char fw_model[];
extern const size_t fw_model_size;
extern const unsigned char fw_image[];
extern const size_t fw_image_size;

/* The only RAM the library uses: a static buffer, sized at build time. 64-byte aligned so the
   kernels' aligned loads hold; on a device this could be placed in a dedicated RAM bank. */
#if defined(__GNUC__) || defined(__clang__)
static unsigned char arena_memory[FW_ARENA_BYTES] __attribute__((aligned(64)));
#else
static unsigned char arena_memory[FW_ARENA_BYTES];
#endif

int main(void) {
    lmv_arena arena;
    int c;
    lmv_arena_init(&arena, arena_memory, sizeof arena_memory);
    c = fw_classify(&arena, fw_model, fw_model_size, fw_image, fw_image_size);
    if (c < 0) {
        fw_status = -c;
        return 200 + fw_status;
    }
    fw_class = c;
    return c < 200 ? c : 199;
}
#endif
