/* run_model - a model on a fixed input, the output printed as text, for comparing builds across
   architectures (x86 AVX2 and portable, AArch64 NEON under qemu, big-endian s390x under qemu).

     run_model MODEL.lmv H W [BATCH [int8]]     (int8: the session's int8_compute option)

   The input is made here from a seeded generator, so every build sees the same floats without a
   file whose byte order would matter. Prints the SIMD path compiled in, then one logit per line
   (%.9g, enough to round-trip a float), then the pooled features of image 0. */
#define LEMEVIT_IMPLEMENTATION
#include "../lemevit.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    lmv_model *m;
    lmv_session *s;
    lmv_session_options so = lmv_session_options_default();
    lmv_error err;
    const lmv_model_info *in;
    int h, w, batch, i;
    size_t n;
    float *x, *y, *f;
    unsigned seed = 2024;
    if (argc < 4) {
        fprintf(stderr, "usage: run_model MODEL.lmv H W [BATCH [int8]]\n");
        return 2;
    }
    h = atoi(argv[2]);
    w = atoi(argv[3]);
    batch = argc > 4 ? atoi(argv[4]) : 1;
    if (lmv_model_open_file(argv[1], NULL, &m, &err) != LMV_OK) {
        fprintf(stderr, "run_model: %s\n", err.message);
        return 1;
    }
    in = lmv_model_info_get(m);
    so.max_h = h;
    so.max_w = w;
    so.max_batch = batch;
    so.int8_compute = argc > 5 && !strcmp(argv[5], "int8");
    if (lmv_session_create(m, &so, &s, &err) != LMV_OK) {
        fprintf(stderr, "run_model: %s\n", err.message);
        return 1;
    }
    n = (size_t)batch * in->in_chans * h * w;
    x = (float *)malloc(n * sizeof(float));
    y = (float *)malloc(sizeof(float) * (size_t)batch * (in->num_classes ? in->num_classes : 1));
    f = (float *)malloc(sizeof(float) * (size_t)batch * in->num_features);
    if (!x || !y || !f) return 1;
    for (i = 0; i < (int)n; i++) {
        seed = seed * 1664525u + 1013904223u;
        x[i] = (float)((seed >> 8) & 0xFFFF) / 16384.0f - 2.0f; /* [-2, 2): like normalised pixels */
    }
    if ((in->num_classes && lmv_run(s, x, batch, h, w, y, &err) != LMV_OK) ||
        lmv_run_features(s, x, batch, h, w, f, &err) != LMV_OK) {
        fprintf(stderr, "run_model: %s\n", err.message);
        return 1;
    }
#if defined(LMV__AVX2)
    printf("simd avx2\n");
#elif defined(LMV__SDOT)
    printf("simd neon+sdot\n");
#elif defined(LMV__NEON)
    printf("simd neon\n");
#else
    printf("simd none\n");
#endif
    for (i = 0; i < batch * in->num_classes; i++) printf("logit %.9g\n", y[i]);
    for (i = 0; i < in->num_features; i++) printf("feature %.9g\n", f[i]);
    free(x);
    free(y);
    free(f);
    lmv_session_destroy(s);
    lmv_model_close(m);
    return 0;
}
