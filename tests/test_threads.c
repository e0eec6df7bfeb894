/* POSIX threads: several threads run inference on ONE loaded model at once, each with its own
   session, and every result must be bit-identical to the single-threaded run of the same input.
   Built plain and with ThreadSanitizer by tests/test_threads.py, which catches any write to shared
   state (the model is never written to after lmv_model_open_*). Then one session runs all inputs
   as one batch on 2 threads (with OpenMP: two images side by side, the third on both threads),
   again bit-identical to the single-threaded runs.

     test_threads MODEL.lmv [THREADS] [ROUNDS] */
#define LEMEVIT_IMPLEMENTATION
#include "../lemevit.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MAX_THREADS = 16, INPUTS = 3 };

static const lmv_model *model;
static int H, W, C, OUT, ROUNDS;
static float *inputs[INPUTS], *expected[INPUTS];

typedef struct job {
    int id;
    int mismatches, errors, runs;
    char message[256];
} job;

static void fill(float *x, size_t n, unsigned seed) {
    size_t i;
    for (i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        x[i] = (float)((seed >> 8) & 0xFFFF) / 16384.0f - 2.0f;
    }
}

static void *worker(void *arg) {
    job *j = (job *)arg;
    lmv_session *s;
    lmv_session_options so = lmv_session_options_default();
    lmv_error err;
    float *y = (float *)malloc(sizeof(float) * (size_t)OUT);
    int r;
    so.threads = 1;
    if (!y || lmv_session_create(model, &so, &s, &err) != LMV_OK) {
        j->errors++;
        snprintf(j->message, sizeof j->message, "%s", y ? err.message : "out of memory");
        free(y);
        return NULL;
    }
    for (r = 0; r < ROUNDS; r++) {
        int k = (j->id + r) % INPUTS; /* threads work on different inputs at the same time */
        if (lmv_run_features(s, inputs[k], 1, H, W, y, &err) != LMV_OK) {
            j->errors++;
            snprintf(j->message, sizeof j->message, "%s", err.message);
            continue;
        }
        j->runs++;
        if (memcmp(y, expected[k], sizeof(float) * (size_t)OUT) != 0) j->mismatches++;
    }
    lmv_session_destroy(s);
    free(y);
    return NULL;
}

int main(int argc, char **argv) {
    lmv_model *m;
    lmv_session *s;
    lmv_error err;
    pthread_t tid[MAX_THREADS];
    job jobs[MAX_THREADS];
    int nthreads = argc > 2 ? atoi(argv[2]) : 4, i, passed = 0, failed = 0, runs = 0, bad = 0, errors = 0;
    size_t n;
    ROUNDS = argc > 3 ? atoi(argv[3]) : 3;
    if (argc < 2 || nthreads < 1 || nthreads > MAX_THREADS || ROUNDS < 1) {
        fprintf(stderr, "usage: test_threads MODEL.lmv [THREADS 1..16] [ROUNDS]\n");
        return 2;
    }
    if (lmv_model_open_file(argv[1], NULL, &m, &err) != LMV_OK) {
        printf("FAIL open %s: %s\n0 passed, 1 failed\n", argv[1], err.message);
        return 1;
    }
    model = m;
    H = lmv_model_info_get(m)->img_h;
    W = lmv_model_info_get(m)->img_w;
    C = lmv_model_info_get(m)->in_chans;
    OUT = lmv_model_info_get(m)->num_features;
    n = (size_t)C * H * W;
    /* the reference: each input run alone on this thread */
    if (lmv_session_create(m, NULL, &s, &err) != LMV_OK) {
        printf("FAIL session: %s\n0 passed, 1 failed\n", err.message);
        return 1;
    }
    lmv_session_set_threads(s, 1);
    for (i = 0; i < INPUTS; i++) {
        inputs[i] = (float *)malloc(n * sizeof(float));
        expected[i] = (float *)malloc(sizeof(float) * (size_t)OUT);
        if (!inputs[i] || !expected[i]) return 1;
        fill(inputs[i], n, 100u + (unsigned)i);
        if (lmv_run_features(s, inputs[i], 1, H, W, expected[i], &err) != LMV_OK) {
            printf("FAIL single-threaded run: %s\n0 passed, 1 failed\n", err.message);
            return 1;
        }
    }
    lmv_session_destroy(s);
    memset(jobs, 0, sizeof jobs);
    for (i = 0; i < nthreads; i++) {
        jobs[i].id = i;
        if (pthread_create(&tid[i], NULL, worker, &jobs[i]) != 0) {
            printf("FAIL pthread_create\n0 passed, 1 failed\n");
            return 1;
        }
    }
    for (i = 0; i < nthreads; i++) pthread_join(tid[i], NULL);
    for (i = 0; i < nthreads; i++) {
        runs += jobs[i].runs;
        bad += jobs[i].mismatches;
        errors += jobs[i].errors;
        if (jobs[i].errors) printf("   thread %d: %s\n", i, jobs[i].message);
    }
    if (errors == 0) { passed++; printf("PASS %d threads x %d runs on one model, each with its own session\n", nthreads, ROUNDS); }
    else { failed++; printf("FAIL %d of %d runs failed\n", errors, nthreads * ROUNDS); }
    if (bad == 0 && runs == nthreads * ROUNDS) { passed++; printf("PASS all %d results bit-identical to the single-threaded run\n", runs); }
    else { failed++; printf("FAIL %d of %d results differ from the single-threaded run\n", bad, runs); }
    {
        lmv_session_options so = lmv_session_options_default();
        float *x = (float *)malloc(n * INPUTS * sizeof(float)), *y = (float *)malloc(sizeof(float) * (size_t)OUT * INPUTS);
        int same = 1;
        so.threads = 2;
        so.max_batch = INPUTS;
        if (!x || !y) return 1;
        for (i = 0; i < INPUTS; i++) memcpy(x + n * i, inputs[i], n * sizeof(float));
        if (lmv_session_create(m, &so, &s, &err) != LMV_OK || lmv_run_features(s, x, INPUTS, H, W, y, &err) != LMV_OK) {
            failed++;
            printf("FAIL batch of %d on 2 threads: %s\n", INPUTS, err.message);
        } else {
            for (i = 0; i < INPUTS; i++) same &= memcmp(y + (size_t)OUT * i, expected[i], sizeof(float) * (size_t)OUT) == 0;
            if (same) passed++;
            else failed++;
            printf("%s one batch of %d on 2 threads (side by side where built with OpenMP) bit-identical to one by one\n",
                   same ? "PASS" : "FAIL", INPUTS);
            lmv_session_destroy(s);
        }
        free(x);
        free(y);
    }
    /* threads = 2 is a most: the session times one thread too (its second run) and may run
       either; exact_threads runs two every time. Both give the one-thread bits on every run. */
    {
        int exact, same = 1, r, timed_one = 0, timed_two = 0;
        float *y = (float *)malloc(sizeof(float) * (size_t)OUT);
        if (!y) return 1;
        for (exact = 0; exact < 2; exact++) {
            lmv_session_options so = lmv_session_options_default();
            so.threads = 2;
            so.exact_threads = exact;
            if (lmv_session_create(m, &so, &s, &err) != LMV_OK) {
                failed++;
                printf("FAIL session with threads = 2, exact_threads = %d: %s\n", exact, err.message);
                continue;
            }
            for (r = 0; r < 6; r++) {
                if (lmv_run_features(s, inputs[r % INPUTS], 1, H, W, y, &err) != LMV_OK) {
                    same = 0;
                    printf("   run %d: %s\n", r, err.message);
                } else
                    same &= memcmp(y, expected[r % INPUTS], sizeof(float) * (size_t)OUT) == 0;
            }
            if (!exact) timed_one = s->guard.n == 2 && s->guard.est[0] > 0.0, timed_two = s->guard.n == 2 && s->guard.est[1] > 0.0;
            else if (s->guard.est[0] > 0.0 || s->guard.est[1] > 0.0) same = 0, printf("   exact_threads: the guard ran\n");
            lmv_session_destroy(s);
        }
        free(y);
        if (same) passed++;
        else failed++;
        printf("%s threads = 2 (%s) and exact_threads: every run bit-identical to the single-threaded run\n",
               same ? "PASS" : "FAIL", timed_one && timed_two ? "ran on 1 and on 2 threads" : "built without OpenMP: one thread");
#ifdef _OPENMP
        if (timed_one && timed_two) passed++;
        else failed++;
        printf("%s threads = 2 is a most: the session timed runs on 1 and on 2 threads\n", timed_one && timed_two ? "PASS" : "FAIL");
#endif
    }
    for (i = 0; i < INPUTS; i++) {
        free(inputs[i]);
        free(expected[i]);
    }
    lmv_model_close(m);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
