# deltanet.c -- build everything with make.
#   make test       CPU tests (what CI runs)          make infer      plain-C inference
#   make train      the trainer + TinyShakespeare     make test-gpu   GPU tests (on a GPU machine)
#   make bench      benchmarks (print tables)         make data       TinyShakespeare token shards
#   make test SAN=1 CPU tests under ASan + UBSan      make fuzz       libFuzzer targets, FUZZ_SECONDS each
#   make bench-scaling  tokens/s on 1, 2, 4, 8 GPUs (mpirun; scripts/bench_scaling.sh)
#
# Dependencies: a C compiler, libcjson-dev, libpcre2-dev, python3 for the tests; clang with its
# sanitizer runtimes and libomp for SAN=1 and fuzz; the CUDA toolkit for the GPU code. Every build
# first runs scripts/install_deps.sh, which installs the missing Debian/Ubuntu packages (as root or
# through passwordless sudo; otherwise it prints the one command to run). DN_NO_INSTALL=1 skips
# that, and so does DEPS=/folder, for packages unpacked under a folder instead (the GPU machine).
# Without nvcc (not on PATH nor in /usr/local/cuda/bin), `make train` builds a CPU-only trainer
# with $(CXX) and the GPU targets stop with one line.
#
# Flags: CFLAGS (default -O2 -march=native), CXXFLAGS and NVFLAGS only tune; the flags the code
# needs (REQ_*) are always added after them, so `make CFLAGS=-O0` builds the same code unoptimised.
#
# Build folders: objects and test programs go to $(BUILD): build/ by default, build-san/ with
# SAN=1, build-fuzz/ for make fuzz, so differently built objects never mix. The programs infer,
# tokenize and train_deltanet of the default build are at the repository root (./infer, as the
# README uses them); those of any other BUILD are in $(BUILD)/ (build-san/infer). `make test`
# runs the tests where that build's ./infer and ./tokenize are: the root, or $(BUILD)/root/, a
# folder of links to the repository's files.

NVCC     ?= nvcc
GPU_ARCH ?= -gencode arch=compute_90a,code=sm_90a -gencode arch=compute_90,code=compute_90
DEPS     ?=
SAN      ?=
BUILD    ?= $(if $(filter 1,$(SAN)),build-san,build)
FUZZ_SECONDS ?= 60

ifneq ($(DEPS),)
DEP_CFLAGS  := -I$(DEPS)/usr/include
DEP_LDFLAGS := -L$(DEPS)/usr/lib/x86_64-linux-gnu -Wl,-rpath,$(abspath $(DEPS))/usr/lib/x86_64-linux-gnu
DEP_NVLDFLAGS := -L$(DEPS)/usr/lib/x86_64-linux-gnu -Xlinker -rpath -Xlinker $(abspath $(DEPS))/usr/lib/x86_64-linux-gnu
endif

# SAN=1: clang (unless CC is given) with AddressSanitizer and UBSan; any UB report is fatal.
ifeq ($(SAN),1)
ifeq ($(origin CC),default)
CC := clang
endif
ifeq ($(origin CXX),default)
CXX := clang++
endif
SAN_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
SAN_ENV   := UBSAN_OPTIONS=print_stacktrace=1
OPT_FLAGS := -g -O1
else
OPT_FLAGS := -O2 -march=native
endif

CFLAGS   ?= $(OPT_FLAGS)
CXXFLAGS ?= $(OPT_FLAGS)
NVFLAGS  ?= -O3 --use_fast_math
REQ_CFLAGS   := -std=c11 -Wall -Wextra -D_POSIX_C_SOURCE=200809L -fopenmp $(DEP_CFLAGS)
REQ_CXXFLAGS := -std=c++17 -Wall -Wextra -D_POSIX_C_SOURCE=200809L -fopenmp -DDN_CPU_ONLY $(DEP_CFLAGS)
REQ_NVFLAGS  := -std=c++17 $(GPU_ARCH) $(DEP_CFLAGS) -Xcompiler -fopenmp -D_POSIX_C_SOURCE=200809L
ALL_CFLAGS    = $(CFLAGS) $(REQ_CFLAGS) $(SAN_FLAGS)
LDLIBS  := $(DEP_LDFLAGS) -lcjson -lpcre2-8 -lm -fopenmp
NVLIBS  := $(DEP_NVLDFLAGS) -lcublasLt -lcublas -lcjson -lpcre2-8 -lm -lgomp

# nvcc: $(NVCC) when it is on PATH, else /usr/local/cuda/bin/$(NVCC) if that exists, else empty.
NVCC_PATH := $(shell command -v $(NVCC) >/dev/null 2>&1 && echo $(NVCC) || { [ -x /usr/local/cuda/bin/$(NVCC) ] && echo /usr/local/cuda/bin/$(NVCC); })
NO_NVCC_MSG := nvcc not found (not on PATH nor in /usr/local/cuda/bin): install the CUDA toolkit, or pass NVCC=/path/to/nvcc

# Where the programs go (BIN) and where the tests run (RUN); see the header.
ifeq ($(BUILD),build)
BIN := .
RUN := .
else
BIN := $(BUILD)
RUN := $(BUILD)/root
endif

# Library code shared by every program: model.h's implementation, the tokenizer, shard and sampler code
# (when present), and the CPU reference compiled twice (float, and double for gradient checks).
CORE_SRCS := src/model.c src/tokenizer.c src/data.c src/sample.c src/mask.c src/dist.c
REF_SRCS  := $(wildcard ref/*.c)
CORE_OBJS := $(CORE_SRCS:%.c=$(BUILD)/%.o)
REF_OBJS  := $(REF_SRCS:%.c=$(BUILD)/%.o) $(REF_SRCS:%.c=$(BUILD)/%_f64.o)
LIB_OBJS  := $(CORE_OBJS) $(REF_OBJS)
HEADERS   := model.h $(wildcard ref/*.h src/*.h)

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
PROGS := $(if $(wildcard infer.c),$(BIN)/infer) $(if $(wildcard tokenize.c),$(BIN)/tokenize) $(if $(wildcard mqar_data.c),$(BIN)/mqar_data)

.PHONY: all deps test test-gpu train bench bench-gpu bench-scaling cuda-compile data fuzz fuzz-corpus clean
all: $(PROGS)
ifneq ($(BIN),.)
.PHONY: infer tokenize train_deltanet mqar_data
infer: $(BIN)/infer
tokenize: $(BIN)/tokenize
mqar_data: $(BIN)/mqar_data
train_deltanet: $(BIN)/train_deltanet
endif

# Missing packages first (see the header); what to check follows from the goals.
DEPS_WANT := cc $(if $(filter test,$(MAKECMDGOALS)),c++ python3) $(if $(filter 1,$(SAN)),san) \
             $(if $(filter fuzz fuzz-corpus,$(MAKECMDGOALS)),fuzz) \
             $(if $(NVCC_PATH),,$(if $(filter train train_deltanet %/train_deltanet,$(MAKECMDGOALS)),c++))
deps:
ifeq ($(DEPS)$(filter 1,$(DN_NO_INSTALL)),)
	@CC='$(CC)' CXX='$(CXX)' scripts/install_deps.sh $(DEPS_WANT)
endif

$(BUILD)/%.o: %.c $(HEADERS) | deps
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@
$(BUILD)/%_f64.o: %.c $(HEADERS) | deps
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -DREF_F64 -c $< -o $@

$(BUILD)/tests/%: tests/%.c $(wildcard tests/*.h) $(LIB_OBJS) $(HEADERS) | deps
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $< $(LIB_OBJS) -o $@ $(LDLIBS)

# these include infer.c / mqar_data.c (llm.c's TESTING pattern)
$(BUILD)/tests/test_infer $(BUILD)/tests/bench_infer: infer.c
$(BUILD)/tests/test_mqar: mqar_data.c

$(BIN)/infer: infer.c $(LIB_OBJS) $(HEADERS) | deps
	$(CC) $(ALL_CFLAGS) $< $(LIB_OBJS) -o $@ $(LDLIBS)

$(BIN)/tokenize: tokenize.c $(LIB_OBJS) $(HEADERS) | deps
	$(CC) $(ALL_CFLAGS) $< $(LIB_OBJS) -o $@ $(LDLIBS)

$(BIN)/mqar_data: mqar_data.c $(LIB_OBJS) $(HEADERS) | deps
	$(CC) $(ALL_CFLAGS) $< $(LIB_OBJS) -o $@ $(LDLIBS)

# The folder the tests of a non-default build run in: links to the repository's files, and this
# build's programs as ./infer, ./tokenize, ./train_deltanet.
RUN_LINKS := $(filter-out infer tokenize mqar_data train_deltanet build build-% $(BUILD),$(wildcard *))
ifneq ($(RUN),.)
define make_run_dir
	@rm -rf $(RUN) && mkdir -p $(RUN) && \
	 for f in $(RUN_LINKS); do ln -s $(CURDIR)/$$f $(RUN)/$$f; done && \
	 for f in infer tokenize mqar_data train_deltanet; do ln -s ../$$f $(RUN)/$$f; done
endef
endif
# Paths of programs as seen from $(RUN).
from_run = $(if $(filter .,$(RUN)),$(1),$(abspath $(1)))

test: $(TEST_BINS) $(BUILD)/train_deltanet_cpu $(PROGS) | deps
	$(make_run_dir)
	@cd $(RUN) && DN_TRAINER=$(abspath $(BUILD))/train_deltanet_cpu $(SAN_ENV) $(CURDIR)/tests/run_tests.sh $(call from_run,$(TEST_BINS)) $(TEST_SCRIPTS)

# `make train` also prepares the bundled TinyShakespeare shards, so that ./train_deltanet runs
# with no arguments. Without nvcc it builds the CPU-only trainer (-DDN_CPU_ONLY, its CPU backend
# alone) with $(CXX); the stamp $(BUILD)/trainer.{gpu,cpu} rebuilds it when nvcc comes or goes.
TRAIN_MODE := $(if $(NVCC_PATH),gpu,cpu)
CPU_TRAIN_CMD = $(CXX) $(CXXFLAGS) $(REQ_CXXFLAGS) $(SAN_FLAGS) -x c++ $< -x none $(LIB_OBJS) -o $@ $(LDLIBS)
train: $(BIN)/train_deltanet data
$(BUILD)/trainer.$(TRAIN_MODE):
	@mkdir -p $(dir $@)
	@rm -f $(BUILD)/trainer.gpu $(BUILD)/trainer.cpu && touch $@
$(BIN)/train_deltanet: train_deltanet.cu $(KERNEL_HDRS) $(LIB_OBJS) $(HEADERS) $(BUILD)/trainer.$(TRAIN_MODE) | deps
ifneq ($(NVCC_PATH),)
	$(NVCC_PATH) $(NVFLAGS) $(REQ_NVFLAGS) $< $(LIB_OBJS) -o $@ $(NVLIBS) -lnccl
else
	@echo "nvcc not found: building the CPU-only trainer (install the CUDA toolkit to train on a GPU)"
	$(CPU_TRAIN_CMD)
endif

# The CPU-only trainer under its own name, whatever nvcc does: what tests/test_trainer.sh runs
# (as $$DN_TRAINER) in make test.
$(BUILD)/train_deltanet_cpu: train_deltanet.cu $(LIB_OBJS) $(HEADERS) | deps
	@mkdir -p $(dir $@)
	$(CPU_TRAIN_CMD)

ifneq ($(NVCC_PATH),)
$(BUILD)/tests/gpu/%: tests/gpu/%.cu $(wildcard tests/gpu/*.h tests/gpu/*.cuh) $(KERNEL_HDRS) $(LIB_OBJS) $(HEADERS) | deps
	@mkdir -p $(dir $@)
	$(NVCC_PATH) $(NVFLAGS) $(REQ_NVFLAGS) $< $(LIB_OBJS) -o $@ $(NVLIBS)

test-gpu: $(GPU_TEST_BINS) $(BIN)/train_deltanet $(PROGS) data
	$(make_run_dir)
	@cd $(RUN) && $(CURDIR)/tests/run_tests.sh $(call from_run,$(GPU_TEST_BINS)) tests/gpu/test_trainer.sh

# The README's results table (markdown), from the trainer and the benches: scripts/bench_table.sh,
# which keeps every command's output under results/bench-DATE-GPU/.
bench-gpu: $(GPU_BENCH_BINS) $(BIN)/train_deltanet data
	@TRAINER=$(BIN)/train_deltanet scripts/bench_table.sh $(BUILD)

# Data-parallel scaling (tokens/s on 1, 2, 4, 8 GPUs, mpirun): scripts/bench_scaling.sh, options in
# SCALING_ARGS (e.g. SCALING_ARGS="--models d12 --gpus 1,2").
bench-scaling: $(BIN)/train_deltanet data
	@scripts/bench_scaling.sh --trainer $(BIN)/train_deltanet $(SCALING_ARGS)

# Compile every CUDA source without running anything (what CI can do without a GPU).
cuda-compile: $(if $(wildcard train_deltanet.cu),$(BIN)/train_deltanet) $(GPU_TEST_BINS) $(GPU_BENCH_BINS)
else
test-gpu bench-gpu bench-scaling cuda-compile:
	$(error $(NO_NVCC_MSG))
$(BUILD)/tests/gpu/%:
	$(error $(NO_NVCC_MSG))
endif

# Benchmarks print tables; the GPU ones (above) run only where a GPU is.
bench: $(BENCH_BINS)
	@for b in $(BENCH_BINS); do echo "== $$b"; $$b || exit 1; done

data: $(if $(wildcard tokenize.c),$(BIN)/tokenize)
	$(make_run_dir)
	$(if $(filter .,$(RUN)),,cd $(RUN) && )scripts/make_data.sh

# libFuzzer targets (tests/fuzz/fuzz_*.c), built with clang into build-fuzz/ and run for
# FUZZ_SECONDS each from the seeds in tests/fuzz/corpus/<target>/ (tests/fuzz/run.sh).
# fuzz-corpus regenerates those seeds (tests/fuzz/make_corpus.c).
FUZZ_BUILD := build-fuzz
FUZZ_CC    ?= clang
FUZZ_FLAGS := -g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
FUZZ_SRCS  := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BINS  := $(FUZZ_SRCS:tests/fuzz/%.c=$(FUZZ_BUILD)/%)
FUZZ_OBJS  := $(CORE_SRCS:%.c=$(FUZZ_BUILD)/%.o)
$(FUZZ_BUILD)/%.o: %.c $(HEADERS) | deps
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) $(REQ_CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@
$(FUZZ_BUILD)/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz.h $(FUZZ_OBJS) $(HEADERS) | deps
	$(FUZZ_CC) $(FUZZ_FLAGS) $(REQ_CFLAGS) -fsanitize=fuzzer $< $(FUZZ_OBJS) -o $@ $(LDLIBS)
$(FUZZ_BUILD)/make_corpus: tests/fuzz/make_corpus.c tests/fuzz/fuzz.h $(FUZZ_OBJS) $(HEADERS) | deps
	$(FUZZ_CC) $(FUZZ_FLAGS) $(REQ_CFLAGS) $< $(FUZZ_OBJS) -o $@ $(LDLIBS)

fuzz: $(FUZZ_BINS)
	@FUZZ_SECONDS=$(FUZZ_SECONDS) tests/fuzz/run.sh $(FUZZ_BINS)
fuzz-corpus: $(FUZZ_BUILD)/make_corpus
	rm -rf tests/fuzz/corpus && $(FUZZ_BUILD)/make_corpus tests/fuzz/corpus

clean:
	rm -rf build build-san $(BUILD) $(FUZZ_BUILD) infer tokenize mqar_data train_deltanet

# `make curves`: the DeltaNet paper's four models and two Gated DeltaNet ones trained on the shared
# corpus with one recipe, their validation curves in one plot and one table (scripts/curves.sh;
# needs a GPU: ~3 minutes on an H200 for the first four). Options go through CURVES_ARGS, e.g. make curves CURVES_ARGS="--configs deltanet,swa --steps 200".
# The checks (output folder, corpus, GPU, matplotlib) run before the trainer is built.
.PHONY: curves
curves: tokenize
	@scripts/curves.sh --check $(CURVES_ARGS)
	@$(MAKE) --no-print-directory train_deltanet
	@scripts/curves.sh $(CURVES_ARGS)

# `make mqar`: multi-query associative recall (Zoology's MQAR) for DeltaNet, linear attention,
# global attention (and Gated DeltaNet when present) at widths 64, 128, 256: scripts/mqar.sh writes
# the task with ./mqar_data, trains every model with a small learning-rate sweep and writes
# out/mqar/table.md and out/mqar/mqar.png (needs a GPU; the default budget is a few minutes on an
# H200). Options through MQAR_ARGS, e.g. make mqar MQAR_ARGS="--steps 2000 --lrs 1e-3,3e-3,1e-2".
.PHONY: mqar
mqar: $(BIN)/mqar_data
	@scripts/mqar.sh --check $(MQAR_ARGS)
	@$(MAKE) --no-print-directory train_deltanet
	@scripts/mqar.sh $(MQAR_ARGS)
