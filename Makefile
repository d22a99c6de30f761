# deltanet.c -- build everything with make.
#   make test       CPU tests (what CI runs)          make infer      plain-C inference
#   make train      GPU trainer (nvcc)                make test-gpu   GPU tests (on a GPU machine)
#   make bench      benchmarks (print tables)         make data       TinyShakespeare token shards
# Dependencies: libcjson-dev, libpcre2-dev, libstb-dev (Debian/Ubuntu). Where they are unpacked
# under a folder instead of installed (the GPU machine), pass DEPS=/that/folder.

CC       ?= gcc
NVCC     ?= nvcc
GPU_ARCH ?= -gencode arch=compute_90a,code=sm_90a -gencode arch=compute_90,code=compute_90
DEPS     ?=
BUILD    ?= build

ifneq ($(DEPS),)
DEP_CFLAGS  := -I$(DEPS)/usr/include
DEP_LDFLAGS := -L$(DEPS)/usr/lib/x86_64-linux-gnu -Wl,-rpath,$(abspath $(DEPS))/usr/lib/x86_64-linux-gnu
DEP_NVLDFLAGS := -L$(DEPS)/usr/lib/x86_64-linux-gnu -Xlinker -rpath -Xlinker $(abspath $(DEPS))/usr/lib/x86_64-linux-gnu
endif

CFLAGS  ?= -O2 -march=native
CFLAGS  += -std=c11 -Wall -Wextra -D_POSIX_C_SOURCE=200809L -fopenmp $(DEP_CFLAGS)
LDLIBS  := $(DEP_LDFLAGS) -lcjson -lpcre2-8 -lm -fopenmp
NVFLAGS ?= -O3 --use_fast_math
NVFLAGS += -std=c++17 $(GPU_ARCH) $(DEP_CFLAGS) -Xcompiler -fopenmp -D_POSIX_C_SOURCE=200809L
NVLIBS  := $(DEP_NVLDFLAGS) -lcublasLt -lcublas -lcjson -lpcre2-8 -lm -lgomp

# Library code shared by every program: model.h's implementation, the tokenizer and shard code
# (when present), and the CPU reference compiled twice (float, and double for gradient checks).
CORE_SRCS := model.c $(wildcard tokenizer.c data.c)
REF_SRCS  := $(wildcard ref/*.c)
CORE_OBJS := $(CORE_SRCS:%.c=$(BUILD)/%.o)
REF_OBJS  := $(REF_SRCS:%.c=$(BUILD)/%.o) $(REF_SRCS:%.c=$(BUILD)/%_f64.o)
LIB_OBJS  := $(CORE_OBJS) $(REF_OBJS)
HEADERS   := model.h $(wildcard ref/*.h tokenizer.h data.h)

TEST_SRCS := $(wildcard tests/test_*.c)
TEST_BINS := $(TEST_SRCS:tests/%.c=$(BUILD)/tests/%)
TEST_SCRIPTS := $(wildcard tests/test_*.sh)
GPU_TEST_SRCS := $(wildcard tests/gpu/test_*.cu)
GPU_TEST_BINS := $(GPU_TEST_SRCS:tests/gpu/%.cu=$(BUILD)/tests/gpu/%)
KERNEL_HDRS   := $(wildcard kernels/*.cuh)
BENCH_SRCS    := $(wildcard tests/bench_*.c)
BENCH_BINS    := $(BENCH_SRCS:tests/%.c=$(BUILD)/tests/%)
GPU_BENCH_SRCS := $(wildcard tests/gpu/bench_*.cu)
GPU_BENCH_BINS := $(GPU_BENCH_SRCS:tests/gpu/%.cu=$(BUILD)/tests/gpu/%)

.PHONY: all test test-gpu train infer bench bench-gpu cuda-compile data clean
all: $(if $(wildcard infer.c),infer) $(if $(wildcard tokenize.c),tokenize)

$(BUILD)/%.o: %.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@
$(BUILD)/%_f64.o: %.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -DREF_F64 -c $< -o $@

$(BUILD)/tests/%: tests/%.c $(wildcard tests/*.h) $(LIB_OBJS) $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< $(LIB_OBJS) -o $@ $(LDLIBS)

# these include infer.c (llm.c's TESTING pattern)
$(BUILD)/tests/test_infer $(BUILD)/tests/bench_infer: infer.c

test: $(TEST_BINS) $(BUILD)/train_deltanet_cpu $(if $(wildcard tokenize.c),tokenize) $(if $(wildcard infer.c),infer)
	@tests/run_tests.sh $(TEST_BINS) $(TEST_SCRIPTS)

infer: infer.c $(LIB_OBJS) $(HEADERS)
	$(CC) $(CFLAGS) $< $(LIB_OBJS) -o $@ $(LDLIBS)

tokenize: tokenize.c $(LIB_OBJS) $(HEADERS)
	$(CC) $(CFLAGS) $< $(LIB_OBJS) -o $@ $(LDLIBS)

# `make train` also prepares the bundled TinyShakespeare shards, so that ./train_deltanet runs
# with no arguments.
train: train_deltanet data
train_deltanet: train_deltanet.cu $(KERNEL_HDRS) $(LIB_OBJS) $(HEADERS)
	$(NVCC) $(NVFLAGS) $< $(LIB_OBJS) -o $@ $(NVLIBS)

# The trainer without CUDA (its CPU backend alone), built by the host C++ compiler: what
# tests/test_trainer.sh runs, and what `make train` builds where nvcc is missing.
CXX      ?= g++
CPU_TRAIN_FLAGS := -std=c++17 -O2 -fopenmp -DDN_CPU_ONLY -D_POSIX_C_SOURCE=200809L -Wall -Wextra $(DEP_CFLAGS)
$(BUILD)/train_deltanet_cpu: train_deltanet.cu $(LIB_OBJS) $(HEADERS)
	@mkdir -p $(dir $@)
	$(CXX) $(CPU_TRAIN_FLAGS) -x c++ $< -x none $(LIB_OBJS) -o $@ $(LDLIBS)

$(BUILD)/tests/gpu/%: tests/gpu/%.cu $(wildcard tests/gpu/*.h tests/gpu/*.cuh) $(KERNEL_HDRS) $(LIB_OBJS) $(HEADERS)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) $< $(LIB_OBJS) -o $@ $(NVLIBS)

test-gpu: $(GPU_TEST_BINS) train_deltanet infer data
	@tests/run_tests.sh $(GPU_TEST_BINS) tests/gpu/test_trainer.sh

# Benchmarks print tables; the GPU ones run only where a GPU is (BENCH_GPU=1, set by bench-gpu).
bench: $(BENCH_BINS)
	@for b in $(BENCH_BINS); do echo "== $$b"; $$b || exit 1; done
bench-gpu: $(GPU_BENCH_BINS)
	@for b in $(GPU_BENCH_BINS); do echo "== $$b"; $$b || exit 1; done

# Compile every CUDA source without running anything (what CI can do without a GPU).
cuda-compile: $(if $(wildcard train_deltanet.cu),train_deltanet) $(GPU_TEST_BINS) $(GPU_BENCH_BINS)

data: $(if $(wildcard tokenize.c),tokenize)
	scripts/make_data.sh

clean:
	rm -rf $(BUILD) infer tokenize train_deltanet

# `make curves`: the DeltaNet paper's four models trained on the shared corpus with one recipe,
# their validation curves in one plot and one table (scripts/curves.sh; needs a GPU, ~1 hour).
# Options go through CURVES_ARGS, e.g. make curves CURVES_ARGS="--configs deltanet,swa --steps 200".
# The checks (output folder, corpus, GPU, matplotlib) run before the trainer is built.
.PHONY: curves
curves: tokenize
	@scripts/curves.sh --check $(CURVES_ARGS)
	@$(MAKE) --no-print-directory train_deltanet
	@scripts/curves.sh $(CURVES_ARGS)
