/* Small helpers shared by the C test programs in tests/ (not part of the library). */
#ifndef LEMEVIT_TEST_UTIL_H
#define LEMEVIT_TEST_UTIL_H

#include <stdio.h>
#include <stdlib.h>

/* The whole file at `path` in a malloc'ed buffer (64 spare bytes after the data, so a test may write a
   little past the end of what it read); its size in *n. NULL (and *n = 0) when it cannot be read. */
static unsigned char *tu_read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    unsigned char *buf = NULL;
    long len;
    *n = 0;
    if (!f) return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (len = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0) {
        buf = (unsigned char *)malloc((size_t)len + 64);
        if (buf && fread(buf, 1, (size_t)len, f) == (size_t)len) *n = (size_t)len;
        else { free(buf); buf = NULL; }
    }
    fclose(f);
    return buf;
}

#endif
