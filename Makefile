# lemevit.h — build, test, demo, bench.
#   make            build everything into build/
#   make test       run every test; the last line says "N passed, N failed"
#   make test-full CIFAR10=PATH   the CIFAR-10 suites over the full test set at PATH
#   make demo       classify the bundled pictures with the bundled model
#   make bench      compare speed and memory with PyTorch
#   make firmware   the no-malloc, no-stdio example with the model linked in (build/fw/firmware)
#   make firmware-qemu   the same booted on an emulated Cortex-M7 (qemu-system-arm -M mps2-an500)
# Options: CC=clang, OPENMP=0 (single-threaded build), PYTHON=/path/to/python3-with-torch

CC      ?= cc
OPENMP  ?= 1
PYTHON  ?= $(shell for p in /usr/bin/python3 python3; do $$p -c 'import torch' 2>/dev/null && echo $$p && break; done)
# (no -march: the header picks its AVX2 / AVX-512 kernels at run time, so the binaries run on any
#  x86-64 and are as fast as a -march=native build; add -march=native for the rest of the code)
CFLAGS  ?= -O3
WARN    := -std=c99 -Wall -Wextra -pedantic -D_POSIX_C_SOURCE=200809L
ifeq ($(OPENMP),1)
OMPFLAG := -fopenmp
endif
SAN     := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all

BIN  := build/lmv build/classify build/test_core
ASAN := build/asan/lmv build/asan/classify build/asan/test_core

all: $(BIN) $(ASAN)

build/%: tools/%.c lemevit.h | build
	$(CC) $(WARN) $(CFLAGS) $(OMPFLAG) -o $@ $< -lm

build/%: examples/%.c lemevit.h | build
	$(CC) $(WARN) $(CFLAGS) $(OMPFLAG) -o $@ $< -lm

build/asan/%: examples/%.c lemevit.h | build
	$(CC) $(WARN) $(SAN) -o $@ $< -lm

build/test_%: tests/test_%.c lemevit.h | build
	$(CC) $(WARN) $(CFLAGS) $(OMPFLAG) -o $@ $< -lm

build/asan/%: tools/%.c lemevit.h | build
	$(CC) $(WARN) $(SAN) -o $@ $< -lm

build/asan/test_%: tests/test_%.c lemevit.h | build
	$(CC) $(WARN) $(SAN) -o $@ $< -lm

build:
	mkdir -p build/asan

deps:
	@bash tools/install_deps.sh

test: deps all firmware
	@py="$(PYTHON)"; [ -n "$$py" ] || py=/usr/bin/python3; $$py tests/run_tests.py

# The CIFAR-10 suites over the full 10,000-image test set: CIFAR10 names a folder laid out
# <class>/*.jpg (or test/<class>/*.jpg) or a tar of one; `make test` uses the 1,000-image subset
# in tests/data.
test-full: deps all
	@[ -n "$(CIFAR10)" ] || { echo "make test-full needs CIFAR10=PATH (the CIFAR-10 test JPEGs: a folder or a tar)"; exit 2; }
	@[ -e "$(CIFAR10)" ] || { echo "CIFAR10=$(CIFAR10): no such file or folder"; exit 2; }
	@py="$(PYTHON)"; [ -n "$$py" ] || py=/usr/bin/python3; LMV_CIFAR10="$(abspath $(CIFAR10))" $$py tests/run_tests.py cifar10 quantized

bench: deps all
	@py="$(PYTHON)"; [ -n "$$py" ] || py=/usr/bin/python3; $$py tools/bench.py

DEMO_MODEL ?= examples/lemevit_cifar10.lmv

demo: build/classify
	build/classify $(DEMO_MODEL) examples/images/*.jpg --top 3

clean:
	rm -rf build

.PHONY: all deps test test-full demo bench clean

# ---- firmware: examples/firmware.c with a model and a picture linked in as const arrays ----
# FIRMWARE_MODEL is the .lmv to embed. Until the trained CIFAR-10 model is at its default path, a
# small seeded random LeMeViT of the same shape (tests/make_firmware_model.py, needs PyTorch) is
# used in its place.
FIRMWARE_MODEL ?= examples/lemevit_cifar10.lmv
FIRMWARE_IMAGE ?= examples/images/cat_32x32.jpg
FW_RANDOM      := build/fw/lemevit_random_cifar10.lmv
FW_MODEL       := $(if $(wildcard $(FIRMWARE_MODEL)),$(FIRMWARE_MODEL),$(FW_RANDOM))
FW_CFLAGS      ?= -O2

firmware: build/fw/firmware

$(FW_RANDOM): tests/make_firmware_model.py tests/models/lemevit_ref.py tools/convert.py tools/lmvfile.py \
              $(wildcard tools/lmvconvert/*.py tools/lmvconvert/families/*.py) | build
	mkdir -p build/fw
	$(PYTHON) tests/make_firmware_model.py $@

# which model and picture were embedded last: a change of path rebuilds the arrays
build/fw/inputs: FORCE | build
	@mkdir -p build/fw
	@echo '$(FW_MODEL) $(FIRMWARE_IMAGE)' | cmp -s - $@ || echo '$(FW_MODEL) $(FIRMWARE_IMAGE)' > $@

build/fw/model_data.c: $(FW_MODEL) build/fw/inputs build/lmv
	build/lmv embed $(FW_MODEL) $@ --name fw_model

build/fw/image_data.c: $(FIRMWARE_IMAGE) build/fw/inputs build/lmv
	build/lmv embed $(FIRMWARE_IMAGE) $@ --name fw_image

build/fw/firmware_plan: examples/firmware_plan.c examples/firmware.c lemevit.h | build
	@mkdir -p build/fw
	$(CC) $(WARN) $(FW_CFLAGS) -o $@ examples/firmware_plan.c -lm

build/fw/firmware_arena.h: build/fw/firmware_plan $(FW_MODEL) $(FIRMWARE_IMAGE) build/fw/inputs
	build/fw/firmware_plan $(FW_MODEL) $(FIRMWARE_IMAGE) $@

# no OpenMP: a firmware build has no threads
build/fw/firmware: examples/firmware.c build/fw/model_data.c build/fw/image_data.c build/fw/firmware_arena.h lemevit.h
	$(CC) $(WARN) $(FW_CFLAGS) -Ibuild/fw -o $@ examples/firmware.c build/fw/model_data.c build/fw/image_data.c -lm

FORCE:
.PHONY: firmware FORCE

# ---- firmware-qemu: examples/firmware.c booted on a Cortex-M7 (qemu-system-arm -M mps2-an500) ----
# The model is the FIRMWARE_MODEL above re-encoded as int8: 1.30 MB, where float32 (4.73 MB) does not
# fit the board's 4 MB code memory. Three builds: hard-float, softfp, and hard-float multiplying the
# int8 weights in int8 (int8_compute); each boots, classifies the cat and a Motion-JPEG frame (a
# ship), prints the top 3 and exits through semihosting. A fourth, hard-f32, runs the float32 model
# from the board's 16 MB PSRAM standing in for memory-mapped external flash (the linker script puts
# the read-only data of objects named extflash_* there).
FWQ        := build/fwq
ARM_CC     ?= arm-none-eabi-gcc
QEMU_ARM   ?= qemu-system-arm
FWQ_FRAME  ?= examples/images/ship_32x32_mjpeg.jpg
FWQ_CFLAGS ?= -O2
FWQ_ABIS   := hard softfp hard-int8c hard-f32 hard-raw
FWQ_FLAGS_hard       := -mfloat-abi=hard
FWQ_FLAGS_softfp     := -mfloat-abi=softfp
FWQ_FLAGS_hard-int8c := -mfloat-abi=hard -DFW_INT8_COMPUTE
FWQ_CPU    := -mcpu=cortex-m7 -mfpu=fpv5-d16 -mthumb
FWQ_SRC    := examples/cortex-m/main.c examples/cortex-m/startup.c examples/cortex-m/startup.h \
              examples/cortex-m/mps2_an500.ld examples/firmware.c lemevit.h
# -icount shift=0: the emulated clock advances 1 ns per instruction, so the run is deterministic and
# SysTick measures instructions; the firmware stops itself after FW_MAX_WRAPS SysTick periods and
# `timeout` bounds the wall time.
QEMU_RUN   = timeout 600 $(QEMU_ARM) -M mps2-an500 -display none -serial null -monitor none \
             -semihosting-config enable=on,target=native -icount shift=0 -kernel

$(FWQ)/model_int8.lmv: $(FW_MODEL) tools/lmvfile.py build/fw/inputs | build
	@mkdir -p $(FWQ)
	$(PYTHON) tools/lmvfile.py --dtype int8 $(FW_MODEL) $@ >/dev/null

$(FWQ)/model_data.c: $(FWQ)/model_int8.lmv build/lmv
	build/lmv embed $< $@ --name fw_model

$(FWQ)/image_data.c: $(FIRMWARE_IMAGE) build/lmv build/fw/inputs
	@mkdir -p $(FWQ)
	build/lmv embed $(FIRMWARE_IMAGE) $@ --name fw_image

$(FWQ)/frame_data.c: $(FWQ_FRAME) build/lmv
	@mkdir -p $(FWQ)
	build/lmv embed $(FWQ_FRAME) $@ --name fw_frame

$(FWQ)/firmware_arena.h: build/fw/firmware_plan $(FWQ)/model_int8.lmv $(FIRMWARE_IMAGE)
	build/fw/firmware_plan $(FWQ)/model_int8.lmv $(FIRMWARE_IMAGE) $@ >/dev/null

$(FWQ)/firmware-%.elf: $(FWQ_SRC) $(FWQ)/model_data.c $(FWQ)/image_data.c $(FWQ)/frame_data.c $(FWQ)/firmware_arena.h
	$(ARM_CC) -std=c99 -Wall -Wextra -pedantic -Werror $(FWQ_CFLAGS) $(FWQ_CPU) $(FWQ_FLAGS_$*) $(FWQ_EXTRA) -ffunction-sections \
	  -fdata-sections -nostartfiles --specs=nano.specs -T examples/cortex-m/mps2_an500.ld -Wl,--gc-sections \
	  -I$(FWQ) -o $@ examples/cortex-m/main.c examples/cortex-m/startup.c $(FWQ)/model_data.c \
	  $(FWQ)/image_data.c $(FWQ)/frame_data.c -lm
	arm-none-eabi-size $@

$(FWQ)/extflash_model.c: $(FW_MODEL) build/lmv build/fw/inputs
	@mkdir -p $(FWQ)
	build/lmv embed $(FW_MODEL) $@ --name fw_model

$(FWQ)/extflash_model.o: $(FWQ)/extflash_model.c
	$(ARM_CC) $(FWQ_CPU) -mfloat-abi=hard -c $< -o $@

$(FWQ)/f32/firmware_arena.h: build/fw/firmware_plan $(FW_MODEL) $(FIRMWARE_IMAGE) build/fw/inputs
	@mkdir -p $(FWQ)/f32
	build/fw/firmware_plan $(FW_MODEL) $(FIRMWARE_IMAGE) $@ >/dev/null

$(FWQ)/firmware-hard-f32.elf: $(FWQ_SRC) $(FWQ)/extflash_model.o $(FWQ)/image_data.c $(FWQ)/frame_data.c \
                              $(FWQ)/f32/firmware_arena.h
	$(ARM_CC) -std=c99 -Wall -Wextra -pedantic -Werror $(FWQ_CFLAGS) $(FWQ_CPU) -mfloat-abi=hard $(FWQ_EXTRA) -ffunction-sections \
	  -fdata-sections -nostartfiles --specs=nano.specs -T examples/cortex-m/mps2_an500.ld -Wl,--gc-sections \
	  -I$(FWQ)/f32 -I$(FWQ) -o $@ examples/cortex-m/main.c examples/cortex-m/startup.c $(FWQ)/extflash_model.o \
	  $(FWQ)/image_data.c $(FWQ)/frame_data.c -lm
	arm-none-eabi-size $@

# a raw frame: the picture's pixels as `lmv decode` gives them (a binary PPM), its header cut off
define FWQ_RGB
$(FWQ)/$(1)_rgb_data.c: $(2) build/lmv
	@mkdir -p $(FWQ)
	build/lmv decode $(2) $(FWQ)/$(1)_32x32.ppm >/dev/null
	tail -c 3072 $(FWQ)/$(1)_32x32.ppm > $(FWQ)/$(1)_32x32.rgb
	build/lmv embed $(FWQ)/$(1)_32x32.rgb $$@ --name fw_$(1)_rgb
endef
$(eval $(call FWQ_RGB,cat,examples/images/cat_32x32.jpg))
$(eval $(call FWQ_RGB,ship,$(FWQ_FRAME)))

$(FWQ)/firmware-hard-raw.elf: $(FWQ_SRC) $(FWQ)/model_data.c $(FWQ)/cat_rgb_data.c $(FWQ)/ship_rgb_data.c \
                              $(FWQ)/firmware_arena.h
	$(ARM_CC) -std=c99 -Wall -Wextra -pedantic -Werror $(FWQ_CFLAGS) $(FWQ_CPU) -mfloat-abi=hard -DLEMEVIT_NO_JPEG $(FWQ_EXTRA) \
	  -ffunction-sections -fdata-sections -nostartfiles --specs=nano.specs -T examples/cortex-m/mps2_an500.ld \
	  -Wl,--gc-sections -I$(FWQ) -o $@ examples/cortex-m/main.c examples/cortex-m/startup.c $(FWQ)/model_data.c \
	  $(FWQ)/cat_rgb_data.c $(FWQ)/ship_rgb_data.c -lm
	arm-none-eabi-size $@

firmware-qemu-build: $(foreach a,$(FWQ_ABIS),$(FWQ)/firmware-$(a).elf)

firmware-qemu: firmware-qemu-build
	@for a in $(FWQ_ABIS); do echo "== $(FWQ)/firmware-$$a.elf"; $(QEMU_RUN) $(FWQ)/firmware-$$a.elf || exit 1; done

.PHONY: firmware-qemu firmware-qemu-build
