# Front door of the toolkit: `make help` lists every target and variable.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON      ?= python3
MODELS      ?= resnet18 resnet50
WEIGHTS     ?= DEFAULT
LABELS      ?=
NAME        ?=
FORMAT      ?= torchscript
JIT         ?= script
VERSION     ?= 1.0
SEED        ?= 0
JPEG_DRAFT  ?=
CALIBRATION ?=
INT8_MIN_AGREEMENT ?=
INT8_MAX_ERROR ?=
INT8_MAX_DROP ?=
BUILD       ?= build
MODEL_STORE ?= model_store
RUN         ?= run
CONFIG      ?= config.properties
ISOLATION   ?= auto
PROTOCOL    ?= v2
RUNTIME     ?= own
IMAGE       ?= resnet-mar:latest
BASE        ?= debian:bookworm-slim
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
IMAGE_BUILD_ARGS ?=
STORAGE_URI ?= pvc://resnet-mar/kserve
SERVICE     ?= resnet-mar
POD_CPUS    ?= 1
POD_MEMORY  ?= 4Gi
PYTEST_ARGS ?=
DATA        ?=
BASELINE    ?=

VENV  := .venv
BIN   := $(VENV)/bin
STAMP := $(VENV)/.installed
NAMES := $(or $(NAME),$(MODELS))
export PATH := $(abspath $(BIN)):$(PATH)

# A venv whose interpreter does not run here (a checkout copied from another user, whose
# Python this user cannot read; a removed Python) is rebuilt, saying why.
ifneq ($(wildcard $(BIN)/python),)
ifneq ($(shell $(BIN)/python -c 'print(1)' 2>/dev/null),1)
$(info setup: $(VENV)/bin/python does not run for this user ($(shell readlink -f $(BIN)/python)): rebuilding $(VENV))
$(shell rm -rf $(VENV))
endif
endif

.PHONY: help setup host-tools container-tools labels script archive serve stop kserve eval mobile image check test test-container lint bench clean FORCE

help: ## list targets and variables
	@echo "Targets:"
	@grep -hE '^[a-z-]+:.*## ' $(firstword $(MAKEFILE_LIST)) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "Variables (current value):"
	@echo "  MODELS=$(MODELS)    any of: resnet18 resnet34 resnet50 resnet101 resnet152"
	@echo "         resnext50_32x4d resnext101_32x8d resnext101_64x4d wide_resnet50_2 wide_resnet101_2"
	@echo "  WEIGHTS=$(WEIGHTS)  DEFAULT | a weights entry (IMAGENET1K_V1, IMAGENET1K_V2) | none | path/to/state_dict.pt"
	@echo "  LABELS=$(LABELS)    label map JSON for a checkpoint in WEIGHTS (sets the number of classes)"
	@echo "  NAME=$(NAME)        served name for a single model (default: its architecture)"
	@echo "  FORMAT=$(FORMAT)    serialized format: torchscript | onnx (ONNX Runtime) | aoti (AOTInductor .pt2)"
	@echo "         | openvino (OpenVINO FP32) | int8 (NNCF post-training int8, run by OpenVINO)"
	@echo "  JIT=$(JIT)          FORMAT=torchscript: script (compiles the code) | trace (records a run on real photos)"
	@echo "  CALIBRATION=$(CALIBRATION)  FORMAT=int8: a folder of calibration photos (empty: photos packaged with scikit-image and matplotlib)"
	@echo "  INT8_MIN_AGREEMENT=$(INT8_MIN_AGREEMENT) INT8_MAX_ERROR=$(INT8_MAX_ERROR)  FORMAT=int8 quality gate on held-aside photos (empty: 0.8 top-1 agreement, 0.05 top-1 probability)"
	@echo "  VERSION=$(VERSION)  archive version (/predictions/<name>/<version>)"
	@echo "  SEED=$(SEED)        seed of untrained weights (WEIGHTS=none)"
	@echo "  JPEG_DRAFT=$(JPEG_DRAFT)  empty or 0: exact full JPEG decoding | 2: large JPEGs decoded at reduced scale (faster)"
	@echo "  RUN=$(RUN)          the served TorchServe's own folder (sockets, logs, state; owner only)"
	@echo "  CONFIG=$(CONFIG)  TorchServe settings make serve starts it with (its public addresses among them)"
	@echo "  ISOLATION=$(ISOLATION)  make serve: auto (own network namespace where the kernel allows one, else without, saying what stays reachable) | namespace (refuse without) | none"
	@echo "  PROTOCOL=$(PROTOCOL)  make kserve: v1 | v2 | grpc-v2"
	@echo "  RUNTIME=$(RUNTIME)  make kserve: own (this toolkit's image as a ServingRuntime) | kserve-torchserve (KServe's; TorchScript and AOTInductor only)"
	@echo "  IMAGE=$(IMAGE)  make image, make kserve: the serving image's name"
	@echo "  BASE=$(BASE)  TORCH_INDEX=$(TORCH_INDEX)  make image: base image, torch's wheel index (PyPI's: the CUDA build)"
	@echo "  IMAGE_BUILDER=$(IMAGE_BUILDER)  IMAGE_BUILD_ARGS=$(IMAGE_BUILD_ARGS)  make image: the builder and more of its arguments"
	@echo "  STORAGE_URI=$(STORAGE_URI)  make kserve: where the cluster finds build/kserve (pvc://claim/folder, s3://bucket/folder)"
	@echo "  SERVICE=$(SERVICE)  POD_CPUS=$(POD_CPUS)  POD_MEMORY=$(POD_MEMORY)  make kserve: InferenceService name and pod size"
	@echo "  DATA=$(DATA)  BASELINE=$(BASELINE)  make eval: labelled images (class folders named by label or index, or a path,label CSV); the model the others are compared with"
	@echo "         with FORMAT=int8, DATA makes the quality gate top-1 accuracy on it; INT8_MAX_DROP=$(INT8_MAX_DROP) (empty: 0.01) the accuracy int8 may lose"
	@echo "  BUILD=$(BUILD)  MODEL_STORE=$(MODEL_STORE)  PYTHON=$(PYTHON)  PYTEST_ARGS=$(PYTEST_ARGS)"
	@echo "  CXX=$(CXX)  C++ compiler of make cpp"

setup: $(STAMP) host-tools ## create .venv with the pinned stack; check Java >= 17, socat, unshare, ip, curl

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,onnx,bench,openvino,explain,mobile]'
	@touch $@
	@echo "setup: $(VENV) ready ($$($(BIN)/python -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)'))"

# The end of a recipe that has put the Debian packages it lacks in $$missing: nothing when
# none, apt-get as root, else what is needed ($(2), no commas) and a failure. $(1): who asks.
define install_missing
if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "$(1): installing$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	else \
		echo "$(1): $(2); missing:$$missing. Install them as root (apt-get install$$missing)." >&2; exit 1; \
	fi
endef
HOST_TOOLS_NEED = TorchServe here needs Java >= 17 (found: $${major:-none}) and socat and unshare and ip and curl
CPP_NEEDS = build/classify needs a C++20 compiler (g++ >= 10) and libjpeg and libpng and nlohmann-json

# What TorchServe and its doors need from the system; installed with apt-get when missing and root.
host-tools:
	@missing=""; \
	major=$$(java -version 2>&1 | awk -F'"' '/version/ {split($$2, v, "."); print v[1]}'); \
	{ [ -n "$$major" ] && [ "$$major" -ge 17 ]; } || missing="openjdk-17-jre-headless"; \
	command -v socat >/dev/null || missing="$$missing socat"; \
	command -v unshare >/dev/null || missing="$$missing util-linux"; \
	command -v ip >/dev/null || missing="$$missing iproute2"; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	$(call install_missing,setup,$(HOST_TOOLS_NEED))

labels: $(STAMP) ## regenerate index_to_name.json from torchvision's ImageNet categories
	$(BIN)/python -m resnet_mar labels --out index_to_name.json

# --- Builds and archives: real files, rebuilt only when something they come from changed.
# A served name's architecture: MODELS when NAME renames one model, else the name itself.
arch = $(if $(NAME),$(MODELS),$(1))
build_request = arch=$(call arch,$(1)) weights=$(WEIGHTS) labels=$(LABELS) format=$(FORMAT) jit=$(JIT) seed=$(SEED) jpeg_draft=$(JPEG_DRAFT) calibration=$(CALIBRATION) int8=$(INT8_MIN_AGREEMENT),$(INT8_MAX_ERROR),$(INT8_MAX_DROP) int8_data=$(if $(filter int8,$(FORMAT)),$(DATA))
BUILD_SOURCES := $(wildcard resnet_mar/*.py) handlers/resnet_serving/serving_schema.py
HANDLER_FILES := $(wildcard handlers/*.py handlers/resnet_serving/*.py)
BUILT    := $(NAMES:%=$(BUILD)/%.json)
ARCHIVES := $(NAMES:%=$(MODEL_STORE)/%.mar)
.PRECIOUS: $(BUILD)/%.request $(BUILD)/%.version $(BUILD)/%.json

# What a build or an archive was asked for, rewritten only when that changes (so a new WEIGHTS,
# FORMAT, JIT or VERSION rebuilds, and an unchanged one does not).
$(BUILD)/%.request: FORCE
	@mkdir -p $(@D); echo '$(call build_request,$*)' | cmp -s - $@ || echo '$(call build_request,$*)' > $@
$(BUILD)/%.version: FORCE
	@mkdir -p $(@D); echo '$(VERSION)' | cmp -s - $@ || echo '$(VERSION)' > $@

$(BUILD)/%.json: $(BUILD)/%.request $(BUILD_SOURCES) $(wildcard $(WEIGHTS) $(LABELS) $(CALIBRATION)) | $(STAMP)
	$(BIN)/python -m resnet_mar build --models $(call arch,$*) --weights $(WEIGHTS) \
		$(if $(LABELS),--labels $(LABELS)) $(if $(NAME),--name $*) --format $(FORMAT) \
		--jit $(JIT) --seed $(SEED) $(if $(JPEG_DRAFT),--jpeg-draft $(JPEG_DRAFT)) \
		$(if $(CALIBRATION),--calibration $(CALIBRATION)) \
		$(if $(INT8_MIN_AGREEMENT),--int8-min-agreement $(INT8_MIN_AGREEMENT)) \
		$(if $(INT8_MAX_ERROR),--int8-max-error $(INT8_MAX_ERROR)) \
		$(if $(and $(DATA),$(filter int8,$(FORMAT))),--int8-data $(DATA)) \
		$(if $(INT8_MAX_DROP),--int8-max-drop $(INT8_MAX_DROP)) --out $(BUILD)

$(MODEL_STORE)/%.mar: $(BUILD)/%.json $(BUILD)/%.version $(HANDLER_FILES) archive.sh
	./archive.sh -b $(BUILD) -s $(MODEL_STORE) -v $(VERSION) $*

script: $(BUILT) ## compile MODELS (FORMAT, JIT) into build/, checked against eager on real photos
archive: $(ARCHIVES) ## pack model_store/<name>.mar per model (archive.sh); rebuilds only what changed

# --- Serving.
serve: $(ARCHIVES) host-tools ## start TorchServe with every archive (own network namespace: ISOLATION); wait until READY
	$(BIN)/python -m resnet_mar serve --config $(CONFIG) --model-store $(MODEL_STORE) --folder $(RUN) \
		--isolation $(ISOLATION)

stop: ## drain and stop the server make serve started; returns once nothing of it runs
	$(BIN)/python -m resnet_mar stop --folder $(RUN)

kserve: $(ARCHIVES) ## write build/kserve/: a KServe storage folder, its ServingRuntime (RUNTIME=own) and InferenceService
	$(BIN)/python -m resnet_mar kserve --model-store $(MODEL_STORE) --models $(NAMES) --out $(BUILD)/kserve \
		--protocol $(PROTOCOL) --storage-uri $(STORAGE_URI) --service $(SERVICE) \
		--cpus $(POD_CPUS) --memory $(POD_MEMORY) --runtime $(RUNTIME) --image $(IMAGE) --config $(CONFIG)

mobile: $(STAMP) ## export MODELS to ExecuTorch (build/mobile/<name>.pte, XNNPACK), checked against eager; size and latency beside TorchScript's
	$(BIN)/python -m resnet_mar mobile --models $(MODELS) --weights $(WEIGHTS) $(if $(LABELS),--labels $(LABELS)) \
		$(if $(NAME),--name $(NAME)) --seed $(SEED) --out $(BUILD)/mobile --build $(BUILD)

# The archives as they are in MODEL_STORE (never rebuilt here: what is measured is what is served).
eval: $(STAMP) ## accuracy of each archive on DATA (class folders or a path,label CSV), in process and served -> results/eval/
	@test -n "$(DATA)" || { echo "eval: set DATA to a folder of class folders or a path,label CSV"; exit 2; }
	$(BIN)/python -m resnet_mar eval --data $(DATA) --models $(NAMES) --model-store $(MODEL_STORE) \
		--config $(CONFIG) --out results/eval $(if $(BASELINE),--baseline $(BASELINE))

# The serving image (Dockerfile): buildah where it is (--format docker keeps the HEALTHCHECK),
# else docker. model_store/ is baked in as it is (empty: mount a KServe layout at /mnt/models).
IMAGE_BUILDER ?= $(if $(shell command -v buildah),buildah bud --format docker --layers,docker build)
image: ## build the serving image IMAGE from Dockerfile (BASE, TORCH_INDEX); bakes in model_store/*.mar
	$(IMAGE_BUILDER) --build-arg BASE=$(BASE) --build-arg TORCH_INDEX=$(TORCH_INDEX) $(IMAGE_BUILD_ARGS) -t $(IMAGE) .
	@echo "image: $(IMAGE) (archives: $$(ls $(MODEL_STORE)/*.mar 2>/dev/null | xargs -r -n1 basename | paste -sd' ' -))"

# --- Checks.
# Clients this project did not write, each in its own venv (tritonclient's and KServe's SDK clash
# in one process), for the KServe integration tests.
CLIENTS := .venv-clients
CLIENT_VENVS := $(CLIENTS)/triton/.installed $(CLIENTS)/kserve/.installed
$(CLIENTS)/%/.installed: tests/clients/%-requirements.txt
	$(PYTHON) -m venv $(CLIENTS)/$*
	$(CLIENTS)/$*/bin/pip install --quiet --upgrade pip
	$(CLIENTS)/$*/bin/pip install --quiet -r $<
	@touch $@

check: $(STAMP) ## ruff and the tests that need neither TorchServe nor a model build (the fast loop)
	$(BIN)/ruff check resnet_mar handlers tests
	$(BIN)/ruff format --check resnet_mar handlers tests
	$(BIN)/pytest --fast -q $(PYTEST_ARGS)

test: setup $(CLIENT_VENVS) ## ruff (lint and format), unit tests, integration tests against a real TorchServe
	$(BIN)/ruff check resnet_mar handlers tests
	$(BIN)/ruff format --check resnet_mar handlers tests
	$(BIN)/pytest -m "not container" $(PYTEST_ARGS)

test-container: setup container-tools $(CLIENT_VENVS) ## build the image (buildah), run it (podman): every format, doors, stop, KServe runtime
	$(BIN)/pytest -m container $(PYTEST_ARGS)

CONTAINER_NEEDS = the container tests need buildah and podman and runc and debootstrap
# What building and running the image here needs; installed with apt-get when missing and root.
container-tools:
	@missing=""; for tool in buildah podman runc debootstrap; do \
		command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	$(call install_missing,container-tools,$(CONTAINER_NEEDS))

lint: $(STAMP) ## ruff check and format check
	$(BIN)/ruff check resnet_mar handlers tests
	$(BIN)/ruff format --check resnet_mar handlers tests

bench: setup ## served vs in-process limit vs stock TorchServe -> results/bench/report.md (~17 min)
	$(BIN)/python -m resnet_mar.bench --out results/bench --work $(BUILD)/bench

clean: ## remove build outputs (build/kserve too), archives and results (keeps .venv and a running server's folder)
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
	$(call install_missing,cpp,$(CPP_NEEDS))
