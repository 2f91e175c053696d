# Front door of the toolkit: `make help` lists every target and variable.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON      ?= python3
MODELS      ?= resnet18 resnet50
WEIGHTS     ?= DEFAULT
LABELS      ?=
NAME        ?=
FORMAT      ?= torchscript
VERSION     ?= 1.0
SEED        ?= 0
JPEG_DRAFT  ?= 0
BUILD       ?= build
MODEL_STORE ?= model_store
PYTEST_ARGS ?=

VENV  := .venv
BIN   := $(VENV)/bin
STAMP := $(VENV)/.installed
NAMES := $(or $(NAME),$(MODELS))
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: help setup java labels script archive serve stop test lint bench clean

help: ## list targets and variables
	@echo "Targets:"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  make %-9s %s\n", $$1, $$2}'
	@echo "Variables (current value):"
	@echo "  MODELS=$(MODELS)    any of: resnet18 resnet34 resnet50 resnet101 resnet152"
	@echo "         resnext50_32x4d resnext101_32x8d resnext101_64x4d wide_resnet50_2 wide_resnet101_2"
	@echo "  WEIGHTS=$(WEIGHTS)  DEFAULT | a weights entry (IMAGENET1K_V1, IMAGENET1K_V2) | none | path/to/state_dict.pt"
	@echo "  LABELS=$(LABELS)    label map JSON for a checkpoint in WEIGHTS (sets the number of classes)"
	@echo "  NAME=$(NAME)        served name for a single model (default: its architecture)"
	@echo "  FORMAT=$(FORMAT)    serialized format: torchscript | onnx (ONNX Runtime) | aoti (AOTInductor .pt2)"
	@echo "  VERSION=$(VERSION)  archive version (/predictions/<name>/<version>)"
	@echo "  SEED=$(SEED)        seed of untrained weights (WEIGHTS=none)"
	@echo "  JPEG_DRAFT=$(JPEG_DRAFT)  0: exact full JPEG decoding | 2: large JPEGs decoded at reduced scale (faster)"
	@echo "  BUILD=$(BUILD)  MODEL_STORE=$(MODEL_STORE)  PYTHON=$(PYTHON)  PYTEST_ARGS=$(PYTEST_ARGS)"
	@echo "  CXX=$(CXX)  C++ compiler of make cpp"

setup: $(STAMP) java ## create .venv with the pinned stack and check Java >= 17

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,onnx,bench]'
	@touch $@
	@echo "setup: $(VENV) ready ($$($(BIN)/python -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)'))"

java:
	@major=$$(java -version 2>&1 | awk -F'"' '/version/ {split($$2, v, "."); print v[1]}'); \
	if [ -n "$$major" ] && [ "$$major" -ge 17 ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "setup: Java >= 17 missing (found: $${major:-none}); installing openjdk-17-jre-headless"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless; \
	else \
		echo "setup: TorchServe needs Java >= 17 (found: $${major:-none}). Install openjdk-17-jre-headless as root." >&2; exit 1; \
	fi

labels: $(STAMP) ## regenerate index_to_name.json from torchvision's ImageNet categories
	$(BIN)/python -m resnet_mar labels --out index_to_name.json

script: $(STAMP) ## compile MODELS (FORMAT, default TorchScript) into build/, checked against eager
	$(BIN)/python -m resnet_mar build --models $(MODELS) --weights $(WEIGHTS) \
		$(if $(LABELS),--labels $(LABELS)) $(if $(NAME),--name $(NAME)) \
		--format $(FORMAT) --seed $(SEED) --jpeg-draft $(JPEG_DRAFT) --out $(BUILD)

archive: script ## script, then pack model_store/<name>.mar per model (archive.sh)
	./archive.sh -b $(BUILD) -s $(MODEL_STORE) -v $(VERSION) $(NAMES)

serve: setup ## archive if needed, start TorchServe with every archive (and GOMP_SPINCOUNT), wait until READY
	@missing=$$(for n in $(NAMES); do [ -f $(MODEL_STORE)/$$n.mar ] || echo $$n; done); \
	if [ -n "$$missing" ]; then echo "serve: no archive for: $$missing; running make archive"; \
		$(MAKE) --no-print-directory archive; fi
	@mkdir -p logs
	@workerenv=$$($(BIN)/python -m resnet_mar.worker_environment); \
	echo "env $$workerenv torchserve --start --ncs --model-store $(MODEL_STORE) --models all --ts-config config.properties"; \
	env $$workerenv torchserve --start --ncs --model-store $(MODEL_STORE) --models all \
		--ts-config config.properties </dev/null >logs/torchserve.out 2>&1 \
		|| { cat logs/torchserve.out; exit 1; }
	$(BIN)/python -m resnet_mar wait-ready --config config.properties \
		--models $$(ls $(MODEL_STORE)/*.mar | xargs -n1 basename | sed 's/\.mar$$//')

stop: ## stop the TorchServe started by make serve
	torchserve --stop

test: setup ## unit tests, then integration tests against a real TorchServe
	$(BIN)/ruff check resnet_mar handlers tests
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP) ## ruff check and format check
	$(BIN)/ruff check resnet_mar handlers tests
	$(BIN)/ruff format --check resnet_mar handlers tests

bench: setup ## served vs in-process limit vs stock TorchServe -> results/bench/report.md (~8 min)
	$(BIN)/python -m resnet_mar.bench --out results/bench --work $(BUILD)/bench

clean: ## remove build outputs and archives (keeps .venv)
	rm -rf $(BUILD) $(MODEL_STORE)/*.mar logs results

# --- C++ consumer: build/classify, libtorch from the venv's torch wheel, no Python at run time.
.PHONY: cpp cpp-deps
CPP_OBJECTS := $(patsubst cpp/%.cpp,$(BUILD)/cpp/%.o,$(wildcard cpp/*.cpp))
# The torch wheel's folder, found without importing torch (that takes seconds).
TORCH_DIR = $(shell $(BIN)/python -c 'import importlib.util as u; print(u.find_spec("torch").submodule_search_locations[0])')
# C++20: torch 2.14's headers require it. -ffp-contract=off: the resize's weights must round
# as Pillow's do (no fused multiply-add). -MD (not -MMD): the dependency files list torch's and
# the system's headers too, so another torch in the venv recompiles the program.
CPP_FLAGS = -std=c++20 -O2 -Wall -Wextra -ffp-contract=off -MD -MP \
	-isystem $(TORCH_DIR)/include -isystem $(TORCH_DIR)/include/torch/csrc/api/include
# libtorch_cpu (not libtorch, which adds the CUDA libraries); the rpath finds it at run time.
CPP_LIBS = -L$(TORCH_DIR)/lib -Wl,-rpath,$(TORCH_DIR)/lib -ltorch_cpu -lc10 -ljpeg -lpng
# Each header the C++ code needs from the system, and the Debian package that provides it.
CPP_HEADERS := jpeglib.h:libjpeg62-turbo-dev png.h:libpng-dev nlohmann/json.hpp:nlohmann-json3-dev

cpp: $(BUILD)/classify ## build/classify MODEL.pt IMAGE: top-5 in C++ with libtorch (no Python at run time)

$(BUILD)/classify: $(CPP_OBJECTS)
	$(CXX) -o $@ $^ $(CPP_LIBS)

$(BUILD)/cpp/%.o: cpp/%.cpp | cpp-deps
	@mkdir -p $(@D)
	$(CXX) $(CPP_FLAGS) -c $< -o $@

-include $(CPP_OBJECTS:.o=.d)

# libtorch comes with the venv's torch: set the venv up when missing, else use it as it is.
cpp-deps:
	@[ -x $(BIN)/python ] || $(MAKE) --no-print-directory $(STAMP)
	@missing=$$(command -v $(CXX) >/dev/null || echo g++); \
	for pair in $(CPP_HEADERS); do \
		echo "#include <$${pair%%:*}>" | $(CXX) -E -x c++ - >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "cpp: installing$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	else \
		echo "cpp: build/classify needs a C++20 compiler (g++ >= 10), libjpeg, libpng and nlohmann-json; missing:$$missing. Install them as root (apt-get install$$missing)." >&2; exit 1; \
	fi
