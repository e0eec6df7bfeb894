/* lemevit.h - vision transformers (LeMeViT, ViT/DeiT, Swin V1/V2) in one C99 header.   MIT licence.

   Do this:
       #define LEMEVIT_IMPLEMENTATION
   before you include this file in *one* C or C++ file to create the implementation.
   Every other file includes it without the define and sees only the declarations.

   WHAT IT DOES

   Loads a `.lmv` weight file (made from a PyTorch checkpoint by tools/convert.py) and runs the
   model on float NCHW tensors, giving the same logits PyTorch gives (within float rounding).
   The weights are used in place: a file you read or mapped into memory, or a const array linked
   into a firmware image, is never copied. All other memory comes from one allocator you may
   replace, or from one buffer you hand over. Matrix weights may be stored as float32 (in row
   order, or already in the matrix multiply's panels, as the converter writes them), f16 or int8
   (per output channel); the arithmetic is float32 in every case.

   USAGE

       lmv_model *model;
       lmv_session *sess;
       lmv_error err;
       float logits[1000];
       int top[5];
       float prob[5];

       if (lmv_model_open_file("vit.lmv", NULL, &model, &err) != LMV_OK) { puts(err.message); return 1; }
       if (lmv_session_create(model, NULL, &sess, &err) != LMV_OK) { puts(err.message); return 1; }
       lmv_run(sess, input_nchw, 1, 224, 224, logits, &err);     // input: 1x3x224x224 floats
       lmv_topk(logits, lmv_model_info_get(model)->num_classes, 5, top, prob);
       printf("%s %.3f\n", lmv_model_label(model, top[0]), prob[0]);
       lmv_session_destroy(sess);
       lmv_model_close(model);

   Or from a JPEG straight to labels, through the model's own eval transform:

       lmv_prediction top5[5];
       int n;                                                        // how many came back: min(5, classes)
       if (lmv_classify_file(sess, "cat.jpg", NULL, 5, top5, &n, &err) == LMV_OK)
           printf("%s %.3f\n", top5[0].label, top5[0].prob);

   The input from a JPEG by hand, exactly as torchvision's eval transform on a Pillow image makes it:

       const lmv_model_info *info = lmv_model_info_get(model);
       const lmv_preprocess *pp = &info->preprocess;
       float *input = malloc(sizeof(float) * info->in_chans * pp->crop_h * pp->crop_w);
       lmv_image img;
       if (lmv_image_load_jpeg_file("cat.jpg", NULL, &img, &err) != LMV_OK) { puts(err.message); return 1; }
       lmv_preprocess_image(&img, pp, info->in_chans, input, NULL, &err);   // resize, crop, normalise
       lmv_image_free(&img);
       lmv_run(sess, input, 1, pp->crop_h, pp->crop_w, logits, &err);

   Parameters that recur:
       batch, h, w   the input is batch x in_chans x h x w floats, NCHW, already normalised.
       err           optional (may be NULL): on failure receives the result code and a sentence
                     saying what is wrong and, where it helps, what to do.

   API REFERENCE (each public function, declared below with its parameters and errors)

   Results and memory
       lmv_result_string()            a few words on an lmv_result (lmv_error.message has the sentence)
       lmv_result_name()              the enumerator's spelling, "LMV_ERR_IO", for logs and JSON
       lmv_arena_init()               a bump allocator over a buffer you own
       lmv_arena_allocator()          the lmv_allocator that takes from an arena
       lmv_arena_mark()               the arena's fill level now ...
       lmv_arena_release()            ... and back to it: drops all allocated since
   Models
       lmv_open_options_default()     the defaults (all zeros mean the same)
       lmv_model_memory()             the bytes opening a model takes, before opening it
       lmv_model_open_memory()        open a .lmv held in memory, in place; tables from the allocator
       lmv_model_open_prealloc()      the same, the tables in memory you give
       lmv_model_open_file()          read a .lmv file and open it
       lmv_model_close()              close a model
       lmv_model_info_get()           family, input size, classes, features, preprocessing
       lmv_model_label()              the name of class i
       lmv_model_config()             config entry i of the file (for tools)
       lmv_model_tensor()             tensor i of the file (for tools)
       lmv_dtype_name()               "f32", "f16", "int8" or "f32p"
   Sessions and running
       lmv_session_options_default()  the defaults (all zeros mean the same)
       lmv_session_memory()           the bytes a session takes, before creating it
       lmv_session_create()           a session: activations planned for max_batch x max_h x max_w
       lmv_session_create_prealloc()  the same, in memory you give
       lmv_session_destroy()          destroy a session
       lmv_session_set_threads()      the most threads for the next runs (at most the planned number)
       lmv_run()                      logits of a batch of normalised NCHW floats
       lmv_run_features()             the pooled features (the head's input) of a batch
       lmv_session_set_trace()        every block's output to a callback
       lmv_session_trace_attention()  one block's attention maps to the callback too
       lmv_session_macs()             multiply-adds of the last run
       lmv_session_simd()             the kernel path it runs
       lmv_simd_best()                the best kernel path this CPU and build offer
       lmv_simd_available()           whether a kernel path can run here (to force it)
       lmv_simd_name()                "portable", "avx2", "avx512", "avx512-novnni", "neon"
   Images
       lmv_image_options_default()    the defaults (all zeros mean the same)
       lmv_image_jpeg_info()          a JPEG's size, channels and decode memory, from its headers
       lmv_image_load_jpeg_memory()   decode JPEG bytes (as Pillow does)
       lmv_image_load_jpeg_prealloc() the same, in memory you give (decode_memory bytes)
       lmv_image_load_jpeg_file()     decode a JPEG file
       lmv_image_png_info()           a PNG's size, channels and decode memory, from its headers
       lmv_image_load_png_memory()    decode PNG bytes (as Pillow's convert('RGB'))
       lmv_image_load_png_file()      decode a PNG file
       lmv_image_probe()              lmv_image_*_info() of JPEG or PNG bytes, by their signature
       lmv_image_load_memory()        decode JPEG or PNG bytes, by their signature
       lmv_image_load_file()          decode a JPEG or PNG file, by its signature (not its name)
       lmv_image_free()               free an image's pixels
       lmv_image_resize()             resize as Pillow's Image.resize
       lmv_preprocess_image()         the eval transform (resize, crop, normalise) into floats
       lmv_image_overlay_heatmap()    blend a heat map (an attention map) over an RGB image
       lmv_image_png_size()           the exact size of the PNG file lmv_image_encode_png writes
       lmv_image_encode_png()         an image as a PNG file in memory you give
       lmv_image_write_png()          an image as a PNG file on disk
   From an image to an answer
       lmv_run_image()                logits or features of one image, through the model's eval transform
       lmv_classify_image()           the top k classes of an image, with labels and the count
       lmv_classify_jpeg()            the same from JPEG or PNG bytes
       lmv_classify_file()            the same from a JPEG or PNG file
   Helpers
       lmv_softmax()                  softmax in place
       lmv_topk()                     the k largest logits, with softmax probabilities
       lmv_npy_parse()                a float32 .npy array, read in place
       lmv_npy_header()               the header of a float32 .npy array

   ONE VOCABULARY FOR LIFETIMES

   A model is opened and closed (lmv_model_open_*, lmv_model_close), a session created and
   destroyed (lmv_session_create*, lmv_session_destroy), an image loaded and freed (lmv_image_load_*,
   and lmv_image_resize's output, go back with lmv_image_free); an _init call fills a struct you own
   and has nothing to undo (lmv_arena_init). Calls that write into a buffer you give (the _prealloc
   calls, lmv_image_encode_png) need no undoing beyond dropping the buffer.
   Each object's memory can be known before it is made (lmv_model_memory, lmv_session_memory,
   lmv_image_jpeg_info), and the _prealloc calls place a model, session or decoded image in memory
   you give.
   Option structs mean the default when zero-filled, as does a NULL options pointer.

   CONFIGURATION MACROS (define before the #include that has LEMEVIT_IMPLEMENTATION)

       LEMEVIT_API         storage class of the public functions (default: extern; `static` works)
       LEMEVIT_NO_STDIO    no <stdio.h>: lmv_model_open_file() and lmv_image_load_*file() are compiled out
       LEMEVIT_NO_JPEG     no JPEG decoder (resize and preprocessing stay)
       LEMEVIT_NO_PNG      no PNG decoder
       LEMEVIT_NO_MALLOC   no malloc/free: every create/open call needs an allocator (see lmv_arena)
                           or memory of its own (the _prealloc calls)
       LEMEVIT_NO_SIMD     the portable C kernels only: no AVX2/AVX-512/NEON copies are compiled
       LEMEVIT_SELF        how this header includes itself to compile its kernels once per x86
                           instruction set (default "lemevit.h"; set it if the file has another name)
       LEMEVIT_ASSERT(x)   checks of the library's own invariants (block alignment, an arena never
                           past its end, a planned size holding what is placed in it...), never of
                           your input, which gets an error code instead. Default: nothing; define it
                           as assert(x) in debug builds.
       LEMEVIT_GEMM_KC     K block of the matrix multiply (default 256). Its packed panel of
                           LEMEVIT_GEMM_KC x 16 floats sits on the stack (16 KB at 256); 64 makes it
                           4 KB for small stacks, at some speed.

   Threads: when compiled with OpenMP (-fopenmp) the heavy kernels run in parallel; the number of
   threads is set per session, and it is a most: the default (0: all) or N threads, the session
   times its runs and runs on fewer (all but one, half, or one) while that is measurably faster,
   trying the next count up or down now and then (a machine busy with other work, where every
   barrier waits for a thread the OS has descheduled and GCC's libgomp spins while it waits, can
   make all threads many times slower than one). lmv_session_options.exact_threads runs exactly
   N on every run, for measuring scaling; there, on a busy machine, OMP_WAIT_POLICY=passive in
   the process's environment (read when it starts) stops libgomp's spinning. The results never
   depend on the thread count. Without OpenMP everything runs on the calling thread.

   Kernels: on x86-64 one build has portable, AVX2 and AVX-512 kernels whatever its flags, and
   each session runs the best the CPU has (lmv_session_simd(); lmv_session_options.simd forces
   a lower one). AVX-512 without VNNI (Skylake-SP/X) runs the 512-bit kernels too
   (LMV_SIMD_AVX512_NOVNNI); the VNNI instructions are only reached where the CPU has them.
   A loaded model is never written to, so any number of sessions may run one model at once.

   Inspecting a run: lmv_session_set_trace() hands every block's output to a callback (LeMeViT:
   the image map and the meta tokens), lmv_session_trace_attention() adds a chosen block's
   attention maps, lmv_session_macs() counts the work of the last run. lmv_image_overlay_heatmap()
   and lmv_image_write_png() turn such a map into a picture (tools/lmv.c's `lmv explain` does).

   SECTIONS OF THIS FILE

       public API ........ results and errors, memory, models, sessions, images, helpers
       implementation .... errors and memory -> weight file -> tensor kernels -> attention ->
                           sessions -> model graphs (ViT, Swin, LeMeViT) -> opening models and
                           running -> images (JPEG, PNG, resize, preprocess,
                           heat-map overlay, PNG writing) -> high-level helpers

   LIMITS

       tensors per file 65536, dimensions per tensor 6, meta entries 4096, file size < 2^48 bytes,
       tokens per attention 1<<20, input side 1<<15 pixels, batch 1<<16; JPEG images up to
       lmv_image_options.max_pixels (default 2 * 89,478,485, Pillow's decompression-bomb bound),
       max_scans scans (default 100) and, when set, max_memory bytes of decode memory; 8-bit
       Huffman-coded only; PNG images up to the same max_pixels and max_memory, their inflate
       bounded by the size IHDR declares. Anything beyond these is refused with LMV_ERR_LIMIT,
       never truncated, and before anything of that size is allocated.
       A weight file's preprocessing must be usable: pre.crop an input the model can run (else
       LMV_ERR_LIMIT or LMV_ERR_INPUT_SIZE when it opens), pre.interp one of the three filters,
       pre.std in [1e-6, 1e6] and pre.mean in [-1e6, 1e6] (else LMV_ERR_CORRUPT).
       README.md, "Ranges and limits", lists every range with the error it gives.
*/
#ifndef LEMEVIT_H
#define LEMEVIT_H

/* This is version 1.1.0 of lemevit.h; it reads .lmv files of format version 1. Within 1.x, minor
   versions only add (functions, enum values, option fields whose zero keeps the old behaviour) and
   patch versions change no declaration; anything else waits for 2.0. See README's CHANGELOG. */
#define LEMEVIT_VERSION_MAJOR 1
#define LEMEVIT_VERSION_MINOR 1
#define LEMEVIT_VERSION_PATCH 0
#define LEMEVIT_VERSION_STRING "1.1.0"
#define LEMEVIT_FORMAT_VERSION 1 /* the .lmv format version this header reads and tools/lmvfile.py writes */

#include <stddef.h>

#ifndef LEMEVIT_API
#define LEMEVIT_API extern
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ============================================================================================
   Public API
   ============================================================================================ */

/* Every function that can fail returns one of these. lmv_result_string() names them. */
typedef enum lmv_result {
    LMV_OK = 0,
    LMV_ERR_INVALID_ARGUMENT, /* a NULL pointer, a zero size, an option out of range */
    LMV_ERR_OUT_OF_MEMORY,    /* the allocator (or the arena) said no */
    LMV_ERR_IO,               /* a file could not be opened or read */
    LMV_ERR_BAD_MAGIC,        /* not a .lmv file */
    LMV_ERR_VERSION,          /* a format version this build does not know */
    LMV_ERR_ENDIAN,           /* a file written big-endian (.lmv files are little-endian) */
    LMV_ERR_TRUNCATED,        /* the data ends before a section does */
    LMV_ERR_CHECKSUM,         /* a CRC does not match: the file is damaged */
    LMV_ERR_CORRUPT,          /* a field is out of range or contradicts another */
    LMV_ERR_MISSING_TENSOR,   /* the config needs a tensor the file lacks */
    LMV_ERR_SHAPE,            /* a tensor's shape does not fit the config */
    LMV_ERR_UNSUPPORTED,      /* an architecture, dtype or option this build cannot run */
    LMV_ERR_INPUT_SIZE,       /* an input size the architecture cannot take */
    LMV_ERR_ALIGNMENT,        /* memory handed over is not aligned enough to use in place */
    LMV_ERR_LIMIT,            /* a size beyond the documented limits */
    LMV_ERR_BAD_INPUT,        /* input data (e.g. a .npy) is malformed */
    LMV_ERR_IMAGE,            /* a corrupt or truncated image file */
    LMV_ERR_FORMAT            /* a weight file holding a tensor its architecture's graph does not read */
} lmv_result;

/* The detailed outcome of a call: the code and one sentence. */
typedef struct lmv_error {
    lmv_result code;
    char message[256];
} lmv_error;

LEMEVIT_API const char *lmv_result_string(lmv_result r);
/* The enumerator's own spelling, "LMV_OK" ... "LMV_ERR_IMAGE" ("LMV_ERR_UNKNOWN" for any other
   value): a stable key for logs and machine-readable output. */
LEMEVIT_API const char *lmv_result_name(lmv_result r);

/* Memory. The library asks for blocks with alloc() and gives them back with free(); it aligns
   them to 64 bytes itself, so plain malloc/free-like functions are fine. `user` is passed back. */
typedef struct lmv_allocator {
    void *(*alloc)(void *user, size_t size);
    void (*free)(void *user, void *ptr);
    void *user;
} lmv_allocator;

/* A bump allocator over one caller-given buffer: free() does nothing, so the whole arena is
   released at once by dropping it. Handy for firmware: make one arena, pass lmv_arena_allocator()
   to lmv_model_open_memory() and lmv_session_create(), and nothing else allocates. */
typedef struct lmv_arena {
    unsigned char *base;
    size_t size, used, peak;
} lmv_arena;
LEMEVIT_API void lmv_arena_init(lmv_arena *a, void *buffer, size_t size);
LEMEVIT_API lmv_allocator lmv_arena_allocator(lmv_arena *a);
/* Everything allocated after a mark is released together: `mark = lmv_arena_mark(&a); ...;
   lmv_arena_release(&a, mark);` keeps a per-image loop from growing the arena. */
LEMEVIT_API size_t lmv_arena_mark(const lmv_arena *a);
LEMEVIT_API void lmv_arena_release(lmv_arena *a, size_t mark);

/* Model families. */
typedef enum lmv_family { LMV_FAMILY_VIT = 1, LMV_FAMILY_SWIN = 2, LMV_FAMILY_LEMEVIT = 3 } lmv_family;

typedef enum lmv_interp { LMV_INTERP_NEAREST = 0, LMV_INTERP_BILINEAR = 1, LMV_INTERP_BICUBIC = 2 } lmv_interp;

/* The eval transform the model was trained with: resize the shorter side to `resize` with
   `interpolation`, centre-crop crop_h x crop_w, scale to [0,1], subtract mean, divide by std. */
typedef struct lmv_preprocess {
    int resize;           /* 0: resize straight to the crop size */
    int crop_h, crop_w;
    float crop_pct;
    lmv_interp interpolation;
    float mean[3], std[3];
} lmv_preprocess;

typedef struct lmv_model_info {
    lmv_family family;
    const char *arch;         /* "vit", "swin", "lemevit" */
    const char *name;         /* e.g. "vit_base_patch16_224" */
    const char *source;       /* checkpoint layout it was converted from */
    int in_chans;
    int img_h, img_w;         /* native input size */
    int num_classes;          /* 0: the model has no head; use lmv_run_features() */
    int num_features;         /* width of what lmv_run_features() writes */
    int has_labels;
    size_t num_params;        /* sum of all tensor elements in the file */
    size_t weight_bytes;
    lmv_preprocess preprocess;
    int projected;            /* 1: lmv_run_features() writes the projected embedding (CLIP's ln_post + proj,
                                 num_features = the embedding width); 0: the pooled features, the head's input */
} lmv_model_info;

typedef struct lmv_model lmv_model;

/* Options structs (lmv_open_options, lmv_session_options, lmv_image_options) mean "the default"
   when zero-filled: `lmv_open_options o = {0};` (C) or `lmv_open_options o = {};` (C++) behaves as
   the options_default() functions' values and as a NULL options pointer. */
typedef struct lmv_open_options {
    lmv_allocator allocator;  /* alloc == NULL: malloc/free (error under LEMEVIT_NO_MALLOC) */
    int skip_verify;          /* 0 (default): check the CRC of the weights too; 1: the header's only */
} lmv_open_options;

LEMEVIT_API lmv_open_options lmv_open_options_default(void);

/* Open a model from memory, in place: `data` must stay valid and unchanged until
   lmv_model_close(), and must be 4-byte aligned (64 for the fastest kernels).
   On a big-endian host the weights are converted on load instead: the allocator gives one
   byte-swapped copy of the file (its size + 64 bytes) that the tensors use; `data` must still
   stay valid (names and labels are read from it). Every tensor of the file must be one the
   family's graph reads with the file's settings; any other is refused (LMV_ERR_FORMAT, naming it),
   so a model never runs with part of its weights ignored. */
LEMEVIT_API lmv_result lmv_model_open_memory(const void *data, size_t size, const lmv_open_options *opt,
                                             lmv_model **out, lmv_error *err);
/* The exact number of bytes lmv_model_open_memory() asks the allocator for, in total (the 8 KB
   CRC table included unless skip_verify), with these options: an lmv_arena, or the memory given to
   lmv_model_open_prealloc(), of this size is enough. It opens the model once to count, with
   opt->allocator (NULL: malloc/free), and closes it again; call it where such memory exists, e.g.
   on the build host for a firmware image (the count is the same on any 64-bit host). */
LEMEVIT_API lmv_result lmv_model_memory(const void *data, size_t size, const lmv_open_options *opt, size_t *bytes,
                                        lmv_error *err);
/* lmv_model_open_memory() with every table placed in `mem` (mem_size bytes, any alignment; see
   lmv_model_memory()) instead of coming from an allocator; opt->allocator is ignored. The memory
   stays the caller's: lmv_model_close() only ends the model's use of it. */
LEMEVIT_API lmv_result lmv_model_open_prealloc(const void *data, size_t size, const lmv_open_options *opt, void *mem,
                                               size_t mem_size, lmv_model **out, lmv_error *err);
/* A memory-mapped file works (that is how tools/lmv.c opens models), but as with any mapping, a
   file truncated or rewritten in place while mapped makes the next touch of a lost page raise
   SIGBUS, which no check here can catch. When the file may change while the model is open, take a
   private copy: lmv_model_open_file() reads the whole file into memory from the allocator (or read
   it yourself into a buffer you keep until lmv_model_close()). Replacing a file by renaming a new
   one over it (as tools/convert.py writes) is safe: the mapping keeps the old file. */
#ifndef LEMEVIT_NO_STDIO
/* Read a whole .lmv file into memory from the allocator and open it. A directory, pipe or device
   gives LMV_ERR_IO naming it as such (lmv_image_load_jpeg_file too), before anything is allocated. */
LEMEVIT_API lmv_result lmv_model_open_file(const char *path, const lmv_open_options *opt, lmv_model **out,
                                           lmv_error *err);
#endif
LEMEVIT_API void lmv_model_close(lmv_model *model);

/* What the model is (NULL for a NULL model); valid until lmv_model_close(). */
LEMEVIT_API const lmv_model_info *lmv_model_info_get(const lmv_model *model);
/* Class name for index i, or NULL when the file has no labels or i is out of range. */
LEMEVIT_API const char *lmv_model_label(const lmv_model *model, int i);

/* What a config entry holds (the codes the .lmv format stores). */
typedef enum lmv_config_type {
    LMV_CONFIG_INTS = 1,
    LMV_CONFIG_FLOATS = 2,
    LMV_CONFIG_STRING = 3,
    LMV_CONFIG_STRINGS = 4     /* a list of strings, e.g. the labels */
} lmv_config_type;

/* The config entries of the file, for tools that want to show everything. Returns 0 when i is
   out of range. */
typedef struct lmv_config_entry {
    const char *key;
    lmv_config_type type;
    int count;
    const int *ints;           /* LMV_CONFIG_INTS */
    const float *floats;       /* LMV_CONFIG_FLOATS */
    const char *string;        /* LMV_CONFIG_STRING; LMV_CONFIG_STRINGS: the first (see lmv_model_label) */
} lmv_config_entry;
LEMEVIT_API int lmv_model_config(const lmv_model *model, int i, lmv_config_entry *out);

/* How a tensor's numbers are stored. Matrix weights (Linear and convolution kernels) may be
   reduced precision, or float32 already in the matrix multiply's panel layout; everything else
   is plain float32. The library computes in float32 either way: reduced-precision weights are
   widened as the matrix multiply reads them. */
typedef enum lmv_dtype {
    LMV_DTYPE_F32 = 0,   /* float32 */
    LMV_DTYPE_F16 = 1,   /* IEEE half precision */
    LMV_DTYPE_INT8 = 2,  /* shape[0] float32 scales, then int8 values: w[r][...] = scale[r] * q */
    LMV_DTYPE_F32P = 3   /* float32 in panels of 16 rows: R = shape[0] rows of C values each are
                            stored as ceil(R/16) panels of [C][16], element (16p + j, c) at
                            (p*C + c)*16 + j, rows past R zero; the GEMM reads it in place */
} lmv_dtype;
LEMEVIT_API const char *lmv_dtype_name(lmv_dtype dtype); /* "f32", "f16", "int8", "f32p" or "unknown" */

/* Tensors, by index, for tools. Returns 0 when i is out of range. */
typedef struct lmv_tensor_info {
    const char *name;          /* not NUL-terminated: use name_len */
    int name_len;
    lmv_dtype dtype;
    int ndim;
    int shape[6];
    const void *data;
    size_t nbytes;
} lmv_tensor_info;
LEMEVIT_API int lmv_model_tensor(const lmv_model *model, int i, lmv_tensor_info *out);

/* A session holds the activation memory and thread count for running one model. Create one per
   thread. The memory is planned for max_batch images of at most max_h x max_w pixels. With
   threads > 1 and max_batch > 1, a batch runs its images side by side, one per thread (each
   thread with activations of its own: about min(threads, max_batch) times the memory of one
   image), and the images left over when the batch does not divide run one by one on all threads.
   The results are the same bits either way. While a trace callback is set, images run one by one
   (the trace sees image 0 as it is made). */
typedef struct lmv_session lmv_session;

/* Kernel paths. One build carries the portable C kernels (NEON on AArch64) and, on x86-64 with
   GCC, Clang or MSVC, AVX2+FMA+F16C and AVX-512 (F, BW, DQ, VL; VNNI where the CPU has it) kernels
   beside them, whatever the compiler flags; a session takes the best the CPU has when it is
   created. Every path gives the portable path's results within float rounding. */
typedef enum lmv_simd {
    LMV_SIMD_AUTO = 0,         /* the best available (lmv_simd_best()) */
    LMV_SIMD_PORTABLE,         /* plain C99 */
    LMV_SIMD_AVX2,             /* x86-64 AVX2 + FMA + F16C, 256-bit */
    LMV_SIMD_AVX512,           /* x86-64 AVX-512 F/BW/DQ/VL + VNNI, 512-bit */
    LMV_SIMD_NEON,             /* AArch64 NEON (compiled in when the compiler targets AArch64) */
    LMV_SIMD_AVX512_NOVNNI     /* x86-64 AVX-512 F/BW/DQ/VL without VNNI (Skylake-SP/X): the
                                  512-bit kernels, int8 x int8 products through vpmaddwd; forcing
                                  it on a VNNI CPU gives the same bits as LMV_SIMD_AVX512 */
} lmv_simd;

/* "auto", "portable", "avx2", "avx512", "neon" or "avx512-novnni" ("?" for other values). */
LEMEVIT_API const char *lmv_simd_name(lmv_simd simd);
/* The best path this build can run on this CPU: what LMV_SIMD_AUTO picks. */
LEMEVIT_API lmv_simd lmv_simd_best(void);
/* Whether this build can run `simd` on this CPU (LMV_SIMD_AUTO: always). */
LEMEVIT_API int lmv_simd_available(lmv_simd simd);

typedef struct lmv_session_options {
    lmv_allocator allocator;   /* alloc == NULL: malloc/free */
    int max_batch;             /* default 1; lmv_run() may still be given larger batches */
    int max_h, max_w;          /* default: the model's native size */
    int threads;               /* the most threads a run uses. 0 (default): OpenMP's default
                                  (all); N > 1: at most N. The session times its runs and runs on
                                  fewer (all but one, half, one) while that is measurably faster:
                                  a machine busy with other work (see exact_threads). 1: the
                                  calling thread only */
    int int8_compute;          /* int8 weight files only. 0 (default): the weights are widened to
                                  float32, giving exactly the logits of the float32 twin file.
                                  1: activations are quantised to int8 too (per row and K block
                                  of 256, symmetric) and multiplied with int32 sums: about 2x
                                  faster where the CPU has int8 dot products (AVX512-VNNI, Arm
                                  sdot); on AVX2 and AVX-512 without VNNI 16-bit products
                                  (vpmaddwd), about the float path's speed; the same arithmetic
                                  in plain C elsewhere (much slower); a small accuracy cost.
                                  Needs about 60 KB of stack per thread. */
    lmv_simd simd;             /* the kernels: LMV_SIMD_AUTO (0, default) the best this CPU and
                                  build run (lmv_simd_best()); a lower one forces it, for tests
                                  and bug reports; one the CPU or build lacks is refused
                                  (LMV_ERR_UNSUPPORTED) */
    int exact_threads;         /* 0 (default): `threads` is a most, as above. 1: every run uses
                                  exactly `threads` threads (lmv_session_set_threads() too), fast
                                  or not: for measuring how a model scales */
} lmv_session_options;

LEMEVIT_API lmv_session_options lmv_session_options_default(void);

/* The exact number of bytes lmv_session_create() will ask the allocator for, in total, with these
   options: give an arena of this size and creation will succeed. */
LEMEVIT_API lmv_result lmv_session_memory(const lmv_model *model, const lmv_session_options *opt, size_t *bytes,
                                          lmv_error *err);
LEMEVIT_API lmv_result lmv_session_create(const lmv_model *model, const lmv_session_options *opt,
                                          lmv_session **out, lmv_error *err);
/* lmv_session_create() in caller memory: `mem` (mem_size bytes, any alignment; at least
   lmv_session_memory()) holds the session, and opt->allocator is ignored. What the session asks
   for later (attention maps for a trace, the temporaries of lmv_run_image() and lmv_classify_*())
   comes from the rest of `mem`, released as an lmv_arena would: give room beyond
   lmv_session_memory() for them. lmv_session_destroy() only ends the session's use of `mem`. */
LEMEVIT_API lmv_result lmv_session_create_prealloc(const lmv_model *model, const lmv_session_options *opt, void *mem,
                                                   size_t mem_size, lmv_session **out, lmv_error *err);
LEMEVIT_API void lmv_session_destroy(lmv_session *sess);
/* Threads for the next runs, at most the planned number; 0: the default (all). Like
   lmv_session_options.threads a most (fewer while that is faster) unless the session was created
   with exact_threads. */
LEMEVIT_API void lmv_session_set_threads(lmv_session *sess, int threads);

/* Run the model on `input` (batch x in_chans x h x w). lmv_run() writes batch x num_classes
   logits; lmv_run_features() writes batch x num_features pooled features (the head's input), or,
   for a model with an embedding projection (lmv_model_info.projected, CLIP's `proj`), the
   projected embeddings: pooled features times the projection, which then feeds the head. */
LEMEVIT_API lmv_result lmv_run(lmv_session *sess, const float *input, int batch, int h, int w, float *logits,
                               lmv_error *err);
LEMEVIT_API lmv_result lmv_run_features(lmv_session *sess, const float *input, int batch, int h, int w,
                                        float *features, lmv_error *err);

/* Intermediate activations: while set, the callback sees every block's output as it is made
   (`name` like "blocks.3", "layers.1.blocks.0", "stages.2.1.x"), for the first image of a batch.
   `shape` lists `ndim` sizes of row-major float data, valid only during the call. */
typedef void (*lmv_trace_fn)(void *user, const char *name, const float *data, int ndim, const int *shape);
LEMEVIT_API void lmv_session_set_trace(lmv_session *sess, lmv_trace_fn fn, void *user);

/* Attention maps of one block, by its trace name ("blocks.3" for ViT, "stages.1.0" for LeMeViT,
   "layers.2.blocks.1" for Swin; NULL or "" for none): the trace callback then also receives the
   softmax probabilities as "<block>.attn" [heads][queries][keys]; LeMeViT's cross blocks give
   "<block>.attn_x" (image queries over meta tokens) and "<block>.attn_c" (meta queries over image
   tokens), S blocks "<block>.attn_x" and "<block>.attn_c" for the two self-attentions.
   Swin gives one map per window, "<block>.attn" [windows][heads][N][N] (N = the window's area; a
   Swin V2 window shrinks to a stage map smaller than it, per axis for timm files), over the
   windows of the partition the block attends in: the stage's H x W map cyclically shifted (odd
   blocks) and zero-padded to window multiples, windows row-major over that grid, tokens
   row-major in a window; then "<block>.attn_tokens" [windows][N] says which token
   each slot holds: y * W + x in the stage's H x W map (the unshifted map the block's output
   "<block>" [H][W][C] shows), or -1 for padding. That is how the shift and the padding are
   represented: each image token appears in exactly one slot. Memory for the maps comes from the
   session's allocator when first needed. */
LEMEVIT_API void lmv_session_trace_attention(lmv_session *sess, const char *block);

/* Multiply-adds done by the last lmv_run() (matrix products, convolutions and attention), for
   reporting GFLOP/s (= 2 * macs / seconds / 1e9). */
LEMEVIT_API double lmv_session_macs(const lmv_session *sess);

/* The kernel path the session runs (never LMV_SIMD_AUTO); lmv_simd_name() names it. */
LEMEVIT_API lmv_simd lmv_session_simd(const lmv_session *sess);

/* --------------------------------------------------------------------------------------------
   Image: JPEG and PNG decode, resize, crop, normalise

   The eval transform as torchvision + Pillow do it, in C: decode a JPEG (or a PNG, below) the way Pillow 9.4 with
   libjpeg-turbo decodes it (integer IDCT, fancy upsampling, libjpeg's YCbCr->RGB), resize with
   Pillow's resampling filters, centre-crop, scale to [0,1] and normalise. The pixels and the
   final floats are meant to be identical to what the Python pipeline gives.

   Pixels are interleaved 8-bit rows without padding: `channels` is 1 (gray) or 3 (RGB).
   An lmv_image you fill in yourself (pixels you own, allocator left zeroed) can be passed to
   every function here; lmv_image_free() on it does nothing.
   -------------------------------------------------------------------------------------------- */
typedef struct lmv_image {
    int width, height;
    int channels;              /* 1 gray, 3 RGB */
    unsigned char *pixels;     /* height rows of width * channels bytes */
    lmv_allocator allocator;   /* where pixels came from; lmv_image_free() gives them back */
} lmv_image;

/* Decompression-bomb guards. The pixel default is Pillow's: Image.open refuses more than
   2 * Image.MAX_IMAGE_PIXELS (2 * 89,478,485) pixels with DecompressionBombError. */
#define LMV_IMAGE_MAX_PIXELS_DEFAULT ((size_t)2 * 89478485)
#define LMV_IMAGE_MAX_SCANS_DEFAULT 100 /* real progressive files have about 10 */

typedef struct lmv_image_options {
    lmv_allocator allocator;   /* alloc == NULL: malloc/free */
    int ignore_orientation;    /* 0 (default): apply the EXIF orientation as ImageOps.exif_transpose */
    size_t max_pixels;         /* width * height above this is refused with LMV_ERR_LIMIT before anything
                                  is allocated; 0: LMV_IMAGE_MAX_PIXELS_DEFAULT */
    int max_scans;             /* a file with more scans is refused with LMV_ERR_LIMIT when the scan
                                  after the last allowed one starts (each scan is a pass over every
                                  block, so this bounds the time); 0: LMV_IMAGE_MAX_SCANS_DEFAULT */
    size_t max_memory;         /* bytes: a file whose declared size needs more than this
                                  (lmv_image_info.decode_memory) is refused with LMV_ERR_LIMIT
                                  before anything is allocated; 0: no limit beyond max_pixels */
} lmv_image_options;

LEMEVIT_API lmv_image_options lmv_image_options_default(void);

/* What a JPEG or PNG holds, from its headers alone (nothing is decoded and nothing is allocated). */
typedef struct lmv_image_info {
    int width, height;         /* as lmv_image_load_*_memory will give them: after the EXIF orientation */
    int channels;              /* 1 or 3 */
    int progressive;           /* JPEG: progressive; PNG: Adam7-interlaced */
    size_t decode_memory;      /* the most lmv_image_load_*_memory asks the allocator for, the pixels
                                  included: an lmv_arena of this size is enough for the decode */
} lmv_image_info;

#ifndef LEMEVIT_NO_JPEG
LEMEVIT_API lmv_result lmv_image_jpeg_info(const void *data, size_t size, const lmv_image_options *opt,
                                           lmv_image_info *info, lmv_error *err);

/* Decode a JPEG: baseline and progressive Huffman, 8-bit, gray / YCbCr / RGB / CMYK / YCCK
   (CMYK is turned into RGB as Pillow's convert('RGB') does), any integral sampling factors,
   restart markers, EXIF orientation. Gray JPEGs give 1 channel, all others 3. Frames without
   Huffman tables (Motion-JPEG from cameras) use the standard ones of T.81 Annex K, as libjpeg.
   Arithmetic coding, 12-bit, lossless and hierarchical JPEGs give LMV_ERR_UNSUPPORTED; damaged
   or truncated data (including a missing EOI marker, as Pillow) gives LMV_ERR_IMAGE.
   Working memory is about 2 bytes per pixel per component (4 for progressive files) on top of
   the output. The pixels equal Pillow's except in two corners: a progressive file that ends
   without refining every coefficient bit (libjpeg then smooths blocks, this decoder does not),
   and corrupt coefficients beyond 16 bits (libjpeg-turbo's SIMD IDCT saturates them).
   Decompression bombs are bounded by the options: max_pixels and max_memory are checked against
   the declared size before anything is allocated, max_scans bounds the passes over the blocks,
   and data too short to hold one bit per block of the declared size is refused as truncated. */
LEMEVIT_API lmv_result lmv_image_load_jpeg_memory(const void *data, size_t size, const lmv_image_options *opt,
                                                  lmv_image *out, lmv_error *err);
/* The same decode in memory you give: `mem_size` bytes at `mem` (any address), at least
   lmv_image_jpeg_info()'s decode_memory, hold the working memory and the pixels; opt->allocator is
   not used. out->pixels points into `mem` (lmv_image_free() on it does nothing); the image lives
   as long as `mem` does. Too little memory gives LMV_ERR_OUT_OF_MEMORY, and nothing past
   mem + mem_size is touched. */
LEMEVIT_API lmv_result lmv_image_load_jpeg_prealloc(const void *data, size_t size, const lmv_image_options *opt,
                                                    void *mem, size_t mem_size, lmv_image *out, lmv_error *err);
#ifndef LEMEVIT_NO_STDIO
LEMEVIT_API lmv_result lmv_image_load_jpeg_file(const char *path, const lmv_image_options *opt, lmv_image *out,
                                                lmv_error *err);
#endif
#endif

#ifndef LEMEVIT_NO_PNG
/* PNG: every colour type and bit depth (1/2/4/8/16-bit gray, RGB, palette with tRNS, gray+alpha,
   RGBA), Adam7 interlace, all five filters, any split of the data into IDAT chunks, with its own
   inflate (stored, fixed and dynamic Huffman blocks); every chunk CRC and the zlib Adler-32 are
   checked. The pixels equal Pillow's Image.open(p).convert('RGB') (gray and gray+alpha files give
   1 channel, which that repeats): alpha and tRNS dropped, 16-bit RGB/alpha samples cut to their high
   byte and 16-bit gray clipped to 255 (Pillow's "I" mode), a palette index past the PLTE entries
   gray (index, index, index), gAMA/iCCP/sBIT and other ancillary chunks ignored; the orientation
   of an eXIf chunk is applied as for a JPEG (unless ignore_orientation). A missing IEND is
   accepted (as Pillow); a bad signature, CRC or zlib stream, a cut-off chunk, too little or too
   much image data give LMV_ERR_IMAGE, an unknown critical chunk LMV_ERR_UNSUPPORTED; max_pixels
   and max_memory are checked against the IHDR size before anything is allocated (LMV_ERR_LIMIT),
   and the inflate never writes past the size the header declares, so a decompression bomb costs
   no more than its declared image.
   Memory: the filtered data (height * (1 + row bytes), about 1-8 bytes a pixel) plus the pixels
   plus about 3 KiB of Huffman tables; lmv_image_png_info gives the exact figure. */
LEMEVIT_API lmv_result lmv_image_png_info(const void *data, size_t size, const lmv_image_options *opt,
                                          lmv_image_info *info, lmv_error *err);
LEMEVIT_API lmv_result lmv_image_load_png_memory(const void *data, size_t size, const lmv_image_options *opt,
                                                 lmv_image *out, lmv_error *err);
#ifndef LEMEVIT_NO_STDIO
LEMEVIT_API lmv_result lmv_image_load_png_file(const char *path, const lmv_image_options *opt, lmv_image *out,
                                               lmv_error *err);
#endif
#endif

/* Any image the build can decode, chosen by its first bytes (FF D8 FF: JPEG; 89 'PNG': PNG), never
   by a file name. Bytes of neither kind give LMV_ERR_IMAGE; a kind left out of the build
   (LEMEVIT_NO_JPEG, LEMEVIT_NO_PNG) gives LMV_ERR_UNSUPPORTED. */
LEMEVIT_API lmv_result lmv_image_probe(const void *data, size_t size, const lmv_image_options *opt,
                                       lmv_image_info *info, lmv_error *err);
LEMEVIT_API lmv_result lmv_image_load_memory(const void *data, size_t size, const lmv_image_options *opt,
                                             lmv_image *out, lmv_error *err);
#ifndef LEMEVIT_NO_STDIO
LEMEVIT_API lmv_result lmv_image_load_file(const char *path, const lmv_image_options *opt, lmv_image *out,
                                           lmv_error *err);
#endif
LEMEVIT_API void lmv_image_free(lmv_image *img);

/* Resize to w x h exactly as Pillow 9.4's Image.resize((w, h), filter) does (NEAREST, BILINEAR,
   BICUBIC: separable convolution, horizontal pass first, 22-bit fixed-point weights, 8-bit
   intermediate). `a` may be NULL (malloc/free); out->pixels comes from it. */
LEMEVIT_API lmv_result lmv_image_resize(const lmv_image *in, int w, int h, lmv_interp interp, const lmv_allocator *a,
                                        lmv_image *out, lmv_error *err);

/* The whole eval transform into out_chw (out_chans x crop_h x crop_w floats), matching
   torchvision 0.14 on a PIL image: Resize(pp->resize) (shorter side; pp->resize == 0 resizes
   straight to crop_h x crop_w), CenterCrop (zero padding when the image is smaller), ToTensor,
   Normalize(mean, std) in float32. out_chans 3 expands a gray image (img.convert('RGB')); out_chans 1
   turns RGB into gray with Pillow's convert('L') weights and uses mean[0], std[0].
   Only the pixels inside the crop are computed, so a huge resize of a thin image is cheap.
   Temporary memory comes from `a` (NULL: malloc/free). */
LEMEVIT_API lmv_result lmv_preprocess_image(const lmv_image *img, const lmv_preprocess *pp, int out_chans,
                                            float *out_chw, const lmv_allocator *a, lmv_error *err);

/* Blend a heat map over an RGB image in place, for pictures of attention. `map` is map_h rows of
   map_w floats (any range: the smallest becomes 0 and the largest 1; all equal gives 0), upsampled
   to the image bilinearly with the pixel centres aligned (as torch.nn.functional.interpolate with
   align_corners=False, edges clamped), coloured black -> red -> yellow -> white (r = 3v, g = 3v - 1,
   b = 3v - 2, each clamped to [0, 1]) and blended: p' = floor((1 - alpha) p + alpha 255 c + 0.5).
   All arithmetic is in double, so the result is the same bits everywhere. img must have 3
   channels; alpha in [0, 1]; a map value that is NaN or infinite gives LMV_ERR_INVALID_ARGUMENT. */
LEMEVIT_API lmv_result lmv_image_overlay_heatmap(lmv_image *img, const float *map, int map_w, int map_h, float alpha,
                                                 lmv_error *err);

/* PNG encoding (8-bit gray or RGB, no interlace, filter 0, zlib "stored" blocks: no compression,
   so the size is known in advance). lmv_image_png_size() is the exact size of the file for img
   (0 when img is not a valid 1- or 3-channel image or the file would pass 2 GiB);
   lmv_image_encode_png() writes it into `out` (cap bytes; *size receives the length, may be
   NULL), refusing a smaller buffer with LMV_ERR_OUT_OF_MEMORY before writing anything;
   lmv_image_write_png() writes it to a file. Nothing is allocated. */
LEMEVIT_API size_t lmv_image_png_size(const lmv_image *img);
LEMEVIT_API lmv_result lmv_image_encode_png(const lmv_image *img, void *out, size_t cap, size_t *size, lmv_error *err);
#ifndef LEMEVIT_NO_STDIO
LEMEVIT_API lmv_result lmv_image_write_png(const lmv_image *img, const char *path, lmv_error *err);
#endif

/* --------------------------------------------------------------------------------------------
   From an image to an answer: the model's own eval transform (lmv_model_info_get()->preprocess),
   the run, and the top classes with their labels. The session must be planned for at least the
   model's crop size (the default plan, the native size, usually is the crop; a smaller plan is
   refused with LMV_ERR_INPUT_SIZE before any decoding or allocation). Temporary memory (the decoded image, the input tensor) comes
   from the session's allocator and is given back before returning; with an lmv_arena, take an
   lmv_arena_mark() before and lmv_arena_release() after, since an arena never frees.
   -------------------------------------------------------------------------------------------- */
typedef struct lmv_prediction {
    int index;                 /* class index */
    float prob;                /* softmax probability */
    const char *label;         /* class name, or NULL when the weight file has no labels */
} lmv_prediction;

/* What lmv_run_image() writes. */
typedef enum lmv_output {
    LMV_OUTPUT_LOGITS = 0,     /* num_classes floats */
    LMV_OUTPUT_FEATURES = 1    /* num_features floats: what lmv_run_features() writes */
} lmv_output;

/* The logits or the pooled features of one image. */
LEMEVIT_API lmv_result lmv_run_image(lmv_session *sess, const lmv_image *img, lmv_output what, float *out,
                                     lmv_error *err);
/* The k most likely classes of one image, most likely first: `top` (room for k) receives
   min(k, num_classes) rows and `*count` (may be NULL) how many. Any k >= 1 is allowed; the
   indices and probabilities are sorted in memory from the session's allocator. */
LEMEVIT_API lmv_result lmv_classify_image(lmv_session *sess, const lmv_image *img, int k, lmv_prediction *top,
                                          int *count, lmv_error *err);
/* The same from image bytes or an image file, JPEG or PNG, picked by the first bytes as
   lmv_image_load_memory does; `opt` may be NULL (EXIF orientation applied). */
LEMEVIT_API lmv_result lmv_classify_jpeg(lmv_session *sess, const void *data, size_t size,
                                         const lmv_image_options *opt, int k, lmv_prediction *top, int *count,
                                         lmv_error *err);
#ifndef LEMEVIT_NO_STDIO
LEMEVIT_API lmv_result lmv_classify_file(lmv_session *sess, const char *path, const lmv_image_options *opt, int k,
                                         lmv_prediction *top, int *count, lmv_error *err);
#endif

/* Helpers. */
LEMEVIT_API void lmv_softmax(float *x, int n);
/* The k largest of n logits: indices into idx, softmax probabilities into prob (may be NULL).
   Ties keep the lower index first, as torch.topk does on CPU. Returns min(k, n). */
LEMEVIT_API int lmv_topk(const float *logits, int n, int k, int *idx, float *prob);

/* NumPy .npy files, a supported helper for passing tensors to and from Python (numpy.save /
   numpy.load): what `lmv run` reads and writes. lmv_npy_parse() reads a float32 array (version 1-3,
   '<f4', C order) in place from memory; any other dtype or layout gets LMV_ERR_BAD_INPUT, a short
   buffer LMV_ERR_TRUNCATED, more than 8 dimensions LMV_ERR_LIMIT, data not 4-byte aligned in
   memory LMV_ERR_ALIGNMENT. A big-endian host reads '>f4'
   instead (what lmv_npy_header writes there) and refuses '<f4' with LMV_ERR_ENDIAN. */
typedef struct lmv_npy {
    int ndim;
    int shape[8];
    size_t count;              /* elements */
    const float *data;         /* points into the buffer; needs 4-byte alignment of the data */
    size_t data_offset;        /* where the data starts in the buffer */
} lmv_npy;
LEMEVIT_API lmv_result lmv_npy_parse(const void *buf, size_t size, lmv_npy *out, lmv_error *err);
/* Write a .npy header for a float32 array of `ndim` dims into out (at least 128 bytes); returns
   its length, a multiple of 64, after which the data follows in the host's byte order. */
LEMEVIT_API size_t lmv_npy_header(char *out, int ndim, const int *shape);

#ifdef __cplusplus
}
#endif
#endif /* LEMEVIT_H */

/* ============================================================================================
   Implementation
   ============================================================================================ */
#ifdef LEMEVIT_IMPLEMENTATION
#if !defined(LEMEVIT_IMPLEMENTED) || defined(LMV__KPASS)
#ifndef LMV__KPASS /* (LMV__KPASS: this file included by itself for one more copy of the kernels) */
#define LEMEVIT_IMPLEMENTED

#include <string.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <float.h>
#ifndef LEMEVIT_NO_MALLOC
#include <stdlib.h>
#endif
#ifndef LEMEVIT_NO_STDIO
#include <stdio.h>
#include <errno.h>
#include <limits.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif
#ifndef LEMEVIT_ASSERT
#define LEMEVIT_ASSERT(x) ((void)0)
#endif

/* SIMD kernels. The kernel section ("Tensor kernels" to "Attention") is compiled once as it stands
   (plain C99, or NEON on AArch64) and, on x86-64 with GCC >= 8, Clang >= 8 or MSVC 2019, twice more:
   for AVX2+FMA+F16C and for AVX-512 (F, BW, DQ, VL), through target pragmas, whatever the
   compiler flags. The copies' functions carry the suffixes _portable, _avx2 and _avx512; the
   session's lmv__ctx.simd picks one at each kernel call (lmv__simd_of). The AVX-512 copy is
   compiled without VNNI (CPUs before Cascade Lake lack it, and a compiler may use any instruction
   its target allows): only lmv__tile_q8_vnni has VNNI as its target, and lmv__gemm_q8 calls it
   when the session's path is LMV_SIMD_AVX512. Every kernel has a portable C99 twin that gives the
   same results within float rounding. */
#if !defined(LEMEVIT_NO_SIMD) && (defined(__x86_64__) || defined(_M_X64)) &&                               \
    ((defined(__clang__) && __clang_major__ >= 8) || (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 8) || \
     (!defined(__clang__) && defined(_MSC_VER) && _MSC_VER >= 1920))
#define LMV__X86 1
#include <immintrin.h>
#if defined(_MSC_VER) && !defined(__clang__)
#include <intrin.h>
#else
#include <cpuid.h>
#endif
#endif
#ifndef LEMEVIT_SELF
#define LEMEVIT_SELF "lemevit.h"
#endif
/* NEON on AArch64 (always there): the same kernels four lanes wide, next to the AVX2 ones. */
#if !defined(LEMEVIT_NO_SIMD) && !defined(LMV__X86) && defined(__ARM_NEON) && defined(__aarch64__)
#define LMV__NEON 1
#include <arm_neon.h>
#if defined(__ARM_FEATURE_DOTPROD)
#define LMV__SDOT 1 /* int8 dot products (sdot, -march=armv8.2-a+dotprod and later) */
#endif
#endif
#if defined(__GNUC__) || defined(__clang__)
#define LMV__ALIGNED(n) __attribute__((aligned(n)))
#elif defined(_MSC_VER)
#define LMV__ALIGNED(n) __declspec(align(n))
#else
#define LMV__ALIGNED(n)
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* --------------------------------------------------------------------------------------------
   Errors and memory
   -------------------------------------------------------------------------------------------- */

LEMEVIT_API const char *lmv_result_string(lmv_result r) {
    switch (r) {
    case LMV_OK: return "ok";
    case LMV_ERR_INVALID_ARGUMENT: return "invalid argument";
    case LMV_ERR_OUT_OF_MEMORY: return "out of memory";
    case LMV_ERR_IO: return "i/o error";
    case LMV_ERR_BAD_MAGIC: return "not a lemevit weight file";
    case LMV_ERR_VERSION: return "unsupported format version";
    case LMV_ERR_ENDIAN: return "wrong byte order";
    case LMV_ERR_TRUNCATED: return "truncated";
    case LMV_ERR_CHECKSUM: return "checksum mismatch";
    case LMV_ERR_CORRUPT: return "corrupt";
    case LMV_ERR_MISSING_TENSOR: return "missing tensor";
    case LMV_ERR_SHAPE: return "shape mismatch";
    case LMV_ERR_UNSUPPORTED: return "unsupported";
    case LMV_ERR_INPUT_SIZE: return "bad input size";
    case LMV_ERR_ALIGNMENT: return "misaligned memory";
    case LMV_ERR_LIMIT: return "limit exceeded";
    case LMV_ERR_BAD_INPUT: return "malformed input";
    case LMV_ERR_IMAGE: return "corrupt or truncated image";
    case LMV_ERR_FORMAT: return "tensor not used by the model";
    }
    return "unknown error";
}

LEMEVIT_API const char *lmv_result_name(lmv_result r) {
    static const char *const names[] = {
        "LMV_OK", "LMV_ERR_INVALID_ARGUMENT", "LMV_ERR_OUT_OF_MEMORY", "LMV_ERR_IO", "LMV_ERR_BAD_MAGIC",
        "LMV_ERR_VERSION", "LMV_ERR_ENDIAN", "LMV_ERR_TRUNCATED", "LMV_ERR_CHECKSUM", "LMV_ERR_CORRUPT",
        "LMV_ERR_MISSING_TENSOR", "LMV_ERR_SHAPE", "LMV_ERR_UNSUPPORTED", "LMV_ERR_INPUT_SIZE", "LMV_ERR_ALIGNMENT",
        "LMV_ERR_LIMIT", "LMV_ERR_BAD_INPUT", "LMV_ERR_IMAGE", "LMV_ERR_FORMAT"};
    unsigned i = (unsigned)r;
    return i < sizeof names / sizeof names[0] ? names[i] : "LMV_ERR_UNKNOWN";
}

LEMEVIT_API const char *lmv_dtype_name(lmv_dtype dtype) {
    static const char *const names[] = {"f32", "f16", "int8", "f32p"};
    unsigned d = (unsigned)dtype; /* enums may be unsigned (and short) on some targets */
    return d < 4 ? names[d] : "unknown";
}

/* A small vsnprintf for messages (%s %d %u %zu %c %%), free of the C library's locale and FILE
   machinery so that firmware builds can use it. A %s argument longer than `max_arg` (0: no limit)
   keeps its first and last max_arg/2 characters with "..." between, so that a long path or key
   leaves room for the rest of the sentence; a message longer than the buffer is cut and ends in
   "...". */
static void lmv__vformat(char *out, size_t cap, size_t max_arg, const char *fmt, va_list ap) {
    size_t n = 0;
    int cut = 0;
    char num[24];
    if (cap == 0) return;
#define LMV__PUT(ch) do { char lmv__c = (ch); if (n + 1 < cap) out[n++] = lmv__c; else cut = 1; } while (0)
    for (; *fmt; fmt++) {
        const char *s = NULL;
        unsigned long long u = 0;
        int neg = 0, isnum = 0, i;
        if (*fmt != '%') { LMV__PUT(*fmt); continue; }
        fmt++;
        if (*fmt == 'z') { if (fmt[1] == 'u') fmt++; u = (unsigned long long)va_arg(ap, size_t); isnum = 1; }
        else if (*fmt == 'd') { long long v = va_arg(ap, int); neg = v < 0; u = (unsigned long long)(neg ? -v : v); isnum = 1; }
        else if (*fmt == 'u') { u = va_arg(ap, unsigned); isnum = 1; }
        else if (*fmt == 's') { s = va_arg(ap, const char *); if (!s) s = "(null)"; }
        else if (*fmt == 'c') { LMV__PUT((char)va_arg(ap, int)); continue; }
        else if (*fmt == '%') { LMV__PUT('%'); continue; }
        else if (*fmt == 0) break;
        if (isnum) {
            i = 0;
            do { num[i++] = (char)('0' + (int)(u % 10)); u /= 10; } while (u && i < 23);
            if (neg) LMV__PUT('-');
            while (i) LMV__PUT(num[--i]);
        } else {
            size_t len = strlen(s), j;
            if (max_arg && len > max_arg) {
                for (j = 0; j < max_arg / 2; j++) LMV__PUT(s[j]);
                for (j = 0; j < 3; j++) LMV__PUT('.');
                s += len - max_arg / 2;
            }
            for (; *s && !cut; s++) LMV__PUT(*s);
        }
        if (cut) break;
    }
#undef LMV__PUT
    LEMEVIT_ASSERT(n < cap);
    out[n] = 0;
    if (cut && n >= 3) memcpy(out + n - 3, "...", 4);
}

static lmv_result lmv__fail(lmv_error *err, lmv_result code, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        err->code = code;
        lmv__vformat(err->message, sizeof err->message, 80, fmt, ap);
        va_end(ap);
    }
    return code;
}

static void lmv__ok(lmv_error *err) {
    if (err) { err->code = LMV_OK; err->message[0] = 0; }
}

#ifndef LEMEVIT_NO_MALLOC
static void *lmv__malloc_hook(void *user, size_t size) { (void)user; return malloc(size); }
static void lmv__free_hook(void *user, void *p) { (void)user; free(p); }
#endif

/* Fill in the default allocator; returns 0 when there is none (LEMEVIT_NO_MALLOC). */
static int lmv__allocator_resolve(lmv_allocator *a) {
    if (a->alloc) return 1;
#ifndef LEMEVIT_NO_MALLOC
    a->alloc = lmv__malloc_hook;
    a->free = lmv__free_hook;
    a->user = NULL;
    return 1;
#else
    return 0;
#endif
}

#define LMV__ALIGN 64

/* Every block the library uses is 64-byte aligned: ask for 64 more bytes, align, and keep the
   distance to the real start in the byte just before the returned pointer. */
static void *lmv__alloc(const lmv_allocator *a, size_t size) {
    unsigned char *raw, *p;
    if (size > SIZE_MAX - LMV__ALIGN) return NULL;
    raw = (unsigned char *)a->alloc(a->user, size + LMV__ALIGN);
    if (!raw) return NULL;
    p = raw + (LMV__ALIGN - ((uintptr_t)raw & (LMV__ALIGN - 1)));
    p[-1] = (unsigned char)(p - raw);
    LEMEVIT_ASSERT(((uintptr_t)p & (LMV__ALIGN - 1)) == 0 && p > raw && p - raw <= LMV__ALIGN);
    return p;
}

static void lmv__free(const lmv_allocator *a, void *ptr) {
    unsigned char *p = (unsigned char *)ptr;
    if (!p) return;
    LEMEVIT_ASSERT(p[-1] >= 1 && p[-1] <= LMV__ALIGN); /* a block from lmv__alloc */
    if (a->free) a->free(a->user, p - p[-1]);
}

/* lmv_arena places each block at a 16-byte boundary: a block of `size` bytes moves the next
   block's place on by at most this much. */
static size_t lmv__arena_step(size_t size) { return (size + 15) & ~(size_t)15; }

/* The bytes lmv__alloc(size) takes from an allocator, for exact memory planning: what it asks for,
   rounded up to the 16 bytes lmv_arena places blocks at (so the sum over a run's blocks holds
   whatever sizes they have). */
static size_t lmv__alloc_cost(size_t size) { return lmv__arena_step(size + LMV__ALIGN); }

static void *lmv__arena_alloc(void *user, size_t size) {
    lmv_arena *a = (lmv_arena *)user;
    size_t start = lmv__arena_step(a->used);
    if (start < a->used || start > a->size || size > a->size - start) return NULL;
    a->used = start + size;
    if (a->used > a->peak) a->peak = a->used;
    LEMEVIT_ASSERT(a->used <= a->size && a->peak <= a->size);
    return a->base + start;
}
static void lmv__arena_free(void *user, void *p) { (void)user; (void)p; }

LEMEVIT_API void lmv_arena_init(lmv_arena *a, void *buffer, size_t size) {
    a->base = (unsigned char *)buffer;
    a->size = buffer ? size : 0;
    a->used = a->peak = 0;
}

LEMEVIT_API size_t lmv_arena_mark(const lmv_arena *a) { return a ? a->used : 0; }

LEMEVIT_API void lmv_arena_release(lmv_arena *a, size_t mark) {
    if (a && mark <= a->used) a->used = mark;
}

LEMEVIT_API lmv_allocator lmv_arena_allocator(lmv_arena *a) {
    lmv_allocator al;
    al.alloc = lmv__arena_alloc;
    al.free = lmv__arena_free;
    al.user = a;
    return al;
}

/* size_t arithmetic that reports overflow instead of wrapping. */
static int lmv__mul_ok(size_t a, size_t b, size_t *out) {
    if (a && b > SIZE_MAX / a) return 0;
    *out = a * b;
    return 1;
}
/* --------------------------------------------------------------------------------------------
   Weight file: parse, validate, zero-copy views
   -------------------------------------------------------------------------------------------- */

#define LMV__HEADER_SIZE 128
#define LMV__MAX_TENSORS 65536
/* pre.std and pre.mean of a weight file: a normalised pixel stays an ordinary float */
#define LMV__PRE_STD_MIN 1e-6f
#define LMV__PRE_STD_MAX 1e6f
#define LMV__PRE_MEAN_MAX 1e6f
#define LMV__MAX_META 4096
#define LMV__MAX_DIMS 6

static uint16_t lmv__rd16(const unsigned char *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t lmv__rd32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static uint64_t lmv__rd64(const unsigned char *p) { return (uint64_t)lmv__rd32(p) | ((uint64_t)lmv__rd32(p + 4) << 32); }

static int lmv__host_is_le(void) {
    const uint32_t one = 1;
    return *(const unsigned char *)&one == 1;
}

/* CRC-32 (the zlib polynomial, reflected), slicing by 8: eight 256-entry tables (8 KB), built
   when needed in memory from the model's allocator, so nothing large sits on the stack. */
typedef struct lmv__crc { uint32_t t[8][256]; } lmv__crc;

static void lmv__crc_init(lmv__crc *c) {
    uint32_t i, j, r;
    for (i = 0; i < 256; i++) {
        r = i;
        for (j = 0; j < 8; j++) r = (r >> 1) ^ (0xEDB88320u & (0u - (r & 1u)));
        c->t[0][i] = r;
    }
    for (i = 0; i < 256; i++)
        for (j = 1; j < 8; j++) c->t[j][i] = (c->t[j - 1][i] >> 8) ^ c->t[0][c->t[j - 1][i] & 0xFF];
}

static uint32_t lmv__crc_update(const lmv__crc *c, uint32_t crc, const unsigned char *p, size_t n) {
    crc = ~crc;
    while (n >= 8) {
        uint32_t lo = lmv__rd32(p) ^ crc, hi = lmv__rd32(p + 4);
        crc = c->t[7][lo & 0xFF] ^ c->t[6][(lo >> 8) & 0xFF] ^ c->t[5][(lo >> 16) & 0xFF] ^ c->t[4][lo >> 24] ^
              c->t[3][hi & 0xFF] ^ c->t[2][(hi >> 8) & 0xFF] ^ c->t[1][(hi >> 16) & 0xFF] ^ c->t[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n--) crc = (crc >> 8) ^ c->t[0][(crc ^ *p++) & 0xFF];
    return ~crc;
}

typedef struct lmv__meta {
    const char *key;      /* NUL-terminated copy lives in the model's string block */
    int type, count;
    const unsigned char *payload;
    const char **strings; /* type 4: pointers to each NUL-terminated string in the file */
} lmv__meta;

typedef struct lmv__tensor {
    const char *name;     /* points into the file, not NUL-terminated */
    int name_len;
    int dtype, ndim;
    int shape[LMV__MAX_DIMS];
    int bound;            /* set while binding when the family's graph reads this tensor */
    size_t numel, nbytes;
    const unsigned char *data;
} lmv__tensor;

/* A matrix weight as the GEMM reads it: rows of float32, f16, or int8 with a float32 scale per
   row. A NULL `data` means absent. */
typedef struct lmv__mat {
    const void *data;
    const float *scale;
    int dtype;
} lmv__mat;

struct lmv_model;
typedef struct lmv__graph lmv__graph;
struct lmv__ctx; /* the kernels' run context, defined with them */

/* What each family provides: bind its weights at open, plan its memory, run one batch. */
typedef struct lmv__family_ops {
    const char *arch;
    lmv_family family;
    lmv_result (*bind)(struct lmv_model *m, lmv_error *err);
    lmv_result (*plan)(const struct lmv_model *m, int threads, int h, int w, size_t *floats, lmv_error *err);
    /* `batch` images through the graph, with ctx's threads and activations at `arena` (laid out
       for ctx->threads); `s` gives the trace callbacks */
    lmv_result (*forward)(lmv_session *s, const struct lmv__ctx *ctx, float *arena, const float *input, int batch,
                          int h, int w, float *out, int features, lmv_error *err);
    void (*unbind)(struct lmv_model *m);
} lmv__family_ops;

struct lmv_model {
    lmv_allocator allocator;
    const unsigned char *file;
    size_t file_size;
    void *owned_file;            /* set when the library read the file itself */
    unsigned char *native;       /* big-endian hosts: the byte-swapped copy the tensors point into */
    lmv__meta *meta;
    int n_meta;
    lmv__tensor *tensors;
    int n_tensors;
    char *keys;                  /* NUL-terminated copies of the meta keys */
    const char **strings;        /* every string of the string lists, in file order */
    const char **label_list;     /* labels, or NULL */
    int n_labels;
    lmv_model_info info;
    const lmv__family_ops *ops;
    void *graph;                 /* the family's weight pointers and config */
    lmv_arena own;               /* lmv_model_open_prealloc(): the arena over the caller's memory */
};

/* Look-ups used while binding a family. */
static const lmv__meta *lmv__find_meta(const lmv_model *m, const char *key) {
    int i;
    for (i = 0; i < m->n_meta; i++)
        if (strcmp(m->meta[i].key, key) == 0) return &m->meta[i];
    return NULL;
}

static float lmv__meta_float(const lmv_model *m, const char *key, int idx, float def) {
    const lmv__meta *e = lmv__find_meta(m, key);
    uint32_t u;
    float f;
    if (!e || idx >= e->count) return def;
    if (e->type == 1) return (float)(int32_t)lmv__rd32(e->payload + 4 * (size_t)idx);
    if (e->type != 2) return def;
    u = lmv__rd32(e->payload + 4 * (size_t)idx);
    memcpy(&f, &u, 4);
    return f;
}

static const char *lmv__meta_string(const lmv_model *m, const char *key, const char *def) {
    const lmv__meta *e = lmv__find_meta(m, key);
    if (!e || e->type != 3) return def;
    return (const char *)e->payload;
}

/* Integers in the meta that size buffers must be positive and modest; one check for all. */
static lmv_result lmv__meta_int_range(const lmv_model *m, const char *key, int idx, int lo, int hi, int def, int *out,
                                      lmv_error *err) {
    const lmv__meta *e = lmv__find_meta(m, key);
    int v;
    if (!e) {
        if (def < lo) return lmv__fail(err, LMV_ERR_CORRUPT, "config key '%s' is missing", key);
        *out = def;
        return LMV_OK;
    }
    if (e->type != 1 || idx >= e->count)
        return lmv__fail(err, LMV_ERR_CORRUPT, "config key '%s' must be an int array of at least %d values", key,
                         idx + 1);
    v = (int)(int32_t)lmv__rd32(e->payload + 4 * (size_t)idx);
    if (v < lo || v > hi)
        return lmv__fail(err, LMV_ERR_CORRUPT, "config key '%s' is %d, outside the range %d..%d", key, v, lo, hi);
    *out = v;
    return LMV_OK;
}

static const lmv__tensor *lmv__find_tensor(const lmv_model *m, const char *name) {
    size_t len = strlen(name);
    int i;
    for (i = 0; i < m->n_tensors; i++)
        if ((size_t)m->tensors[i].name_len == len && memcmp(m->tensors[i].name, name, len) == 0) return &m->tensors[i];
    return NULL;
}

/* Find a tensor by name and check its shape (ndim sizes) and dtype: only matrix weights, bound
   with `matrix` set, may be stored in reduced precision. With `optional`, a missing tensor gives
   NULL and LMV_OK. */
static lmv_result lmv__find_checked(const lmv_model *m, const char *name, int optional, int ndim, const int *shape,
                                    int matrix, const lmv__tensor **out, lmv_error *err) {
    const lmv__tensor *t = lmv__find_tensor(m, name);
    int i;
    *out = NULL;
    if (!t) {
        if (optional) return LMV_OK;
        return lmv__fail(err, LMV_ERR_MISSING_TENSOR, "tensor '%s' is missing from the weight file", name);
    }
    if (t->dtype != LMV_DTYPE_F32 && !matrix)
        return lmv__fail(err, LMV_ERR_UNSUPPORTED,
                         "tensor '%s' is stored as %s, but only matrix weights may be; re-quantise the file with the "
                         "converter's default policy or --dtype f32",
                         name, lmv_dtype_name((lmv_dtype)t->dtype));
    if (t->ndim != ndim) goto bad;
    for (i = 0; i < ndim; i++)
        if (t->shape[i] != shape[i]) goto bad;
    *out = t;
    m->tensors[t - m->tensors].bound = 1; /* the one place that counts what the graph reads */
    return LMV_OK;
bad : {
    char want[96], have[96];
    size_t n = 0;
    int j;
    for (j = 0; j < 2; j++) {
        char *buf = j ? have : want;
        const int *s = j ? t->shape : shape;
        int d = j ? t->ndim : ndim, k;
        n = 0;
        buf[n++] = '[';
        for (k = 0; k < d && n < 80; k++) {
            char num[16];
            int v = s[k], q = 0;
            if (k) buf[n++] = ',';
            do { num[q++] = (char)('0' + v % 10); v /= 10; } while (v && q < 15);
            while (q) buf[n++] = num[--q];
        }
        buf[n++] = ']';
        buf[n] = 0;
    }
    return lmv__fail(err, LMV_ERR_SHAPE, "tensor '%s' has shape %s, the config needs %s", name, have, want);
}
}

/* A float32 tensor. */
static lmv_result lmv__weight(const lmv_model *m, const char *name, int optional, int ndim, const int *shape,
                              const float **out, lmv_error *err) {
    const lmv__tensor *t;
    lmv_result r = lmv__find_checked(m, name, optional, ndim, shape, 0, &t, err);
    *out = t ? (const float *)(const void *)t->data : NULL;
    return r;
}

/* A matrix weight in any dtype: [shape[0]] rows of the remaining dimensions' product. */
static lmv_result lmv__matrix(const lmv_model *m, const char *name, int optional, int ndim, const int *shape,
                              lmv__mat *out, lmv_error *err) {
    const lmv__tensor *t;
    lmv_result r = lmv__find_checked(m, name, optional, ndim, shape, 1, &t, err);
    out->data = NULL;
    out->scale = NULL;
    out->dtype = LMV_DTYPE_F32;
    if (!t) return r;
    out->dtype = t->dtype;
    out->data = t->data;
    if (t->dtype == LMV_DTYPE_INT8) {
        out->scale = (const float *)(const void *)t->data;
        out->data = t->data + 4 * (size_t)t->shape[0];
    }
    return r;
}

/* Shorthands for the common shapes, with a printf-built name. */
static void lmv__name(char *buf, size_t cap, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    lmv__vformat(buf, cap, 0, fmt, ap);
    va_end(ap);
}

static lmv_result lmv__w1(const lmv_model *m, int optional, int n0, const float **out, lmv_error *err, const char *name) {
    int s[1];
    s[0] = n0;
    return lmv__weight(m, name, optional, 1, s, out, err);
}
static lmv_result lmv__w2(const lmv_model *m, int optional, int n0, int n1, const float **out, lmv_error *err,
                          const char *name) {
    int s[2];
    s[0] = n0; s[1] = n1;
    return lmv__weight(m, name, optional, 2, s, out, err);
}

/* A Linear: "<name>.weight" [out][in] and its optional "<name>.bias" [out] (the weight is optional
   too when `optional` is set). The name is printf-built. */
static lmv_result lmv__bind_linear(const lmv_model *m, int optional, int out, int in, lmv__mat *w, const float **b,
                                   lmv_error *err, const char *fmt, ...) {
    char base[96], name[112];
    int shape[2];
    lmv_result r;
    va_list ap;
    va_start(ap, fmt);
    lmv__vformat(base, sizeof base, 0, fmt, ap);
    va_end(ap);
    lmv__name(name, sizeof name, "%s.weight", base);
    shape[0] = out;
    shape[1] = in;
    if ((r = lmv__matrix(m, name, optional, 2, shape, w, err)) != LMV_OK) return r;
    lmv__name(name, sizeof name, "%s.bias", base);
    return lmv__w1(m, 1, out, b, err, name);
}

/* A LayerNorm: "<name>.weight" and "<name>.bias", both [C], required unless `optional`. */
static lmv_result lmv__bind_norm(const lmv_model *m, int optional, int C, const float **w, const float **b,
                                 lmv_error *err, const char *fmt, ...) {
    char base[96], name[112];
    lmv_result r;
    va_list ap;
    va_start(ap, fmt);
    lmv__vformat(base, sizeof base, 0, fmt, ap);
    va_end(ap);
    lmv__name(name, sizeof name, "%s.weight", base);
    if ((r = lmv__w1(m, optional, C, w, err, name)) != LMV_OK) return r;
    lmv__name(name, sizeof name, "%s.bias", base);
    return lmv__w1(m, optional, C, b, err, name);
}

/* Heapsort of idx[0..n) by cmp(ctx, a, b): O(n log n) at worst and no memory of its own, so the
   uniqueness checks below stay fast for the largest tables a file may hold. */
static void lmv__sift_idx(int *idx, int root, int n, int (*cmp)(const void *, int, int), const void *ctx) {
    int child, t;
    while ((child = 2 * root + 1) < n) {
        if (child + 1 < n && cmp(ctx, idx[child], idx[child + 1]) < 0) child++;
        if (cmp(ctx, idx[root], idx[child]) >= 0) return;
        t = idx[root]; idx[root] = idx[child]; idx[child] = t;
        root = child;
    }
}

static void lmv__sort_idx(int *idx, int n, int (*cmp)(const void *, int, int), const void *ctx) {
    int i, t;
    for (i = n / 2 - 1; i >= 0; i--) lmv__sift_idx(idx, i, n, cmp, ctx);
    for (i = n - 1; i > 0; i--) {
        t = idx[0]; idx[0] = idx[i]; idx[i] = t;
        lmv__sift_idx(idx, 0, i, cmp, ctx);
    }
}

static int lmv__cmp_tensor_name(const void *ctx, int a, int b) {
    const lmv__tensor *ta = (const lmv__tensor *)ctx + a, *tb = (const lmv__tensor *)ctx + b;
    int n = ta->name_len < tb->name_len ? ta->name_len : tb->name_len, c = memcmp(ta->name, tb->name, (size_t)n);
    return c ? c : ta->name_len - tb->name_len;
}

static int lmv__cmp_tensor_data(const void *ctx, int a, int b) {
    const lmv__tensor *ta = (const lmv__tensor *)ctx + a, *tb = (const lmv__tensor *)ctx + b;
    return ta->data < tb->data ? -1 : ta->data > tb->data ? 1 : a - b;
}

static int lmv__cmp_meta_key(const void *ctx, int a, int b) {
    return strcmp(((const lmv__meta *)ctx)[a].key, ((const lmv__meta *)ctx)[b].key);
}

static lmv_result lmv__parse_table(lmv_model *m, const unsigned char *p, uint64_t table_off, uint64_t table_size,
                                   uint64_t data_off, uint64_t data_size, uint32_t n_tensors, int *order,
                                   lmv_error *err);

/* Parse and validate the whole container: header, CRCs, meta, table. Nothing is trusted until
   it has been bounds-checked here. */
static lmv_result lmv__parse(lmv_model *m, const unsigned char *p, size_t size, int verify_data, lmv_error *err) {
    uint64_t file_size, meta_off, meta_size, table_off, table_size, data_off, data_size;
    uint32_t version, tag, n_meta, n_tensors, crc;
    int header_ok, data_ok, *order;
    lmv_result r;
    size_t pos, end, keys_bytes = 0, nstrings = 0;
    lmv__crc *crct;
    unsigned char head[80];
    uint32_t i;
    char *keyp;
    const char **strp;

    if (size < 8 || memcmp(p, "LEMEVIT", 8) != 0) {
        if (size >= 2 && p[0] == 'P' && p[1] == 'K')
            return lmv__fail(err, LMV_ERR_BAD_MAGIC,
                             "this is a zip file (a PyTorch checkpoint?): convert it first with tools/convert.py");
        return lmv__fail(err, LMV_ERR_BAD_MAGIC, "not a .lmv weight file (bad magic); make one with tools/convert.py");
    }
    if (size < LMV__HEADER_SIZE)
        return lmv__fail(err, LMV_ERR_TRUNCATED, "file is %zu bytes, shorter than the 128-byte header", size);
    tag = lmv__rd32(p + 12);
    if (tag == 0x04030201u)
        return lmv__fail(err, LMV_ERR_ENDIAN, "the weight file was written big-endian; .lmv files are little-endian");
    if (tag != 0x01020304u) return lmv__fail(err, LMV_ERR_CORRUPT, "bad endian tag in the header");
    version = lmv__rd32(p + 8);
    if (version != LEMEVIT_FORMAT_VERSION)
        return lmv__fail(err, LMV_ERR_VERSION, "format version %u; this build reads version %d (update lemevit.h)",
                         (unsigned)version, LEMEVIT_FORMAT_VERSION);
    file_size = lmv__rd64(p + 16);
    meta_off = lmv__rd64(p + 24);
    meta_size = lmv__rd64(p + 32);
    table_off = lmv__rd64(p + 40);
    table_size = lmv__rd64(p + 48);
    n_meta = lmv__rd32(p + 56);
    n_tensors = lmv__rd32(p + 60);
    data_off = lmv__rd64(p + 64);
    data_size = lmv__rd64(p + 72);
    if (file_size >= ((uint64_t)1 << 48)) return lmv__fail(err, LMV_ERR_LIMIT, "file size field is absurd");
    if (size < file_size)
        return lmv__fail(err, LMV_ERR_TRUNCATED, "file is truncated: %zu of %zu bytes present", size, (size_t)file_size);
    if (size > file_size)
        return lmv__fail(err, LMV_ERR_CORRUPT, "%zu extra bytes after the end of the weight file",
                         (size_t)(size - file_size));
    if (meta_off != LMV__HEADER_SIZE || meta_size > file_size || table_off != ((meta_off + meta_size + 7) & ~(uint64_t)7) ||
        table_size > file_size - table_off || table_off > file_size || data_off % 64 || data_off < table_off + table_size ||
        data_off > file_size || data_size != file_size - data_off)
        return lmv__fail(err, LMV_ERR_CORRUPT, "section offsets in the header are inconsistent");
    if (n_meta > LMV__MAX_META || n_tensors > LMV__MAX_TENSORS)
        return lmv__fail(err, LMV_ERR_LIMIT, "%u meta entries / %u tensors exceed the limits", (unsigned)n_meta,
                         (unsigned)n_tensors);
    for (pos = 88; pos < LMV__HEADER_SIZE; pos++)
        if (p[pos]) return lmv__fail(err, LMV_ERR_CORRUPT, "reserved header bytes are not zero");

    crct = (lmv__crc *)lmv__alloc(&m->allocator, sizeof(lmv__crc));
    if (!crct) return lmv__fail(err, LMV_ERR_OUT_OF_MEMORY, "out of memory checking the file");
    lmv__crc_init(crct);
    memcpy(head, p, 80);
    crc = lmv__crc_update(crct, 0, head, 80);
    crc = lmv__crc_update(crct, crc, p + meta_off, (size_t)meta_size);
    crc = lmv__crc_update(crct, crc, p + table_off, (size_t)table_size);
    header_ok = crc == lmv__rd32(p + 80);
    data_ok = !verify_data || !header_ok || lmv__crc_update(crct, 0, p + data_off, (size_t)data_size) == lmv__rd32(p + 84);
    lmv__free(&m->allocator, crct);
    if (!header_ok) return lmv__fail(err, LMV_ERR_CHECKSUM, "header checksum mismatch: the file is damaged");
    if (!data_ok) return lmv__fail(err, LMV_ERR_CHECKSUM, "weight data checksum mismatch: the file is damaged");

    /* Meta: first pass validates and counts, second pass fills. */
    end = (size_t)(meta_off + meta_size);
    pos = (size_t)meta_off;
    for (i = 0; i < n_meta; i++) {
        size_t klen, count;
        int type;
        if (end - pos < 8) return lmv__fail(err, LMV_ERR_CORRUPT, "meta entry %u runs past its section", (unsigned)i);
        klen = lmv__rd16(p + pos);
        type = p[pos + 2];
        count = lmv__rd32(p + pos + 4);
        if (klen == 0 || klen > 255 || type < 1 || type > 4 || p[pos + 3])
            return lmv__fail(err, LMV_ERR_CORRUPT, "meta entry %u has a bad key length or type", (unsigned)i);
        pos += 8;
        if (end - pos < ((klen + 3) & ~(size_t)3))
            return lmv__fail(err, LMV_ERR_CORRUPT, "meta entry %u runs past its section", (unsigned)i);
        keys_bytes += klen + 1;
        pos += (klen + 3) & ~(size_t)3;
        if (type <= 2) {
            if (count > (end - pos) / 4) return lmv__fail(err, LMV_ERR_CORRUPT, "meta entry %u runs past its section", (unsigned)i);
            pos += count * 4;
        } else if (type == 3) {
            if (count == 0 || count > end - pos || p[pos + count - 1] != 0)
                return lmv__fail(err, LMV_ERR_CORRUPT, "meta string %u is not NUL-terminated inside its section", (unsigned)i);
            pos += (count + 3) & ~(size_t)3;
        } else {
            size_t s, start = pos;
            if (count > 1000000) return lmv__fail(err, LMV_ERR_LIMIT, "meta entry %u lists too many strings", (unsigned)i);
            for (s = 0; s < count; s++) {
                size_t l;
                if (end - pos < 4) return lmv__fail(err, LMV_ERR_CORRUPT, "string list %u runs past its section", (unsigned)i);
                l = lmv__rd32(p + pos);
                pos += 4;
                if (l == 0 || l > end - pos || p[pos + l - 1] != 0)
                    return lmv__fail(err, LMV_ERR_CORRUPT, "string list %u has a bad string", (unsigned)i);
                pos += l;
            }
            nstrings += count;
            pos = start + (((pos - start) + 3) & ~(size_t)3);
        }
        if (pos > end) return lmv__fail(err, LMV_ERR_CORRUPT, "meta entry %u runs past its section", (unsigned)i);
    }
    m->n_meta = (int)n_meta;
    m->meta = (lmv__meta *)lmv__alloc(&m->allocator, sizeof(lmv__meta) * (n_meta + 1));
    m->keys = (char *)lmv__alloc(&m->allocator, keys_bytes + 1);
    strp = (const char **)lmv__alloc(&m->allocator, sizeof(char *) * (nstrings + 1));
    m->tensors = (lmv__tensor *)lmv__alloc(&m->allocator, sizeof(lmv__tensor) * (n_tensors + 1));
    m->strings = strp;
    if (!m->meta || !m->keys || !strp || !m->tensors) return lmv__fail(err, LMV_ERR_OUT_OF_MEMORY, "out of memory reading the header");
    pos = (size_t)meta_off;
    keyp = m->keys;
    for (i = 0; i < n_meta; i++) {
        lmv__meta *e = &m->meta[i];
        size_t klen = lmv__rd16(p + pos), count = lmv__rd32(p + pos + 4), k;
        e->type = p[pos + 2];
        e->count = (int)count;
        pos += 8;
        memcpy(keyp, p + pos, klen);
        keyp[klen] = 0;
        for (k = 0; k < klen; k++) {
            char ch = keyp[k];
            if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '_' || ch == '.'))
                return lmv__fail(err, LMV_ERR_CORRUPT, "meta key %u has a character outside [a-z0-9_.]", (unsigned)i);
        }
        e->key = keyp;
        keyp += klen + 1;
        pos += (klen + 3) & ~(size_t)3;
        e->payload = p + pos;
        e->strings = NULL;
        if (e->type <= 2) pos += count * 4;
        else if (e->type == 3) pos += (count + 3) & ~(size_t)3;
        else {
            size_t s, start = pos;
            e->strings = strp;
            for (s = 0; s < count; s++) {
                size_t l = lmv__rd32(p + pos);
                *strp++ = (const char *)(p + pos + 4);
                pos += 4 + l;
            }
            pos = start + (((pos - start) + 3) & ~(size_t)3);
        }
    }
    /* one index array, sorted by key here and by tensor name and data below, then given back:
       4 bytes per entry while the file is checked */
    order = (int *)lmv__alloc(&m->allocator, sizeof(int) * ((n_meta > n_tensors ? n_meta : n_tensors) + 1));
    if (!order) return lmv__fail(err, LMV_ERR_OUT_OF_MEMORY, "out of memory reading the header");
    for (i = 0; i < n_meta; i++) order[i] = (int)i;
    lmv__sort_idx(order, (int)n_meta, lmv__cmp_meta_key, m->meta);
    for (i = 1; i < n_meta; i++)
        if (strcmp(m->meta[order[i]].key, m->meta[order[i - 1]].key) == 0) {
            const char *key = m->meta[order[i]].key;
            lmv__free(&m->allocator, order);
            return lmv__fail(err, LMV_ERR_CORRUPT, "meta key '%s' appears twice", key);
        }
    r = lmv__parse_table(m, p, table_off, table_size, data_off, data_size, n_tensors, order, err);
    lmv__free(&m->allocator, order);
    return r;
}

/* The tensor table: every entry bounds-checked, names unique, data ranges disjoint. `order` has
   room for n_tensors indices. */
static lmv_result lmv__parse_table(lmv_model *m, const unsigned char *p, uint64_t table_off, uint64_t table_size,
                                   uint64_t data_off, uint64_t data_size, uint32_t n_tensors, int *order,
                                   lmv_error *err) {
    size_t pos, end;
    uint32_t i;
    const unsigned char *reach = NULL;
    m->n_tensors = (int)n_tensors;
    end = (size_t)(table_off + table_size);
    pos = (size_t)table_off;
    for (i = 0; i < n_tensors; i++) {
        lmv__tensor *t = &m->tensors[i];
        size_t nlen, d, numel = 1, elsize, stored;
        uint64_t off, nbytes;
        if (end - pos < 20) return lmv__fail(err, LMV_ERR_CORRUPT, "tensor entry %u runs past the table", (unsigned)i);
        nlen = lmv__rd16(p + pos);
        t->dtype = p[pos + 2];
        t->ndim = p[pos + 3];
        off = lmv__rd64(p + pos + 4);
        nbytes = lmv__rd64(p + pos + 12);
        pos += 20;
        if (nlen == 0 || nlen > 255) return lmv__fail(err, LMV_ERR_CORRUPT, "tensor entry %u has a bad name length", (unsigned)i);
        if (t->ndim > LMV__MAX_DIMS)
            return lmv__fail(err, LMV_ERR_LIMIT, "tensor entry %u has %d dimensions (max 6)", (unsigned)i, t->ndim);
        if (end - pos < 4 * (size_t)t->ndim + nlen)
            return lmv__fail(err, LMV_ERR_CORRUPT, "tensor entry %u runs past the table", (unsigned)i);
        for (d = 0; d < (size_t)t->ndim; d++) {
            uint32_t s = lmv__rd32(p + pos + 4 * d);
            if (s > 0x7FFFFFFFu || !lmv__mul_ok(numel, s, &numel))
                return lmv__fail(err, LMV_ERR_CORRUPT, "tensor entry %u has an absurd shape", (unsigned)i);
            t->shape[d] = (int)s;
        }
        pos += 4 * (size_t)t->ndim;
        t->name = (const char *)(p + pos);
        t->name_len = (int)nlen;
        pos += nlen;
        pos = (size_t)table_off + (((pos - (size_t)table_off) + 7) & ~(size_t)7);
        if (pos > end) return lmv__fail(err, LMV_ERR_CORRUPT, "tensor entry %u runs past the table", (unsigned)i);
        elsize = t->dtype == LMV_DTYPE_F32 || t->dtype == LMV_DTYPE_F32P ? 4 : t->dtype == LMV_DTYPE_F16 ? 2
                 : t->dtype == LMV_DTYPE_INT8 ? 1 : 0;
        if (!elsize)
            return lmv__fail(err, LMV_ERR_UNSUPPORTED, "tensor entry %u has dtype %d, which this build does not know",
                             (unsigned)i, t->dtype);
        if ((t->dtype == LMV_DTYPE_INT8 || t->dtype == LMV_DTYPE_F32P) && t->ndim < 2)
            return lmv__fail(err, LMV_ERR_CORRUPT, "tensor entry %u: an %s tensor needs at least 2 dimensions",
                             (unsigned)i, lmv_dtype_name((lmv_dtype)t->dtype));
        stored = numel; /* f32p: the rows rounded up to whole panels of 16 */
        if (t->dtype == LMV_DTYPE_F32P && t->shape[0] &&
            !lmv__mul_ok(numel / (size_t)t->shape[0], ((size_t)t->shape[0] + 15) / 16 * 16, &stored))
            return lmv__fail(err, LMV_ERR_CORRUPT, "tensor entry %u has an absurd shape", (unsigned)i);
        /* int8: one float32 scale per output channel (shape[0]) before the values */
        if (!lmv__mul_ok(stored, elsize, &t->nbytes) ||
            (t->dtype == LMV_DTYPE_INT8 && (t->nbytes += 4 * (size_t)t->shape[0]) < 4 * (size_t)t->shape[0]) ||
            t->nbytes != nbytes)
            return lmv__fail(err, LMV_ERR_CORRUPT, "tensor entry %u: byte size does not match its shape", (unsigned)i);
        if (off % 64 || off > data_size || nbytes > data_size - off)
            return lmv__fail(err, LMV_ERR_CORRUPT, "tensor entry %u: data lies outside the data section or is misaligned",
                             (unsigned)i);
        t->numel = numel;
        t->data = p + data_off + off;
    }
    /* Names unique: sorted, equal names are neighbours (O(n log n), 65536 entries included). */
    for (i = 0; i < n_tensors; i++) order[i] = (int)i;
    lmv__sort_idx(order, (int)n_tensors, lmv__cmp_tensor_name, m->tensors);
    for (i = 1; i < n_tensors; i++)
        if (lmv__cmp_tensor_name(m->tensors, order[i - 1], order[i]) == 0) {
            int a = order[i - 1] > order[i] ? order[i - 1] : order[i];
            return lmv__fail(err, LMV_ERR_CORRUPT, "a tensor name appears twice in the table (entry %u)", (unsigned)a);
        }
    /* Ranges disjoint: in order of their start, each non-empty range begins at or after the
       furthest end of the ranges before it. */
    for (i = 0; i < n_tensors; i++) order[i] = (int)i;
    lmv__sort_idx(order, (int)n_tensors, lmv__cmp_tensor_data, m->tensors);
    for (i = 0; i < n_tensors; i++) {
        const lmv__tensor *t = &m->tensors[order[i]];
        if (!t->nbytes) continue;
        if (reach && t->data < reach) {
            int a = order[i], b = a;
            uint32_t j;
            for (j = 0; j < i; j++) /* name the earlier entry it overlaps, as the message promises */
                if (m->tensors[order[j]].nbytes && m->tensors[order[j]].data + m->tensors[order[j]].nbytes > t->data) {
                    b = order[j];
                    break;
                }
            return lmv__fail(err, LMV_ERR_CORRUPT, "tensor entries %u and %u overlap", (unsigned)(a < b ? a : b),
                             (unsigned)(a < b ? b : a));
        }
        if (!reach || t->data + t->nbytes > reach) reach = t->data + t->nbytes;
    }
    return LMV_OK;
}

/* --------------------------------------------------------------------------------------------
   Tensor kernels. Activations are row-major [rows][cols] floats; weights are PyTorch's layout
   ([out][in] for Linear). Every model family runs on these same few functions.
   -------------------------------------------------------------------------------------------- */

/* Elementwise activations, applied by lmv__activate() or fused into a GEMM's output. */
typedef enum lmv__act { LMV__ACT_NONE = 0, LMV__ACT_GELU, LMV__ACT_GELU_TANH, LMV__ACT_RELU, LMV__ACT_TANH, LMV__ACT_SILU,
                       LMV__ACT_QUICK_GELU } lmv__act;

/* How many threads a kernel may use; 1 when compiled without OpenMP. */
typedef struct lmv__ctx {
    int threads;
    int int8_compute; /* int8 weights: multiply in int8 (lmv__gemm_q8) instead of widening */
    int simd;         /* the kernel copy (lmv_simd); 0: the best available */
    double *macs; /* optional counter of multiply-adds, for lmv_session_macs() */
} lmv__ctx;
static int lmv__simd_of(const lmv__ctx *ctx);

/* The context for work one thread does inside a parallel task: ctx's settings, one thread, and
   multiply-adds counted into `macs` (NULL: the caller counts them for the whole). */
static lmv__ctx lmv__one_thread(const lmv__ctx *ctx, double *macs) {
    lmv__ctx one = *ctx;
    one.threads = 1;
    one.macs = macs;
    return one;
}

#ifndef LEMEVIT_GEMM_KC
#define LEMEVIT_GEMM_KC 256 /* K block of the GEMM; the packed panel is LEMEVIT_GEMM_KC*16 floats on the stack */
#endif
#define LMV__MR 6
#define LMV__NR 16
/* Below this many multiply-adds a kernel runs on one thread: waking a team costs more than the
   work (about 0.1 ms of it on two cores, measured with other processes about). */
#define LMV__PARALLEL_MIN 524288.0
/* Row-wise kernels (norms, residual adds, the depthwise convolution) split their rows over the
   threads from this many elements on: they are memory-bound, so the bar is lower. */
#define LMV__PARALLEL_ELEMS 32768.0
#define LMV__SPLIT_ROWS(ctx, rows, width) ((ctx)->threads > 1 && (rows) > 1 && (double)(rows) * (width) >= LMV__PARALLEL_ELEMS)
/* Their rows go out in chunks of about a quarter of a thread's share, taken as threads come free
   (schedule(dynamic)): a thread the OS has descheduled (another process busy on its core) leaves
   its chunks to the others instead of holding the whole region up. */
#define LMV__ROW_CHUNK(ctx, rows) ((ctx)->threads > 1 && (rows) / (4 * (ctx)->threads) > 1 ? (rows) / (4 * (ctx)->threads) : 1)

/* The vector exp and GELU's constants, shared by their AVX2, AVX-512 and NEON twins (same bits on every
   path): exp's clamps, ln 2 split in two, and the Cephes degree-7 polynomial; erf(u) = u P(u^2) / Q(u^2). */
#define LMV__EXP_LO -87.33654f
#define LMV__EXP_HI 88.37626f
#define LMV__LOG2E 1.44269504088896341f
#define LMV__LN2_HI 0.693359375f
#define LMV__LN2_LO -2.12194440e-4f
#define LMV__EXP_C0 1.9875691500e-4f
#define LMV__EXP_C1 1.3981999507e-3f
#define LMV__EXP_C2 8.3334519073e-3f
#define LMV__EXP_C3 4.1665795894e-2f
#define LMV__EXP_C4 1.6666665459e-1f
#define LMV__EXP_C5 5.0000001201e-1f
#define LMV__ERF_P0 -1.1517424381e-08f
#define LMV__ERF_P1 4.3808189686e-06f
#define LMV__ERF_P2 3.6734944842e-04f
#define LMV__ERF_P3 3.7684751512e-03f
#define LMV__ERF_P4 5.3903589159e-02f
#define LMV__ERF_P5 1.8403293873e-01f
#define LMV__ERF_P6 1.1283791765e+00f
#define LMV__ERF_Q0 6.0244371508e-05f
#define LMV__ERF_Q1 1.2746443727e-03f
#define LMV__ERF_Q2 1.5256797945e-02f
#define LMV__ERF_Q3 1.1324616091e-01f
#define LMV__ERF_Q4 4.9642844710e-01f

/* The kernel copies' names: lmv__gemm is lmv__gemm_portable, _avx2 or _avx512 in its copy. */
#define LMV__KN(n) LMV__KN2(n, LMV__KSUF)
#define LMV__KN2(n, s) LMV__KN3(n, s)
#define LMV__KN3(n, s) n##_##s
#define LMV__KSUF portable
#define lmv__activate LMV__KN(lmv__activate)
#define lmv__activate_all LMV__KN(lmv__activate_all)
#define lmv__add_bias LMV__KN(lmv__add_bias)
#define lmv__add_scaled LMV__KN(lmv__add_scaled)
#define lmv__attention LMV__KN(lmv__attention)
#define lmv__batchnorm LMV__KN(lmv__batchnorm)
#define lmv__batchnorm_row LMV__KN(lmv__batchnorm_row)
#define lmv__bias_or_zero LMV__KN(lmv__bias_or_zero)
#define lmv__conv2d LMV__KN(lmv__conv2d)
#define lmv__dot LMV__KN(lmv__dot)
#define lmv__dwconv3x3 LMV__KN(lmv__dwconv3x3)
#define lmv__dwconv_pixel LMV__KN(lmv__dwconv_pixel)
#define lmv__exp16 LMV__KN(lmv__exp16)
#define lmv__exp4 LMV__KN(lmv__exp4)
#define lmv__exp8 LMV__KN(lmv__exp8)
#define lmv__gelu16 LMV__KN(lmv__gelu16)
#define lmv__gelu4 LMV__KN(lmv__gelu4)
#define lmv__gelu8 LMV__KN(lmv__gelu8)
#define lmv__gemm LMV__KN(lmv__gemm)
#define lmv__gemm_act LMV__KN(lmv__gemm_act)
#define lmv__gemm_narrow LMV__KN(lmv__gemm_narrow)
#define lmv__gemm_own_rows LMV__KN(lmv__gemm_own_rows)
#define lmv__gemm_q8 LMV__KN(lmv__gemm_q8)
#define lmv__gemm_task LMV__KN(lmv__gemm_task)
#define lmv__hmax16 LMV__KN(lmv__hmax16)
#define lmv__hmax8 LMV__KN(lmv__hmax8)
#define lmv__hsum16 LMV__KN(lmv__hsum16)
#define lmv__hsum8 LMV__KN(lmv__hsum8)
#define lmv__im2col LMV__KN(lmv__im2col)
#define lmv__im2col_rows LMV__KN(lmv__im2col_rows)
#define lmv__layernorm LMV__KN(lmv__layernorm)
#define lmv__layernorm_row LMV__KN(lmv__layernorm_row)
#define lmv__linear LMV__KN(lmv__linear)
#define lmv__linear_act LMV__KN(lmv__linear_act)
#define lmv__linear_residual LMV__KN(lmv__linear_residual)
#define lmv__pack LMV__KN(lmv__pack)
#define lmv__pack_q8 LMV__KN(lmv__pack_q8)
#define lmv__pack_rows LMV__KN(lmv__pack_rows)
#define lmv__quantize_rows LMV__KN(lmv__quantize_rows)
#define lmv__residual LMV__KN(lmv__residual)
#define lmv__residual_row LMV__KN(lmv__residual_row)
#define lmv__rmsnorm LMV__KN(lmv__rmsnorm)
#define lmv__rmsnorm_row LMV__KN(lmv__rmsnorm_row)
#define lmv__softmax_rows LMV__KN(lmv__softmax_rows)
#define lmv__tile LMV__KN(lmv__tile)
#define lmv__tile_c LMV__KN(lmv__tile_c)
#define lmv__tile_q8 LMV__KN(lmv__tile_q8)
#define lmv__tile_q8_out LMV__KN(lmv__tile_q8_out)
#define lmv__tile_q8_vnni LMV__KN(lmv__tile_q8_vnni)
#define lmv__tile_rows LMV__KN(lmv__tile_rows)
#define lmv__tile_z LMV__KN(lmv__tile_z)
#define lmv__transpose8 LMV__KN(lmv__transpose8)
#define lmv__weight4 LMV__KN(lmv__weight4)
#define lmv__weight8 LMV__KN(lmv__weight8)
#endif /* !LMV__KPASS */

/* The instruction set of this copy of the kernels. */
#undef LMV__AVX2
#undef LMV__F16C
#undef LMV__AVX512
#if defined(LMV__KPASS)
#define LMV__AVX2 1   /* AVX2 + FMA, 256-bit */
#define LMV__F16C 1   /* half -> float in hardware */
#if LMV__KPASS == 3
#define LMV__AVX512 1 /* 512-bit registers, 32 of them; no VNNI but in lmv__tile_q8_vnni */
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl"))), \
                             apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl")
#endif
#else
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif
#endif
#endif
static void lmv__activate(float *x, size_t n, lmv__act act);

/* acc[MR][NR] += A[MR][kc] * P[kc][NR], the register tile every GEMM reduces to: P is a packed
   panel of 16 columns of op(B) (on the stack, or an f32p weight in place: 4-byte alignment only),
   A is read in place. Rows of A past `mr` are never read. */
#if defined(LMV__AVX2)
static __m256 lmv__gelu8(__m256 x);
#if defined(LMV__AVX512)
static __m512 lmv__gelu16(__m512 x);
#endif

/* The tile on C itself, for 1 to 6 rows (only `mr` rows of A and C are touched): the
   accumulators start from C (k blocks after the first), from the bias, or from zero, and go back
   to C, through GELU when `gelu` is set (a Linear + GELU's last K block). Every row is the same
   chain of FMAs in k order whatever mr is, so a row's result does not depend on its tile. */
static void lmv__tile_c(int mr, int kc, const float *a, size_t lda, const float *p, float *c, size_t ldc,
                        const float *bias, int first, int gelu) {
    const float *a0 = a, *a1 = a + (mr > 1 ? lda : 0), *a2 = a + (mr > 2 ? 2 * lda : 0);
    const float *a3 = a + (mr > 3 ? 3 * lda : 0), *a4 = a + (mr > 4 ? 4 * lda : 0), *a5 = a + (mr > 5 ? 5 * lda : 0);
    __m256 c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51, b0, b1, av;
    int k;
    b0 = bias ? _mm256_loadu_ps(bias) : _mm256_setzero_ps();
    b1 = bias ? _mm256_loadu_ps(bias + 8) : _mm256_setzero_ps();
#define LMV__TLOAD(r)                                                                                        \
    if ((r) < mr && !first) c##r##0 = _mm256_loadu_ps(c + (r) * ldc), c##r##1 = _mm256_loadu_ps(c + (r) * ldc + 8); \
    else c##r##0 = b0, c##r##1 = b1;
    LMV__TLOAD(0) LMV__TLOAD(1) LMV__TLOAD(2) LMV__TLOAD(3) LMV__TLOAD(4) LMV__TLOAD(5)
#undef LMV__TLOAD
#define LMV__TROW(r)                                                                                         \
    av = _mm256_broadcast_ss(a##r + k), c##r##0 = _mm256_fmadd_ps(av, b0, c##r##0),                          \
    c##r##1 = _mm256_fmadd_ps(av, b1, c##r##1)
#define LMV__TLOOP(rows)                                                                                     \
    for (k = 0; k < kc; k++) {                                                                               \
        b0 = _mm256_loadu_ps(p + (size_t)k * LMV__NR), b1 = _mm256_loadu_ps(p + (size_t)k * LMV__NR + 8);    \
        rows;                                                                                                \
    }
    switch (mr) { /* one loop per row count: no work for the rows a tile does not have */
    case 6: LMV__TLOOP((LMV__TROW(0), LMV__TROW(1), LMV__TROW(2), LMV__TROW(3), LMV__TROW(4), LMV__TROW(5))) break;
    case 5: LMV__TLOOP((LMV__TROW(0), LMV__TROW(1), LMV__TROW(2), LMV__TROW(3), LMV__TROW(4))) break;
    case 4: LMV__TLOOP((LMV__TROW(0), LMV__TROW(1), LMV__TROW(2), LMV__TROW(3))) break;
    case 3: LMV__TLOOP((LMV__TROW(0), LMV__TROW(1), LMV__TROW(2))) break;
    case 2: LMV__TLOOP((LMV__TROW(0), LMV__TROW(1))) break;
    default: LMV__TLOOP(LMV__TROW(0)) break;
    }
#undef LMV__TROW
#undef LMV__TLOOP
#define LMV__TSTORE(r)                                                                                       \
    if ((r) < mr) {                                                                                          \
        if (gelu) c##r##0 = lmv__gelu8(c##r##0), c##r##1 = lmv__gelu8(c##r##1);                                \
        _mm256_storeu_ps(c + (r) * ldc, c##r##0), _mm256_storeu_ps(c + (r) * ldc + 8, c##r##1);                 \
    }
    /* (GELU: the last K block of a Linear + GELU, activated in registers on the way out) */
    LMV__TSTORE(0) LMV__TSTORE(1) LMV__TSTORE(2) LMV__TSTORE(3) LMV__TSTORE(4) LMV__TSTORE(5)
#undef LMV__TSTORE
}

static void lmv__tile(int mr, int kc, const float *a, size_t lda, const float *p, float acc[LMV__MR][LMV__NR]) {
    lmv__tile_c(mr, kc, a, lda, p, acc[0], LMV__NR, NULL, 0, 0);
}
#if defined(LMV__AVX512)
/* lmv__tile_c on 512-bit registers, for 1 to LMV__MR_Z rows of a whole panel: one zmm of 16
   columns per row, each A value broadcast from memory into its FMA, the panel row loaded once per
   k for all rows. Each output is the same chain of FMAs in k order as on AVX2 (same start, same
   GELU), so the two paths give the same bits. */
#define LMV__MR_Z 8 /* 8 chains of FMAs keep two FMA pipes of latency 4 busy */
static void lmv__tile_z(int mr, int kc, const float *a, size_t lda, const float *p, float *c, size_t ldc,
                        const float *bias, int first, int gelu) {
#define LMV__ZA(r) const float *a##r = a + (mr > (r) ? (r) * lda : 0);
    LMV__ZA(0) LMV__ZA(1) LMV__ZA(2) LMV__ZA(3) LMV__ZA(4) LMV__ZA(5) LMV__ZA(6) LMV__ZA(7)
#undef LMV__ZA
    __m512 z0, z1, z2, z3, z4, z5, z6, z7, b;
    int k;
    b = bias ? _mm512_loadu_ps(bias) : _mm512_setzero_ps();
#define LMV__ZLOAD(r) z##r = (r) < mr && !first ? _mm512_loadu_ps(c + (r) * ldc) : b;
    LMV__ZLOAD(0) LMV__ZLOAD(1) LMV__ZLOAD(2) LMV__ZLOAD(3) LMV__ZLOAD(4) LMV__ZLOAD(5) LMV__ZLOAD(6) LMV__ZLOAD(7)
#undef LMV__ZLOAD
#define LMV__ZR(r) z##r = _mm512_fmadd_ps(_mm512_set1_ps(a##r[k]), b, z##r);
#define LMV__ZR1 LMV__ZR(0)
#define LMV__ZR2 LMV__ZR1 LMV__ZR(1)
#define LMV__ZR3 LMV__ZR2 LMV__ZR(2)
#define LMV__ZR4 LMV__ZR3 LMV__ZR(3)
#define LMV__ZR5 LMV__ZR4 LMV__ZR(4)
#define LMV__ZR6 LMV__ZR5 LMV__ZR(5)
#define LMV__ZR7 LMV__ZR6 LMV__ZR(6)
#define LMV__ZR8 LMV__ZR7 LMV__ZR(7)
#define LMV__ZLOOP(rows)                                                                                     \
    for (k = 0; k < kc; k++) {                                                                               \
        b = _mm512_loadu_ps(p + (size_t)k * LMV__NR);                                                        \
        rows                                                                                                 \
    }                                                                                                        \
    break;
    switch (mr) { /* one loop per row count: no work for the rows a tile does not have */
    case 8: LMV__ZLOOP(LMV__ZR8)
    case 7: LMV__ZLOOP(LMV__ZR7)
    case 6: LMV__ZLOOP(LMV__ZR6)
    case 5: LMV__ZLOOP(LMV__ZR5)
    case 4: LMV__ZLOOP(LMV__ZR4)
    case 3: LMV__ZLOOP(LMV__ZR3)
    case 2: LMV__ZLOOP(LMV__ZR2)
    default: LMV__ZLOOP(LMV__ZR1)
    }
#undef LMV__ZLOOP
#undef LMV__ZR
#undef LMV__ZR1
#undef LMV__ZR2
#undef LMV__ZR3
#undef LMV__ZR4
#undef LMV__ZR5
#undef LMV__ZR6
#undef LMV__ZR7
#undef LMV__ZR8
    /* (GELU: the last K block of a Linear + GELU, activated in registers on the way out by
       lmv__gelu16, lane for lane the AVX2 tile's operations, so that it rounds the same) */
#define LMV__ZSTORE(r)                                                                                       \
    if ((r) < mr) _mm512_storeu_ps(c + (r) * ldc, gelu ? lmv__gelu16(z##r) : z##r);
    LMV__ZSTORE(0) LMV__ZSTORE(1) LMV__ZSTORE(2) LMV__ZSTORE(3) LMV__ZSTORE(4) LMV__ZSTORE(5) LMV__ZSTORE(6)
    LMV__ZSTORE(7)
#undef LMV__ZSTORE
}
#endif
#elif defined(LMV__NEON)
/* The AArch64 tile: 24 accumulator registers (6 rows x 4 quads), the panel row in 4 more, each A
   value multiplied in by lane (vfmaq_n_f32), so every output is still summed in k order. */
static void lmv__tile(int mr, int kc, const float *a, size_t lda, const float *p, float acc[LMV__MR][LMV__NR]) {
    const float *a0 = a, *a1 = a + (mr > 1 ? lda : 0), *a2 = a + (mr > 2 ? 2 * lda : 0);
    const float *a3 = a + (mr > 3 ? 3 * lda : 0), *a4 = a + (mr > 4 ? 4 * lda : 0), *a5 = a + (mr > 5 ? 5 * lda : 0);
#define LMV__NLOAD(r) c##r##0 = vld1q_f32(acc[r]), c##r##1 = vld1q_f32(acc[r] + 4), c##r##2 = vld1q_f32(acc[r] + 8), \
                      c##r##3 = vld1q_f32(acc[r] + 12)
#define LMV__NFMA(r)                                                                                             \
    do {                                                                                                         \
        float av_ = a##r[k];                                                                                     \
        c##r##0 = vfmaq_n_f32(c##r##0, b0, av_); c##r##1 = vfmaq_n_f32(c##r##1, b1, av_);                       \
        c##r##2 = vfmaq_n_f32(c##r##2, b2, av_); c##r##3 = vfmaq_n_f32(c##r##3, b3, av_);                       \
    } while (0)
#define LMV__NSTORE(r) vst1q_f32(acc[r], c##r##0); vst1q_f32(acc[r] + 4, c##r##1); vst1q_f32(acc[r] + 8, c##r##2); \
                       vst1q_f32(acc[r] + 12, c##r##3)
    float32x4_t LMV__NLOAD(0), LMV__NLOAD(1), LMV__NLOAD(2), LMV__NLOAD(3), LMV__NLOAD(4), LMV__NLOAD(5);
    int k;
    for (k = 0; k < kc; k++) {
        const float *pk = p + (size_t)k * LMV__NR;
        float32x4_t b0 = vld1q_f32(pk), b1 = vld1q_f32(pk + 4), b2 = vld1q_f32(pk + 8), b3 = vld1q_f32(pk + 12);
        LMV__NFMA(0); LMV__NFMA(1); LMV__NFMA(2); LMV__NFMA(3); LMV__NFMA(4); LMV__NFMA(5);
    }
    LMV__NSTORE(0); LMV__NSTORE(1); LMV__NSTORE(2); LMV__NSTORE(3); LMV__NSTORE(4); LMV__NSTORE(5);
#undef LMV__NLOAD
#undef LMV__NFMA
#undef LMV__NSTORE
}
#else
static void lmv__tile(int mr, int kc, const float *a, size_t lda, const float *p, float acc[LMV__MR][LMV__NR]) {
    int k, j, r;
    for (k = 0; k < kc; k++) {
        const float *pk = p + (size_t)k * LMV__NR;
        for (r = 0; r < mr; r++) {
            float av = a[(size_t)r * lda + k];
            for (j = 0; j < LMV__NR; j++) acc[r][j] += av * pk[j];
        }
    }
}
#endif

#ifndef LMV__KPASS
/* IEEE half -> float, exactly (every half is a float). */
static float lmv__half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, man = h & 0x3ffu, u;
    float f;
    if (e == 0x1f) u = sign | 0x7f800000u | (man << 13);      /* inf, nan */
    else if (e) u = sign | ((e + 112) << 23) | (man << 13);  /* normal: rebias 15 -> 127 */
    else {                                                   /* zero, subnormal: man * 2^-24 */
        f = (float)man * 5.9604644775390625e-8f;
        memcpy(&u, &f, 4);
        u |= sign;
    }
    memcpy(&f, &u, 4);
    return f;
}

/* One weight as float32: B[row][at] of a matrix stored as float32, half or int8 x scale[row]. */
static float lmv__weight_at(const lmv__mat *B, size_t row, size_t at) {
    if (B->dtype == LMV_DTYPE_F16) return lmv__half_to_float(((const uint16_t *)B->data)[at]);
    if (B->dtype == LMV_DTYPE_INT8) return (float)((const signed char *)B->data)[at] * B->scale[row];
    return ((const float *)B->data)[at];
}
#endif


#if defined(LMV__AVX2)
/* Eight consecutive weights of one row, widened. */
static __m256 lmv__weight8(const lmv__mat *B, size_t row, size_t at) {
    if (B->dtype == LMV_DTYPE_F32) return _mm256_loadu_ps((const float *)B->data + at);
    if (B->dtype == LMV_DTYPE_INT8) {
        __m128i q = _mm_loadl_epi64((const __m128i *)(const void *)((const signed char *)B->data + at));
        return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), _mm256_set1_ps(B->scale[row]));
    }
#if defined(LMV__F16C)
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)((const uint16_t *)B->data + at)));
#else
    {
        float t[8];
        int i;
        for (i = 0; i < 8; i++) t[i] = lmv__weight_at(B, row, at + (size_t)i);
        return _mm256_loadu_ps(t);
    }
#endif
}
#elif defined(LMV__NEON)
static float32x4_t lmv__weight4(const lmv__mat *B, size_t row, size_t at) {
    if (B->dtype == LMV_DTYPE_F32) return vld1q_f32((const float *)B->data + at);
    if (B->dtype == LMV_DTYPE_INT8) {
        const signed char *q = (const signed char *)B->data + at;
        int32_t v[4];
        v[0] = q[0]; v[1] = q[1]; v[2] = q[2]; v[3] = q[3];
        return vmulq_n_f32(vcvtq_f32_s32(vld1q_s32(v)), B->scale[row]);
    }
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16((const uint16_t *)B->data + at)));
}
#endif

#if defined(LMV__AVX2)
/* Eight rows of eight 32-bit lanes, stored as eight columns: d[i * stride + r] = r_r[i]. */
static void lmv__transpose8(__m256 r0, __m256 r1, __m256 r2, __m256 r3, __m256 r4, __m256 r5, __m256 r6, __m256 r7,
                            float *d, size_t stride) {
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    _mm256_storeu_ps(d + 0 * stride, _mm256_permute2f128_ps(u0, u4, 0x20));
    _mm256_storeu_ps(d + 1 * stride, _mm256_permute2f128_ps(u1, u5, 0x20));
    _mm256_storeu_ps(d + 2 * stride, _mm256_permute2f128_ps(u2, u6, 0x20));
    _mm256_storeu_ps(d + 3 * stride, _mm256_permute2f128_ps(u3, u7, 0x20));
    _mm256_storeu_ps(d + 4 * stride, _mm256_permute2f128_ps(u0, u4, 0x31));
    _mm256_storeu_ps(d + 5 * stride, _mm256_permute2f128_ps(u1, u5, 0x31));
    _mm256_storeu_ps(d + 6 * stride, _mm256_permute2f128_ps(u2, u6, 0x31));
    _mm256_storeu_ps(d + 7 * stride, _mm256_permute2f128_ps(u3, u7, 0x31));
}
#endif

/* panel[k][j] = B[j0 + j][k0 + k] for nr rows and kc columns, widened, zero past nr: the
   transpose that packs a Linear weight, in 8x8 (AVX2) or 4x4 (NEON) register blocks. */
static void lmv__pack_rows(float *panel, const lmv__mat *B, size_t ldb, int j0, int nr, int k0, int kc) {
    int j = 0, k, jv = 0, kv = 0;
#if defined(LMV__AVX2)
    jv = nr & ~7;
    kv = kc & ~7;
    for (j = 0; j < jv; j += 8)
        for (k = 0; k < kv; k += 8) {
            size_t r = (size_t)(j0 + j), at = r * ldb + (size_t)(k0 + k);
            lmv__transpose8(lmv__weight8(B, r, at), lmv__weight8(B, r + 1, at + ldb), lmv__weight8(B, r + 2, at + 2 * ldb),
                            lmv__weight8(B, r + 3, at + 3 * ldb), lmv__weight8(B, r + 4, at + 4 * ldb),
                            lmv__weight8(B, r + 5, at + 5 * ldb), lmv__weight8(B, r + 6, at + 6 * ldb),
                            lmv__weight8(B, r + 7, at + 7 * ldb), panel + (size_t)k * LMV__NR + j, LMV__NR);
        }
#elif defined(LMV__NEON)
    jv = nr & ~3;
    kv = kc & ~3;
    for (j = 0; j < jv; j += 4)
        for (k = 0; k < kv; k += 4) {
            size_t r = (size_t)(j0 + j), at = r * ldb + (size_t)(k0 + k);
            float32x4_t r0 = lmv__weight4(B, r, at), r1 = lmv__weight4(B, r + 1, at + ldb);
            float32x4_t r2 = lmv__weight4(B, r + 2, at + 2 * ldb), r3 = lmv__weight4(B, r + 3, at + 3 * ldb);
            float64x2_t t0 = vreinterpretq_f64_f32(vtrn1q_f32(r0, r1)), t1 = vreinterpretq_f64_f32(vtrn2q_f32(r0, r1));
            float64x2_t t2 = vreinterpretq_f64_f32(vtrn1q_f32(r2, r3)), t3 = vreinterpretq_f64_f32(vtrn2q_f32(r2, r3));
            float *d = panel + (size_t)k * LMV__NR + j;
            vst1q_f32(d + 0 * LMV__NR, vreinterpretq_f32_f64(vtrn1q_f64(t0, t2)));
            vst1q_f32(d + 1 * LMV__NR, vreinterpretq_f32_f64(vtrn1q_f64(t1, t3)));
            vst1q_f32(d + 2 * LMV__NR, vreinterpretq_f32_f64(vtrn2q_f64(t0, t2)));
            vst1q_f32(d + 3 * LMV__NR, vreinterpretq_f32_f64(vtrn2q_f64(t1, t3)));
        }
#endif
    if (jv == LMV__NR && kv == kc) return;
    for (k = 0; k < kc; k++) { /* what the blocks left: the last rows and columns, and the zeros */
        float *dst = panel + (size_t)k * LMV__NR;
        for (j = k < kv ? jv : 0; j < nr; j++)
            dst[j] = lmv__weight_at(B, (size_t)(j0 + j), (size_t)(j0 + j) * ldb + (size_t)(k0 + k));
        for (; j < LMV__NR; j++) dst[j] = 0.0f;
    }
}

/* Pack op(B)[k0:k0+kc][j0:j0+nr] as a [kc][NR] float32 panel, zero-filled past nr. Reduced-
   precision weights (always [N][K], trans_b) are widened here, so the tiles only see float32. */
static void lmv__pack(float *panel, const lmv__mat *B, size_t ldb, int trans_b, int j0, int nr, int k0, int kc) {
    int j, k;
    if (trans_b) {
        lmv__pack_rows(panel, B, ldb, j0, nr, k0, kc);
        return;
    }
    for (k = 0; k < kc; k++) {
        const float *b = (const float *)B->data + (size_t)(k0 + k) * ldb + (size_t)j0;
        float *dst = panel + (size_t)k * LMV__NR;
        if (nr == LMV__NR) { /* a constant size: inlined, where a loop becomes a memmove call per row */
            memcpy(dst, b, sizeof(float) * LMV__NR);
            continue;
        }
        for (j = 0; j < nr; j++) dst[j] = b[j];
        for (; j < LMV__NR; j++) dst[j] = 0.0f;
    }
}

#ifndef LMV__KPASS
static lmv__mat lmv__f32(const float *p) {
    lmv__mat m;
    m.data = p;
    m.scale = NULL;
    m.dtype = LMV_DTYPE_F32;
    return m;
}
#endif


static void lmv__gemm_q8(const lmv__ctx *ctx, int M, int N, int K, const float *A, size_t lda, const lmv__mat *B,
                         size_t ldb, const float *bias, float *C, size_t ldc, lmv__act act, int accumulate);

/* d[0:n] = bias, or zeros. Kernels test optional pointers outside their loops: a test inside
   becomes masked loads from a NULL pointer, which some CPUs serve slowly, element by element. */
static void lmv__bias_or_zero(float *d, const float *bias, int n) {
    if (bias) memcpy(d, bias, sizeof(float) * (size_t)n);
    else memset(d, 0, sizeof(float) * (size_t)n);
}

#if defined(__GNUC__) || defined(__clang__)
#define LMV__PREFETCH(p) __builtin_prefetch(p)
#define LMV__PREFETCH_L2(p) __builtin_prefetch(p, 0, 2) /* (no further than L2 on x86) */
#else
#define LMV__PREFETCH(p) ((void)(p))
#define LMV__PREFETCH_L2(p) ((void)(p))
#endif

/* Weights come from memory once per GEMM, through the pack's strided reads: while the tiles of
   one panel run, each tile asks for its share of the cache lines the next pack will read (rows
   j0.. of B, columns k0..k0+kc), so that pack finds them in cache. (A loop, not a function: gcc
   finds a function that only prefetches free of effects and drops its calls.) */
#define LMV__PREFETCH_ROWS(B, ldb, j0, nr, k0, kc, part, parts)                                                 \
    do {                                                                                                     \
        size_t es_ = (B)->dtype == LMV_DTYPE_F32 ? 4 : (B)->dtype == LMV_DTYPE_F16 ? 2 : 1;                     \
        size_t per_ = ((size_t)(kc) * es_ + 63) / 64 + 1, n_ = (size_t)(nr) * per_;                           \
        size_t l_ = n_ * (size_t)(part) / (size_t)(parts), end_ = n_ * (size_t)((part) + 1) / (size_t)(parts); \
        size_t r_ = l_ / per_, c_ = l_ % per_;                                                                \
        const char *base_ = (const char *)(B)->data + ((size_t)(j0) * (ldb) + (size_t)(k0)) * es_;            \
        for (; l_ < end_; l_++) {                                                                            \
            LMV__PREFETCH(base_ + r_ * (ldb) * es_ + c_ * 64);                                                 \
            if (++c_ == per_) c_ = 0, r_++;                                                                  \
        }                                                                                                    \
    } while (0)

#if defined(LMV__AVX2)
/* Horizontal sum and max of 8 lanes, as shuffle trees. */
static float lmv__hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static float lmv__hmax8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

#if defined(LMV__AVX512)
/* The same for 16 lanes, through the 8-lane trees. (The AVX-512 code here uses the zero-masked
   forms of intrinsics whose plain forms g++ 12 warns about, -Wuninitialized on their undefined
   operand.) */
static float lmv__hsum16(__m512 v) {
    return lmv__hsum8(_mm256_add_ps(_mm512_maskz_extractf32x8_ps((__mmask8)0xff, v, 0), _mm512_maskz_extractf32x8_ps((__mmask8)0xff, v, 1)));
}

static float lmv__hmax16(__m512 v) {
    return lmv__hmax8(_mm256_max_ps(_mm512_maskz_extractf32x8_ps((__mmask8)0xff, v, 0), _mm512_maskz_extractf32x8_ps((__mmask8)0xff, v, 1)));
}
#endif
#endif

/* A few columns left over past the last full panel (attention over 49 or 197 keys leaves 1 or 5)
   are not worth a 16-wide panel: each output is a dot product of a row of A with a row of B (B
   stored [N][K]), in 8 (AVX2) or 4 (NEON) interleaved partial sums. Which columns take this path
   depends on N only, so results still do not depend on the thread count. */
#define LMV__NARROW 5

static float lmv__dot(const float *a, const lmv__mat *B, size_t row, size_t at, int n) {
    float s = 0.0f;
    int k = 0;
#if defined(LMV__AVX2)
    {
        __m256 s8 = _mm256_setzero_ps();
        for (; k + 8 <= n; k += 8) s8 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), lmv__weight8(B, row, at + (size_t)k), s8);
        s = lmv__hsum8(s8);
    }
#elif defined(LMV__NEON)
    {
        float32x4_t s4 = vdupq_n_f32(0.0f);
        for (; k + 4 <= n; k += 4) s4 = vfmaq_f32(s4, vld1q_f32(a + k), lmv__weight4(B, row, at + (size_t)k));
        s = vaddvq_f32(s4);
    }
#endif
    for (; k < n; k++) s += a[k] * lmv__weight_at(B, row, at + (size_t)k);
    return s;
}

/* Rows m0..m1 of C's columns j0..j0+nr through lmv__dot, plus the bias (and C itself when
   accumulating: then C already holds C + bias), then act(). */
static void lmv__gemm_narrow(int m0, int m1, int j0, int nr, int K, const float *A, size_t lda, const lmv__mat *B,
                             size_t ldb, const float *bias, float *C, size_t ldc, lmv__act act, int accumulate) {
    int i, j;
    for (i = m0; i < m1; i++) {
        float *c = C + (size_t)i * ldc + (size_t)j0;
        for (j = 0; j < nr; j++) {
            size_t row = (size_t)(j0 + j);
            c[j] = (accumulate ? c[j] : bias ? bias[row] : 0.0f) + lmv__dot(A + (size_t)i * lda, B, row, row * ldb, K);
        }
        lmv__activate(c, (size_t)nr, act);
    }
}

/* C[m0..m1][j0..j0+n] += bias[j0..j0+n]: the start of an accumulating GEMM's sums. */
static void lmv__add_bias(float *C, size_t ldc, const float *bias, int m0, int m1, int j0, int n) {
    int i, j;
    if (bias)
        for (i = m0; i < m1; i++)
            for (j = 0; j < n; j++) C[(size_t)i * ldc + (size_t)(j0 + j)] += bias[j0 + j];
}

/* Rows of the next register tile when `left` rows remain of a panel `nr` columns wide. The AVX2 tile
   runs 5 rows as fast per row as 6, so it takes 5 while that leaves a multiple of 6
   (49 = 5+5+5+5+5+6+6+6+6) and no tile computes rows that do not exist; the other tiles always
   take 6; the AVX-512 tile of whole panels up to LMV__MR_Z. */
static int lmv__tile_rows(int left, int nr) {
#if defined(LMV__AVX512)
    if (nr == LMV__NR) return left < LMV__MR_Z ? left : LMV__MR_Z;
#endif
    (void)nr;
    if (left <= LMV__MR) return left;
#if defined(LMV__AVX2)
    if (left % LMV__MR) return LMV__MR - 1;
#endif
    return LMV__MR;
}

#ifndef LMV__KPASS
/* One GEMM's operands and its split into tasks (column panel x row chunk). */
typedef struct lmv__gemm_job {
    int M, N, K, trans_b, npanels, mchunk;
    const float *A, *bias;
    size_t lda, ldb, ldc;
    lmv__mat B;
    float *C;
    lmv__act act;
    int accumulate;            /* C += A op(B) + bias: the sums start from C + bias, not the bias */
} lmv__gemm_job;
#endif


/* Task t: column panel t % npanels over row chunk t / npanels, packed K block by K block. `step`
   threads take tasks in turn, which tells the prefetch which panel this thread packs next. */
static void lmv__gemm_task(const lmv__gemm_job *g, int t, int step) {
    int M = g->M, N = g->N, K = g->K, trans_b = g->trans_b, npanels = g->npanels, mchunk = g->mchunk;
    const float *A = g->A, *bias = g->bias;
    size_t lda = g->lda, ldb = g->ldb, ldc = g->ldc;
    const lmv__mat *B = &g->B;
    int keep = g->accumulate; /* the first K block starts from C, as the later ones do */
    float *C = g->C;
    lmv__act act = g->act;
    LMV__ALIGNED(32) float panel[LEMEVIT_GEMM_KC * LMV__NR];
    float acc[LMV__MR][LMV__NR];
    int jp = t % npanels, m0 = (t / npanels) * mchunk, m1 = m0 + mchunk < M ? m0 + mchunk : M;
    int j0 = jp * LMV__NR, nr = N - j0 < LMV__NR ? N - j0 : LMV__NR, k0, i0, r, j, tiles = 0;
    int to_l2 = m1 - m0 < 128; /* few rows: a block's tiles are short and their rows fill L1, so
                                  the next f32p block is prefetched into L2 only */
    /* an f32p weight is its own packed panels: nothing to pack, and the next K block is one run
       of memory to prefetch rather than 16 strided rows */
    const float *panels = B->dtype == LMV_DTYPE_F32P ? (const float *)B->data : NULL, *p;
    if (keep) lmv__add_bias(C, ldc, bias, m0, m1, j0, nr), bias = NULL;
    if (trans_b && nr <= LMV__NARROW && !panels) {
        lmv__gemm_narrow(m0, m1, j0, nr, K, A, lda, B, ldb, bias, C, ldc, act, keep);
        return;
    }
    for (i0 = m0; i0 < m1; i0 += lmv__tile_rows(m1 - i0, nr)) tiles++;
    for (k0 = 0; k0 < K; k0 += LEMEVIT_GEMM_KC) {
        int kc = K - k0 < LEMEVIT_GEMM_KC ? K - k0 : LEMEVIT_GEMM_KC, tile = 0, mr;
        /* the next pack: this panel's next K block, or the next panel this thread will likely take */
        int nj0 = k0 + kc < K ? j0 : (jp + step) % npanels * LMV__NR, nk0 = k0 + kc < K ? k0 + kc : 0;
        int nkc = K - nk0 < LEMEVIT_GEMM_KC ? K - nk0 : LEMEVIT_GEMM_KC, nnr = N - nj0 < LMV__NR ? N - nj0 : LMV__NR;
        const float *next = panels ? panels + ((size_t)(nj0 / LMV__NR) * ldb + (size_t)nk0) * LMV__NR : NULL;
        if (panels) p = panels + ((size_t)jp * ldb + (size_t)k0) * LMV__NR;
        else lmv__pack(panel, B, ldb, trans_b, j0, nr, k0, kc), p = panel;
        for (i0 = m0; i0 < m1; i0 += mr, tile++) {
            mr = lmv__tile_rows(m1 - i0, nr);
            if (panels) { /* this tile's share of the next block's nkc lines of 64 bytes */
                int l = nkc * tile / tiles, end = nkc * (tile + 1) / tiles;
                if (to_l2)
                    for (; l < end; l++) LMV__PREFETCH_L2(next + (size_t)l * LMV__NR);
                else
                    for (; l < end; l++) LMV__PREFETCH(next + (size_t)l * LMV__NR);
            } else if (trans_b) LMV__PREFETCH_ROWS(B, ldb, nj0, nnr, nk0, nkc, tile, tiles);
#if defined(LMV__AVX2)
            if (nr == LMV__NR) {
                int gelu = act == LMV__ACT_GELU && k0 + kc == K;
#if defined(LMV__AVX512)
                lmv__tile_z(mr, kc, A + (size_t)i0 * lda + (size_t)k0, lda, p, C + (size_t)i0 * ldc + (size_t)j0, ldc,
                            bias ? bias + j0 : NULL, k0 == 0 && !keep, gelu);
#else
                lmv__tile_c(mr, kc, A + (size_t)i0 * lda + (size_t)k0, lda, p, C + (size_t)i0 * ldc + (size_t)j0, ldc,
                            bias ? bias + j0 : NULL, k0 == 0 && !keep, gelu);
#endif
                if (act != LMV__ACT_NONE && !gelu && k0 + kc == K)
                    for (r = 0; r < mr; r++) lmv__activate(C + (size_t)(i0 + r) * ldc + (size_t)j0, LMV__NR, act);
                continue;
            }
#endif
            /* (no pointer tests inside the loops: see lmv__attention) */
            for (r = 0; r < LMV__MR; r++) {
                for (j = 0; j < LMV__NR; j++) acc[r][j] = 0.0f;
                if (r < mr && (k0 || keep))
                    for (j = 0; j < nr; j++) acc[r][j] = C[(size_t)(i0 + r) * ldc + (size_t)(j0 + j)];
                else if (r < mr && bias)
                    for (j = 0; j < nr; j++) acc[r][j] = bias[j0 + j];
            }
            lmv__tile(mr, kc, A + (size_t)i0 * lda + (size_t)k0, lda, p, acc);
            if (act != LMV__ACT_NONE && k0 + kc == K)
                for (r = 0; r < mr; r++) lmv__activate(acc[r], (size_t)nr, act);
            for (r = 0; r < mr; r++)
                for (j = 0; j < nr; j++) C[(size_t)(i0 + r) * ldc + (size_t)(j0 + j)] = acc[r][j];
        }
    }
    if (K == 0 && !keep)
        for (i0 = m0; i0 < m1; i0++) {
            lmv__bias_or_zero(C + (size_t)i0 * ldc + (size_t)j0, bias ? bias + j0 : NULL, nr);
            lmv__activate(C + (size_t)i0 * ldc + (size_t)j0, (size_t)nr, act);
        }
}

#ifdef _OPENMP
/* Thread i takes the panels of row chunk i, then helps with the other chunks' panels. */
static void lmv__gemm_own_rows(const lmv__ctx *ctx, const lmv__gemm_job *g, int nchunks) {
    int next[256] = {0}; /* the next panel of each chunk (nchunks <= threads <= 256) */
#pragma omp parallel num_threads(ctx->threads)
    {
        int me = omp_get_thread_num(), r, p;
        for (r = 0; r < nchunks; r++) {
            int chunk = (me + r) % nchunks;
            for (;;) {
#pragma omp atomic capture
                p = next[chunk]++;
                if (p >= g->npanels) break;
                lmv__gemm_task(g, chunk * g->npanels + p, 1);
            }
        }
    }
}
#endif

/* C[M][N] = act(A[M][K] * op(B) (+ bias[N])), where op(B) is B^T for B stored [N][K] (trans_b = 1,
   a Linear weight, any dtype; f32p already in panels) or B for B stored [K][N] (trans_b = 0,
   plain float32, e.g. attention times V). Each output element is summed in k order (the few leftover columns that
   lmv__gemm_narrow takes, in a fixed order of their own), so the result does not depend on the
   thread count; each tile applies act() after its last K block (GELU still in registers).
   With `accumulate` (and act NONE), C += A * op(B) + bias: the sums start from C + bias, so a
   residual branch ending in a Linear adds into its stream as it is made. */
static void lmv__gemm_act(const lmv__ctx *ctx, int M, int N, int K, const float *A, size_t lda, lmv__mat B, size_t ldb,
                          int trans_b, const float *bias, float *C, size_t ldc, lmv__act act, int accumulate) {
    int npanels = (N + LMV__NR - 1) / LMV__NR, mchunk = M, nchunks, tasks, t, own_rows;
    lmv__gemm_job g;
    if (B.dtype == LMV_DTYPE_INT8 && ctx->int8_compute && trans_b) {
        lmv__gemm_q8(ctx, M, N, K, A, lda, &B, ldb, bias, C, ldc, act, accumulate);
        return;
    }
    if (ctx->macs) *ctx->macs += (double)M * N * K;
    /* Work is split into (column panel x row chunk) tasks. Many rows (LeMeViT's and Swin's early
       stages): one chunk per thread, which takes its own chunk's panels first, so the rows it
       made in the row-wise kernels before (split the same way) are still in its cache; then it
       helps with the others'. Otherwise panels are shared out as they come, and narrow outputs
       with many rows (the convolutions) get row chunks too, so every thread has work. */
    own_rows = ctx->threads > 1 && M >= 64 * LMV__MR * ctx->threads;
    if (own_rows) mchunk = ((M + ctx->threads - 1) / ctx->threads + LMV__MR - 1) / LMV__MR * LMV__MR;
    else if (ctx->threads > 1 && npanels < 4 * ctx->threads) {
        int split = (4 * ctx->threads + npanels - 1) / npanels;
        mchunk = ((M + split - 1) / split + LMV__MR - 1) / LMV__MR * LMV__MR;
        if (mchunk < 8 * LMV__MR) mchunk = 8 * LMV__MR;
    }
    if (mchunk < 1) mchunk = 1;
    nchunks = (M + mchunk - 1) / mchunk;
    tasks = npanels * nchunks;
    g.M = M, g.N = N, g.K = K, g.trans_b = trans_b, g.npanels = npanels, g.mchunk = mchunk;
    g.A = A, g.bias = bias, g.lda = lda, g.ldb = ldb, g.ldc = ldc, g.B = B, g.C = C, g.act = act, g.accumulate = accumulate;
#ifdef _OPENMP
    /* (not an if() clause: even a team of one costs ~0.4 us, which attention pays per head). Few
       rows times many weights (a classifier head) is memory-bound: split by the weights' size. */
    if (ctx->threads > 1 && tasks > 1 && ((double)M * N * K >= LMV__PARALLEL_MIN || (double)N * K >= LMV__PARALLEL_MIN / 4)) {
        if (own_rows) lmv__gemm_own_rows(ctx, &g, nchunks);
        else {
#pragma omp parallel for schedule(dynamic, 1) num_threads(ctx->threads)
            for (t = 0; t < tasks; t++) lmv__gemm_task(&g, t, omp_get_num_threads());
        }
        return;
    }
#endif
    for (t = 0; t < tasks; t++) lmv__gemm_task(&g, t, 1);
}

static void lmv__gemm(const lmv__ctx *ctx, int M, int N, int K, const float *A, size_t lda, lmv__mat B, size_t ldb,
                      int trans_b, const float *bias, float *C, size_t ldc) {
    lmv__gemm_act(ctx, M, N, K, A, lda, B, ldb, trans_b, bias, C, ldc, LMV__ACT_NONE, 0);
}

/* The int8 x int8 GEMM: C[M][N] = A[M][K] W^T (+ bias) for int8 W ([N][K], a scale per row n).
   A is quantised on the fly, per row and K block: q = round(a * 127 / max|a|), stored as q + 128
   (the unsigned operand of vpdpbusd). Each K block sums exactly in int32; the blocks are added in
   float32 as C += scale_a[m] * scale_w[n] * sum, in k order, so the result does not depend on the
   thread count or the kernel: given the same A, every path gives the same integer sums. */
#define LMV__Q8_MC 192 /* rows of A quantised at a time: LMV__Q8_MC * LEMEVIT_GEMM_KC bytes of stack */

static void lmv__quantize_rows(unsigned char *q, float *scale, const float *A, size_t lda, int mr, int kc, int kc4) {
    int r, k;
    for (r = 0; r < mr; r++) {
        const float *a = A + (size_t)r * lda;
        unsigned char *d = q + (size_t)r * kc4;
        float mx = 0.0f, inv;
        k = 0;
#if defined(LMV__AVX512)
        { /* 16 lanes, the tail masked */
            __m512 m16 = _mm512_setzero_ps(), abs = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
            for (; k + 16 <= kc; k += 16) m16 = _mm512_maskz_max_ps((__mmask16)0xffff, m16, _mm512_and_ps(_mm512_loadu_ps(a + k), abs));
            if (k < kc)
                m16 = _mm512_maskz_max_ps((__mmask16)0xffff, m16, _mm512_and_ps(_mm512_maskz_loadu_ps((__mmask16)((1u << (kc - k)) - 1u), a + k), abs));
            mx = lmv__hmax16(m16);
            k = kc;
        }
#elif defined(LMV__AVX2)
        {
            __m256 m8 = _mm256_setzero_ps(), abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
            float part[8];
            int i;
            for (; k + 8 <= kc; k += 8) m8 = _mm256_max_ps(m8, _mm256_and_ps(_mm256_loadu_ps(a + k), abs));
            _mm256_storeu_ps(part, m8);
            for (i = 0; i < 8; i++) mx = part[i] > mx ? part[i] : mx;
        }
#endif
        for (; k < kc; k++) mx = fabsf(a[k]) > mx ? fabsf(a[k]) : mx;
        scale[r] = mx / 127.0f;
        inv = mx > 0.0f ? 127.0f / mx : 0.0f;
        k = 0;
#if defined(LMV__AVX512)
        { /* round to nearest even like lrintf, clamp, narrow; the tail masked */
            __m512 vi = _mm512_set1_ps(inv);
            __m512i off = _mm512_set1_epi32(128), lo = _mm512_set1_epi32(1), hi = _mm512_set1_epi32(255), v;
            for (; k < kc; k += 16) {
                __mmask16 m = kc - k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (kc - k)) - 1u);
                v = _mm512_add_epi32(_mm512_maskz_cvtps_epi32((__mmask16)0xffff, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, a + k), vi)), off);
                v = _mm512_maskz_min_epi32((__mmask16)0xffff, _mm512_maskz_max_epi32((__mmask16)0xffff, v, lo), hi);
                _mm512_mask_cvtepi32_storeu_epi8(d + k, m, v);
            }
            k = kc;
        }
#elif defined(LMV__AVX2)
        {
            __m256 vi = _mm256_set1_ps(inv);
            __m256i off = _mm256_set1_epi32(128), lo = _mm256_set1_epi32(1), hi = _mm256_set1_epi32(255);
            for (; k + 8 <= kc; k += 8) {
                __m256i v = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(a + k), vi)), off);
                __m128i w;
                v = _mm256_min_epi32(_mm256_max_epi32(v, lo), hi);
                w = _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
                _mm_storel_epi64((__m128i *)(void *)(d + k), _mm_packus_epi16(w, w));
            }
        }
#endif
        for (; k < kc; k++) {
            float p = a[k] * inv; /* rounded to float here, also where float math is wider */
            long v = lrintf(p);
            d[k] = (unsigned char)(128 + (v > 127 ? 127 : v < -127 ? -127 : v));
        }
        for (; k < kc4; k++) d[k] = 128; /* zero, against zero weights */
    }
}

/* panel[k/4][j][k%4] = W[j0+j][k0+k] (zero past nr and kc), and the column sums of the block:
   a transpose of 4-byte groups, 8x8 groups at a time on AVX2. */
static void lmv__pack_q8(signed char *panel, int32_t *colsum, const lmv__mat *B, size_t ldb, int j0, int nr, int k0,
                         int kc, int kc4) {
    const signed char *w0 = (const signed char *)B->data + (size_t)j0 * ldb + (size_t)k0;
    int j, k, jv = 0, kv = 0;
    if (nr < LMV__NR || kc < kc4) memset(panel, 0, (size_t)kc4 * LMV__NR);
#if defined(LMV__AVX2)
    jv = nr & ~7;
    kv = kc & ~31;
    for (j = 0; j < jv; j += 8)
        for (k = 0; k < kv; k += 32) {
            const signed char *s = w0 + (size_t)j * ldb + (size_t)k;
#define LMV__LD(i) _mm256_castsi256_ps(_mm256_loadu_si256((const __m256i *)(const void *)(s + (i) * ldb)))
            lmv__transpose8(LMV__LD(0), LMV__LD(1), LMV__LD(2), LMV__LD(3), LMV__LD(4), LMV__LD(5), LMV__LD(6), LMV__LD(7),
                            (float *)(void *)(panel + (size_t)k * LMV__NR + (size_t)j * 4), LMV__NR);
#undef LMV__LD
        }
#endif
    for (j = 0; j < nr; j++) {
        const signed char *w = w0 + (size_t)j * ldb;
        int32_t sum = 0;
        k = 0;
#if defined(LMV__AVX2)
        {   /* byte sums: flip to unsigned, sum of absolute differences against zero */
            __m256i acc = _mm256_setzero_si256(), flip = _mm256_set1_epi8((char)0x80);
            int64_t part[4];
            for (; k + 32 <= kc; k += 32)
                acc = _mm256_add_epi64(acc, _mm256_sad_epu8(_mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(const void *)(w + k)), flip),
                                                            _mm256_setzero_si256()));
            _mm256_storeu_si256((__m256i *)(void *)part, acc);
            sum = (int32_t)(part[0] + part[1] + part[2] + part[3]) - 128 * k;
        }
#endif
        for (; k < kc; k++) sum += w[k];
        colsum[j] = sum;
        for (k = j < jv ? kv : 0; k < kc; k++) panel[(size_t)(k >> 2) * (4 * LMV__NR) + (size_t)j * 4 + (size_t)(k & 3)] = w[k];
    }
    for (; j < LMV__NR; j++) colsum[j] = 0;
}

#if defined(LMV__AVX512)
/* The end of a 512-bit int8 tile: acc[r] holds row r's 16 column sums of a * w with A's unsigned
   operand (a + 128), so 128 * colsum comes off, then the two scales, then into C. The operations
   and order of the scalar loop in lmv__tile_q8 (the last product through the masked form, which a
   compiler fusing a * b + c (C++) cannot fuse with the add). */
static void lmv__tile_q8_out(int mr, int nr, const __m512i *acc, const int32_t *colsum, const float *sa,
                             const float *sw, const float *bias, float *C, size_t ldc, int first) {
    __mmask16 cols = (__mmask16)((1u << nr) - 1u);
    __m512i off = _mm512_maskz_slli_epi32((__mmask16)0xffff, _mm512_loadu_si512((const void *)colsum), 7);
    __m512 w = _mm512_maskz_loadu_ps(cols, sw);
    int r;
    for (r = 0; r < mr; r++) {
        float *c = C + (size_t)r * ldc;
        __m512 v = _mm512_maskz_mul_ps(cols, _mm512_mul_ps(_mm512_set1_ps(sa[r]), w), _mm512_maskz_cvtepi32_ps(cols, _mm512_sub_epi32(acc[r], off)));
        __m512 p = first ? (bias ? _mm512_maskz_loadu_ps(cols, bias) : _mm512_setzero_ps()) : _mm512_maskz_loadu_ps(cols, c);
        _mm512_mask_storeu_ps(c, cols, _mm512_add_ps(p, v));
    }
}

/* lmv__tile_q8 with AVX512-VNNI: one zmm of 16 sums per row, 4 bytes of k for all 16 columns in
   one vpdpbusd. The only function compiled for VNNI (its own target), called only on the
   LMV_SIMD_AVX512 path. Rows past mr are padding rows of A (zeros, as 128): computed, never
   stored; columns past nr masked. */
#if defined(__clang__)
#pragma clang attribute pop
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni"))), \
                             apply_to = function)
#elif defined(__GNUC__)
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")
#endif
static void lmv__tile_q8_vnni(int mr, int nr, int kc4, const unsigned char *a, size_t lda, const signed char *p,
                              const int32_t *colsum, const float *sa, const float *sw, const float *bias, float *C,
                              size_t ldc, int first) {
    const unsigned char *a0 = a, *a1 = a + lda, *a2 = a + 2 * lda, *a3 = a + 3 * lda, *a4 = a + 4 * lda, *a5 = a + 5 * lda;
    __m512i c[LMV__MR];
    int k;
    c[0] = c[1] = c[2] = c[3] = c[4] = c[5] = _mm512_setzero_si512();
    for (k = 0; k < kc4; k += 4) {
        __m512i b = _mm512_loadu_si512((const void *)(p + (size_t)k * LMV__NR));
        int32_t v;
#define LMV__DPZ(row, x) memcpy(&v, row + k, 4); x = _mm512_dpbusd_epi32(x, _mm512_set1_epi32(v), b)
        LMV__DPZ(a0, c[0]); LMV__DPZ(a1, c[1]); LMV__DPZ(a2, c[2]); LMV__DPZ(a3, c[3]); LMV__DPZ(a4, c[4]); LMV__DPZ(a5, c[5]);
#undef LMV__DPZ
    }
    lmv__tile_q8_out(mr, nr, c, colsum, sa, sw, bias, C, ldc, first);
}
#if defined(__clang__)
#pragma clang attribute pop
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl"))), \
                             apply_to = function)
#elif defined(__GNUC__)
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl")
#endif
#endif

/* C[mr][nr] (+)= scale_a[r] * scale_w[j] * sum_k (a - 128) * w over one K block of quantised A
   (stride lda): the first block starts from the bias (or zero), later ones add to C. */
static void lmv__tile_q8(int mr, int nr, int kc4, const unsigned char *a, size_t lda, const signed char *p,
                         const int32_t *colsum, const float *sa, const float *sw, const float *bias, float *C, size_t ldc,
                         int first) {
    int32_t acc[LMV__MR][LMV__NR];
    int r, j, k;
#if defined(LMV__AVX512)
    { /* AVX-512 without VNNI: 16-bit products summed in pairs by vpmaddwd, exact (|a * w| <= 255 *
         128), so the integer sums are the VNNI tile's. The tile's rows of A are first widened to
         int16; per 4 bytes of k the panel's 16 columns are widened in two zmm (columns 0-7 and
         8-15, each column's 4 k side by side) and the row's 4 values broadcast; each row's two
         accumulators hold a sum per column and k pair (lane 2j: k 0-1, 2j+1: k 2-3), folded into
         16 column sums at the end. */
        LMV__ALIGNED(64) int16_t aw[LMV__MR][LEMEVIT_GEMM_KC + 64];
        __m512i l0 = _mm512_setzero_si512(), l1 = l0, l2 = l0, l3 = l0, l4 = l0, l5 = l0;
        __m512i h0 = l0, h1 = l0, h2 = l0, h3 = l0, h4 = l0, h5 = l0, c[LMV__MR], even, odd;
        for (r = 0; r < LMV__MR; r++)
            for (k = 0; k < kc4; k += 32) {
                __mmask32 m = kc4 - k >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1u << (kc4 - k)) - 1u);
                _mm512_storeu_si512((void *)(aw[r] + k), _mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(m, a + (size_t)r * lda + (size_t)k)));
            }
        for (k = 0; k < kc4; k += 4) {
            const signed char *pk = p + (size_t)k * LMV__NR;
            __m512i bl = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(const void *)pk)), av;
            __m512i bh = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(const void *)(pk + 32)));
            long long v;
#define LMV__MADD(r, xl, xh) memcpy(&v, aw[r] + k, 8); av = _mm512_set1_epi64(v); \
            xl = _mm512_add_epi32(xl, _mm512_madd_epi16(av, bl)); xh = _mm512_add_epi32(xh, _mm512_madd_epi16(av, bh))
            LMV__MADD(0, l0, h0); LMV__MADD(1, l1, h1); LMV__MADD(2, l2, h2);
            LMV__MADD(3, l3, h3); LMV__MADD(4, l4, h4); LMV__MADD(5, l5, h5);
#undef LMV__MADD
        }
        even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
        odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
#define LMV__FOLD(r, xl, xh) c[r] = _mm512_add_epi32(_mm512_permutex2var_epi32(xl, even, xh), _mm512_permutex2var_epi32(xl, odd, xh))
        LMV__FOLD(0, l0, h0); LMV__FOLD(1, l1, h1); LMV__FOLD(2, l2, h2);
        LMV__FOLD(3, l3, h3); LMV__FOLD(4, l4, h4); LMV__FOLD(5, l5, h5);
#undef LMV__FOLD
        lmv__tile_q8_out(mr, nr, c, colsum, sa, sw, bias, C, ldc, first);
        return;
    }
#elif defined(LMV__AVX2)
    { /* AVX2: 16-bit products summed in pairs by vpmaddwd, exact (|a * w| <= 255 * 128), so the
         integer sums are the other paths'. A's rows widened to int16 first; then per half of the
         panel (8 columns: 12 accumulators, 2 of weights, 1 of A in 16 registers) and per 4 bytes
         of k, the columns' 4 k widened side by side and the row's 4 values broadcast. Each
         accumulator holds 4 columns' sums per k pair, folded (vphaddd) at the end. */
        LMV__ALIGNED(32) int16_t aw[LMV__MR][LEMEVIT_GEMM_KC + 4];
        int h;
        for (r = 0; r < LMV__MR; r++) {
            const unsigned char *ar = a + (size_t)r * lda;
            for (k = 0; k + 16 <= kc4; k += 16)
                _mm256_storeu_si256((__m256i *)(void *)(aw[r] + k), _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(const void *)(ar + k))));
            for (; k < kc4; k++) aw[r][k] = (int16_t)ar[k];
        }
        for (h = 0; h < LMV__NR; h += 8) {
            __m256i x0 = _mm256_setzero_si256(), y0 = x0, x1 = x0, y1 = x0, x2 = x0, y2 = x0;
            __m256i x3 = x0, y3 = x0, x4 = x0, y4 = x0, x5 = x0, y5 = x0, off;
            for (k = 0; k < kc4; k += 4) {
                const signed char *pk = p + (size_t)k * LMV__NR + (size_t)h * 4;
                __m256i b0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(const void *)pk)), av;
                __m256i b1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(const void *)(pk + 16)));
                long long v;
#define LMV__MADD(r, x, y) memcpy(&v, aw[r] + k, 8); av = _mm256_set1_epi64x(v); \
                x = _mm256_add_epi32(x, _mm256_madd_epi16(av, b0)); y = _mm256_add_epi32(y, _mm256_madd_epi16(av, b1))
                LMV__MADD(0, x0, y0); LMV__MADD(1, x1, y1); LMV__MADD(2, x2, y2);
                LMV__MADD(3, x3, y3); LMV__MADD(4, x4, y4); LMV__MADD(5, x5, y5);
#undef LMV__MADD
            }
            /* lanes of hadd(x, y): columns 0 1 4 5 | 2 3 6 7, put in order; then the +128 of A off */
            off = _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)(const void *)(colsum + h)), 7);
#define LMV__FOLD(r, x, y) _mm256_storeu_si256((__m256i *)(void *)(acc[r] + h), \
                _mm256_sub_epi32(_mm256_permute4x64_epi64(_mm256_hadd_epi32(x, y), 0xD8), off))
            LMV__FOLD(0, x0, y0); LMV__FOLD(1, x1, y1); LMV__FOLD(2, x2, y2);
            LMV__FOLD(3, x3, y3); LMV__FOLD(4, x4, y4); LMV__FOLD(5, x5, y5);
#undef LMV__FOLD
        }
    }
#elif defined(LMV__SDOT)
    { /* signed x signed: A back to signed (a - 128 is a ^ 0x80), no column sums needed */
        int32x4_t c[LMV__MR][4];
        (void)colsum;
        for (r = 0; r < LMV__MR; r++)
            for (j = 0; j < 4; j++) c[r][j] = vdupq_n_s32(0);
        for (k = 0; k < kc4; k += 4) {
            const signed char *pk = p + (size_t)k * LMV__NR;
            int8x16_t b0 = vld1q_s8(pk), b1 = vld1q_s8(pk + 16), b2 = vld1q_s8(pk + 32), b3 = vld1q_s8(pk + 48);
            for (r = 0; r < LMV__MR; r++) {
                uint32_t v;
                int8x16_t av;
                memcpy(&v, a + (size_t)r * lda + (size_t)k, 4);
                av = vreinterpretq_s8_u32(vdupq_n_u32(v ^ 0x80808080u));
                c[r][0] = vdotq_s32(c[r][0], b0, av);
                c[r][1] = vdotq_s32(c[r][1], b1, av);
                c[r][2] = vdotq_s32(c[r][2], b2, av);
                c[r][3] = vdotq_s32(c[r][3], b3, av);
            }
        }
        for (r = 0; r < mr; r++)
            for (j = 0; j < 4; j++) vst1q_s32(acc[r] + 4 * j, c[r][j]);
    }
#else
    (void)colsum;
    for (r = 0; r < mr; r++)
        for (j = 0; j < nr; j++) {
            const unsigned char *ar = a + (size_t)r * lda;
            const signed char *pj = p + (size_t)j * 4;
            int32_t sum = 0;
            for (k = 0; k < kc4; k += 4)
                sum += ((int32_t)ar[k] - 128) * pj[(size_t)k * LMV__NR] + ((int32_t)ar[k + 1] - 128) * pj[(size_t)k * LMV__NR + 1] +
                       ((int32_t)ar[k + 2] - 128) * pj[(size_t)k * LMV__NR + 2] + ((int32_t)ar[k + 3] - 128) * pj[(size_t)k * LMV__NR + 3];
            acc[r][j] = sum;
        }
#endif
    for (r = 0; r < mr; r++) {
        float *c = C + (size_t)r * ldc;
        if (first) lmv__bias_or_zero(c, bias, nr);
        for (j = 0; j < nr; j++) { /* the product rounded before the add, as the vector tiles do: a
                                      compiler that fuses a * b + c (Clang, C++) must not fuse this */
            volatile float t = sa[r] * sw[j] * (float)acc[r][j];
            c[j] += t;
        }
    }
}

static void lmv__gemm_q8(const lmv__ctx *ctx, int M, int N, int K, const float *A, size_t lda, const lmv__mat *B,
                         size_t ldb, const float *bias, float *C, size_t ldc, lmv__act act, int accumulate) {
    int npanels = (N + LMV__NR - 1) / LMV__NR, nrows = (M + LMV__Q8_MC - 1) / LMV__Q8_MC, mchunk, ngroups = 1, tasks, t;
    void (*tile)(int, int, int, const unsigned char *, size_t, const signed char *, const int32_t *, const float *,
                 const float *, const float *, float *, size_t, int) = lmv__tile_q8;
#if defined(LMV__AVX512)
    if (lmv__simd_of(ctx) == LMV_SIMD_AVX512) tile = lmv__tile_q8_vnni; /* the CPU has VNNI */
#endif
    if (ctx->macs) *ctx->macs += (double)M * N * K;
    /* Tasks are (row chunk x group of column panels); each quantises its rows once per K block and
       packs each panel once per row chunk, so row chunks are as tall as the buffer allows. With
       threads, rows are split before columns: every column group quantises its rows again. */
    if (ctx->threads > 1 && nrows < 2 * ctx->threads) nrows = 2 * ctx->threads;
    mchunk = ((M + nrows - 1) / nrows + LMV__MR - 1) / LMV__MR * LMV__MR;
    if (mchunk < 4 * LMV__MR) mchunk = 4 * LMV__MR;
    if (mchunk > LMV__Q8_MC) mchunk = LMV__Q8_MC;
    nrows = (M + mchunk - 1) / mchunk;
    while (ctx->threads > 1 && nrows * ngroups < 4 * ctx->threads && ngroups < npanels) ngroups++;
    tasks = nrows * ngroups;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(ctx->threads) if (ctx->threads > 1 && tasks > 1 && \
                                                                                  (double)M * N * K >= LMV__PARALLEL_MIN)
#endif
    for (t = 0; t < tasks; t++) {
        LMV__ALIGNED(32) unsigned char aq[LMV__Q8_MC * LEMEVIT_GEMM_KC];
        LMV__ALIGNED(32) signed char panel[LEMEVIT_GEMM_KC * LMV__NR];
        float as[LMV__Q8_MC];
        int32_t colsum[LMV__NR];
        int m0 = (t / ngroups) * mchunk, m1 = m0 + mchunk < M ? m0 + mchunk : M, g = t % ngroups;
        int p0 = g * npanels / ngroups, p1 = (g + 1) * npanels / ngroups, jp, k0, i0;
        int c0 = p0 * LMV__NR, width = (p1 * LMV__NR < N ? p1 * LMV__NR : N) - c0;
        const float *b = accumulate ? NULL : bias; /* accumulating: the sums start from C + bias */
        if (accumulate && p1 > p0) lmv__add_bias(C, ldc, bias, m0, m1, c0, width);
        for (k0 = 0; k0 < K; k0 += LEMEVIT_GEMM_KC) {
            int kc = K - k0 < LEMEVIT_GEMM_KC ? K - k0 : LEMEVIT_GEMM_KC, kc4 = (kc + 3) & ~3;
            lmv__quantize_rows(aq, as, A + (size_t)m0 * lda + (size_t)k0, lda, m1 - m0, kc, kc4);
            /* a last tile shorter than MR reads padding rows: zeros */
            memset(aq + (size_t)(m1 - m0) * kc4, 128, (size_t)((LMV__MR - (m1 - m0) % LMV__MR) % LMV__MR) * kc4);
            for (jp = p0; jp < p1; jp++) {
                int j0 = jp * LMV__NR, nr = N - j0 < LMV__NR ? N - j0 : LMV__NR;
                lmv__pack_q8(panel, colsum, B, ldb, j0, nr, k0, kc, kc4);
                for (i0 = m0; i0 < m1; i0 += LMV__MR)
                    tile(m1 - i0 < LMV__MR ? m1 - i0 : LMV__MR, nr, kc4, aq + (size_t)(i0 - m0) * kc4, (size_t)kc4,
                                 panel, colsum, as + (i0 - m0), B->scale + j0, b ? b + j0 : NULL,
                                 C + (size_t)i0 * ldc + (size_t)j0, ldc, k0 == 0 && !accumulate);
            }
        }
        if (p1 > p0) { /* this task's columns: K == 0 leaves the bias; then the activation */
            for (i0 = m0; i0 < m1; i0++) {
                if (K == 0 && !accumulate) lmv__bias_or_zero(C + (size_t)i0 * ldc + (size_t)c0, b ? b + c0 : NULL, width);
                lmv__activate(C + (size_t)i0 * ldc + (size_t)c0, (size_t)width, act);
            }
        }
    }
}

/* y[rows][out] = x[rows][in] W^T + b: a PyTorch nn.Linear. */
static void lmv__linear(const lmv__ctx *ctx, float *y, const float *x, int rows, int in, int out, lmv__mat W,
                        const float *b) {
    lmv__gemm(ctx, rows, out, in, x, (size_t)in, W, (size_t)in, 1, b, y, (size_t)out);
}

/* y = act(x W^T + b): the first half of an MLP. */
static void lmv__linear_act(const lmv__ctx *ctx, float *y, const float *x, int rows, int in, int out, lmv__mat W,
                            const float *b, lmv__act act) {
    lmv__gemm_act(ctx, rows, out, in, x, (size_t)in, W, (size_t)in, 1, b, y, (size_t)out, act, 0);
}

/* LayerNorm over the last dimension (biased variance, like PyTorch), two passes so a large mean
   costs no precision; y may alias x. */
static void lmv__layernorm_row(float *yr, const float *xr, int dim, const float *w, const float *b, float eps) {
    float m, inv, sum = 0.0f, var = 0.0f;
    int i = 0;
#if defined(LMV__AVX512)
    { /* 16 lanes, the last dim % 16 through masked loads and stores */
        int nv = dim & ~15;
        __mmask16 tail = (__mmask16)((1u << (dim & 15)) - 1u);
        __m512 s16 = _mm512_setzero_ps(), v16 = _mm512_setzero_ps(), m16, i16, d;
        for (; i < nv; i += 16) s16 = _mm512_add_ps(s16, _mm512_loadu_ps(xr + i));
        if (tail) s16 = _mm512_add_ps(s16, _mm512_maskz_loadu_ps(tail, xr + i));
        sum = lmv__hsum16(s16);
        m = sum / (float)dim;
        m16 = _mm512_set1_ps(m);
        for (i = 0; i < nv; i += 16) d = _mm512_sub_ps(_mm512_loadu_ps(xr + i), m16), v16 = _mm512_fmadd_ps(d, d, v16);
        if (tail) d = _mm512_maskz_sub_ps(tail, _mm512_maskz_loadu_ps(tail, xr + i), m16), v16 = _mm512_fmadd_ps(d, d, v16);
        var = lmv__hsum16(v16);
        inv = 1.0f / sqrtf(var / (float)dim + eps);
        i16 = _mm512_set1_ps(inv);
        for (i = 0; i < dim; i += 16) { /* (x - m) * inv * w + b, in that order, as below */
            __mmask16 k = i < nv ? (__mmask16)0xffff : tail;
            d = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, xr + i), m16), i16);
            if (w) d = _mm512_mul_ps(d, _mm512_maskz_loadu_ps(k, w + i));
            if (b) d = _mm512_add_ps(d, _mm512_maskz_loadu_ps(k, b + i));
            _mm512_mask_storeu_ps(yr + i, k, d);
        }
        return;
    }
#elif defined(LMV__AVX2)
    {
        __m256 s8 = _mm256_setzero_ps(), v8 = _mm256_setzero_ps(), m8;
        for (; i + 8 <= dim; i += 8) s8 = _mm256_add_ps(s8, _mm256_loadu_ps(xr + i));
        sum = lmv__hsum8(s8);
        for (; i < dim; i++) sum += xr[i];
        m = sum / (float)dim;
        m8 = _mm256_set1_ps(m);
        for (i = 0; i + 8 <= dim; i += 8) {
            __m256 d = _mm256_sub_ps(_mm256_loadu_ps(xr + i), m8);
            v8 = _mm256_fmadd_ps(d, d, v8);
        }
        var = lmv__hsum8(v8);
        for (; i < dim; i++) var += (xr[i] - m) * (xr[i] - m);
    }
#else
    for (; i < dim; i++) sum += xr[i];
    m = sum / (float)dim;
    for (i = 0; i < dim; i++) var += (xr[i] - m) * (xr[i] - m);
#endif
    inv = 1.0f / sqrtf(var / (float)dim + eps);
    if (w && b)
        for (i = 0; i < dim; i++) yr[i] = (xr[i] - m) * inv * w[i] + b[i];
    else
        for (i = 0; i < dim; i++) yr[i] = (xr[i] - m) * inv * (w ? w[i] : 1.0f) + (b ? b[i] : 0.0f);
}

static void lmv__layernorm(const lmv__ctx *ctx, float *y, const float *x, int rows, int dim, const float *w, const float *b,
                           float eps) {
    int r;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, LMV__ROW_CHUNK(ctx, rows)) num_threads(ctx->threads) if (LMV__SPLIT_ROWS(ctx, rows, dim))
#endif
    for (r = 0; r < rows; r++) lmv__layernorm_row(y + (size_t)r * dim, x + (size_t)r * dim, dim, w, b, eps);
    (void)ctx;
}

/* timm's RmsNorm over the last dimension: y = x / sqrt(mean(x^2) + eps) * w (+ b, the zeros the
   converter writes); y may alias x. The sum of squares in lanes, then x * inv * w + b in that order. */
static void lmv__rmsnorm_row(float *yr, const float *xr, int dim, const float *w, const float *b, float eps) {
    float inv, ss = 0.0f;
    int i = 0;
#if defined(LMV__AVX512)
    { /* 16 lanes, the last dim % 16 through masked loads and stores */
        int nv = dim & ~15;
        __mmask16 tail = (__mmask16)((1u << (dim & 15)) - 1u);
        __m512 s16 = _mm512_setzero_ps(), d, i16;
        for (; i < nv; i += 16) d = _mm512_loadu_ps(xr + i), s16 = _mm512_fmadd_ps(d, d, s16);
        if (tail) d = _mm512_maskz_loadu_ps(tail, xr + i), s16 = _mm512_fmadd_ps(d, d, s16);
        ss = lmv__hsum16(s16);
        inv = 1.0f / sqrtf(ss / (float)dim + eps);
        i16 = _mm512_set1_ps(inv);
        for (i = 0; i < dim; i += 16) {
            __mmask16 k = i < nv ? (__mmask16)0xffff : tail;
            d = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, xr + i), i16);
            if (w) d = _mm512_mul_ps(d, _mm512_maskz_loadu_ps(k, w + i));
            if (b) d = _mm512_add_ps(d, _mm512_maskz_loadu_ps(k, b + i));
            _mm512_mask_storeu_ps(yr + i, k, d);
        }
        return;
    }
#elif defined(LMV__AVX2)
    {
        __m256 s8 = _mm256_setzero_ps(), d, i8;
        for (; i + 8 <= dim; i += 8) d = _mm256_loadu_ps(xr + i), s8 = _mm256_fmadd_ps(d, d, s8);
        ss = lmv__hsum8(s8);
        for (; i < dim; i++) ss += xr[i] * xr[i];
        inv = 1.0f / sqrtf(ss / (float)dim + eps);
        i8 = _mm256_set1_ps(inv);
        for (i = 0; i + 8 <= dim; i += 8) {
            d = _mm256_mul_ps(_mm256_loadu_ps(xr + i), i8);
            if (w) d = _mm256_mul_ps(d, _mm256_loadu_ps(w + i));
            if (b) d = _mm256_add_ps(d, _mm256_loadu_ps(b + i));
            _mm256_storeu_ps(yr + i, d);
        }
    }
#elif defined(LMV__NEON)
    {
        float32x4_t s4 = vdupq_n_f32(0.0f), d, i4;
        for (; i + 4 <= dim; i += 4) d = vld1q_f32(xr + i), s4 = vfmaq_f32(s4, d, d);
        ss = vaddvq_f32(s4);
        for (; i < dim; i++) ss += xr[i] * xr[i];
        inv = 1.0f / sqrtf(ss / (float)dim + eps);
        i4 = vdupq_n_f32(inv);
        for (i = 0; i + 4 <= dim; i += 4) {
            d = vmulq_f32(vld1q_f32(xr + i), i4);
            if (w) d = vmulq_f32(d, vld1q_f32(w + i));
            if (b) d = vaddq_f32(d, vld1q_f32(b + i));
            vst1q_f32(yr + i, d);
        }
    }
#else
    for (; i < dim; i++) ss += xr[i] * xr[i];
    inv = 1.0f / sqrtf(ss / (float)dim + eps);
    i = 0;
#endif
    for (; i < dim; i++) yr[i] = xr[i] * inv * (w ? w[i] : 1.0f) + (b ? b[i] : 0.0f);
}

static void lmv__rmsnorm(const lmv__ctx *ctx, float *y, const float *x, int rows, int dim, const float *w, const float *b,
                         float eps) {
    int r;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, LMV__ROW_CHUNK(ctx, rows)) num_threads(ctx->threads) if (LMV__SPLIT_ROWS(ctx, rows, dim))
#endif
    for (r = 0; r < rows; r++) lmv__rmsnorm_row(y + (size_t)r * dim, x + (size_t)r * dim, dim, w, b, eps);
    (void)ctx;
}


#if defined(LMV__AVX2)
/* e^x for 8 floats: x = n ln2 + r with |r| <= ln2/2, e^r by a degree-7 polynomial (the Cephes
   coefficients), 2^n put into the exponent. Relative error about 2e-7, like expf. Inputs below
   ln(FLT_MIN) are clamped, so the result never underflows to a denormal. */
static __m256 lmv__exp8(__m256 x) {
    __m256 fx, r, z, y;
    __m256i n;
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(LMV__EXP_LO)), _mm256_set1_ps(LMV__EXP_HI));
    fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(LMV__LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(LMV__LN2_HI), x);
    r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(LMV__LN2_LO), r);
    z = _mm256_mul_ps(r, r);
    y = _mm256_fmadd_ps(_mm256_set1_ps(LMV__EXP_C0), r, _mm256_set1_ps(LMV__EXP_C1));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(LMV__EXP_C2));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(LMV__EXP_C3));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(LMV__EXP_C4));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(LMV__EXP_C5));
    y = _mm256_fmadd_ps(y, z, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(n));
}

/* GELU (the erf form) for 8 floats: erf(u) = u P(u^2) / Q(u^2) on |u| <= 4 (a rational fit of
   degrees 13/10, made for this library; erf is +-1 in float beyond), so GELU is within 1e-6 of
   0.5 x (1 + erf(x / sqrt 2)) everywhere (8e-7 measured in test_core against double). */
static __m256 lmv__gelu8(__m256 x) {
    const __m256 one = _mm256_set1_ps(1.0f);
    __m256 u = _mm256_mul_ps(x, _mm256_set1_ps(0.70710678118654752f)), t, p, q, e;
    u = _mm256_min_ps(_mm256_max_ps(u, _mm256_set1_ps(-4.0f)), _mm256_set1_ps(4.0f));
    t = _mm256_mul_ps(u, u);
    p = _mm256_fmadd_ps(_mm256_set1_ps(LMV__ERF_P0), t, _mm256_set1_ps(LMV__ERF_P1));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(LMV__ERF_P2));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(LMV__ERF_P3));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(LMV__ERF_P4));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(LMV__ERF_P5));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(LMV__ERF_P6));
    q = _mm256_fmadd_ps(_mm256_set1_ps(LMV__ERF_Q0), t, _mm256_set1_ps(LMV__ERF_Q1));
    q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(LMV__ERF_Q2));
    q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(LMV__ERF_Q3));
    q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(LMV__ERF_Q4));
    q = _mm256_fmadd_ps(q, t, one);
    e = _mm256_div_ps(_mm256_mul_ps(u, p), q);
    e = _mm256_min_ps(_mm256_max_ps(e, _mm256_set1_ps(-1.0f)), one);
    return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), x), _mm256_add_ps(one, e));
}

#if defined(LMV__AVX512)
/* lmv__exp8 and lmv__gelu8 for 16 floats: the same operations, polynomials and clamps, lane for
   lane, so both give the same bits. */
static __m512 lmv__exp16(__m512 x) {
    __m512 fx, r, z, y;
    __m512i n;
    x = _mm512_maskz_min_ps((__mmask16)0xffff, _mm512_maskz_max_ps((__mmask16)0xffff, x, _mm512_set1_ps(LMV__EXP_LO)), _mm512_set1_ps(LMV__EXP_HI));
    fx = _mm512_maskz_roundscale_ps((__mmask16)0xffff, _mm512_mul_ps(x, _mm512_set1_ps(LMV__LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(LMV__LN2_HI), x);
    r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(LMV__LN2_LO), r);
    z = _mm512_mul_ps(r, r);
    y = _mm512_fmadd_ps(_mm512_set1_ps(LMV__EXP_C0), r, _mm512_set1_ps(LMV__EXP_C1));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(LMV__EXP_C2));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(LMV__EXP_C3));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(LMV__EXP_C4));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(LMV__EXP_C5));
    y = _mm512_fmadd_ps(y, z, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    n = _mm512_maskz_slli_epi32((__mmask16)0xffff, _mm512_add_epi32(_mm512_maskz_cvtps_epi32((__mmask16)0xffff, fx), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(y, _mm512_castsi512_ps(n));
}

static __m512 lmv__gelu16(__m512 x) {
    const __m512 one = _mm512_set1_ps(1.0f);
    __m512 u = _mm512_mul_ps(x, _mm512_set1_ps(0.70710678118654752f)), t, p, q, e;
    u = _mm512_maskz_min_ps((__mmask16)0xffff, _mm512_maskz_max_ps((__mmask16)0xffff, u, _mm512_set1_ps(-4.0f)), _mm512_set1_ps(4.0f));
    t = _mm512_mul_ps(u, u);
    p = _mm512_fmadd_ps(_mm512_set1_ps(LMV__ERF_P0), t, _mm512_set1_ps(LMV__ERF_P1));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(LMV__ERF_P2));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(LMV__ERF_P3));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(LMV__ERF_P4));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(LMV__ERF_P5));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(LMV__ERF_P6));
    q = _mm512_fmadd_ps(_mm512_set1_ps(LMV__ERF_Q0), t, _mm512_set1_ps(LMV__ERF_Q1));
    q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(LMV__ERF_Q2));
    q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(LMV__ERF_Q3));
    q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(LMV__ERF_Q4));
    q = _mm512_fmadd_ps(q, t, one);
    e = _mm512_div_ps(_mm512_mul_ps(u, p), q);
    e = _mm512_maskz_min_ps((__mmask16)0xffff, _mm512_maskz_max_ps((__mmask16)0xffff, e, _mm512_set1_ps(-1.0f)), one);
    return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), x), _mm512_add_ps(one, e));
}
#endif
#endif

#if defined(LMV__NEON)
/* lmv__exp8 and lmv__gelu8 for NEON, four lanes: the same operations, polynomials and clamps. */
static float32x4_t lmv__exp4(float32x4_t x) {
    float32x4_t fx, r, z, y;
    int32x4_t n;
    x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(LMV__EXP_LO)), vdupq_n_f32(LMV__EXP_HI));
    fx = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(LMV__LOG2E)));
    r = vfmsq_f32(x, fx, vdupq_n_f32(LMV__LN2_HI));
    r = vfmsq_f32(r, fx, vdupq_n_f32(LMV__LN2_LO));
    z = vmulq_f32(r, r);
    y = vfmaq_f32(vdupq_n_f32(LMV__EXP_C1), vdupq_n_f32(LMV__EXP_C0), r);
    y = vfmaq_f32(vdupq_n_f32(LMV__EXP_C2), y, r);
    y = vfmaq_f32(vdupq_n_f32(LMV__EXP_C3), y, r);
    y = vfmaq_f32(vdupq_n_f32(LMV__EXP_C4), y, r);
    y = vfmaq_f32(vdupq_n_f32(LMV__EXP_C5), y, r);
    y = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0f)), y, z);
    n = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(fx), vdupq_n_s32(127)), 23);
    return vmulq_f32(y, vreinterpretq_f32_s32(n));
}

static float32x4_t lmv__gelu4(float32x4_t x) {
    const float32x4_t one = vdupq_n_f32(1.0f);
    float32x4_t u = vmulq_f32(x, vdupq_n_f32(0.70710678118654752f)), t, p, q, e;
    u = vminq_f32(vmaxq_f32(u, vdupq_n_f32(-4.0f)), vdupq_n_f32(4.0f));
    t = vmulq_f32(u, u);
    p = vfmaq_f32(vdupq_n_f32(LMV__ERF_P1), vdupq_n_f32(LMV__ERF_P0), t);
    p = vfmaq_f32(vdupq_n_f32(LMV__ERF_P2), p, t);
    p = vfmaq_f32(vdupq_n_f32(LMV__ERF_P3), p, t);
    p = vfmaq_f32(vdupq_n_f32(LMV__ERF_P4), p, t);
    p = vfmaq_f32(vdupq_n_f32(LMV__ERF_P5), p, t);
    p = vfmaq_f32(vdupq_n_f32(LMV__ERF_P6), p, t);
    q = vfmaq_f32(vdupq_n_f32(LMV__ERF_Q1), vdupq_n_f32(LMV__ERF_Q0), t);
    q = vfmaq_f32(vdupq_n_f32(LMV__ERF_Q2), q, t);
    q = vfmaq_f32(vdupq_n_f32(LMV__ERF_Q3), q, t);
    q = vfmaq_f32(vdupq_n_f32(LMV__ERF_Q4), q, t);
    q = vfmaq_f32(one, q, t);
    e = vdivq_f32(vmulq_f32(u, p), q);
    e = vminq_f32(vmaxq_f32(e, vdupq_n_f32(-1.0f)), one);
    return vmulq_f32(vmulq_f32(vdupq_n_f32(0.5f), x), vaddq_f32(one, e));
}
#endif

static void lmv__activate(float *x, size_t n, lmv__act act) {
    size_t i;
    switch (act) {
    case LMV__ACT_GELU:
        i = 0;
#if defined(LMV__AVX512)
        for (; i < (n & ~(size_t)15); i += 16) _mm512_storeu_ps(x + i, lmv__gelu16(_mm512_loadu_ps(x + i)));
#endif
#if defined(LMV__AVX2)
        for (; i < (n & ~(size_t)7); i += 8) _mm256_storeu_ps(x + i, lmv__gelu8(_mm256_loadu_ps(x + i)));
#elif defined(LMV__NEON)
        for (; i + 4 <= n; i += 4) vst1q_f32(x + i, lmv__gelu4(vld1q_f32(x + i)));
#endif
        for (; i < n; i++) x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
        break;
    case LMV__ACT_GELU_TANH:
        /* 0.5 v (1 + tanh(u)) = v / (1 + e^(-2u)), u = sqrt(2/pi) (v + 0.044715 v^3): through the
           vector exp, the same operations in every lane width (libm's tanhf was a quarter of SigLIP) */
        i = 0;
#if defined(LMV__AVX512)
        for (; i < (n & ~(size_t)15); i += 16) {
            __m512 v = _mm512_loadu_ps(x + i), one = _mm512_set1_ps(1.0f);
            __m512 w = _mm512_mul_ps(v, _mm512_fmadd_ps(_mm512_set1_ps(0.044715f), _mm512_mul_ps(v, v), one));
            __m512 e = lmv__exp16(_mm512_mul_ps(_mm512_set1_ps(-1.5957691216057308f), w));
            _mm512_storeu_ps(x + i, _mm512_div_ps(v, _mm512_add_ps(one, e)));
        }
#endif
#if defined(LMV__AVX2)
        for (; i < (n & ~(size_t)7); i += 8) {
            __m256 v = _mm256_loadu_ps(x + i), one = _mm256_set1_ps(1.0f);
            __m256 w = _mm256_mul_ps(v, _mm256_fmadd_ps(_mm256_set1_ps(0.044715f), _mm256_mul_ps(v, v), one));
            __m256 e = lmv__exp8(_mm256_mul_ps(_mm256_set1_ps(-1.5957691216057308f), w));
            _mm256_storeu_ps(x + i, _mm256_div_ps(v, _mm256_add_ps(one, e)));
        }
#elif defined(LMV__NEON)
        for (; i + 4 <= n; i += 4) {
            float32x4_t v = vld1q_f32(x + i), one = vdupq_n_f32(1.0f);
            float32x4_t w = vmulq_f32(v, vfmaq_f32(one, vdupq_n_f32(0.044715f), vmulq_f32(v, v)));
            float32x4_t e = lmv__exp4(vmulq_f32(vdupq_n_f32(-1.5957691216057308f), w));
            vst1q_f32(x + i, vdivq_f32(v, vaddq_f32(one, e)));
        }
#endif
        for (; i < n; i++) {
            float v = x[i];
            x[i] = 0.5f * v * (1.0f + tanhf(0.79788456080286536f * (v + 0.044715f * v * v * v)));
        }
        break;
    case LMV__ACT_RELU:
        for (i = 0; i < n; i++) x[i] = x[i] > 0.0f ? x[i] : 0.0f;
        break;
    case LMV__ACT_TANH:
        for (i = 0; i < n; i++) x[i] = tanhf(x[i]);
        break;
    case LMV__ACT_SILU: /* v / (1 + e^-v) (SwiGLU's gate), through the vector exp like the tanh GELU */
        i = 0;
#if defined(LMV__AVX512)
        for (; i < (n & ~(size_t)15); i += 16) {
            __m512 v = _mm512_loadu_ps(x + i);
            __m512 e = lmv__exp16(_mm512_sub_ps(_mm512_setzero_ps(), v));
            _mm512_storeu_ps(x + i, _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.0f), e)));
        }
#endif
#if defined(LMV__AVX2)
        for (; i < (n & ~(size_t)7); i += 8) {
            __m256 v = _mm256_loadu_ps(x + i);
            __m256 e = lmv__exp8(_mm256_sub_ps(_mm256_setzero_ps(), v));
            _mm256_storeu_ps(x + i, _mm256_div_ps(v, _mm256_add_ps(_mm256_set1_ps(1.0f), e)));
        }
#elif defined(LMV__NEON)
        for (; i + 4 <= n; i += 4) {
            float32x4_t v = vld1q_f32(x + i);
            vst1q_f32(x + i, vdivq_f32(v, vaddq_f32(vdupq_n_f32(1.0f), lmv__exp4(vnegq_f32(v)))));
        }
#endif
        for (; i < n; i++) x[i] = x[i] / (1.0f + expf(-x[i]));
        break;
    case LMV__ACT_QUICK_GELU: /* v / (1 + e^(-1.702 v)) (CLIP's QuickGELU), as SiLU with the scaled exponent */
        i = 0;
#if defined(LMV__AVX512)
        for (; i < (n & ~(size_t)15); i += 16) {
            __m512 v = _mm512_loadu_ps(x + i);
            __m512 e = lmv__exp16(_mm512_mul_ps(_mm512_set1_ps(-1.702f), v));
            _mm512_storeu_ps(x + i, _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.0f), e)));
        }
#endif
#if defined(LMV__AVX2)
        for (; i < (n & ~(size_t)7); i += 8) {
            __m256 v = _mm256_loadu_ps(x + i);
            __m256 e = lmv__exp8(_mm256_mul_ps(_mm256_set1_ps(-1.702f), v));
            _mm256_storeu_ps(x + i, _mm256_div_ps(v, _mm256_add_ps(_mm256_set1_ps(1.0f), e)));
        }
#elif defined(LMV__NEON)
        for (; i + 4 <= n; i += 4) {
            float32x4_t v = vld1q_f32(x + i);
            float32x4_t e = lmv__exp4(vmulq_f32(vdupq_n_f32(-1.702f), v));
            vst1q_f32(x + i, vdivq_f32(v, vaddq_f32(vdupq_n_f32(1.0f), e)));
        }
#endif
        for (; i < n; i++) x[i] = x[i] / (1.0f + expf(-1.702f * x[i]));
        break;
    case LMV__ACT_NONE: break;
    }
}

/* act() over n values outside a GEMM (LeMeViT's stem and meta-token MLP), in slices per thread. */
static void lmv__activate_all(const lmv__ctx *ctx, float *x, size_t n, lmv__act act) {
    int t, slices = ctx->threads > 1 && (double)n >= LMV__PARALLEL_ELEMS ? 4 * ctx->threads : 1;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(ctx->threads) if (slices > 1)
#endif
    for (t = 0; t < slices; t++) {
        size_t a = n / (size_t)slices * (size_t)t, e = t == slices - 1 ? n : n / (size_t)slices * (size_t)(t + 1);
        lmv__activate(x + a, e - a, act);
    }
}

/* y = a + x, or y = a + g * x per channel when g (layer scale) is given; y may be a. */
/* One row of lmv__residual. (Its own function: Clang does not give the outlined body of an
   OpenMP loop the kernel copy's target, so intrinsics live outside parallel loops.) */
static void lmv__residual_row(float *yr, const float *ar, const float *xr, int dim, const float *g) {
    int i;
#if defined(LMV__AVX512)
    /* (16 lanes with a masked tail: a plain -O2 build does not vectorise these loops itself;
       a multiply then an add, as below, not a fused multiply-add) */
    for (i = 0; i < dim; i += 16) {
        __mmask16 k = dim - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (dim - i)) - 1u);
        __m512 v = _mm512_maskz_loadu_ps(k, xr + i);
        if (g) v = _mm512_maskz_mul_ps(k, _mm512_maskz_loadu_ps(k, g + i), v); /* (masked: never fused with the add) */
        _mm512_mask_storeu_ps(yr + i, k, _mm512_add_ps(_mm512_maskz_loadu_ps(k, ar + i), v));
    }
#else
    if (!g)
        for (i = 0; i < dim; i++) yr[i] = ar[i] + xr[i];
    else
        for (i = 0; i < dim; i++) yr[i] = ar[i] + g[i] * xr[i];
#endif
}

static void lmv__residual(const lmv__ctx *ctx, float *y, const float *a, const float *x, int rows, int dim, const float *g) {
    int r;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, LMV__ROW_CHUNK(ctx, rows)) num_threads(ctx->threads) if (LMV__SPLIT_ROWS(ctx, rows, dim))
#endif
    for (r = 0; r < rows; r++)
        lmv__residual_row(y + (size_t)r * dim, a + (size_t)r * dim, x + (size_t)r * dim, dim, g);
    (void)ctx;
}

/* y += x, or y += g * x per channel. */
static void lmv__add_scaled(const lmv__ctx *ctx, float *y, const float *x, int rows, int dim, const float *g) {
    lmv__residual(ctx, y, y, x, rows, dim, g);
}

/* x += g * (h W^T + b): a residual branch that ends in a Linear (attention's projection, an
   MLP's second layer) added into its stream. Without a layer scale g the GEMM accumulates into x
   as it makes the sums, with no output buffer and no second pass; with one, through `tmp`. */
static void lmv__linear_residual(const lmv__ctx *ctx, float *x, const float *h, int rows, int in, int out, lmv__mat W,
                                 const float *b, const float *g, float *tmp) {
    if (!g) {
        lmv__gemm_act(ctx, rows, out, in, h, (size_t)in, W, (size_t)in, 1, b, x, (size_t)out, LMV__ACT_NONE, 1);
        return;
    }
    lmv__linear(ctx, tmp, h, rows, in, out, W, b);
    lmv__add_scaled(ctx, x, tmp, rows, out, g);
}

/* In place, for each of `rows` rows of n floats: x = softmax(x * scale + b1 + b2), b1 and b2
   optional [rows][n] (attention's bias and mask), max-subtracted like PyTorch. A row's max, sum
   and scaling are short dependent chains, so each pass runs over a block of rows before the next
   starts and the rows' chains overlap. */
#define LMV__SOFTMAX_BLOCK 64
static void lmv__softmax_rows(float *x, int rows, int n, float scale, const float *b1, const float *b2) {
    int i, r;
#if defined(LMV__AVX512)
    {
        /* 16 lanes; the last n % 16 elements of a row through masked loads and stores, which
           AVX-512 runs at full speed (any n, the rows of 1 to 15 included). */
        int nv = n & ~15, r0, r1;
        __mmask16 tail = (__mmask16)((1u << (n & 15)) - 1u);
        __m512 vs = _mm512_set1_ps(scale), v, m16, s16;
        float f[LMV__SOFTMAX_BLOCK];
        for (r0 = 0; r0 < rows; r0 = r1) {
            r1 = rows - r0 < LMV__SOFTMAX_BLOCK ? rows : r0 + LMV__SOFTMAX_BLOCK;
            for (r = r0; r < r1; r++) { /* x = x * scale + b1 + b2, and its max */
                float *xr = x + (size_t)r * n;
                const float *c1 = b1 ? b1 + (size_t)r * n : NULL, *c2 = b2 ? b2 + (size_t)r * n : NULL;
                m16 = _mm512_set1_ps(-FLT_MAX);
                for (i = 0; i < nv; i += 16) {
                    v = _mm512_mul_ps(_mm512_loadu_ps(xr + i), vs);
                    if (c1) v = _mm512_add_ps(v, _mm512_loadu_ps(c1 + i));
                    if (c2) v = _mm512_add_ps(v, _mm512_loadu_ps(c2 + i));
                    _mm512_storeu_ps(xr + i, v);
                    m16 = _mm512_maskz_max_ps((__mmask16)0xffff, m16, v);
                }
                if (tail) {
                    v = _mm512_mul_ps(_mm512_maskz_loadu_ps(tail, xr + i), vs);
                    if (c1) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(tail, c1 + i));
                    if (c2) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(tail, c2 + i));
                    _mm512_mask_storeu_ps(xr + i, tail, v);
                    m16 = _mm512_mask_max_ps(m16, tail, m16, v);
                }
                f[r - r0] = lmv__hmax16(m16);
            }
            for (r = r0; r < r1; r++) { /* x = exp(x - max), and 1 / its sum */
                float *xr = x + (size_t)r * n;
                m16 = _mm512_set1_ps(f[r - r0]);
                s16 = _mm512_setzero_ps();
                for (i = 0; i < nv; i += 16) {
                    v = lmv__exp16(_mm512_sub_ps(_mm512_loadu_ps(xr + i), m16));
                    _mm512_storeu_ps(xr + i, v);
                    s16 = _mm512_add_ps(s16, v);
                }
                if (tail) {
                    v = lmv__exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, xr + i), m16));
                    _mm512_mask_storeu_ps(xr + i, tail, v);
                    s16 = _mm512_mask_add_ps(s16, tail, s16, v);
                }
                f[r - r0] = 1.0f / lmv__hsum16(s16);
            }
            for (r = r0; r < r1; r++) {
                float *xr = x + (size_t)r * n;
                v = _mm512_set1_ps(f[r - r0]);
                for (i = 0; i < nv; i += 16) _mm512_storeu_ps(xr + i, _mm512_mul_ps(_mm512_loadu_ps(xr + i), v));
                if (tail) _mm512_mask_storeu_ps(xr + i, tail, _mm512_mul_ps(_mm512_maskz_loadu_ps(tail, xr + i), v));
            }
        }
        return;
    }
#endif
#if defined(LMV__AVX2)
    if (n >= 8) {
        /* The last n % 8 elements of a row are the top lanes (mask `hi`) of `w`, the 8 that end
           the row at t: each pass reads w before the full vectors and writes it after them. Its
           low lanes are elements the full vectors cover, computed the same way, so writing them
           again changes nothing. (Masked loads and stores cost 10+ cycles each on some CPUs, and
           a 49-wide row, Swin's windows, has one element left over.) */
        static const int32_t ones[16] = {0, 0, 0, 0, 0, 0, 0, 0, -1, -1, -1, -1, -1, -1, -1, -1};
        int nv = n & ~7, t = n - 8, r0, r1;
        __m256 hi = _mm256_loadu_ps((const float *)(const void *)(ones + (n & 7))), vs = _mm256_set1_ps(scale), v, w, m8, s8;
        float f[LMV__SOFTMAX_BLOCK];
        for (r0 = 0; r0 < rows; r0 = r1) {
            r1 = rows - r0 < LMV__SOFTMAX_BLOCK ? rows : r0 + LMV__SOFTMAX_BLOCK;
            for (r = r0; r < r1; r++) { /* x = x * scale + b1 + b2, and its max */
                float *xr = x + (size_t)r * n;
                const float *c1 = b1 ? b1 + (size_t)r * n : NULL, *c2 = b2 ? b2 + (size_t)r * n : NULL;
                m8 = w = _mm256_set1_ps(-FLT_MAX);
                if (nv < n) { /* (w's low lanes are elements of the row too: the max may see them) */
                    m8 = w = _mm256_mul_ps(_mm256_loadu_ps(xr + t), vs);
                    if (c1) m8 = w = _mm256_add_ps(w, _mm256_loadu_ps(c1 + t));
                    if (c2) m8 = w = _mm256_add_ps(w, _mm256_loadu_ps(c2 + t));
                }
                for (i = 0; i < nv; i += 8) {
                    v = _mm256_mul_ps(_mm256_loadu_ps(xr + i), vs);
                    if (c1) v = _mm256_add_ps(v, _mm256_loadu_ps(c1 + i));
                    if (c2) v = _mm256_add_ps(v, _mm256_loadu_ps(c2 + i));
                    _mm256_storeu_ps(xr + i, v);
                    m8 = _mm256_max_ps(m8, v);
                }
                if (nv < n) _mm256_storeu_ps(xr + t, w);
                f[r - r0] = lmv__hmax8(m8);
            }
            for (r = r0; r < r1; r++) { /* x = exp(x - max), and 1 / its sum */
                float *xr = x + (size_t)r * n;
                m8 = _mm256_set1_ps(f[r - r0]);
                s8 = w = _mm256_setzero_ps();
                if (nv < n) w = lmv__exp8(_mm256_sub_ps(_mm256_loadu_ps(xr + t), m8)), s8 = _mm256_and_ps(w, hi);
                for (i = 0; i < nv; i += 8) {
                    v = lmv__exp8(_mm256_sub_ps(_mm256_loadu_ps(xr + i), m8));
                    _mm256_storeu_ps(xr + i, v);
                    s8 = _mm256_add_ps(s8, v);
                }
                if (nv < n) _mm256_storeu_ps(xr + t, w);
                f[r - r0] = 1.0f / lmv__hsum8(s8);
            }
            for (r = r0; r < r1; r++) {
                float *xr = x + (size_t)r * n;
                v = _mm256_set1_ps(f[r - r0]);
                w = nv < n ? _mm256_mul_ps(_mm256_loadu_ps(xr + t), v) : v;
                for (i = 0; i < nv; i += 8) _mm256_storeu_ps(xr + i, _mm256_mul_ps(_mm256_loadu_ps(xr + i), v));
                if (nv < n) _mm256_storeu_ps(xr + t, w);
            }
        }
        return;
    }
#endif
    for (r = 0; r < rows; r++, x += n) {
        float mx = -FLT_MAX, sum = 0.0f, inv;
        /* (one loop per case: see lmv__bias_or_zero) */
        if (b1 && b2)
            for (i = 0; i < n; i++) x[i] = x[i] * scale + b1[(size_t)r * n + i] + b2[(size_t)r * n + i];
        else if (b1 || b2) {
            const float *b = (b1 ? b1 : b2) + (size_t)r * n;
            for (i = 0; i < n; i++) x[i] = x[i] * scale + b[i];
        } else
            for (i = 0; i < n; i++) x[i] *= scale;
        i = 0;
#if defined(LMV__NEON)
        if (n >= 4) {
            float32x4_t m4 = vld1q_f32(x);
            for (i = 4; i + 4 <= n; i += 4) m4 = vmaxq_f32(m4, vld1q_f32(x + i));
            mx = vmaxvq_f32(m4);
        }
#endif
        for (; i < n; i++) mx = x[i] > mx ? x[i] : mx;
        i = 0;
#if defined(LMV__NEON)
        {
            float32x4_t m4 = vdupq_n_f32(mx), s4 = vdupq_n_f32(0.0f);
            for (; i + 4 <= n; i += 4) {
                float32x4_t e = lmv__exp4(vsubq_f32(vld1q_f32(x + i), m4));
                vst1q_f32(x + i, e);
                s4 = vaddq_f32(s4, e);
            }
            sum = vaddvq_f32(s4);
        }
#endif
        for (; i < n; i++) {
            x[i] = expf(x[i] - mx);
            sum += x[i];
        }
        inv = 1.0f / sum;
        for (i = 0; i < n; i++) x[i] *= inv;
    }
}

/* im2col for a Conv2d: one row per output pixel (row-major oy, ox) holding the receptive field in
   (c, ky, kx) order, zeros where it hangs over the padding, so the convolution becomes one GEMM
   with the weight viewed as [out][C*kh*kw]. The input element (y, x, c) is at
   in[y*sy + x*sx + c*sc], which covers both CHW images (sy = W, sx = 1, sc = H*W) and token-major
   HWC maps (sy = W*C, sx = C, sc = 1). */
static void lmv__im2col_rows(float *rows, const float *in, int H, int W, int C, size_t sy, size_t sx, size_t sc, int kh,
                             int kw, int stride_h, int stride_w, int pad, int OW, int p0, int p1) {
    int p, c, ky, kx, oy = p0 / OW, ox = p0 % OW;
    size_t kk = (size_t)kh * kw;
    for (p = p0; p < p1; p++, ox = ox + 1 < OW ? ox + 1 : 0, oy += ox == 0) { /* pixel p = (oy, ox): row p - p0 */
        float *dst = rows + (size_t)(p - p0) * C * kk;
        for (ky = 0; ky < kh; ky++) /* tap by tap: one bounds test per tap, not per element */
            for (kx = 0; kx < kw; kx++) {
                int y = oy * stride_h - pad + ky, x = ox * stride_w - pad + kx;
                float *d = dst + (size_t)ky * kw + kx;
                if (y < 0 || y >= H || x < 0 || x >= W)
                    for (c = 0; c < C; c++) d[(size_t)c * kk] = 0.0f;
                else {
                    const float *src = in + (size_t)y * sy + (size_t)x * sx;
                    for (c = 0; c < C; c++) d[(size_t)c * kk] = src[(size_t)c * sc];
                }
            }
    }
}

static void lmv__im2col(const lmv__ctx *ctx, float *rows, const float *in, int H, int W, int C, size_t sy, size_t sx,
                        size_t sc, int kh, int kw, int stride_h, int stride_w, int pad, int OH, int OW) {
    int oy;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, LMV__ROW_CHUNK(ctx, OH)) num_threads(ctx->threads) if (LMV__SPLIT_ROWS(ctx, OH, (double)OW * C * kh * kw))
#endif
    for (oy = 0; oy < OH; oy++)
        lmv__im2col_rows(rows + (size_t)oy * OW * C * kh * kw, in, H, W, C, sy, sx, sc, kh, kw, stride_h, stride_w, pad, OW,
                         oy * OW, (oy + 1) * OW);
    (void)ctx;
}

/* Output side of a convolution, as PyTorch computes it. */
#ifndef LMV__KPASS
static int lmv__conv_out(int in, int k, int stride, int pad) { return (in + 2 * pad - k) / stride + 1; }

/* A large convolution's im2col rows are made and multiplied a block at a time, each block small
   enough (about LMV__CONV_BLOCK floats) to stay in cache from one to the other; the blocks are the
   threads' tasks. Each block reads all the weights again, so this is only for blocks of at least
   2 x Cout rows, and at least 2 blocks per thread; other convolutions are done whole, their GEMM
   split by columns too. (LeMeViT-tiny's stem at 224x224: 0.1-0.15 ms less of 45 and 23 ms, and
   0.5 MB of scratch instead of 3.6.) */
#define LMV__CONV_BLOCK 65536

static int lmv__conv_rows(int K) {
    int rows = LMV__CONV_BLOCK / K / LMV__MR * LMV__MR;
    return rows > LMV__MR ? rows : LMV__MR;
}

static int lmv__conv_blocked(int threads, size_t P, int K, int Cout) {
    size_t rows = (size_t)lmv__conv_rows(K);
    return rows >= 2 * (size_t)Cout && (P + rows - 1) / rows >= 2 * (size_t)threads;
}

/* Floats of `cols` scratch lmv__conv2d needs on up to `threads` threads for P output pixels of K
   inputs each and Cout outputs. */
static size_t lmv__conv_scratch(int threads, size_t P, int K, int Cout) {
    return lmv__conv_blocked(threads, P, K, Cout) ? (size_t)threads * lmv__conv_rows(K) * K : P * K;
}
#endif


/* Conv2d (groups = 1) on a token-major map: out[OH*OW][Cout] from in (see lmv__im2col for the
   strides; out must not overlap in), through lmv__conv_scratch() floats of `cols`. */
static void lmv__conv2d(const lmv__ctx *ctx, float *out, const float *in, int H, int W, int Cin, size_t sy, size_t sx,
                        size_t sc, lmv__mat weight, const float *bias, int Cout, int k, int stride, int pad,
                        float *cols) {
    int OH = lmv__conv_out(H, k, stride, pad), OW = lmv__conv_out(W, k, stride, pad), P = OH * OW, K = Cin * k * k;
    int rows = lmv__conv_rows(K), blocks = (P + rows - 1) / rows, blk;
    lmv__ctx one = lmv__one_thread(ctx, NULL);
    if (!lmv__conv_blocked(ctx->threads, (size_t)P, K, Cout)) {
        lmv__im2col(ctx, cols, in, H, W, Cin, sy, sx, sc, k, k, stride, stride, pad, OH, OW);
        lmv__linear(ctx, out, cols, P, K, Cout, weight, bias);
        return;
    }
    if (ctx->macs) *ctx->macs += (double)P * Cout * K;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(ctx->threads) if (ctx->threads > 1)
#endif
    for (blk = 0; blk < blocks; blk++) {
#ifdef _OPENMP
        float *a = cols + (size_t)omp_get_thread_num() * rows * K;
#else
        float *a = cols;
#endif
        int p0 = blk * rows, p1 = p0 + rows < P ? p0 + rows : P;
        lmv__im2col_rows(a, in, H, W, Cin, sy, sx, sc, k, k, stride, stride, pad, OW, p0, p1);
        lmv__linear(&one, out + (size_t)p0 * Cout, a, p1 - p0, K, Cout, weight, bias);
    }
}

/* Depthwise 3x3 convolution, padding 1, on a token-major [H*W][C] map: y = conv(x) (+ bias).
   w is PyTorch's [C][1][3][3]; it is first laid out tap-major in `wt` (9*C floats of scratch) so
   the inner loop runs over contiguous channels. y must not alias x. */
/* One output pixel of lmv__dwconv3x3: d[C] = b + sum over the n taps of wk[t] * s[t]. (A function
   of its own: Clang compiles an OpenMP loop's body without its function's target attribute.) */
static void lmv__dwconv_pixel(float *d, const float *const *s, const float *const *wk, int n, int C, const float *b) {
    int c = 0, t;
    lmv__bias_or_zero(d, b, C);
#if defined(LMV__AVX512)
    for (; c + 16 <= C; c += 16) { /* 16 channels summed over the taps in a register */
        __m512 acc = _mm512_loadu_ps(d + c);
        for (t = 0; t < n; t++) acc = _mm512_fmadd_ps(_mm512_loadu_ps(wk[t] + c), _mm512_loadu_ps(s[t] + c), acc);
        _mm512_storeu_ps(d + c, acc);
    }
#endif
#if defined(LMV__AVX2)
    for (; c + 8 <= C; c += 8) { /* 8 channels summed over the taps in a register */
        __m256 acc = _mm256_loadu_ps(d + c);
        for (t = 0; t < n; t++) acc = _mm256_fmadd_ps(_mm256_loadu_ps(wk[t] + c), _mm256_loadu_ps(s[t] + c), acc);
        _mm256_storeu_ps(d + c, acc);
    }
#endif
    for (t = 0; t < n; t++) {
        int j;
        for (j = c; j < C; j++) d[j] += wk[t][j] * s[t][j];
    }
}

static void lmv__dwconv3x3(const lmv__ctx *ctx, float *y, const float *x, int H, int W, int C, const float *w, const float *b,
                           float *wt) {
    int oy, ox, c, ky, kx, t;
    for (t = 0; t < 9; t++)
        for (c = 0; c < C; c++) wt[t * C + c] = w[c * 9 + t];
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, LMV__ROW_CHUNK(ctx, H)) private(ox, c, ky, kx, t) num_threads(ctx->threads) if (LMV__SPLIT_ROWS(ctx, H, W * C))
#endif
    for (oy = 0; oy < H; oy++)
        for (ox = 0; ox < W; ox++) {
            float *d = y + ((size_t)oy * W + ox) * C;
            const float *s[9], *wk[9];
            int n = 0;
            for (ky = 0; ky < 3; ky++) /* the taps inside the map, in (ky, kx) order */
                for (kx = 0; kx < 3; kx++) {
                    int iy = oy + ky - 1, ix = ox + kx - 1;
                    if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                    s[n] = x + ((size_t)iy * W + ix) * C;
                    wk[n++] = wt + (ky * 3 + kx) * C;
                }
            lmv__dwconv_pixel(d, s, wk, n, C, b);
        }
    (void)ctx;
}

/* One row of lmv__batchnorm: y = x * alpha + beta (own function: see lmv__residual_row). */
static void lmv__batchnorm_row(float *yr, const float *xr, const float *alpha, const float *beta, int C) {
    int c;
#if defined(LMV__AVX512)
    for (c = 0; c < C; c += 16) { /* (as in lmv__residual_row) */
        __mmask16 k = C - c >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (C - c)) - 1u);
        __m512 v = _mm512_maskz_mul_ps(k, _mm512_maskz_loadu_ps(k, xr + c), _mm512_maskz_loadu_ps(k, alpha + c));
        _mm512_mask_storeu_ps(yr + c, k, _mm512_add_ps(v, _mm512_maskz_loadu_ps(k, beta + c)));
    }
#else
    for (c = 0; c < C; c++) yr[c] = xr[c] * alpha[c] + beta[c];
#endif
}

/* Eval-mode BatchNorm over the channel (last) dimension of a token-major map (y may be x), the
   way PyTorch's CPU kernel does it: y = x * (w / sqrt(var + eps)) + (b - mean * w / sqrt(var + eps)).
   `ab` is 2*C floats of scratch for the per-channel factors. */
static void lmv__batchnorm(const lmv__ctx *ctx, float *y, const float *x, int rows, int C, const float *w, const float *b,
                           const float *mean, const float *var, float eps, float *ab) {
    int r, c;
    float *alpha = ab, *beta = ab + C;
    for (c = 0; c < C; c++) {
        float inv = 1.0f / sqrtf(var[c] + eps);
        alpha[c] = (w ? w[c] : 1.0f) * inv;
        beta[c] = (b ? b[c] : 0.0f) - mean[c] * alpha[c];
    }
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, LMV__ROW_CHUNK(ctx, rows)) private(c) num_threads(ctx->threads) if (LMV__SPLIT_ROWS(ctx, rows, C))
#endif
    for (r = 0; r < rows; r++) lmv__batchnorm_row(y + (size_t)r * C, x + (size_t)r * C, alpha, beta, C);
    (void)ctx;
}

#ifndef LMV__KPASS
/* mean over rows: out[C] = mean_r x[r][C] */
static void lmv__mean_rows(float *out, const float *x, int rows, int C) {
    int r, c;
    for (c = 0; c < C; c++) out[c] = 0.0f;
    for (r = 0; r < rows; r++)
        for (c = 0; c < C; c++) out[c] += x[(size_t)r * C + c];
    for (c = 0; c < C; c++) out[c] /= (float)rows;
}

/* Interpolation weights: w[j] for input index j (0..in-1) contributing to output index i, for the
   resampling modes PyTorch's F.interpolate uses on position embeddings. */
typedef enum lmv__resample {
    LMV__RS_BICUBIC = 0, /* bicubic, a = -0.75, align_corners = False, border replicate */
    LMV__RS_BICUBIC_AA,  /* bicubic antialias=True: PIL-style a = -0.5, support scaled, renormalised */
    LMV__RS_BICUBIC_AC,  /* bicubic, align_corners = True */
    LMV__RS_BILINEAR,    /* bilinear, align_corners = False */
    LMV__RS_BICUBIC_DINOV2 /* bicubic as LMV__RS_BICUBIC, but by the scale factor (out + 0.1) / in that
                              DINOv2's interpolate_pos_encoding passes (interpolate_offset 0.1) */
} lmv__resample;

static double lmv__cubic(double x, double a) {
    x = fabs(x);
    if (x <= 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
    if (x < 2.0) return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a;
    return 0.0;
}

static void lmv__resample_weights(lmv__resample mode, int in, int out, int i, float *w) {
    int j;
    for (j = 0; j < in; j++) w[j] = 0.0f;
    if (mode == LMV__RS_BICUBIC_AA) {
        double scale = (double)in / out, support = 2.0 * (scale > 1.0 ? scale : 1.0);
        double inv = scale > 1.0 ? 1.0 / scale : 1.0, center = scale * (i + 0.5), total = 0.0;
        int lo = (int)(center - support + 0.5), hi = (int)(center + support + 0.5);
        if (lo < 0) lo = 0;
        if (hi > in) hi = in;
        for (j = lo; j < hi; j++) total += lmv__cubic((j - center + 0.5) * inv, -0.5);
        for (j = lo; j < hi; j++) w[j] = (float)(total != 0.0 ? lmv__cubic((j - center + 0.5) * inv, -0.5) / total : 0.0);
    } else if (mode == LMV__RS_BILINEAR) {
        float scale = (float)in / (float)out, real = scale * (i + 0.5f) - 0.5f, l;
        int i0, i1;
        if (real < 0.0f) real = 0.0f;
        i0 = (int)real;
        i1 = i0 + 1 < in ? i0 + 1 : in - 1;
        l = real - (float)i0;
        w[i0] += 1.0f - l;
        w[i1] += l;
    } else {
        float scale, real, t;
        int f, k;
        float coeff[4];
        if (mode == LMV__RS_BICUBIC_AC) {
            scale = out > 1 ? (float)(in - 1) / (float)(out - 1) : 0.0f;
            real = scale * (float)i;
        } else if (mode == LMV__RS_BICUBIC_DINOV2) {
            scale = (float)(1.0 / (((double)out + 0.1) / (double)in)); /* PyTorch: 1 / the given scale factor */
            real = scale * (i + 0.5f) - 0.5f;
        } else {
            scale = (float)in / (float)out;
            real = scale * (i + 0.5f) - 0.5f;
        }
        f = (int)floorf(real);
        t = real - (float)f;
        coeff[0] = (float)lmv__cubic(t + 1.0, -0.75);
        coeff[1] = (float)lmv__cubic(t, -0.75);
        coeff[2] = (float)lmv__cubic(1.0 - t, -0.75);
        coeff[3] = (float)lmv__cubic(2.0 - t, -0.75);
        for (k = 0; k < 4; k++) {
            int idx = f - 1 + k;
            idx = idx < 0 ? 0 : idx > in - 1 ? in - 1 : idx;
            w[idx] += coeff[k];
        }
    }
}

/* Resample a token-major grid [ih*iw][C] to [oh*ow][C], separably (width, then height).
   tmp holds ih*ow*C floats, wbuf max(ih, iw) floats. */
static void lmv__resample_grid(lmv__resample mode, float *out, const float *in, int ih, int iw, int oh, int ow, int C,
                               float *tmp, float *wbuf) {
    int y, x, j, c;
    for (x = 0; x < ow; x++) {
        lmv__resample_weights(mode, iw, ow, x, wbuf);
        for (y = 0; y < ih; y++) {
            float *d = tmp + ((size_t)y * ow + x) * C;
            for (c = 0; c < C; c++) d[c] = 0.0f;
            for (j = 0; j < iw; j++)
                if (wbuf[j] != 0.0f) {
                    const float *s = in + ((size_t)y * iw + j) * C;
                    for (c = 0; c < C; c++) d[c] += wbuf[j] * s[c];
                }
        }
    }
    for (y = 0; y < oh; y++) {
        lmv__resample_weights(mode, ih, oh, y, wbuf);
        for (x = 0; x < ow; x++) {
            float *d = out + ((size_t)y * ow + x) * C;
            for (c = 0; c < C; c++) d[c] = 0.0f;
            for (j = 0; j < ih; j++)
                if (wbuf[j] != 0.0f) {
                    const float *s = tmp + ((size_t)j * ow + x) * C;
                    for (c = 0; c < C; c++) d[c] += wbuf[j] * s[c];
                }
        }
    }
}
#endif

/* --------------------------------------------------------------------------------------------
   Attention. One kernel serves ViT self-attention, Swin window attention (bias + shift mask) and
   LeMeViT's cross and dual-cross attention (queries and keys from different token sets, any scale).
   -------------------------------------------------------------------------------------------- */

#ifndef LMV__KPASS
typedef struct lmv__attn_args {
    int groups;                /* independent problems (e.g. windows), laid out at the strides below */
    int heads, head_dim;
    int nq, nk;                /* queries and keys per group */
    const float *q, *k, *v;    /* head h of row i of group g at q + g*gstride_q + i*ldq + h*head_dim */
    size_t ldq, ldk, ldv, ldo;
    size_t gstride_q, gstride_k, gstride_v, gstride_o;
    float *out;
    float scale;
    const float *bias;         /* optional [heads][nq][nk], added after scaling (Swin relative position) */
    const float *mask;         /* optional [n_masks][nq][nk], group g uses mask g % n_masks (Swin shift) */
    int n_masks;
    float *scores;             /* scratch: threads * nq * nk floats */
    float *probs;              /* optional: the softmax probabilities, [groups][heads][nq][nk] */
} lmv__attn_args;
#endif


/* out = softmax(q k^T * scale + bias + mask) v, per group and head; one score block per thread. */
static void lmv__attention(const lmv__ctx *ctx, const lmv__attn_args *a) {
    int total = a->groups * a->heads, t;
    lmv__ctx one = lmv__one_thread(ctx, NULL);
    if (ctx->macs) *ctx->macs += (double)a->groups * a->heads * a->nq * a->nk * a->head_dim * 2.0;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(ctx->threads) \
    if (ctx->threads > 1 && total > 1 && (double)total * a->nq * a->nk * a->head_dim * 2.0 >= LMV__PARALLEL_MIN)
#endif
    for (t = 0; t < total; t++) {
        int g = t / a->heads, h = t % a->heads;
#ifdef _OPENMP
        float *s = a->scores + (size_t)omp_get_thread_num() * a->nq * a->nk;
#else
        float *s = a->scores;
#endif
        const float *q = a->q + g * a->gstride_q + (size_t)h * a->head_dim;
        const float *k = a->k + g * a->gstride_k + (size_t)h * a->head_dim;
        const float *v = a->v + g * a->gstride_v + (size_t)h * a->head_dim;
        float *o = a->out + g * a->gstride_o + (size_t)h * a->head_dim;
        const float *bias = a->bias ? a->bias + (size_t)h * a->nq * a->nk : NULL;
        const float *mask = a->mask ? a->mask + (size_t)(g % a->n_masks) * a->nq * a->nk : NULL;
        lmv__gemm(&one, a->nq, a->nk, a->head_dim, q, a->ldq, lmv__f32(k), a->ldk, 1, NULL, s, (size_t)a->nk);
        lmv__softmax_rows(s, a->nq, a->nk, a->scale, bias, mask);
        if (a->probs) memcpy(a->probs + (size_t)t * a->nq * a->nk, s, sizeof(float) * (size_t)a->nq * a->nk);
        lmv__gemm(&one, a->nq, a->head_dim, a->nk, s, (size_t)a->nk, lmv__f32(v), a->ldv, 0, NULL, o, a->ldo);
    }
    (void)ctx;
}

#if defined(LMV__KPASS)
#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif
#endif

#ifndef LMV__KPASS
#if defined(LMV__X86) /* the AVX2 and AVX-512 copies of the kernel section above */
#undef LMV__KSUF
#define LMV__KSUF avx2
#define LMV__KPASS 2
#include LEMEVIT_SELF
#undef LMV__KPASS
#undef LMV__KSUF
#define LMV__KSUF avx512
#define LMV__KPASS 3
#include LEMEVIT_SELF
#undef LMV__KPASS
#undef LMV__AVX2
#undef LMV__F16C
#undef LMV__AVX512
#endif
#undef LMV__KSUF
#undef lmv__activate
#undef lmv__activate_all
#undef lmv__add_bias
#undef lmv__add_scaled
#undef lmv__attention
#undef lmv__batchnorm
#undef lmv__batchnorm_row
#undef lmv__bias_or_zero
#undef lmv__conv2d
#undef lmv__dot
#undef lmv__dwconv3x3
#undef lmv__dwconv_pixel
#undef lmv__exp16
#undef lmv__exp4
#undef lmv__exp8
#undef lmv__gelu16
#undef lmv__gelu4
#undef lmv__gelu8
#undef lmv__gemm
#undef lmv__gemm_act
#undef lmv__gemm_narrow
#undef lmv__gemm_own_rows
#undef lmv__gemm_q8
#undef lmv__gemm_task
#undef lmv__hmax16
#undef lmv__hmax8
#undef lmv__hsum16
#undef lmv__hsum8
#undef lmv__im2col
#undef lmv__im2col_rows
#undef lmv__layernorm
#undef lmv__layernorm_row
#undef lmv__linear
#undef lmv__linear_act
#undef lmv__linear_residual
#undef lmv__pack
#undef lmv__pack_q8
#undef lmv__pack_rows
#undef lmv__quantize_rows
#undef lmv__residual
#undef lmv__residual_row
#undef lmv__rmsnorm
#undef lmv__rmsnorm_row
#undef lmv__softmax_rows
#undef lmv__tile
#undef lmv__tile_c
#undef lmv__tile_q8
#undef lmv__tile_q8_out
#undef lmv__tile_q8_vnni
#undef lmv__tile_rows
#undef lmv__tile_z
#undef lmv__transpose8
#undef lmv__weight4
#undef lmv__weight8

/* Kernel paths: what the CPU has, and each kernel's entry point calling the session's copy. */
static lmv_simd lmv__simd_detect(void) {
#if defined(LMV__X86)
    /* CPUID leaves 1 and 7 and XCR0 (what the OS saves on a thread switch), read directly: no
       runtime library's CPU model, so firmware-style builds link nothing more */
    unsigned r1[4] = {0, 0, 0, 0}, r7[4] = {0, 0, 0, 0}, max = 0;
    unsigned long long xcr0 = 0;
#if defined(_MSC_VER) && !defined(__clang__)
    int r[4];
    __cpuid(r, 0);
    max = (unsigned)r[0];
    if (max >= 7) {
        int k;
        __cpuid(r, 1);
        for (k = 0; k < 4; k++) r1[k] = (unsigned)r[k];
        __cpuidex(r, 7, 0);
        for (k = 0; k < 4; k++) r7[k] = (unsigned)r[k];
        if (r1[2] & (1u << 27)) xcr0 = _xgetbv(0);
    }
#else
    unsigned a, b, c, d, lo, hi;
    __cpuid(0, a, b, c, d);
    max = a;
    if (max >= 7) {
        __cpuid(1, r1[0], r1[1], r1[2], r1[3]);
        __cpuid_count(7, 0, r7[0], r7[1], r7[2], r7[3]);
        if (r1[2] & (1u << 27)) { /* OSXSAVE: xgetbv is there */
            __asm__ __volatile__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
            xcr0 = ((unsigned long long)hi << 32) | lo;
        }
    }
    (void)b, (void)c, (void)d;
#endif
    /* leaf 1 ecx: FMA 12, AVX 28, F16C 29; leaf 7 ebx: AVX2 5, AVX512F 16, DQ 17, BW 30, VL 31;
       ecx: VNNI 11. XCR0: xmm+ymm state 0x6; opmask+zmm state 0xe0. AVX-512 without VNNI
       (Skylake-SP/X) runs the 512-bit kernels with an int8 tile of its own. */
    if (max < 7 || (xcr0 & 0x6) != 0x6 || !(r1[2] & (1u << 12)) || !(r1[2] & (1u << 28)) || !(r1[2] & (1u << 29)) ||
        !(r7[1] & (1u << 5)))
        return LMV_SIMD_PORTABLE;
    if ((xcr0 & 0xe6) == 0xe6 && (r7[1] & (1u << 16)) && (r7[1] & (1u << 17)) && (r7[1] & (1u << 30)) &&
        (r7[1] & (1u << 31)))
        return (r7[2] & (1u << 11)) ? LMV_SIMD_AVX512 : LMV_SIMD_AVX512_NOVNNI;
    return LMV_SIMD_AVX2;
#elif defined(LMV__NEON)
    return LMV_SIMD_NEON;
#else
    return LMV_SIMD_PORTABLE;
#endif
}

/* The copy a context runs: its own, or (zero-filled contexts) the best. */
static int lmv__simd_of(const lmv__ctx *ctx) { return ctx && ctx->simd ? ctx->simd : (int)lmv__simd_detect(); }

#if defined(LMV__X86)
#define LMV__DISPATCH(simd, f, args)                                                                         \
    do {                                                                                                     \
        int s_ = (simd);                                                                                     \
        if (s_ == LMV_SIMD_AVX512 || s_ == LMV_SIMD_AVX512_NOVNNI) f##_avx512 args;                          \
        else if (s_ == LMV_SIMD_AVX2) f##_avx2 args;                                                         \
        else f##_portable args;                                                                              \
    } while (0)
#else
#define LMV__DISPATCH(simd, f, args)                                                                         \
    do {                                                                                                     \
        (void)(simd);                                                                                        \
        f##_portable args;                                                                                   \
    } while (0)
#endif

/* The kernels' entry points (the graphs call these; each runs the context's copy). */
static void lmv__activate_all(const lmv__ctx *ctx, float *x, size_t n, lmv__act act) {
    LMV__DISPATCH(lmv__simd_of(ctx), lmv__activate_all, (ctx, x, n, act));
}
static void lmv__add_scaled(const lmv__ctx *ctx, float *y, const float *x, int rows, int dim, const float *g) {
    LMV__DISPATCH(lmv__simd_of(ctx), lmv__add_scaled, (ctx, y, x, rows, dim, g));
}
static void lmv__attention(const lmv__ctx *ctx, const lmv__attn_args *a) {
    LMV__DISPATCH(lmv__simd_of(ctx), lmv__attention, (ctx, a));
}
static void lmv__batchnorm(const lmv__ctx *ctx, float *y, const float *x, int rows, int C, const float *w,
                           const float *b, const float *mean, const float *var, float eps, float *ab) {
    LMV__DISPATCH(lmv__simd_of(ctx), lmv__batchnorm, (ctx, y, x, rows, C, w, b, mean, var, eps, ab));
}
static void lmv__conv2d(const lmv__ctx *ctx, float *out, const float *in, int H, int W, int Cin, size_t sy, size_t sx,
                        size_t sc, lmv__mat weight, const float *bias, int Cout, int k, int stride, int pad,
                        float *cols) {
    LMV__DISPATCH(lmv__simd_of(ctx), lmv__conv2d, (ctx, out, in, H, W, Cin, sy, sx, sc, weight, bias, Cout, k, stride, pad, cols));
}
static void lmv__dwconv3x3(const lmv__ctx *ctx, float *y, const float *x, int H, int W, int C, const float *w,
                           const float *b, float *wt) {
    LMV__DISPATCH(lmv__simd_of(ctx), lmv__dwconv3x3, (ctx, y, x, H, W, C, w, b, wt));
}
static void lmv__gemm_act(const lmv__ctx *ctx, int M, int N, int K, const float *A, size_t lda, lmv__mat B, size_t ldb,
                          int trans_b, const float *bias, float *C, size_t ldc, lmv__act act, int accumulate) {
    LMV__DISPATCH(lmv__simd_of(ctx), lmv__gemm_act, (ctx, M, N, K, A, lda, B, ldb, trans_b, bias, C, ldc, act, accumulate));
}
#if defined(__GNUC__) || defined(__clang__)
__attribute__((unused)) /* (the graphs call lmv__gemm_act; the tools and tests this) */
#endif
static void lmv__gemm(const lmv__ctx *ctx, int M, int N, int K, const float *A, size_t lda, lmv__mat B, size_t ldb,
                      int trans_b, const float *bias, float *C, size_t ldc) {
    lmv__gemm_act(ctx, M, N, K, A, lda, B, ldb, trans_b, bias, C, ldc, LMV__ACT_NONE, 0);
}
static void lmv__im2col(const lmv__ctx *ctx, float *rows, const float *in, int H, int W, int C, size_t sy, size_t sx,
                        size_t sc, int kh, int kw, int stride_h, int stride_w, int pad, int OH, int OW) {
    LMV__DISPATCH(lmv__simd_of(ctx), lmv__im2col, (ctx, rows, in, H, W, C, sy, sx, sc, kh, kw, stride_h, stride_w, pad, OH, OW));
}
static void lmv__layernorm(const lmv__ctx *ctx, float *y, const float *x, int rows, int dim, const float *w,
                           const float *b, float eps) {
    LMV__DISPATCH(lmv__simd_of(ctx), lmv__layernorm, (ctx, y, x, rows, dim, w, b, eps));
}
static void lmv__linear(const lmv__ctx *ctx, float *y, const float *x, int rows, int in, int out, lmv__mat W,
                        const float *b) {
    LMV__DISPATCH(lmv__simd_of(ctx), lmv__linear, (ctx, y, x, rows, in, out, W, b));
}
static void lmv__linear_act(const lmv__ctx *ctx, float *y, const float *x, int rows, int in, int out, lmv__mat W,
                            const float *b, lmv__act act) {
    LMV__DISPATCH(lmv__simd_of(ctx), lmv__linear_act, (ctx, y, x, rows, in, out, W, b, act));
}
static void lmv__linear_residual(const lmv__ctx *ctx, float *x, const float *h, int rows, int in, int out, lmv__mat W,
                                 const float *b, const float *g, float *tmp) {
    LMV__DISPATCH(lmv__simd_of(ctx), lmv__linear_residual, (ctx, x, h, rows, in, out, W, b, g, tmp));
}
static void lmv__residual(const lmv__ctx *ctx, float *y, const float *a, const float *x, int rows, int dim,
                          const float *g) {
    LMV__DISPATCH(lmv__simd_of(ctx), lmv__residual, (ctx, y, a, x, rows, dim, g));
}
static void lmv__rmsnorm(const lmv__ctx *ctx, float *y, const float *x, int rows, int dim, const float *w,
                         const float *b, float eps) {
    LMV__DISPATCH(lmv__simd_of(ctx), lmv__rmsnorm, (ctx, y, x, rows, dim, w, b, eps));
}
static void lmv__softmax_rows(float *x, int rows, int n, float scale, const float *b1, const float *b2) {
    LMV__DISPATCH(lmv__simd_of(NULL), lmv__softmax_rows, (x, rows, n, scale, b1, b2));
}

/* --------------------------------------------------------------------------------------------
   Sessions: the run state every graph shares
   -------------------------------------------------------------------------------------------- */

/* Threads that never hurt: which of a few thread counts a session runs (lmv__guard_pick). */
typedef struct lmv__guard {
    int n;                     /* candidates: 1 when there is nothing to choose */
    int count[4];              /* their thread counts, ascending: 1, [half], [all but one], all */
    double est[4];             /* ms per GMAC measured at each; 0: not yet timed */
    int cur;                   /* the current pick */
    int runs, every;           /* runs since the last probe, the probe interval */
    int last;                  /* the pick at the last probe */
    int side;                  /* the neighbour the last probe timed: 0 the lower, 1 the upper */
} lmv__guard;

struct lmv_session {
    const lmv_model *model;
    lmv_allocator allocator;
    lmv__ctx ctx;
    int max_threads;
    int max_h, max_w;
    int lanes;                 /* images run side by side: min(max_threads, max_batch) */
    float *arena;              /* activation memory, planned by the family for max_h x max_w */
    size_t arena_floats;
    lmv_trace_fn trace;
    void *trace_user;
    double macs;               /* multiply-adds of the last run */
    char attn_block[64];       /* block whose attention maps are traced, or "" */
    float *attn_buf;           /* their storage, from the allocator, grown on demand */
    size_t attn_cap;
    lmv_arena own;             /* lmv_session_create_prealloc(): the arena over the caller's memory */
    int exact;                 /* exact_threads: no guard, ctx.threads on every run */
    lmv__guard guard;          /* otherwise: how many of ctx.threads the runs use */
};

/* Storage for the attention maps of block `name` when the caller asked for them (NULL
   otherwise, or when the allocator refuses: the maps are then skipped, the run goes on). */
static float *lmv__attn_capture(lmv_session *s, const char *name, size_t floats) {
    if (!s->trace || !s->attn_block[0] || strcmp(s->attn_block, name) != 0) return NULL;
    if (floats > s->attn_cap) {
        lmv__free(&s->allocator, s->attn_buf);
        s->attn_cap = 0;
        s->attn_buf = (float *)lmv__alloc(&s->allocator, floats * sizeof(float));
        if (!s->attn_buf) return NULL;
        s->attn_cap = floats;
    }
    return s->attn_buf;
}

/* Hand a block output to the trace callback, if any. */
static void lmv__trace(const lmv_session *s, const char *name, const float *data, int ndim, int d0, int d1, int d2) {
    int shape[3];
    if (!s->trace) return;
    shape[0] = d0; shape[1] = d1; shape[2] = d2;
    s->trace(s->trace_user, name, data, ndim, shape);
}

/* Carve consecutive 64-byte aligned float buffers out of the arena; with base == NULL it only
   counts, which is how a family's plan and forward share one layout function. */
typedef struct lmv__carver {
    float *base;
    size_t used;               /* floats */
} lmv__carver;

static float *lmv__carve(lmv__carver *c, size_t floats) {
    float *p = c->base ? c->base + c->used : NULL;
    c->used += (floats + 15) & ~(size_t)15;
    return p;
}

/* --------------------------------------------------------------------------------------------
   Model graphs: ViT / DeiT
   -------------------------------------------------------------------------------------------- */

typedef struct lmv__vit_block {
    const float *norm1_w, *norm1_b, *qkv_b, *proj_b, *ls1;
    const float *norm2_w, *norm2_b, *fc1_b, *fc2_b, *ls2;
    const float *q_norm_w, *q_norm_b, *k_norm_w, *k_norm_b; /* qk-norm: LayerNorm(head_dim) on q and k per head */
    const float *attn_norm_w, *attn_norm_b;                  /* LayerNorm(D) on the attention output, before proj */
    const float *mlp_norm_w, *mlp_norm_b;                    /* LayerNorm(hidden) before fc2 */
    const float *rel_table; /* BEiT relative position bias table [(2gh-1)(2gw-1)+3][heads] (vit.rel_pos block) */
    lmv__mat qkv_w, proj_w, fc1_w, fc2_w;
    const float *rope_fx, *rope_fy; /* vit.rope mixed: this block's learned frequencies [heads][head_dim/2] each */
} lmv__vit_block;

/* Where a block's LayerNorms sit around each residual branch f (attention, then MLP). */
typedef enum lmv__norm_at {
    LMV__NORM_PRE = 0,  /* x = x + f(norm(x))          timm Block (vit.block "pre") */
    LMV__NORM_POST,     /* x = norm(x + f(x))          nn.TransformerEncoderLayer (vit.norm_first 0) */
    LMV__NORM_RES_POST  /* x = x + norm(f(x))          timm ResPostBlock (vit.block "res_post") */
} lmv__norm_at;

typedef struct lmv__vit {
    int dim, depth, heads, hidden, in_chans, ph, pw, pos_gh, pos_gw;
    int class_token, class_last, dist_token, reg_tokens, prefix, no_embed_class, norm_first;
    lmv__norm_at norm_at;
    int glu;        /* vit.mlp "glu": fc1 gives 2*hidden, act(first half) * second half (timm SwiGLUPacked) */
    int pool_map;   /* vit.pool "map": timm's AttentionPoolLatent over the patch tokens (SigLIP) */
    int pool_prefix, map_hidden; /* the map head also attends to the prefix tokens; its MLP's width */
    int map_heads;  /* the map head's attention heads (vit.map_heads; default the blocks' vit.num_heads) */
    int pool_avg, pre_logits, num_classes, pos_rows;
    int pool_cat;   /* vit.pool "token_avg": [class token, mean of the patch tokens], 2D wide (HF Dinov2 classifier) */
    int proj; /* width of the embedding projection (CLIP's `proj`, bias-free), 0: none */
    int abs_pos; /* vit.abs_pos: the tokens get the absolute pos_embed (BEiT may have none) */
    int rel_pos; /* vit.rel_pos: 1 per-block tables, 2 one shared table, 3 both (BEiT); 0 none */
    int *rel_index; /* [(G+1)^2] table row of each (query, key) token pair, G = pos_gh * pos_gw */
    const float *rel_shared; /* rel_pos_bias.relative_position_bias_table [(2gh-1)(2gw-1)+3][heads] */
    float eps, scale;
    lmv__act act;
    lmv__resample pos_interp;
    const float *patch_b, *patch_norm_w, *patch_norm_b;
    const float *cls_token, *dist_token_w, *reg_token, *pos_embed;
    const float *norm_pre_w, *norm_pre_b, *norm_w, *norm_b, *fc_norm_w, *fc_norm_b;
    const float *pre_logits_b, *head_b, *head_dist_b;
    lmv__mat patch_w, pre_logits_w, head_w, head_dist_w;
    /* the attention-pool head: latent query [D], q, kv, proj, norm and its MLP */
    const float *map_latent, *map_q_b, *map_kv_b, *map_proj_b, *map_norm_w, *map_norm_b, *map_fc1_b, *map_fc2_b;
    lmv__mat map_q_w, map_kv_w, map_proj_w, map_fc1_w, map_fc2_w;
    lmv__mat proj_w;
    const float *proj_b;      /* the projection's bias (OpenCLIP's timm towers), or NULL */
    lmv__vit_block *blocks;
    /* vit.rope: rotary position embedding on q and k of the patch tokens (timm eva.py) */
    int rope;                 /* 0 none, LMV__ROPE_AXIAL (RotaryEmbeddingCat), LMV__ROPE_MIXED (RotaryEmbeddingMixed),
                                 LMV__ROPE_DINOV3 (RotaryEmbeddingDinoV3) */
    int rope_ref_h, rope_ref_w; /* vit.rope_ref_grid: positions scaled to this grid (EVA-02 ref_feat_shape); 0,0: none */
    int rope_xy, rope_half;   /* vit.rope_indexing "xy"; vit.rope_half: rotate halves instead of pairs */
    float rope_temp, rope_offset;
    const float *rope_freqs;  /* mixed: rope.freqs [2][depth][heads][head_dim/2] */
    struct lmv__vit_relmlp *rel_mlps; /* vit.rel_pos mlp_block: [depth], mlp_shared: [1]; else NULL */
    int rel_mlp, rel_mlp_mode, rel_mlp_hidden; /* 1 per block, 2 shared; vit.rel_mlp 0 cr, 1 swin, 2 rw; fc1's width */
    int parallel; /* vit.parallel: branches per block (timm ParallelThingsBlock), block i's in blocks[i * K + k] */
    int par_scaling; /* vit.block "parallel_scaling": timm ParallelScalingBlock, attention and MLP on one norm */
    int rms;         /* vit.norm "rms": every norm of the model is timm's RmsNorm (no mean subtracted) */
} lmv__vit;

/* timm's RelPosMlp: fc1 [hidden][2] (+bias), ReLU, fc2 [heads][hidden] (+bias) over log-spaced (dy, dx). */
typedef struct lmv__vit_relmlp {
    const float *fc1_b, *fc2_b;
    lmv__mat fc1_w, fc2_w;
} lmv__vit_relmlp;

enum { LMV__ROPE_AXIAL = 1, LMV__ROPE_MIXED = 2, LMV__ROPE_DINOV3 = 3 };

/* A block's optional norms, present when the file has their tensors: qk-norm (q_norm and k_norm,
   LayerNorm over head_dim; one without the other is refused), attn.norm and mlp.norm. */
static lmv_result lmv__vit_bind_block_norms(lmv_model *m, const lmv__vit *v, int i, lmv__vit_block *b, lmv_error *err) {
    lmv_result r;
    int hd = v->dim / v->heads;
    if ((r = lmv__bind_norm(m, 1, hd, &b->q_norm_w, &b->q_norm_b, err, "blocks.%d.attn.q_norm", i)) != LMV_OK ||
        (r = lmv__bind_norm(m, 1, hd, &b->k_norm_w, &b->k_norm_b, err, "blocks.%d.attn.k_norm", i)) != LMV_OK ||
        (r = lmv__bind_norm(m, 1, v->dim, &b->attn_norm_w, &b->attn_norm_b, err, "blocks.%d.attn.norm", i)) != LMV_OK ||
        (r = lmv__bind_norm(m, 1, v->hidden, &b->mlp_norm_w, &b->mlp_norm_b, err, "blocks.%d.mlp.norm", i)) != LMV_OK)
        return r;
    if (!b->q_norm_w != !b->k_norm_w || !b->q_norm_w != !b->q_norm_b || !b->k_norm_w != !b->k_norm_b ||
        !b->attn_norm_w != !b->attn_norm_b || !b->mlp_norm_w != !b->mlp_norm_b)
        return lmv__fail(err, LMV_ERR_MISSING_TENSOR,
                         "block %d has only part of a norm (q_norm and k_norm come together, each with weight and "
                         "bias): convert the checkpoint again", i);
    return LMV_OK;
}

/* The attention-pool head (vit.pool "map"): one latent query; its MLP's width comes from the file. */
static lmv_result lmv__vit_bind_map(lmv_model *m, lmv__vit *v, lmv_error *err) {
    lmv_result r;
    int D = v->dim, shape3[3];
    const lmv__tensor *t = lmv__find_tensor(m, "attn_pool.mlp.fc1.weight");
    if (!t) return lmv__fail(err, LMV_ERR_MISSING_TENSOR, "tensor 'attn_pool.mlp.fc1.weight' is missing from the weight file");
    if (t->ndim != 2 || t->shape[0] < 1 || t->shape[0] > (1 << 18))
        return lmv__fail(err, LMV_ERR_SHAPE, "tensor 'attn_pool.mlp.fc1.weight' must be 2-D [hidden][%d]", D);
    v->map_hidden = t->shape[0];
    if (v->dist_token || v->pre_logits || v->class_last)
        return lmv__fail(err, LMV_ERR_UNSUPPORTED,
                         "vit.pool 'map' cannot be combined with a distillation token, pre_logits or vit.class_last");
    shape3[0] = 1; shape3[1] = 1; shape3[2] = D;
    if ((r = lmv__weight(m, "attn_pool.latent", 0, 3, shape3, &v->map_latent, err)) != LMV_OK ||
        (r = lmv__bind_linear(m, 0, D, D, &v->map_q_w, &v->map_q_b, err, "attn_pool.q")) != LMV_OK ||
        (r = lmv__bind_linear(m, 0, 2 * D, D, &v->map_kv_w, &v->map_kv_b, err, "attn_pool.kv")) != LMV_OK ||
        (r = lmv__bind_linear(m, 0, D, D, &v->map_proj_w, &v->map_proj_b, err, "attn_pool.proj")) != LMV_OK ||
        (r = lmv__bind_norm(m, 0, D, &v->map_norm_w, &v->map_norm_b, err, "attn_pool.norm")) != LMV_OK ||
        (r = lmv__bind_linear(m, 0, v->map_hidden, D, &v->map_fc1_w, &v->map_fc1_b, err, "attn_pool.mlp.fc1")) != LMV_OK ||
        (r = lmv__bind_linear(m, 0, D, v->map_hidden, &v->map_fc2_w, &v->map_fc2_b, err, "attn_pool.mlp.fc2")) != LMV_OK)
        return r;
    return LMV_OK;
}

/* The embedding projection: "proj.weight" [vit.proj][features] and an optional "proj.bias" (CLIP's
   proj has none; OpenCLIP's timm towers project with the trunk's biased head); what it writes
   becomes the features (lmv_model_info.projected). */
static lmv_result lmv__vit_bind_proj(lmv_model *m, lmv__vit *v, lmv_error *err) {
    lmv_result r;
    if (v->dist_token || v->pre_logits)
        return lmv__fail(err, LMV_ERR_UNSUPPORTED, "vit.proj cannot be combined with a distillation token or vit.pre_logits");
    if ((r = lmv__bind_linear(m, 0, v->proj, m->info.num_features, &v->proj_w, &v->proj_b, err, "proj")) != LMV_OK)
        return r;
    m->info.num_features = v->proj;
    m->info.projected = 1;
    return LMV_OK;
}

/* Rows of a BEiT relative position bias table: every (dy, dx) offset of the trained grid plus
   three for the class token (class to patch, patch to class, class to class) when there is one
   (timm's RelPosBias without a class token has none). */
static int lmv__vit_rel_rows(const lmv__vit *v) { return (2 * v->pos_gh - 1) * (2 * v->pos_gw - 1) + 3 * v->class_token; }

/* vit.rel_pos: the shared table when there is one, and the table row of every (query, key) pair of
   the trained grid with its class token first, as timm's beit.py gen_relative_position_index:
   patch (y1, x1) to patch (y2, x2) reads row (y1 - y2 + gh - 1) * (2gw - 1) + (x1 - x2 + gw - 1). */
static lmv_result lmv__vit_bind_rel_pos(lmv_model *m, lmv__vit *v, lmv_error *err) {
    lmv_result r;
    int G = v->pos_gh * v->pos_gw, c = v->class_token, T = G + c, rows = lmv__vit_rel_rows(v), i, j;
    if ((size_t)v->pos_gh * v->pos_gw > 4096)
        return lmv__fail(err, LMV_ERR_LIMIT, "vit.rel_pos over a %dx%d grid: at most 4096 patches are supported",
                         v->pos_gh, v->pos_gw);
    if ((v->rel_pos & 2) &&
        (r = lmv__w2(m, 0, rows, v->heads, &v->rel_shared, err, "rel_pos_bias.relative_position_bias_table")) != LMV_OK)
        return r;
    v->rel_index = (int *)lmv__alloc(&m->allocator, sizeof(int) * (size_t)T * T);
    if (!v->rel_index) return lmv__fail(err, LMV_ERR_OUT_OF_MEMORY, "out of memory for the relative position index");
    for (i = 0; i < G; i++)
        for (j = 0; j < G; j++) {
            int dy = i / v->pos_gw - j / v->pos_gw + v->pos_gh - 1, dx = i % v->pos_gw - j % v->pos_gw + v->pos_gw - 1;
            v->rel_index[(size_t)(i + c) * T + j + c] = dy * (2 * v->pos_gw - 1) + dx;
        }
    if (!c) return LMV_OK;
    for (j = 1; j < T; j++) v->rel_index[j] = rows - 3;             /* class token to patch */
    for (i = 1; i < T; i++) v->rel_index[(size_t)i * T] = rows - 2; /* patch to class token */
    v->rel_index[0] = rows - 1;
    return LMV_OK;
}

/* The relative position bias of one block, [heads][T][T]: its own table's entries plus the shared one's. */
static void lmv__vit_rel_bias(const lmv__vit *v, const lmv__vit_block *blk, int T, float *bias) {
    size_t n = (size_t)T * T, p;
    int h, H = v->heads;
    for (h = 0; h < H; h++) {
        float *o = bias + (size_t)h * n;
        if (blk->rel_table && v->rel_shared)
            for (p = 0; p < n; p++) o[p] = blk->rel_table[(size_t)v->rel_index[p] * H + h] + v->rel_shared[(size_t)v->rel_index[p] * H + h];
        else
            for (p = 0; p < n; p++) o[p] = (blk->rel_table ? blk->rel_table : v->rel_shared)[(size_t)v->rel_index[p] * H + h];
    }
}

/* vit.rope and its options, read with the other options before any tensor. */
static lmv_result lmv__vit_rope_options(lmv_model *m, lmv__vit *v, lmv_error *err) {
    lmv_result r;
    const char *s = lmv__meta_string(m, "vit.rope", "none");
    if (!strcmp(s, "axial")) v->rope = LMV__ROPE_AXIAL;
    else if (!strcmp(s, "mixed")) v->rope = LMV__ROPE_MIXED;
    else if (!strcmp(s, "dinov3")) v->rope = LMV__ROPE_DINOV3;
    else if (strcmp(s, "none"))
        return lmv__fail(err, LMV_ERR_UNSUPPORTED, "vit.rope '%s' is not one of none, axial, mixed, dinov3", s);
    if (!v->rope) return LMV_OK;
    if ((r = lmv__meta_int_range(m, "vit.rope_ref_grid", 0, 0, 4096, 0, &v->rope_ref_h, err)) != LMV_OK ||
        (r = lmv__meta_int_range(m, "vit.rope_ref_grid", 1, 0, 4096, v->rope_ref_h, &v->rope_ref_w, err)) != LMV_OK ||
        (r = lmv__meta_int_range(m, "vit.rope_half", 0, 0, 1, 0, &v->rope_half, err)) != LMV_OK)
        return r;
    s = lmv__meta_string(m, "vit.rope_indexing", "ij");
    if (!strcmp(s, "xy")) v->rope_xy = 1;
    else if (strcmp(s, "ij")) return lmv__fail(err, LMV_ERR_UNSUPPORTED, "vit.rope_indexing '%s' is not one of ij, xy", s);
    v->rope_temp = lmv__meta_float(m, "vit.rope_temperature", 0, 10000.0f);
    if (!(v->rope_temp > 0.0f && v->rope_temp < 1e30f))
        return lmv__fail(err, LMV_ERR_CORRUPT, "vit.rope_temperature must be a positive number");
    v->rope_offset = lmv__meta_float(m, "vit.rope_offset", 0, 0.0f);
    if (!(v->rope_offset > -1e6f && v->rope_offset < 1e6f))
        return lmv__fail(err, LMV_ERR_CORRUPT, "vit.rope_offset must be a number in (-1e6, 1e6)");
    return LMV_OK;
}

/* What vit.rope needs of the rest of the model, and mixed RoPE's learned frequencies rope.freqs with
   each block's slice of them (x then y, [heads][head_dim/2] each). */
static lmv_result lmv__vit_bind_rope(lmv_model *m, lmv__vit *v, lmv_error *err) {
    lmv_result r;
    int hd = v->dim / v->heads, i, shape4[4];
    if (!v->rope) return LMV_OK;
    if (hd % 4)
        return lmv__fail(err, LMV_ERR_UNSUPPORTED, "vit.rope needs a head width divisible by 4; this model's is %d", hd);
    if (v->rel_pos || v->rel_mlp || v->class_last || v->parallel > 1 || v->par_scaling)
        return lmv__fail(err, LMV_ERR_UNSUPPORTED,
                         "vit.rope cannot be combined with vit.rel_pos, vit.class_last, vit.parallel or parallel_scaling blocks");
    if (v->rope != LMV__ROPE_MIXED) return LMV_OK;
    shape4[0] = 2; shape4[1] = v->depth; shape4[2] = v->heads; shape4[3] = hd / 2;
    if ((r = lmv__weight(m, "rope.freqs", 0, 4, shape4, &v->rope_freqs, err)) != LMV_OK) return r;
    for (i = 0; i < v->depth; i++) {
        v->blocks[i].rope_fx = v->rope_freqs + (size_t)i * v->heads * (hd / 2);
        v->blocks[i].rope_fy = v->rope_freqs + ((size_t)v->depth + i) * v->heads * (hd / 2);
    }
    return LMV_OK;
}

/* vit.rel_pos mlp_block / mlp_shared: timm's RelPosMlp, one per block
   ("blocks.N.attn.rel_pos.mlp.fc1/fc2") or one for all ("shared_rel_pos.mlp.fc1/fc2"); its hidden
   width comes from the first fc1. */
static lmv_result lmv__vit_bind_rel_mlp(lmv_model *m, lmv__vit *v, lmv_error *err) {
    lmv_result r;
    int n = v->rel_mlp == 1 ? v->depth : 1, i;
    const char *first = v->rel_mlp == 1 ? "blocks.0.attn.rel_pos.mlp.fc1.weight" : "shared_rel_pos.mlp.fc1.weight";
    const lmv__tensor *t = lmv__find_tensor(m, first);
    if (!t) return lmv__fail(err, LMV_ERR_MISSING_TENSOR, "tensor '%s' is missing from the weight file", first);
    if (t->ndim != 2 || t->shape[0] < 1 || t->shape[0] > (1 << 16) || t->shape[1] != 2)
        return lmv__fail(err, LMV_ERR_SHAPE, "tensor '%s' must be 2-D [hidden][2]", first);
    v->rel_mlp_hidden = t->shape[0];
    if (n < 1) return LMV_OK;
    v->rel_mlps = (lmv__vit_relmlp *)lmv__alloc(&m->allocator, sizeof(lmv__vit_relmlp) * (size_t)n);
    if (!v->rel_mlps) return lmv__fail(err, LMV_ERR_OUT_OF_MEMORY, "out of memory for the relative position MLPs");
    memset(v->rel_mlps, 0, sizeof(lmv__vit_relmlp) * (size_t)n);
    for (i = 0; i < n; i++) {
        lmv__vit_relmlp *q = &v->rel_mlps[i];
        char base[64];
        if (v->rel_mlp == 1) lmv__name(base, sizeof base, "blocks.%d.attn.rel_pos.mlp", i);
        else lmv__name(base, sizeof base, "shared_rel_pos.mlp");
        if ((r = lmv__bind_linear(m, 0, v->rel_mlp_hidden, 2, &q->fc1_w, &q->fc1_b, err, "%s.fc1", base)) != LMV_OK ||
            (r = lmv__bind_linear(m, 0, v->heads, v->rel_mlp_hidden, &q->fc2_w, &q->fc2_b, err, "%s.fc2", base)) != LMV_OK)
            return r;
    }
    return LMV_OK;
}

/* vit.parallel K > 1: timm's ParallelThingsBlock. Block i has K attention branches
   "blocks.i.attns.k.{norm, attn.qkv, attn.proj, ls.gamma}" (qk-norm and attn.norm optional) and K
   MLP branches "blocks.i.ffns.k.{norm, mlp.fc1, mlp.fc2, ls.gamma}" (mlp.norm optional), bound into
   v->blocks[i * K + k] as norm1 / attention / ls1 and norm2 / MLP / ls2. */
static lmv_result lmv__vit_bind_parallel(lmv_model *m, lmv__vit *v, lmv_error *err) {
    lmv_result r;
    int i, k, K = v->parallel, D = v->dim, Hd = v->hidden, hd = v->dim / v->heads;
    char a[48], f[48], name[96];
    if (v->norm_at != LMV__NORM_PRE || v->rel_pos || v->rel_mlp)
        return lmv__fail(err, LMV_ERR_UNSUPPORTED,
                         "vit.parallel (parallel branches per block) needs pre-norm blocks and no relative position bias");
    for (i = 0; i < v->depth; i++)
        for (k = 0; k < K; k++) {
            lmv__vit_block *b = &v->blocks[i * K + k];
            lmv__name(a, sizeof a, "blocks.%d.attns.%d", i, k);
            lmv__name(f, sizeof f, "blocks.%d.ffns.%d", i, k);
            if ((r = lmv__bind_norm(m, 0, D, &b->norm1_w, &b->norm1_b, err, "%s.norm", a)) != LMV_OK ||
                (r = lmv__bind_linear(m, 0, 3 * D, D, &b->qkv_w, &b->qkv_b, err, "%s.attn.qkv", a)) != LMV_OK ||
                (r = lmv__bind_linear(m, 0, D, D, &b->proj_w, &b->proj_b, err, "%s.attn.proj", a)) != LMV_OK ||
                (r = lmv__bind_norm(m, 1, hd, &b->q_norm_w, &b->q_norm_b, err, "%s.attn.q_norm", a)) != LMV_OK ||
                (r = lmv__bind_norm(m, 1, hd, &b->k_norm_w, &b->k_norm_b, err, "%s.attn.k_norm", a)) != LMV_OK ||
                (r = lmv__bind_norm(m, 1, D, &b->attn_norm_w, &b->attn_norm_b, err, "%s.attn.norm", a)) != LMV_OK ||
                (r = lmv__bind_norm(m, 0, D, &b->norm2_w, &b->norm2_b, err, "%s.norm", f)) != LMV_OK ||
                (r = lmv__bind_linear(m, 0, v->glu ? 2 * Hd : Hd, D, &b->fc1_w, &b->fc1_b, err, "%s.mlp.fc1", f)) != LMV_OK ||
                (r = lmv__bind_linear(m, 0, D, Hd, &b->fc2_w, &b->fc2_b, err, "%s.mlp.fc2", f)) != LMV_OK ||
                (r = lmv__bind_norm(m, 1, Hd, &b->mlp_norm_w, &b->mlp_norm_b, err, "%s.mlp.norm", f)) != LMV_OK)
                return r;
            if (!b->q_norm_w != !b->k_norm_w || !b->q_norm_w != !b->q_norm_b || !b->k_norm_w != !b->k_norm_b ||
                !b->attn_norm_w != !b->attn_norm_b || !b->mlp_norm_w != !b->mlp_norm_b)
                return lmv__fail(err, LMV_ERR_MISSING_TENSOR,
                                 "block %d branch %d has only part of a norm (q_norm and k_norm come together, each "
                                 "with weight and bias): convert the checkpoint again", i, k);
            lmv__name(name, sizeof name, "%s.ls.gamma", a);
            if ((r = lmv__w1(m, 1, D, &b->ls1, err, name)) != LMV_OK) return r;
            lmv__name(name, sizeof name, "%s.ls.gamma", f);
            if ((r = lmv__w1(m, 1, D, &b->ls2, err, name)) != LMV_OK) return r;
        }
    return LMV_OK;
}

static lmv_result lmv__vit_bind(lmv_model *m, lmv_error *err) {
    lmv__vit *v;
    lmv_result r;
    const char *s;
    int i, D, Hd, P, patch_k;
    char name[96];
    v = (lmv__vit *)lmv__alloc(&m->allocator, sizeof(lmv__vit));
    if (!v) return lmv__fail(err, LMV_ERR_OUT_OF_MEMORY, "out of memory binding the ViT graph");
    memset(v, 0, sizeof *v);
    m->graph = v;
#define LMV__INT(key, idx, lo, hi, def, dst) \
    if ((r = lmv__meta_int_range(m, key, idx, lo, hi, def, &(dst), err)) != LMV_OK) return r
    LMV__INT("vit.embed_dim", 0, 1, 1 << 16, -1, v->dim);
    LMV__INT("vit.depth", 0, 0, 4096, -1, v->depth);
    LMV__INT("vit.num_heads", 0, 1, 4096, -1, v->heads);
    LMV__INT("vit.mlp_hidden", 0, 1, 1 << 18, -1, v->hidden);
    LMV__INT("in_chans", 0, 1, 64, 3, v->in_chans);
    LMV__INT("vit.patch_size", 0, 1, 1024, -1, v->ph);
    LMV__INT("vit.patch_size", 1, 1, 1024, -1, v->pw);
    LMV__INT("vit.pos_grid", 0, 1, 4096, -1, v->pos_gh);
    LMV__INT("vit.pos_grid", 1, 1, 4096, -1, v->pos_gw);
    LMV__INT("vit.class_token", 0, 0, 1, 1, v->class_token);
    LMV__INT("vit.class_last", 0, 0, 1, 0, v->class_last);
    LMV__INT("vit.dist_token", 0, 0, 1, 0, v->dist_token);
    LMV__INT("vit.reg_tokens", 0, 0, 64, 0, v->reg_tokens);
    LMV__INT("vit.no_embed_class", 0, 0, 1, 0, v->no_embed_class);
    LMV__INT("vit.norm_first", 0, 0, 1, 1, v->norm_first);
    LMV__INT("vit.pre_logits", 0, 0, 1 << 18, 0, v->pre_logits);
    LMV__INT("vit.proj", 0, 0, 1 << 18, 0, v->proj);
    LMV__INT("num_classes", 0, 0, 1 << 20, 0, v->num_classes);
    LMV__INT("vit.abs_pos", 0, 0, 1, 1, v->abs_pos);
    LMV__INT("vit.parallel", 0, 1, 16, 1, v->parallel);
#undef LMV__INT
    if (v->dim % v->heads)
        return lmv__fail(err, LMV_ERR_CORRUPT, "vit.embed_dim %d is not divisible by vit.num_heads %d", v->dim, v->heads);
    if (v->dist_token && !v->class_token)
        return lmv__fail(err, LMV_ERR_CORRUPT, "a distillation token needs a class token");
    if (v->class_last && (v->dist_token || v->reg_tokens || v->no_embed_class))
        return lmv__fail(err, LMV_ERR_UNSUPPORTED, "vit.class_last cannot be combined with dist/reg tokens or no_embed_class");
    v->prefix = v->class_token + v->dist_token + v->reg_tokens;
    v->eps = lmv__meta_float(m, "vit.norm_eps", 0, 1e-6f);
    if (!(v->eps > 0.0f && v->eps < 1.0f)) return lmv__fail(err, LMV_ERR_CORRUPT, "vit.norm_eps is not in (0, 1)");
    v->scale = lmv__meta_float(m, "vit.attn_scale", 0, 0.0f);
    if (!(v->scale >= 0.0f && v->scale < 1e6f)) return lmv__fail(err, LMV_ERR_CORRUPT, "vit.attn_scale is invalid");
    if (v->scale == 0.0f) v->scale = (float)(1.0 / sqrt((double)(v->dim / v->heads)));
    s = lmv__meta_string(m, "vit.act", "gelu");
    if (!strcmp(s, "gelu")) v->act = LMV__ACT_GELU;
    else if (!strcmp(s, "gelu_tanh")) v->act = LMV__ACT_GELU_TANH;
    else if (!strcmp(s, "relu")) v->act = LMV__ACT_RELU;
    else if (!strcmp(s, "quickgelu")) v->act = LMV__ACT_QUICK_GELU;
    else if (!strcmp(s, "silu")) v->act = LMV__ACT_SILU;
    else return lmv__fail(err, LMV_ERR_UNSUPPORTED, "vit.act '%s' is not one of gelu, gelu_tanh, relu, quickgelu, silu", s);
    s = lmv__meta_string(m, "vit.norm", "layer");
    if (!strcmp(s, "rms")) v->rms = 1;
    else if (strcmp(s, "layer")) return lmv__fail(err, LMV_ERR_UNSUPPORTED, "vit.norm '%s' is not one of layer, rms", s);
    s = lmv__meta_string(m, "vit.mlp", "mlp");
    if (!strcmp(s, "glu")) v->glu = 1;
    else if (strcmp(s, "mlp")) return lmv__fail(err, LMV_ERR_UNSUPPORTED, "vit.mlp '%s' is not one of mlp, glu", s);
    s = lmv__meta_string(m, "vit.block", "pre");
    v->norm_at = v->norm_first ? LMV__NORM_PRE : LMV__NORM_POST;
    if (!strcmp(s, "res_post")) {
        if (!v->norm_first)
            return lmv__fail(err, LMV_ERR_CORRUPT, "vit.block 'res_post' contradicts vit.norm_first 0: set only one of them");
        v->norm_at = LMV__NORM_RES_POST;
    } else if (!strcmp(s, "parallel_scaling")) {
        if (!v->norm_first)
            return lmv__fail(err, LMV_ERR_CORRUPT, "vit.block 'parallel_scaling' contradicts vit.norm_first 0: set only one of them");
        v->par_scaling = 1;
    } else if (strcmp(s, "pre")) {
        return lmv__fail(err, LMV_ERR_UNSUPPORTED, "vit.block '%s' is not one of pre, res_post, parallel_scaling", s);
    }
    s = lmv__meta_string(m, "vit.pool", "token");
    if (!strcmp(s, "avg")) v->pool_avg = 1;
    else if (!strcmp(s, "map")) v->pool_map = 1;
    else if (!strcmp(s, "token_avg")) v->pool_cat = 1;
    else if (strcmp(s, "token"))
        return lmv__fail(err, LMV_ERR_UNSUPPORTED, "vit.pool '%s' is not one of token, avg, map, token_avg", s);
    if (!v->pool_avg && !v->pool_map && !v->class_token)
        return lmv__fail(err, LMV_ERR_CORRUPT, "vit.pool '%s' needs a class token", s);
    if (v->pool_cat && (v->dist_token || v->pre_logits || v->proj))
        return lmv__fail(err, LMV_ERR_UNSUPPORTED,
                         "vit.pool 'token_avg' cannot be combined with a distillation token, pre_logits or vit.proj");
    if ((r = lmv__meta_int_range(m, "vit.pool_prefix", 0, 0, 1, 0, &v->pool_prefix, err)) != LMV_OK) return r;
    if ((r = lmv__meta_int_range(m, "vit.map_heads", 0, 1, 4096, v->heads, &v->map_heads, err)) != LMV_OK) return r;
    if (v->dim % v->map_heads)
        return lmv__fail(err, LMV_ERR_CORRUPT, "vit.embed_dim %d is not divisible by vit.map_heads %d", v->dim, v->map_heads);
    s = lmv__meta_string(m, "vit.rel_pos", "none");
    if (!strcmp(s, "block")) v->rel_pos = 1;
    else if (!strcmp(s, "shared_table")) v->rel_pos = 2;
    else if (!strcmp(s, "both")) v->rel_pos = 3;
    else if (strcmp(s, "none") && strcmp(s, "mlp_block") && strcmp(s, "mlp_shared"))
        return lmv__fail(err, LMV_ERR_UNSUPPORTED,
                         "vit.rel_pos '%s' is not one of none, block, shared_table, both, mlp_block, mlp_shared", s);
    else if (!strcmp(s, "mlp_block")) v->rel_mlp = 1;
    else if (!strcmp(s, "mlp_shared")) v->rel_mlp = 2;
    if ((v->rel_pos || v->rel_mlp) && (v->dist_token || v->reg_tokens || v->class_last))
        return lmv__fail(err, LMV_ERR_UNSUPPORTED,
                         "vit.rel_pos (relative position bias) allows at most one class token, first, and no "
                         "distillation or register tokens");
    s = lmv__meta_string(m, "vit.rel_mlp", "cr");
    if (!strcmp(s, "swin")) v->rel_mlp_mode = 1;
    else if (!strcmp(s, "rw")) v->rel_mlp_mode = 2;
    else if (strcmp(s, "cr")) return lmv__fail(err, LMV_ERR_UNSUPPORTED, "vit.rel_mlp '%s' is not one of cr, swin, rw", s);
    s = lmv__meta_string(m, "vit.pos_interp", "bicubic");
    if (!strcmp(s, "bicubic")) v->pos_interp = LMV__RS_BICUBIC;
    else if (!strcmp(s, "bicubic_aa")) v->pos_interp = LMV__RS_BICUBIC_AA;
    else if (!strcmp(s, "bicubic_ac")) v->pos_interp = LMV__RS_BICUBIC_AC;
    else if (!strcmp(s, "bilinear")) v->pos_interp = LMV__RS_BILINEAR;
    else if (!strcmp(s, "bicubic_dinov2")) v->pos_interp = LMV__RS_BICUBIC_DINOV2;
    else return lmv__fail(err, LMV_ERR_UNSUPPORTED, "vit.pos_interp '%s' is unknown", s);
    if ((r = lmv__vit_rope_options(m, v, err)) != LMV_OK) return r;

    D = v->dim;
    Hd = v->hidden;
    patch_k = v->in_chans * v->ph * v->pw;
    P = v->pos_gh * v->pos_gw + (v->no_embed_class ? 0 : v->prefix);
    v->pos_rows = P;
    {
        int shape4[4], shape3[3];
        shape4[0] = D; shape4[1] = v->in_chans; shape4[2] = v->ph; shape4[3] = v->pw;
        if ((r = lmv__matrix(m, "patch_embed.proj.weight", 0, 4, shape4, &v->patch_w, err)) != LMV_OK) return r;
        if ((r = lmv__w1(m, 1, D, &v->patch_b, err, "patch_embed.proj.bias")) != LMV_OK) return r;
        shape3[0] = 1; shape3[1] = 1; shape3[2] = D;
        if (v->class_token && (r = lmv__weight(m, "cls_token", 0, 3, shape3, &v->cls_token, err)) != LMV_OK) return r;
        if (v->dist_token && (r = lmv__weight(m, "dist_token", 0, 3, shape3, &v->dist_token_w, err)) != LMV_OK) return r;
        shape3[1] = v->reg_tokens;
        if (v->reg_tokens && (r = lmv__weight(m, "reg_token", 0, 3, shape3, &v->reg_token, err)) != LMV_OK) return r;
        shape3[1] = P;
        if (v->abs_pos && (r = lmv__weight(m, "pos_embed", 0, 3, shape3, &v->pos_embed, err)) != LMV_OK) return r;
    }
    if (v->rel_pos && (r = lmv__vit_bind_rel_pos(m, v, err)) != LMV_OK) return r;
    if (v->rel_mlp && (r = lmv__vit_bind_rel_mlp(m, v, err)) != LMV_OK) return r;
    (void)patch_k;
    if ((r = lmv__bind_norm(m, 1, D, &v->patch_norm_w, &v->patch_norm_b, err, "patch_embed.norm")) != LMV_OK ||
        (r = lmv__bind_norm(m, 1, D, &v->norm_pre_w, &v->norm_pre_b, err, "norm_pre")) != LMV_OK ||
        (r = lmv__bind_norm(m, 1, D, &v->norm_w, &v->norm_b, err, "norm")) != LMV_OK ||
        (r = lmv__bind_norm(m, 1, D, &v->fc_norm_w, &v->fc_norm_b, err, "fc_norm")) != LMV_OK)
        return r;
    if (v->pool_cat && v->fc_norm_w)
        return lmv__fail(err, LMV_ERR_UNSUPPORTED, "vit.pool 'token_avg' cannot be combined with fc_norm");
    if (v->pre_logits &&
        (r = lmv__bind_linear(m, 0, v->pre_logits, D, &v->pre_logits_w, &v->pre_logits_b, err, "pre_logits.fc")) != LMV_OK)
        return r;
    if (v->pool_map && (r = lmv__vit_bind_map(m, v, err)) != LMV_OK) return r;
    m->info.num_features = v->pre_logits ? v->pre_logits : v->pool_cat ? 2 * D : D;
    if (v->proj && (r = lmv__vit_bind_proj(m, v, err)) != LMV_OK) return r;
    if (v->num_classes) {
        int F = m->info.num_features;
        if ((r = lmv__bind_linear(m, 0, v->num_classes, F, &v->head_w, &v->head_b, err, "head")) != LMV_OK ||
            (v->dist_token &&
             (r = lmv__bind_linear(m, 0, v->num_classes, F, &v->head_dist_w, &v->head_dist_b, err, "head_dist")) != LMV_OK))
            return r;
    }
    v->blocks = (lmv__vit_block *)lmv__alloc(&m->allocator, sizeof(lmv__vit_block) * (size_t)(v->depth * v->parallel + 1));
    if (!v->blocks) return lmv__fail(err, LMV_ERR_OUT_OF_MEMORY, "out of memory binding the ViT blocks");
    memset(v->blocks, 0, sizeof(lmv__vit_block) * (size_t)(v->depth * v->parallel + 1));
    if (v->parallel > 1) return (r = lmv__vit_bind_parallel(m, v, err)) != LMV_OK ? r : lmv__vit_bind_rope(m, v, err);
    if (v->par_scaling && (v->glu || v->rel_pos || v->rel_mlp))
        return lmv__fail(err, LMV_ERR_UNSUPPORTED,
                         "vit.block 'parallel_scaling' cannot be combined with a glu MLP or a relative position bias");
    for (i = 0; i < v->depth; i++) {
        lmv__vit_block *b = &v->blocks[i];
        if ((r = lmv__bind_norm(m, 0, D, &b->norm1_w, &b->norm1_b, err, "blocks.%d.norm1", i)) != LMV_OK ||
            (r = lmv__bind_linear(m, 0, 3 * D, D, &b->qkv_w, &b->qkv_b, err, "blocks.%d.attn.qkv", i)) != LMV_OK ||
            (r = lmv__bind_linear(m, 0, D, D, &b->proj_w, &b->proj_b, err, "blocks.%d.attn.proj", i)) != LMV_OK ||
            (r = lmv__bind_norm(m, v->par_scaling, D, &b->norm2_w, &b->norm2_b, err, "blocks.%d.norm2", i)) != LMV_OK ||
            (r = lmv__bind_linear(m, 0, v->glu ? 2 * Hd : Hd, D, &b->fc1_w, &b->fc1_b, err, "blocks.%d.mlp.fc1", i)) != LMV_OK ||
            (r = lmv__bind_linear(m, 0, D, Hd, &b->fc2_w, &b->fc2_b, err, "blocks.%d.mlp.fc2", i)) != LMV_OK ||
            (r = lmv__vit_bind_block_norms(m, v, i, b, err)) != LMV_OK)
            return r;
        if (v->rel_pos & 1) {
            lmv__name(name, sizeof name, "blocks.%d.attn.relative_position_bias_table", i);
            if ((r = lmv__w2(m, 0, lmv__vit_rel_rows(v), v->heads, &b->rel_table, err, name)) != LMV_OK) return r;
        }
        if (v->norm_at == LMV__NORM_RES_POST) continue; /* ResPostBlock has no layer scale */
        lmv__name(name, sizeof name, "blocks.%d.ls1.gamma", i);
        if ((r = lmv__w1(m, 1, D, &b->ls1, err, name)) != LMV_OK) return r;
        lmv__name(name, sizeof name, "blocks.%d.ls2.gamma", i);
        if ((r = lmv__w1(m, 1, D, &b->ls2, err, name)) != LMV_OK) return r;
    }
    return lmv__vit_bind_rope(m, v, err);
}

static void lmv__vit_unbind(lmv_model *m) {
    lmv__vit *v = (lmv__vit *)m->graph;
    if (!v) return;
    lmv__free(&m->allocator, v->blocks);
    lmv__free(&m->allocator, v->rel_index);
    lmv__free(&m->allocator, v->rel_mlps);
    lmv__free(&m->allocator, v);
    m->graph = NULL;
}

/* The run-state buffers of one image, for a gh x gw patch grid (T tokens: prefix + gh*gw). */
typedef struct lmv__vit_bufs {
    float *x;       /* [T][D]  the token stream */
    float *xn;      /* [T][D]  a branch's input norm(x), or its output before the residual add */
    float *qkv;     /* [T][3D] q, k, v per token (heads contiguous in each) */
    float *attn;    /* [T][D]  attention output, before proj */
    float *hidden;  /* [T][max(fc1 width, D)] the MLP's hidden activations (fc1 width: 2 * hidden for glu) */
    float *gate;    /* [T][hidden] the glu MLP's gated activations (glu only) */
    float *map;     /* [4D + map hidden] the attention-pool head's query, output, norm and MLP rows (map only) */
    float *scores;  /* [threads][T][T] one head's scores per thread */
    float *patches; /* [gh*gw][C*ph*pw] patch rows for the embedding GEMM */
    float *pos;     /* [max(P, T)][D] the position embedding for this grid */
    float *tmp;     /* = patches: the pos-embed resampling scratch, used before patchify */
    float *pooled;  /* [3 * max(D, F) + 2 * classes] features (2 rows if distilled), pre-logits, logits */
    float *relb;    /* [heads][T][T] the block's relative position bias (vit.rel_pos only) */
    float *rope;    /* vit.rope: cos then sin per patch and q/k channel for the whole run, [2][gh*gw][head_dim]
                       (axial) or per block [depth][2][heads][gh*gw][head_dim] (mixed) */
    int gh, gw;     /* the run's patch grid */
    float *rtab;    /* [MLPs][R][heads] each RelPosMlp's output for this grid's R = (2gh-1)(2gw-1) offsets */
    float *rcoord;  /* [R][2] its log-spaced (dy, dx) inputs, then [R][hidden] its hidden rows */
    float *x0;      /* [T][D] a parallel block's input, which every branch reads (vit.parallel only) */
} lmv__vit_bufs;

static size_t lmv__vit_layout(const lmv__vit *v, int gh, int gw, int threads, float *base, lmv__vit_bufs *b) {
    lmv__carver c;
    size_t T = (size_t)gh * gw + v->prefix, D = (size_t)v->dim, patches = (size_t)gh * gw * v->in_chans * v->ph * v->pw;
    size_t gmax = (size_t)(gh > gw ? gh : gw), pmax = (size_t)(v->pos_gh > v->pos_gw ? v->pos_gh : v->pos_gw);
    size_t tmp = (size_t)v->pos_gh * gw * D + (gmax > pmax ? gmax : pmax);
    int fc1 = v->glu ? 2 * v->hidden : v->hidden;
    c.base = base;
    c.used = 0;
    b->gh = gh;
    b->gw = gw;
    b->x = lmv__carve(&c, T * D);
    b->xn = lmv__carve(&c, T * D);
    b->qkv = lmv__carve(&c, T * 3 * D);
    b->attn = lmv__carve(&c, T * D);
    b->hidden = lmv__carve(&c, T * (size_t)(fc1 > v->dim ? fc1 : v->dim));
    b->gate = v->glu ? lmv__carve(&c, T * (size_t)v->hidden) : NULL;
    b->map = v->pool_map ? lmv__carve(&c, 4 * D + (size_t)v->map_hidden) : NULL;
    b->scores = lmv__carve(&c, (size_t)threads * T * T);
    b->patches = lmv__carve(&c, patches > tmp ? patches : tmp);
    b->tmp = b->patches; /* the pos-embed resampling scratch is used before patchify */
    b->pos = lmv__carve(&c, (size_t)v->pos_rows > T ? (size_t)v->pos_rows * D : T * D);
    b->pooled = lmv__carve(&c, 3 * (v->pool_cat ? 2 * D : D > (size_t)v->pre_logits ? D : (size_t)v->pre_logits) +
                                   2 * (size_t)v->num_classes +
                                   3 * (size_t)v->proj);
    b->relb = v->rel_pos || v->rel_mlp ? lmv__carve(&c, (size_t)v->heads * T * T) : NULL;
    b->rope = v->rope ? lmv__carve(&c, 2 * (size_t)gh * gw * (v->rope == LMV__ROPE_MIXED ? (size_t)v->depth * D : D / v->heads))
                      : NULL;
    if (v->rel_mlp) {
        size_t R = (size_t)(2 * gh - 1) * (2 * gw - 1);
        b->rtab = lmv__carve(&c, (size_t)(v->rel_mlp == 1 ? v->depth : 1) * R * v->heads);
        b->rcoord = lmv__carve(&c, R * (size_t)(2 + v->rel_mlp_hidden));
    }
    b->x0 = v->parallel > 1 || v->par_scaling ? lmv__carve(&c, T * D) : NULL;
    return c.used;
}

static lmv_result lmv__vit_plan(const lmv_model *m, int threads, int h, int w, size_t *floats, lmv_error *err) {
    const lmv__vit *v = (const lmv__vit *)m->graph;
    lmv__vit_bufs b;
    int gh = h / v->ph, gw = w / v->pw;
    if (gh < 1 || gw < 1)
        return lmv__fail(err, LMV_ERR_INPUT_SIZE, "input %dx%d is smaller than one %dx%d patch", h, w, v->ph, v->pw);
    if ((size_t)gh * gw + v->prefix > (1u << 20)) return lmv__fail(err, LMV_ERR_LIMIT, "input %dx%d gives too many tokens", h, w);
    if (v->rel_pos && (gh != v->pos_gh || gw != v->pos_gw))
        return lmv__fail(err, LMV_ERR_INPUT_SIZE,
                         "input %dx%d: this model's relative position bias tables are for its trained %dx%d input "
                         "only; resize the image to %dx%d", h, w, v->pos_gh * v->ph, v->pos_gw * v->pw,
                         v->pos_gh * v->ph, v->pos_gw * v->pw);
    if (v->rel_mlp && (size_t)gh * gw > 4096)
        return lmv__fail(err, LMV_ERR_LIMIT, "input %dx%d: the relative position bias allows at most 4096 patches", h, w);
    if (v->rel_mlp && v->rel_mlp_mode && (gh < 2 || gw < 2))
        return lmv__fail(err, LMV_ERR_INPUT_SIZE,
                         "input %dx%d: this model's relative position MLP ('%s' coordinates) needs at least 2x2 "
                         "patches of %dx%d; give a larger image", h, w, v->rel_mlp_mode == 1 ? "swin" : "rw", v->ph, v->pw);
    *floats = lmv__vit_layout(v, gh, gw, threads, NULL, &b);
    return LMV_OK;
}

/* The position embedding for a gh x gw grid, laid out like the token sequence it is added to:
   resampled from the stored grid when the sizes differ, prefix rows kept as they are. */
static void lmv__vit_pos_embed(const lmv__vit *v, int gh, int gw, lmv__vit_bufs *b) {
    size_t D = (size_t)v->dim, np = (size_t)gh * gw;
    int pre = v->no_embed_class ? 0 : v->prefix;
    const float *grid = v->pos_embed + (v->class_last ? 0 : (size_t)pre * D);
    float *dst = b->pos + (v->class_last ? 0 : (size_t)pre * D);
    if (pre) /* prefix rows: first for timm layouts, last for class-last models */
        memcpy(b->pos + (v->class_last ? np * D : 0), v->pos_embed + (v->class_last ? (size_t)v->pos_gh * v->pos_gw * D : 0),
               sizeof(float) * pre * D);
    if (gh == v->pos_gh && gw == v->pos_gw)
        memcpy(dst, grid, sizeof(float) * np * D);
    else
        lmv__resample_grid(v->pos_interp, dst, grid, v->pos_gh, v->pos_gw, gh, gw, v->dim, b->tmp,
                           b->tmp + (size_t)v->pos_gh * gw * D);
}

/* Every norm of the ViT graph: LayerNorm, or RmsNorm for vit.norm "rms". */
static void lmv__vit_norm(const lmv__ctx *ctx, const lmv__vit *v, float *y, const float *x, int rows, int dim,
                          const float *w, const float *b, float eps) {
    if (v->rms) lmv__rmsnorm(ctx, y, x, rows, dim, w, b, eps);
    else lmv__layernorm(ctx, y, x, rows, dim, w, b, eps);
}

/* The gate of a glu MLP (timm GluMlp with gate_last=False, i.e. SwiGLUPacked): each row of h is
   [a | c], hidden wide each; out = act(a) * c. The activation is applied to a in place first. */
static void lmv__vit_glu(const lmv__ctx *ctx, const lmv__vit *v, float *out, float *h, int rows) {
    int r, i, H = v->hidden;
    lmv__ctx one = *ctx; /* the activation runs inside this loop's threads: one thread each */
    one.threads = 1;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, LMV__ROW_CHUNK(ctx, rows)) private(i) num_threads(ctx->threads) if (LMV__SPLIT_ROWS(ctx, rows, 2 * H))
#endif
    for (r = 0; r < rows; r++) {
        float *ar = h + (size_t)r * 2 * H, *o = out + (size_t)r * H;
        const float *cr = ar + H;
        lmv__activate_all(&one, ar, (size_t)H, v->act);
        for (i = 0; i < H; i++) o[i] = ar[i] * cr[i];
    }
    (void)ctx;
}

/* An MLP's first half over in [T][D]: fc1 and the activation (or the glu gate), then its optional
   norm; the result is in b->hidden, or in b->gate for glu, [T][v->hidden]. */
static void lmv__vit_mlp(const lmv__ctx *ctx, const lmv__vit *v, int T, const float *in, lmv__mat fc1_w, const float *fc1_b,
                         const float *nw, const float *nb, lmv__vit_bufs *b) {
    float *h = b->hidden;
    if (v->glu) {
        lmv__linear(ctx, b->hidden, in, T, v->dim, 2 * v->hidden, fc1_w, fc1_b);
        lmv__vit_glu(ctx, v, b->gate, b->hidden, T);
        h = b->gate;
    } else {
        lmv__linear_act(ctx, b->hidden, in, T, v->dim, v->hidden, fc1_w, fc1_b, v->act);
    }
    if (nw) lmv__vit_norm(ctx, v, h, h, T, v->hidden, nw, nb, v->eps);
}

/* qk-norm: q and k of every token and head through their LayerNorm(head_dim), into xn (q) and
   hidden (k), [T][D] each; both are free while attention runs. */
static void lmv__vit_qk_norm(const lmv__ctx *ctx, const lmv__vit *v, const lmv__vit_block *blk, int T, lmv__vit_bufs *b) {
    size_t D = (size_t)v->dim;
    int t, hd = v->dim / v->heads;
    for (t = 0; t < T; t++) {
        memcpy(b->xn + t * D, b->qkv + t * 3 * D, sizeof(float) * D);
        memcpy(b->hidden + t * D, b->qkv + t * 3 * D + D, sizeof(float) * D);
    }
    lmv__vit_norm(ctx, v, b->xn, b->xn, T * v->heads, hd, blk->q_norm_w, blk->q_norm_b, v->eps);
    lmv__vit_norm(ctx, v, b->hidden, b->hidden, T * v->heads, hd, blk->k_norm_w, blk->k_norm_b, v->eps);
}

/* The two grid coordinates a patch's rotary angles use, as timm's RotaryEmbeddingCat (axial) and
   get_mixed_grid (mixed) build them in float32: row y and column x, plus vit.rope_offset and scaled
   to vit.rope_ref_grid (axial only); "ij" gives (row, column), "xy" (column, row). */
static void lmv__vit_rope_coords(const lmv__vit *v, int n, int gh, int gw, float *c0, float *c1) {
    float ty = (float)(n / gw), tx = (float)(n % gw);
    if (v->rope == LMV__ROPE_AXIAL) {
        ty = ty + v->rope_offset;
        tx = tx + v->rope_offset;
        if (v->rope_ref_h || v->rope_ref_w) { /* a reference grid: as timm, 0 on a side zeroes that axis */
            ty = ty / (float)gh * (float)v->rope_ref_h;
            tx = tx / (float)gw * (float)v->rope_ref_w;
        }
    }
    *c0 = v->rope_xy ? tx : ty;
    *c1 = v->rope_xy ? ty : tx;
}

/* The axial table for a gh x gw grid (timm build_rotary_pos_embed, in_pixels=False): head_dim/4
   bands 1 / temperature^(i / (head_dim/4)); channel pair j turns by coordinate j / (head_dim/4)
   times band j % (head_dim/4); both channels of a pair share the angle. cos rows, then sin rows. */
static void lmv__vit_rope_axial(const lmv__vit *v, int gh, int gw, float *tab) {
    int hd = v->dim / v->heads, nb = hd / 4, np = gh * gw, n, j;
    float *sn = tab + (size_t)np * hd;
    for (n = 0; n < np; n++) {
        float c[2];
        lmv__vit_rope_coords(v, n, gh, gw, &c[0], &c[1]);
        for (j = 0; j < hd / 2; j++) {
            float band = 1.0f / powf(v->rope_temp, (float)(j % nb) / (float)nb);
            float a = c[j / nb] * band;
            tab[(size_t)n * hd + 2 * j] = tab[(size_t)n * hd + 2 * j + 1] = (float)cos((double)a);
            sn[(size_t)n * hd + 2 * j] = sn[(size_t)n * hd + 2 * j + 1] = (float)sin((double)a);
        }
    }
}

/* The DINOv3 table for a gh x gw grid (timm RotaryEmbeddingDinoV3, coordinates normalised per side):
   coordinate c = 2 (i + 0.5 + offset) / side - 1, row then column; head_dim/4 periods
   T^(2k / (head_dim/2)); angle 2 pi c / period; with vit.rope_half the head_dim/2 angles are tiled
   twice over the channels, else each is repeated for its channel pair. cos rows, then sin rows. */
static void lmv__vit_rope_dinov3(const lmv__vit *v, int gh, int gw, float *tab) {
    int hd = v->dim / v->heads, nb = hd / 4, np = gh * gw, n, i;
    float *sn = tab + (size_t)np * hd;
    for (n = 0; n < np; n++) {
        float c[2];
        c[0] = ((float)(n / gw) + 0.5f + v->rope_offset) / (float)gh;
        c[1] = ((float)(n % gw) + 0.5f + v->rope_offset) / (float)gw;
        c[0] = 2.0f * c[0] - 1.0f;
        c[1] = 2.0f * c[1] - 1.0f;
        for (i = 0; i < hd; i++) {
            int j = v->rope_half ? i % (hd / 2) : i / 2; /* the angle this channel turns by */
            float period = powf(v->rope_temp, 2.0f * (float)(j % nb) / (float)(hd / 2));
            float a = (float)(2.0 * 3.14159265358979323846) * c[j / nb] / period;
            tab[(size_t)n * hd + i] = cosf(a);
            sn[(size_t)n * hd + i] = sinf(a);
        }
    }
}

/* The mixed table of one block (timm get_mixed_freqs): pair j of head h turns by
   c0 * fx[h][j] + c1 * fy[h][j], the block's learned frequencies. [heads][np][hd] cos, then sin;
   the forward pass fills every block's before the batch. */
static void lmv__vit_rope_mixed(const lmv__ctx *ctx, const lmv__vit *v, const lmv__vit_block *blk, int gh, int gw,
                                float *tab) {
    int hd = v->dim / v->heads, np = gh * gw, hn, j;
    size_t half = (size_t)v->heads * np * hd;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) private(j) num_threads(ctx->threads) if (LMV__SPLIT_ROWS(ctx, v->heads * np, 8 * hd))
#endif
    for (hn = 0; hn < v->heads * np; hn++) { /* head hn / np, patch hn % np */
        int h = hn / np, n = hn % np;
        float c0, c1;
        float *co = tab + (size_t)hn * hd;
        lmv__vit_rope_coords(v, n, gh, gw, &c0, &c1);
        for (j = 0; j < hd / 2; j++) {
            float a = c0 * blk->rope_fx[(size_t)h * (hd / 2) + j] + c1 * blk->rope_fy[(size_t)h * (hd / 2) + j];
            co[2 * j] = co[2 * j + 1] = cosf(a);
            co[half + 2 * j] = co[half + 2 * j + 1] = sinf(a);
        }
    }
    (void)ctx;
}

/* Rotary position embedding in place on the patch rows of q [T][ldq] and k (timm
   apply_rot_embed_cat): x cos + rot(x) sin, rot turning channel pairs (x0, x1) -> (-x1, x0), or with
   vit.rope_half the halves (a, b) -> (-b, a). Prefix tokens (class, register) are left as they are. */
static void lmv__vit_rope(const lmv__ctx *ctx, const lmv__vit *v, const lmv__vit_block *blk, float *q, size_t ldq,
                          float *k, size_t ldk, lmv__vit_bufs *b) {
    int hd = v->dim / v->heads, H = v->heads, np = b->gh * b->gw, n, h, i, hh = hd / 2;
    int mixed = v->rope == LMV__ROPE_MIXED;
    size_t half = (size_t)np * hd * (mixed ? H : 1);
    const float *tab = b->rope + (mixed ? (size_t)(blk - v->blocks) * 2 * half : 0);
#ifdef _OPENMP
#pragma omp parallel for schedule(static) private(h, i) num_threads(ctx->threads) if (LMV__SPLIT_ROWS(ctx, np, 2 * v->dim))
#endif
    for (n = 0; n < np; n++) {
        for (h = 0; h < 2 * H; h++) { /* q's heads, then k's */
            float *x = h < H ? q + (size_t)(n + v->prefix) * ldq + (size_t)h * hd
                             : k + (size_t)(n + v->prefix) * ldk + (size_t)(h - H) * hd;
            const float *co = tab + ((mixed ? (size_t)(h % H) * np : 0) + n) * hd, *si = co + half;
            for (i = 0; i < hh; i++) {
                int a0 = v->rope_half ? i : 2 * i, a1 = v->rope_half ? i + hh : 2 * i + 1;
                float x0 = x[a0], x1 = x[a1];
                x[a0] = x0 * co[a0] + -x1 * si[a0];
                x[a1] = x1 * co[a1] + x0 * si[a1];
            }
        }
    }
    (void)ctx;
}

/* The input of a residual branch: norm(x) into xn for pre-norm blocks, x itself otherwise. */
static const float *lmv__vit_branch_in(const lmv__ctx *ctx, const lmv__vit *v, int T, const float *nw, const float *nb,
                                       lmv__vit_bufs *b) {
    if (v->norm_at != LMV__NORM_PRE) return b->x;
    lmv__vit_norm(ctx, v, b->xn, b->x, T, v->dim, nw, nb, v->eps);
    return b->xn;
}

/* The end of a residual branch whose last layer is the Linear (W, bias) over h [T][in]:
   pre-norm  x = x + ls * (h W^T + bias);  post-norm  x = norm(x + h W^T + bias);
   res-post  x = x + norm(h W^T + bias). xn is scratch (the branch input is used up by then). */
static void lmv__vit_branch_out(const lmv__ctx *ctx, const lmv__vit *v, int T, const float *h, int in, lmv__mat W,
                                const float *bias, const float *ls, const float *nw, const float *nb, lmv__vit_bufs *b) {
    int D = v->dim;
    if (v->norm_at == LMV__NORM_RES_POST) {
        lmv__linear(ctx, b->xn, h, T, in, D, W, bias);
        lmv__vit_norm(ctx, v, b->xn, b->xn, T, D, nw, nb, v->eps);
        lmv__add_scaled(ctx, b->x, b->xn, T, D, NULL);
        return;
    }
    lmv__linear_residual(ctx, b->x, h, T, in, D, W, bias, ls, b->xn);
    if (v->norm_at == LMV__NORM_POST) lmv__vit_norm(ctx, v, b->x, b->x, T, D, nw, nb, v->eps);
}

/* A RelPosMlp's bias [heads][T][T] for the gh x gw grid from its outputs tab [R][heads]: patch
   (yi, xi) to patch (yj, xj) reads row (yi - yj + gh - 1) * (2gw - 1) + xi - xj + gw - 1; the class
   token's row and column are zero (timm pads the bias for prefix tokens). */
static void lmv__vit_rel_mlp_bias(const lmv__vit *v, const float *tab, int gh, int gw, float *bias) {
    int c = v->class_token, G = gh * gw, T = G + c, H = v->heads, h, i, j;
    size_t n = (size_t)T * T;
    for (h = 0; h < H; h++) {
        float *o = bias + (size_t)h * n;
        if (c) {
            for (j = 0; j < T; j++) o[j] = 0.0f;
            for (i = 1; i < T; i++) o[(size_t)i * T] = 0.0f;
        }
        for (i = 0; i < G; i++) {
            int yi = i / gw, xi = i % gw;
            float *row = o + (size_t)(i + c) * T + c;
            for (j = 0; j < G; j++)
                row[j] = tab[(size_t)((yi - j / gw + gh - 1) * (2 * gw - 1) + xi - j % gw + gw - 1) * H + h];
        }
    }
}

/* The RelPosMlp outputs for the buffers' grid into b->rtab [MLPs][R][heads], as timm's
   gen_relative_log_coords and RelPosMlp.get_bias: row (dy + gh - 1) * (2gw - 1) + dx + gw - 1 is
   the offset (dy, dx), each coordinate d mapped by mode 'cr' to sign(d) ln(1 + |d|), by 'swin' to
   e = 8 d / (g - 1), sign(e) log2(1 + |e|) / 3, by 'rw' (older timm) to the same over log2(9)
   instead of 3; then fc1, ReLU, fc2 and for 'swin' 16 sigmoid, for 'rw' 4 tanh.
   A shared MLP's bias is the same for every block: expanded once here into b->relb. */
static void lmv__vit_rel_mlp_tables(const lmv__ctx *ctx, const lmv__vit *v, lmv__vit_bufs *b) {
    int gh = b->gh, gw = b->gw, R = (2 * gh - 1) * (2 * gw - 1), n = v->rel_mlp == 1 ? v->depth : 1, H = v->heads, r, i, k;
    float *hid = b->rcoord + (size_t)2 * R;
    size_t p;
    for (r = 0; r < R; r++)
        for (k = 0; k < 2; k++) {
            float d = (float)(k ? r % (2 * gw - 1) - (gw - 1) : r / (2 * gw - 1) - (gh - 1)), a;
            if (v->rel_mlp_mode) {
                d = d / (float)((k ? gw : gh) - 1);
                d *= 8.0f;
                a = log2f(1.0f + fabsf(d)) / (v->rel_mlp_mode == 1 ? 3.0f : (float)(log(9.0) / log(2.0)));
            } else {
                a = logf(1.0f + fabsf(d));
            }
            b->rcoord[2 * r + k] = d > 0.0f ? a : d < 0.0f ? -a : 0.0f;
        }
    for (i = 0; i < n; i++) {
        const lmv__vit_relmlp *q = &v->rel_mlps[i];
        float *t = b->rtab + (size_t)i * R * H;
        lmv__linear_act(ctx, hid, b->rcoord, R, 2, v->rel_mlp_hidden, q->fc1_w, q->fc1_b, LMV__ACT_RELU);
        lmv__linear(ctx, t, hid, R, v->rel_mlp_hidden, H, q->fc2_w, q->fc2_b);
        if (v->rel_mlp_mode == 1)
            for (p = 0; p < (size_t)R * H; p++) t[p] = 16.0f / (1.0f + expf(-t[p]));
        else if (v->rel_mlp_mode == 2)
            for (p = 0; p < (size_t)R * H; p++) t[p] = 4.0f * tanhf(t[p]);
    }
    if (v->rel_mlp == 2) lmv__vit_rel_mlp_bias(v, b->rtab, gh, gw, b->relb);
}

/* One encoder block, the norms placed by v->norm_at (see lmv__norm_at):
     attention: qkv = Linear(in); softmax(q k^T * scale) v; proj, residual
     MLP:       fc1, act, fc2, residual */
static void lmv__vit_block_forward(const lmv__ctx *ctx, const lmv__vit *v, const lmv__vit_block *blk, int T,
                                   lmv__vit_bufs *b, float *probs) {
    int D = v->dim;
    lmv__attn_args a;
    const float *in = lmv__vit_branch_in(ctx, v, T, blk->norm1_w, blk->norm1_b, b);
    lmv__linear(ctx, b->qkv, in, T, D, 3 * D, blk->qkv_w, blk->qkv_b);
    if (blk->q_norm_w) lmv__vit_qk_norm(ctx, v, blk, T, b);
    memset(&a, 0, sizeof a);
    a.groups = 1;
    a.heads = v->heads;
    a.head_dim = D / v->heads;
    a.nq = a.nk = T;
    a.q = b->qkv;
    a.k = b->qkv + D;
    a.v = b->qkv + 2 * D;
    a.ldq = a.ldk = a.ldv = (size_t)3 * D;
    if (blk->q_norm_w) { /* the normed q and k rows, [T][D] each */
        a.q = b->xn;
        a.k = b->hidden;
        a.ldq = a.ldk = (size_t)D;
    }
    if (v->rope) /* on q and k after any qk-norm, as timm's EvaAttention */
        lmv__vit_rope(ctx, v, blk, blk->q_norm_w ? b->xn : b->qkv, a.ldq, blk->q_norm_w ? b->hidden : b->qkv + D, a.ldk, b);
    a.out = b->attn;
    a.ldo = (size_t)D;
    a.scale = v->scale;
    a.scores = b->scores;
    a.probs = probs;
    if (v->rel_pos) {
        lmv__vit_rel_bias(v, blk, T, b->relb);
        a.bias = b->relb;
    }
    if (v->rel_mlp) { /* mlp_shared: b->relb was filled for the whole run */
        if (v->rel_mlp == 1)
            lmv__vit_rel_mlp_bias(v, b->rtab + (size_t)(blk - v->blocks) * (2 * b->gh - 1) * (2 * b->gw - 1) * v->heads,
                                  b->gh, b->gw, b->relb);
        a.bias = b->relb;
    }
    lmv__attention(ctx, &a);
    if (blk->attn_norm_w) lmv__vit_norm(ctx, v, b->attn, b->attn, T, D, blk->attn_norm_w, blk->attn_norm_b, v->eps);
    lmv__vit_branch_out(ctx, v, T, b->attn, D, blk->proj_w, blk->proj_b, blk->ls1, blk->norm1_w, blk->norm1_b, b);

    in = lmv__vit_branch_in(ctx, v, T, blk->norm2_w, blk->norm2_b, b);
    lmv__vit_mlp(ctx, v, T, in, blk->fc1_w, blk->fc1_b, blk->mlp_norm_w, blk->mlp_norm_b, b);
    lmv__vit_branch_out(ctx, v, T, v->glu ? b->gate : b->hidden, v->hidden, blk->fc2_w, blk->fc2_b, blk->ls2, blk->norm2_w,
                        blk->norm2_b, b);
}

/* A parallel block (vit.parallel K, timm ParallelThingsBlock) from b->x:
     x = x + sum_k ls1_k proj_k(attention_k(norm1_k(x)));  x = x + sum_k ls2_k mlp_k(norm2_k(x))
   every branch reading the half-block's input x0. probs, when asked for, get the first branch's maps. */
static void lmv__vit_parallel_forward(const lmv__ctx *ctx, const lmv__vit *v, int i, int T, lmv__vit_bufs *b,
                                      float *probs) {
    int D = v->dim, K = v->parallel, k;
    lmv__attn_args a;
    memcpy(b->x0, b->x, sizeof(float) * (size_t)T * D);
    for (k = 0; k < K; k++) {
        const lmv__vit_block *blk = &v->blocks[i * K + k];
        lmv__vit_norm(ctx, v, b->xn, b->x0, T, D, blk->norm1_w, blk->norm1_b, v->eps);
        lmv__linear(ctx, b->qkv, b->xn, T, D, 3 * D, blk->qkv_w, blk->qkv_b);
        if (blk->q_norm_w) lmv__vit_qk_norm(ctx, v, blk, T, b);
        memset(&a, 0, sizeof a);
        a.groups = 1;
        a.heads = v->heads;
        a.head_dim = D / v->heads;
        a.nq = a.nk = T;
        a.q = blk->q_norm_w ? b->xn : b->qkv;
        a.k = blk->q_norm_w ? b->hidden : b->qkv + D;
        a.v = b->qkv + 2 * D;
        a.ldq = a.ldk = blk->q_norm_w ? (size_t)D : (size_t)3 * D;
        a.ldv = (size_t)3 * D;
        a.out = b->attn;
        a.ldo = (size_t)D;
        a.scale = v->scale;
        a.scores = b->scores;
        a.probs = k ? NULL : probs;
        lmv__attention(ctx, &a);
        if (blk->attn_norm_w) lmv__vit_norm(ctx, v, b->attn, b->attn, T, D, blk->attn_norm_w, blk->attn_norm_b, v->eps);
        lmv__linear_residual(ctx, b->x, b->attn, T, D, D, blk->proj_w, blk->proj_b, blk->ls1, b->xn);
    }
    memcpy(b->x0, b->x, sizeof(float) * (size_t)T * D);
    for (k = 0; k < K; k++) {
        const lmv__vit_block *blk = &v->blocks[i * K + k];
        lmv__vit_norm(ctx, v, b->xn, b->x0, T, D, blk->norm2_w, blk->norm2_b, v->eps);
        lmv__vit_mlp(ctx, v, T, b->xn, blk->fc1_w, blk->fc1_b, blk->mlp_norm_w, blk->mlp_norm_b, b);
        lmv__linear_residual(ctx, b->x, v->glu ? b->gate : b->hidden, T, v->hidden, D, blk->fc2_w, blk->fc2_b, blk->ls2,
                             b->xn);
    }
}

/* timm's ParallelScalingBlock (vit.block "parallel_scaling"), its fused in_proj stored as mlp.fc1
   and attn.qkv, its out projections as attn.proj and mlp.fc2, its one layer scale as ls1:
     y = norm1(x);  x = x + ls1 * (proj(attention(qkv(y))) + fc2(act(fc1(y))))
   the MLP's activations are made first (in b->hidden), qk-norm's k goes to b->x0. */
static void lmv__vit_scaling_forward(const lmv__ctx *ctx, const lmv__vit *v, const lmv__vit_block *blk, int T,
                                     lmv__vit_bufs *b, float *probs) {
    int D = v->dim, hd = v->dim / v->heads, t;
    lmv__attn_args a;
    lmv__vit_norm(ctx, v, b->xn, b->x, T, D, blk->norm1_w, blk->norm1_b, v->eps);
    lmv__vit_mlp(ctx, v, T, b->xn, blk->fc1_w, blk->fc1_b, NULL, NULL, b);
    lmv__linear(ctx, b->qkv, b->xn, T, D, 3 * D, blk->qkv_w, blk->qkv_b);
    memset(&a, 0, sizeof a);
    a.q = b->qkv;
    a.k = b->qkv + D;
    a.ldq = a.ldk = (size_t)3 * D;
    if (blk->q_norm_w) {
        for (t = 0; t < T; t++) {
            memcpy(b->xn + (size_t)t * D, b->qkv + (size_t)t * 3 * D, sizeof(float) * D);
            memcpy(b->x0 + (size_t)t * D, b->qkv + (size_t)t * 3 * D + D, sizeof(float) * D);
        }
        lmv__vit_norm(ctx, v, b->xn, b->xn, T * v->heads, hd, blk->q_norm_w, blk->q_norm_b, v->eps);
        lmv__vit_norm(ctx, v, b->x0, b->x0, T * v->heads, hd, blk->k_norm_w, blk->k_norm_b, v->eps);
        a.q = b->xn;
        a.k = b->x0;
        a.ldq = a.ldk = (size_t)D;
    }
    a.groups = 1;
    a.heads = v->heads;
    a.head_dim = hd;
    a.nq = a.nk = T;
    a.v = b->qkv + 2 * D;
    a.ldv = (size_t)3 * D;
    a.out = b->attn;
    a.ldo = (size_t)D;
    a.scale = v->scale;
    a.scores = b->scores;
    a.probs = probs;
    lmv__attention(ctx, &a);
    lmv__linear_residual(ctx, b->x, b->attn, T, D, D, blk->proj_w, blk->proj_b, blk->ls1, b->xn);
    lmv__linear_residual(ctx, b->x, b->hidden, T, v->hidden, D, blk->fc2_w, blk->fc2_b, blk->ls1, b->xn);
}

/* Block i with its trace hook: its attention maps go to the session's capture buffer when they
   were asked for, then the maps and the block's output to the trace callback (`trace`: this image
   is the traced one). */
static void lmv__vit_block_hooked(lmv_session *s, const lmv__ctx *ctx, const lmv__vit *v, int i, int T, lmv__vit_bufs *b,
                                  int trace) {
    char name[32];
    float *probs = NULL;
    if (trace) {
        lmv__name(name, sizeof name, "blocks.%d", i);
        probs = lmv__attn_capture(s, name, (size_t)v->heads * T * T);
    }
    if (v->parallel > 1) lmv__vit_parallel_forward(ctx, v, i, T, b, probs);
    else if (v->par_scaling) lmv__vit_scaling_forward(ctx, v, &v->blocks[i], T, b, probs);
    else lmv__vit_block_forward(ctx, v, &v->blocks[i], T, b, probs);
    if (!trace) return;
    if (probs) {
        lmv__name(name, sizeof name, "blocks.%d.attn", i);
        lmv__trace(s, name, probs, 3, v->heads, T, T);
    }
    lmv__name(name, sizeof name, "blocks.%d", i);
    lmv__trace(s, name, b->x, 2, T, v->dim, 0);
}

/* timm's AttentionPoolLatent with one latent query over x [n][D] (the normed tokens):
   y = proj(attention(q(latent), kv(x))); feat = y + mlp(norm(y)). kv goes to b->qkv. */
static void lmv__vit_attn_pool(const lmv__ctx *ctx, const lmv__vit *v, const float *x, int n, float *feat, lmv__vit_bufs *b) {
    int D = v->dim, Hp = v->map_hidden;
    float *q = b->map, *o = b->map + D, *y = b->map + 2 * D, *z = b->map + 3 * D, *h = b->map + 4 * D;
    lmv__attn_args a;
    lmv__linear(ctx, b->qkv, x, n, D, 2 * D, v->map_kv_w, v->map_kv_b);
    lmv__linear(ctx, q, v->map_latent, 1, D, D, v->map_q_w, v->map_q_b);
    memset(&a, 0, sizeof a);
    a.groups = 1;
    a.heads = v->map_heads;
    a.head_dim = D / v->map_heads;
    a.nq = 1;
    a.nk = n;
    a.q = q;
    a.k = b->qkv;
    a.v = b->qkv + D;
    a.ldq = a.ldo = (size_t)D;
    a.ldk = a.ldv = (size_t)2 * D;
    a.out = o;
    a.scale = (float)(1.0 / sqrt((double)a.head_dim));
    a.scores = b->scores;
    lmv__attention(ctx, &a);
    lmv__linear(ctx, y, o, 1, D, D, v->map_proj_w, v->map_proj_b);
    lmv__vit_norm(ctx, v, z, y, 1, D, v->map_norm_w, v->map_norm_b, v->eps);
    lmv__linear_act(ctx, h, z, 1, D, Hp, v->map_fc1_w, v->map_fc1_b, v->act);
    lmv__linear_residual(ctx, y, h, 1, Hp, D, v->map_fc2_w, v->map_fc2_b, NULL, NULL);
    memcpy(feat, y, sizeof(float) * D);
}

/* feat (the pooled features, vit.embed_dim wide) times the embedding projection, back into feat;
   `tmp` has room for vit.proj floats. */
static void lmv__vit_project(const lmv__ctx *ctx, const lmv__vit *v, float *feat, float *tmp, const lmv_session *trace) {
    lmv__linear(ctx, tmp, feat, 1, v->dim, v->proj, v->proj_w, v->proj_b);
    memcpy(feat, tmp, sizeof(float) * (size_t)v->proj);
    if (trace) lmv__trace(trace, "proj", feat, 1, v->proj, 0, 0);
}

static lmv_result lmv__vit_forward(lmv_session *s, const lmv__ctx *ctx, float *arena, const float *input, int batch,
                                   int h, int w, float *out, int features, lmv_error *err) {
    const lmv__vit *v = (const lmv__vit *)s->model->graph;
    int gh = h / v->ph, gw = w / v->pw, T = gh * gw + v->prefix, D = v->dim, n, i;
    int np = gh * gw, F = s->model->info.num_features, C = v->num_classes, P = D > F ? D : F;
    size_t img = (size_t)v->in_chans * h * w;
    lmv__vit_bufs b;
    lmv__vit_layout(v, gh, gw, ctx->threads, arena, &b);
    (void)err;
    /* the position embedding for this grid, once for the whole batch (its resampling scratch
       shares memory with the patch rows, which are only filled later) */
    if (v->abs_pos) lmv__vit_pos_embed(v, gh, gw, &b);
    if (v->rope == LMV__ROPE_AXIAL) lmv__vit_rope_axial(v, gh, gw, b.rope);
    if (v->rope == LMV__ROPE_DINOV3) lmv__vit_rope_dinov3(v, gh, gw, b.rope);
    for (i = 0; v->rope == LMV__ROPE_MIXED && i < v->depth; i++) /* every block's table, once for the batch */
        lmv__vit_rope_mixed(ctx, v, &v->blocks[i], gh, gw, b.rope + (size_t)i * 2 * np * D);
    if (v->rel_mlp) lmv__vit_rel_mlp_tables(ctx, v, &b); /* the relative position MLPs for this grid, once */
    for (n = 0; n < batch; n++) {
        /* pooled: features (two rows when distilled), the pre-logits output, the logits */
        float *tokens, *feat = b.pooled, *pre = b.pooled + 2 * P, *logits = b.pooled + 3 * P;
        const int trace = n == 0;
        /* patch_embed: Conv2d(k = stride = patch) as one GEMM, tokens in row-major grid order */
        tokens = v->class_last ? b.x : b.x + (size_t)v->prefix * D;
        lmv__im2col(ctx, b.patches, input + n * img, h, w, v->in_chans, (size_t)w, 1, (size_t)h * w, v->ph, v->pw, v->ph, v->pw, 0,
                    gh, gw);
        lmv__linear(ctx, tokens, b.patches, np, v->in_chans * v->ph * v->pw, D, v->patch_w, v->patch_b);
        if (v->patch_norm_w) lmv__vit_norm(ctx, v, tokens, tokens, np, D, v->patch_norm_w, v->patch_norm_b, v->eps);
        if (trace) lmv__trace(s, "patch_embed", tokens, 2, np, D, 0);
        /* prefix tokens and position embedding */
        if (v->abs_pos && v->no_embed_class) lmv__add_scaled(ctx, tokens, b.pos, np, D, NULL);
        if (v->class_token) memcpy(v->class_last ? b.x + (size_t)np * D : b.x, v->cls_token, sizeof(float) * D);
        if (v->dist_token) memcpy(b.x + D, v->dist_token_w, sizeof(float) * D);
        if (v->reg_tokens)
            memcpy(b.x + (size_t)(v->class_token + v->dist_token) * D, v->reg_token, sizeof(float) * D * v->reg_tokens);
        if (v->abs_pos && !v->no_embed_class) lmv__add_scaled(ctx, b.x, b.pos, T, D, NULL);
        if (v->norm_pre_w) lmv__vit_norm(ctx, v, b.x, b.x, T, D, v->norm_pre_w, v->norm_pre_b, v->eps);
        if (trace) lmv__trace(s, "embed", b.x, 2, T, D, 0);

        for (i = 0; i < v->depth; i++) lmv__vit_block_hooked(s, ctx, v, i, T, &b, trace);
        if (v->norm_w) lmv__vit_norm(ctx, v, b.x, b.x, T, D, v->norm_w, v->norm_b, v->eps);
        if (trace) lmv__trace(s, "norm", b.x, 2, T, D, 0);

        /* pool: the class token (DeiT distilled: mean of class and distillation tokens), the
           mean of the patch tokens, or both side by side (token_avg) */
        if (v->pool_map) {
            lmv__vit_attn_pool(ctx, v, v->pool_prefix ? b.x : b.x + (size_t)v->prefix * D, v->pool_prefix ? T : np, feat, &b);
        } else if (v->pool_avg) {
            lmv__mean_rows(feat, b.x + (v->class_last ? 0 : (size_t)v->prefix * D), np, D);
        } else if (v->pool_cat) { /* the class token, then the mean of the patch tokens (registers left out) */
            memcpy(feat, v->class_last ? b.x + (size_t)np * D : b.x, sizeof(float) * D);
            lmv__mean_rows(feat + D, b.x + (v->class_last ? 0 : (size_t)v->prefix * D), np, D);
        } else {
            memcpy(feat, v->class_last ? b.x + (size_t)np * D : b.x, sizeof(float) * D);
            if (v->dist_token) memcpy(feat + D, b.x + D, sizeof(float) * D);
        }
        if (v->fc_norm_w) lmv__vit_norm(ctx, v, feat, feat, 1 + v->dist_token, D, v->fc_norm_w, v->fc_norm_b, v->eps);
        if (v->pre_logits) {
            lmv__linear(ctx, pre, feat, 1, D, F, v->pre_logits_w, v->pre_logits_b);
            lmv__activate_all(ctx, pre, (size_t)F, LMV__ACT_TANH);
            memcpy(feat, pre, sizeof(float) * F);
        }
        if (v->proj) lmv__vit_project(ctx, v, feat, pre, trace ? s : NULL);
        if (features) {
            float *o = out + (size_t)n * F;
            int d;
            for (d = 0; d < F; d++) o[d] = v->dist_token ? (feat[d] + feat[D + d]) * 0.5f : feat[d];
            continue;
        }
        lmv__linear(ctx, logits, feat, 1, F, C, v->head_w, v->head_b);
        if (v->dist_token) {
            int c;
            lmv__linear(ctx, logits + C, feat + D, 1, F, C, v->head_dist_w, v->head_dist_b);
            for (c = 0; c < C; c++) logits[c] = (logits[c] + logits[C + c]) * 0.5f;
        }
        memcpy(out + (size_t)n * C, logits, sizeof(float) * C);
    }
    return LMV_OK;
}

static const lmv__family_ops lmv__vit_ops = {"vit", LMV_FAMILY_VIT, lmv__vit_bind, lmv__vit_plan, lmv__vit_forward,
                                             lmv__vit_unbind};

/* --------------------------------------------------------------------------------------------
   Model graphs: Swin Transformer (V1 and V2)
   -------------------------------------------------------------------------------------------- */

#define LMV__SWIN_MAX_STAGES 8

typedef struct lmv__swin_block {
    const float *norm1_w, *norm1_b, *table, *qkv_b, *proj_b;
    const float *norm2_w, *norm2_b, *fc1_b, *fc2_b;
    const float *logit_scale, *cpb_w1, *cpb_b1, *cpb_w2; /* V2: cosine attention, continuous position bias */
    float *cpb_table; /* V2: 16 * sigmoid(cpb_mlp) over the stage's own window, made once at bind */
    lmv__mat qkv_w, proj_w, fc1_w, fc2_w;
} lmv__swin_block;

typedef struct lmv__swin_stage {
    int dim, depth, heads, hidden, window, pretrained_window;
    lmv__swin_block *blocks;
    const float *merge_norm_w, *merge_norm_b;
    lmv__mat merge_w; /* PatchMerging at the end, or absent */
} lmv__swin_stage;

typedef struct lmv__swin {
    int n_stages, patch, window, in_chans, num_classes, pad_then_roll, shift_rule, grid_h, grid_w, v2, cpb_hidden;
    int fixed_gh, fixed_gw; /* V2: windows and shifts decided on this grid (img_size's), not the input's; 0: the input's */
    int fixed_window;       /* V2 (torchvision): the stage's window whatever the map (padded, never shrunk), shifts
                               dropped on the real map as V1 does */
    float eps;
    const float *patch_b, *patch_norm_w, *patch_norm_b, *ape;
    const float *norm_w, *norm_b, *head_b;
    lmv__mat patch_w, head_w;
    lmv__swin_stage stages[LMV__SWIN_MAX_STAGES];
} lmv__swin;

/* Swin V2's continuous position bias for a wh x ww window: the log-spaced relative coordinates
   (dy, dx) / (pretrained window - 1, or window - 1 without one) * 8 -> sign * log2(|c| + 1) / 3,
   through Linear(2, hid) + ReLU + Linear(hid, heads), then 16 * sigmoid.  table[(2wh-1)(2ww-1)][heads]
   in the V1 table's order; hbuf holds hid floats. */
static void lmv__swin_cpb(float *table, const lmv__swin_block *blk, int hid, int heads, int wh, int ww, int pwh, int pww,
                          float *hbuf) {
    int dy, dx, k, h;
    float nh = (float)(pwh > 0 ? pwh - 1 : wh - 1), nw = (float)(pww > 0 ? pww - 1 : ww - 1);
    for (dy = -(wh - 1); dy < wh; dy++)
        for (dx = -(ww - 1); dx < ww; dx++) {
            float c[2], *o = table + ((size_t)(dy + wh - 1) * (2 * ww - 1) + (size_t)(dx + ww - 1)) * heads;
            c[0] = (float)dy / nh * 8.0f;
            c[1] = (float)dx / nw * 8.0f;
            for (k = 0; k < 2; k++) {
                float a = (float)log2((double)fabsf(c[k]) + 1.0) / (float)log2(8.0);
                c[k] = c[k] > 0.0f ? a : c[k] < 0.0f ? -a : 0.0f;
            }
            for (k = 0; k < hid; k++) {
                float s = blk->cpb_b1[k] + blk->cpb_w1[2 * k] * c[0] + blk->cpb_w1[2 * k + 1] * c[1];
                hbuf[k] = s > 0.0f ? s : 0.0f;
            }
            for (h = 0; h < heads; h++) {
                const float *wr = blk->cpb_w2 + (size_t)h * hid;
                float s = 0.0f;
                for (k = 0; k < hid; k++) s += wr[k] * hbuf[k];
                o[h] = 16.0f / (1.0f + expf(-s));
            }
        }
}

static lmv_result lmv__swin_bind(lmv_model *m, lmv_error *err) {
    lmv__swin *v;
    lmv_result r;
    const char *s;
    char name[96];
    int i, j, n, C;
    const lmv__meta *wmeta;
    v = (lmv__swin *)lmv__alloc(&m->allocator, sizeof(lmv__swin));
    if (!v) return lmv__fail(err, LMV_ERR_OUT_OF_MEMORY, "out of memory binding the Swin graph");
    memset(v, 0, sizeof *v);
    m->graph = v;
    {
        const lmv__meta *d = lmv__find_meta(m, "swin.depths");
        if (!d || d->type != 1 || d->count < 1 || d->count > LMV__SWIN_MAX_STAGES)
            return lmv__fail(err, LMV_ERR_CORRUPT, "swin.depths must list 1 to 8 stage depths");
        v->n_stages = d->count;
    }
    wmeta = lmv__find_meta(m, "swin.window_size"); /* one window for every stage, or one per stage */
    if ((r = lmv__meta_int_range(m, "swin.patch_size", 0, 1, 1024, -1, &v->patch, err)) != LMV_OK ||
        (r = lmv__meta_int_range(m, "swin.embed_dim", 0, 1, 1 << 15, -1, &C, err)) != LMV_OK ||
        (r = lmv__meta_int_range(m, "swin.version", 0, 1, 2, 1, &v->v2, err)) != LMV_OK ||
        (r = lmv__meta_int_range(m, "in_chans", 0, 1, 64, 3, &v->in_chans, err)) != LMV_OK ||
        (r = lmv__meta_int_range(m, "num_classes", 0, 0, 1 << 20, 0, &v->num_classes, err)) != LMV_OK)
        return r;
    v->v2 = v->v2 == 2;
    v->eps = lmv__meta_float(m, "swin.norm_eps", 0, 1e-5f);
    if (!(v->eps > 0.0f && v->eps < 1.0f)) return lmv__fail(err, LMV_ERR_CORRUPT, "swin.norm_eps is not in (0, 1)");
    s = lmv__meta_string(m, "swin.pad_mode", "pad_then_roll");
    if (!strcmp(s, "pad_then_roll")) v->pad_then_roll = 1;
    else if (strcmp(s, "roll_then_pad"))
        return lmv__fail(err, LMV_ERR_UNSUPPORTED, "swin.pad_mode '%s' is not pad_then_roll or roll_then_pad", s);
    s = lmv__meta_string(m, "swin.shift_rule", "per_axis");
    if (!strcmp(s, "per_axis")) v->shift_rule = 0;
    else if (!strcmp(s, "min")) v->shift_rule = 1;
    else if (!strcmp(s, "always")) v->shift_rule = 2;
    else return lmv__fail(err, LMV_ERR_UNSUPPORTED, "swin.shift_rule '%s' is not per_axis, min or always", s);
    s = lmv__meta_string(m, "swin.window_from", "input");
    if (!strcmp(s, "img_size")) {
        v->fixed_gh = m->info.img_h / v->patch;
        v->fixed_gw = m->info.img_w / v->patch;
        if (v->fixed_gh < 1 || v->fixed_gw < 1)
            return lmv__fail(err, LMV_ERR_CORRUPT, "img_size is smaller than one %d-pixel patch; convert again with "
                                                   "--img-size at least that", v->patch);
    } else if (!strcmp(s, "fixed"))
        v->fixed_window = 1;
    else if (strcmp(s, "input"))
        return lmv__fail(err, LMV_ERR_UNSUPPORTED, "swin.window_from '%s' is not input, img_size or fixed", s);
    if (v->v2 && v->shift_rule == 2)
        return lmv__fail(err, LMV_ERR_UNSUPPORTED, "swin.shift_rule 'always' is a Swin V1 convention; V2 files use "
                                                   "per_axis or min");
    {
        int shape4[4];
        shape4[0] = C; shape4[1] = v->in_chans; shape4[2] = v->patch; shape4[3] = v->patch;
        if ((r = lmv__matrix(m, "patch_embed.proj.weight", 0, 4, shape4, &v->patch_w, err)) != LMV_OK ||
            (r = lmv__w1(m, 1, C, &v->patch_b, err, "patch_embed.proj.bias")) != LMV_OK ||
            (r = lmv__w1(m, 1, C, &v->patch_norm_w, err, "patch_embed.norm.weight")) != LMV_OK ||
            (r = lmv__w1(m, 1, C, &v->patch_norm_b, err, "patch_embed.norm.bias")) != LMV_OK)
            return r;
    }
    {
        const lmv__tensor *t = lmv__find_tensor(m, "absolute_pos_embed");
        if (t) {
            int shape3[3];
            int gh = m->info.img_h / v->patch, gw = m->info.img_w / v->patch;
            shape3[0] = 1; shape3[1] = gh * gw; shape3[2] = C;
            if ((r = lmv__weight(m, "absolute_pos_embed", 0, 3, shape3, &v->ape, err)) != LMV_OK) return r;
            v->grid_h = gh;
            v->grid_w = gw;
        }
    }
    if (v->v2) { /* the cpb MLP's hidden width, from the first block's first layer */
        const lmv__tensor *t = NULL;
        for (i = 0; i < v->n_stages && !t; i++) {
            lmv__name(name, sizeof name, "layers.%d.blocks.0.attn.cpb_mlp.0.weight", i);
            t = lmv__find_tensor(m, name);
        }
        if (!t || t->ndim != 2 || t->shape[0] < 1 || t->shape[0] > 1 << 14)
            return lmv__fail(err, LMV_ERR_CORRUPT, "Swin V2 file without a usable attn.cpb_mlp.0.weight [hidden, 2]; "
                                                   "convert the checkpoint again");
        v->cpb_hidden = t->shape[0];
    }
    for (i = 0; i < v->n_stages; i++) {
        lmv__swin_stage *st = &v->stages[i];
        int ws;
        if ((r = lmv__meta_int_range(m, "swin.depths", i, 0, 1024, -1, &st->depth, err)) != LMV_OK ||
            (r = lmv__meta_int_range(m, "swin.num_heads", i, 1, 4096, -1, &st->heads, err)) != LMV_OK ||
            (r = lmv__meta_int_range(m, "swin.mlp_hidden", i, 1, 1 << 18, -1, &st->hidden, err)) != LMV_OK ||
            (r = lmv__meta_int_range(m, "swin.window_size", wmeta && wmeta->count > 1 ? i : 0, 1, 256, -1, &st->window,
                                     err)) != LMV_OK)
            return r;
        { /* V2 only; range-checked for every file */
            const lmv__meta *p = lmv__find_meta(m, "swin.pretrained_window");
            if ((r = lmv__meta_int_range(m, "swin.pretrained_window", p && p->count > 1 ? i : 0, 0, 256, 0,
                                         &st->pretrained_window, err)) != LMV_OK)
                return r;
        }
        if (st->window > v->window) v->window = st->window;
        ws = st->window;
        st->dim = C;
        if (C % st->heads)
            return lmv__fail(err, LMV_ERR_CORRUPT, "Swin stage %d width %d is not divisible by %d heads", i, C, st->heads);
        st->blocks = (lmv__swin_block *)lmv__alloc(&m->allocator, sizeof(lmv__swin_block) * (size_t)(st->depth + 1));
        if (!st->blocks) return lmv__fail(err, LMV_ERR_OUT_OF_MEMORY, "out of memory binding Swin blocks");
        memset(st->blocks, 0, sizeof(lmv__swin_block) * (size_t)(st->depth + 1));
        for (j = 0; j < st->depth; j++) {
            lmv__swin_block *b = &st->blocks[j];
            n = (2 * ws - 1) * (2 * ws - 1);
            if ((r = lmv__bind_norm(m, 0, C, &b->norm1_w, &b->norm1_b, err, "layers.%d.blocks.%d.norm1", i, j)) != LMV_OK ||
                (r = lmv__bind_linear(m, 0, 3 * C, C, &b->qkv_w, &b->qkv_b, err, "layers.%d.blocks.%d.attn.qkv", i, j)) != LMV_OK ||
                (r = lmv__bind_linear(m, 0, C, C, &b->proj_w, &b->proj_b, err, "layers.%d.blocks.%d.attn.proj", i, j)) != LMV_OK ||
                (r = lmv__bind_norm(m, 0, C, &b->norm2_w, &b->norm2_b, err, "layers.%d.blocks.%d.norm2", i, j)) != LMV_OK ||
                (r = lmv__bind_linear(m, 0, st->hidden, C, &b->fc1_w, &b->fc1_b, err, "layers.%d.blocks.%d.mlp.fc1", i, j)) != LMV_OK ||
                (r = lmv__bind_linear(m, 0, C, st->hidden, &b->fc2_w, &b->fc2_b, err, "layers.%d.blocks.%d.mlp.fc2", i, j)) != LMV_OK)
                return r;
            if (!v->v2) {
                lmv__name(name, sizeof name, "layers.%d.blocks.%d.attn.relative_position_bias_table", i, j);
                if ((r = lmv__w2(m, 0, n, st->heads, &b->table, err, name)) != LMV_OK) return r;
            } else {
                int shape3[3];
                float *hbuf;
                shape3[0] = st->heads; shape3[1] = shape3[2] = 1;
                lmv__name(name, sizeof name, "layers.%d.blocks.%d.attn.logit_scale", i, j);
                if ((r = lmv__weight(m, name, 0, 3, shape3, &b->logit_scale, err)) != LMV_OK) return r;
                lmv__name(name, sizeof name, "layers.%d.blocks.%d.attn.cpb_mlp.0.weight", i, j);
                if ((r = lmv__w2(m, 0, v->cpb_hidden, 2, &b->cpb_w1, err, name)) != LMV_OK) return r;
                lmv__name(name, sizeof name, "layers.%d.blocks.%d.attn.cpb_mlp.0.bias", i, j);
                if ((r = lmv__w1(m, 0, v->cpb_hidden, &b->cpb_b1, err, name)) != LMV_OK) return r;
                lmv__name(name, sizeof name, "layers.%d.blocks.%d.attn.cpb_mlp.2.weight", i, j);
                if ((r = lmv__w2(m, 0, st->heads, v->cpb_hidden, &b->cpb_w2, err, name)) != LMV_OK) return r;
                b->cpb_table = (float *)lmv__alloc(&m->allocator, sizeof(float) * ((size_t)n * st->heads + v->cpb_hidden));
                if (!b->cpb_table) return lmv__fail(err, LMV_ERR_OUT_OF_MEMORY, "out of memory binding Swin V2 biases");
                hbuf = b->cpb_table + (size_t)n * st->heads;
                lmv__swin_cpb(b->cpb_table, b, v->cpb_hidden, st->heads, ws, ws, st->pretrained_window,
                              st->pretrained_window, hbuf);
                b->table = b->cpb_table;
            }
        }
        if (i + 1 < v->n_stages) { /* PatchMerging: V1 LN(4C) then Linear(4C -> 2C); V2 the Linear then LN(2C) */
            int shape2[2];
            if ((r = lmv__bind_norm(m, 0, v->v2 ? 2 * C : 4 * C, &st->merge_norm_w, &st->merge_norm_b, err,
                                    "layers.%d.downsample.norm", i)) != LMV_OK)
                return r;
            lmv__name(name, sizeof name, "layers.%d.downsample.reduction.weight", i);
            shape2[0] = 2 * C;
            shape2[1] = 4 * C;
            if ((r = lmv__matrix(m, name, 0, 2, shape2, &st->merge_w, err)) != LMV_OK) return r;
            C *= 2;
        }
    }
    if ((r = lmv__bind_norm(m, 0, C, &v->norm_w, &v->norm_b, err, "norm")) != LMV_OK) return r;
    m->info.num_features = C;
    if (v->num_classes && (r = lmv__bind_linear(m, 0, v->num_classes, C, &v->head_w, &v->head_b, err, "head")) != LMV_OK)
        return r;
    return LMV_OK;
}

static void lmv__swin_unbind(lmv_model *m) {
    lmv__swin *v = (lmv__swin *)m->graph;
    int i, j;
    if (!v) return;
    for (i = 0; i < v->n_stages; i++) {
        if (v->stages[i].blocks)
            for (j = 0; j < v->stages[i].depth; j++) lmv__free(&m->allocator, v->stages[i].blocks[j].cpb_table);
        lmv__free(&m->allocator, v->stages[i].blocks);
    }
    lmv__free(&m->allocator, v);
    m->graph = NULL;
}

static int lmv__ceil_to(int x, int m) { return (x + m - 1) / m * m; }

/* Feature-map size of every stage: the patch grid, halved (ceil) by each PatchMerging. */
static void lmv__swin_sizes(const lmv__swin *v, int h, int w, int *sh, int *sw) {
    int i, H = h / v->patch, W = w / v->patch;
    for (i = 0; i < v->n_stages; i++) {
        sh[i] = H;
        sw[i] = W;
        H = (H + 1) / 2;
        W = (W + 1) / 2;
    }
}

/* The map size stage i's window and shift are decided by: V1 and torchvision's V2 (window_from
   fixed) the map itself; other V2 the patch grid floor-halved per stage (gh >> i: timm, Microsoft
   and Hugging Face build their blocks for that resolution, while PatchMerging pads an odd map, so
   the real map may be one larger). */
static void lmv__swin_decide(const lmv__swin *v, int i, int gh, int gw, int *H, int *W) {
    if (!v->v2 || v->fixed_window) return;
    if (v->fixed_gh) { /* Hugging Face: fixed when the model was built, from config.image_size */
        gh = v->fixed_gh;
        gw = v->fixed_gw;
    }
    *H = gh >> i;
    *W = gw >> i;
}

/* The window of stage i on an H x W map.  V1 and torchvision's V2 keep the stage's window (padding
   the map).  Other V2 shrink it to the map: per axis (timm, shift_rule per_axis), or to a min(H, W)
   square when either side is not larger than the window (Microsoft's code, Hugging Face: shift_rule min). */
static void lmv__swin_window(const lmv__swin *v, int i, int gh, int gw, int H, int W, int *wh, int *ww) {
    int ws = v->stages[i].window;
    lmv__swin_decide(v, i, gh, gw, &H, &W);
    *wh = *ww = ws;
    if (!v->v2 || v->fixed_window) return;
    if (v->shift_rule == 1) {
        int mn = H < W ? H : W;
        if (mn <= ws) *wh = *ww = mn;
    } else {
        if (H < ws) *wh = H;
        if (W < ws) *ww = W;
    }
}

typedef struct lmv__swin_bufs {
    float *x, *xn, *win, *qkv, *att, *hid, *bias, *mask, *scores, *cols, *pooled, *table, *cpb_hid;
    float *tables[LMV__SWIN_MAX_STAGES]; /* V2: the position bias of each block of a stage whose window
                                            shrank, [depth][(2wh-1)(2ww-1)][heads]; NULL: the bound one */
    int gh, gw; /* the patch grid */
} lmv__swin_bufs;

static size_t lmv__swin_layout(const lmv__swin *v, int h, int w, int threads, float *base, lmv__swin_bufs *b) {
    int sh[LMV__SWIN_MAX_STAGES], sw[LMV__SWIN_MAX_STAGES], i;
    size_t N = (size_t)v->window * v->window, tok = 0, ptok = 0, hid = 0, heads = 0, nwin = 0, cmax = 0, cols, tab = 0;
    lmv__carver c;
    lmv__swin_sizes(v, h, w, sh, sw);
    for (i = 0; i < v->n_stages; i++) {
        const lmv__swin_stage *st = &v->stages[i];
        int wh, ww;
        size_t t = (size_t)sh[i] * sw[i], C = (size_t)st->dim, pt;
        lmv__swin_window(v, i, h / v->patch, w / v->patch, sh[i], sw[i], &wh, &ww);
        pt = (size_t)lmv__ceil_to(sh[i], wh) * lmv__ceil_to(sw[i], ww);
        if (t * C > tok) tok = t * C;
        if (pt * C > ptok) ptok = pt * C;
        if (pt * st->hidden > hid) hid = pt * st->hidden;
        if ((size_t)st->heads > heads) heads = (size_t)st->heads;
        if (pt / ((size_t)wh * ww) > nwin) nwin = pt / ((size_t)wh * ww);
        if (4 * C > cmax) cmax = 4 * C;
        if (v->v2 && (wh != st->window || ww != st->window))
            tab += (size_t)st->depth * (2 * wh - 1) * (2 * ww - 1) * st->heads;
    }
    cols = (size_t)(h / v->patch) * (w / v->patch) * v->in_chans * v->patch * v->patch;
    if (tok * 4 > cols) cols = tok * 4; /* merging builds [ceil(H/2)*ceil(W/2)][4C] here */
    c.base = base;
    c.used = 0;
    b->x = lmv__carve(&c, tok);
    b->xn = lmv__carve(&c, ptok);
    b->win = lmv__carve(&c, ptok);
    b->qkv = lmv__carve(&c, 3 * ptok);
    b->att = lmv__carve(&c, ptok);
    b->hid = lmv__carve(&c, hid);
    b->bias = lmv__carve(&c, heads * N * N);
    b->mask = lmv__carve(&c, nwin * N * N);
    b->scores = lmv__carve(&c, (size_t)threads * N * N);
    b->cols = lmv__carve(&c, cols);
    b->pooled = lmv__carve(&c, cmax + (size_t)v->num_classes);
    b->table = lmv__carve(&c, tab);
    b->cpb_hid = lmv__carve(&c, v->v2 ? (size_t)v->cpb_hidden : 0);
    b->gh = h / v->patch;
    b->gw = w / v->patch;
    for (i = 0, tab = 0; i < v->n_stages; i++) {
        const lmv__swin_stage *st = &v->stages[i];
        int wh, ww;
        lmv__swin_window(v, i, b->gh, b->gw, sh[i], sw[i], &wh, &ww);
        b->tables[i] = NULL;
        if (v->v2 && (wh != st->window || ww != st->window)) {
            b->tables[i] = b->table ? b->table + tab : NULL;
            tab += (size_t)st->depth * (2 * wh - 1) * (2 * ww - 1) * st->heads;
        }
    }
    return c.used;
}

/* Shifts of one block of stage i at run time, by the convention the checkpoint came from. */
static void lmv__swin_shifts(const lmv__swin *v, int i, int gh, int gw, int H, int W, int odd_block, int *shift_h,
                             int *shift_w) {
    int ws = v->stages[i].window, s = odd_block ? ws / 2 : 0;
    lmv__swin_decide(v, i, gh, gw, &H, &W);
    /* no shift on an axis that one window already covers (per_axis: timm, torchvision), on both
       when either axis is covered (min: Microsoft's code, Hugging Face), or never dropped (always) */
    if (v->shift_rule == 2) *shift_h = *shift_w = s;
    else if (v->shift_rule == 1) *shift_h = *shift_w = (H <= ws || W <= ws) ? 0 : s;
    else {
        *shift_h = H <= ws ? 0 : s;
        *shift_w = W <= ws ? 0 : s;
    }
}

static lmv_result lmv__swin_plan(const lmv_model *m, int threads, int h, int w, size_t *floats, lmv_error *err) {
    const lmv__swin *v = (const lmv__swin *)m->graph;
    lmv__swin_bufs b;
    int sh[LMV__SWIN_MAX_STAGES], sw[LMV__SWIN_MAX_STAGES], i;
    if (h / v->patch < 1 || w / v->patch < 1)
        return lmv__fail(err, LMV_ERR_INPUT_SIZE, "input %dx%d is smaller than one %dx%d patch", h, w, v->patch, v->patch);
    if (v->ape && (h / v->patch != v->grid_h || w / v->patch != v->grid_w))
        return lmv__fail(err, LMV_ERR_INPUT_SIZE, "this Swin has an absolute position embedding for %dx%d inputs only",
                         v->grid_h * v->patch, v->grid_w * v->patch);
    lmv__swin_sizes(v, h, w, sh, sw);
    for (i = 0; i < v->n_stages; i++) {
        int wh, ww, ws = v->stages[i].window;
        if (!v->v2 && !v->pad_then_roll && (sh[i] < ws || sw[i] < ws))
            return lmv__fail(err, LMV_ERR_UNSUPPORTED,
                             "input %dx%d makes stage %d (%dx%d) smaller than the %d-window; timm-convention checkpoints "
                             "shrink the window and resample the bias table there, which is not supported: use an input of "
                             "at least %d pixels, or convert with --set swin.pad_mode=pad_then_roll",
                             h, w, i, sh[i], sw[i], ws, v->window * v->patch << (v->n_stages - 1));
        if (v->v2 && v->stages[i].depth && v->stages[i].pretrained_window == 1)
            return lmv__fail(err, LMV_ERR_UNSUPPORTED, "swin.pretrained_window of stage %d is 1, which leaves the "
                                                       "position bias undefined; convert with 0 (none) or the real size", i);
        lmv__swin_window(v, i, h / v->patch, w / v->patch, sh[i], sw[i], &wh, &ww);
        if (v->v2 && v->stages[i].depth && (wh < 1 || ww < 1))
            return lmv__fail(err, LMV_ERR_INPUT_SIZE, "input %dx%d leaves stage %d no map to put a window on (the patch "
                                                      "grid halved %d times is empty): use an input of at least %d "
                                                      "pixels per side", h, w, i, i, v->patch << (v->n_stages - 1));
        if (v->v2 && v->stages[i].depth && !v->stages[i].pretrained_window && (wh < 2 || ww < 2))
            return lmv__fail(err, LMV_ERR_INPUT_SIZE,
                             "input %dx%d makes stage %d's window %dx%d, and a 1-wide window without a pretrained window "
                             "size has no defined position bias (PyTorch gives NaN): use an input of at least %d pixels "
                             "per side", h, w, i, wh, ww, 2 * v->patch << (v->n_stages - 1));
    }
    *floats = lmv__swin_layout(v, h, w, threads, NULL, &b);
    return LMV_OK;
}

/* Relative position bias of one block for a wh x ww window: bias[h][i][j] = table[idx(i, j)][h],
   idx = (dy + wh - 1) * (2ww - 1) + (dx + ww - 1) with (dy, dx) = pos(i) - pos(j). */
static void lmv__swin_bias(float *bias, const float *table, int wh, int ww, int heads) {
    int N = wh * ww, i, j, h;
    for (i = 0; i < N; i++)
        for (j = 0; j < N; j++) {
            int dy = i / ww - j / ww, dx = i % ww - j % ww, idx = (dy + wh - 1) * (2 * ww - 1) + (dx + ww - 1);
            for (h = 0; h < heads; h++) bias[((size_t)h * N + i) * N + j] = table[(size_t)idx * heads + h];
        }
}

/* The shifted-window mask on the padded Hp x Wp grid: tokens of one window that came from
   different regions of the rolled map must not attend to each other (-100 as in every Swin). */
static int lmv__swin_region(int y, int size, int ws, int shift) {
    if (!shift) return 0;
    return y < size - ws ? 0 : y < size - shift ? 1 : 2;
}

static void lmv__swin_mask(float *mask, int Hp, int Wp, int wh, int ww, int shift_h, int shift_w) {
    int nwx = Wp / ww, nwin = (Hp / wh) * nwx, N = wh * ww, wdx, i, j;
    for (wdx = 0; wdx < nwin; wdx++) {
        int y0 = (wdx / nwx) * wh, x0 = (wdx % nwx) * ww;
        float *m = mask + (size_t)wdx * N * N;
        for (i = 0; i < N; i++) {
            int ri = lmv__swin_region(y0 + i / ww, Hp, wh, shift_h) * 3 + lmv__swin_region(x0 + i % ww, Wp, ww, shift_w);
            for (j = 0; j < N; j++) {
                int rj = lmv__swin_region(y0 + j / ww, Hp, wh, shift_h) * 3 + lmv__swin_region(x0 + j % ww, Wp, ww, shift_w);
                m[(size_t)i * N + j] = ri == rj ? 0.0f : -100.0f;
            }
        }
    }
}

/* The source in the H x W map of position (y, xx) on the rolled, padded Hp x Wp grid, by the
   checkpoint's convention: torchvision/HF pad and then roll the padded grid, timm >= 0.9.6 rolls
   the H x W map and then pads. *sy >= H or *sx >= W: a padding position. */
static void lmv__swin_source(int y, int xx, int H, int W, int Hp, int Wp, int sh, int swd, int pad_then_roll, int *sy,
                             int *sx) {
    if (pad_then_roll) {
        *sy = (y + sh) % Hp;
        *sx = (xx + swd) % Wp;
    } else {
        *sy = y < H ? (y + sh) % H : H;
        *sx = xx < W ? (xx + swd) % W : W;
    }
}

/* Move an H x W map into window order (wh x ww windows) on the padded Hp x Wp grid (zeros in the
   padding), applying the cyclic shift (lmv__swin_source). `back` runs the same mapping in
   reverse, adding the window outputs onto x (the residual). */
static void lmv__swin_windows(float *win, float *x, const float *xn, int H, int W, int C, int wh, int ww, int sh,
                              int swd, int pad_then_roll, int back) {
    int Hp = lmv__ceil_to(H, wh), Wp = lmv__ceil_to(W, ww), nwx = Wp / ww, y, xx, c;
    for (y = 0; y < Hp; y++)
        for (xx = 0; xx < Wp; xx++) {
            /* (y, xx) is a position on the rolled, padded grid; find its source in the map */
            int sy, sx;
            float *dst;
            lmv__swin_source(y, xx, H, W, Hp, Wp, sh, swd, pad_then_roll, &sy, &sx);
            dst = win + ((size_t)((y / wh) * nwx + xx / ww) * wh * ww + (size_t)(y % wh) * ww + (xx % ww)) * C;
            if (sy >= H || sx >= W) {
                if (!back)
                    for (c = 0; c < C; c++) dst[c] = 0.0f;
                continue;
            }
            if (back) {
                float *o = x + ((size_t)sy * W + sx) * C;
                for (c = 0; c < C; c++) o[c] += dst[c];
            } else {
                memcpy(dst, xn + ((size_t)sy * W + sx) * C, sizeof(float) * C);
            }
        }
}

/* The window slots of one block: tokens[w][p] = sy * W + sx, the index in the H x W map of the
   token that slot p (row-major in the window) of window w (row-major over the rolled, padded
   grid) holds, or -1 for padding. */
static void lmv__swin_slots(float *tokens, int H, int W, int wh, int ww, int sh, int swd, int pad_then_roll) {
    int Hp = lmv__ceil_to(H, wh), Wp = lmv__ceil_to(W, ww), nwx = Wp / ww, y, xx, sy, sx;
    for (y = 0; y < Hp; y++)
        for (xx = 0; xx < Wp; xx++) {
            size_t at = (size_t)((y / wh) * nwx + xx / ww) * wh * ww + (size_t)(y % wh) * ww + (xx % ww);
            lmv__swin_source(y, xx, H, W, Hp, Wp, sh, swd, pad_then_roll, &sy, &sx);
            tokens[at] = sy < H && sx < W ? (float)((size_t)sy * W + sx) : -1.0f;
        }
}

/* Swin V2's cosine attention as a pass before the shared kernel (run at scale 1): every head's
   q and k rows L2-normalised (F.normalize, eps 1e-12), q times exp(min(logit_scale, log 100)). */
static void lmv__swin_cosine(float *qkv, int rows, int C, int heads, const float *logit_scale) {
    int r, h, d, hd = C / heads, k;
    for (r = 0; r < rows; r++)
        for (h = 0; h < heads; h++) {
            float cap = (float)log(100.0), scale = expf(logit_scale[h] < cap ? logit_scale[h] : cap);
            for (k = 0; k < 2; k++) {
                float *p = qkv + (size_t)r * 3 * C + (size_t)k * C + (size_t)h * hd, ss = 0.0f, nrm;
                for (d = 0; d < hd; d++) ss += p[d] * p[d];
                nrm = sqrtf(ss);
                if (nrm < 1e-12f) nrm = 1e-12f;
                if (k) for (d = 0; d < hd; d++) p[d] = p[d] / nrm;
                else for (d = 0; d < hd; d++) p[d] = p[d] / nrm * scale;
            }
        }
}

/* probs: NULL, or [windows][heads][N][N] for the softmax probabilities */
static void lmv__swin_block_forward(const lmv__ctx *ctx, const lmv__swin *v, int si, const lmv__swin_block *blk, int odd,
                                    int H, int W, lmv__swin_bufs *b, float *probs) {
    const lmv__swin_stage *st = &v->stages[si];
    int C = st->dim, wh, ww, N, Hp, Wp, nwin, rows, sh, swd;
    const float *table = blk->table;
    lmv__attn_args a;
    lmv__swin_window(v, si, b->gh, b->gw, H, W, &wh, &ww);
    N = wh * ww;
    Hp = lmv__ceil_to(H, wh);
    Wp = lmv__ceil_to(W, ww);
    nwin = (Hp / wh) * (Wp / ww);
    rows = nwin * N;
    lmv__swin_shifts(v, si, b->gh, b->gw, H, W, odd, &sh, &swd);
    if (b->tables[si]) /* a window shrunk to the map: its own bias, made once per run (lmv__swin_forward) */
        table = b->tables[si] + (size_t)(blk - st->blocks) * (2 * wh - 1) * (2 * ww - 1) * st->heads;
    /* V1: x = x + window_attention(norm1(x)); V2 (res-post-norm): x = x + norm1(window_attention(x)) */
    if (!v->v2) lmv__layernorm(ctx, b->xn, b->x, H * W, C, blk->norm1_w, blk->norm1_b, v->eps);
    lmv__swin_windows(b->win, NULL, v->v2 ? b->x : b->xn, H, W, C, wh, ww, sh, swd, v->pad_then_roll, 0);
    lmv__linear(ctx, b->qkv, b->win, rows, C, 3 * C, blk->qkv_w, blk->qkv_b);
    if (v->v2) lmv__swin_cosine(b->qkv, rows, C, st->heads, blk->logit_scale);
    lmv__swin_bias(b->bias, table, wh, ww, st->heads);
    if (sh || swd) lmv__swin_mask(b->mask, Hp, Wp, wh, ww, sh, swd);
    memset(&a, 0, sizeof a);
    a.groups = nwin;
    a.heads = st->heads;
    a.head_dim = C / st->heads;
    a.nq = a.nk = N;
    a.q = b->qkv;
    a.k = b->qkv + C;
    a.v = b->qkv + 2 * C;
    a.ldq = a.ldk = a.ldv = (size_t)3 * C;
    a.gstride_q = a.gstride_k = a.gstride_v = (size_t)N * 3 * C;
    a.out = b->att;
    a.ldo = (size_t)C;
    a.gstride_o = (size_t)N * C;
    a.scale = v->v2 ? 1.0f : (float)(1.0 / sqrt((double)(C / st->heads)));
    a.bias = b->bias;
    a.mask = (sh || swd) ? b->mask : NULL;
    a.n_masks = nwin;
    a.scores = b->scores;
    a.probs = probs;
    lmv__attention(ctx, &a);
    lmv__linear(ctx, b->win, b->att, rows, C, C, blk->proj_w, blk->proj_b);
    if (v->v2) lmv__layernorm(ctx, b->win, b->win, rows, C, blk->norm1_w, blk->norm1_b, v->eps); /* per token */
    lmv__swin_windows(b->win, b->x, NULL, H, W, C, wh, ww, sh, swd, v->pad_then_roll, 1);
    if (v->v2) { /* x = x + norm2(mlp(x)) */
        lmv__linear_act(ctx, b->hid, b->x, H * W, C, st->hidden, blk->fc1_w, blk->fc1_b, LMV__ACT_GELU);
        lmv__linear(ctx, b->xn, b->hid, H * W, st->hidden, C, blk->fc2_w, blk->fc2_b);
        lmv__layernorm(ctx, b->xn, b->xn, H * W, C, blk->norm2_w, blk->norm2_b, v->eps);
        lmv__add_scaled(ctx, b->x, b->xn, H * W, C, NULL);
        return;
    }
    /* x = x + mlp(norm2(x)) */
    lmv__layernorm(ctx, b->xn, b->x, H * W, C, blk->norm2_w, blk->norm2_b, v->eps);
    lmv__linear_act(ctx, b->hid, b->xn, H * W, C, st->hidden, blk->fc1_w, blk->fc1_b, LMV__ACT_GELU);
    lmv__linear_residual(ctx, b->x, b->hid, H * W, st->hidden, C, blk->fc2_w, blk->fc2_b, NULL, b->xn);
}

/* Block j of stage i with its trace hook: its attention maps [windows][heads][N][N] and window
   slots [windows][N] (lmv__swin_slots) go to the session's capture buffer when they were asked
   for, then the maps, the slots and the block's output to the trace callback (`trace`: this image
   is the traced one). */
static void lmv__swin_block_hooked(lmv_session *s, const lmv__ctx *ctx, const lmv__swin *v, int i, int j, int H, int W,
                                   lmv__swin_bufs *b, int trace) {
    const lmv__swin_stage *st = &v->stages[i];
    int wh, ww, N, nwin, sh, swd, shape[4];
    size_t np;
    float *probs = NULL;
    char name[48];
    lmv__swin_window(v, i, b->gh, b->gw, H, W, &wh, &ww);
    N = wh * ww;
    nwin = (lmv__ceil_to(H, wh) / wh) * (lmv__ceil_to(W, ww) / ww);
    np = (size_t)nwin * st->heads * N * N;
    if (trace) {
        lmv__name(name, sizeof name, "layers.%d.blocks.%d", i, j);
        probs = lmv__attn_capture(s, name, np + (size_t)nwin * N);
    }
    lmv__swin_block_forward(ctx, v, i, &st->blocks[j], j & 1, H, W, b, probs);
    if (!trace) return;
    if (probs) {
        lmv__swin_shifts(v, i, b->gh, b->gw, H, W, j & 1, &sh, &swd);
        lmv__swin_slots(probs + np, H, W, wh, ww, sh, swd, v->pad_then_roll);
        shape[0] = nwin;
        shape[1] = st->heads;
        shape[2] = shape[3] = N;
        lmv__name(name, sizeof name, "layers.%d.blocks.%d.attn", i, j);
        s->trace(s->trace_user, name, probs, 4, shape);
        lmv__name(name, sizeof name, "layers.%d.blocks.%d.attn_tokens", i, j);
        lmv__trace(s, name, probs + np, 2, nwin, N, 0);
    }
    lmv__name(name, sizeof name, "layers.%d.blocks.%d", i, j);
    lmv__trace(s, name, b->x, 3, H, W, st->dim);
}

/* PatchMerging: zero-pad to even sides, concatenate the 2x2 neighbours as x0 (0,0), x1 (1,0),
   x2 (0,1), x3 (1,1) in (row, col) offsets; V1 LayerNorm(4C) then Linear(4C -> 2C), V2 the
   Linear then LayerNorm(2C). */
static void lmv__swin_merge(const lmv__ctx *ctx, const lmv__swin *v, const lmv__swin_stage *st, int H, int W,
                            lmv__swin_bufs *b) {
    int C = st->dim, H2 = (H + 1) / 2, W2 = (W + 1) / 2, y, x, k;
    for (y = 0; y < H2; y++)
        for (x = 0; x < W2; x++) {
            float *dst = b->cols + ((size_t)y * W2 + x) * 4 * C;
            for (k = 0; k < 4; k++) {
                int sy = 2 * y + (k & 1), sx = 2 * x + (k >> 1);
                if (sy < H && sx < W) memcpy(dst + (size_t)k * C, b->x + ((size_t)sy * W + sx) * C, sizeof(float) * C);
                else memset(dst + (size_t)k * C, 0, sizeof(float) * C);
            }
        }
    if (v->v2) {
        lmv__linear(ctx, b->x, b->cols, H2 * W2, 4 * C, 2 * C, st->merge_w, NULL);
        lmv__layernorm(ctx, b->x, b->x, H2 * W2, 2 * C, st->merge_norm_w, st->merge_norm_b, v->eps);
        return;
    }
    lmv__layernorm(ctx, b->cols, b->cols, H2 * W2, 4 * C, st->merge_norm_w, st->merge_norm_b, v->eps);
    lmv__linear(ctx, b->x, b->cols, H2 * W2, 4 * C, 2 * C, st->merge_w, NULL);
}

static lmv_result lmv__swin_forward(lmv_session *s, const lmv__ctx *ctx, float *arena, const float *input, int batch,
                                    int h, int w, float *out, int features, lmv_error *err) {
    const lmv__swin *v = (const lmv__swin *)s->model->graph;
    int sh[LMV__SWIN_MAX_STAGES], sw[LMV__SWIN_MAX_STAGES], n, i, j, C;
    size_t img = (size_t)v->in_chans * h * w;
    lmv__swin_bufs b;
    char name[48];
    (void)err;
    lmv__swin_sizes(v, h, w, sh, sw);
    lmv__swin_layout(v, h, w, ctx->threads, arena, &b);
    for (i = 0; i < v->n_stages; i++) /* Swin V2 windows shrunk to this input's maps: their biases, once */
        if (b.tables[i]) {
            const lmv__swin_stage *st = &v->stages[i];
            int wh, ww;
            size_t per;
            lmv__swin_window(v, i, b.gh, b.gw, sh[i], sw[i], &wh, &ww);
            per = (size_t)(2 * wh - 1) * (2 * ww - 1) * st->heads;
            for (j = 0; j < st->depth; j++)
                lmv__swin_cpb(b.tables[i] + (size_t)j * per, &st->blocks[j], v->cpb_hidden, st->heads, wh, ww,
                              st->pretrained_window, st->pretrained_window, b.cpb_hid);
        }
    for (n = 0; n < batch; n++) {
        int trace = n == 0 && s->trace != NULL, H = sh[0], W = sw[0];
        float *feat = b.pooled;
        C = v->stages[0].dim;
        /* patch embedding: Conv2d(k = stride = patch), LayerNorm, optional absolute position */
        lmv__im2col(ctx, b.cols, input + n * img, h, w, v->in_chans, (size_t)w, 1, (size_t)h * w, v->patch, v->patch, v->patch,
                    v->patch, 0, H, W);
        lmv__linear(ctx, b.x, b.cols, H * W, v->in_chans * v->patch * v->patch, C, v->patch_w, v->patch_b);
        if (v->patch_norm_w) lmv__layernorm(ctx, b.x, b.x, H * W, C, v->patch_norm_w, v->patch_norm_b, v->eps);
        if (v->ape) lmv__add_scaled(ctx, b.x, v->ape, H * W, C, NULL);
        if (trace) lmv__trace(s, "patch_embed", b.x, 3, H, W, C);
        for (i = 0; i < v->n_stages; i++) {
            const lmv__swin_stage *st = &v->stages[i];
            for (j = 0; j < st->depth; j++) lmv__swin_block_hooked(s, ctx, v, i, j, H, W, &b, trace);
            if (st->merge_w.data) {
                lmv__swin_merge(ctx, v, st, H, W, &b);
                H = sh[i + 1];
                W = sw[i + 1];
                C *= 2;
                if (trace) {
                    lmv__name(name, sizeof name, "layers.%d.downsample", i);
                    lmv__trace(s, name, b.x, 3, H, W, C);
                }
            }
        }
        lmv__layernorm(ctx, b.x, b.x, H * W, C, v->norm_w, v->norm_b, v->eps);
        if (trace) lmv__trace(s, "norm", b.x, 3, H, W, C);
        lmv__mean_rows(feat, b.x, H * W, C);
        if (features) memcpy(out + (size_t)n * C, feat, sizeof(float) * (size_t)C);
        else lmv__linear(ctx, out + (size_t)n * v->num_classes, feat, 1, C, v->num_classes, v->head_w, v->head_b);
    }
    return LMV_OK;
}

static const lmv__family_ops lmv__swin_ops = {"swin", LMV_FAMILY_SWIN, lmv__swin_bind, lmv__swin_plan, lmv__swin_forward,
                                              lmv__swin_unbind};

/* --------------------------------------------------------------------------------------------
   Model graphs: LeMeViT (learnable meta tokens; cross, dual-cross and standard attention)
   -------------------------------------------------------------------------------------------- */

#define LMV__LMT_MAX_STAGES 8

typedef struct lmv__bn {
    const float *w, *b, *mean, *var;
} lmv__bn;

typedef struct lmv__lmt_block {
    const float *pos_w, *pos_b, *norm1_w, *norm1_b, *norm2_w, *norm2_b;
    /* the attention's Linears, named by what they are in the official modules:
       qkv1: C: q on c;  D: qkv1 on x;  D2: qv1 on x;  S: qkv on x and on c
       qkv2: C: kv on x; D: qkv2 on c;  D2: kv2 on c;  S: absent
       proj_x: C, S: proj (C: on c);  D, D2: proj_x      proj_c: D, D2: proj_c */
    lmv__mat qkv1_w, qkv2_w, proj_x_w, proj_c_w, fc1_w, fc2_w;
    const float *qkv1_b, *qkv2_b, *proj_x_b, *proj_c_b;
    const float *fc1_b, *fc2_b;
    const float *gamma1, *gamma2; /* layer scale [C] of the attention and MLP branches, or NULL */
} lmv__lmt_block;

/* A stage's attention, by the letter lemevit.attn_types stores for it. */
typedef enum lmv__stage_type {
    LMV__STAGE_CROSS = 'C',       /* C: image tokens and meta tokens attend to each other */
    LMV__STAGE_DUAL = 'D',        /* D: dual cross attention */
    LMV__STAGE_DUAL2 = 'E',       /* D2: dual cross attention, v2 (qv1/kv2 projections) */
    LMV__STAGE_SELF = 'S'         /* S: standard self-attention over image and meta tokens */
} lmv__stage_type;

typedef struct lmv__lmt_stage {
    lmv__stage_type type;
    int dim, depth, hidden, heads, meta_in;
    lmv__mat down_w;      /* absent: Identity (after a cross-attention stage) */
    const float *down_b;
    lmv__bn down_bn;
    lmv__mat meta_fc1_w, meta_fc2_w;
    const float *meta_fc1_b, *meta_ln1_w, *meta_ln1_b, *meta_fc2_b, *meta_ln2_w, *meta_ln2_b;
    lmv__lmt_block *blocks;
} lmv__lmt_stage;

typedef struct lmv__lemevit {
    int n_stages, head_dim, num_meta, in_chans, num_classes, stem_mid;
    int post_norm; /* LeMeBlock pre_norm=False: t = norm1(t + attn(t)), t = norm2(t + mlp(t)) */
    float eps, meta_eps, bn_eps;
    const float *meta_tokens, *stem1_b, *stem2_b;
    lmv__mat stem1_w, stem2_w;
    lmv__bn stem1_bn, stem2_bn, norm;
    const float *norm_c_w, *norm_c_b, *head_b;
    lmv__mat head_w;
    lmv__lmt_stage stages[LMV__LMT_MAX_STAGES];
} lmv__lemevit;

static lmv_result lmv__bn_bind(const lmv_model *m, const char *prefix, int C, lmv__bn *bn, lmv_error *err) {
    char name[96];
    lmv_result r;
    lmv__name(name, sizeof name, "%s.weight", prefix);
    if ((r = lmv__w1(m, 1, C, &bn->w, err, name)) != LMV_OK) return r;
    lmv__name(name, sizeof name, "%s.bias", prefix);
    if ((r = lmv__w1(m, 1, C, &bn->b, err, name)) != LMV_OK) return r;
    lmv__name(name, sizeof name, "%s.running_mean", prefix);
    if ((r = lmv__w1(m, 0, C, &bn->mean, err, name)) != LMV_OK) return r;
    lmv__name(name, sizeof name, "%s.running_var", prefix);
    return lmv__w1(m, 0, C, &bn->var, err, name);
}

/* A conv weight [out][in][k][k] and its bias. */
static lmv_result lmv__conv_bind(const lmv_model *m, const char *prefix, int out, int in, int k, lmv__mat *w,
                                 const float **b, lmv_error *err) {
    char name[96];
    int shape[4];
    lmv_result r;
    shape[0] = out; shape[1] = in; shape[2] = k; shape[3] = k;
    lmv__name(name, sizeof name, "%s.weight", prefix);
    if ((r = lmv__matrix(m, name, 0, 4, shape, w, err)) != LMV_OK) return r;
    lmv__name(name, sizeof name, "%s.bias", prefix);
    return lmv__w1(m, 1, out, b, err, name);
}

/* An official LeMeBlock layer scale: "<name>" of shape [1, 1, C] (as the official code keeps it)
   or [C]; optional. */
static lmv_result lmv__lmt_gamma(const lmv_model *m, int C, const float **out, lmv_error *err, const char *fmt, ...) {
    char name[96];
    int shape[3];
    const lmv__tensor *t;
    va_list ap;
    va_start(ap, fmt);
    lmv__vformat(name, sizeof name, 0, fmt, ap);
    va_end(ap);
    t = lmv__find_tensor(m, name);
    if (t && t->ndim == 1) return lmv__w1(m, 1, C, out, err, name);
    shape[0] = 1; shape[1] = 1; shape[2] = C;
    return lmv__weight(m, name, 1, 3, shape, out, err);
}

static lmv_result lmv__lemevit_bind(lmv_model *m, lmv_error *err) {
    lmv__lemevit *v;
    const lmv__meta *types;
    lmv_result r;
    char name[96];
    int i, j, prev = 0;
    v = (lmv__lemevit *)lmv__alloc(&m->allocator, sizeof(lmv__lemevit));
    if (!v) return lmv__fail(err, LMV_ERR_OUT_OF_MEMORY, "out of memory binding the LeMeViT graph");
    memset(v, 0, sizeof *v);
    m->graph = v;
    types = lmv__find_meta(m, "lemevit.attn_types");
    if (!types || types->type != LMV_CONFIG_STRING || types->count < 2 || types->count > LMV__LMT_MAX_STAGES + 1)
        return lmv__fail(err, LMV_ERR_CORRUPT, "lemevit.attn_types must be a string of 1 to 8 letters from C, D, E (D2), S");
    v->n_stages = types->count - 1;
    if ((r = lmv__meta_int_range(m, "lemevit.head_dim", 0, 1, 4096, 32, &v->head_dim, err)) != LMV_OK ||
        (r = lmv__meta_int_range(m, "lemevit.num_meta", 0, 1, 4096, 16, &v->num_meta, err)) != LMV_OK ||
        (r = lmv__meta_int_range(m, "in_chans", 0, 1, 64, 3, &v->in_chans, err)) != LMV_OK ||
        (r = lmv__meta_int_range(m, "num_classes", 0, 0, 1 << 20, 0, &v->num_classes, err)) != LMV_OK ||
        (r = lmv__meta_int_range(m, "lemevit.post_norm", 0, 0, 1, 0, &v->post_norm, err)) != LMV_OK)
        return r;
    v->eps = lmv__meta_float(m, "lemevit.norm_eps", 0, 1e-6f);
    v->meta_eps = lmv__meta_float(m, "lemevit.meta_eps", 0, 1e-5f);
    v->bn_eps = lmv__meta_float(m, "lemevit.bn_eps", 0, 1e-5f);
    if (!(v->eps > 0.0f && v->eps < 1.0f && v->meta_eps > 0.0f && v->meta_eps < 1.0f && v->bn_eps > 0.0f && v->bn_eps < 1.0f))
        return lmv__fail(err, LMV_ERR_CORRUPT, "a LeMeViT epsilon is not in (0, 1)");
    for (i = 0; i < v->n_stages; i++) {
        lmv__lmt_stage *st = &v->stages[i];
        char t = ((const char *)types->payload)[i];
        if (t != LMV__STAGE_CROSS && t != LMV__STAGE_DUAL && t != LMV__STAGE_DUAL2 && t != LMV__STAGE_SELF)
            return lmv__fail(err, LMV_ERR_CORRUPT, "lemevit.attn_types has '%c'; expected C, D, E (D2) or S", t);
        st->type = (lmv__stage_type)t;
        if ((r = lmv__meta_int_range(m, "lemevit.depths", i, 0, 1024, -1, &st->depth, err)) != LMV_OK ||
            (r = lmv__meta_int_range(m, "lemevit.embed_dims", i, 1, 1 << 15, -1, &st->dim, err)) != LMV_OK ||
            (r = lmv__meta_int_range(m, "lemevit.mlp_hidden", i, 1, 1 << 18, -1, &st->hidden, err)) != LMV_OK)
            return r;
        if (st->dim % v->head_dim)
            return lmv__fail(err, LMV_ERR_CORRUPT, "stage %d width %d is not a multiple of head_dim %d", i, st->dim, v->head_dim);
        st->heads = st->dim / v->head_dim;
    }
    v->stem_mid = v->stages[0].dim / 2;
    if (v->stem_mid < 1) return lmv__fail(err, LMV_ERR_CORRUPT, "stage 0 is too narrow for the stem");

    /* meta tokens and the stem: conv-BN-GELU-conv-BN, stride 4 */
    if ((r = lmv__w2(m, 0, v->num_meta, v->stages[0].dim, &v->meta_tokens, err, "meta_tokens")) != LMV_OK ||
        (r = lmv__conv_bind(m, "downsample_layers.0.0", v->stem_mid, v->in_chans, 3, &v->stem1_w, &v->stem1_b, err)) != LMV_OK ||
        (r = lmv__bn_bind(m, "downsample_layers.0.1", v->stem_mid, &v->stem1_bn, err)) != LMV_OK ||
        (r = lmv__conv_bind(m, "downsample_layers.0.3", v->stages[0].dim, v->stem_mid, 3, &v->stem2_w, &v->stem2_b, err)) != LMV_OK ||
        (r = lmv__bn_bind(m, "downsample_layers.0.4", v->stages[0].dim, &v->stem2_bn, err)) != LMV_OK)
        return r;

    for (i = 0; i < v->n_stages; i++) {
        lmv__lmt_stage *st = &v->stages[i];
        int C = st->dim, Hd = st->hidden, in = i ? v->stages[i - 1].dim : C;
        st->meta_in = in;
        if (i > 0 && v->stages[i - 1].type != LMV__STAGE_CROSS) { /* downsample conv + BN; Identity after a C stage */
            lmv__name(name, sizeof name, "downsample_layers.%d.0", i);
            if ((r = lmv__conv_bind(m, name, C, in, 3, &st->down_w, &st->down_b, err)) != LMV_OK) return r;
            lmv__name(name, sizeof name, "downsample_layers.%d.1", i);
            if ((r = lmv__bn_bind(m, name, C, &st->down_bn, err)) != LMV_OK) return r;
        } else if (i > 0 && in != C) {
            return lmv__fail(err, LMV_ERR_CORRUPT, "stage %d follows a cross-attention stage, so it must keep width %d", i, in);
        }
        if ((r = lmv__bind_linear(m, 0, 4 * in, in, &st->meta_fc1_w, &st->meta_fc1_b, err, "meta_token_downsample.%d.0", i)) != LMV_OK ||
            (r = lmv__bind_norm(m, 0, 4 * in, &st->meta_ln1_w, &st->meta_ln1_b, err, "meta_token_downsample.%d.1", i)) != LMV_OK ||
            (r = lmv__bind_linear(m, 0, C, 4 * in, &st->meta_fc2_w, &st->meta_fc2_b, err, "meta_token_downsample.%d.3", i)) != LMV_OK ||
            (r = lmv__bind_norm(m, 0, C, &st->meta_ln2_w, &st->meta_ln2_b, err, "meta_token_downsample.%d.4", i)) != LMV_OK)
            return r;
        st->blocks = (lmv__lmt_block *)lmv__alloc(&m->allocator, sizeof(lmv__lmt_block) * (size_t)(st->depth + 1));
        if (!st->blocks) return lmv__fail(err, LMV_ERR_OUT_OF_MEMORY, "out of memory binding LeMeViT blocks");
        memset(st->blocks, 0, sizeof(lmv__lmt_block) * (size_t)(st->depth + 1));
        for (j = 0; j < st->depth; j++) {
            lmv__lmt_block *b = &st->blocks[j];
            int shape4[4];
            /* the official module names and widths of each attention's two input projections */
            int n1 = 3 * C, n2 = 2 * C;
            const char *qkv1 = "qkv", *qkv2 = "kv2", *proj_x = "proj_x";
            switch (st->type) {
            case LMV__STAGE_CROSS: n1 = C; qkv1 = "q"; qkv2 = "kv"; proj_x = "proj"; break;
            case LMV__STAGE_DUAL: n2 = 3 * C; qkv1 = "qkv1"; qkv2 = "qkv2"; break;
            case LMV__STAGE_DUAL2: n1 = 2 * C; qkv1 = "qv1"; break;
            case LMV__STAGE_SELF: proj_x = "proj"; break;
            }
            shape4[0] = C; shape4[1] = 1; shape4[2] = 3; shape4[3] = 3;
            lmv__name(name, sizeof name, "stages.%d.%d.pos_embed.weight", i, j);
            if ((r = lmv__weight(m, name, 0, 4, shape4, &b->pos_w, err)) != LMV_OK) return r;
            lmv__name(name, sizeof name, "stages.%d.%d.pos_embed.bias", i, j);
            if ((r = lmv__w1(m, 1, C, &b->pos_b, err, name)) != LMV_OK ||
                (r = lmv__bind_norm(m, 0, C, &b->norm1_w, &b->norm1_b, err, "stages.%d.%d.norm1", i, j)) != LMV_OK ||
                (r = lmv__bind_norm(m, 0, C, &b->norm2_w, &b->norm2_b, err, "stages.%d.%d.norm2", i, j)) != LMV_OK ||
                (r = lmv__bind_linear(m, 0, n1, C, &b->qkv1_w, &b->qkv1_b, err, "stages.%d.%d.attn.%s", i, j, qkv1)) != LMV_OK ||
                (st->type != LMV__STAGE_SELF &&
                 (r = lmv__bind_linear(m, 0, n2, C, &b->qkv2_w, &b->qkv2_b, err, "stages.%d.%d.attn.%s", i, j, qkv2)) != LMV_OK) ||
                (r = lmv__bind_linear(m, 0, C, C, &b->proj_x_w, &b->proj_x_b, err, "stages.%d.%d.attn.%s", i, j, proj_x)) != LMV_OK ||
                ((st->type == LMV__STAGE_DUAL || st->type == LMV__STAGE_DUAL2) &&
                 (r = lmv__bind_linear(m, 0, C, C, &b->proj_c_w, &b->proj_c_b, err, "stages.%d.%d.attn.proj_c", i, j)) != LMV_OK) ||
                (r = lmv__bind_linear(m, 0, Hd, C, &b->fc1_w, &b->fc1_b, err, "stages.%d.%d.mlp.0", i, j)) != LMV_OK ||
                (r = lmv__bind_linear(m, 0, C, Hd, &b->fc2_w, &b->fc2_b, err, "stages.%d.%d.mlp.3", i, j)) != LMV_OK ||
                (r = lmv__lmt_gamma(m, C, &b->gamma1, err, "stages.%d.%d.gamma1", i, j)) != LMV_OK ||
                (r = lmv__lmt_gamma(m, C, &b->gamma2, err, "stages.%d.%d.gamma2", i, j)) != LMV_OK)
                return r;
            if (!b->gamma1 != !b->gamma2)
                return lmv__fail(err, LMV_ERR_MISSING_TENSOR, "stages.%d.%d has only one of gamma1 and gamma2", i, j);
        }
        prev = C;
    }
    if ((r = lmv__bn_bind(m, "norm", prev, &v->norm, err)) != LMV_OK ||
        (r = lmv__bind_norm(m, 0, prev, &v->norm_c_w, &v->norm_c_b, err, "norm_c")) != LMV_OK)
        return r;
    m->info.num_features = prev;
    if (v->num_classes && (r = lmv__bind_linear(m, 0, v->num_classes, prev, &v->head_w, &v->head_b, err, "head")) != LMV_OK)
        return r;
    return LMV_OK;
}

static void lmv__lemevit_unbind(lmv_model *m) {
    lmv__lemevit *v = (lmv__lemevit *)m->graph;
    int i;
    if (!v) return;
    for (i = 0; i < v->n_stages; i++) lmv__free(&m->allocator, v->stages[i].blocks);
    lmv__free(&m->allocator, v);
    m->graph = NULL;
}

/* Spatial sizes: the stem halves twice (ceil), every real downsample halves once more. */
static void lmv__lemevit_sizes(const lmv__lemevit *v, int h, int w, int *stem_h, int *stem_w, int *sh, int *sw) {
    int i, H, W;
    *stem_h = lmv__conv_out(h, 3, 2, 1);
    *stem_w = lmv__conv_out(w, 3, 2, 1);
    H = lmv__conv_out(*stem_h, 3, 2, 1);
    W = lmv__conv_out(*stem_w, 3, 2, 1);
    for (i = 0; i < v->n_stages; i++) {
        if (v->stages[i].down_w.data) {
            H = lmv__conv_out(H, 3, 2, 1);
            W = lmv__conv_out(W, 3, 2, 1);
        }
        sh[i] = H;
        sw[i] = W;
    }
}

/* The run-state buffers of one image (N = H*W image tokens of the current stage, C its width,
   M meta tokens); each is sized for the largest stage. */
typedef struct lmv__lmt_bufs {
    float *x;        /* [N][C] the image map, NHWC (first the stem's second conv output) */
    float *xs;       /* [N][C] x + cpe(x) */
    float *xn;       /* [N][C] norm1(xs) / norm2(x), or a branch's output before the residual add */
    float *t;        /* [H][W][C] a conv output before its BatchNorm (stem, downsample) */
    float *qkv;      /* [N][3C] the image tokens' projections */
    float *att;      /* [N][C] the image tokens' attention output, before proj */
    float *hid;      /* [max(N, M)][hidden] MLP hidden; the meta-token MLP's [M][4 Cin] */
    float *c;        /* [M][C] the meta tokens */
    float *cn;       /* [M][C] like xn, for the meta tokens */
    float *cq;       /* [M][3C] the meta tokens' projections */
    float *catt;     /* [M][C] the meta tokens' attention output, before proj */
    float *scores;   /* [threads][largest N*N, N*M or M*M] one head's scores per thread */
    float *cols;     /* im2col rows of the convolutions */
    float *pooled;   /* [2C + classes] pooled map and meta tokens, then logits */
    float *kscratch; /* [9 * max(C, stem width)] depthwise kernels, BatchNorm scale and shift */
} lmv__lmt_bufs;

static size_t lmv__lemevit_layout(const lmv__lemevit *v, int h, int w, int threads, float *base, lmv__lmt_bufs *b) {
    int sh[LMV__LMT_MAX_STAGES], sw[LMV__LMT_MAX_STAGES], h1, w1, i;
    size_t M = (size_t)v->num_meta, xmax, nc = 0, hid = 0, cmax = 0, cols, conv, sc = 0, N;
    lmv__carver c;
    lmv__lemevit_sizes(v, h, w, &h1, &w1, sh, sw);
    xmax = (size_t)h1 * w1 * v->stem_mid;
    N = (size_t)lmv__conv_out(h1, 3, 2, 1) * lmv__conv_out(w1, 3, 2, 1);
    cols = lmv__conv_scratch(threads, (size_t)h1 * w1, v->in_chans * 9, v->stem_mid);
    conv = lmv__conv_scratch(threads, N, 9 * v->stem_mid, v->stages[0].dim);
    if (conv > cols) cols = conv;
    for (i = 0; i < v->n_stages; i++) {
        const lmv__lmt_stage *st = &v->stages[i];
        size_t n = (size_t)sh[i] * sw[i], C = (size_t)st->dim;
        conv = st->down_w.data ? lmv__conv_scratch(threads, n, 9 * st->meta_in, st->dim) : 0;
        if (conv > cols) cols = conv;
        if (n * C > nc) nc = n * C;
        if ((n > M ? n : M) * (size_t)st->hidden > hid) hid = (n > M ? n : M) * (size_t)st->hidden;
        if (M * 4 * st->meta_in > hid) hid = M * 4 * (size_t)st->meta_in;
        if (C > cmax) cmax = C;
        /* one head's scores per thread: N x N and M x M in self-attention stages, N x M and
           M x N in the cross ones (3136 x 3136 floats in stage 1 would be 39 MB for nothing) */
        if (st->type == LMV__STAGE_SELF && n * n > sc) sc = n * n;
        if (n * M > sc) sc = n * M;
        if (M * M > sc) sc = M * M;
    }
    if (nc > xmax) xmax = nc;
    c.base = base;
    c.used = 0;
    b->x = lmv__carve(&c, xmax);
    b->xs = lmv__carve(&c, nc);
    b->xn = lmv__carve(&c, nc);
    b->t = lmv__carve(&c, xmax);
    b->qkv = lmv__carve(&c, 3 * nc);
    b->att = lmv__carve(&c, nc);
    b->hid = lmv__carve(&c, hid);
    b->c = lmv__carve(&c, M * cmax);
    b->cn = lmv__carve(&c, M * cmax);
    b->cq = lmv__carve(&c, 3 * M * cmax);
    b->catt = lmv__carve(&c, M * cmax);
    b->scores = lmv__carve(&c, (size_t)threads * sc);
    b->cols = lmv__carve(&c, cols);
    b->pooled = lmv__carve(&c, 2 * cmax + (size_t)v->num_classes);
    b->kscratch = lmv__carve(&c, 9 * (cmax > (size_t)v->stem_mid ? cmax : (size_t)v->stem_mid));
    return c.used;
}

static lmv_result lmv__lemevit_plan(const lmv_model *m, int threads, int h, int w, size_t *floats, lmv_error *err) {
    const lmv__lemevit *v = (const lmv__lemevit *)m->graph;
    lmv__lmt_bufs b;
    int sh[LMV__LMT_MAX_STAGES], sw[LMV__LMT_MAX_STAGES], h1, w1, i;
    lmv__lemevit_sizes(v, h, w, &h1, &w1, sh, sw);
    for (i = 0; i < v->n_stages; i++)
        if ((v->stages[i].type == LMV__STAGE_DUAL || v->stages[i].type == LMV__STAGE_DUAL2) && sh[i] * sw[i] < 2)
            return lmv__fail(err, LMV_ERR_INPUT_SIZE,
                             "input %dx%d leaves a single token in dual-cross stage %d, where the attention scale "
                             "ln(M)/ln(N) is undefined: use a larger input", h, w, i);
    *floats = lmv__lemevit_layout(v, h, w, threads, NULL, &b);
    return LMV_OK;
}

/* The block MLP, shared by image and meta tokens: t = t + gamma2 * fc2(gelu(fc1(norm2(t)))), or
   post-norm t = norm2(t + gamma2 * fc2(gelu(fc1(t)))). tn is scratch. */
static void lmv__lmt_mlp(const lmv__ctx *ctx, const lmv__lemevit *v, const lmv__lmt_stage *st, const lmv__lmt_block *blk,
                         float *t, int rows, float *tn, float *hid) {
    int C = st->dim;
    const float *in = t;
    if (!v->post_norm) {
        lmv__layernorm(ctx, tn, t, rows, C, blk->norm2_w, blk->norm2_b, v->eps);
        in = tn;
    }
    lmv__linear_act(ctx, hid, in, rows, C, st->hidden, blk->fc1_w, blk->fc1_b, LMV__ACT_GELU);
    lmv__linear_residual(ctx, t, hid, rows, st->hidden, C, blk->fc2_w, blk->fc2_b, blk->gamma2, tn);
    if (v->post_norm) lmv__layernorm(ctx, t, t, rows, C, blk->norm2_w, blk->norm2_b, v->eps);
}

/* The attention branch's end for tokens t [rows][C]: t = t + gamma1 * a (a already projected), or
   post-norm t = norm1(t + gamma1 * a); t may be written from `from` (t = from + ...). */
static void lmv__lmt_attn_out(const lmv__ctx *ctx, const lmv__lemevit *v, const lmv__lmt_block *blk, float *t,
                              const float *from, const float *a, int rows, int C) {
    lmv__residual(ctx, t, from, a, rows, C, blk->gamma1);
    if (v->post_norm) lmv__layernorm(ctx, t, t, rows, C, blk->norm1_w, blk->norm1_b, v->eps);
}

/* One multi-head attention between two token sets whose q, k, v sit in row buffers. */
static void lmv__lmt_attend(const lmv__ctx *ctx, const lmv__lmt_stage *st, int head_dim, int nq, const float *q, size_t ldq,
                            int nk, const float *k, const float *vv, size_t ldkv, float scale, float *out, float *scores,
                            float *probs) {
    lmv__attn_args a;
    memset(&a, 0, sizeof a);
    a.probs = probs;
    a.groups = 1;
    a.heads = st->heads;
    a.head_dim = head_dim;
    a.nq = nq;
    a.nk = nk;
    a.q = q;
    a.ldq = ldq;
    a.k = k;
    a.v = vv;
    a.ldk = a.ldv = ldkv;
    a.out = out;
    a.ldo = (size_t)st->dim;
    a.scale = scale;
    a.scores = scores;
    lmv__attention(ctx, &a);
}

/* LeMeBlock. x: [N][C] image tokens, c: [M][C] meta tokens; xs = x + cpe(x) (a depthwise 3x3 conv).
   Each attention reads norm1 of its inputs (pre-norm) or the inputs themselves (post-norm, where
   norm1 follows the residual sum instead; see lmv__lmt_attn_out and lmv__lmt_mlp):
     C:  c = c + gamma1 * CrossAttn(q from c, k v from xs); MLP on c; x leaves unchanged (no CPE)
     D:  both directions between xs and c; x = xs + gamma1 * ..; c = c + gamma1 * ..; MLPs on both
     S:  self-attention on xs and on c separately, same weights; MLPs on both */
static void lmv__lmt_block_forward(const lmv__ctx *ctx, const lmv__lemevit *v, const lmv__lmt_stage *st,
                                   const lmv__lmt_block *blk, int H, int W, lmv__lmt_bufs *b, float *probs_x,
                                   float *probs_c) {
    int C = st->dim, N = H * W, M = v->num_meta, hd = v->head_dim;
    float head_scale = (float)(1.0 / sqrt((double)hd));
    const float *xin = b->xs, *cin = b->c; /* the attention's inputs */
    /* conditional position encoding: xs = x + dwconv3x3(x) */
    lmv__dwconv3x3(ctx, b->xs, b->x, H, W, C, blk->pos_w, blk->pos_b, b->kscratch);
    lmv__add_scaled(ctx, b->xs, b->x, N, C, NULL); /* dwconv(x) + x: the same sums as x + dwconv(x) */
    if (!v->post_norm) {
        lmv__layernorm(ctx, b->xn, b->xs, N, C, blk->norm1_w, blk->norm1_b, v->eps);
        lmv__layernorm(ctx, b->cn, b->c, M, C, blk->norm1_w, blk->norm1_b, v->eps);
        xin = b->xn;
        cin = b->cn;
    }

    if (st->type == LMV__STAGE_CROSS) {
        lmv__linear(ctx, b->cq, cin, M, C, C, blk->qkv1_w, blk->qkv1_b);     /* q from meta tokens */
        lmv__linear(ctx, b->qkv, xin, N, C, 2 * C, blk->qkv2_w, blk->qkv2_b); /* k, v from image tokens */
        lmv__lmt_attend(ctx, st, hd, M, b->cq, (size_t)C, N, b->qkv, b->qkv + C, (size_t)2 * C, head_scale, b->catt, b->scores,
                        probs_c);
        lmv__linear(ctx, b->cn, b->catt, M, C, C, blk->proj_x_w, blk->proj_x_b);
        lmv__lmt_attn_out(ctx, v, blk, b->c, b->c, b->cn, M, C);
        lmv__lmt_mlp(ctx, v, st, blk, b->c, M, b->cn, b->hid);
        return; /* the image map leaves without its position encoding */
    }
    if (st->type == LMV__STAGE_SELF) {
        lmv__linear(ctx, b->qkv, xin, N, C, 3 * C, blk->qkv1_w, blk->qkv1_b);
        lmv__lmt_attend(ctx, st, hd, N, b->qkv, (size_t)3 * C, N, b->qkv + C, b->qkv + 2 * C, (size_t)3 * C, head_scale, b->att,
                        b->scores, probs_x);
        lmv__linear(ctx, b->cq, cin, M, C, 3 * C, blk->qkv1_w, blk->qkv1_b);
        lmv__lmt_attend(ctx, st, hd, M, b->cq, (size_t)3 * C, M, b->cq + C, b->cq + 2 * C, (size_t)3 * C, head_scale, b->catt,
                        b->scores, probs_c);
        lmv__linear(ctx, b->xn, b->att, N, C, C, blk->proj_x_w, blk->proj_x_b);
        lmv__linear(ctx, b->cn, b->catt, M, C, C, blk->proj_x_w, blk->proj_x_b);
    } else {
        /* dual cross attention: image queries read meta tokens with scale ln(M)/ln(N) * C^-0.5,
           meta queries read image tokens with C^-0.5 (C the full stage width, N the tokens now) */
        double cs = 1.0 / sqrt((double)C);
        float scale_x = (float)(log((double)M) / log((double)N) * cs), scale_c = (float)(1.0 * cs);
        if (st->type == LMV__STAGE_DUAL) {
            lmv__linear(ctx, b->qkv, xin, N, C, 3 * C, blk->qkv1_w, blk->qkv1_b); /* q1 k1 v1 */
            lmv__linear(ctx, b->cq, cin, M, C, 3 * C, blk->qkv2_w, blk->qkv2_b);  /* q2 k2 v2 */
            lmv__lmt_attend(ctx, st, hd, N, b->qkv, (size_t)3 * C, M, b->cq + C, b->cq + 2 * C, (size_t)3 * C, scale_x, b->att,
                            b->scores, probs_x);
            lmv__lmt_attend(ctx, st, hd, M, b->cq, (size_t)3 * C, N, b->qkv + C, b->qkv + 2 * C, (size_t)3 * C, scale_c, b->catt,
                            b->scores, probs_c);
        } else { /* D2: q and k shared by both directions */
            lmv__linear(ctx, b->qkv, xin, N, C, 2 * C, blk->qkv1_w, blk->qkv1_b); /* q  v1 */
            lmv__linear(ctx, b->cq, cin, M, C, 2 * C, blk->qkv2_w, blk->qkv2_b);  /* k  v2 */
            lmv__lmt_attend(ctx, st, hd, N, b->qkv, (size_t)2 * C, M, b->cq, b->cq + C, (size_t)2 * C, scale_x, b->att, b->scores,
                            probs_x);
            lmv__lmt_attend(ctx, st, hd, M, b->cq, (size_t)2 * C, N, b->qkv, b->qkv + C, (size_t)2 * C, scale_c, b->catt,
                            b->scores, probs_c);
        }
        lmv__linear(ctx, b->xn, b->att, N, C, C, blk->proj_x_w, blk->proj_x_b);
        lmv__linear(ctx, b->cn, b->catt, M, C, C, blk->proj_c_w, blk->proj_c_b);
    }
    lmv__lmt_attn_out(ctx, v, blk, b->x, b->xs, b->xn, N, C);
    lmv__lmt_attn_out(ctx, v, blk, b->c, b->c, b->cn, M, C);
    lmv__lmt_mlp(ctx, v, st, blk, b->x, N, b->xn, b->hid);
    lmv__lmt_mlp(ctx, v, st, blk, b->c, M, b->cn, b->hid);
}

/* Block j of stage i with its trace hook: its attention maps (x queries [heads][N][keys], c
   queries [heads][M][keys]) go to the session's capture buffer when they were asked for, then the
   maps and the block's x and c to the trace callback (`trace`: this image is the traced one). */
static void lmv__lmt_block_hooked(lmv_session *s, const lmv__ctx *ctx, const lmv__lemevit *v, int i, int j, int H, int W,
                                  lmv__lmt_bufs *b, int trace) {
    const lmv__lmt_stage *st = &v->stages[i];
    int self = st->type == LMV__STAGE_SELF, M = v->num_meta, C = st->dim;
    size_t N = (size_t)H * W, kx = self ? N : (size_t)M, kc = self ? (size_t)M : N;
    size_t nx = st->type == LMV__STAGE_CROSS ? 0 : (size_t)st->heads * N * kx, nc = (size_t)st->heads * M * kc;
    float *px = NULL, *pc = NULL;
    char name[48];
    if (trace) {
        lmv__name(name, sizeof name, "stages.%d.%d", i, j);
        pc = lmv__attn_capture(s, name, nx + nc);
        if (pc && nx) {
            px = pc;
            pc += nx;
        }
    }
    lmv__lmt_block_forward(ctx, v, st, &st->blocks[j], H, W, b, px, pc);
    if (!trace) return;
    if (px) {
        lmv__name(name, sizeof name, "stages.%d.%d.attn_x", i, j);
        lmv__trace(s, name, px, 3, st->heads, (int)N, (int)kx);
    }
    if (pc) {
        lmv__name(name, sizeof name, "stages.%d.%d.attn_c", i, j);
        lmv__trace(s, name, pc, 3, st->heads, M, (int)kc);
    }
    lmv__name(name, sizeof name, "stages.%d.%d.x", i, j);
    lmv__trace(s, name, b->x, 3, H, W, C);
    lmv__name(name, sizeof name, "stages.%d.%d.c", i, j);
    lmv__trace(s, name, b->c, 2, M, C, 0);
}

static lmv_result lmv__lemevit_forward(lmv_session *s, const lmv__ctx *ctx, float *arena, const float *input, int batch,
                                       int h, int w, float *out, int features, lmv_error *err) {
    const lmv__lemevit *v = (const lmv__lemevit *)s->model->graph;
    int sh[LMV__LMT_MAX_STAGES], sw[LMV__LMT_MAX_STAGES], h1, w1, n, i, j, M = v->num_meta;
    size_t img = (size_t)v->in_chans * h * w;
    lmv__lmt_bufs b;
    char name[48];
    (void)err;
    lmv__lemevit_sizes(v, h, w, &h1, &w1, sh, sw);
    lmv__lemevit_layout(v, h, w, ctx->threads, arena, &b);
    for (n = 0; n < batch; n++) {
        int trace = n == 0 && s->trace != NULL, H, W, C = v->stages[0].dim, C4;
        float *feat = b.pooled;
        /* stem: conv-BN-GELU-conv-BN, each conv 3x3 stride 2 */
        lmv__conv2d(ctx, b.t, input + n * img, h, w, v->in_chans, (size_t)w, 1, (size_t)h * w, v->stem1_w, v->stem1_b,
                    v->stem_mid, 3, 2, 1, b.cols);
        lmv__batchnorm(ctx, b.t, b.t, h1 * w1, v->stem_mid, v->stem1_bn.w, v->stem1_bn.b, v->stem1_bn.mean, v->stem1_bn.var,
                       v->bn_eps, b.kscratch);
        lmv__activate_all(ctx, b.t, (size_t)h1 * w1 * v->stem_mid, LMV__ACT_GELU);
        H = lmv__conv_out(h1, 3, 2, 1);
        W = lmv__conv_out(w1, 3, 2, 1);
        lmv__conv2d(ctx, b.x, b.t, h1, w1, v->stem_mid, (size_t)w1 * v->stem_mid, (size_t)v->stem_mid, 1, v->stem2_w,
                    v->stem2_b, C, 3, 2, 1, b.cols);
        lmv__batchnorm(ctx, b.x, b.x, H * W, C, v->stem2_bn.w, v->stem2_bn.b, v->stem2_bn.mean, v->stem2_bn.var, v->bn_eps,
                       b.kscratch);
        if (trace) lmv__trace(s, "stem", b.x, 3, H, W, C);
        memcpy(b.c, v->meta_tokens, sizeof(float) * (size_t)M * C);

        for (i = 0; i < v->n_stages; i++) {
            const lmv__lmt_stage *st = &v->stages[i];
            int Cin = C;
            C = st->dim;
            if (st->down_w.data) {
                lmv__conv2d(ctx, b.t, b.x, H, W, Cin, (size_t)W * Cin, (size_t)Cin, 1, st->down_w, st->down_b, C, 3, 2, 1,
                            b.cols);
                H = sh[i];
                W = sw[i];
                lmv__batchnorm(ctx, b.x, b.t, H * W, C, st->down_bn.w, st->down_bn.b, st->down_bn.mean, st->down_bn.var,
                               v->bn_eps, b.kscratch);
            }
            /* meta tokens: Linear(Cin, 4Cin) - LN - GELU - Linear(4Cin, C) - LN */
            lmv__linear(ctx, b.hid, b.c, M, Cin, 4 * Cin, st->meta_fc1_w, st->meta_fc1_b);
            lmv__layernorm(ctx, b.hid, b.hid, M, 4 * Cin, st->meta_ln1_w, st->meta_ln1_b, v->meta_eps);
            lmv__activate_all(ctx, b.hid, (size_t)M * 4 * Cin, LMV__ACT_GELU);
            lmv__linear(ctx, b.c, b.hid, M, 4 * Cin, C, st->meta_fc2_w, st->meta_fc2_b);
            lmv__layernorm(ctx, b.c, b.c, M, C, st->meta_ln2_w, st->meta_ln2_b, v->meta_eps);
            if (trace) {
                lmv__name(name, sizeof name, "stages.%d.in_x", i);
                lmv__trace(s, name, b.x, 3, H, W, C);
                lmv__name(name, sizeof name, "stages.%d.in_c", i);
                lmv__trace(s, name, b.c, 2, M, C, 0);
            }
            for (j = 0; j < st->depth; j++) lmv__lmt_block_hooked(s, ctx, v, i, j, H, W, &b, trace);
        }
        /* head: BatchNorm on the map, LayerNorm on the meta tokens, both averaged, then added */
        C4 = C;
        lmv__batchnorm(ctx, b.x, b.x, H * W, C4, v->norm.w, v->norm.b, v->norm.mean, v->norm.var, v->bn_eps, b.kscratch);
        lmv__layernorm(ctx, b.c, b.c, M, C4, v->norm_c_w, v->norm_c_b, v->meta_eps);
        lmv__mean_rows(feat, b.x, H * W, C4);
        lmv__mean_rows(feat + C4, b.c, M, C4);
        lmv__add_scaled(ctx, feat, feat + C4, 1, C4, NULL);
        if (trace) lmv__trace(s, "features", feat, 1, C4, 0, 0);
        if (features) memcpy(out + (size_t)n * C4, feat, sizeof(float) * (size_t)C4);
        else lmv__linear(ctx, out + (size_t)n * v->num_classes, feat, 1, C4, v->num_classes, v->head_w, v->head_b);
    }
    return LMV_OK;
}

static const lmv__family_ops lmv__lemevit_ops = {"lemevit", LMV_FAMILY_LEMEVIT, lmv__lemevit_bind, lmv__lemevit_plan,
                                                 lmv__lemevit_forward, lmv__lemevit_unbind};

/* --------------------------------------------------------------------------------------------
   Opening models, sessions, running
   -------------------------------------------------------------------------------------------- */

static const lmv__family_ops *const lmv__families[] = {&lmv__vit_ops, &lmv__swin_ops, &lmv__lemevit_ops};

LEMEVIT_API lmv_open_options lmv_open_options_default(void) {
    lmv_open_options o;
    memset(&o, 0, sizeof o);
    return o;
}

static void lmv__model_release(lmv_model *m) {
    lmv_allocator a = m->allocator;
    if (m->ops && m->ops->unbind) m->ops->unbind(m);
    lmv__free(&a, m->meta);
    lmv__free(&a, m->keys);
    lmv__free(&a, (void *)m->strings);
    lmv__free(&a, m->tensors);
    lmv__free(&a, m->owned_file);
    lmv__free(&a, m->native);
    lmv__free(&a, m);
}

/* The common keys every family has: info, preprocessing, labels. */
static lmv_result lmv__read_common(lmv_model *m, lmv_error *err) {
    lmv_model_info *in = &m->info;
    lmv_preprocess *pp = &in->preprocess;
    const lmv__meta *lab;
    const char *interp;
    lmv_result r;
    int i;
    size_t params = 0, bytes = 0;
    in->arch = lmv__meta_string(m, "arch", NULL);
    if (!in->arch) return lmv__fail(err, LMV_ERR_CORRUPT, "the weight file has no 'arch' key");
    in->name = lmv__meta_string(m, "name", in->arch);
    in->source = lmv__meta_string(m, "source", "unknown");
    if ((r = lmv__meta_int_range(m, "in_chans", 0, 1, 64, 3, &in->in_chans, err)) != LMV_OK ||
        (r = lmv__meta_int_range(m, "img_size", 0, 1, 1 << 15, -1, &in->img_h, err)) != LMV_OK ||
        (r = lmv__meta_int_range(m, "img_size", 1, 1, 1 << 15, -1, &in->img_w, err)) != LMV_OK ||
        (r = lmv__meta_int_range(m, "num_classes", 0, 0, 1 << 20, 0, &in->num_classes, err)) != LMV_OK ||
        (r = lmv__meta_int_range(m, "pre.resize", 0, 0, 1 << 15, 0, &pp->resize, err)) != LMV_OK ||
        (r = lmv__meta_int_range(m, "pre.crop", 0, 1, 1 << 15, in->img_h, &pp->crop_h, err)) != LMV_OK ||
        (r = lmv__meta_int_range(m, "pre.crop", 1, 1, 1 << 15, in->img_w, &pp->crop_w, err)) != LMV_OK)
        return r;
    pp->crop_pct = lmv__meta_float(m, "pre.crop_pct", 0, 1.0f);
    interp = lmv__meta_string(m, "pre.interp", "bicubic");
    if (!strcmp(interp, "bilinear")) pp->interpolation = LMV_INTERP_BILINEAR;
    else if (!strcmp(interp, "nearest")) pp->interpolation = LMV_INTERP_NEAREST;
    else if (!strcmp(interp, "bicubic")) pp->interpolation = LMV_INTERP_BICUBIC;
    else
        return lmv__fail(err, LMV_ERR_CORRUPT, "pre.interp '%s' is not one of bilinear, bicubic, nearest: convert the model again",
                         interp);
    for (i = 0; i < 3; i++) {
        int c = i < in->in_chans ? i : 0;
        const lmv__meta *mm = lmv__find_meta(m, "pre.mean"), *ss = lmv__find_meta(m, "pre.std");
        pp->mean[i] = lmv__meta_float(m, "pre.mean", mm && mm->count == 1 ? 0 : c, 0.0f);
        pp->std[i] = lmv__meta_float(m, "pre.std", ss && ss->count == 1 ? 0 : c, 1.0f);
        /* normalised inputs must stay ordinary floats: a denormal or infinite std, or a mean
           beyond any pixel scale, is a damaged file, not a transform */
        if (!(pp->std[i] >= LMV__PRE_STD_MIN && pp->std[i] <= LMV__PRE_STD_MAX))
            return lmv__fail(err, LMV_ERR_CORRUPT,
                             "pre.std[%d] is outside [1e-6, 1e6] (zero, denormal, infinite or NaN): convert the model again", i);
        if (!(pp->mean[i] >= -LMV__PRE_MEAN_MAX && pp->mean[i] <= LMV__PRE_MEAN_MAX))
            return lmv__fail(err, LMV_ERR_CORRUPT,
                             "pre.mean[%d] is outside [-1e6, 1e6] (or NaN): convert the model again", i);
    }
    lab = lmv__find_meta(m, "labels");
    if (lab) {
        if (lab->type != 4 || lab->count != in->num_classes)
            return lmv__fail(err, LMV_ERR_CORRUPT, "the weight file has %d labels for %d classes", lab->count,
                             in->num_classes);
        m->label_list = lab->strings;
        m->n_labels = lab->count;
        in->has_labels = 1;
    }
    for (i = 0; i < m->n_tensors; i++) {
        params += m->tensors[i].numel;
        bytes += m->tensors[i].nbytes;
    }
    in->num_params = params;
    in->weight_bytes = bytes;
    return LMV_OK;
}

/* Big-endian hosts: the file is little-endian, so its numbers cannot be used in place. Convert on
   load: one copy of the file from the model's allocator (file size + 64 bytes) in which every
   float32 of the data section and every int/float value of the meta is byte-swapped; the tensors
   and lmv_model_config() point into it. The header, meta and table were parsed from the original
   with explicit little-endian loads, and the CRCs were checked on it, before anything is copied. */
static lmv_result lmv__native_copy(lmv_model *m, lmv_error *err) {
    unsigned char *c = (unsigned char *)lmv__alloc(&m->allocator, m->file_size);
    size_t k;
    int i;
    if (!c)
        return lmv__fail(err, LMV_ERR_OUT_OF_MEMORY,
                         "out of memory: a big-endian host needs a byte-swapped copy of the weights (%zu bytes)",
                         m->file_size);
    memcpy(c, m->file, m->file_size);
    m->native = c;
    for (i = 0; i < m->n_tensors; i++) { /* float32 values (plain or in panels) or int8 scales: 4 bytes; f16: 2 */
        lmv__tensor *t = &m->tensors[i];
        unsigned char *d = c + (t->data - m->file);
        size_t n4 = t->dtype == LMV_DTYPE_F32 || t->dtype == LMV_DTYPE_F32P ? t->nbytes
                    : t->dtype == LMV_DTYPE_INT8 ? 4 * (size_t)t->shape[0] : 0;
        for (k = 0; k + 4 <= n4; k += 4) {
            unsigned char b0 = d[k], b1 = d[k + 1];
            d[k] = d[k + 3]; d[k + 1] = d[k + 2]; d[k + 2] = b1; d[k + 3] = b0;
        }
        if (t->dtype == LMV_DTYPE_F16)
            for (k = 0; k + 2 <= t->nbytes; k += 2) {
                unsigned char b0 = d[k];
                d[k] = d[k + 1]; d[k + 1] = b0;
            }
        t->data = d;
    }
    for (i = 0; i < m->n_meta; i++) {
        lmv__meta *e = &m->meta[i];
        unsigned char *d = c + (e->payload - m->file);
        if (e->type > 2) continue;
        for (k = 0; k < (size_t)e->count * 4; k += 4) {
            unsigned char b0 = d[k], b1 = d[k + 1];
            d[k] = d[k + 3]; d[k + 1] = d[k + 2]; d[k + 2] = b1; d[k + 3] = b0;
        }
    }
    return LMV_OK;
}

static lmv_result lmv__check_tokens(const lmv_model *m, int h, int w, lmv_error *err);

/* The eval transform's crop is the input every image helper runs: a crop the model's plan
   cannot take (too many tokens, a size the architecture refuses) makes the file unusable, so it
   is refused here, before a session or an input tensor of that size is ever allocated. */
static lmv_result lmv__check_crop(const lmv_model *m, lmv_error *err) {
    const lmv_preprocess *pp = &m->info.preprocess;
    size_t floats = 0;
    lmv_error e;
    lmv_result r = lmv__check_tokens(m, pp->crop_h, pp->crop_w, &e);
    if (r == LMV_OK) r = m->ops->plan(m, 1, pp->crop_h, pp->crop_w, &floats, &e);
    if (r == LMV_OK && floats > SIZE_MAX / 8) r = lmv__fail(&e, LMV_ERR_LIMIT, "its activations do not fit in size_t");
    if (r != LMV_OK)
        return lmv__fail(err, r == LMV_ERR_INPUT_SIZE ? LMV_ERR_INPUT_SIZE : LMV_ERR_LIMIT,
                         "pre.crop %d x %d is an input this model cannot run (%s): convert it with a smaller crop",
                         pp->crop_h, pp->crop_w, e.message);
    return LMV_OK;
}

/* Bind the family's graph, then refuse a file holding any tensor the graph did not read: a
   tensor left over means an option the graph lacks (or a hand-edited file), and running without
   it would give confident wrong numbers. */
static lmv_result lmv__bind_all(lmv_model *m, lmv_error *err) {
    lmv_result r;
    int i;
    for (i = 0; i < m->n_tensors; i++) m->tensors[i].bound = 0;
    r = m->ops->bind(m, err);
    for (i = 0; r == LMV_OK && i < m->n_tensors; i++)
        if (!m->tensors[i].bound) {
            const lmv__tensor *t = &m->tensors[i];
            char name[200];
            size_t len = (size_t)t->name_len < sizeof name - 1 ? (size_t)t->name_len : sizeof name - 1;
            memcpy(name, t->name, len);
            name[len] = 0;
            r = lmv__fail(err, LMV_ERR_FORMAT,
                          "tensor '%s' is not read by the %s graph with this file's settings (an option this build "
                          "lacks, or an edited file): convert the checkpoint again",
                          name, m->ops->arch);
        }
    return r;
}

LEMEVIT_API lmv_result lmv_model_open_memory(const void *data, size_t size, const lmv_open_options *opt,
                                             lmv_model **out, lmv_error *err) {
    lmv_open_options o = opt ? *opt : lmv_open_options_default();
    lmv_model *m;
    lmv_result r;
    size_t i;
    if (!out) return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "lmv_model_open_memory: out is NULL");
    *out = NULL;
    if (!data || !size) return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "lmv_model_open_memory: no data");
    if (!lmv__allocator_resolve(&o.allocator))
        return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "no allocator given and the library was built with LEMEVIT_NO_MALLOC");
    if ((uintptr_t)data % 4)
        return lmv__fail(err, LMV_ERR_ALIGNMENT, "model memory must be at least 4-byte aligned (64 is best)");
    m = (lmv_model *)lmv__alloc(&o.allocator, sizeof(lmv_model));
    if (!m) return lmv__fail(err, LMV_ERR_OUT_OF_MEMORY, "out of memory opening the model");
    memset(m, 0, sizeof *m);
    m->allocator = o.allocator;
    m->file = (const unsigned char *)data;
    m->file_size = size;
    if ((r = lmv__parse(m, m->file, size, !o.skip_verify, err)) != LMV_OK ||
        (!lmv__host_is_le() && (r = lmv__native_copy(m, err)) != LMV_OK) || (r = lmv__read_common(m, err)) != LMV_OK) {
        lmv__model_release(m);
        return r;
    }
    for (i = 0; i < sizeof lmv__families / sizeof lmv__families[0]; i++)
        if (!strcmp(lmv__families[i]->arch, m->info.arch)) m->ops = lmv__families[i];
    if (!m->ops) {
        r = lmv__fail(err, LMV_ERR_UNSUPPORTED, "architecture '%s' is not supported by this build", m->info.arch);
        lmv__model_release(m);
        return r;
    }
    m->info.family = m->ops->family;
    if ((r = lmv__bind_all(m, err)) != LMV_OK || (r = lmv__check_crop(m, err)) != LMV_OK) {
        lmv__model_release(m);
        return r;
    }
    *out = m;
    lmv__ok(err);
    return LMV_OK;
}

/* An allocator that passes everything on and adds up what an lmv_arena would place. */
typedef struct lmv__counter {
    lmv_allocator inner;
    size_t total;
} lmv__counter;
static void *lmv__counter_alloc(void *user, size_t size) {
    lmv__counter *c = (lmv__counter *)user;
    void *p = c->inner.alloc(c->inner.user, size);
    if (p) c->total += lmv__arena_step(size);
    return p;
}
static void lmv__counter_free(void *user, void *p) {
    lmv__counter *c = (lmv__counter *)user;
    if (c->inner.free) c->inner.free(c->inner.user, p);
}

LEMEVIT_API lmv_result lmv_model_memory(const void *data, size_t size, const lmv_open_options *opt, size_t *bytes,
                                        lmv_error *err) {
    lmv_open_options o = opt ? *opt : lmv_open_options_default();
    lmv__counter c;
    lmv_model *m;
    lmv_result r;
    if (!bytes) return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "lmv_model_memory: bytes is NULL");
    *bytes = 0;
    c.inner = o.allocator;
    c.total = 0;
    if (!lmv__allocator_resolve(&c.inner))
        return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT,
                         "lmv_model_memory opens the model once to count: give it an allocator (this build has no malloc)");
    o.allocator.alloc = lmv__counter_alloc;
    o.allocator.free = lmv__counter_free;
    o.allocator.user = &c;
    if ((r = lmv_model_open_memory(data, size, &o, &m, err)) != LMV_OK) return r;
    lmv_model_close(m);
    *bytes = c.total;
    lmv__ok(err);
    return LMV_OK;
}

LEMEVIT_API lmv_result lmv_model_open_prealloc(const void *data, size_t size, const lmv_open_options *opt, void *mem,
                                               size_t mem_size, lmv_model **out, lmv_error *err) {
    lmv_open_options o = opt ? *opt : lmv_open_options_default();
    lmv_arena a;
    lmv_result r;
    if (!out) return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "lmv_model_open_prealloc: out is NULL");
    *out = NULL;
    if (!mem) return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "lmv_model_open_prealloc: mem is NULL");
    lmv_arena_init(&a, mem, mem_size);
    o.allocator = lmv_arena_allocator(&a);
    r = lmv_model_open_memory(data, size, &o, out, err);
    if (r == LMV_ERR_OUT_OF_MEMORY)
        return lmv__fail(err, r, "%zu bytes of memory are not enough to open the model; ask lmv_model_memory() for the size",
                         mem_size);
    if (r != LMV_OK) return r;
    (*out)->own = a; /* the arena lives on in the model, which never allocates after opening */
    (*out)->allocator.user = &(*out)->own;
    return LMV_OK;
}

#ifndef LEMEVIT_NO_STDIO
/* Read a whole file into a block from the allocator (at least 1 byte, so an empty file works).
   `kind` says what the path should name ("a .lmv file", "a JPEG file") in the messages. Plain C
   cannot ask what a path is, but a directory opens on common systems and then fails to read (with
   EISDIR where the system has it) while ftell reports nonsense; a pipe or device cannot seek or has
   no size. So one byte is read and the size is checked before anything is allocated. */
static lmv_result lmv__read_file(const char *path, const char *kind, const lmv_allocator *a, void **buf, size_t *len,
                                 lmv_error *err) {
    FILE *f = fopen(path, "rb");
    long n;
    int c;
    *buf = NULL;
    *len = 0;
    if (!f) return lmv__fail(err, LMV_ERR_IO, "cannot open '%s' (no such file, or not readable): check the path", path);
    errno = 0;
    c = getc(f);
    if (c == EOF && ferror(f)) {
        int dir = 0;
#ifdef EISDIR
        dir = errno == EISDIR;
#endif
        fclose(f);
        if (dir) return lmv__fail(err, LMV_ERR_IO, "'%s' is a directory, not a file: give the path of %s", path, kind);
        return lmv__fail(err, LMV_ERR_IO, "cannot read '%s' (a directory or an unreadable file?): give the path of %s",
                         path, kind);
    }
    if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0 || (n == 0 && c != EOF) ||
        n == LONG_MAX) {
        fclose(f);
        return lmv__fail(err, LMV_ERR_IO, "'%s' is not a regular file (a pipe or a device?): give the path of %s", path,
                         kind);
    }
    *buf = lmv__alloc(a, n ? (size_t)n : 1);
    if (!*buf) {
        fclose(f);
        return lmv__fail(err, LMV_ERR_OUT_OF_MEMORY, "out of memory reading '%s' (%zu bytes)", path, (size_t)n);
    }
    if (fread(*buf, 1, (size_t)n, f) != (size_t)n) {
        fclose(f);
        lmv__free(a, *buf);
        *buf = NULL;
        return lmv__fail(err, LMV_ERR_IO, "cannot read '%s'", path);
    }
    fclose(f);
    *len = (size_t)n;
    return LMV_OK;
}

LEMEVIT_API lmv_result lmv_model_open_file(const char *path, const lmv_open_options *opt, lmv_model **out,
                                           lmv_error *err) {
    lmv_open_options o = opt ? *opt : lmv_open_options_default();
    size_t len;
    void *buf;
    lmv_result r;
    if (!out || !path) return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "lmv_model_open_file: NULL argument");
    *out = NULL;
    if (!lmv__allocator_resolve(&o.allocator))
        return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "no allocator given and the library was built with LEMEVIT_NO_MALLOC");
    if ((r = lmv__read_file(path, "a .lmv file", &o.allocator, &buf, &len, err)) != LMV_OK) return r;
    if (len == 0) {
        lmv__free(&o.allocator, buf);
        return lmv__fail(err, LMV_ERR_TRUNCATED, "'%s' is empty", path);
    }
    r = lmv_model_open_memory(buf, len, &o, out, err);
    if (r != LMV_OK) {
        lmv__free(&o.allocator, buf);
        return r;
    }
    (*out)->owned_file = buf;
    return LMV_OK;
}
#endif

LEMEVIT_API void lmv_model_close(lmv_model *model) {
    if (model) lmv__model_release(model);
}

LEMEVIT_API const lmv_model_info *lmv_model_info_get(const lmv_model *model) { return model ? &model->info : NULL; }

LEMEVIT_API const char *lmv_model_label(const lmv_model *model, int i) {
    if (!model || !model->label_list || i < 0 || i >= model->n_labels) return NULL;
    return model->label_list[i];
}

LEMEVIT_API int lmv_model_config(const lmv_model *model, int i, lmv_config_entry *out) {
    const lmv__meta *e;
    const unsigned char *numbers;
    if (!model || i < 0 || i >= model->n_meta || !out) return 0;
    e = &model->meta[i];
    numbers = model->native ? model->native + (e->payload - model->file) : e->payload; /* host byte order */
    memset(out, 0, sizeof *out);
    out->key = e->key;
    out->type = (lmv_config_type)e->type;
    out->count = e->count;
    if (e->type == LMV_CONFIG_INTS) out->ints = (const int *)(const void *)numbers;
    if (e->type == LMV_CONFIG_FLOATS) out->floats = (const float *)(const void *)numbers;
    if (e->type == LMV_CONFIG_STRING) out->string = (const char *)e->payload;
    if (e->type == LMV_CONFIG_STRINGS) out->string = e->count ? e->strings[0] : NULL;
    return 1;
}

LEMEVIT_API int lmv_model_tensor(const lmv_model *model, int i, lmv_tensor_info *out) {
    const lmv__tensor *t;
    int d;
    if (!model || i < 0 || i >= model->n_tensors || !out) return 0;
    t = &model->tensors[i];
    memset(out, 0, sizeof *out);
    out->name = t->name;
    out->name_len = t->name_len;
    out->dtype = (lmv_dtype)t->dtype;
    out->ndim = t->ndim;
    for (d = 0; d < t->ndim; d++) out->shape[d] = t->shape[d];
    out->data = t->data;
    out->nbytes = t->nbytes;
    return 1;
}

/* Whether this build has the kernels of `simd` (the CPU may still lack them). */
static int lmv__simd_compiled(lmv_simd simd) {
#if defined(LMV__X86)
    if (simd == LMV_SIMD_AVX2 || simd == LMV_SIMD_AVX512 || simd == LMV_SIMD_AVX512_NOVNNI) return 1;
#endif
#if defined(LMV__NEON)
    return simd == LMV_SIMD_NEON;
#else
    return simd == LMV_SIMD_PORTABLE;
#endif
}

LEMEVIT_API const char *lmv_simd_name(lmv_simd simd) {
    switch (simd) {
    case LMV_SIMD_AUTO: return "auto";
    case LMV_SIMD_PORTABLE: return "portable";
    case LMV_SIMD_AVX2: return "avx2";
    case LMV_SIMD_AVX512: return "avx512";
    case LMV_SIMD_NEON: return "neon";
    case LMV_SIMD_AVX512_NOVNNI: return "avx512-novnni";
    }
    return "?";
}

LEMEVIT_API lmv_simd lmv_simd_best(void) { return lmv__simd_detect(); }

LEMEVIT_API int lmv_simd_available(lmv_simd simd) {
    if (simd == LMV_SIMD_AUTO) return 1;
    if (!lmv__simd_compiled(simd)) return 0;
    if (simd == LMV_SIMD_AVX2 || simd == LMV_SIMD_AVX512_NOVNNI) { /* AVX-512 runs both */
        lmv_simd best = lmv__simd_detect();
        return best == LMV_SIMD_AVX512 || best == LMV_SIMD_AVX512_NOVNNI || (simd == LMV_SIMD_AVX2 && best == LMV_SIMD_AVX2);
    }
    if (simd == LMV_SIMD_AVX512) return lmv__simd_detect() == LMV_SIMD_AVX512;
    return 1;
}

LEMEVIT_API lmv_simd lmv_session_simd(const lmv_session *s) { return s ? (lmv_simd)s->ctx.simd : LMV_SIMD_AUTO; }

LEMEVIT_API lmv_session_options lmv_session_options_default(void) {
    lmv_session_options o;
    memset(&o, 0, sizeof o);
    o.max_batch = 1;
    return o;
}

/* Images a session runs side by side: one per thread, as many as a batch may hold. */
static int lmv__lanes(int threads, int max_batch) { return threads < max_batch ? threads : max_batch; }

/* Threads that never hurt. Unless created with exact_threads, a session whose thread count N is
   above one times its runs (ms per multiply-add) and chooses among up to four counts: 1, N/2,
   N-1 and N (those that differ). On a machine whose cores are busy with other work every barrier
   of a parallel region waits for a thread the OS has descheduled, and all threads can be many
   times slower than fewer; with one core busy, all but one can still beat one. The first run
   uses N, the next times N-1 (or 1); then every 4 runs, backing off to every 64 while the pick
   holds (4 again when it moves), one run times a neighbour of the pick (the next count down or
   up, in turn), and the pick moves to a neighbour that was faster. A neighbour last timed r
   times slower than the pick is probed r times less often (r up to 16): on a busy 2-core
   machine two threads can take 20-40 times as long as one, and probes as often as runs of the
   pick would cost more than they find. Probing only neighbours keeps a probe cheap too: an idle
   16-core machine never runs a model on one thread to check. One thread
   must be faster than the counts above it by a quarter to be picked (their timings wander most).
   The pick depends only on the timings it is fed (tests/test_core.c feeds it made-up ones), and
   the results never depend on the thread count. */
static void lmv__guard_reset(lmv__guard *g, int threads) {
    int half = threads / 2;
    memset(g, 0, sizeof *g);
    g->count[g->n++] = 1;
    if (half > 1 && half < threads - 1) g->count[g->n++] = half;
    if (threads > 2) g->count[g->n++] = threads - 1;
    if (threads > 1) g->count[g->n++] = threads;
    g->cur = g->last = g->n - 1;
    g->every = 4;
}

/* The comparison the pick makes: one thread is handicapped by a quarter. */
static double lmv__guard_score(const lmv__guard *g, int k) { return g->count[k] == 1 ? 1.25 * g->est[k] : g->est[k]; }

/* The candidate the next run uses (an index into g->count); *probe: whether that run is a probe
   (its timing replaces the candidate's estimate instead of being averaged in). */
static int lmv__guard_pick(lmv__guard *g, int *probe) {
    int lo = g->cur - 1, hi = g->cur + 1 < g->n ? g->cur + 1 : -1, k, side, t;
    double stretch;
    *probe = 0;
    if (g->n < 2 || g->est[g->cur] <= 0.0) return g->cur;
    *probe = 1;
    if (lo >= 0 && g->est[lo] <= 0.0) return lo;
    if (hi >= 0 && g->est[hi] <= 0.0) return hi;
    *probe = 0;
    k = g->cur; /* one step to the faster neighbour, ties to more threads */
    if (hi >= 0 && lmv__guard_score(g, hi) <= lmv__guard_score(g, k)) k = hi;
    if (lo >= 0 && lmv__guard_score(g, lo) < lmv__guard_score(g, k)) k = lo;
    g->cur = k;
    lo = k - 1;
    hi = k + 1 < g->n ? k + 1 : -1;
    side = lo < 0 ? 1 : hi < 0 ? 0 : !g->side;
    t = side ? hi : lo;
    /* a probe that took r times as long as a run of the pick waits r times as long (r up to
       16): probes cost at most about 1/every of the time, however slow the other count is */
    stretch = g->est[t] > g->est[k] ? g->est[t] / g->est[k] : 1.0;
    if (++g->runs < g->every * (stretch < 16.0 ? stretch : 16.0)) return k;
    g->runs = 0;
    g->every = k == g->last ? (g->every < 64 ? 2 * g->every : 64) : 4;
    g->last = k;
    g->side = side;
    *probe = 1;
    return t;
}

/* A run on candidate k took `ms_per_gmac`. */
static void lmv__guard_note(lmv__guard *g, int k, int probe, double ms_per_gmac) {
    if (k < 0 || k >= g->n || !(ms_per_gmac > 0.0)) return;
    g->est[k] = probe || g->est[k] <= 0.0 ? ms_per_gmac : 0.5 * (g->est[k] + ms_per_gmac);
}

static int lmv__default_threads(int requested) {
#ifdef _OPENMP
    if (requested <= 0) requested = omp_get_max_threads();
    return requested < 1 ? 1 : requested > 256 ? 256 : requested;
#else
    (void)requested;
    return 1;
#endif
}

/* The documented limit of 1<<20 tokens per attention, for the family whose plan does not check it
   itself: LeMeViT attends over the image tokens of each stage (ViT checks in its plan; Swin attends
   within windows of at most window^2 tokens). */
static lmv_result lmv__check_tokens(const lmv_model *m, int h, int w, lmv_error *err) {
    if (m->ops->family == LMV_FAMILY_LEMEVIT) {
        const lmv__lemevit *v = (const lmv__lemevit *)m->graph;
        int sh[LMV__LMT_MAX_STAGES], sw[LMV__LMT_MAX_STAGES], h1, w1, i;
        lmv__lemevit_sizes(v, h, w, &h1, &w1, sh, sw);
        for (i = 0; i < v->n_stages; i++)
            if ((size_t)sh[i] * (size_t)sw[i] > ((size_t)1 << 20))
                return lmv__fail(err, LMV_ERR_LIMIT, "input %dx%d gives %zu tokens in stage %d, more than the limit of %zu",
                                 h, w, (size_t)sh[i] * (size_t)sw[i], i, (size_t)1 << 20);
    }
    return LMV_OK;
}

/* Activation memory for h x w: one image at a time on `threads`, and, with lanes > 1, `lanes`
   one-thread images side by side (each lane `lane_floats`, a multiple of 16 so every lane's
   buffers keep the arena's alignment). */
static lmv_result lmv__arena_floats(const lmv_model *m, int threads, int lanes, int h, int w, size_t *floats,
                                    size_t *lane_floats, lmv_error *err) {
    size_t one = 0;
    lmv_result r = m->ops->plan(m, threads, h, w, floats, err);
    if (r == LMV_OK && lanes > 1 && (r = m->ops->plan(m, 1, h, w, &one, err)) == LMV_OK) {
        one = (one + 15) & ~(size_t)15;
        if (one > SIZE_MAX / 8 / (size_t)lanes)
            return lmv__fail(err, LMV_ERR_LIMIT, "the activation memory for %d images of %dx%d does not fit in size_t", lanes,
                             h, w);
        if (one * (size_t)lanes > *floats) *floats = one * (size_t)lanes;
    }
    if (lane_floats) *lane_floats = one;
    return r;
}

/* Resolve options to the sizes the plan uses. */
static lmv_result lmv__session_sizes(const lmv_model *model, const lmv_session_options *opt, lmv_session_options *o,
                                     size_t *arena_floats, lmv_error *err) {
    lmv_result r;
    if (!model) return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "model is NULL");
    *o = opt ? *opt : lmv_session_options_default();
    if (o->max_h <= 0) o->max_h = model->info.img_h;
    if (o->max_w <= 0) o->max_w = model->info.img_w;
    if (o->max_batch <= 0) o->max_batch = 1;
    if (o->max_h > (1 << 15) || o->max_w > (1 << 15) || o->max_batch > (1 << 16))
        return lmv__fail(err, LMV_ERR_LIMIT, "session size %dx%d batch %d exceeds the limits", o->max_h, o->max_w,
                         o->max_batch);
    o->threads = lmv__default_threads(o->threads);
    if ((unsigned)o->simd > (unsigned)LMV_SIMD_AVX512_NOVNNI)
        return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "options.simd is %d, not one of the lmv_simd values (0 to %d)",
                         (int)o->simd, (int)LMV_SIMD_AVX512_NOVNNI);
    if (!lmv_simd_available(o->simd))
        return lmv__fail(err, LMV_ERR_UNSUPPORTED, "options.simd asks for the %s kernels, which %s; use %s or LMV_SIMD_AUTO",
                         lmv_simd_name(o->simd), lmv__simd_compiled(o->simd) ? "this CPU cannot run" : "this build does not have",
                         lmv_simd_name(lmv_simd_best()));
    if (o->simd == LMV_SIMD_AUTO) o->simd = lmv_simd_best();
    if ((r = lmv__check_tokens(model, o->max_h, o->max_w, err)) != LMV_OK) return r;
    r = lmv__arena_floats(model, o->threads, lmv__lanes(o->threads, o->max_batch), o->max_h, o->max_w, arena_floats, NULL,
                          err);
    if (r == LMV_OK && *arena_floats > SIZE_MAX / 8)
        return lmv__fail(err, LMV_ERR_LIMIT, "the activation memory for %dx%d does not fit in size_t", o->max_h, o->max_w);
    return r;
}

LEMEVIT_API lmv_result lmv_session_memory(const lmv_model *model, const lmv_session_options *opt, size_t *bytes,
                                          lmv_error *err) {
    lmv_session_options o = lmv_session_options_default();
    size_t floats = 0;
    lmv_result r = lmv__session_sizes(model, opt, &o, &floats, err);
    if (r != LMV_OK) return r;
    if (!bytes) return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "bytes is NULL");
    *bytes = lmv__alloc_cost(sizeof(lmv_session)) + lmv__alloc_cost(floats * sizeof(float));
    lmv__ok(err);
    return LMV_OK;
}

LEMEVIT_API lmv_result lmv_session_create(const lmv_model *model, const lmv_session_options *opt,
                                          lmv_session **out, lmv_error *err) {
    lmv_session_options o = lmv_session_options_default();
    size_t floats = 0;
    lmv_session *s;
    lmv_result r;
    if (!out) return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "lmv_session_create: out is NULL");
    *out = NULL;
    if ((r = lmv__session_sizes(model, opt, &o, &floats, err)) != LMV_OK) return r;
    if (!lmv__allocator_resolve(&o.allocator))
        return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "no allocator given and the library was built with LEMEVIT_NO_MALLOC");
    s = (lmv_session *)lmv__alloc(&o.allocator, sizeof(lmv_session));
    if (!s) return lmv__fail(err, LMV_ERR_OUT_OF_MEMORY, "out of memory creating a session");
    memset(s, 0, sizeof *s);
    s->model = model;
    s->allocator = o.allocator;
    s->ctx.threads = s->max_threads = o.threads;
    s->exact = o.exact_threads != 0;
    lmv__guard_reset(&s->guard, o.threads);
    s->lanes = lmv__lanes(o.threads, o.max_batch);
    s->ctx.int8_compute = o.int8_compute != 0;
    s->ctx.simd = (int)o.simd;
    s->ctx.macs = &s->macs;
    s->max_h = o.max_h;
    s->max_w = o.max_w;
    s->arena_floats = floats;
    s->arena = (float *)lmv__alloc(&o.allocator, floats * sizeof(float));
    if (!s->arena) {
        lmv__free(&o.allocator, s);
        return lmv__fail(err, LMV_ERR_OUT_OF_MEMORY, "out of memory: the session needs %zu bytes of activations",
                         floats * sizeof(float));
    }
    *out = s;
    lmv__ok(err);
    return LMV_OK;
}

LEMEVIT_API lmv_result lmv_session_create_prealloc(const lmv_model *model, const lmv_session_options *opt, void *mem,
                                                   size_t mem_size, lmv_session **out, lmv_error *err) {
    lmv_session_options o = opt ? *opt : lmv_session_options_default();
    lmv_arena a;
    lmv_result r;
    size_t need = 0;
    if (!out) return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "lmv_session_create_prealloc: out is NULL");
    *out = NULL;
    if (!mem) return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "lmv_session_create_prealloc: mem is NULL");
    lmv_arena_init(&a, mem, mem_size);
    o.allocator = lmv_arena_allocator(&a);
    if ((r = lmv_session_memory(model, &o, &need, err)) != LMV_OK) return r;
    if (need > mem_size)
        return lmv__fail(err, LMV_ERR_OUT_OF_MEMORY, "the session needs %zu bytes of memory, %zu were given (lmv_session_memory)",
                         need, mem_size);
    if ((r = lmv_session_create(model, &o, out, err)) != LMV_OK) return r;
    LEMEVIT_ASSERT(a.used <= need); /* lmv_session_memory() is exact */
    (*out)->own = a; /* later allocations (traces, lmv_classify_*) come from the rest of mem */
    (*out)->allocator.user = &(*out)->own;
    return LMV_OK;
}

LEMEVIT_API void lmv_session_destroy(lmv_session *s) {
    lmv_allocator a;
    if (!s) return;
    a = s->allocator;
    lmv__free(&a, s->attn_buf);
    lmv__free(&a, s->arena);
    lmv__free(&a, s);
}

LEMEVIT_API void lmv_session_set_threads(lmv_session *s, int threads) {
    if (!s) return;
    threads = lmv__default_threads(threads);
    threads = threads < s->max_threads ? threads : s->max_threads;
    if (threads != s->ctx.threads) lmv__guard_reset(&s->guard, threads);
    s->ctx.threads = threads;
}

LEMEVIT_API double lmv_session_macs(const lmv_session *s) { return s ? s->macs : 0.0; }

LEMEVIT_API void lmv_session_trace_attention(lmv_session *s, const char *block) {
    size_t n;
    if (!s) return;
    n = block ? strlen(block) : 0;
    if (n >= sizeof s->attn_block) n = 0;
    memcpy(s->attn_block, block ? block : "", n);
    s->attn_block[n] = 0;
}

LEMEVIT_API void lmv_session_set_trace(lmv_session *s, lmv_trace_fn fn, void *user) {
    if (!s) return;
    s->trace = fn;
    s->trace_user = user;
}

/* The first `n` images of a batch, side by side: each of `lanes` threads takes the next image
   and runs it alone (threads = 1) in activations of its own, `lane` floats apart. */
static lmv_result lmv__run_lanes(lmv_session *s, int lanes, size_t lane, const float *input, size_t img, int n, int h,
                                 int w, float *out, size_t odim, int features, lmv_error *err) {
    lmv_result res = LMV_OK;
#ifdef _OPENMP
    const lmv_model *m = s->model;
    double macs[256];
    int t;
    for (t = 0; t < lanes; t++) macs[t] = 0.0;
#pragma omp parallel num_threads(lanes)
    {
        int me = omp_get_thread_num(), i;
        lmv__ctx one = lmv__one_thread(&s->ctx, &macs[me]);
        float *arena = s->arena + (size_t)me * lane;
#pragma omp for schedule(dynamic, 1)
        for (i = 0; i < n; i++) {
            lmv_error e;
            lmv_result r = m->ops->forward(s, &one, arena, input + (size_t)i * img, 1, h, w, out + (size_t)i * odim, features, &e);
            if (r != LMV_OK) {
#pragma omp critical(lmv__lane_error)
                if (res == LMV_OK) {
                    res = r;
                    if (err) *err = e;
                }
            }
        }
    }
    for (t = 0; t < lanes; t++) s->macs += macs[t];
#else
    (void)s, (void)lanes, (void)lane, (void)input, (void)img, (void)n, (void)h, (void)w, (void)out, (void)odim,
        (void)features, (void)err;
#endif
    return res;
}

/* lmv__run on ctx.threads threads, its arguments checked. */
static lmv_result lmv__run_checked(lmv_session *s, const float *input, int batch, int h, int w, float *out, int features,
                                   lmv_error *err) {
    const lmv_model *m = s->model;
    size_t need, lane = 0, img, odim;
    int lanes, full;
    lmv_result r;
    /* whole rounds of `lanes` images side by side (not while tracing: the trace sees image 0
       as it is made), the rest one by one on all threads */
    lanes = s->lanes < s->ctx.threads ? s->lanes : s->ctx.threads;
    if (lanes > batch || s->trace) lanes = 1;
    if ((r = lmv__arena_floats(m, s->max_threads, lanes, h, w, &need, &lane, err)) != LMV_OK) return r;
    if (need > s->arena_floats)
        return lmv__fail(err, LMV_ERR_INPUT_SIZE, "input %dx%d needs more memory than this session planned", h, w);
    s->macs = 0.0;
    full = lanes > 1 ? batch / lanes * lanes : 0;
    img = (size_t)m->info.in_chans * h * w;
    odim = (size_t)(features ? m->info.num_features : m->info.num_classes);
    r = full ? lmv__run_lanes(s, lanes, lane, input, img, full, h, w, out, odim, features, err) : LMV_OK;
    if (r == LMV_OK && full < batch)
        r = m->ops->forward(s, &s->ctx, s->arena, input + (size_t)full * img, batch - full, h, w, out + (size_t)full * odim,
                            features, err);
    if (r == LMV_OK) lmv__ok(err);
    return r;
}

/* Seconds from some fixed point, for the thread guard (never used without OpenMP: one thread). */
static double lmv__guard_clock(void) {
#ifdef _OPENMP
    return omp_get_wtime();
#else
    return 0.0;
#endif
}

static lmv_result lmv__run(lmv_session *s, const float *input, int batch, int h, int w, float *out, int features,
                           lmv_error *err) {
    const lmv_model *m;
    int k, probe, threads;
    double t0;
    lmv_result r;
    if (!s || !input || !out) return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "lmv_run: NULL argument");
    m = s->model;
    if (batch < 1) return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "batch %d is out of range", batch);
    if (batch > (1 << 16)) return lmv__fail(err, LMV_ERR_LIMIT, "batch %d is above the limit of 65536", batch);
    if (!features && m->info.num_classes == 0)
        return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "the model has no classifier head; use lmv_run_features()");
    if (h < 1 || w < 1 || h > s->max_h || w > s->max_w)
        return lmv__fail(err, LMV_ERR_INPUT_SIZE,
                         "input %dx%d is outside this session's plan (at most %dx%d): create the session with larger max_h/max_w",
                         h, w, s->max_h, s->max_w);
    if (s->exact || s->ctx.threads < 2 || s->guard.n < 2) return lmv__run_checked(s, input, batch, h, w, out, features, err);
    k = lmv__guard_pick(&s->guard, &probe);
    threads = s->ctx.threads;
    s->ctx.threads = s->guard.count[k];
    t0 = lmv__guard_clock();
    r = lmv__run_checked(s, input, batch, h, w, out, features, err);
    if (r == LMV_OK && s->macs > 0.0) lmv__guard_note(&s->guard, k, probe, 1e3 * (lmv__guard_clock() - t0) / (s->macs / 1e9));
    s->ctx.threads = threads;
    return r;
}

LEMEVIT_API lmv_result lmv_run(lmv_session *s, const float *input, int batch, int h, int w, float *logits, lmv_error *err) {
    return lmv__run(s, input, batch, h, w, logits, 0, err);
}

LEMEVIT_API lmv_result lmv_run_features(lmv_session *s, const float *input, int batch, int h, int w, float *features,
                                        lmv_error *err) {
    return lmv__run(s, input, batch, h, w, features, 1, err);
}

/* --------------------------------------------------------------------------------------------
   Image: JPEG decode, resize, crop, normalise

   The decoder follows ITU T.81 and reproduces libjpeg-turbo's default decompression (the one
   Pillow uses): the "islow" integer IDCT (Loeffler-Ligtenberg-Moschytz with 13-bit constants,
   2 extra bits between passes), "fancy" triangular upsampling of 2x chroma, and 16-bit
   fixed-point YCbCr->RGB. Every stage is integer arithmetic, so the pixels come out the same.
   Memory: the image is decoded whole. A single-scan baseline file is turned into component
   planes as it is read; progressive and multi-scan files keep their coefficients until EOI.
   -------------------------------------------------------------------------------------------- */

LEMEVIT_API lmv_image_options lmv_image_options_default(void) {
    lmv_image_options o;
    memset(&o, 0, sizeof o);
    o.max_pixels = LMV_IMAGE_MAX_PIXELS_DEFAULT;
    o.max_scans = LMV_IMAGE_MAX_SCANS_DEFAULT;
    return o;
}

LEMEVIT_API void lmv_image_free(lmv_image *img) {
    if (!img) return;
    if (img->pixels && img->allocator.free) lmv__free(&img->allocator, img->pixels);
    img->pixels = NULL;
    img->width = img->height = img->channels = 0;
}

static lmv_result lmv__image_alloc(lmv_image *img, int w, int h, int ch, const lmv_allocator *a, lmv_error *err) {
    size_t n;
    memset(img, 0, sizeof *img);
    if (!lmv__mul_ok((size_t)w, (size_t)h, &n) || !lmv__mul_ok(n, (size_t)ch, &n))
        return lmv__fail(err, LMV_ERR_LIMIT, "image of %d x %d pixels is too large", w, h);
    img->pixels = (unsigned char *)lmv__alloc(a, n ? n : 1);
    if (!img->pixels)
        return lmv__fail(err, LMV_ERR_OUT_OF_MEMORY, "out of memory for a %d x %d image (%zu bytes)", w, h, n);
    img->width = w;
    img->height = h;
    img->channels = ch;
    img->allocator = *a;
    return LMV_OK;
}

#if !defined(LEMEVIT_NO_JPEG) || !defined(LEMEVIT_NO_PNG)
/* The EXIF orientation (1..8; 1 when absent or unreadable) from TIFF data ("II" or "MM", then the
   first IFD), as Pillow's getexif reads it for ImageOps.exif_transpose. */
static int lmv__tiff_orientation(const unsigned char *t, size_t tl) {
    size_t ifd, i, count;
    int le;
    if (tl < 8) return 1;
    if (t[0] == 'I' && t[1] == 'I') le = 1;
    else if (t[0] == 'M' && t[1] == 'M') le = 0;
    else return 1;
#define LMV__T16(o) (le ? (unsigned)(t[o] | (t[(o) + 1] << 8)) : (unsigned)((t[o] << 8) | t[(o) + 1]))
#define LMV__T32(o) (le ? ((size_t)LMV__T16(o) | ((size_t)LMV__T16((o) + 2) << 16)) : (((size_t)LMV__T16(o) << 16) | (size_t)LMV__T16((o) + 2)))
    ifd = LMV__T32(4);
    if (ifd > tl || tl - ifd < 2) return 1;
    count = LMV__T16(ifd);
    for (i = 0; i < count; i++) {
        size_t e = ifd + 2 + 12 * i;
        unsigned tag, type, v;
        if (e > tl || tl - e < 12) return 1;
        tag = LMV__T16(e);
        type = LMV__T16(e + 2);
        if (tag != 0x0112) continue;
        if (LMV__T32(e + 4) != 1) return 1;
        if (type == 3) v = LMV__T16(e + 8);
        else if (type == 4) v = (unsigned)LMV__T32(e + 8);
        else if (type == 1) v = t[e + 8];
        else return 1;
        return (v >= 1 && v <= 8) ? (int)v : 1;
    }
#undef LMV__T16
#undef LMV__T32
    return 1;
}
#endif

#ifndef LEMEVIT_NO_STDIO
typedef lmv_result (*lmv__image_decoder)(const void *data, size_t size, const lmv_image_options *opt, lmv_image *out,
                                         lmv_error *err);

/* The lmv_image_load_*_file() calls: the whole file at `path` read through the options' allocator
   (`kind` names it in messages), then decoded by `decode`. */
static lmv_result lmv__image_load_path(const char *fn, const char *kind, lmv__image_decoder decode, const char *path,
                                       const lmv_image_options *opt, lmv_image *out, lmv_error *err) {
    lmv_image_options o = opt ? *opt : lmv_image_options_default();
    size_t len;
    void *buf;
    lmv_result r;
    if (!out || !path) return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "%s: NULL argument", fn);
    memset(out, 0, sizeof *out);
    if (!lmv__allocator_resolve(&o.allocator))
        return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "no allocator given and the library was built with LEMEVIT_NO_MALLOC");
    if ((r = lmv__read_file(path, kind, &o.allocator, &buf, &len, err)) != LMV_OK) return r;
    r = decode(buf, len, &o, out, err);
    lmv__free(&o.allocator, buf);
    return r;
}
#endif

#ifndef LEMEVIT_NO_JPEG

/* Floor division by 2^n that does not depend on how the compiler shifts negative numbers. */
static int64_t lmv__asr64(int64_t x, int n) { return x >= 0 ? x >> n : -((-x - 1) >> n) - 1; }
static int lmv__asr(int x, int n) { return x >= 0 ? x >> n : -((-x - 1) >> n) - 1; }

#define LMV__HUFF_FAST 9

/* Position in the 8x8 block (row-major) of the k-th coefficient in zigzag order. */
static const unsigned char lmv__zigzag[64] = {
    0,  1,  8,  16, 9,  2,  3,  10, 17, 24, 32, 25, 18, 11, 4,  5,  12, 19, 26, 33, 40, 48,
    41, 34, 27, 20, 13, 6,  7,  14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23,
    30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63};

/* A Huffman table: codes of up to 9 bits resolve in one look-up; longer ones walk maxcode. */
typedef struct lmv__huff {
    unsigned char fast_len[1 << LMV__HUFF_FAST]; /* 0: no code of <= 9 bits starts here */
    unsigned char fast_val[1 << LMV__HUFF_FAST];
    int32_t maxcode[17];                         /* largest code of each length, -1 if none */
    int32_t valoff[17];                          /* vals index of a code of that length = code + valoff */
    unsigned char vals[256];
    int defined;
} lmv__huff;

typedef struct lmv__jcomp {
    int id, h, v, tq;
    int bw, bh;                /* blocks in the padded MCU grid */
    int dw, dh;                /* samples that belong to the image: ceil(W * h / hmax) ... */
    int td, ta;                /* Huffman tables of the current scan */
    int dc_pred;
    int has_q;
    uint16_t q[64];            /* quantisation table latched at the component's first scan */
    int16_t *coef;             /* bw * bh blocks of 64, row-major inside the block */
    unsigned char *plane;      /* bw*8 x bh*8 samples */
} lmv__jcomp;

typedef struct lmv__jpeg {
    const unsigned char *p;
    size_t n, pos;
    lmv_allocator al;
    size_t max_pixels;
    int max_scans;
    uint16_t qt[4][64];
    int qt_defined[4];
    lmv__huff *huff;           /* 8 tables: DC 0-3, AC 0-3; NULL when only the headers are read */
    int header_only;
    int frame, progressive, width, height, ncomp, hmax, vmax, mcux, mcuy;
    lmv__jcomp comp[4];
    int restart_interval;
    int jfif, adobe, adobe_transform, orientation, exif_seen;
    int scans, direct, eoi;
    /* the scan being decoded */
    int nsc, sc[4], ss, se, ah, al_, eobrun;
    /* bit reader: `bits` holds `nbits` bits at its top; after a marker or the end of the data
       zeros are fed in and counted in `nfake` so that using them can be reported */
    uint64_t bits;
    int nbits, nfake, stop;    /* stop: 0 reading, 1 at a marker, 2 at the end of the data */
} lmv__jpeg;

static lmv_result lmv__jcorrupt(lmv_error *err, const char *what) {
    return lmv__fail(err, LMV_ERR_IMAGE, "corrupt JPEG: %s", what);
}

/* The typical Huffman tables of ITU-T T.81 Annex K.3 (Tables K.3-K.6), as 16 code counts followed
   by the values: DC luminance, DC chrominance, AC luminance, AC chrominance. Motion-JPEG frames
   carry no DHT segment and rely on them; as libjpeg does, a scan that uses table 0 or 1 of a
   class that was never defined gets the luminance or chrominance table of that class. */
static const unsigned char lmv__jstd_huff[] = {
    /* DC luminance (K.3) */
    0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0,
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b,
    /* DC chrominance (K.4) */
    0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0,
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b,
    /* AC luminance (K.5) */
    0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 125,
    0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07,
    0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23, 0x42, 0xb1, 0xc1, 0x15, 0x52, 0xd1, 0xf0,
    0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0a, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x25, 0x26, 0x27, 0x28,
    0x29, 0x2a, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49,
    0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69,
    0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89,
    0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7,
    0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4, 0xc5,
    0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe1, 0xe2,
    0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8,
    0xf9, 0xfa,
    /* AC chrominance (K.6) */
    0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 119,
    0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61, 0x71,
    0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xa1, 0xb1, 0xc1, 0x09, 0x23, 0x33, 0x52, 0xf0,
    0x15, 0x62, 0x72, 0xd1, 0x0a, 0x16, 0x24, 0x34, 0xe1, 0x25, 0xf1, 0x17, 0x18, 0x19, 0x1a, 0x26,
    0x27, 0x28, 0x29, 0x2a, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48,
    0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68,
    0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87,
    0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5,
    0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3,
    0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda,
    0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8,
    0xf9, 0xfa
};

/* Build a table from the 16 code counts and the values (T.81 Annex C). */
static lmv_result lmv__huff_build(lmv__huff *t, const unsigned char *counts, const unsigned char *vals, int nvals,
                                  int is_dc, lmv_error *err) {
    int len, i, k = 0;
    uint32_t code = 0;
    memset(t->fast_len, 0, sizeof t->fast_len);
    memcpy(t->vals, vals, (size_t)nvals);
    for (len = 1; len <= 16; len++) {
        int cnt = counts[len - 1];
        t->valoff[len] = k - (int32_t)code;
        t->maxcode[len] = cnt ? (int32_t)(code + (uint32_t)cnt - 1) : -1;
        for (i = 0; i < cnt; i++, k++, code++) {
            if (code >= (1u << len)) return lmv__jcorrupt(err, "a Huffman table has more codes than fit");
            if (is_dc && vals[k] > 15) return lmv__jcorrupt(err, "a DC Huffman table has a value above 15");
            if (len <= LMV__HUFF_FAST) {
                int shift = LMV__HUFF_FAST - len, j;
                for (j = 0; j < (1 << shift); j++) {
                    t->fast_len[(code << shift) + (uint32_t)j] = (unsigned char)len;
                    t->fast_val[(code << shift) + (uint32_t)j] = vals[k];
                }
            }
        }
        code <<= 1;
    }
    t->maxcode[0] = -1;
    t->defined = 1;
    return LMV_OK;
}

/* Build table slot `slot` (DC 0-3, AC 4-7) from Annex K: slots 0/4 luminance, 1/5 chrominance. */
static lmv_result lmv__huff_std(lmv__huff *t, int slot, lmv_error *err) {
    const unsigned char *s = lmv__jstd_huff;
    int k = (slot >= 4 ? 2 : 0) + (slot & 3), i, n = 0;
    while (k-- > 0) {
        for (i = 0, n = 0; i < 16; i++) n += s[i];
        s += 16 + n;
    }
    for (i = 0, n = 0; i < 16; i++) n += s[i];
    return lmv__huff_build(t, s, s + 16, n, slot < 4, err);
}

/* ---- bit reader over the entropy-coded data ---- */

static void lmv__jfill(lmv__jpeg *j) {
    while (j->nbits <= 56) {
        unsigned c = 0;
        if (!j->stop) {
            if (j->pos >= j->n) j->stop = 2;
            else if (j->p[j->pos] != 0xFF) c = j->p[j->pos++];
            else {
                size_t q = j->pos + 1;
                while (q < j->n && j->p[q] == 0xFF) q++; /* fill bytes, as libjpeg */
                if (q >= j->n) j->stop = 2;
                else if (j->p[q] == 0) { c = 0xFF; j->pos = q + 1; }
                else j->stop = 1;                       /* a marker: leave pos on its 0xFF */
            }
        }
        if (j->stop) j->nfake += 8;
        j->bits |= (uint64_t)c << (56 - j->nbits);
        j->nbits += 8;
    }
}

static unsigned lmv__jbits(lmv__jpeg *j, int n) { /* 1 <= n <= 16 */
    unsigned v;
    if (j->nbits < n) lmv__jfill(j);
    v = (unsigned)(j->bits >> (64 - n));
    j->bits <<= n;
    j->nbits -= n;
    return v;
}

static int lmv__jbit(lmv__jpeg *j) { return (int)lmv__jbits(j, 1); }

/* The value of an n-bit magnitude category (T.81 F.2.2.1, EXTEND). */
static int lmv__jextend(lmv__jpeg *j, int s) {
    int v;
    if (s == 0) return 0;
    v = (int)lmv__jbits(j, s);
    return v < (1 << (s - 1)) ? v - (1 << s) + 1 : v;
}

/* Decode one Huffman symbol; -1 for a code not in the table. */
static int lmv__jdecode(lmv__jpeg *j, const lmv__huff *t) {
    unsigned peek;
    int len;
    if (j->nbits < 16) lmv__jfill(j);
    peek = (unsigned)(j->bits >> (64 - LMV__HUFF_FAST));
    len = t->fast_len[peek];
    if (len) {
        j->bits <<= len;
        j->nbits -= len;
        return t->fast_val[peek];
    }
    peek = (unsigned)(j->bits >> 48);
    for (len = LMV__HUFF_FAST + 1; len <= 16; len++) {
        int32_t code = (int32_t)(peek >> (16 - len));
        if (code <= t->maxcode[len]) {
            int32_t idx = code + t->valoff[len];
            if (idx < 0 || idx > 255) return -1;
            j->bits <<= len;
            j->nbits -= len;
            return t->vals[idx];
        }
    }
    return -1;
}

/* Did the last block use bits that are not in the file? */
static lmv_result lmv__jcheck_bits(const lmv__jpeg *j, lmv_error *err) {
    if (j->nfake > j->nbits) {
        if (j->stop == 2) return lmv__fail(err, LMV_ERR_IMAGE, "truncated JPEG: the data ends inside a scan");
        return lmv__jcorrupt(err, "a marker interrupts the compressed data");
    }
    return LMV_OK;
}

static void lmv__jreset_bits(lmv__jpeg *j) {
    j->bits = 0;
    j->nbits = j->nfake = j->stop = 0;
}

/* ---- the integer IDCT (libjpeg's "islow") ---- */

#define LMV__FIX_0_298631336 2446
#define LMV__FIX_0_390180644 3196
#define LMV__FIX_0_541196100 4433
#define LMV__FIX_0_765366865 6270
#define LMV__FIX_0_899976223 7373
#define LMV__FIX_1_175875602 9633
#define LMV__FIX_1_501321110 12299
#define LMV__FIX_1_847759065 15137
#define LMV__FIX_1_961570560 16069
#define LMV__FIX_2_053119869 16819
#define LMV__FIX_2_562915447 20995
#define LMV__FIX_3_072711026 25172

/* One 8-point pass on in[0], in[s], ..., in[7s]; out gets the 8 results before descaling. */
static void lmv__idct8(const int64_t *in, int64_t *out) {
    int64_t z1, z2, z3, z4, z5, t0, t1, t2, t3, t10, t11, t12, t13;
    z2 = in[2];
    z3 = in[6];
    z1 = (z2 + z3) * LMV__FIX_0_541196100;
    t2 = z1 - z3 * LMV__FIX_1_847759065;
    t3 = z1 + z2 * LMV__FIX_0_765366865;
    t0 = (in[0] + in[4]) * 8192;
    t1 = (in[0] - in[4]) * 8192;
    t10 = t0 + t3;
    t13 = t0 - t3;
    t11 = t1 + t2;
    t12 = t1 - t2;
    t0 = in[7];
    t1 = in[5];
    t2 = in[3];
    t3 = in[1];
    z1 = t0 + t3;
    z2 = t1 + t2;
    z3 = t0 + t2;
    z4 = t1 + t3;
    z5 = (z3 + z4) * LMV__FIX_1_175875602;
    t0 *= LMV__FIX_0_298631336;
    t1 *= LMV__FIX_2_053119869;
    t2 *= LMV__FIX_3_072711026;
    t3 *= LMV__FIX_1_501321110;
    z1 *= -LMV__FIX_0_899976223;
    z2 *= -LMV__FIX_2_562915447;
    z3 = z3 * -LMV__FIX_1_961570560 + z5;
    z4 = z4 * -LMV__FIX_0_390180644 + z5;
    t0 += z1 + z3;
    t1 += z2 + z4;
    t2 += z2 + z3;
    t3 += z1 + z4;
    out[0] = t10 + t3;
    out[7] = t10 - t3;
    out[1] = t11 + t2;
    out[6] = t11 - t2;
    out[2] = t12 + t1;
    out[5] = t12 - t1;
    out[3] = t13 + t0;
    out[4] = t13 - t0;
}

/* libjpeg's range limit: results are taken modulo 1024 around 0, then clamped, so a wild value
   wraps exactly as it does there. */
static unsigned char lmv__idct_clamp(int64_t v) {
    int u = (int)(v & 1023);
    if (u < 128) return (unsigned char)(u + 128);
    if (u < 512) return 255;
    if (u < 896) return 0;
    return (unsigned char)(u - 896);
}

/* Dequantise and inverse-transform one block of coefficients (row-major) into 8x8 samples. */
static void lmv__idct_block(const int16_t *coef, const uint16_t *q, unsigned char *out, size_t stride) {
    int64_t ws[64], col[8], res[8];
    int x, y;
    for (x = 0; x < 8; x++) {
        if (!coef[8 + x] && !coef[16 + x] && !coef[24 + x] && !coef[32 + x] && !coef[40 + x] && !coef[48 + x] &&
            !coef[56 + x]) {
            int64_t dc = (int32_t)(uint32_t)(uint64_t)((int64_t)coef[x] * q[x] * 4);
            for (y = 0; y < 8; y++) ws[y * 8 + x] = dc;
            continue;
        }
        for (y = 0; y < 8; y++) col[y] = (int64_t)coef[y * 8 + x] * q[y * 8 + x];
        lmv__idct8(col, res);
        /* the workspace is 32-bit in libjpeg: keep the same wrap-around for wild input */
        for (y = 0; y < 8; y++) ws[y * 8 + x] = (int32_t)(uint32_t)(uint64_t)lmv__asr64(res[y] + 1024, 11);
    }
    for (y = 0; y < 8; y++) {
        const int64_t *r = ws + y * 8;
        unsigned char *o = out + (size_t)y * stride;
        lmv__idct8(r, res);
        for (x = 0; x < 8; x++) o[x] = lmv__idct_clamp(lmv__asr64(res[x] + ((int64_t)1 << 17), 18));
    }
}

/* ---- markers ---- */

static lmv_result lmv__jseg(lmv__jpeg *j, size_t *len, lmv_error *err) {
    if (j->n - j->pos < 2) return lmv__fail(err, LMV_ERR_IMAGE, "truncated JPEG: a segment length is cut off");
    *len = ((size_t)j->p[j->pos] << 8) | j->p[j->pos + 1];
    if (*len < 2) return lmv__jcorrupt(err, "a segment length is below 2");
    if (*len > j->n - j->pos) return lmv__fail(err, LMV_ERR_IMAGE, "truncated JPEG: a marker segment is cut off");
    return LMV_OK;
}

static lmv_result lmv__jdqt(lmv__jpeg *j, const unsigned char *s, size_t len, lmv_error *err) {
    while (len > 0) {
        int pq = s[0] >> 4, tq = s[0] & 15, k;
        size_t need = 1 + (pq ? 128u : 64u);
        if (pq > 1 || tq > 3) return lmv__jcorrupt(err, "a quantisation table has a bad precision or index");
        if (len < need) return lmv__jcorrupt(err, "a quantisation table segment is too short");
        for (k = 0; k < 64; k++)
            j->qt[tq][lmv__zigzag[k]] = (uint16_t)(pq ? (s[1 + 2 * k] << 8) | s[2 + 2 * k] : s[1 + k]);
        j->qt_defined[tq] = 1;
        s += need;
        len -= need;
    }
    return LMV_OK;
}

static lmv_result lmv__jdht(lmv__jpeg *j, const unsigned char *s, size_t len, lmv_error *err) {
    while (len > 0) {
        int tc, th, i, total = 0;
        lmv_result r;
        if (len < 17) return lmv__jcorrupt(err, "a Huffman table segment is too short");
        tc = s[0] >> 4;
        th = s[0] & 15;
        if (tc > 1 || th > 3) return lmv__jcorrupt(err, "a Huffman table has a bad class or index");
        for (i = 0; i < 16; i++) total += s[1 + i];
        if (total > 256 || (size_t)total > len - 17) return lmv__jcorrupt(err, "a Huffman table segment is too short");
        if (j->huff && (r = lmv__huff_build(&j->huff[tc * 4 + th], s + 1, s + 17, total, tc == 0, err)) != LMV_OK)
            return r;
        s += 17 + (size_t)total;
        len -= 17 + (size_t)total;
    }
    return LMV_OK;
}

/* EXIF: the orientation tag (0x0112) of IFD0, read as Pillow's getexif() does. */
static void lmv__jexif(lmv__jpeg *j, const unsigned char *s, size_t len) {
    if (j->exif_seen || len < 6 || memcmp(s, "Exif\0", 5) != 0) return;
    j->exif_seen = 1; /* Pillow reads the first Exif segment only */
    j->orientation = lmv__tiff_orientation(s + 6, len - 6);
}

static lmv_result lmv__jsof(lmv__jpeg *j, int marker, const unsigned char *s, size_t len, lmv_error *err) {
    int i, c;
    size_t pixels, bytes, min_blocks;
    if (j->frame) return lmv__jcorrupt(err, "more than one frame header");
    if (len < 6) return lmv__jcorrupt(err, "the frame header is too short");
    if (s[0] != 8)
        return lmv__fail(err, LMV_ERR_UNSUPPORTED, "unsupported: %d-bit JPEG (only 8-bit samples are supported)", s[0]);
    j->height = (s[1] << 8) | s[2];
    j->width = (s[3] << 8) | s[4];
    j->ncomp = s[5];
    if (j->height == 0)
        return lmv__fail(err, LMV_ERR_UNSUPPORTED, "unsupported: JPEG with its height in a DNL marker");
    if (j->width == 0) return lmv__jcorrupt(err, "the image width is zero");
    if (j->ncomp != 1 && j->ncomp != 3 && j->ncomp != 4)
        return lmv__fail(err, LMV_ERR_UNSUPPORTED, "unsupported: JPEG with %d colour components", j->ncomp);
    if (len < 6 + 3 * (size_t)j->ncomp) return lmv__jcorrupt(err, "the frame header is too short");
    pixels = (size_t)j->width * (size_t)j->height;
    if (pixels > j->max_pixels)
        return lmv__fail(err, LMV_ERR_LIMIT, "JPEG of %d x %d pixels is above the limit of %zu pixels (max_pixels)",
                         j->width, j->height, j->max_pixels);
    j->progressive = marker == 0xC2;
    j->hmax = j->vmax = 1;
    for (i = 0; i < j->ncomp; i++) {
        lmv__jcomp *cp = &j->comp[i];
        cp->id = s[6 + 3 * i];
        cp->h = s[7 + 3 * i] >> 4;
        cp->v = s[7 + 3 * i] & 15;
        cp->tq = s[8 + 3 * i];
        if (cp->h < 1 || cp->h > 4 || cp->v < 1 || cp->v > 4) return lmv__jcorrupt(err, "a sampling factor is outside 1..4");
        if (cp->tq > 3) return lmv__jcorrupt(err, "a component names a quantisation table above 3");
        for (c = 0; c < i; c++)
            if (j->comp[c].id == cp->id) return lmv__jcorrupt(err, "two components have the same id");
        if (cp->h > j->hmax) j->hmax = cp->h;
        if (cp->v > j->vmax) j->vmax = cp->v;
    }
    j->mcux = (j->width + 8 * j->hmax - 1) / (8 * j->hmax);
    j->mcuy = (j->height + 8 * j->vmax - 1) / (8 * j->vmax);
    for (i = 0; i < j->ncomp; i++) {
        lmv__jcomp *cp = &j->comp[i];
        if (j->hmax % cp->h || j->vmax % cp->v)
            return lmv__fail(err, LMV_ERR_UNSUPPORTED,
                             "unsupported: sampling factors that are not integral multiples of each other");
        cp->bw = j->mcux * cp->h;
        cp->bh = j->mcuy * cp->v;
        cp->dw = (int)(((size_t)j->width * (size_t)cp->h + (size_t)j->hmax - 1) / (size_t)j->hmax);
        cp->dh = (int)(((size_t)j->height * (size_t)cp->v + (size_t)j->vmax - 1) / (size_t)j->vmax);
    }
    /* Every block costs at least one bit of the file (its DC code, in a sequential scan or the
       first DC scan of a progressive one), so a tiny file cannot make us allocate memory for a
       huge image: the component with the most blocks bounds the data from below. */
    min_blocks = 0;
    for (i = 0; i < j->ncomp; i++) {
        size_t b = (size_t)((j->comp[i].dw + 7) / 8) * (size_t)((j->comp[i].dh + 7) / 8);
        if (b > min_blocks) min_blocks = b;
    }
    if (min_blocks / 8 > j->n - j->pos)
        return lmv__fail(err, LMV_ERR_IMAGE, "truncated JPEG: %zu bytes cannot hold a %d x %d image", j->n, j->width,
                         j->height);
    for (i = 0; i < j->ncomp; i++) {
        lmv__jcomp *cp = &j->comp[i];
        if (!lmv__mul_ok((size_t)cp->bw * (size_t)cp->bh, 64 * sizeof(int16_t), &bytes))
            return lmv__fail(err, LMV_ERR_LIMIT, "JPEG is too large");
        if (j->header_only) continue;
        cp->plane = (unsigned char *)lmv__alloc(&j->al, bytes / sizeof(int16_t));
        if (!cp->plane) return lmv__fail(err, LMV_ERR_OUT_OF_MEMORY, "out of memory decoding a %d x %d JPEG", j->width, j->height);
    }
    j->frame = 1;
    return LMV_OK;
}

/* Coefficient storage, made at the first scan that needs it. */
static lmv_result lmv__jcoefs(lmv__jpeg *j, lmv_error *err) {
    int i;
    for (i = 0; i < j->ncomp; i++) {
        lmv__jcomp *cp = &j->comp[i];
        size_t bytes;
        if (cp->coef) continue;
        if (!lmv__mul_ok((size_t)cp->bw * (size_t)cp->bh, 64 * sizeof(int16_t), &bytes))
            return lmv__fail(err, LMV_ERR_LIMIT, "JPEG is too large");
        cp->coef = (int16_t *)lmv__alloc(&j->al, bytes);
        if (!cp->coef) return lmv__fail(err, LMV_ERR_OUT_OF_MEMORY, "out of memory decoding a %d x %d JPEG", j->width, j->height);
        memset(cp->coef, 0, bytes);
    }
    return LMV_OK;
}

/* ---- entropy decoding of one block ---- */

/* The DC difference of a block (T.81 F.2.2.1), added to the component's predictor. */
static lmv_result lmv__jdc(lmv__jpeg *j, lmv__jcomp *cp, lmv_error *err) {
    int t = lmv__jdecode(j, &j->huff[cp->td]);
    if (t < 0) return lmv__jcorrupt(err, "bad Huffman code");
    cp->dc_pred += lmv__jextend(j, t);
    if (cp->dc_pred < -32768 || cp->dc_pred > 32767) return lmv__jcorrupt(err, "a DC coefficient is out of range");
    return LMV_OK;
}

/* AC coefficients ss..se scaled by 2^al (T.81 F.2.2.2, G.1.2.2). A zero-size code other than ZRL
   ends the block; in a progressive scan it also starts a run of blocks with nothing in the band. */
static lmv_result lmv__jac(lmv__jpeg *j, lmv__jcomp *cp, int16_t *blk, int ss, int se, int al, int progressive,
                           lmv_error *err) {
    int k;
    for (k = ss; k <= se; k++) {
        int rs = lmv__jdecode(j, &j->huff[4 + cp->ta]), r, s;
        if (rs < 0) return lmv__jcorrupt(err, "bad Huffman code");
        r = rs >> 4;
        s = rs & 15;
        if (s) {
            k += r;
            if (k > se) return lmv__jcorrupt(err, "AC coefficients run past the end of the block");
            blk[lmv__zigzag[k]] = (int16_t)(lmv__jextend(j, s) * (1 << al));
        } else if (r == 15) {
            k += 15;
        } else {
            if (progressive) {
                j->eobrun = (1 << r) - 1;
                if (r) j->eobrun += (int)lmv__jbits(j, r);
            }
            break;
        }
    }
    return LMV_OK;
}

static lmv_result lmv__jblock_seq(lmv__jpeg *j, lmv__jcomp *cp, int16_t *blk, lmv_error *err) {
    lmv_result r = lmv__jdc(j, cp, err);
    if (r != LMV_OK) return r;
    blk[0] = (int16_t)cp->dc_pred;
    if ((r = lmv__jac(j, cp, blk, 1, 63, 0, 0, err)) != LMV_OK) return r;
    return lmv__jcheck_bits(j, err);
}

static lmv_result lmv__jblock_prog(lmv__jpeg *j, lmv__jcomp *cp, int16_t *blk, lmv_error *err) {
    lmv_result res;
    int k;
    if (j->ss == 0) { /* DC scan */
        if (j->ah == 0) {
            if ((res = lmv__jdc(j, cp, err)) != LMV_OK) return res;
            blk[0] = (int16_t)(cp->dc_pred * (1 << j->al_));
        } else if (lmv__jbit(j)) {
            blk[0] = (int16_t)(blk[0] | (1 << j->al_));
        }
        return lmv__jcheck_bits(j, err);
    }
    if (j->ah == 0) { /* first AC scan */
        if (j->eobrun > 0) {
            j->eobrun--;
            return LMV_OK;
        }
        if ((res = lmv__jac(j, cp, blk, j->ss, j->se, j->al_, 1, err)) != LMV_OK) return res;
        return lmv__jcheck_bits(j, err);
    }
    /* AC refinement (T.81 G.1.2.3): one more bit of every coefficient already nonzero, and new
       coefficients of magnitude 1 << Al. */
    {
        int p1 = 1 << j->al_, m1 = -(1 << j->al_);
        k = j->ss;
        if (j->eobrun == 0) {
            for (; k <= j->se; k++) {
                int rs = lmv__jdecode(j, &j->huff[4 + cp->ta]), r, s, val = 0;
                if (rs < 0) return lmv__jcorrupt(err, "bad Huffman code");
                r = rs >> 4;
                s = rs & 15;
                if (s) {
                    if (s != 1) return lmv__jcorrupt(err, "a refinement scan codes a magnitude above 1");
                    val = lmv__jbit(j) ? p1 : m1;
                } else if (r != 15) {
                    j->eobrun = 1 << r;
                    if (r) j->eobrun += (int)lmv__jbits(j, r);
                    break;
                }
                for (; k <= j->se; k++) {
                    int16_t *c = &blk[lmv__zigzag[k]];
                    if (*c) {
                        if (lmv__jbit(j) && (*c & p1) == 0) *c = (int16_t)(*c + (*c >= 0 ? p1 : m1));
                    } else {
                        if (r == 0) break;
                        r--;
                    }
                }
                if (val) {
                    if (k > j->se) return lmv__jcorrupt(err, "AC coefficients run past the end of the band");
                    blk[lmv__zigzag[k]] = (int16_t)val;
                }
            }
        }
        if (j->eobrun > 0) {
            for (; k <= j->se; k++) {
                int16_t *c = &blk[lmv__zigzag[k]];
                if (*c && lmv__jbit(j) && (*c & p1) == 0) *c = (int16_t)(*c + (*c >= 0 ? p1 : m1));
            }
            j->eobrun--;
        }
        return lmv__jcheck_bits(j, err);
    }
}

/* Decode (or, in direct mode, decode and transform) block (bx, by) of component ci. */
static lmv_result lmv__jblock(lmv__jpeg *j, int ci, int bx, int by, lmv_error *err) {
    lmv__jcomp *cp = &j->comp[ci];
    size_t bi = (size_t)by * (size_t)cp->bw + (size_t)bx;
    if (j->direct) {
        int16_t blk[64];
        lmv_result r;
        memset(blk, 0, sizeof blk);
        r = lmv__jblock_seq(j, cp, blk, err);
        if (r != LMV_OK) return r;
        lmv__idct_block(blk, cp->q, cp->plane + (size_t)by * 8 * ((size_t)cp->bw * 8) + (size_t)bx * 8, (size_t)cp->bw * 8);
        return LMV_OK;
    }
    if (j->progressive) return lmv__jblock_prog(j, cp, cp->coef + bi * 64, err);
    return lmv__jblock_seq(j, cp, cp->coef + bi * 64, err);
}

/* Skip to the next marker after entropy-coded data; returns 0 at the end of the data. */
static int lmv__jnext_marker(lmv__jpeg *j) {
    while (j->pos + 1 < j->n) {
        if (j->p[j->pos] == 0xFF && j->p[j->pos + 1] != 0 && j->p[j->pos + 1] != 0xFF) return 1;
        j->pos++;
    }
    return 0;
}

static lmv_result lmv__jrestart(lmv__jpeg *j, int *next_rst, lmv_error *err) {
    int i;
    if (!lmv__jnext_marker(j)) return lmv__fail(err, LMV_ERR_IMAGE, "truncated JPEG: a restart marker is missing");
    if (j->p[j->pos + 1] != 0xD0 + *next_rst) return lmv__jcorrupt(err, "a restart marker is missing or out of order");
    j->pos += 2;
    *next_rst = (*next_rst + 1) & 7;
    lmv__jreset_bits(j);
    j->eobrun = 0;
    for (i = 0; i < j->ncomp; i++) j->comp[i].dc_pred = 0;
    return LMV_OK;
}

static lmv_result lmv__jsos(lmv__jpeg *j, const unsigned char *s, size_t len, lmv_error *err) {
    int i, c, n, mx, my, next_rst = 0;
    long todo = 0, done = 0;
    lmv_result r;
    if (!j->frame) return lmv__jcorrupt(err, "a scan comes before the frame header");
    if (len < 1) return lmv__jcorrupt(err, "the scan header is too short");
    /* a scan of nothing but end-of-band runs costs a few bytes and a pass over every block:
       cap the count so a small file cannot keep the decoder busy for long */
    if (j->scans >= j->max_scans)
        return lmv__fail(err, LMV_ERR_LIMIT,
                         "JPEG has more than %d scans (max_scans; real files have about 10): raise max_scans to decode it",
                         j->max_scans);
    n = s[0];
    if (n < 1 || n > j->ncomp || len != 4 + 2 * (size_t)n) return lmv__jcorrupt(err, "the scan header is malformed");
    j->nsc = n;
    for (i = 0; i < n; i++) {
        int id = s[1 + 2 * i];
        for (c = 0; c < j->ncomp && j->comp[c].id != id; c++) {}
        if (c == j->ncomp) return lmv__jcorrupt(err, "a scan names a component the frame does not have");
        for (mx = 0; mx < i; mx++)
            if (j->sc[mx] == c) return lmv__jcorrupt(err, "a scan names a component twice");
        j->sc[i] = c;
        j->comp[c].td = s[2 + 2 * i] >> 4;
        j->comp[c].ta = s[2 + 2 * i] & 15;
        if (j->comp[c].td > 3 || j->comp[c].ta > 3) return lmv__jcorrupt(err, "a scan names a Huffman table above 3");
    }
    j->ss = s[1 + 2 * n];
    j->se = s[2 + 2 * n];
    j->ah = s[3 + 2 * n] >> 4;
    j->al_ = s[3 + 2 * n] & 15;
    if (j->progressive) {
        if (j->ss > j->se || j->se > 63 || (j->ss == 0 && j->se != 0) || (j->ss > 0 && n != 1) || j->ah > 13 ||
            j->al_ > 13)
            return lmv__jcorrupt(err, "the progressive scan parameters are invalid");
    } else {
        j->ss = 0;
        j->se = 63;
        j->ah = j->al_ = 0;
    }
    if (n > 1) {
        int blocks = 0;
        for (i = 0; i < n; i++) blocks += j->comp[j->sc[i]].h * j->comp[j->sc[i]].v;
        if (blocks > 10) return lmv__jcorrupt(err, "an MCU has more than 10 blocks");
    }
    for (i = 0; i < n; i++) {
        lmv__jcomp *cp = &j->comp[j->sc[i]];
        int need_dc = !j->progressive || (j->ss == 0 && j->ah == 0), need_ac = !j->progressive || j->ss > 0;
        if (need_dc && !j->huff[cp->td].defined && cp->td < 2 &&
            (r = lmv__huff_std(&j->huff[cp->td], cp->td, err)) != LMV_OK)
            return r;
        if (need_ac && !j->huff[4 + cp->ta].defined && cp->ta < 2 &&
            (r = lmv__huff_std(&j->huff[4 + cp->ta], 4 + cp->ta, err)) != LMV_OK)
            return r;
        if ((need_dc && !j->huff[cp->td].defined) || (need_ac && !j->huff[4 + cp->ta].defined))
            return lmv__jcorrupt(err, "a scan uses Huffman table 2 or 3, which was never defined");
        if (!cp->has_q) { /* latch the quantisation table, as libjpeg does */
            if (!j->qt_defined[cp->tq]) return lmv__jcorrupt(err, "a component uses a quantisation table that was never defined");
            memcpy(cp->q, j->qt[cp->tq], sizeof cp->q);
            cp->has_q = 1;
        }
        cp->dc_pred = 0;
    }
    if (j->scans == 0 && !j->progressive && n == j->ncomp) j->direct = 1;
    else if (j->direct) return lmv__jcorrupt(err, "a second scan after a complete baseline scan");
    else if ((r = lmv__jcoefs(j, err)) != LMV_OK) return r;
    j->scans++;
    j->eobrun = 0;
    lmv__jreset_bits(j);

    if (n == 1) {
        lmv__jcomp *cp = &j->comp[j->sc[0]];
        int bw = (cp->dw + 7) / 8, bh = (cp->dh + 7) / 8, bx, by;
        todo = (long)bw * bh;
        for (by = 0; by < bh; by++)
            for (bx = 0; bx < bw; bx++) {
                if ((r = lmv__jblock(j, j->sc[0], bx, by, err)) != LMV_OK) return r;
                done++;
                if (j->restart_interval && done % j->restart_interval == 0 && done < todo &&
                    (r = lmv__jrestart(j, &next_rst, err)) != LMV_OK)
                    return r;
            }
    } else {
        todo = (long)j->mcux * j->mcuy;
        for (my = 0; my < j->mcuy; my++)
            for (mx = 0; mx < j->mcux; mx++) {
                for (i = 0; i < n; i++) {
                    lmv__jcomp *cp = &j->comp[j->sc[i]];
                    int h, v;
                    for (v = 0; v < cp->v; v++)
                        for (h = 0; h < cp->h; h++)
                            if ((r = lmv__jblock(j, j->sc[i], mx * cp->h + h, my * cp->v + v, err)) != LMV_OK) return r;
                }
                done++;
                if (j->restart_interval && done % j->restart_interval == 0 && done < todo &&
                    (r = lmv__jrestart(j, &next_rst, err)) != LMV_OK)
                    return r;
            }
    }
    /* the scan is complete: continue at the marker that follows it */
    if (j->stop == 2) return lmv__fail(err, LMV_ERR_IMAGE, "truncated JPEG: the data ends after a scan (no EOI marker)");
    lmv__jreset_bits(j);
    if (!lmv__jnext_marker(j)) return lmv__fail(err, LMV_ERR_IMAGE, "truncated JPEG: the data ends after a scan (no EOI marker)");
    return LMV_OK;
}

/* Walk the markers up to EOI, decoding every scan. */
static lmv_result lmv__jparse(lmv__jpeg *j, lmv_error *err) {
    lmv_result r;
    if (j->n < 2 || j->p[0] != 0xFF || j->p[1] != 0xD8) return lmv__fail(err, LMV_ERR_IMAGE, "not a JPEG file (no SOI marker)");
    j->pos = 2;
    for (;;) {
        int m;
        size_t len = 0;
        const unsigned char *s;
        /* find the next marker; libjpeg skips stray bytes before it with a warning */
        while (j->pos < j->n && j->p[j->pos] != 0xFF) j->pos++;
        while (j->pos < j->n && j->p[j->pos] == 0xFF) j->pos++;
        if (j->pos >= j->n) {
            if (!j->frame) return lmv__fail(err, LMV_ERR_IMAGE, "truncated JPEG: no frame header");
            return lmv__fail(err, LMV_ERR_IMAGE, "truncated JPEG: no EOI marker");
        }
        m = j->p[j->pos++];
        if (m == 0xD9) { /* EOI */
            if (!j->frame || !j->scans) return lmv__jcorrupt(err, "the file ends before any image data");
            j->eoi = 1;
            return LMV_OK;
        }
        if (m == 0x00 || m == 0x01 || (m >= 0xD0 && m <= 0xD8)) continue; /* stray: ignore as libjpeg */
        if ((r = lmv__jseg(j, &len, err)) != LMV_OK) return r;
        s = j->p + j->pos + 2;
        len -= 2;
        j->pos += len + 2;
        switch (m) {
        case 0xC0: case 0xC1: case 0xC2:
            if ((r = lmv__jsof(j, m, s, len, err)) != LMV_OK) return r;
            break;
        case 0xC3: return lmv__fail(err, LMV_ERR_UNSUPPORTED, "unsupported: lossless JPEG");
        case 0xC5: case 0xC6: case 0xC7: case 0xDE: case 0xDF:
            return lmv__fail(err, LMV_ERR_UNSUPPORTED, "unsupported: hierarchical JPEG");
        case 0xC9: case 0xCA: case 0xCB: case 0xCD: case 0xCE: case 0xCF: /* a DAC alone is ignored, as libjpeg */
            return lmv__fail(err, LMV_ERR_UNSUPPORTED, "unsupported: arithmetic coding");
        case 0xF7: return lmv__fail(err, LMV_ERR_UNSUPPORTED, "unsupported: JPEG-LS");
        case 0xC4:
            if ((r = lmv__jdht(j, s, len, err)) != LMV_OK) return r;
            break;
        case 0xDB:
            if ((r = lmv__jdqt(j, s, len, err)) != LMV_OK) return r;
            break;
        case 0xDD:
            if (len < 2) return lmv__jcorrupt(err, "the restart interval segment is too short");
            j->restart_interval = (s[0] << 8) | s[1];
            break;
        case 0xDA:
            if (j->header_only) { /* what the first scan implies for memory, then stop */
                if (!j->frame) return lmv__jcorrupt(err, "a scan comes before the frame header");
                j->direct = len >= 1 && !j->progressive && s[0] == j->ncomp;
                return LMV_OK;
            }
            if ((r = lmv__jsos(j, s, len, err)) != LMV_OK) return r;
            break;
        case 0xDC: return lmv__fail(err, LMV_ERR_UNSUPPORTED, "unsupported: DNL marker");
        /* JFIF, EXIF and Adobe count only before the first scan: libjpeg settles the colour
           space and Pillow the orientation from the markers ahead of it */
        case 0xE0:
            if (!j->scans && len >= 14 && memcmp(s, "JFIF\0", 5) == 0) j->jfif = 1;
            break;
        case 0xE1:
            if (!j->scans) lmv__jexif(j, s, len);
            break;
        case 0xEE:
            if (!j->scans && len >= 12 && memcmp(s, "Adobe", 5) == 0) {
                j->adobe = 1;
                j->adobe_transform = s[11];
            }
            break;
        default: break; /* APPn, COM, ICC profiles: not needed for the pixels */
        }
    }
}

/* ---- upsampling and colour conversion ---- */

/* Row y of component cp at full resolution (width W), as libjpeg-turbo's upsampler gives it. */
static void lmv__jupsample(const lmv__jpeg *j, const lmv__jcomp *cp, int y, unsigned char *out) {
    int hr = j->hmax / cp->h, vr = j->vmax / cp->v, x, W = j->width, n = cp->dw;
    size_t stride = (size_t)cp->bw * 8;
    const unsigned char *row, *nb;
    if (hr == 1 && vr == 1) {
        memcpy(out, cp->plane + (size_t)y * stride, (size_t)W);
        return;
    }
    if (hr == 2 && vr == 1 && n > 2) { /* h2v1 fancy: 3/4 nearer + 1/4 further */
        row = cp->plane + (size_t)y * stride;
        out[0] = row[0];
        out[1] = (unsigned char)((row[0] * 3 + row[1] + 2) >> 2);
        for (x = 1; x < n - 1; x++) {
            int c = row[x] * 3;
            out[2 * x] = (unsigned char)((c + row[x - 1] + 1) >> 2);
            if (2 * x + 1 < W) out[2 * x + 1] = (unsigned char)((c + row[x + 1] + 2) >> 2);
        }
        if (2 * (n - 1) < W) out[2 * (n - 1)] = (unsigned char)((row[n - 1] * 3 + row[n - 2] + 1) >> 2);
        if (2 * (n - 1) + 1 < W) out[2 * (n - 1) + 1] = row[n - 1];
        return;
    }
    if (hr == 1 && vr == 2) { /* h1v2 fancy */
        int iy = y >> 1, ny = (y & 1) ? iy + 1 : iy - 1, bias = (y & 1) ? 2 : 1;
        if (ny < 0) ny = 0;
        if (ny > cp->dh - 1) ny = cp->dh - 1;
        row = cp->plane + (size_t)iy * stride;
        nb = cp->plane + (size_t)ny * stride;
        for (x = 0; x < W; x++) out[x] = (unsigned char)((row[x] * 3 + nb[x] + bias) >> 2);
        return;
    }
    if (hr == 2 && vr == 2 && n > 2) { /* h2v2 fancy: triangle filter in both directions */
        int iy = y >> 1, ny = (y & 1) ? iy + 1 : iy - 1, last, cur, next;
        if (ny < 0) ny = 0;
        if (ny > cp->dh - 1) ny = cp->dh - 1;
        row = cp->plane + (size_t)iy * stride;
        nb = cp->plane + (size_t)ny * stride;
        cur = row[0] * 3 + nb[0];
        next = row[1] * 3 + nb[1];
        out[0] = (unsigned char)((cur * 4 + 8) >> 4);
        out[1] = (unsigned char)((cur * 3 + next + 7) >> 4);
        last = cur;
        cur = next;
        for (x = 1; x < n - 1; x++) {
            next = row[x + 1] * 3 + nb[x + 1];
            out[2 * x] = (unsigned char)((cur * 3 + last + 8) >> 4);
            if (2 * x + 1 < W) out[2 * x + 1] = (unsigned char)((cur * 3 + next + 7) >> 4);
            last = cur;
            cur = next;
        }
        if (2 * (n - 1) < W) out[2 * (n - 1)] = (unsigned char)((cur * 3 + last + 8) >> 4);
        if (2 * (n - 1) + 1 < W) out[2 * (n - 1) + 1] = (unsigned char)((cur * 4 + 7) >> 4);
        return;
    }
    /* any other integral factor: plain replication */
    row = cp->plane + (size_t)(y / vr) * stride;
    for (x = 0; x < W; x++) out[x] = row[x / hr];
}

static unsigned char lmv__clamp255(int v) { return (unsigned char)(v < 0 ? 0 : v > 255 ? 255 : v); }

/* YCbCr -> RGB with libjpeg's 16-bit constants: FIX(1.402), FIX(1.772), FIX(0.71414), FIX(0.34414). */
static void lmv__ycc_rgb(int y, int cb, int cr, unsigned char *rgb) {
    int b = cb - 128, r = cr - 128;
    rgb[0] = lmv__clamp255(y + lmv__asr(91881 * r + 32768, 16));
    rgb[1] = lmv__clamp255(y + lmv__asr(-22554 * b + 32768 - 46802 * r, 16));
    rgb[2] = lmv__clamp255(y + lmv__asr(116130 * b + 32768, 16));
}

/* Pillow's CMYK -> RGB: r = (255 - k) - (c * (255 - k)) / 255 with its rounding of a*b/255. */
static unsigned char lmv__cmyk_chan(int c, int nk) {
    int t = c * nk + 128;
    return (unsigned char)(nk - (((t >> 8) + t) >> 8));
}

static lmv_result lmv__jemit(lmv__jpeg *j, const lmv_image_options *o, lmv_image *out, lmv_error *err) {
    int W = j->width, H = j->height, ch = j->ncomp == 1 ? 1 : 3, orient = o->ignore_orientation ? 1 : j->orientation;
    int ow = (orient >= 5) ? H : W, oh = (orient >= 5) ? W : H, x, y, c, transform;
    unsigned char *rows, *line;
    lmv_result r;
    /* how the components become RGB, chosen as libjpeg does */
    if (j->ncomp == 3) {
        if (j->jfif) transform = 1;
        else if (j->adobe) transform = j->adobe_transform != 0;
        else transform = !(j->comp[0].id == 'R' && j->comp[1].id == 'G' && j->comp[2].id == 'B');
    } else if (j->ncomp == 4) transform = j->adobe ? j->adobe_transform != 0 : 0; /* YCCK : CMYK */
    else transform = 0;
    if ((r = lmv__image_alloc(out, ow, oh, ch, &j->al, err)) != LMV_OK) return r;
    rows = (unsigned char *)lmv__alloc(&j->al, (size_t)W * 7); /* 4 component rows, 1 RGB row */
    if (!rows) {
        lmv_image_free(out);
        return lmv__fail(err, LMV_ERR_OUT_OF_MEMORY, "out of memory decoding a JPEG");
    }
    line = rows + (size_t)W * 4;
    for (y = 0; y < H; y++) {
        for (c = 0; c < j->ncomp; c++) lmv__jupsample(j, &j->comp[c], y, rows + (size_t)c * W);
        if (j->ncomp == 1) memcpy(line, rows, (size_t)W);
        for (x = 0; x < W && j->ncomp > 1; x++) {
            int c0 = rows[x], c1 = rows[W + x], c2 = rows[2 * W + x];
            unsigned char *px = line + (size_t)x * 3;
            if (j->ncomp == 3) {
                if (transform) lmv__ycc_rgb(c0, c1, c2, px);
                else { px[0] = (unsigned char)c0; px[1] = (unsigned char)c1; px[2] = (unsigned char)c2; }
            } else {
                /* libjpeg gives CMYK (YCCK: C,M,Y = 255 - RGB); Pillow reads it inverted ("CMYK;I")
                   and converts with its own formula. */
                int k = rows[3 * W + x], inv[3];
                if (transform) {
                    unsigned char rgb[3];
                    lmv__ycc_rgb(c0, c1, c2, rgb);
                    inv[0] = rgb[0]; inv[1] = rgb[1]; inv[2] = rgb[2];
                } else {
                    inv[0] = 255 - c0; inv[1] = 255 - c1; inv[2] = 255 - c2;
                }
                px[0] = lmv__cmyk_chan(inv[0], k);
                px[1] = lmv__cmyk_chan(inv[1], k);
                px[2] = lmv__cmyk_chan(inv[2], k);
            }
        }
        /* place the row as ImageOps.exif_transpose would */
        for (x = 0; x < W; x++) {
            int dx, dy;
            switch (orient) {
            case 2: dx = W - 1 - x; dy = y; break;
            case 3: dx = W - 1 - x; dy = H - 1 - y; break;
            case 4: dx = x; dy = H - 1 - y; break;
            case 5: dx = y; dy = x; break;
            case 6: dx = H - 1 - y; dy = x; break;
            case 7: dx = H - 1 - y; dy = W - 1 - x; break;
            case 8: dx = y; dy = W - 1 - x; break;
            default: dx = x; dy = y; break;
            }
            memcpy(out->pixels + ((size_t)dy * (size_t)ow + (size_t)dx) * (size_t)ch, line + (size_t)x * ch, (size_t)ch);
        }
    }
    lmv__free(&j->al, rows);
    return LMV_OK;
}

/* Read the headers (up to the first scan when header_only) into j, which lives on the stack;
   the Huffman tables, the only large part, are allocated only for a real decode. */
static lmv_result lmv__jopen(lmv__jpeg *j, const void *data, size_t size, lmv_image_options *o, int header_only,
                             const char *fn, lmv_error *err) {
    memset(j, 0, sizeof *j);
    if (!data && size) return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "%s: NULL data", fn);
    if (!lmv__allocator_resolve(&o->allocator))
        return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "no allocator given and the library was built with LEMEVIT_NO_MALLOC");
    if (o->max_pixels == 0) o->max_pixels = LMV_IMAGE_MAX_PIXELS_DEFAULT;
    if (o->max_scans <= 0) o->max_scans = LMV_IMAGE_MAX_SCANS_DEFAULT;
    j->p = (const unsigned char *)data;
    j->n = size;
    j->al = o->allocator;
    j->max_pixels = o->max_pixels;
    j->max_scans = o->max_scans;
    j->orientation = 1;
    j->header_only = header_only;
    if (!header_only) {
        j->huff = (lmv__huff *)lmv__alloc(&j->al, 8 * sizeof(lmv__huff));
        if (!j->huff) return lmv__fail(err, LMV_ERR_OUT_OF_MEMORY, "out of memory for the JPEG decoder");
        memset(j->huff, 0, 8 * sizeof(lmv__huff));
    }
    return lmv__jparse(j, err);
}

static void lmv__jrelease(lmv__jpeg *j) {
    int i;
    for (i = 0; i < 4; i++) {
        lmv__free(&j->al, j->comp[i].coef);
        lmv__free(&j->al, j->comp[i].plane);
    }
    lmv__free(&j->al, j->huff);
}

LEMEVIT_API lmv_result lmv_image_jpeg_info(const void *data, size_t size, const lmv_image_options *opt,
                                           lmv_image_info *info, lmv_error *err) {
    lmv_image_options o = opt ? *opt : lmv_image_options_default();
    lmv__jpeg j;
    lmv_result r;
    size_t total = 0, coefs = 0;
    int i, orient;
    if (!info) return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "lmv_image_jpeg_info: NULL output");
    memset(info, 0, sizeof *info);
    if ((r = lmv__jopen(&j, data, size, &o, 1, "lmv_image_jpeg_info", err)) != LMV_OK) return r;
    if (!j.frame) return lmv__fail(err, LMV_ERR_IMAGE, "truncated JPEG: no frame header");
    orient = o.ignore_orientation ? 1 : j.orientation;
    info->width = orient >= 5 ? j.height : j.width;
    info->height = orient >= 5 ? j.width : j.height;
    info->channels = j.ncomp == 1 ? 1 : 3;
    info->progressive = j.progressive;
    /* every block lmv_image_load_jpeg_memory asks for, each rounded as lmv_arena places them; the
       sizes were checked for overflow while the frame header was read */
    total += lmv__alloc_cost(8 * sizeof(lmv__huff));
    for (i = 0; i < j.ncomp; i++) {
        size_t samples = (size_t)j.comp[i].bw * (size_t)j.comp[i].bh * 64;
        total += lmv__alloc_cost(samples);
        coefs += lmv__alloc_cost(samples * sizeof(int16_t));
    }
    if (!j.direct) total += coefs; /* kept from the first scan to EOI */
    total += lmv__alloc_cost((size_t)j.width * (size_t)j.height * (size_t)info->channels);
    total += lmv__alloc_cost((size_t)j.width * 7);
    info->decode_memory = total;
    lmv__ok(err);
    return LMV_OK;
}

LEMEVIT_API lmv_result lmv_image_load_jpeg_memory(const void *data, size_t size, const lmv_image_options *opt,
                                                  lmv_image *out, lmv_error *err) {
    lmv_image_options o = opt ? *opt : lmv_image_options_default();
    lmv__jpeg j;
    lmv_result r;
    int i;
    if (!out) return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "lmv_image_load_jpeg_memory: NULL output");
    memset(out, 0, sizeof *out);
    if (o.max_memory) { /* the headers alone say what the decode will take: check before allocating */
        lmv_image_info info;
        if ((r = lmv_image_jpeg_info(data, size, &o, &info, err)) != LMV_OK) return r;
        if (info.decode_memory > o.max_memory)
            return lmv__fail(err, LMV_ERR_LIMIT,
                             "decoding this %d x %d JPEG needs %zu bytes, more than max_memory (%zu bytes)", info.width,
                             info.height, info.decode_memory, o.max_memory);
    }
    r = lmv__jopen(&j, data, size, &o, 0, "lmv_image_load_jpeg_memory", err);
    if (r == LMV_OK && !j.direct) {
        for (i = 0; i < j.ncomp; i++) {
            lmv__jcomp *cp = &j.comp[i];
            size_t stride = (size_t)cp->bw * 8;
            int bx, by;
            for (by = 0; by < cp->bh; by++)
                for (bx = 0; bx < cp->bw; bx++)
                    lmv__idct_block(cp->coef + ((size_t)by * (size_t)cp->bw + (size_t)bx) * 64, cp->q,
                                    cp->plane + (size_t)by * 8 * stride + (size_t)bx * 8, stride);
            lmv__free(&j.al, cp->coef);
            cp->coef = NULL;
        }
    }
    if (r == LMV_OK) r = lmv__jemit(&j, &o, out, err);
    lmv__jrelease(&j);
    if (r == LMV_OK) lmv__ok(err);
    return r;
}

LEMEVIT_API lmv_result lmv_image_load_jpeg_prealloc(const void *data, size_t size, const lmv_image_options *opt,
                                                    void *mem, size_t mem_size, lmv_image *out, lmv_error *err) {
    lmv_image_options o = opt ? *opt : lmv_image_options_default();
    lmv_arena a;
    lmv_result r;
    if (!out) return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "lmv_image_load_jpeg_prealloc: out is NULL");
    memset(out, 0, sizeof *out);
    if (!mem) return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "lmv_image_load_jpeg_prealloc: mem is NULL");
    lmv_arena_init(&a, mem, mem_size);
    o.allocator = lmv_arena_allocator(&a);
    r = lmv_image_load_jpeg_memory(data, size, &o, out, err);
    if (r == LMV_ERR_OUT_OF_MEMORY)
        return lmv__fail(err, r,
                         "%zu bytes of memory are not enough to decode this JPEG; ask lmv_image_jpeg_info() for "
                         "decode_memory",
                         mem_size);
    if (r != LMV_OK) return r;
    memset(&out->allocator, 0, sizeof out->allocator); /* the pixels belong to the caller's memory */
    return LMV_OK;
}

#ifndef LEMEVIT_NO_STDIO
LEMEVIT_API lmv_result lmv_image_load_jpeg_file(const char *path, const lmv_image_options *opt, lmv_image *out,
                                                lmv_error *err) {
    return lmv__image_load_path("lmv_image_load_jpeg_file", "a JPEG file", lmv_image_load_jpeg_memory, path, opt, out, err);
}
#endif
#endif /* LEMEVIT_NO_JPEG */

/* CRC-32 (ISO 3309: the one PNG chunks and gzip carry) of n bytes, continuing from `crc` (0 to
   start), four bits at a step from a 16-entry table; the PNG reader and writer share it. */
static const uint32_t lmv__crc_nibble[16] = {
    0x00000000u, 0x1DB71064u, 0x3B6E20C8u, 0x26D930ACu, 0x76DC4190u, 0x6B6B51F4u, 0x4DB26158u, 0x5005713Cu,
    0xEDB88320u, 0xF00F9344u, 0xD6D6A3E8u, 0xCB61B38Cu, 0x9B64C2B0u, 0x86D3D2D4u, 0xA00AE278u, 0xBDBDF21Cu};

static uint32_t lmv__crc32(uint32_t crc, const unsigned char *p, size_t n) {
    uint32_t c = crc ^ 0xFFFFFFFFu;
    size_t i;
    for (i = 0; i < n; i++) {
        c ^= p[i];
        c = (c >> 4) ^ lmv__crc_nibble[c & 15];
        c = (c >> 4) ^ lmv__crc_nibble[c & 15];
    }
    return c ^ 0xFFFFFFFFu;
}

#ifndef LEMEVIT_NO_PNG
/* ---- PNG (ISO/IEC 15948, RFC 1950/1951), with Pillow 9.4's conversion to RGB ----
   The chunks are walked and every CRC checked before anything is allocated; the zlib stream is
   then inflated straight from the IDAT chunks into one buffer of exactly the filtered size the
   header declares (the buffer is the inflate window too), unfiltered in place pass by pass, and
   each pixel converted and placed. */

static uint32_t lmv__be32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

#define LMV__PNG_FAST 9

/* A canonical Huffman code: a table for codes of up to LMV__PNG_FAST bits (symbol << 4 | length,
   0 where no such code starts), and counts and symbols sorted by length for the longer ones. */
typedef struct lmv__phuff {
    uint16_t fast[1 << LMV__PNG_FAST];
    uint16_t count[16];
    uint16_t sym[288];
} lmv__phuff;

typedef struct lmv__png {
    const unsigned char *p;
    size_t n;
    int width, height, depth, ctype, interlace;
    int samples;               /* samples a pixel: 1 gray, 3 RGB, 1 palette, 2 gray+alpha, 4 RGBA */
    int npal;
    int orientation;           /* from the last eXIf chunk: 1..8 */
    unsigned char pal[256 * 3];
    size_t idat;               /* offset of the first IDAT chunk */
    size_t raw_size;           /* bytes of filtered data: every pass's rows with their filter bytes */
    /* inflate */
    size_t pos, end;           /* next byte of the current IDAT chunk's data, and its end */
    uint32_t bits;
    int nbits;
    int fake;                  /* zero bytes fed past the end of the data (a peek may need two) */
    unsigned char *out;
    size_t produced;
    lmv__phuff *lit, *dist;
} lmv__png;

static lmv_result lmv__pcorrupt(lmv_error *err, const char *what) {
    return lmv__fail(err, LMV_ERR_IMAGE, "corrupt PNG: %s", what);
}

/* Adam7: first column, first row, column step, row step of each pass. */
static const unsigned char lmv__adam7[7][4] = {{0, 0, 8, 8}, {4, 0, 8, 8}, {0, 4, 4, 8}, {2, 0, 4, 4},
                                                {0, 2, 2, 4}, {1, 0, 2, 2}, {0, 1, 1, 2}};

static void lmv__ppass(const lmv__png *g, int pass, int *x0, int *y0, int *dx, int *dy, int *pw, int *ph) {
    if (!g->interlace) {
        *x0 = *y0 = 0;
        *dx = *dy = 1;
    } else {
        *x0 = lmv__adam7[pass][0];
        *y0 = lmv__adam7[pass][1];
        *dx = lmv__adam7[pass][2];
        *dy = lmv__adam7[pass][3];
    }
    *pw = g->width > *x0 ? (g->width - *x0 - 1) / *dx + 1 : 0; /* no overflow at 2^31 - 1 */
    *ph = g->height > *y0 ? (g->height - *y0 - 1) / *dy + 1 : 0;
}

/* Bytes of one filtered row of `pw` pixels, without its filter byte. */
static size_t lmv__prow_bytes(const lmv__png *g, int pw) {
    return ((size_t)pw * (size_t)(g->samples * g->depth) + 7) / 8;
}

/* Walk the chunks from the signature to IEND (or the end of the data), checking each CRC and the
   order of the critical chunks, and read IHDR and PLTE. */
static lmv_result lmv__popen(lmv__png *g, const void *data, size_t size, size_t max_pixels, lmv_error *err) {
    static const unsigned char sig[8] = {0x89, 'P', 'N', 'G', 0x0D, 0x0A, 0x1A, 0x0A};
    size_t pos = 8, after_idat = 0;
    int seen_ihdr = 0, seen_idat = 0, seen_plte = 0, pass;
    memset(g, 0, sizeof *g);
    g->p = (const unsigned char *)data;
    g->n = size;
    g->orientation = 1;
    if (size < 8 || memcmp(g->p, sig, 4) != 0)
        return lmv__fail(err, LMV_ERR_IMAGE, "not a PNG file (no PNG signature)");
    if (memcmp(g->p, sig, 8) != 0)
        return lmv__pcorrupt(err, "the 8-byte signature is damaged (as when a file is copied in text mode)");
    for (;;) {
        const unsigned char *c;
        uint32_t len;
        if (pos == size) {
            if (seen_idat) break; /* no IEND: Pillow accepts that, and so do we */
            return lmv__fail(err, LMV_ERR_IMAGE, "truncated PNG: the file ends before the image data");
        }
        if (size - pos < 12) return lmv__fail(err, LMV_ERR_IMAGE, "truncated PNG: a chunk is cut off");
        c = g->p + pos;
        len = lmv__be32(c);
        if (len > 0x7FFFFFFFu) return lmv__pcorrupt(err, "a chunk length is above 2^31 - 1");
        if ((size_t)len > size - pos - 12) return lmv__fail(err, LMV_ERR_IMAGE, "truncated PNG: a chunk is cut off");
        if (lmv__crc32(0, c + 4, (size_t)len + 4) != lmv__be32(c + 8 + len))
            return lmv__fail(err, LMV_ERR_IMAGE, "corrupt PNG: the CRC of chunk %c%c%c%c does not match its data",
                             (c[4] >= 32 && c[4] < 127) ? c[4] : '?', (c[5] >= 32 && c[5] < 127) ? c[5] : '?',
                             (c[6] >= 32 && c[6] < 127) ? c[6] : '?', (c[7] >= 32 && c[7] < 127) ? c[7] : '?');
        if (!seen_ihdr && memcmp(c + 4, "IHDR", 4) != 0) return lmv__pcorrupt(err, "the first chunk is not IHDR");
        if (!memcmp(c + 4, "IHDR", 4)) {
            const unsigned char *h = c + 8;
            uint32_t w, hh;
            int d, t, ok;
            if (seen_ihdr) return lmv__pcorrupt(err, "a second IHDR chunk");
            if (len != 13) return lmv__pcorrupt(err, "the IHDR chunk is not 13 bytes long");
            seen_ihdr = 1;
            w = lmv__be32(h);
            hh = lmv__be32(h + 4);
            d = h[8];
            t = h[9];
            if (w == 0 || hh == 0) return lmv__pcorrupt(err, "the image width or height is zero");
            if (w > 0x7FFFFFFFu || hh > 0x7FFFFFFFu) return lmv__pcorrupt(err, "the image width or height is above 2^31 - 1");
            if ((size_t)w > max_pixels / (size_t)hh)
                return lmv__fail(err, LMV_ERR_LIMIT, "PNG of %u x %u pixels is above the limit of %zu pixels (max_pixels)",
                                 (unsigned)w, (unsigned)hh, max_pixels);
            switch (t) {
            case 0: ok = d == 1 || d == 2 || d == 4 || d == 8 || d == 16; g->samples = 1; break;
            case 3: ok = d == 1 || d == 2 || d == 4 || d == 8; g->samples = 1; break;
            case 2: ok = d == 8 || d == 16; g->samples = 3; break;
            case 4: ok = d == 8 || d == 16; g->samples = 2; break;
            case 6: ok = d == 8 || d == 16; g->samples = 4; break;
            default:
                return lmv__fail(err, LMV_ERR_IMAGE, "corrupt PNG: colour type %d does not exist (0, 2, 3, 4 and 6 do)", t);
            }
            if (!ok)
                return lmv__fail(err, LMV_ERR_IMAGE, "corrupt PNG: bit depth %d is not allowed for colour type %d", d, t);
            if (h[10] != 0) return lmv__pcorrupt(err, "unknown compression method (only 0, deflate, exists)");
            if (h[11] != 0) return lmv__pcorrupt(err, "unknown filter method (only 0 exists)");
            if (h[12] > 1) return lmv__pcorrupt(err, "unknown interlace method (only 0 and 1, Adam7, exist)");
            g->width = (int)w;
            g->height = (int)hh;
            g->depth = d;
            g->ctype = t;
            g->interlace = h[12];
        } else if (!memcmp(c + 4, "PLTE", 4)) {
            if (seen_idat) return lmv__pcorrupt(err, "a PLTE chunk after the image data");
            if (seen_plte) return lmv__pcorrupt(err, "a second PLTE chunk");
            if (len == 0 || len % 3 || len > 768) return lmv__pcorrupt(err, "the PLTE chunk is not 1 to 256 RGB entries");
            seen_plte = 1;
            g->npal = (int)(len / 3);
            memcpy(g->pal, c + 8, len);
        } else if (!memcmp(c + 4, "IDAT", 4)) {
            if (after_idat) return lmv__pcorrupt(err, "the IDAT chunks are not consecutive");
            if (!seen_idat) g->idat = pos;
            seen_idat = 1;
        } else if (!memcmp(c + 4, "eXIf", 4)) {
            g->orientation = lmv__tiff_orientation(c + 8, len); /* as Pillow, the last one counts */
        } else if (!memcmp(c + 4, "IEND", 4)) {
            if (!seen_idat) return lmv__pcorrupt(err, "the file has no image data (no IDAT chunk before IEND)");
            break;
        } else if (!(c[4] & 0x20)) {
            return lmv__fail(err, LMV_ERR_UNSUPPORTED, "unsupported: PNG with an unknown critical chunk '%c%c%c%c'",
                             (c[4] >= 32 && c[4] < 127) ? c[4] : '?', (c[5] >= 32 && c[5] < 127) ? c[5] : '?',
                             (c[6] >= 32 && c[6] < 127) ? c[6] : '?', (c[7] >= 32 && c[7] < 127) ? c[7] : '?');
        }
        if (seen_idat && memcmp(c + 4, "IDAT", 4) != 0) after_idat = 1;
        pos += 12 + (size_t)len;
    }
    if (g->ctype == 3 && !seen_plte) return lmv__pcorrupt(err, "a palette image without a PLTE chunk");
    /* a row's bits, and the pixels, must fit size_t (a 32-bit size_t is the concern) */
    if ((size_t)g->width > (SIZE_MAX - 7) / (size_t)(g->samples * g->depth) ||
        (size_t)g->width * (size_t)g->height > SIZE_MAX / 4)
        return lmv__fail(err, LMV_ERR_LIMIT, "PNG of %d x %d pixels is too large for this machine", g->width, g->height);
    /* the filtered size: at most 7 passes of ph rows of 1 + row bytes, each below 2^31 * 8 bytes;
       the pixel count is bounded by max_pixels, so add with overflow checks */
    g->raw_size = 0;
    for (pass = 0; pass < (g->interlace ? 7 : 1); pass++) {
        int x0, y0, dx, dy, pw, ph;
        size_t rows;
        lmv__ppass(g, pass, &x0, &y0, &dx, &dy, &pw, &ph);
        if (pw == 0 || ph == 0) continue;
        if (!lmv__mul_ok((size_t)ph, 1 + lmv__prow_bytes(g, pw), &rows) || rows > SIZE_MAX - g->raw_size)
            return lmv__fail(err, LMV_ERR_LIMIT, "PNG of %d x %d pixels is too large for this machine", g->width, g->height);
        g->raw_size += rows;
    }
    return LMV_OK;
}

/* ---- inflate ---- */

static int lmv__pnext_byte(lmv__png *g) {
    while (g->pos == g->end) {
        /* the next chunk, whole and checked by lmv__popen, continues the data if it is an IDAT */
        size_t q = g->end + 4;
        if (g->n - q < 12 || memcmp(g->p + q + 4, "IDAT", 4) != 0) {
            g->fake++;
            return 0;
        }
        g->pos = q + 8;
        g->end = g->pos + lmv__be32(g->p + q);
    }
    return g->p[g->pos++];
}

static void lmv__pfill(lmv__png *g, int n) { /* n <= 24 */
    while (g->nbits < n) {
        g->bits |= (uint32_t)lmv__pnext_byte(g) << g->nbits;
        g->nbits += 8;
    }
}

static unsigned lmv__pbits(lmv__png *g, int n) { /* 0 <= n <= 16 */
    unsigned v;
    if (n == 0) return 0;
    lmv__pfill(g, n);
    v = g->bits & ((1u << n) - 1);
    g->bits >>= n;
    g->nbits -= n;
    return v;
}

/* Build a code from n code lengths; 0 when the lengths over-subscribe the code space. An
   incomplete code is allowed (a missing code is an error when it is met). */
static int lmv__phuff_build(lmv__phuff *h, const unsigned char *len, int n) {
    int offs[16], next[16], i, l, left = 1;
    memset(h, 0, sizeof *h);
    for (i = 0; i < n; i++) h->count[len[i]]++;
    h->count[0] = 0;
    for (l = 1; l < 16; l++) {
        left <<= 1;
        left -= h->count[l];
        if (left < 0) return 0;
    }
    offs[1] = 0;
    for (l = 1; l < 15; l++) offs[l + 1] = offs[l] + h->count[l];
    for (i = 0; i < n; i++)
        if (len[i]) h->sym[offs[len[i]]++] = (uint16_t)i;
    /* canonical codes, first code of each length */
    next[1] = 0;
    for (l = 1; l < 15; l++) next[l + 1] = (next[l] + h->count[l]) << 1;
    for (i = 0; i < n; i++) {
        int L = len[i], code, rev = 0, b;
        if (!L) continue;
        code = next[L]++;
        if (L > LMV__PNG_FAST) continue;
        for (b = 0; b < L; b++) rev |= ((code >> b) & 1) << (L - 1 - b);
        for (; rev < (1 << LMV__PNG_FAST); rev += 1 << L) h->fast[rev] = (uint16_t)((i << 4) | L);
    }
    return 1;
}

/* The next symbol, or -1 for a code the table does not have. */
static int lmv__pdecode(lmv__png *g, const lmv__phuff *h) {
    int code = 0, first = 0, index = 0, l;
    unsigned e;
    lmv__pfill(g, LMV__PNG_FAST);
    e = h->fast[g->bits & ((1u << LMV__PNG_FAST) - 1)];
    if (e) {
        g->bits >>= e & 15;
        g->nbits -= (int)(e & 15);
        return (int)(e >> 4);
    }
    for (l = 1; l < 16; l++) {
        int count = h->count[l];
        code |= (int)lmv__pbits(g, 1);
        if (code - count < first) return h->sym[index + (code - first)];
        index += count;
        first += count;
        first <<= 1;
        code <<= 1;
    }
    return -1;
}

static const uint16_t lmv__plen_base[29] = {3,  4,  5,  6,  7,  8,  9,  10, 11,  13,  15,  17,  19,  23, 27,
                                            31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
static const unsigned char lmv__plen_extra[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2,
                                                  2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
static const uint16_t lmv__pdist_base[30] = {1,   2,   3,   4,   5,   7,    9,    13,   17,   25,
                                             33,  49,  65,  97,  129, 193,  257,  385,  513,  769,
                                             1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577};
static const unsigned char lmv__pdist_extra[30] = {0, 0, 0, 0, 1, 1, 2, 2,  3,  3,  4,  4,  5,  5,  6,
                                                   6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};

static lmv_result lmv__ptoo_much(lmv_error *err) {
    return lmv__pcorrupt(err, "the compressed data holds more bytes than the image size in IHDR");
}

static lmv_result lmv__ptruncated(lmv_error *err) {
    return lmv__fail(err, LMV_ERR_IMAGE, "truncated PNG: the compressed image data ends early");
}

/* The symbols of one Huffman-coded block, until its end code. */
static lmv_result lmv__pblock(lmv__png *g, lmv_error *err) {
    for (;;) {
        int s = lmv__pdecode(g, g->lit);
        if (g->fake > 2) return lmv__ptruncated(err);
        if (s < 0) return lmv__pcorrupt(err, "bad zlib data (a Huffman code that does not exist)");
        if (s < 256) {
            if (g->produced == g->raw_size) return lmv__ptoo_much(err);
            g->out[g->produced++] = (unsigned char)s;
        } else if (s == 256) {
            return LMV_OK;
        } else {
            size_t len, dist, i;
            int d;
            s -= 257;
            if (s >= 29) return lmv__pcorrupt(err, "bad zlib data (a length code above 285)");
            len = lmv__plen_base[s] + lmv__pbits(g, lmv__plen_extra[s]);
            d = lmv__pdecode(g, g->dist);
            if (d < 0 || d >= 30) return lmv__pcorrupt(err, "bad zlib data (a distance code that does not exist)");
            dist = lmv__pdist_base[d] + lmv__pbits(g, lmv__pdist_extra[d]);
            if (g->fake > 2) return lmv__ptruncated(err);
            if (dist > g->produced) return lmv__pcorrupt(err, "bad zlib data (a distance reaches before the start)");
            if (len > g->raw_size - g->produced) return lmv__ptoo_much(err);
            for (i = 0; i < len; i++, g->produced++) g->out[g->produced] = g->out[g->produced - dist];
        }
    }
}

static lmv_result lmv__pdynamic(lmv__png *g, lmv_error *err) {
    static const unsigned char order[19] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15};
    unsigned char lens[288 + 32];
    int nlen, ndist, ncode, i, n;
    nlen = (int)lmv__pbits(g, 5) + 257;
    ndist = (int)lmv__pbits(g, 5) + 1;
    ncode = (int)lmv__pbits(g, 4) + 4;
    if (nlen > 286 || ndist > 30) return lmv__pcorrupt(err, "bad zlib data (too many length or distance codes)");
    memset(lens, 0, sizeof lens);
    for (i = 0; i < ncode; i++) lens[order[i]] = (unsigned char)lmv__pbits(g, 3);
    if (!lmv__phuff_build(g->lit, lens, 19)) return lmv__pcorrupt(err, "bad zlib data (an over-subscribed code length code)");
    memset(lens, 0, sizeof lens);
    for (n = 0; n < nlen + ndist;) {
        int s = lmv__pdecode(g, g->lit), rep, v = 0;
        if (g->fake > 2) return lmv__ptruncated(err);
        if (s < 0) return lmv__pcorrupt(err, "bad zlib data (a code length code that does not exist)");
        if (s < 16) {
            lens[n++] = (unsigned char)s;
            continue;
        }
        if (s == 16) {
            if (n == 0) return lmv__pcorrupt(err, "bad zlib data (a repeat with no code length before it)");
            v = lens[n - 1];
            rep = 3 + (int)lmv__pbits(g, 2);
        } else if (s == 17) {
            rep = 3 + (int)lmv__pbits(g, 3);
        } else {
            rep = 11 + (int)lmv__pbits(g, 7);
        }
        if (n + rep > nlen + ndist) return lmv__pcorrupt(err, "bad zlib data (code lengths repeat past their count)");
        while (rep--) lens[n++] = (unsigned char)v;
    }
    if (lens[256] == 0) return lmv__pcorrupt(err, "bad zlib data (no end-of-block code)");
    if (!lmv__phuff_build(g->lit, lens, nlen) || !lmv__phuff_build(g->dist, lens + nlen, ndist))
        return lmv__pcorrupt(err, "bad zlib data (an over-subscribed Huffman code)");
    return lmv__pblock(g, err);
}

static lmv_result lmv__pinflate(lmv__png *g, lmv_error *err) {
    unsigned cmf, flg, last;
    uint32_t a = 1, b = 0, want;
    size_t i;
    lmv_result r;
    g->pos = g->idat + 8;
    g->end = g->pos + lmv__be32(g->p + g->idat);
    cmf = lmv__pbits(g, 8);
    flg = lmv__pbits(g, 8);
    if (g->fake) return lmv__ptruncated(err);
    if ((cmf & 15) != 8 || (cmf >> 4) > 7 || ((cmf << 8) | flg) % 31 != 0)
        return lmv__pcorrupt(err, "bad zlib header (not a deflate stream)");
    if (flg & 0x20) return lmv__pcorrupt(err, "bad zlib header (a preset dictionary, which PNG does not allow)");
    do {
        unsigned type;
        last = lmv__pbits(g, 1);
        type = lmv__pbits(g, 2);
        if (type == 0) {
            unsigned len, nlen;
            g->bits >>= g->nbits & 7; /* to the byte boundary */
            g->nbits -= g->nbits & 7;
            len = lmv__pbits(g, 16);
            nlen = lmv__pbits(g, 16);
            if (g->fake > 2) return lmv__ptruncated(err);
            if ((len ^ 0xFFFFu) != nlen) return lmv__pcorrupt(err, "bad zlib data (a stored block's length check fails)");
            if (len > g->raw_size - g->produced) return lmv__ptoo_much(err);
            while (len--) g->out[g->produced++] = (unsigned char)lmv__pbits(g, 8);
            if (g->fake > 2) return lmv__ptruncated(err);
            r = LMV_OK;
        } else if (type == 1) {
            unsigned char lens[288];
            for (i = 0; i < 288; i++) lens[i] = (unsigned char)(i < 144 ? 8 : i < 256 ? 9 : i < 280 ? 7 : 8);
            lmv__phuff_build(g->lit, lens, 288);
            for (i = 0; i < 30; i++) lens[i] = 5;
            lmv__phuff_build(g->dist, lens, 30);
            r = lmv__pblock(g, err);
        } else if (type == 2) {
            r = lmv__pdynamic(g, err);
        } else {
            r = lmv__pcorrupt(err, "bad zlib data (block type 3 does not exist)");
        }
        if (r != LMV_OK) return r;
        if (g->fake > 2) return lmv__ptruncated(err);
    } while (!last);
    g->bits >>= g->nbits & 7;
    g->nbits -= g->nbits & 7;
    for (i = 0, want = 0; i < 4; i++) want = (want << 8) | lmv__pbits(g, 8); /* big-endian, unlike the rest */
    if (g->fake * 8 > g->nbits) return lmv__ptruncated(err);
    if (g->produced != g->raw_size)
        return lmv__fail(err, LMV_ERR_IMAGE, "truncated PNG: the compressed data holds %zu of the %zu bytes of the image",
                         g->produced, g->raw_size);
    for (i = 0; i < g->produced;) { /* Adler-32, in runs short enough for 32-bit sums */
        size_t stop = g->produced - i < 5552 ? g->produced : i + 5552;
        for (; i < stop; i++) {
            a += g->out[i];
            b += a;
        }
        a %= 65521u;
        b %= 65521u;
    }
    if (((b << 16) | a) != want) return lmv__pcorrupt(err, "the Adler-32 checksum of the image data does not match");
    return LMV_OK;
}

/* Undo the row filters of every pass in place, then convert each pixel as Pillow's unpacker and
   convert('RGB') (or convert('L') for gray) do, and place it. */
static lmv_result lmv__pemit(lmv__png *g, int orient, lmv_image *img, lmv_error *err) {
    int pass, ch = img->channels, W = g->width, H = g->height;
    size_t bpp = (size_t)((g->samples * g->depth + 7) / 8); /* the filters' byte distance */
    unsigned char *row = g->out;
    for (pass = 0; pass < (g->interlace ? 7 : 1); pass++) {
        int x0, y0, dx, dy, pw, ph, y;
        size_t rb;
        const unsigned char *prev = NULL;
        lmv__ppass(g, pass, &x0, &y0, &dx, &dy, &pw, &ph);
        if (pw == 0 || ph == 0) continue;
        rb = lmv__prow_bytes(g, pw);
        for (y = 0; y < ph; y++, prev = row + 1, row += rb + 1) {
            unsigned char *r = row + 1;
            size_t i;
            int x;
            switch (row[0]) {
            case 0: break;
            case 1:
                for (i = bpp; i < rb; i++) r[i] = (unsigned char)(r[i] + r[i - bpp]);
                break;
            case 2:
                if (prev)
                    for (i = 0; i < rb; i++) r[i] = (unsigned char)(r[i] + prev[i]);
                break;
            case 3:
                for (i = 0; i < rb; i++)
                    r[i] = (unsigned char)(r[i] + (((i >= bpp ? r[i - bpp] : 0) + (prev ? prev[i] : 0)) >> 1));
                break;
            case 4:
                for (i = 0; i < rb; i++) {
                    int a = i >= bpp ? r[i - bpp] : 0, b = prev ? prev[i] : 0, c = (i >= bpp && prev) ? prev[i - bpp] : 0;
                    int p = a + b - c, pa = p > a ? p - a : a - p, pb = p > b ? p - b : b - p, pc = p > c ? p - c : c - p;
                    r[i] = (unsigned char)(r[i] + ((pa <= pb && pa <= pc) ? a : pb <= pc ? b : c));
                }
                break;
            default:
                return lmv__fail(err, LMV_ERR_IMAGE, "corrupt PNG: row %d has filter type %d (only 0 to 4 exist)", y, row[0]);
            }
            for (x = 0; x < pw; x++) {
                int X = x0 + x * dx, Y = y0 + y * dy, ox, oy; /* placed as ImageOps.exif_transpose places it */
                unsigned char *o;
                switch (orient) {
                case 2: ox = W - 1 - X; oy = Y; break;
                case 3: ox = W - 1 - X; oy = H - 1 - Y; break;
                case 4: ox = X; oy = H - 1 - Y; break;
                case 5: ox = Y; oy = X; break;
                case 6: ox = H - 1 - Y; oy = X; break;
                case 7: ox = H - 1 - Y; oy = W - 1 - X; break;
                case 8: ox = Y; oy = W - 1 - X; break;
                default: ox = X; oy = Y; break;
                }
                o = img->pixels + ((size_t)oy * (size_t)img->width + (size_t)ox) * (size_t)ch;
                if (g->depth < 8) {
                    size_t bit = (size_t)x * (size_t)g->depth;
                    int v = (r[bit >> 3] >> (8 - g->depth - (int)(bit & 7))) & ((1 << g->depth) - 1);
                    if (g->ctype == 0) {
                        o[0] = (unsigned char)(v * (255 / ((1 << g->depth) - 1)));
                    } else if (v < g->npal) {
                        memcpy(o, g->pal + 3 * v, 3);
                    } else {
                        o[0] = o[1] = o[2] = (unsigned char)v; /* Pillow's palette is a gray ramp past PLTE */
                    }
                } else {
                    size_t s = (size_t)x * (size_t)g->samples * (size_t)(g->depth / 8);
                    if (g->ctype == 3) {
                        int v = r[x];
                        if (v < g->npal) memcpy(o, g->pal + 3 * v, 3);
                        else o[0] = o[1] = o[2] = (unsigned char)v;
                    } else if (g->depth == 8) {
                        memcpy(o, r + s, (size_t)ch);
                    } else if (g->ctype == 0) {
                        int v = (r[s] << 8) | r[s + 1];
                        o[0] = (unsigned char)(v > 255 ? 255 : v); /* mode "I", clipped by convert */
                    } else {
                        int c;
                        for (c = 0; c < ch; c++) o[c] = r[s + 2 * (size_t)c]; /* "RGB;16B" etc.: the high byte */
                    }
                }
            }
        }
    }
    return LMV_OK;
}

static lmv_result lmv__pprepare(lmv__png *g, const void *data, size_t size, lmv_image_options *o, const char *fn,
                                lmv_image_info *info, lmv_error *err) {
    lmv_result r;
    if (!data && size) return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "%s: NULL data", fn);
    if (!lmv__allocator_resolve(&o->allocator))
        return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "no allocator given and the library was built with LEMEVIT_NO_MALLOC");
    if (o->max_pixels == 0) o->max_pixels = LMV_IMAGE_MAX_PIXELS_DEFAULT;
    if ((r = lmv__popen(g, data, size, o->max_pixels, err)) != LMV_OK) return r;
    memset(info, 0, sizeof *info);
    if (o->ignore_orientation) g->orientation = 1;
    info->width = g->orientation >= 5 ? g->height : g->width;
    info->height = g->orientation >= 5 ? g->width : g->height;
    info->channels = (g->ctype == 0 || g->ctype == 4) ? 1 : 3;
    info->progressive = g->interlace;
    /* the three blocks lmv_image_load_png_memory asks for (the pixels fit size_t: checked in
       lmv__popen) */
    {
        size_t pixels = (size_t)g->width * (size_t)g->height * (size_t)info->channels;
        size_t fixed = lmv__alloc_cost(2 * sizeof(lmv__phuff)) + lmv__alloc_cost(0);
        if (g->raw_size > SIZE_MAX / 2 - fixed || pixels > SIZE_MAX / 2 - fixed)
            return lmv__fail(err, LMV_ERR_LIMIT, "PNG of %d x %d pixels is too large for this machine", g->width,
                             g->height);
        info->decode_memory = lmv__alloc_cost(2 * sizeof(lmv__phuff)) + lmv__alloc_cost(g->raw_size) +
                              lmv__alloc_cost(pixels);
    }
    if (o->max_memory && info->decode_memory > o->max_memory)
        return lmv__fail(err, LMV_ERR_LIMIT, "decoding this %d x %d PNG needs %zu bytes, more than max_memory (%zu bytes)",
                         g->width, g->height, info->decode_memory, o->max_memory);
    return LMV_OK;
}

LEMEVIT_API lmv_result lmv_image_png_info(const void *data, size_t size, const lmv_image_options *opt,
                                          lmv_image_info *info, lmv_error *err) {
    lmv_image_options o = opt ? *opt : lmv_image_options_default();
    lmv__png g;
    lmv_result r;
    if (!info) return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "lmv_image_png_info: NULL output");
    o.max_memory = 0; /* the query reports the size; the decode refuses it */
    r = lmv__pprepare(&g, data, size, &o, "lmv_image_png_info", info, err);
    if (r != LMV_OK) memset(info, 0, sizeof *info);
    else lmv__ok(err);
    return r;
}

LEMEVIT_API lmv_result lmv_image_load_png_memory(const void *data, size_t size, const lmv_image_options *opt,
                                                 lmv_image *out, lmv_error *err) {
    lmv_image_options o = opt ? *opt : lmv_image_options_default();
    lmv_image_info info;
    lmv__png g;
    lmv_result r;
    if (!out) return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "lmv_image_load_png_memory: NULL output");
    memset(out, 0, sizeof *out);
    memset(&info, 0, sizeof info);
    if ((r = lmv__pprepare(&g, data, size, &o, "lmv_image_load_png_memory", &info, err)) != LMV_OK) return r;
    g.lit = (lmv__phuff *)lmv__alloc(&o.allocator, 2 * sizeof(lmv__phuff));
    g.out = (unsigned char *)lmv__alloc(&o.allocator, g.raw_size);
    if (!g.lit || !g.out) {
        lmv__free(&o.allocator, g.out);
        lmv__free(&o.allocator, g.lit);
        return lmv__fail(err, LMV_ERR_OUT_OF_MEMORY, "out of memory for the PNG decoder (%zu bytes for a %d x %d image)",
                         info.decode_memory, g.width, g.height);
    }
    g.dist = g.lit + 1;
    r = lmv__pinflate(&g, err);
    lmv__free(&o.allocator, g.lit);
    if (r == LMV_OK) r = lmv__image_alloc(out, info.width, info.height, info.channels, &o.allocator, err);
    if (r == LMV_OK && (r = lmv__pemit(&g, g.orientation, out, err)) != LMV_OK) lmv_image_free(out);
    lmv__free(&o.allocator, g.out);
    if (r == LMV_OK) lmv__ok(err);
    return r;
}

#ifndef LEMEVIT_NO_STDIO
LEMEVIT_API lmv_result lmv_image_load_png_file(const char *path, const lmv_image_options *opt, lmv_image *out,
                                               lmv_error *err) {
    return lmv__image_load_path("lmv_image_load_png_file", "a PNG file", lmv_image_load_png_memory, path, opt, out, err);
}
#endif
#endif /* LEMEVIT_NO_PNG */

/* ---- any image, by its first bytes ---- */

static int lmv__image_kind(const void *data, size_t size) {
    const unsigned char *p = (const unsigned char *)data;
    if (!p) return 0;
    if (size >= 3 && p[0] == 0xFF && p[1] == 0xD8 && p[2] == 0xFF) return 'J';
    if (size >= 4 && p[0] == 0x89 && p[1] == 'P' && p[2] == 'N' && p[3] == 'G') return 'P';
    return 0;
}

static lmv_result lmv__image_unknown(const void *data, size_t size, lmv_error *err) {
    int k = lmv__image_kind(data, size);
    if (k == 'J') return lmv__fail(err, LMV_ERR_UNSUPPORTED, "unsupported: a JPEG, and this build has no JPEG decoder (LEMEVIT_NO_JPEG)");
    if (k == 'P') return lmv__fail(err, LMV_ERR_UNSUPPORTED, "unsupported: a PNG, and this build has no PNG decoder (LEMEVIT_NO_PNG)");
    return lmv__fail(err, LMV_ERR_IMAGE, "not a JPEG or PNG file (its first bytes are neither signature)");
}

LEMEVIT_API lmv_result lmv_image_probe(const void *data, size_t size, const lmv_image_options *opt,
                                       lmv_image_info *info, lmv_error *err) {
    if (!info) return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "lmv_image_probe: NULL output");
    memset(info, 0, sizeof *info);
    if (!data && size) return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "lmv_image_probe: NULL data");
#ifndef LEMEVIT_NO_JPEG
    if (lmv__image_kind(data, size) == 'J') return lmv_image_jpeg_info(data, size, opt, info, err);
#endif
#ifndef LEMEVIT_NO_PNG
    if (lmv__image_kind(data, size) == 'P') return lmv_image_png_info(data, size, opt, info, err);
#endif
    (void)opt;
    return lmv__image_unknown(data, size, err);
}

LEMEVIT_API lmv_result lmv_image_load_memory(const void *data, size_t size, const lmv_image_options *opt,
                                             lmv_image *out, lmv_error *err) {
    if (!out) return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "lmv_image_load_memory: NULL output");
    memset(out, 0, sizeof *out);
    if (!data && size) return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "lmv_image_load_memory: NULL data");
#ifndef LEMEVIT_NO_JPEG
    if (lmv__image_kind(data, size) == 'J') return lmv_image_load_jpeg_memory(data, size, opt, out, err);
#endif
#ifndef LEMEVIT_NO_PNG
    if (lmv__image_kind(data, size) == 'P') return lmv_image_load_png_memory(data, size, opt, out, err);
#endif
    (void)opt;
    return lmv__image_unknown(data, size, err);
}

#ifndef LEMEVIT_NO_STDIO
LEMEVIT_API lmv_result lmv_image_load_file(const char *path, const lmv_image_options *opt, lmv_image *out,
                                           lmv_error *err) {
    return lmv__image_load_path("lmv_image_load_file", "an image file", lmv_image_load_memory, path, opt, out, err);
}
#endif

/* ---- resampling, as Pillow 9.4 (libImaging/Resample.c, Geometry.c) ----
   A separable convolution: for each output column a window of input columns with weights from
   the filter stretched by the downscale factor, normalised to sum 1, then rounded to 22-bit
   fixed point. The horizontal pass runs first and rounds to 8 bits; the vertical pass runs on
   its result. Every output pixel depends only on its own weights, so a sub-rectangle of the
   result (what a centre crop keeps) can be computed alone and is bit-identical. */

#define LMV__PIL_BITS 22

static double lmv__filter_bilinear(double x) {
    if (x < 0.0) x = -x;
    if (x < 1.0) return 1.0 - x;
    return 0.0;
}

static double lmv__filter_bicubic(double x) { /* Keys' cubic with a = -0.5 */
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

/* Weights of outputs o0 .. o0+cnt-1 of a resize from in_size to out_size: bounds[2i] is the
   first input, bounds[2i+1] how many; weights of output i are k[i*ksize ...]. */
static lmv_result lmv__pil_weights(int in_size, int out_size, int o0, int cnt, lmv_interp interp,
                                       const lmv_allocator *a, int *ksize_out, int **bounds_out, int32_t **k_out,
                                       lmv_error *err) {
    double (*filter)(double) = interp == LMV_INTERP_BICUBIC ? lmv__filter_bicubic : lmv__filter_bilinear;
    double support = interp == LMV_INTERP_BICUBIC ? 2.0 : 1.0;
    /* Pillow keeps the box in floats: the input size goes through float first */
    double scale = (double)(float)in_size / out_size, filterscale = scale < 1.0 ? 1.0 : scale, ss;
    double *w;
    int32_t *k;
    int *bounds, ksize, i, x;
    size_t n;
    support *= filterscale;
    if (support > 1e8) return lmv__fail(err, LMV_ERR_LIMIT, "resize from %d to %d pixels is too steep", in_size, out_size);
    ksize = (int)ceil(support) * 2 + 1;
    if (!lmv__mul_ok((size_t)(cnt > 0 ? cnt : 1), (size_t)ksize, &n) || n > SIZE_MAX / sizeof(double))
        return lmv__fail(err, LMV_ERR_LIMIT, "resize from %d to %d pixels is too large", in_size, out_size);
    w = (double *)lmv__alloc(a, (size_t)ksize * sizeof(double));
    k = (int32_t *)lmv__alloc(a, n * sizeof(int32_t));
    bounds = (int *)lmv__alloc(a, (size_t)(cnt > 0 ? cnt : 1) * 2 * sizeof(int));
    if (!w || !k || !bounds) {
        lmv__free(a, w);
        lmv__free(a, k);
        lmv__free(a, bounds);
        return lmv__fail(err, LMV_ERR_OUT_OF_MEMORY, "out of memory for resize weights");
    }
    ss = 1.0 / filterscale;
    for (i = 0; i < cnt; i++) {
        int xx = o0 + i, xmin, xmax;
        double center = (xx + 0.5) * scale, ww = 0.0;
        int32_t *kr = k + (size_t)i * (size_t)ksize;
        xmin = (int)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        xmax = (int)(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        if (xmax > ksize) xmax = ksize; /* cannot happen; keeps the loop inside w */
        if (xmax < 0) xmax = 0;
        for (x = 0; x < xmax; x++) {
            double v = filter((x + xmin - center + 0.5) * ss);
            w[x] = v;
            ww += v;
        }
        for (x = 0; x < xmax; x++) {
            double v = ww != 0.0 ? w[x] / ww : w[x];
            kr[x] = (int32_t)(v < 0 ? -0.5 + v * (1 << LMV__PIL_BITS) : 0.5 + v * (1 << LMV__PIL_BITS));
        }
        for (; x < ksize; x++) kr[x] = 0;
        bounds[2 * i] = xmin;
        bounds[2 * i + 1] = xmax;
    }
    lmv__free(a, w);
    *ksize_out = ksize;
    *bounds_out = bounds;
    *k_out = k;
    return LMV_OK;
}

static unsigned char lmv__pil_clip8(int v) {
    if (v <= 0) return 0;
    v >>= LMV__PIL_BITS;
    return (unsigned char)(v > 255 ? 255 : v);
}

/* The window x0,y0,rw,rh of the image src (sw x sh x ch) resized to dw x dh, into dst. */
static lmv_result lmv__pil_resample(const unsigned char *src, int sw, int sh, int ch, int dw, int dh, int x0, int y0, int rw,
                                int rh, lmv_interp interp, unsigned char *dst, const lmv_allocator *a, lmv_error *err) {
    size_t sstride = (size_t)sw * (size_t)ch, rstride = (size_t)rw * (size_t)ch;
    int x, y, c, i;
    lmv_result r = LMV_OK;
    if (rw <= 0 || rh <= 0) return LMV_OK;
    if (interp == LMV_INTERP_NEAREST) {
        /* Pillow's affine nearest: the source coordinate is accumulated step by step */
        double ax = (double)(float)sw / dw, ay = (double)(float)sh / dh, xo = ax * 0.5, yo = ay * 0.5;
        int *xin = (int *)lmv__alloc(a, (size_t)rw * sizeof(int));
        if (!xin) return lmv__fail(err, LMV_ERR_OUT_OF_MEMORY, "out of memory for resize");
        for (x = 0; x < x0 + rw; x++) {
            if (x >= x0) xin[x - x0] = (xo < 0.0 || xo >= sw) ? -1 : (int)xo;
            xo += ax;
        }
        for (y = 0; y < y0 + rh; y++) {
            if (y >= y0) {
                int yi = (yo < 0.0 || yo >= sh) ? -1 : (int)yo;
                unsigned char *o = dst + (size_t)(y - y0) * rstride;
                for (x = 0; x < rw; x++) {
                    if (yi < 0 || xin[x] < 0) memset(o + (size_t)x * ch, 0, (size_t)ch);
                    else memcpy(o + (size_t)x * ch, src + (size_t)yi * sstride + (size_t)xin[x] * ch, (size_t)ch);
                }
            }
            yo += ay;
        }
        lmv__free(a, xin);
        return LMV_OK;
    }
    {
        int need_h = dw != sw, need_v = dh != sh, kh = 0, kv = 0, ya, yb;
        int *bh = NULL, *bv = NULL;
        int32_t *wh = NULL, *wv = NULL;
        unsigned char *tmp = NULL;
        size_t tbytes;
        if (need_h && (r = lmv__pil_weights(sw, dw, x0, rw, interp, a, &kh, &bh, &wh, err)) != LMV_OK) return r;
        if (need_v && (r = lmv__pil_weights(sh, dh, y0, rh, interp, a, &kv, &bv, &wv, err)) != LMV_OK) goto done;
        /* the input rows the vertical pass reads */
        if (need_v) {
            ya = bv[0];
            yb = bv[0] + bv[1];
            for (i = 1; i < rh; i++) {
                if (bv[2 * i] < ya) ya = bv[2 * i];
                if (bv[2 * i] + bv[2 * i + 1] > yb) yb = bv[2 * i] + bv[2 * i + 1];
            }
        } else {
            ya = y0;
            yb = y0 + rh;
        }
        if (yb < ya) yb = ya;
        if (!lmv__mul_ok((size_t)(yb - ya > 0 ? yb - ya : 1), rstride, &tbytes)) {
            r = lmv__fail(err, LMV_ERR_LIMIT, "resize is too large");
            goto done;
        }
        tmp = (unsigned char *)lmv__alloc(a, tbytes);
        if (!tmp) {
            r = lmv__fail(err, LMV_ERR_OUT_OF_MEMORY, "out of memory for resize");
            goto done;
        }
        for (y = ya; y < yb; y++) {
            const unsigned char *in = src + (size_t)y * sstride;
            unsigned char *o = tmp + (size_t)(y - ya) * rstride;
            if (!need_h) {
                memcpy(o, in + (size_t)x0 * ch, rstride);
                continue;
            }
            for (x = 0; x < rw; x++) {
                const int32_t *kk = wh + (size_t)x * (size_t)kh;
                const unsigned char *p = in + (size_t)bh[2 * x] * ch;
                int n = bh[2 * x + 1], t;
                for (c = 0; c < ch; c++) {
                    int32_t acc = 1 << (LMV__PIL_BITS - 1);
                    for (t = 0; t < n; t++) acc += p[(size_t)t * ch + c] * kk[t];
                    o[(size_t)x * ch + c] = lmv__pil_clip8(acc);
                }
            }
        }
        for (y = 0; y < rh; y++) {
            unsigned char *o = dst + (size_t)y * rstride;
            if (!need_v) {
                memcpy(o, tmp + (size_t)(y0 + y - ya) * rstride, rstride);
                continue;
            }
            {
                const int32_t *kk = wv + (size_t)y * (size_t)kv;
                const unsigned char *p = tmp + (size_t)(bv[2 * y] - ya) * rstride;
                int n = bv[2 * y + 1], t;
                size_t e;
                for (e = 0; e < rstride; e++) {
                    int32_t acc = 1 << (LMV__PIL_BITS - 1);
                    for (t = 0; t < n; t++) acc += p[(size_t)t * rstride + e] * kk[t];
                    o[e] = lmv__pil_clip8(acc);
                }
            }
        }
    done:
        lmv__free(a, tmp);
        lmv__free(a, bh);
        lmv__free(a, wh);
        lmv__free(a, bv);
        lmv__free(a, wv);
        return r;
    }
}

static lmv_result lmv__check_image(const lmv_image *img, const char *fn, lmv_error *err) {
    if (!img || !img->pixels) return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "%s: NULL image", fn);
    if (img->width <= 0 || img->height <= 0 || (img->channels != 1 && img->channels != 3))
        return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "%s: the image must be at least 1 x 1 with 1 or 3 channels", fn);
    return LMV_OK;
}

LEMEVIT_API lmv_result lmv_image_resize(const lmv_image *in, int w, int h, lmv_interp interp, const lmv_allocator *a,
                                        lmv_image *out, lmv_error *err) {
    lmv_allocator al;
    lmv_result r;
    if (!out) return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "lmv_image_resize: NULL output");
    memset(out, 0, sizeof *out);
    if ((r = lmv__check_image(in, "lmv_image_resize", err)) != LMV_OK) return r;
    if (w <= 0 || h <= 0) return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "lmv_image_resize: size %d x %d", w, h);
    if (interp != LMV_INTERP_NEAREST && interp != LMV_INTERP_BILINEAR && interp != LMV_INTERP_BICUBIC)
        return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "lmv_image_resize: unknown interpolation %d", (int)interp);
    if (a) al = *a;
    else memset(&al, 0, sizeof al);
    if (!lmv__allocator_resolve(&al))
        return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "no allocator given and the library was built with LEMEVIT_NO_MALLOC");
    if ((r = lmv__image_alloc(out, w, h, in->channels, &al, err)) != LMV_OK) return r;
    r = lmv__pil_resample(in->pixels, in->width, in->height, in->channels, w, h, 0, 0, w, h, interp, out->pixels, &al, err);
    if (r != LMV_OK) {
        lmv_image_free(out);
        return r;
    }
    lmv__ok(err);
    return LMV_OK;
}

/* Python's round() of k / 2 for k >= 0: halves go to the even neighbour. */
static int lmv__half_round_even(int k) {
    int q = k / 2;
    if (k % 2 == 0) return q;
    return (q % 2 == 0) ? q : q + 1;
}

LEMEVIT_API lmv_result lmv_preprocess_image(const lmv_image *img, const lmv_preprocess *pp, int out_chans,
                                            float *out_chw, const lmv_allocator *a, lmv_error *err) {
    lmv_allocator al;
    lmv_result r;
    const unsigned char *src;
    unsigned char *gray = NULL, *win = NULL;
    int ch, nw, nh, th, tw, pad_l, pad_t, top, left, wx0, wy0, wx1, wy1, x, y, c;
    size_t plane, bytes;
    if ((r = lmv__check_image(img, "lmv_preprocess_image", err)) != LMV_OK) return r;
    if (!pp || !out_chw) return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "lmv_preprocess_image: NULL argument");
    if (out_chans != 1 && out_chans != 3)
        return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "lmv_preprocess_image: out_chans must be 1 or 3, not %d", out_chans);
    if (pp->crop_h <= 0 || pp->crop_w <= 0 || pp->resize < 0 || pp->crop_h > (1 << 15) || pp->crop_w > (1 << 15) ||
        pp->resize > (1 << 15))
        return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "lmv_preprocess_image: resize %d / crop %d x %d out of range",
                         pp->resize, pp->crop_h, pp->crop_w);
    if (pp->interpolation != LMV_INTERP_NEAREST && pp->interpolation != LMV_INTERP_BILINEAR &&
        pp->interpolation != LMV_INTERP_BICUBIC)
        return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "lmv_preprocess_image: unknown interpolation");
    for (c = 0; c < out_chans; c++)
        if (!(pp->std[c] != 0.0f)) return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "lmv_preprocess_image: std[%d] is 0", c);
    if (a) al = *a;
    else memset(&al, 0, sizeof al);
    if (!lmv__allocator_resolve(&al))
        return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "no allocator given and the library was built with LEMEVIT_NO_MALLOC");
    src = img->pixels;
    ch = img->channels;
    if (out_chans == 1 && ch == 3) { /* Pillow's convert('L'): ITU-R 601-2 luma in 16-bit fixed point */
        size_t i, n = (size_t)img->width * (size_t)img->height;
        gray = (unsigned char *)lmv__alloc(&al, n);
        if (!gray) return lmv__fail(err, LMV_ERR_OUT_OF_MEMORY, "out of memory converting to gray");
        for (i = 0; i < n; i++)
            gray[i] = (unsigned char)((src[3 * i] * 19595u + src[3 * i + 1] * 38470u + src[3 * i + 2] * 7471u + 0x8000u) >> 16);
        src = gray;
        ch = 1;
    }
    /* torchvision Resize(size): the shorter side becomes size, the longer int(size * long / short) */
    if (pp->resize > 0) {
        int shorter = img->width <= img->height ? img->width : img->height;
        int longer = img->width <= img->height ? img->height : img->width;
        double nl = (double)((long long)pp->resize * longer) / shorter;
        if (nl >= (double)(1 << 30)) {
            lmv__free(&al, gray);
            return lmv__fail(err, LMV_ERR_LIMIT, "resizing a %d x %d image to %d gives a side too long", img->width,
                             img->height, pp->resize);
        }
        if (img->width <= img->height) { nw = pp->resize; nh = (int)nl; }
        else { nh = pp->resize; nw = (int)nl; }
    } else {
        nw = pp->crop_w;
        nh = pp->crop_h;
    }
    /* CenterCrop: pad (zeros) to at least the crop size, then cut the middle out */
    th = pp->crop_h;
    tw = pp->crop_w;
    pad_l = tw > nw ? (tw - nw) / 2 : 0;
    pad_t = th > nh ? (th - nh) / 2 : 0;
    top = lmv__half_round_even((th > nh ? th : nh) - th);
    left = lmv__half_round_even((tw > nw ? tw : nw) - tw);
    /* the window of the resized image that lands inside the crop */
    wx0 = left - pad_l;
    wy0 = top - pad_t;
    wx1 = wx0 + tw;
    wy1 = wy0 + th;
    if (wx0 < 0) wx0 = 0;
    if (wy0 < 0) wy0 = 0;
    if (wx1 > nw) wx1 = nw;
    if (wy1 > nh) wy1 = nh;
    if (!lmv__mul_ok((size_t)(wx1 - wx0), (size_t)(wy1 - wy0), &bytes) || !lmv__mul_ok(bytes, (size_t)ch, &bytes)) {
        lmv__free(&al, gray);
        return lmv__fail(err, LMV_ERR_LIMIT, "crop is too large");
    }
    win = (unsigned char *)lmv__alloc(&al, bytes ? bytes : 1);
    if (!win) {
        lmv__free(&al, gray);
        return lmv__fail(err, LMV_ERR_OUT_OF_MEMORY, "out of memory resizing the image");
    }
    r = lmv__pil_resample(src, img->width, img->height, ch, nw, nh, wx0, wy0, wx1 - wx0, wy1 - wy0, pp->interpolation, win,
                      &al, err);
    lmv__free(&al, gray);
    if (r != LMV_OK) {
        lmv__free(&al, win);
        return r;
    }
    /* ToTensor and Normalize, in float32 as torch does them */
    plane = (size_t)th * (size_t)tw;
    for (c = 0; c < out_chans; c++) {
        int sc = ch == 1 ? 0 : c;
        float mean = pp->mean[c], sd = pp->std[c];
        float *o = out_chw + (size_t)c * plane;
        for (y = 0; y < th; y++) {
            int ry = top + y - pad_t;
            for (x = 0; x < tw; x++) {
                int rx = left + x - pad_l;
                unsigned p = 0;
                float v;
                if (ry >= wy0 && ry < wy1 && rx >= wx0 && rx < wx1)
                    p = win[((size_t)(ry - wy0) * (size_t)(wx1 - wx0) + (size_t)(rx - wx0)) * (size_t)ch + (size_t)sc];
                v = (float)p / 255.0f;
                o[(size_t)y * tw + x] = (v - mean) / sd;
            }
        }
    }
    lmv__free(&al, win);
    lmv__ok(err);
    return LMV_OK;
}

/* ---- heat-map overlay and PNG encoding ---- */

LEMEVIT_API lmv_result lmv_image_overlay_heatmap(lmv_image *img, const float *map, int map_w, int map_h, float alpha,
                                                 lmv_error *err) {
#if defined(__clang__)
#pragma clang fp contract(off) /* no fused multiply-adds: the same bits as any other IEEE double arithmetic */
#endif
    double lo, hi, a = alpha;
    size_t i, n;
    int x, y, c;
    if (!img || !img->pixels || !map)
        return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "lmv_image_overlay_heatmap: NULL image, pixels or map");
    if (img->channels != 3 || img->width < 1 || img->height < 1)
        return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT,
                         "lmv_image_overlay_heatmap needs an RGB image (3 channels, not %d) of at least 1 x 1 pixels",
                         img->channels);
    if (map_w < 1 || map_h < 1 || map_w > (1 << 15) || map_h > (1 << 15))
        return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "lmv_image_overlay_heatmap: a %d x %d map; give 1 to 32768 a side",
                         map_w, map_h);
    if (!(alpha >= 0.0f && alpha <= 1.0f))
        return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "lmv_image_overlay_heatmap: alpha must be in [0, 1]");
    n = (size_t)map_w * (size_t)map_h;
    lo = hi = map[0];
    for (i = 0; i < n; i++) {
        double v = map[i];
        if (!(v - v == 0.0))
            return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "lmv_image_overlay_heatmap: map value %zu is NaN or infinite", i);
        if (v < lo) lo = v;
        if (v > hi) hi = v;
    }
    for (y = 0; y < img->height; y++) {
        double sy = (y + 0.5) * map_h / img->height - 0.5, fy;
        int y0, y1;
        if (sy < 0.0) sy = 0.0;
        if (sy > map_h - 1) sy = map_h - 1;
        y0 = (int)sy;
        y1 = y0 + 1 < map_h ? y0 + 1 : y0;
        fy = sy - y0;
        for (x = 0; x < img->width; x++) {
            double sx = (x + 0.5) * map_w / img->width - 0.5, fx, v, col[3];
            int x0, x1;
            unsigned char *p = img->pixels + ((size_t)y * (size_t)img->width + (size_t)x) * 3;
            const float *r0, *r1;
            if (sx < 0.0) sx = 0.0;
            if (sx > map_w - 1) sx = map_w - 1;
            x0 = (int)sx;
            x1 = x0 + 1 < map_w ? x0 + 1 : x0;
            fx = sx - x0;
            r0 = map + (size_t)y0 * (size_t)map_w;
            r1 = map + (size_t)y1 * (size_t)map_w;
            v = (1.0 - fy) * ((1.0 - fx) * r0[x0] + fx * r0[x1]) + fy * ((1.0 - fx) * r1[x0] + fx * r1[x1]);
            v = hi > lo ? (v - lo) / (hi - lo) : 0.0;
            for (c = 0; c < 3; c++) {
                double k = 3.0 * v - c;
                col[c] = k < 0.0 ? 0.0 : k > 1.0 ? 1.0 : k;
                p[c] = (unsigned char)floor((1.0 - a) * p[c] + a * 255.0 * col[c] + 0.5);
            }
        }
    }
    lmv__ok(err);
    return LMV_OK;
}

/* The PNG byte stream goes to a sink: memory (bounds checked before) or a file. */
typedef struct lmv__png_sink {
    unsigned char *buf;
    size_t pos;
    void *file;      /* a FILE *, when writing to a file */
    int failed;
    uint32_t crc;
    unsigned long s1, s2;
} lmv__png_sink;

static void lmv__png_adler32(lmv__png_sink *s, const unsigned char *p, size_t n) {
    size_t i;
    for (i = 0; i < n; i++) {
        s->s1 = (s->s1 + p[i]) % 65521ul;
        s->s2 = (s->s2 + s->s1) % 65521ul;
    }
}

/* bytes inside a chunk: counted into its CRC */
static void lmv__png_write_bytes(lmv__png_sink *s, const void *data, size_t n) {
    const unsigned char *p = (const unsigned char *)data;
    s->crc = lmv__crc32(s->crc, p, n);
    if (s->buf) memcpy(s->buf + s->pos, p, n);
#ifndef LEMEVIT_NO_STDIO
    else if (fwrite(p, 1, n, (FILE *)s->file) != n) s->failed = 1;
#endif
    s->pos += n;
}

static void lmv__png_write_u32(lmv__png_sink *s, unsigned long v) {
    unsigned char b[4];
    b[0] = (unsigned char)(v >> 24), b[1] = (unsigned char)(v >> 16), b[2] = (unsigned char)(v >> 8), b[3] = (unsigned char)v;
    lmv__png_write_bytes(s, b, 4);
}

/* a chunk's length and type; its data follows, then lmv__png_write_end */
static void lmv__png_write_begin(lmv__png_sink *s, size_t len, const char *type) {
    lmv__png_write_u32(s, (unsigned long)len);
    s->crc = 0;
    lmv__png_write_bytes(s, type, 4);
}
static void lmv__png_write_end(lmv__png_sink *s) { lmv__png_write_u32(s, s->crc); }

/* the zlib stream's length (header, stored blocks of up to 65535 bytes, Adler-32), 0 when invalid */
static size_t lmv__png_write_zlen(const lmv_image *img, size_t *raw) {
    size_t row, blocks;
    *raw = 0;
    if (!img || !img->pixels || (img->channels != 1 && img->channels != 3) || img->width < 1 || img->height < 1)
        return 0;
    if (!lmv__mul_ok((size_t)img->width, (size_t)img->channels, &row) || row + 1 < row ||
        !lmv__mul_ok(row + 1, (size_t)img->height, raw) || *raw > 0x7FFFFFFFul)
        return 0;
    blocks = (*raw + 65534) / 65535;
    if (*raw + 5 * blocks + 6 > 0x7FFFFFFFul) return 0; /* a chunk is at most 2^31 - 1 bytes */
    return *raw + 5 * blocks + 6;
}

LEMEVIT_API size_t lmv_image_png_size(const lmv_image *img) {
    size_t raw = 0, z = lmv__png_write_zlen(img, &raw);
    return z ? 8 + 25 + 12 + z + 12 : 0;
}

static void lmv__png_write_all(lmv__png_sink *s, const lmv_image *img) {
    static const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
    unsigned char ihdr[13], zhead[2] = {0x78, 0x01}, bh[5], filter = 0;
    size_t raw = 0, z = lmv__png_write_zlen(img, &raw), row = (size_t)img->width * (size_t)img->channels, left = 0, done = 0;
    int y;
    lmv__png_write_bytes(s, sig, 8);
    lmv__png_write_begin(s, 13, "IHDR");
    ihdr[0] = (unsigned char)(img->width >> 24), ihdr[1] = (unsigned char)(img->width >> 16);
    ihdr[2] = (unsigned char)(img->width >> 8), ihdr[3] = (unsigned char)img->width;
    ihdr[4] = (unsigned char)(img->height >> 24), ihdr[5] = (unsigned char)(img->height >> 16);
    ihdr[6] = (unsigned char)(img->height >> 8), ihdr[7] = (unsigned char)img->height;
    ihdr[8] = 8;                                   /* bit depth */
    ihdr[9] = (unsigned char)(img->channels == 3 ? 2 : 0); /* RGB or gray */
    ihdr[10] = ihdr[11] = ihdr[12] = 0;            /* deflate, filter method 0, no interlace */
    lmv__png_write_bytes(s, ihdr, 13);
    lmv__png_write_end(s);
    lmv__png_write_begin(s, z, "IDAT");
    lmv__png_write_bytes(s, zhead, 2);
    s->s1 = 1, s->s2 = 0;
    for (y = 0; y < img->height; y++) {
        const unsigned char *p = img->pixels + (size_t)y * row;
        size_t k = 0, n = row + 1; /* the filter byte, then the row */
        while (k < n) {
            size_t take;
            if (left == 0) { /* a stored block's header: BFINAL, BTYPE 00, LEN, NLEN */
                size_t len = raw - done < 65535 ? raw - done : 65535;
                bh[0] = (unsigned char)(done + len == raw);
                bh[1] = (unsigned char)len, bh[2] = (unsigned char)(len >> 8);
                bh[3] = (unsigned char)~len, bh[4] = (unsigned char)(~len >> 8);
                lmv__png_write_bytes(s, bh, 5);
                left = len;
            }
            if (k == 0) {
                lmv__png_write_bytes(s, &filter, 1);
                lmv__png_adler32(s, &filter, 1);
                take = 1;
            } else {
                take = n - k < left ? n - k : left;
                lmv__png_write_bytes(s, p + k - 1, take);
                lmv__png_adler32(s, p + k - 1, take);
            }
            k += take;
            left -= take;
            done += take;
        }
    }
    lmv__png_write_u32(s, (s->s2 << 16) | s->s1);
    lmv__png_write_end(s);
    lmv__png_write_begin(s, 0, "IEND");
    lmv__png_write_end(s);
}

LEMEVIT_API lmv_result lmv_image_encode_png(const lmv_image *img, void *out, size_t cap, size_t *size, lmv_error *err) {
    lmv__png_sink s;
    size_t need = lmv_image_png_size(img);
    if (size) *size = 0;
    if (!need)
        return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT,
                         "lmv_image_encode_png needs a 1- or 3-channel image with pixels, under 2 GiB as PNG");
    if (!out || cap < need)
        return lmv__fail(err, LMV_ERR_OUT_OF_MEMORY,
                         "the PNG of this image takes %zu bytes and the buffer has %zu; ask lmv_image_png_size() for the size",
                         need, out ? cap : (size_t)0);
    memset(&s, 0, sizeof s);
    s.buf = (unsigned char *)out;
    lmv__png_write_all(&s, img);
    LEMEVIT_ASSERT(s.pos == need);
    if (size) *size = s.pos;
    lmv__ok(err);
    return LMV_OK;
}

#ifndef LEMEVIT_NO_STDIO
LEMEVIT_API lmv_result lmv_image_write_png(const lmv_image *img, const char *path, lmv_error *err) {
    lmv__png_sink s;
    FILE *f;
    if (!path) return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "lmv_image_write_png: path is NULL");
    if (!lmv_image_png_size(img))
        return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT,
                         "lmv_image_write_png needs a 1- or 3-channel image with pixels, under 2 GiB as PNG");
    if (!(f = fopen(path, "wb")))
        return lmv__fail(err, LMV_ERR_IO, "cannot create '%s': check that its folder exists and is writable", path);
    memset(&s, 0, sizeof s);
    s.file = f;
    lmv__png_write_all(&s, img);
    if (fclose(f) != 0) s.failed = 1;
    if (s.failed) return lmv__fail(err, LMV_ERR_IO, "cannot write '%s' (disk full?)", path);
    lmv__ok(err);
    return LMV_OK;
}
#endif

/* --------------------------------------------------------------------------------------------
   High-level helpers: from an image to an answer
   -------------------------------------------------------------------------------------------- */

/* The image helpers run the model's crop: a session planned smaller is refused before the
   image is decoded or the input tensor allocated. */
static lmv_result lmv__session_fits_crop(const lmv_session *s, lmv_error *err) {
    const lmv_preprocess *pp = &s->model->info.preprocess;
    if (pp->crop_h > s->max_h || pp->crop_w > s->max_w)
        return lmv__fail(err, LMV_ERR_INPUT_SIZE,
                         "the model's crop %dx%d is outside this session's plan (at most %dx%d): create the session with "
                         "max_h/max_w of at least the crop",
                         pp->crop_h, pp->crop_w, s->max_h, s->max_w);
    return LMV_OK;
}

LEMEVIT_API lmv_result lmv_run_image(lmv_session *s, const lmv_image *img, lmv_output what, float *out,
                                     lmv_error *err) {
    const lmv_model_info *in;
    lmv_result r;
    float *x;
    size_t n;
    if (!s || !img || !out) return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "lmv_run_image: NULL argument");
    if (what != LMV_OUTPUT_LOGITS && what != LMV_OUTPUT_FEATURES)
        return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "lmv_run_image: `what` must be LMV_OUTPUT_LOGITS or LMV_OUTPUT_FEATURES");
    if ((r = lmv__session_fits_crop(s, err)) != LMV_OK) return r;
    in = &s->model->info;
    n = (size_t)in->in_chans * in->preprocess.crop_h * in->preprocess.crop_w;
    x = (float *)lmv__alloc(&s->allocator, n * sizeof(float));
    if (!x) return lmv__fail(err, LMV_ERR_OUT_OF_MEMORY, "out of memory for the %zu-float input tensor", n);
    r = lmv_preprocess_image(img, &in->preprocess, in->in_chans, x, &s->allocator, err);
    if (r == LMV_OK)
        r = lmv__run(s, x, 1, in->preprocess.crop_h, in->preprocess.crop_w, out, what == LMV_OUTPUT_FEATURES, err);
    lmv__free(&s->allocator, x);
    return r;
}

LEMEVIT_API lmv_result lmv_classify_image(lmv_session *s, const lmv_image *img, int k, lmv_prediction *top,
                                          int *count, lmv_error *err) {
    const lmv_model_info *in;
    float *logits, *prob;
    int *idx, i, n;
    size_t nc;
    lmv_result r;
    if (count) *count = 0;
    if (!s || !img || !top || k < 1) return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "lmv_classify_image: bad argument");
    in = &s->model->info;
    if (in->num_classes < 1)
        return lmv__fail(err, LMV_ERR_UNSUPPORTED, "the model has no classifier head; use lmv_run_image() for its features");
    if (k > in->num_classes) k = in->num_classes;
    nc = (size_t)in->num_classes;
    /* logits, then k probabilities, then k indices: one block */
    logits = (float *)lmv__alloc(&s->allocator, sizeof(float) * (nc + (size_t)k) + sizeof(int) * (size_t)k);
    if (!logits) return lmv__fail(err, LMV_ERR_OUT_OF_MEMORY, "out of memory for the logits");
    prob = logits + nc;
    idx = (int *)(void *)(prob + k);
    r = lmv_run_image(s, img, LMV_OUTPUT_LOGITS, logits, err);
    if (r == LMV_OK) {
        n = lmv_topk(logits, in->num_classes, k, idx, prob);
        for (i = 0; i < n; i++) {
            top[i].index = idx[i];
            top[i].prob = prob[i];
            top[i].label = lmv_model_label(s->model, idx[i]);
        }
        if (count) *count = n;
    }
    lmv__free(&s->allocator, logits);
    return r;
}

LEMEVIT_API lmv_result lmv_classify_jpeg(lmv_session *s, const void *data, size_t size, const lmv_image_options *opt,
                                         int k, lmv_prediction *top, int *count, lmv_error *err) {
    lmv_image_options o = opt ? *opt : lmv_image_options_default();
    lmv_image img;
    lmv_result r;
    if (count) *count = 0;
    if (!s) return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "lmv_classify_jpeg: NULL session");
    if ((r = lmv__session_fits_crop(s, err)) != LMV_OK) return r;
    if (!o.allocator.alloc) o.allocator = s->allocator;
    if ((r = lmv_image_load_memory(data, size, &o, &img, err)) != LMV_OK) return r;
    r = lmv_classify_image(s, &img, k, top, count, err);
    lmv_image_free(&img);
    return r;
}

#ifndef LEMEVIT_NO_STDIO
LEMEVIT_API lmv_result lmv_classify_file(lmv_session *s, const char *path, const lmv_image_options *opt, int k,
                                         lmv_prediction *top, int *count, lmv_error *err) {
    lmv_image_options o = opt ? *opt : lmv_image_options_default();
    lmv_image img;
    lmv_result r;
    if (count) *count = 0;
    if (!s) return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "lmv_classify_file: NULL session");
    if ((r = lmv__session_fits_crop(s, err)) != LMV_OK) return r;
    if (!o.allocator.alloc) o.allocator = s->allocator;
    if ((r = lmv_image_load_file(path, &o, &img, err)) != LMV_OK) return r;
    r = lmv_classify_image(s, &img, k, top, count, err);
    lmv_image_free(&img);
    return r;
}
#endif

LEMEVIT_API void lmv_softmax(float *x, int n) {
    if (x && n > 0) lmv__softmax_rows(x, 1, n, 1.0f, NULL, NULL);
}

LEMEVIT_API int lmv_topk(const float *logits, int n, int k, int *idx, float *prob) {
    int i, j, c;
    float mx = -FLT_MAX;
    double sum = 0.0;
    if (!logits || n <= 0 || k <= 0 || !idx) return 0;
    if (k > n) k = n;
    for (c = 0; c < k; c++) idx[c] = -1;
    /* insertion into a sorted list of k: ties keep the earlier index first */
    for (i = 0; i < n; i++) {
        float v = logits[i];
        int pos = k;
        while (pos > 0 && (idx[pos - 1] < 0 || v > logits[idx[pos - 1]])) pos--;
        if (pos >= k) continue;
        for (j = k - 1; j > pos; j--) idx[j] = idx[j - 1];
        idx[pos] = i;
    }
    LEMEVIT_ASSERT(idx[k - 1] >= 0 && idx[k - 1] < n); /* k <= n: every slot was filled */
    if (prob) {
        for (i = 0; i < n; i++) mx = logits[i] > mx ? logits[i] : mx;
        for (i = 0; i < n; i++) sum += exp((double)(logits[i] - mx));
        for (c = 0; c < k; c++) prob[c] = (float)(exp((double)(logits[idx[c]] - mx)) / sum);
    }
    return k;
}

/* .npy: magic, version, header length, a Python dict literal, then the data. */
LEMEVIT_API lmv_result lmv_npy_parse(const void *buf, size_t size, lmv_npy *out, lmv_error *err) {
    const unsigned char *p = (const unsigned char *)buf;
    size_t hlen, start, i, count = 1;
    const char *h, *descr, *fo, *sh;
    char hdr[1024];
    int major;
    if (!buf || !out) return lmv__fail(err, LMV_ERR_INVALID_ARGUMENT, "lmv_npy_parse: NULL argument");
    memset(out, 0, sizeof *out);
    if (size < 10 || memcmp(p, "\x93NUMPY", 6) != 0) return lmv__fail(err, LMV_ERR_BAD_INPUT, "not a .npy file (bad magic)");
    major = p[6];
    if (major == 1) { hlen = lmv__rd16(p + 8); start = 10; }
    else if (major == 2 || major == 3) {
        if (size < 12) return lmv__fail(err, LMV_ERR_BAD_INPUT, ".npy header is truncated");
        hlen = lmv__rd32(p + 8);
        start = 12;
    } else return lmv__fail(err, LMV_ERR_BAD_INPUT, ".npy version %d is unknown", major);
    if (hlen >= sizeof hdr || hlen > size - start) return lmv__fail(err, LMV_ERR_BAD_INPUT, ".npy header is truncated or too long");
    memcpy(hdr, p + start, hlen);
    hdr[hlen] = 0;
    h = hdr;
    descr = strstr(h, "'descr'");
    fo = strstr(h, "'fortran_order'");
    sh = strstr(h, "'shape'");
    if (!descr || !fo || !sh) return lmv__fail(err, LMV_ERR_BAD_INPUT, ".npy header lacks descr/fortran_order/shape");
    /* a key given twice is read differently by different readers (numpy keeps the last): refuse */
    for (i = 0; i < 3; i++) {
        static const char *const keys[3][2] = {{"'descr'", "\"descr\""}, {"'fortran_order'", "\"fortran_order\""},
                                               {"'shape'", "\"shape\""}};
        const char *first = strstr(h, keys[i][0]);
        if (strstr(first + 1, keys[i][0]) || strstr(h, keys[i][1]))
            return lmv__fail(err, LMV_ERR_BAD_INPUT, ".npy header gives the key %s twice; write the file again with numpy",
                             keys[i][0]);
    }
    descr = strchr(descr + 7, '\'');
    if (descr && !lmv__host_is_le() && strncmp(descr, "'<f4'", 5) == 0)
        return lmv__fail(err, LMV_ERR_ENDIAN, "this host is big-endian: .npy data must be '>f4' to be used in place");
    if (!descr || (strncmp(descr, lmv__host_is_le() ? "'<f4'" : "'>f4'", 5) != 0 && strncmp(descr, "'float32'", 9) != 0))
        return lmv__fail(err, LMV_ERR_BAD_INPUT, ".npy data must be little-endian float32 ('<f4'); convert with .astype('<f4')");
    fo = strchr(fo + 15, ':');
    while (fo && (*fo == ':' || *fo == ' ')) fo++;
    if (!fo || strncmp(fo, "False", 5) != 0) return lmv__fail(err, LMV_ERR_BAD_INPUT, ".npy data must be in C order (fortran_order False)");
    sh = strchr(sh + 7, '(');
    if (!sh) return lmv__fail(err, LMV_ERR_BAD_INPUT, ".npy shape is malformed");
    sh++;
    while (*sh && *sh != ')') {
        unsigned long v = 0;
        int digits = 0;
        while (*sh == ' ' || *sh == ',') sh++;
        if (*sh == ')') break;
        while (*sh >= '0' && *sh <= '9') {
            v = v * 10 + (unsigned long)(*sh++ - '0');
            if (v > 0x7FFFFFFFul) return lmv__fail(err, LMV_ERR_LIMIT, ".npy dimension is too large");
            digits++;
        }
        if (!digits) return lmv__fail(err, LMV_ERR_BAD_INPUT, ".npy shape is malformed");
        if (out->ndim >= 8) return lmv__fail(err, LMV_ERR_LIMIT, ".npy has more than 8 dimensions");
        out->shape[out->ndim++] = (int)v;
        if (!lmv__mul_ok(count, (size_t)v, &count)) return lmv__fail(err, LMV_ERR_LIMIT, ".npy is too large");
    }
    if (*sh != ')') return lmv__fail(err, LMV_ERR_BAD_INPUT, ".npy shape is malformed");
    out->count = count;
    out->data_offset = start + hlen;
    if (count > (size - out->data_offset) / 4)
        return lmv__fail(err, LMV_ERR_TRUNCATED, ".npy data is truncated: %zu floats expected", count);
    if ((uintptr_t)(p + out->data_offset) % 4) return lmv__fail(err, LMV_ERR_ALIGNMENT, ".npy data is not 4-byte aligned in memory");
    out->data = (const float *)(const void *)(p + out->data_offset);
    lmv__ok(err);
    return LMV_OK;
}

LEMEVIT_API size_t lmv_npy_header(char *out, int ndim, const int *shape) {
    char dict[200];
    size_t n, total, i;
    int d;
    const char *head = lmv__host_is_le() ? "{'descr': '<f4', 'fortran_order': False, 'shape': ("
                                          : "{'descr': '>f4', 'fortran_order': False, 'shape': (";
    n = strlen(head);
    memcpy(dict, head, n);
    for (d = 0; d < ndim && d < 8; d++) {
        char num[16];
        int v = shape[d], q = 0;
        do { num[q++] = (char)('0' + v % 10); v /= 10; } while (v && q < 15);
        while (q) dict[n++] = num[--q];
        if (ndim == 1 || d + 1 < ndim) dict[n++] = ',';
        if (d + 1 < ndim) dict[n++] = ' ';
    }
    memcpy(dict + n, "), }", 4);
    n += 4;
    total = (10 + n + 1 + 63) & ~(size_t)63;
    memcpy(out, "\x93NUMPY\x01\x00", 8);
    out[8] = (char)((total - 10) & 0xFF);
    out[9] = (char)((total - 10) >> 8);
    memcpy(out + 10, dict, n);
    for (i = 10 + n; i < total - 1; i++) out[i] = ' ';
    out[total - 1] = '\n';
    return total;
}

#ifdef __cplusplus
}
#endif
#endif /* !LMV__KPASS */
#endif /* LEMEVIT_IMPLEMENTED */
#endif /* LEMEVIT_IMPLEMENTATION */
