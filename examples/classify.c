/* classify - the top classes of JPEG photos, with any converted model.

     build/classify MODEL.lmv IMAGE.jpg [more images...] [--top K] [--threads N] [--ignore-exif]
                                                       [--max-pixels N]

   Each image goes through the model's own eval transform (the resize, crop and normalisation its
   training used, stored in the .lmv file), so the answer is the one PyTorch gives for the same
   file through Pillow and timm/torchvision. */
#define LEMEVIT_IMPLEMENTATION
#include "../lemevit.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

int main(int argc, char **argv) {
    lmv_model *model;
    lmv_session *sess;
    lmv_session_options so = lmv_session_options_default();
    lmv_image_options io = lmv_image_options_default();
    lmv_prediction top[64];
    lmv_error err;
    int k = 5, i, j, n, failed = 0, nimages = 0;

    for (i = 2; i < argc; i++) { /* options may come anywhere after the model */
        if (!strcmp(argv[i], "--top") && i + 1 < argc) k = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) so.threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--ignore-exif")) io.ignore_orientation = 1;
        else if (!strcmp(argv[i], "--max-pixels") && i + 1 < argc) io.max_pixels = (size_t)strtoull(argv[++i], NULL, 10);
        else if (argv[i][0] == '-') break;
        else nimages++;
    }
    if (argc < 3 || i < argc || nimages == 0 || k < 1 || k > 64) {
        fprintf(stderr, "usage: classify MODEL.lmv IMAGE.jpg [more images...] [--top K] [--threads N] [--ignore-exif]\n"
                        "                [--max-pixels N]\n"
                        "  --top K         how many classes to print per image (1..64, default 5)\n"
                        "  --threads N     threads to use (default: all)\n"
                        "  --ignore-exif   do not rotate images by their EXIF orientation (PIL's Image.open\n"
                        "                  does not either)\n"
                        "  --max-pixels N  refuse larger images (default 178956970, Pillow's bound)\n");
        return 2;
    }
    if (lmv_model_open_file(argv[1], NULL, &model, &err) != LMV_OK) {
        fprintf(stderr, "classify: %s: %s\n", argv[1], err.message);
        return 1;
    }
    if (lmv_session_create(model, &so, &sess, &err) != LMV_OK) {
        fprintf(stderr, "classify: %s\n", err.message);
        return 1;
    }
    for (i = 2; i < argc; i++) {
        double t0;
        if (argv[i][0] == '-') {
            i += strcmp(argv[i], "--ignore-exif") != 0; /* skip the option's value */
            continue;
        }
        t0 = now_ms();
        if (lmv_classify_file(sess, argv[i], &io, k, top, &err) != LMV_OK) {
            fprintf(stderr, "classify: %s: %s\n", argv[i], err.message);
            failed = 1;
            continue;
        }
        n = k < lmv_model_info(model)->num_classes ? k : lmv_model_info(model)->num_classes;
        printf("%s (%.1f ms)\n", argv[i], now_ms() - t0);
        for (j = 0; j < n; j++) {
            if (top[j].label) printf("  %6.2f%%  %s\n", 100.0 * top[j].prob, top[j].label);
            else printf("  %6.2f%%  class %d\n", 100.0 * top[j].prob, top[j].index);
        }
    }
    lmv_session_destroy(sess);
    lmv_model_close(model);
    return failed;
}
