/* main.c - examples/firmware.c booted on a Cortex-M7 (qemu-system-arm -M mps2-an500, `make
   firmware-qemu`): the model in flash, the arena in RAM, two pictures classified with the top 3
   printed through semihosting - a JPEG file's bytes, and a Motion-JPEG camera frame (no Huffman
   tables of its own) as it would sit in a frame buffer. Also prints the instructions each took,
   estimated from SysTick against a loop of known length (exact under qemu -icount; not cycles).
   Built with -DLEMEVIT_NO_JPEG (no decoder linked) it classifies two raw 32x32 RGB frames in flash
   instead, as a camera with an RGB output gives them: the same cat and ship, decoded on the host. */
#define FIRMWARE_NO_MAIN
#include "../firmware.c"
#include "firmware_arena.h" /* FW_ARENA_BYTES, measured on the host by examples/firmware_plan.c */
#include "startup.h"

#ifdef LEMEVIT_NO_JPEG
#define FW_RGB_W 32
#define FW_RGB_H 32
extern const unsigned char fw_model[], fw_cat_rgb[], fw_ship_rgb[];
extern const size_t fw_model_size, fw_cat_rgb_size, fw_ship_rgb_size;
#else
extern const unsigned char fw_model[], fw_image[], fw_frame[];
extern const size_t fw_model_size, fw_image_size, fw_frame_size;
#endif

__attribute__((aligned(64))) static unsigned char arena_memory[FW_ARENA_BYTES];

/* Output in pieces through fw_write: no buffer a long class name could overrun. */
static void say_u(uint64_t v, int min_digits) {
    char d[24], out[24];
    int n = 0, i = 0;
    do d[n++] = (char)('0' + v % 10); while ((v /= 10) != 0 || n < min_digits);
    while (n) out[i++] = d[--n];
    out[i] = 0;
    fw_write(out);
}

static void say(const char *a, uint64_t v, const char *b) {
    fw_write(a);
    say_u(v, 1);
    fw_write(b);
}

/* exactly 2n instructions: subs + bne, n times */
static void spin(uint32_t n) { __asm__ volatile("1: subs %0, %0, #1\n\tbne 1b" : "+r"(n) : : "cc"); }

int main(void) {
    static const struct { const char *name; const unsigned char *data; const size_t *size; } pics[2] = {
#ifdef LEMEVIT_NO_JPEG
        {"cat_32x32.rgb (raw RGB frame, 32x32)", fw_cat_rgb, &fw_cat_rgb_size},
        {"ship_32x32.rgb (raw RGB frame, 32x32)", fw_ship_rgb, &fw_ship_rgb_size}};
#else
        {"cat_32x32.jpg (JPEG file bytes)", fw_image, &fw_image_size},
        {"ship_32x32_mjpeg.jpg (Motion-JPEG frame, no DHT)", fw_frame, &fw_frame_size}};
#endif
    const uint32_t spins = 1u << 23;
    lmv_arena arena;
    lmv_prediction top[3];
    lmv_session *s;
    lmv_result r;
    uint64_t t0, cal;
    int i, k, n;

    t0 = fw_ticks();
    spin(spins);
    cal = fw_ticks() - t0; /* ticks per 2 * spins instructions */
#if defined(__ARM_PCS_VFP)
    fw_write("lemevit.h on Cortex-M, float ABI hard\n");
#elif defined(__ARM_FP)
    fw_write("lemevit.h on Cortex-M, float ABI softfp\n");
#else
    fw_write("lemevit.h on Cortex-M, float ABI soft\n");
#endif
#ifdef FW_INT8_COMPUTE
    fw_write("int8 weights multiplied in int8 (int8_compute)\n");
#endif
#ifdef LEMEVIT_NO_JPEG
    fw_write("no JPEG decoder (LEMEVIT_NO_JPEG): raw RGB frames\n");
#endif
    say("model ", fw_model_size, " bytes in flash at 0x");
    for (i = 28; i >= 0; i -= 4) {
        char hex[2] = {0, 0};
        hex[0] = "0123456789abcdef"[((uintptr_t)fw_model >> i) & 15];
        fw_write(hex);
    }
    say("\narena ", sizeof arena_memory, " bytes in RAM\n");
    lmv_arena_init(&arena, arena_memory, sizeof arena_memory);
    if (!(s = fw_start(&arena, fw_model, fw_model_size, &r))) {
        fw_write(lmv_result_string(r));
        fw_write(": the model does not open\n");
        return 1;
    }
    for (i = 0; i < 2; i++) {
        t0 = fw_ticks();
#ifdef LEMEVIT_NO_JPEG
        /* a frame of another size than the buffer holds is refused, not read past its end */
        n = *pics[i].size == (size_t)FW_RGB_W * FW_RGB_H * 3
                ? fw_classify_rgb(s, &arena, pics[i].data, FW_RGB_W, FW_RGB_H, 3, top)
                : -(int)LMV_ERR_INVALID_ARGUMENT;
#else
        n = fw_classify(s, &arena, pics[i].data, *pics[i].size, 3, top);
#endif
        t0 = fw_ticks() - t0;
        fw_write("picture ");
        fw_write(pics[i].name);
        fw_write("\n");
        if (n < 0) {
            fw_write(lmv_result_string((lmv_result)-n));
            fw_write(": the picture was not classified\n");
            return 1;
        }
        for (k = 0; k < n; k++) {
            uint64_t ppm = (uint64_t)(top[k].prob * 1e6f + 0.5f); /* six decimals */
            say("  top", (uint64_t)k + 1, " class ");
            say("", (uint64_t)top[k].index, " ");
            fw_write(top[k].label ? top[k].label : "?");
            say(" prob ", ppm / 1000000u, ".");
            say_u(ppm % 1000000u, 6);
            fw_write("\n");
        }
        say("  instructions ", cal ? t0 * 2u * spins / cal : 0, " (SysTick against a counted loop)\n");
    }
    say("arena peak ", arena.peak, " bytes\n");
    fw_write("done\n");
    return 0;
}
