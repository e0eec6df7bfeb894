/* Unit tests of the shared kernels and helpers, and (given a .lmv path) a mutation test of the
   loader: every truncation point of the header, meta and table, every single-byte change there
   (with the header CRC recomputed so the structural checks, not just the CRC, are exercised),
   and byte flips in the data. Each must give a specific error and never crash: this program is
   also built with AddressSanitizer and UBSan.

     test_core                 kernel tests
     test_core MODEL.lmv       kernel tests + loader mutation tests */
#include <assert.h>
#define LEMEVIT_ASSERT(x) assert(x) /* the library's own invariants, checked in every test here */
#define LEMEVIT_IMPLEMENTATION
#include "../lemevit.h"
#include "test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int passed, failed;

static void check(const char *name, int ok, const char *detail) {
    if (ok) passed++;
    else failed++;
    if (!detail || !*detail) printf("%s %s\n", ok ? "PASS" : "FAIL", name);
    else if (ok) printf("PASS %s (%s)\n", name, detail);
    else printf("FAIL %s: %s\n", name, detail);
}

static float frand(unsigned *s) {
    *s = *s * 1664525u + 1013904223u;
    return (float)((*s >> 8) & 0xFFFF) / 32768.0f - 1.0f;
}

static void test_gemm(void) {
    /* 781 rows: on 2 threads each takes its own half of the rows first */
    static const int shapes[][3] = {{1, 1, 1}, {3, 17, 5}, {4, 16, 256}, {5, 33, 257}, {197, 48, 64}, {7, 100, 600}, {49, 49, 32},
                                    {2, 3, 0}, {781, 37, 40}};
    unsigned seed = 1;
    int s, t, worst_ok = 1, same = 1;
    char msg[128];
    double worst = 0;
    for (t = 0; t < 2; t++)
        for (s = 0; s < (int)(sizeof shapes / sizeof shapes[0]); s++) {
            int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2], i, j, k;
            float *A = (float *)malloc(sizeof(float) * (size_t)(M * K + 1)), *B = (float *)malloc(sizeof(float) * (size_t)(N * K + 1));
            float *C = (float *)malloc(sizeof(float) * (size_t)M * N), *bias = (float *)malloc(sizeof(float) * (size_t)N);
            float *C1 = (float *)malloc(sizeof(float) * (size_t)M * N);
            lmv__ctx ctx;
            memset(&ctx, 0, sizeof ctx);
            for (i = 0; i < M * K; i++) A[i] = frand(&seed);
            for (i = 0; i < N * K; i++) B[i] = frand(&seed);
            for (i = 0; i < N; i++) bias[i] = frand(&seed);
            ctx.threads = 1;
            lmv__gemm(&ctx, M, N, K, A, (size_t)K, lmv__f32(B), t ? (size_t)N : (size_t)K, !t, bias, C1, (size_t)N);
            ctx.threads = 2;
            lmv__gemm(&ctx, M, N, K, A, (size_t)K, lmv__f32(B), t ? (size_t)N : (size_t)K, !t, bias, C, (size_t)N);
            same &= memcmp(C, C1, sizeof(float) * (size_t)M * N) == 0;
            for (i = 0; i < M; i++)
                for (j = 0; j < N; j++) {
                    double ref = bias[j];
                    for (k = 0; k < K; k++) ref += (double)A[i * K + k] * (t ? B[k * N + j] : B[j * K + k]);
                    if (fabs(ref - C[i * N + j]) > worst) worst = fabs(ref - C[i * N + j]);
                    if (fabs(ref - C[i * N + j]) > 1e-4 * (1 + K)) worst_ok = 0;
                }
            free(A); free(B); free(C); free(C1); free(bias);
        }
    snprintf(msg, sizeof msg, "max abs error %.2e over %d shapes, both B layouts", worst, (int)(sizeof shapes / sizeof shapes[0]));
    check("gemm matches a double-precision reference", worst_ok, msg);
    check("gemm gives the same bits on 1 and 2 threads", same, "");
}

/* A Linear + GELU in one GEMM (the activation applied by each tile after its last K block, in
   registers for full tiles) gives GELU of the plain GEMM's outputs, within the GELU bound that
   test_gelu checks: full tiles, edge rows and columns, several K blocks, two threads. */
static void test_gemm_gelu(void) {
    static const int shapes[][3] = {{6, 16, 8}, {13, 40, 300}, {49, 49, 32}, {197, 64, 600}};
    unsigned seed = 11;
    int s, ok = 1;
    double worst = 0;
    char msg[96];
    for (s = 0; s < (int)(sizeof shapes / sizeof shapes[0]); s++) {
        int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2], i;
        float *A = (float *)malloc(sizeof(float) * (size_t)M * K), *B = (float *)malloc(sizeof(float) * (size_t)N * K);
        float *C = (float *)malloc(sizeof(float) * (size_t)M * N), *G = (float *)malloc(sizeof(float) * (size_t)M * N);
        float *bias = (float *)malloc(sizeof(float) * (size_t)N);
        lmv__ctx ctx;
        memset(&ctx, 0, sizeof ctx);
        ctx.threads = 2;
        for (i = 0; i < M * K; i++) A[i] = frand(&seed);
        for (i = 0; i < N * K; i++) B[i] = frand(&seed) * 0.2f;
        for (i = 0; i < N; i++) bias[i] = frand(&seed);
        lmv__gemm(&ctx, M, N, K, A, (size_t)K, lmv__f32(B), (size_t)K, 1, bias, C, (size_t)N);
        lmv__gemm_act(&ctx, M, N, K, A, (size_t)K, lmv__f32(B), (size_t)K, 1, bias, G, (size_t)N, LMV__ACT_GELU, 0);
        for (i = 0; i < M * N; i++) {
            double x = C[i], ref = 0.5 * x * (1.0 + erf(x / sqrt(2.0))), d = fabs(G[i] - ref);
            if (d > worst) worst = d;
            if (d > 2e-6 * (1.0 + fabs(x))) ok = 0;
        }
        free(A); free(B); free(C); free(G); free(bias);
    }
    snprintf(msg, sizeof msg, "max abs difference %.1e over %d shapes", worst, (int)(sizeof shapes / sizeof shapes[0]));
    check("gemm with GELU equals GELU of the gemm", ok, msg);
}

/* Half -> float for all 65536 halves, against the definition (sign, 5-bit exponent, 10-bit
   fraction, bias 15), computed with ldexp. */
static void test_half(void) {
    unsigned h;
    int bad = 0;
    char msg[96];
    for (h = 0; h < 65536u; h++) {
        unsigned e = (h >> 10) & 31u, f = h & 1023u;
        double ref = e == 0 ? ldexp((double)f, -24) : e == 31 ? (f ? NAN : INFINITY) : ldexp(1024.0 + f, (int)e - 25);
        float got = lmv__half_to_float((uint16_t)h);
        if (h & 0x8000u) ref = -ref;
        if (e == 31 && f) { if (got == got) bad++; }
        else if ((double)got != ref || (signbit(got) != 0) != ((h & 0x8000u) != 0)) bad++;
    }
    snprintf(msg, sizeof msg, "%d of 65536 wrong", bad);
    check("every half widens to the float it stands for", bad == 0, msg);
}

/* The GEMM with f16 and int8 weights gives what it gives with the widened float32 weights. */
static void test_gemm_reduced(void) {
    static const int shapes[][3] = {{1, 1, 1}, {3, 17, 5}, {6, 16, 256}, {5, 33, 257}, {13, 48, 600}};
    unsigned seed = 3;
    int s, d, ok = 1;
    double worst = 0;
    char msg[128];
    for (d = 1; d <= 2; d++)
        for (s = 0; s < (int)(sizeof shapes / sizeof shapes[0]); s++) {
            int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2], i;
            size_t nk = (size_t)N * K;
            float *A = (float *)malloc(sizeof(float) * (size_t)M * K), *W = (float *)malloc(sizeof(float) * nk);
            float *C1 = (float *)malloc(sizeof(float) * (size_t)M * N), *C2 = (float *)malloc(sizeof(float) * (size_t)M * N);
            float *scale = (float *)malloc(sizeof(float) * (size_t)N);
            uint16_t *half = (uint16_t *)malloc(2 * nk);
            signed char *q = (signed char *)malloc(nk);
            lmv__mat m;
            lmv__ctx ctx;
            memset(&ctx, 0, sizeof ctx);
            ctx.threads = 2;
            for (i = 0; i < M * K; i++) A[i] = frand(&seed);
            for (i = 0; i < N; i++) scale[i] = 0.01f * (1 + i % 7);
            for (i = 0; i < (int)nk; i++) {
                unsigned r = (seed = seed * 1664525u + 1013904223u) >> 16;
                /* halves of normal magnitude, either sign, and a few subnormals */
                half[i] = (uint16_t)(((r & 1u) << 15) | ((i % 97 == 0) ? (r >> 1) & 0x3ffu : (0x3000u + ((r >> 1) & 0x0fffu))));
                q[i] = (signed char)((int)((r >> 3) % 255u) - 127);
            }
            m.scale = scale;
            m.dtype = d;
            m.data = d == 1 ? (const void *)half : (const void *)q;
            for (i = 0; i < (int)nk; i++) W[i] = d == 1 ? lmv__half_to_float(half[i]) : (float)q[i] * scale[i / K];
            lmv__gemm(&ctx, M, N, K, A, (size_t)K, m, (size_t)K, 1, NULL, C1, (size_t)N);
            lmv__gemm(&ctx, M, N, K, A, (size_t)K, lmv__f32(W), (size_t)K, 1, NULL, C2, (size_t)N);
            for (i = 0; i < M * N; i++) {
                if (C1[i] != C2[i]) ok = 0;
                if (fabs(C1[i] - C2[i]) > worst) worst = fabs(C1[i] - C2[i]);
            }
            free(A); free(W); free(C1); free(C2); free(scale); free(half); free(q);
        }
    snprintf(msg, sizeof msg, "max abs difference %.2e over %d shapes x f16, int8", worst,
             (int)(sizeof shapes / sizeof shapes[0]));
    check("gemm with f16/int8 weights equals gemm with the widened float32 weights", ok, msg);
}

/* f32p weights (the matrix in panels of 16 rows, read in place): the same sums in the same k order
   as plain float32 weights, so bit-identical to them, on one thread or two, except the few leftover
   columns (N % 16 <= LMV__NARROW) that plain weights send through dot products; those, and all
   others, against a double-precision reference. Rows past N in the last panel are zero. */
static void test_gemm_panels(void) {
    static const int shapes[][3] = {{1, 1, 1}, {3, 17, 5}, {6, 16, 256}, {5, 33, 257}, {13, 48, 600}, {49, 37, 300}, {197, 70, 64},
                                    {800, 40, 70}};
    unsigned seed = 5;
    int s, t, ok = 1, near = 1;
    double worst = 0;
    char msg[160];
    for (s = 0; s < (int)(sizeof shapes / sizeof shapes[0]); s++)
        for (t = 1; t <= 2; t++) {
            int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2], NP = (N + 15) / 16 * 16, i, j, k;
            int plain_cols = N % LMV__NR <= LMV__NARROW ? N / LMV__NR * LMV__NR : N; /* columns both compute in tiles */
            float *A = (float *)malloc(sizeof(float) * (size_t)M * K), *W = (float *)malloc(sizeof(float) * (size_t)N * K);
            float *P = (float *)malloc(sizeof(float) * (size_t)NP * K + 4), *bias = (float *)malloc(sizeof(float) * (size_t)N);
            float *C1 = (float *)malloc(sizeof(float) * (size_t)M * N), *C2 = (float *)malloc(sizeof(float) * (size_t)M * N);
            lmv__mat m;
            lmv__ctx ctx;
            memset(&ctx, 0, sizeof ctx);
            ctx.threads = t;
            for (i = 0; i < M * K; i++) A[i] = frand(&seed);
            for (i = 0; i < N * K; i++) W[i] = frand(&seed);
            for (i = 0; i < N; i++) bias[i] = frand(&seed);
            for (j = 0; j < NP; j++) /* panels, at an offset of one float: the library may only assume 4-byte alignment */
                for (k = 0; k < K; k++) P[1 + ((size_t)(j / 16) * K + k) * 16 + j % 16] = j < N ? W[j * K + k] : 0.0f;
            m.data = P + 1;
            m.scale = NULL;
            m.dtype = LMV_DTYPE_F32P;
            lmv__gemm(&ctx, M, N, K, A, (size_t)K, m, (size_t)K, 1, bias, C1, (size_t)N);
            lmv__gemm(&ctx, M, N, K, A, (size_t)K, lmv__f32(W), (size_t)K, 1, bias, C2, (size_t)N);
            for (i = 0; i < M; i++)
                for (j = 0; j < N; j++) {
                    double ref = bias[j];
                    for (k = 0; k < K; k++) ref += (double)A[i * K + k] * W[j * K + k];
                    if (j < plain_cols && C1[i * N + j] != C2[i * N + j]) ok = 0;
                    if (fabs(ref - C1[i * N + j]) > worst) worst = fabs(ref - C1[i * N + j]);
                    if (fabs(ref - C1[i * N + j]) > 1e-4 * (1 + K)) near = 0;
                }
            free(A); free(W); free(P); free(bias); free(C1); free(C2);
        }
    snprintf(msg, sizeof msg, "%d shapes x 1 and 2 threads, unaligned panels; max abs error %.2e", (int)(sizeof shapes / sizeof shapes[0]), worst);
    check("gemm with f32p weights equals gemm with plain float32 weights and a double reference", ok && near, msg);
}

/* The accumulating GEMM (C += A W^T + bias, a residual branch's last Linear added into its
   stream): against R + the double-precision product for float32 weights in rows and in f32p
   panels, and against R + the plain GEMM for int8 weights multiplied in int8; on 1 and 2 threads
   with the same bits. Shapes cover leftover columns, several K blocks, K = 0, and enough rows
   for each thread to start on its own. */
static void test_gemm_accumulate(void) {
    static const int shapes[][3] = {{1, 1, 1}, {3, 17, 5}, {7, 37, 300}, {13, 48, 600}, {2, 5, 0}, {800, 21, 40}};
    unsigned seed = 9;
    int s, kind, t, ok = 1, same = 1;
    double worst = 0;
    char msg[160];
    for (s = 0; s < (int)(sizeof shapes / sizeof shapes[0]); s++)
        for (kind = 0; kind < 3; kind++) { /* 0: f32 rows, 1: f32p panels, 2: int8 multiplied in int8 */
            int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2], NP = (N + 15) / 16 * 16, i, j, k;
            size_t mn = (size_t)M * N;
            float *A = (float *)malloc(sizeof(float) * ((size_t)M * K + 1)), *W = (float *)malloc(sizeof(float) * ((size_t)N * K + 1));
            float *P = (float *)malloc(sizeof(float) * ((size_t)NP * K + 1)), *bias = (float *)malloc(sizeof(float) * (size_t)N);
            float *R = (float *)malloc(sizeof(float) * mn), *C[2], *plain = (float *)malloc(sizeof(float) * mn);
            float *scale = (float *)malloc(sizeof(float) * (size_t)N);
            signed char *q = (signed char *)malloc((size_t)N * K + 1);
            lmv__mat m;
            lmv__ctx ctx;
            memset(&ctx, 0, sizeof ctx);
            C[0] = (float *)malloc(sizeof(float) * mn);
            C[1] = (float *)malloc(sizeof(float) * mn);
            for (i = 0; i < M * K; i++) A[i] = frand(&seed);
            for (i = 0; i < N * K; i++) W[i] = frand(&seed);
            for (i = 0; i < N; i++) bias[i] = frand(&seed), scale[i] = 0.01f * (1 + i % 5);
            for (i = 0; i < (int)mn; i++) R[i] = 4.0f * frand(&seed);
            for (i = 0; i < N * K; i++) q[i] = (signed char)((int)(seed = seed * 1664525u + 1013904223u) % 127);
            for (j = 0; j < NP; j++)
                for (k = 0; k < K; k++) P[((size_t)(j / 16) * K + k) * 16 + j % 16] = j < N ? W[j * K + k] : 0.0f;
            m.scale = kind == 2 ? scale : NULL;
            m.dtype = kind == 0 ? LMV_DTYPE_F32 : kind == 1 ? LMV_DTYPE_F32P : LMV_DTYPE_INT8;
            m.data = kind == 0 ? (const void *)W : kind == 1 ? (const void *)P : (const void *)q;
            ctx.int8_compute = kind == 2;
            for (t = 1; t <= 2; t++) {
                ctx.threads = t;
                memcpy(C[t - 1], R, sizeof(float) * mn);
                lmv__gemm_act(&ctx, M, N, K, A, (size_t)K, m, (size_t)K, 1, bias, C[t - 1], (size_t)N, LMV__ACT_NONE, 1);
            }
            same &= memcmp(C[0], C[1], sizeof(float) * mn) == 0;
            if (kind == 2) lmv__gemm_act(&ctx, M, N, K, A, (size_t)K, m, (size_t)K, 1, bias, plain, (size_t)N, LMV__ACT_NONE, 0);
            for (i = 0; i < M; i++)
                for (j = 0; j < N; j++) {
                    double ref = R[i * N + j], e;
                    if (kind == 2) ref += plain[i * N + j];
                    else {
                        ref += bias[j];
                        for (k = 0; k < K; k++) ref += (double)A[i * K + k] * W[j * K + k];
                    }
                    e = fabs(ref - C[0][i * N + j]) / (1e-4 * (1 + K) + 1e-5 * fabs(ref));
                    if (e > worst) worst = e;
                    if (e > 1.0) ok = 0;
                }
            free(A); free(W); free(P); free(bias); free(R); free(C[0]); free(C[1]); free(plain); free(scale); free(q);
        }
    snprintf(msg, sizeof msg, "%d shapes x f32, f32p, int8-compute; worst error %.1e of its bound",
             (int)(sizeof shapes / sizeof shapes[0]), worst);
    check("accumulating gemm (C += A W^T + bias) matches C + the product", ok, msg);
    check("accumulating gemm gives the same bits on 1 and 2 threads", same, "");
}

/* Every kernel path this CPU runs (lmv_simd_available) on the same GEMMs: float32 rows, f32p
   panels, f16 and int8 weights widened, each within float rounding of the sums in double, with
   GELU fused; and int8 x int8 products, the same bits on every path (given the same A, every path
   makes the same integer sums and adds them in the same order). */
static void test_gemm_paths(void) {
    static const int shapes[][3] = {{1, 7, 5}, {5, 33, 257}, {49, 64, 96}, {197, 100, 70}, {13, 48, 600}};
    unsigned seed = 17;
    int s, p, kind, ok = 1, same = 1, paths = 0;
    double worst = 0;
    char msg[160];
    for (p = LMV_SIMD_PORTABLE; p <= LMV_SIMD_AVX512_NOVNNI; p++) paths += lmv_simd_available((lmv_simd)p);
    for (s = 0; s < (int)(sizeof shapes / sizeof shapes[0]); s++) {
        int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2], NP = (N + 15) / 16 * 16, i, j, k;
        size_t mn = (size_t)M * N;
        float *A = (float *)malloc(sizeof(float) * (size_t)M * K), *W = (float *)malloc(sizeof(float) * (size_t)N * K);
        float *P = (float *)malloc(sizeof(float) * (size_t)NP * K), *bias = (float *)malloc(sizeof(float) * (size_t)N);
        float *scale = (float *)malloc(sizeof(float) * (size_t)N), *C = (float *)malloc(sizeof(float) * mn);
        float *Q0 = (float *)malloc(sizeof(float) * mn);
        uint16_t *h = (uint16_t *)malloc(sizeof(uint16_t) * (size_t)N * K);
        signed char *q = (signed char *)malloc((size_t)N * K);
        for (i = 0; i < M * K; i++) A[i] = frand(&seed);
        for (j = 0; j < N; j++) bias[j] = frand(&seed), scale[j] = 0.01f * (1 + j % 5);
        for (i = 0; i < N * K; i++) {
            q[i] = (signed char)((int)((unsigned)(frand(&seed) * 1e4f + 1e5f) % 255u) - 127);
            h[i] = (uint16_t)(0x3000u | ((unsigned)(frand(&seed) * 1e4f + 1e5f) & 0x83ffu)); /* halves near 0.1 */
        }
        for (kind = 0; kind < 5; kind++) { /* f32, f32p, f16, int8 widened, int8 x int8 */
            lmv__mat m;
            int have_q0 = 0;
            for (i = 0; i < N * K; i++)
                W[i] = kind == 2 ? lmv__half_to_float(h[i]) : kind >= 3 ? (float)q[i] * scale[i / K] : W[i];
            if (kind == 0)
                for (i = 0; i < N * K; i++) W[i] = frand(&seed);
            for (j = 0; j < NP; j++)
                for (k = 0; k < K; k++) P[((size_t)(j / 16) * K + k) * 16 + j % 16] = j < N ? W[j * K + k] : 0.0f;
            m.scale = kind >= 3 ? scale : NULL;
            m.dtype = kind == 0 ? LMV_DTYPE_F32 : kind == 1 ? LMV_DTYPE_F32P : kind == 2 ? LMV_DTYPE_F16 : LMV_DTYPE_INT8;
            m.data = kind == 0 ? (const void *)W : kind == 1 ? (const void *)P : kind == 2 ? (const void *)h : (const void *)q;
            for (p = LMV_SIMD_PORTABLE; p <= LMV_SIMD_AVX512_NOVNNI; p++) {
                lmv__ctx ctx;
                if (!lmv_simd_available((lmv_simd)p)) continue;
                memset(&ctx, 0, sizeof ctx);
                ctx.threads = 2;
                ctx.simd = p;
                ctx.int8_compute = kind == 4;
                lmv__gemm_act(&ctx, M, N, K, A, (size_t)K, m, (size_t)K, 1, bias, C, (size_t)N,
                              kind == 4 ? LMV__ACT_NONE : LMV__ACT_GELU, 0);
                if (kind == 4) {
                    if (!have_q0) memcpy(Q0, C, sizeof(float) * mn), have_q0 = 1; /* the first path here */
                    else same &= memcmp(Q0, C, sizeof(float) * mn) == 0;
                    continue;
                }
                for (i = 0; i < M; i++)
                    for (j = 0; j < N; j++) {
                        double ref = bias[j], e;
                        for (k = 0; k < K; k++) ref += (double)A[i * K + k] * W[j * K + k];
                        ref = 0.5 * ref * (1.0 + erf(ref / sqrt(2.0)));
                        e = fabs(ref - C[i * N + j]) / (1e-4 * (1 + K) + 1e-5 * fabs(ref));
                        if (e > worst) worst = e;
                        if (e > 1.0) ok = 0;
                    }
            }
        }
        free(A); free(W); free(P); free(bias); free(scale); free(C); free(Q0); free(h); free(q);
    }
    snprintf(msg, sizeof msg, "%d paths here, %d shapes x f32, f32p, f16, int8 + GELU; worst error %.1e of its bound", paths,
             (int)(sizeof shapes / sizeof shapes[0]), worst);
    check("gemm on every kernel path matches the sums in double", ok && paths >= 1, msg);
    check("int8 x int8 gemm gives the same bits on every kernel path", same, "");
}

/* The int8 x int8 GEMM against its definition, computed here independently: per row and K block
   of LEMEVIT_GEMM_KC, q = round-half-even(a * 127 / max|a|) clamped to +-127, integer sums, the blocks
   added as scale_a * scale_w * sum. And against the float GEMM with the same weights, within the
   error rounding A can make: |a - scale_a * q| <= scale_a / 2, so each output moves by at most the
   sum over K blocks of scale_a / 2 * sum |w| (plus float rounding). */
static void test_gemm_int8_compute(void) {
    static const int shapes[][3] = {{1, 1, 1}, {1, 40, 768}, {5, 33, 257}, {6, 16, 256}, {13, 48, 600}, {197, 100, 70}, {200, 17, 520}};
    unsigned seed = 5;
    int s, ok_def = 1, ok_float = 1;
    double worst_def = 0, worst_rel = 0; /* worst_rel: error over its bound */
    char msg[160];
    for (s = 0; s < (int)(sizeof shapes / sizeof shapes[0]); s++) {
        int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2], i, j, k, k0;
        float *A = (float *)malloc(sizeof(float) * (size_t)M * K), *W = (float *)malloc(sizeof(float) * (size_t)N * K);
        float *C = (float *)malloc(sizeof(float) * (size_t)M * N), *Cf = (float *)malloc(sizeof(float) * (size_t)M * N);
        float *scale = (float *)malloc(sizeof(float) * (size_t)N), *bias = (float *)malloc(sizeof(float) * (size_t)N);
        signed char *q = (signed char *)malloc((size_t)N * K);
        lmv__mat m;
        lmv__ctx ctx;
        memset(&ctx, 0, sizeof ctx);
        ctx.threads = 2;
        for (i = 0; i < M * K; i++) A[i] = frand(&seed) * (i % 5 == 0 ? 4.0f : 1.0f);
        for (j = 0; j < N; j++) scale[j] = 0.002f * (1 + j % 5), bias[j] = frand(&seed);
        for (i = 0; i < N * K; i++) {
            q[i] = (signed char)((int)((unsigned)(frand(&seed) * 1e4f + 1e5f) % 255u) - 127);
            W[i] = (float)q[i] * scale[i / K];
        }
        m.data = q;
        m.scale = scale;
        m.dtype = LMV_DTYPE_INT8;
        ctx.int8_compute = 1;
        lmv__gemm(&ctx, M, N, K, A, (size_t)K, m, (size_t)K, 1, bias, C, (size_t)N);
        ctx.int8_compute = 0;
        lmv__gemm(&ctx, M, N, K, A, (size_t)K, lmv__f32(W), (size_t)K, 1, bias, Cf, (size_t)N);
        for (i = 0; i < M; i++) {
            float ref[64 * 16];
            double bound[64 * 16], mag[64 * 16];
            for (j = 0; j < N; j++) ref[j] = bias[j], bound[j] = 0, mag[j] = fabs(bias[j]);
            for (k0 = 0; k0 < K; k0 += LEMEVIT_GEMM_KC) {
                int kc = K - k0 < LEMEVIT_GEMM_KC ? K - k0 : LEMEVIT_GEMM_KC;
                float mx = 0, inv, sa;
                signed char aq[LEMEVIT_GEMM_KC];
                for (k = 0; k < kc; k++) mx = fabsf(A[i * K + k0 + k]) > mx ? fabsf(A[i * K + k0 + k]) : mx;
                sa = mx / 127.0f;
                inv = mx > 0 ? 127.0f / mx : 0.0f;
                for (k = 0; k < kc; k++) {
                    float v = nearbyintf(A[i * K + k0 + k] * inv);
                    aq[k] = (signed char)(v > 127 ? 127 : v < -127 ? -127 : v);
                }
                for (j = 0; j < N; j++) {
                    int32_t sum = 0;
                    for (k = 0; k < kc; k++) {
                        sum += aq[k] * q[j * K + k0 + k];
                        bound[j] += 0.5 * sa * fabs(W[j * K + k0 + k]);
                        mag[j] += fabs(A[i * K + k0 + k] * W[j * K + k0 + k]);
                    }
                    ref[j] += sa * scale[j] * (float)sum;
                }
            }
            for (j = 0; j < N; j++) {
                double d = fabs((double)C[i * N + j] - ref[j]), e = fabs((double)C[i * N + j] - Cf[i * N + j]);
                double lim = bound[j] + 1e-5 * mag[j] + 1e-6;
                if (d > worst_def) worst_def = d;
                if (e / lim > worst_rel) worst_rel = e / lim;
                if (d > 1e-5 * (1.0 + fabs(ref[j]))) ok_def = 0;
                if (e > lim) ok_float = 0;
            }
        }
        free(A); free(W); free(C); free(Cf); free(scale); free(bias); free(q);
    }
    snprintf(msg, sizeof msg, "max abs difference %.1e over %d shapes", worst_def, (int)(sizeof shapes / sizeof shapes[0]));
    check("int8-compute gemm equals its definition", ok_def, msg);
    snprintf(msg, sizeof msg, "largest error %.2f of its bound", worst_rel);
    check("int8-compute gemm is within the rounding bound of the float gemm", ok_float, msg);
}

static void test_attention(void) {
    enum { NQ = 5, NK = 7, H = 2, HD = 3, D = H * HD };
    float q[NQ * D], k[NK * D], v[NK * D], out[NQ * D], scores[2 * NQ * NK], bias[H * NQ * NK], mask[NQ * NK];
    unsigned seed = 7;
    int i, j, h, d, ok = 1;
    lmv__attn_args a;
    lmv__ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.threads = 2;
    for (i = 0; i < NQ * D; i++) q[i] = frand(&seed);
    for (i = 0; i < NK * D; i++) { k[i] = frand(&seed); v[i] = frand(&seed); }
    for (i = 0; i < H * NQ * NK; i++) bias[i] = frand(&seed);
    for (i = 0; i < NQ * NK; i++) mask[i] = (i % 3 == 0) ? -100.0f : 0.0f;
    memset(&a, 0, sizeof a);
    a.groups = 1; a.heads = H; a.head_dim = HD; a.nq = NQ; a.nk = NK;
    a.q = q; a.k = k; a.v = v; a.ldq = a.ldk = a.ldv = a.ldo = D; a.out = out;
    a.scale = 0.37f; a.bias = bias; a.mask = mask; a.n_masks = 1; a.scores = scores;
    lmv__attention(&ctx, &a);
    for (h = 0; h < H; h++)
        for (i = 0; i < NQ; i++) {
            double s[NK], mx = -1e30, sum = 0;
            for (j = 0; j < NK; j++) {
                double dot = 0;
                for (d = 0; d < HD; d++) dot += (double)q[i * D + h * HD + d] * k[j * D + h * HD + d];
                s[j] = dot * 0.37 + bias[(h * NQ + i) * NK + j] + mask[i * NK + j];
                if (s[j] > mx) mx = s[j];
            }
            for (j = 0; j < NK; j++) { s[j] = exp(s[j] - mx); sum += s[j]; }
            for (d = 0; d < HD; d++) {
                double o = 0;
                for (j = 0; j < NK; j++) o += s[j] / sum * v[j * D + h * HD + d];
                if (fabs(o - out[i * D + h * HD + d]) > 1e-5) ok = 0;
            }
        }
    check("attention with bias and mask matches a double reference", ok, "");
}

/* Conv2d through im2col (CHW and HWC inputs, stride 1 and 2, padding) and the depthwise 3x3, on
   maps small enough that every pixel touches the border, channel counts on and off multiples of 8
   (27: 16 + 8 + 3, every width of the vector loops). */
static void test_conv(void) {
    /* the last two are done in blocks of rows (4 and 5 of them), the others whole */
    static const int cases[][6] = {/* H, W, Cin, Cout, stride, pad */ {5, 7, 3, 8, 2, 1}, {6, 5, 13, 19, 1, 1},
                                   {9, 4, 16, 5, 2, 0}, {3, 3, 1, 1, 1, 1}, {4, 5, 27, 6, 1, 1}, {40, 36, 16, 21, 1, 1},
                                   {59, 61, 32, 17, 2, 1}};
    enum { NCASES = sizeof cases / sizeof cases[0] };
    unsigned seed = 11;
    int cs, hwc, ok = 1, same = 1;
    double worst = 0;
    char msg[160];
    for (cs = 0; cs < NCASES; cs++)
        for (hwc = 0; hwc < 2; hwc++) {
            int H = cases[cs][0], W = cases[cs][1], Ci = cases[cs][2], Co = cases[cs][3], st = cases[cs][4], pd = cases[cs][5];
            int OH = lmv__conv_out(H, 3, st, pd), OW = lmv__conv_out(W, 3, st, pd), i, o, c, y, x, ky, kx;
            size_t sy = hwc ? (size_t)W * Ci : (size_t)W, sx = hwc ? (size_t)Ci : 1, sc = hwc ? 1 : (size_t)H * W;
            float *in = (float *)malloc(sizeof(float) * (size_t)H * W * Ci), *w = (float *)malloc(sizeof(float) * (size_t)Co * Ci * 9);
            float *b = (float *)malloc(sizeof(float) * (size_t)(Co > Ci ? Co : Ci)), *out = (float *)malloc(sizeof(float) * (size_t)OH * OW * Co);
            float *out1 = (float *)malloc(sizeof(float) * (size_t)OH * OW * Co), *dw = (float *)malloc(sizeof(float) * (size_t)H * W * Ci);
            float *wt = (float *)malloc(sizeof(float) * (size_t)Ci * 9), *cols;
            lmv__ctx ctx;
            memset(&ctx, 0, sizeof ctx);
            for (i = 0; i < H * W * Ci; i++) in[i] = frand(&seed);
            for (i = 0; i < Co * Ci * 9; i++) w[i] = frand(&seed);
            for (i = 0; i < (Co > Ci ? Co : Ci); i++) b[i] = frand(&seed);
            /* one thread, then two, each in exactly the scratch it asks for */
            ctx.threads = 1;
            cols = (float *)malloc(sizeof(float) * lmv__conv_scratch(1, (size_t)OH * OW, Ci * 9, Co));
            lmv__conv2d(&ctx, out1, in, H, W, Ci, sy, sx, sc, lmv__f32(w), b, Co, 3, st, pd, cols);
            free(cols);
            ctx.threads = 2;
            cols = (float *)malloc(sizeof(float) * lmv__conv_scratch(2, (size_t)OH * OW, Ci * 9, Co));
            lmv__conv2d(&ctx, out, in, H, W, Ci, sy, sx, sc, lmv__f32(w), b, Co, 3, st, pd, cols);
            same &= memcmp(out, out1, sizeof(float) * (size_t)OH * OW * Co) == 0;
            for (y = 0; y < OH; y++)
                for (x = 0; x < OW; x++)
                    for (o = 0; o < Co; o++) { /* error relative to the sum of |terms|, float32's scale */
                        double ref = b[o], mag = fabs(b[o]) + 1e-30, e;
                        for (c = 0; c < Ci; c++)
                            for (ky = 0; ky < 3; ky++)
                                for (kx = 0; kx < 3; kx++) {
                                    int iy = y * st - pd + ky, ix = x * st - pd + kx;
                                    if (iy >= 0 && iy < H && ix >= 0 && ix < W) {
                                        double t = (double)in[iy * sy + ix * sx + c * sc] * w[((o * Ci + c) * 3 + ky) * 3 + kx];
                                        ref += t;
                                        mag += fabs(t);
                                    }
                                }
                        e = fabs(ref - out[(y * OW + x) * Co + o]) / mag;
                        if (e > worst) worst = e;
                    }
            if (hwc) { /* depthwise 3x3, padding 1, on the HWC map: weight [Ci][1][3][3] */
                lmv__dwconv3x3(&ctx, dw, in, H, W, Ci, w, cs % 2 ? NULL : b, wt);
                for (y = 0; y < H; y++)
                    for (x = 0; x < W; x++)
                        for (c = 0; c < Ci; c++) {
                            double ref = cs % 2 ? 0.0 : b[c], mag = fabs(ref) + 1e-30, e;
                            for (ky = 0; ky < 3; ky++)
                                for (kx = 0; kx < 3; kx++) {
                                    int iy = y - 1 + ky, ix = x - 1 + kx;
                                    if (iy >= 0 && iy < H && ix >= 0 && ix < W) {
                                        double t = (double)in[(iy * W + ix) * Ci + c] * w[c * 9 + ky * 3 + kx];
                                        ref += t;
                                        mag += fabs(t);
                                    }
                                }
                            e = fabs(ref - dw[(y * W + x) * Ci + c]) / mag;
                            if (e > worst) worst = e;
                        }
            }
            free(in); free(w); free(b); free(out); free(out1); free(cols); free(dw); free(wt);
        }
    ok = worst < 1e-6;
    snprintf(msg, sizeof msg, "max error %.2e of the sum of |terms| over %d shapes (whole and in row blocks), CHW and HWC "
             "inputs, depthwise too", worst, (int)NCASES);
    check("conv2d (im2col) and depthwise 3x3 match a double-precision reference", ok, msg);
    check("conv2d gives the same bits on 1 and 2 threads", same, "");
}

static void test_layernorm(void) {
    float x[3 * 8], w[8], b[8];
    unsigned seed = 3;
    int i, r, ok = 1;
    for (i = 0; i < 24; i++) x[i] = 100.0f + frand(&seed);
    for (i = 0; i < 8; i++) { w[i] = frand(&seed); b[i] = frand(&seed); }
    {
        float y[24];
        lmv__ctx one;
        memset(&one, 0, sizeof one);
        one.threads = 1;
        lmv__layernorm(&one, y, x, 3, 8, w, b, 1e-6f);
        for (r = 0; r < 3; r++) {
            double m = 0, v = 0;
            for (i = 0; i < 8; i++) m += x[r * 8 + i];
            m /= 8;
            for (i = 0; i < 8; i++) v += (x[r * 8 + i] - m) * (x[r * 8 + i] - m);
            v /= 8;
            for (i = 0; i < 8; i++)
                if (fabs((x[r * 8 + i] - m) / sqrt(v + 1e-6) * w[i] + b[i] - y[r * 8 + i]) > 1e-4) ok = 0;
        }
    }
    check("layernorm with a large mean", ok, "");
}

/* RmsNorm (timm's: x / sqrt(mean(x^2) + eps) * w + b) on every kernel path this CPU runs against
   double: widths that leave every tail of the 4-, 8- and 16-lane loops; weight and bias, either,
   neither; out of place on one thread, and in place over enough rows on two threads to split them. */
static void test_rmsnorm(void) {
    enum { R = 200, MAXN = 197 };
    static float x[R * MAXN], y[R * MAXN], w[MAXN], b[MAXN];
    static double ref[R * MAXN];
    static const int widths[] = {1, 2, 3, 4, 5, 7, 8, 9, 13, 15, 16, 17, 31, 33, 49, 96, 100, 197};
    double worst = 0;
    int p, s, use, r, i, paths = 0;
    unsigned seed = 41;
    char msg[160];
    for (i = 0; i < MAXN; i++) w[i] = 1.0f + frand(&seed), b[i] = frand(&seed);
    for (p = LMV_SIMD_PORTABLE; p <= LMV_SIMD_AVX512_NOVNNI; p++) {
        lmv__ctx ctx;
        if (!lmv_simd_available((lmv_simd)p)) continue;
        paths++;
        memset(&ctx, 0, sizeof ctx);
        ctx.simd = p;
        for (s = 0; s < (int)(sizeof widths / sizeof widths[0]); s++) {
            int n = widths[s];
            for (use = 0; use < 8; use++) { /* bit 0: weight, bit 1: bias, bit 2: in place on two threads */
                const float *lw = use & 1 ? w : NULL, *lb = use & 2 ? b : NULL;
                float *out = use & 4 ? x : y;
                int rows = use & 4 ? R : 5;
                ctx.threads = use & 4 ? 2 : 1;
                for (i = 0; i < rows * n; i++) x[i] = 4.0f * frand(&seed) + (i % 3 ? 0.5f : -2.0f);
                for (r = 0; r < rows; r++) {
                    double ss = 0, inv;
                    for (i = 0; i < n; i++) ss += (double)x[r * n + i] * x[r * n + i];
                    inv = 1.0 / sqrt(ss / n + 1e-6);
                    for (i = 0; i < n; i++)
                        ref[r * n + i] = x[r * n + i] * inv * (lw ? lw[i] : 1.0) + (lb ? lb[i] : 0.0);
                }
                lmv__rmsnorm(&ctx, out, x, rows, n, lw, lb, 1e-6f);
                for (i = 0; i < rows * n; i++) {
                    double e = fabs(ref[i] - out[i]) / (1.0 + fabs(ref[i]));
                    if (!(e <= worst)) worst = e;
                }
            }
        }
    }
    snprintf(msg, sizeof msg, "%d path(s); widths 1..197; max error %.1e relative (to 1 + the value)", paths, worst);
    check("rmsnorm matches double on every kernel path", worst < 1e-6, msg);
}

static void test_resample_weights(void) {
    int mode, in, out, i, j, ok = 1;
    float w[64];
    for (mode = 0; mode < 4; mode++)
        for (in = 1; in < 20; in += 3)
            for (out = 1; out < 30; out += 4)
                for (i = 0; i < out; i++) {
                    double sum = 0;
                    lmv__resample_weights((lmv__resample)mode, in, out, i, w);
                    for (j = 0; j < in; j++) sum += w[j];
                    if (fabs(sum - 1.0) > 1e-5) ok = 0;
                }
    check("resampling weights sum to one in every mode", ok, "");
}

/* What an activation should give, in double. */
static double ref_gelu(double v) { return 0.5 * v * (1.0 + erf(v / sqrt(2.0))); }
static double ref_gelu_tanh(double v) { return 0.5 * v * (1.0 + tanh(0.7978845608028654 * (v + 0.044715 * v * v * v))); }
static double ref_silu(double v) { return v / (1.0 + exp(-v)); }
/* QuickGELU as PyTorch computes it: the 1.702 is a float32 scalar times a float32 tensor */
static double ref_quick_gelu(double v) { return v / (1.0 + exp(-(double)1.702f * v)); }

/* The worst error of activation `act` on every kernel path this CPU runs, over x scaled by `scale`,
   against `ref` in double: absolute, or relative to 1e-6 + |ref| when `relative`. */
static double act_worst(const float *x, float *y, int n, float scale, lmv__act act, double (*ref)(double), int relative) {
    double worst = 0;
    int i, s;
    for (s = LMV_SIMD_PORTABLE; s <= LMV_SIMD_AVX512_NOVNNI; s++) {
        lmv__ctx ctx;
        if (!lmv_simd_available((lmv_simd)s)) continue;
        memset(&ctx, 0, sizeof ctx);
        ctx.threads = 1;
        ctx.simd = s;
        for (i = 0; i < n; i++) y[i] = scale * x[i];
        lmv__activate_all(&ctx, y, n, act);
        for (i = 0; i < n; i++) {
            double r = ref((double)scale * x[i]), e = fabs(r - y[i]);
            if (relative) e /= 1e-6 + fabs(r);
            if (e > worst) worst = e;
        }
    }
    return worst;
}

/* The activation and softmax kernels (vectorised where the build allows) against libm in double. */
static void test_activations(void) {
    enum { N = 4099 };
    static float x[N], y[N];
    double worst, wsoft = 0, sum = 0, mx = -1e30;
    int i;
    char msg[96];
    for (i = 0; i < N; i++) x[i] = -12.0f + 24.0f * (float)i / (N - 1);
    worst = act_worst(x, y, N, 1.0f, LMV__ACT_GELU, ref_gelu, 0);
    snprintf(msg, sizeof msg, "max abs error %.1e on [-12, 12]", worst);
    check("gelu matches erf in double", worst < 2e-6, msg);
    /* the tanh form (SigLIP), out to where its exp clamps: [-24, 24] */
    worst = act_worst(x, y, N, 2.0f, LMV__ACT_GELU_TANH, ref_gelu_tanh, 0);
    snprintf(msg, sizeof msg, "max abs error %.1e on [-24, 24]", worst);
    check("gelu (tanh form) matches tanh in double on every kernel path", worst < 4e-6, msg);
    /* SiLU (SwiGLU's gate), out to where its exp clamps: [-120, 120] */
    worst = act_worst(x, y, N, 10.0f, LMV__ACT_SILU, ref_silu, 1);
    snprintf(msg, sizeof msg, "max error %.1e relative (to 1e-6 + the value) on [-120, 120]", worst);
    check("silu matches exp in double on every kernel path", worst < 1e-6, msg);
    /* QuickGELU (CLIP), out past where its exp clamps: [-120, 120] */
    worst = act_worst(x, y, N, 10.0f, LMV__ACT_QUICK_GELU, ref_quick_gelu, 1);
    snprintf(msg, sizeof msg, "max error %.1e relative (to 1e-6 + the value) on [-120, 120]", worst);
    check("quick gelu matches exp in double on every kernel path", worst < 1e-6, msg);
    memcpy(y, x, sizeof x);
    lmv__softmax_rows(y, 1, N, 7.0f, NULL, NULL);
    for (i = 0; i < N; i++) mx = x[i] * 7.0 > mx ? x[i] * 7.0 : mx;
    for (i = 0; i < N; i++) sum += exp(x[i] * 7.0 - mx);
    for (i = 0; i < N; i++) {
        double ref = exp(x[i] * 7.0 - mx) / sum, rel = fabs(ref - y[i]) / (ref > 1e-30 ? ref : 1e-30);
        if (ref > 1e-30 && rel > wsoft) wsoft = rel;
    }
    snprintf(msg, sizeof msg, "max relative error %.1e over a range of 168 in the logits", wsoft);
    check("softmax matches exp in double", wsoft < 1e-5, msg);
}

/* Attention's softmax: several rows at once, scaled, plus a bias and a mask, at widths that leave
   every tail length of the vector loops (49: Swin's windows, 197: ViT's tokens). */
static void test_softmax_rows(void) {
    enum { R = 5, MAXN = 197 };
    static float x[R * MAXN], y[R * MAXN], b1[R * MAXN], b2[R * MAXN];
    static const int widths[] = {1, 3, 7, 8, 9, 16, 49, 197};
    double worst = 0;
    int w, r, i, ok = 1;
    char msg[96];
    for (w = 0; w < (int)(sizeof widths / sizeof widths[0]); w++) {
        int n = widths[w], use;
        for (use = 0; use < 4; use++) { /* no bias or mask, bias, mask, both */
            const float *p1 = use & 1 ? b1 : NULL, *p2 = use & 2 ? b2 : NULL;
            for (i = 0; i < R * n; i++) {
                x[i] = (float)((i * 37 % 101) - 50) * 0.21f;
                b1[i] = (float)(i % 13) * 0.4f - 2.0f;
                b2[i] = i % 5 == 0 ? -100.0f : 0.0f;
            }
            memcpy(y, x, sizeof(float) * (size_t)(R * n));
            lmv__softmax_rows(y, R, n, 0.5f, p1, p2);
            for (r = 0; r < R; r++) {
                double z[MAXN], mx = -1e30, sum = 0;
                for (i = 0; i < n; i++) {
                    z[i] = x[r * n + i] * 0.5 + (p1 ? p1[r * n + i] : 0) + (p2 ? p2[r * n + i] : 0);
                    mx = z[i] > mx ? z[i] : mx;
                }
                for (i = 0; i < n; i++) sum += exp(z[i] - mx);
                for (i = 0; i < n; i++) {
                    double ref = exp(z[i] - mx) / sum, err = fabs(ref - y[r * n + i]);
                    if (err > worst) worst = err;
                    if (!(err <= 1e-6 + 1e-5 * ref)) ok = 0;
                }
            }
        }
    }
    snprintf(msg, sizeof msg, "max abs error %.1e (5 rows; widths 1..197; bias, mask, both)", worst);
    check("softmax over rows with scale, bias and mask matches double", ok, msg);
}

/* The row kernels on every kernel path this CPU runs against the portable path, at widths that
   leave every tail of the 8- and 16-lane loops (1..17, 31, 33, 49, 96, 100, 197): attention's
   softmax (scale, bias, mask), LayerNorm (weight and bias, either, neither), GELU, the residual
   add (with and without a layer scale) and BatchNorm. */
static void softmax_on(int simd, float *x, int rows, int n, float scale, const float *b1, const float *b2) {
    LMV__DISPATCH(simd, lmv__softmax_rows, (x, rows, n, scale, b1, b2));
}

static void test_row_kernel_paths(void) {
    enum { R = 5, MAXN = 197 };
    static float x[R * MAXN], y0[R * MAXN], y[R * MAXN], b1[R * MAXN], b2[R * MAXN], w[MAXN], b[MAXN];
    static const int widths[] = {1, 2, 3, 5, 7, 8, 9, 13, 15, 16, 17, 31, 33, 49, 96, 100, 197};
    static float ab[2 * MAXN], var[MAXN];
    double wsoft = 0, wln = 0, wgelu = 0, wadd = 0;
    int p, s, use, i, paths = 0, ok = 1;
    unsigned seed = 29;
    char msg[200];
    for (i = 0; i < R * MAXN; i++) {
        x[i] = 3.0f * frand(&seed) + 0.5f;
        b1[i] = frand(&seed);
        b2[i] = i % 7 == 0 ? -100.0f : 0.0f;
    }
    for (i = 0; i < MAXN; i++) w[i] = 1.0f + frand(&seed), b[i] = frand(&seed), var[i] = 1.5f + frand(&seed);
    for (p = LMV_SIMD_PORTABLE + 1; p <= LMV_SIMD_AVX512_NOVNNI; p++) {
        lmv__ctx ctx, port;
        if (!lmv_simd_available((lmv_simd)p)) continue;
        paths++;
        memset(&ctx, 0, sizeof ctx);
        ctx.threads = 1;
        ctx.simd = p;
        port = ctx;
        port.simd = LMV_SIMD_PORTABLE;
        for (s = 0; s < (int)(sizeof widths / sizeof widths[0]); s++) {
            int n = widths[s];
            size_t bytes = sizeof(float) * (size_t)(R * n);
            for (use = 0; use < 4; use++) {
                const float *p1 = use & 1 ? b1 : NULL, *p2 = use & 2 ? b2 : NULL;
                const float *lw = use & 1 ? w : NULL, *lb = use & 2 ? b : NULL;
                memcpy(y0, x, bytes), memcpy(y, x, bytes);
                softmax_on(LMV_SIMD_PORTABLE, y0, R, n, 0.7f, p1, p2);
                softmax_on(p, y, R, n, 0.7f, p1, p2);
                for (i = 0; i < R * n; i++) {
                    double e = fabs((double)y[i] - y0[i]) / (1e-7 + fabs(y0[i]));
                    if (e > wsoft) wsoft = e;
                }
                lmv__layernorm(&port, y0, x, R, n, lw, lb, 1e-5f);
                lmv__layernorm(&ctx, y, x, R, n, lw, lb, 1e-5f);
                for (i = 0; i < R * n; i++) {
                    double e = fabs((double)y[i] - y0[i]);
                    if (e > wln) wln = e;
                }
                if (use < 2) { /* y = y0 + x (+ layer scale w), from the same y0 */
                    memcpy(y, y0, bytes);
                    lmv__residual(&port, y0, y0, x, R, n, use ? w : NULL);
                    lmv__residual(&ctx, y, y, x, R, n, use ? w : NULL);
                } else {
                    lmv__batchnorm(&port, y0, x, R, n, use & 1 ? w : NULL, b, b1, var, 1e-5f, ab);
                    lmv__batchnorm(&ctx, y, x, R, n, use & 1 ? w : NULL, b, b1, var, 1e-5f, ab);
                }
                for (i = 0; i < R * n; i++) {
                    double e = fabs((double)y[i] - y0[i]);
                    if (e > wadd) wadd = e;
                }
            }
            memcpy(y0, x, bytes), memcpy(y, x, bytes);
            lmv__activate_all(&port, y0, (size_t)(R * n), LMV__ACT_GELU);
            lmv__activate_all(&ctx, y, (size_t)(R * n), LMV__ACT_GELU);
            for (i = 0; i < R * n; i++) {
                double e = fabs((double)y[i] - y0[i]);
                if (e > wgelu) wgelu = e;
            }
        }
    }
    ok = wsoft < 2e-6 && wln < 2e-5 && wgelu < 2e-6 && wadd < 1e-5;
    snprintf(msg, sizeof msg, "%d paths besides portable; worst: softmax %.1e relative, layernorm %.1e, gelu %.1e, "
             "residual/batchnorm %.1e", paths, wsoft, wln, wgelu, wadd);
    check("softmax, layernorm, gelu, residual and batchnorm on every kernel path match the portable path at every tail",
          ok, msg);
}

static void test_topk(void) {
    float logits[6] = {0.5f, 2.0f, -1.0f, 2.0f, 1.0f, 0.0f}, prob[3];
    int idx[3], n = lmv_topk(logits, 6, 3, idx, prob);
    double sum = 0;
    int i;
    for (i = 0; i < 6; i++) sum += exp(logits[i]);
    check("topk orders by value, ties by index", n == 3 && idx[0] == 1 && idx[1] == 3 && idx[2] == 4, "");
    check("topk probabilities are the softmax", fabs(prob[0] - exp(2.0) / sum) < 1e-6 && fabs(prob[2] - exp(1.0) / sum) < 1e-6, "");
    check("topk clamps k to n", lmv_topk(logits, 2, 5, idx, NULL) == 2, "");
}

static void test_npy(void) {
    char descr[3];
    char buf[256 + 24];
    int shape[3] = {2, 1, 3}, i;
    size_t hl = lmv_npy_header(buf, 3, shape);
    lmv_npy npy;
    lmv_error err;
    float vals[6] = {1, 2, 3, 4, 5, 6};
    memcpy(buf + hl, vals, sizeof vals);
    check("npy header is 64-aligned", hl % 64 == 0, "");
    check("npy round trip", lmv_npy_parse(buf, hl + sizeof vals, &npy, &err) == LMV_OK && npy.ndim == 3 &&
                                npy.shape[2] == 3 && npy.count == 6 && npy.data[5] == 6.0f, err.message);
    check("npy truncated data", lmv_npy_parse(buf, hl + 8, &npy, &err) == LMV_ERR_TRUNCATED, err.message);
    check("npy bad magic", lmv_npy_parse("hello world", 11, &npy, &err) == LMV_ERR_BAD_INPUT, err.message);
    memcpy(descr, buf + 10 + 11, 3); /* what lmv_npy_header wrote: the host's float32 */
    memcpy(buf + 10 + 11, "<f8", 3);
    check("npy float64 refused", lmv_npy_parse(buf, hl + sizeof vals, &npy, &err) == LMV_ERR_BAD_INPUT, err.message);
    {
        int refused = 0;
        /* every cut inside the header or the data of a valid file must be refused (and, in the ASan
           build, not crash) */
        memcpy(buf + 10 + 11, descr, 3);
        check("npy restored header parses", lmv_npy_parse(buf, hl + sizeof vals, &npy, &err) == LMV_OK, err.message);
        for (i = 0; i < (int)(hl + sizeof vals); i++) refused += lmv_npy_parse(buf, (size_t)i, &npy, &err) != LMV_OK;
        check("npy every truncation refused", refused == (int)(hl + sizeof vals), "");
    }
}

static void test_arena(void) {
    static unsigned char mem[4096];
    lmv_arena a;
    lmv_allocator al;
    void *p, *q;
    lmv_arena_init(&a, mem, sizeof mem);
    al = lmv_arena_allocator(&a);
    p = lmv__alloc(&al, 1000);
    q = lmv__alloc(&al, 1000);
    check("arena blocks are 64-aligned and disjoint", p && q && ((uintptr_t)p % 64) == 0 && ((uintptr_t)q % 64) == 0 &&
                                                          (unsigned char *)q >= (unsigned char *)p + 1000, "");
    check("arena refuses what does not fit", lmv__alloc(&al, 4000) == NULL, "");
}

/* ---- the thread guard, fed made-up timings (no clock: the pick depends only on them) ---- */

/* A made-up machine: `cores` cores, `busy` of them taken by another process. ms per GMAC on c
   threads: 40 / c while every thread has a core of its own; with more threads than free cores
   every barrier waits on a descheduled thread: 4 times slower than spread over the free cores,
   or 4 times the one-thread time when no core would be left. `wobble` adds a deterministic
   +-10 % noise. */
static double guard_machine(int cores, int busy, int c, unsigned *wobble) {
    int free_cores = cores - busy;
    double t = c <= free_cores ? 40.0 / c : free_cores > 1 ? 4.0 * 40.0 / free_cores : 4.0 * 40.0;
    if (wobble) t *= 0.9 + 0.2 * (double)((*wobble = *wobble * 1664525u + 1013904223u) >> 8 & 0xFFFF) / 65535.0;
    return t;
}

/* `runs` runs on the made-up machine; returns the count of the last run's pick (not a probe) and
   counts the runs at each thread count into ran[] (index: thread count, up to 16). */
static int guard_runs(lmv__guard *g, int cores, int busy, int runs, int *ran, unsigned *wobble) {
    int i, k = 0, probe = 0, picked = 0;
    for (i = 0; i < runs; i++) {
        k = lmv__guard_pick(g, &probe);
        if (ran) ran[g->count[k]]++;
        if (!probe) picked = g->count[k];
        lmv__guard_note(g, k, probe, guard_machine(cores, busy, g->count[k], wobble));
    }
    return picked;
}

static void test_thread_guard(void) {
    lmv__guard g;
    int ran[17], pick, n16[4] = {1, 8, 15, 16}, i, same = 1;
    unsigned wobble = 7;
    char msg[160];
    lmv__guard_reset(&g, 1);
    check("thread guard: one thread has nothing to choose", g.n == 1 && g.count[0] == 1, "");
    lmv__guard_reset(&g, 2);
    check("thread guard: 2 threads choose between 1 and 2", g.n == 2 && g.count[0] == 1 && g.count[1] == 2, "");
    lmv__guard_reset(&g, 3);
    check("thread guard: 3 threads choose among 1, 2, 3", g.n == 3 && g.count[1] == 2 && g.count[2] == 3, "");
    lmv__guard_reset(&g, 16);
    for (i = 0; i < 4; i++) same &= g.count[i] == n16[i];
    check("thread guard: 16 threads choose among 1, 8 (half), 15 (all but one), 16", g.n == 4 && same, "");

    /* idle 16 cores: all threads, and no run ever on one thread or on half */
    memset(ran, 0, sizeof ran);
    pick = guard_runs(&g, 16, 0, 300, ran, NULL);
    snprintf(msg, sizeof msg, "picked %d; runs on 1 / 8 / 15 / 16 threads: %d / %d / %d / %d", pick, ran[1], ran[8], ran[15], ran[16]);
    check("thread guard: an idle 16-core machine runs on 16 threads, probing only 15", pick == 16 && ran[1] == 0 && ran[8] == 0 &&
          ran[15] > 0 && ran[15] <= 10, msg);
    /* the probes back off: at most one in 64 runs while the pick holds */
    memset(ran, 0, sizeof ran);
    pick = guard_runs(&g, 16, 0, 640, ran, NULL);
    snprintf(msg, sizeof msg, "%d probes in 640 runs", ran[15]);
    check("thread guard: probes back off to one in 64 runs (a little more: 15 is slower)", pick == 16 && ran[15] >= 8 &&
          ran[15] <= 11, msg);

    /* one core gets busy: all 16 are slower than 15 but still faster than one thread; the
       guard moves to 15 within one probe interval and stays */
    memset(ran, 0, sizeof ran);
    pick = guard_runs(&g, 16, 1, 3, ran, NULL);
    pick = guard_runs(&g, 16, 1, 200, ran, NULL);
    snprintf(msg, sizeof msg, "picked %d; runs on 1 / 8 / 15 / 16 threads: %d / %d / %d / %d", pick, ran[1], ran[8], ran[15], ran[16]);
    check("thread guard: one busy core of 16: the guard settles on 15 threads (the middle count)", pick == 15 &&
          ran[16] <= 12 && ran[1] == 0, msg);
    /* the load goes away: back to 16 within a probe interval (at most 64 x 4 runs: 16 was last
       timed 4 times slower than 15) */
    memset(ran, 0, sizeof ran);
    pick = guard_runs(&g, 16, 0, 300, ran, NULL);
    snprintf(msg, sizeof msg, "picked %d", pick);
    check("thread guard: the load gone, the guard re-probes and returns to 16 threads", pick == 16, msg);

    /* 2 cores, one busy: two threads are 4 times slower than one; one thread, probing two
       now and then; then idle again: back to two */
    lmv__guard_reset(&g, 2);
    memset(ran, 0, sizeof ran);
    pick = guard_runs(&g, 2, 1, 300, ran, NULL);
    snprintf(msg, sizeof msg, "picked %d; runs on 1 / 2 threads: %d / %d", pick, ran[1], ran[2]);
    check("thread guard: 2 cores, one busy: one thread, two only as probes", pick == 1 && ran[2] <= 12, msg);
    pick = guard_runs(&g, 2, 0, 300, NULL, NULL);
    snprintf(msg, sizeof msg, "picked %d", pick);
    check("thread guard: 2 cores idle again: back to two threads", pick == 2, msg);

    /* the busy 2-core machine as measured: two threads 30 times slower than one. Probes wait
       that much longer, so over 1000 runs the guard costs under a fifth on one thread's time
       (probes every 4 to 64 runs at that price would cost over half) */
    {
        double total = 0.0, ms;
        int probe, k;
        lmv__guard_reset(&g, 2);
        for (i = 0; i < 1000; i++) {
            k = lmv__guard_pick(&g, &probe);
            ms = g.count[k] == 1 ? 40.0 : 1200.0;
            total += ms;
            lmv__guard_note(&g, k, probe, ms);
        }
        snprintf(msg, sizeof msg, "1000 runs took %.3f times 1000 one-thread runs", total / 40000.0);
        check("thread guard: slow probes are rare: two threads 30x slower cost under 1.2x in all", total <= 1.2 * 40000.0, msg);
    }

    /* timings that wander by +-10 %: an idle 2-core machine never picks one thread (it must be
       a quarter faster), and a busy one never picks two */
    lmv__guard_reset(&g, 2);
    memset(ran, 0, sizeof ran);
    pick = guard_runs(&g, 2, 0, 500, ran, &wobble);
    snprintf(msg, sizeof msg, "runs on 1 / 2 threads: %d / %d", ran[1], ran[2]);
    check("thread guard: noisy idle 2 cores: two threads, one only as probes", pick == 2 && ran[1] <= 12, msg);
    lmv__guard_reset(&g, 4);
    memset(ran, 0, sizeof ran);
    pick = guard_runs(&g, 4, 1, 500, ran, &wobble);
    snprintf(msg, sizeof msg, "picked %d; runs on 1 / 2 / 3 / 4 threads: %d / %d / %d / %d", pick, ran[1], ran[2], ran[3], ran[4]);
    check("thread guard: noisy 4 cores, one busy: 3 threads", pick == 3 && ran[3] > 450, msg);
}

/* ---- loader mutations ---- */

static void put32(unsigned char *p, uint32_t v) { p[0] = (unsigned char)v; p[1] = (unsigned char)(v >> 8); p[2] = (unsigned char)(v >> 16); p[3] = (unsigned char)(v >> 24); }

/* Recompute the header CRC after a mutation, when the (possibly mutated) section fields still
   lie inside the file; otherwise the loader must reject the offsets before it reads them. */
static void fix_header_crc(unsigned char *f, size_t n) {
    lmv__crc c;
    unsigned char head[80];
    uint64_t mo = lmv__rd64(f + 24), ms = lmv__rd64(f + 32), to = lmv__rd64(f + 40), ts = lmv__rd64(f + 48);
    uint32_t crc;
    if (mo > n || ms > n - mo || to > n || ts > n - to) return;
    lmv__crc_init(&c);
    memcpy(head, f, 80);
    crc = lmv__crc_update(&c, 0, head, 80);
    crc = lmv__crc_update(&c, crc, f + mo, (size_t)ms);
    crc = lmv__crc_update(&c, crc, f + to, (size_t)ts);
    put32(f + 80, crc);
}

/* Open a (possibly damaged) copy, and if it opens, run it once on a small input. */
static lmv_result try_open(const unsigned char *src, size_t n, lmv_error *err) {
    unsigned char *copy = (unsigned char *)malloc(n ? n : 1);
    lmv_model *m = NULL;
    lmv_result r;
    memcpy(copy, src, n);
    r = lmv_model_open_memory(copy, n, NULL, &m, err);
    if (r == LMV_OK) {
        lmv_session *s;
        const lmv_model_info *in = lmv_model_info_get(m);
        if (lmv_session_create(m, NULL, &s, err) == LMV_OK) {
            size_t px = (size_t)in->in_chans * in->img_h * in->img_w;
            float *x = (float *)calloc(px, sizeof(float)), *y = (float *)calloc((size_t)in->num_features + (size_t)in->num_classes + 1, sizeof(float));
            lmv_run_features(s, x, 1, in->img_h, in->img_w, y, err);
            free(x); free(y);
            lmv_session_destroy(s);
        }
        lmv_model_close(m);
    }
    free(copy);
    return r;
}

static void test_mutations(const char *path) {
    size_t n, i, data_off, meta_end;
    unsigned char *f = tu_read_file(path, &n), *g;
    lmv_error err;
    lmv_result r;
    int ok, opened = 0, counts[32] = {0};
    char msg[200];
    if (!f) { check("mutation: model file readable", 0, path); return; }
    check("mutation: pristine file opens and runs", try_open(f, n, &err) == LMV_OK, err.message);
    data_off = (size_t)lmv__rd64(f + 64);
    meta_end = (size_t)(lmv__rd64(f + 40) + lmv__rd64(f + 48));
    g = (unsigned char *)malloc(n);

    /* every truncation inside header/meta/table, and a few inside the data */
    ok = 1;
    for (i = 0; i < n; i += (i < data_off + 256 ? 1 : (n - data_off) / 64 + 1)) {
        r = try_open(f, i, &err);
        if (r == LMV_OK) ok = 0;
        if (i >= 8 && r != LMV_ERR_TRUNCATED) ok = 0;
    }
    check("mutation: every truncation gives LMV_ERR_TRUNCATED", ok, "");

    memcpy(g, f, n); g[0] = 'X';
    check("mutation: bad magic", try_open(g, n, &err) == LMV_ERR_BAD_MAGIC, err.message);
    memcpy(g, f, n); put32(g + 8, 2);
    check("mutation: newer version", try_open(g, n, &err) == LMV_ERR_VERSION, err.message);
    memcpy(g, f, n); put32(g + 12, 0x04030201u);
    check("mutation: big-endian file", try_open(g, n, &err) == LMV_ERR_ENDIAN, err.message);
    memcpy(g, f, n); g[n - 1] ^= 0x40;
    check("mutation: flipped weight byte gives a checksum error", try_open(g, n, &err) == LMV_ERR_CHECKSUM, err.message);
    memcpy(g, f, n); g[130] ^= 1;
    check("mutation: flipped meta byte gives a checksum error", try_open(g, n, &err) == LMV_ERR_CHECKSUM, err.message);

    /* every byte of header (fields), meta and table changed, CRC fixed up: structural checks */
    for (i = 8; i < meta_end; i++) {
        int v;
        if (i >= 80 && i < 88) continue; /* the CRC fields themselves */
        for (v = 0; v < 3; v++) {
            static const unsigned char xors[3] = {0x01, 0x80, 0xFF};
            memcpy(g, f, n);
            g[i] ^= xors[v];
            fix_header_crc(g, n);
            r = try_open(g, n, &err);
            if (r == LMV_OK) opened++;
            counts[r < 32 ? r : 31]++;
        }
    }
    snprintf(msg, sizeof msg, "%d still opened (benign changes such as a float value), rejected: corrupt %d, shape %d, missing %d, truncated %d, limit %d, other %d",
             opened, counts[LMV_ERR_CORRUPT], counts[LMV_ERR_SHAPE], counts[LMV_ERR_MISSING_TENSOR], counts[LMV_ERR_TRUNCATED],
             counts[LMV_ERR_LIMIT], counts[LMV_ERR_UNSUPPORTED] + counts[LMV_ERR_VERSION] + counts[LMV_ERR_ENDIAN] + counts[LMV_ERR_CHECKSUM]);
    check("mutation: every header/meta/table byte changed, no crash", 1, msg);
    free(g);
    free(f);
}

int main(int argc, char **argv) {
    test_gemm();
    test_gemm_gelu();
    test_half();
    test_gemm_reduced();
    test_gemm_panels();
    test_gemm_int8_compute();
    test_gemm_paths();
    test_gemm_accumulate();
    test_attention();
    test_conv();
    test_layernorm();
    test_rmsnorm();
    test_resample_weights();
    test_activations();
    test_softmax_rows();
    test_row_kernel_paths();
    test_topk();
    test_npy();
    test_arena();
    test_thread_guard();
    if (argc > 1) test_mutations(argv[1]);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
