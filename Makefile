# lemevit.h — build, test, demo, bench.
#   make            build everything into build/
#   make test       run every test; the last line says "N passed, N failed"
#   make demo       classify the bundled pictures with the bundled model
#   make bench      compare speed and memory with PyTorch
# Options: CC=clang, OPENMP=0 (single-threaded build), PYTHON=/path/to/python3-with-torch

CC      ?= cc
OPENMP  ?= 1
PYTHON  ?= $(shell for p in /usr/bin/python3 python3; do $$p -c 'import torch' 2>/dev/null && echo $$p && break; done)
CFLAGS  ?= -O3 -march=native
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

test: deps all
	@py="$(PYTHON)"; [ -n "$$py" ] || py=/usr/bin/python3; $$py tests/run_tests.py

bench: deps all
	@py="$(PYTHON)"; [ -n "$$py" ] || py=/usr/bin/python3; $$py tools/bench.py

DEMO_MODEL ?= examples/lemevit_cifar10.lmv

demo: build/classify
	build/classify $(DEMO_MODEL) examples/images/*.jpg --top 3

clean:
	rm -rf build

.PHONY: all deps test demo bench clean
