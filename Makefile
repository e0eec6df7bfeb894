# lemevit.h — build, test, demo, bench.
#   make            build everything into build/
#   make test       run every test; the last line says "N passed, N failed"
#   make test-full CIFAR10=PATH   the CIFAR-10 suites over the full test set at PATH
#   make demo       classify the bundled pictures with the bundled model
#   make bench      compare speed and memory with PyTorch
#   make firmware   the no-malloc, no-stdio example with the model linked in (build/fw/firmware)
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

$(FW_RANDOM): tests/make_firmware_model.py tests/models/lemevit_ref.py tools/convert.py | build
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
