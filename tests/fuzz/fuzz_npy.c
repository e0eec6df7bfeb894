/* libFuzzer harness for the .npy reader, lmv_npy_parse: every field of a parsed file must lie
   inside the buffer, and the header it describes must round-trip through lmv_npy_header.

   clang -g -O1 -fsanitize=fuzzer,address,undefined tests/fuzz/fuzz_npy.c -o fuzz_npy -lm
   mkdir -p work && ./fuzz_npy -max_total_time=300 work tests/fuzz/corpus_npy */
#define LEMEVIT_IMPLEMENTATION
#include "../../lemevit.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    lmv_npy npy, again;
    lmv_error err;
    unsigned char *copy = (unsigned char *)malloc(size ? size : 1);
    volatile float sum = 0.0f;
    size_t i;
    if (!copy) return 0;
    if (size) memcpy(copy, data, size);
    if (lmv_npy_parse(copy, size, &npy, &err) == LMV_OK) {
        size_t prod = 1;
        int d;
        if (npy.ndim < 0 || npy.ndim > 8 || npy.data_offset > size || npy.count > (size - npy.data_offset) / 4)
            __builtin_trap();
        for (d = 0; d < npy.ndim; d++) prod *= (size_t)npy.shape[d];
        if (prod != npy.count) __builtin_trap();
        for (i = 0; i < npy.count; i++) sum += npy.data[i]; /* ASan checks every element is inside */
        if (npy.count <= 4096) {  /* our own header for this shape parses back to it */
            char *buf = (char *)malloc(256 + npy.count * 4);
            size_t hl;
            if (buf) {
                hl = lmv_npy_header(buf, npy.ndim, npy.shape);
                memcpy(buf + hl, npy.data, npy.count * 4);
                if (lmv_npy_parse(buf, hl + npy.count * 4, &again, &err) != LMV_OK || again.count != npy.count ||
                    again.ndim != npy.ndim)
                    __builtin_trap();
                free(buf);
            }
        }
    }
    free(copy);
    return 0;
}
