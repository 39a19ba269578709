# pixforge developer entry points. The README's quickstart uses exactly two of them:
#   make serve   - set up a virtualenv with pixforge[server] (no torch) and start the server
#                  on the bundled default model repository (models/)
#   make test    - set up a virtualenv with torch + pixforge[dev] (server, train, bench and the
#                  test tools), then lint (ruff check + ruff format --check), type-check (mypy on
#                  the torch-free packages) and run the full test suite
# .ci/run calls `make test`, so CI enforces all four.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Installed first and explicitly: a bare `torch` requirement would pull several GB of CUDA wheels
# on a machine where the CPU build is what we want. Any torch>=2.4 works; CI pins this one.
# TORCH_INDEX, when set, is the only index torch (and its dependencies) come from. PyPI's Linux
# x86-64 torch is the CUDA build with several GB of nvidia-* wheels; for the CPU build anywhere:
#   make clean && make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
# (clean first: an existing .venv keeps the torch it has).
# Empty (the default) leaves the choice to pip's configuration: on CI that finds the CPU wheel.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
SERVE_ARGS ?=
PYTEST_ARGS ?=

.PHONY: serve test setup setup-dev protos check lint typecheck lint-protos compose-check clean

PY_SOURCES := pixforge service clients training bench tests tools setup.py

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The install generates the gRPC stubs from the protos (setup.py), so a proto edit reinstalls.
PROTOS := $(wildcard protos/pixforge/*/*.proto third_party/kserve/pixforge/*/*/*.proto)

# Serving needs no torch: the server only runs ONNX models.
$(VENV)/.serve-installed: $(BIN)/python pyproject.toml setup.py $(PROTOS)
	$(PIP) install -e ".[server]"
	touch $@

$(VENV)/.dev-installed: $(BIN)/python pyproject.toml setup.py $(PROTOS)
	$(PIP) install "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url "$(TORCH_INDEX)")
	$(PIP) install -e ".[dev]"
	touch $@ $(VENV)/.serve-installed

setup: $(VENV)/.serve-installed
setup-dev: $(VENV)/.dev-installed

serve: $(VENV)/.serve-installed
	$(BIN)/pixforge serve $(SERVE_ARGS)

# Lint and types first: they take seconds and fail fast, before the suite's minutes.
test: lint typecheck
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Regenerate the gRPC stubs (not committed; every install makes them) after editing a proto.
protos: $(VENV)/.dev-installed
	$(BIN)/python tools/codegen.py

# ruff lint + format check on the Python sources (generated stubs are excluded in pyproject.toml).
lint: $(VENV)/.dev-installed
	$(BIN)/ruff check $(PY_SOURCES)
	$(BIN)/ruff format --check $(PY_SOURCES)

# mypy on the torch-free packages (pixforge, service, clients; the generated stubs excluded):
# tools/typecheck.py lays them out as installed (pixforge/service, pixforge/clients) so mypy
# follows imports across folders; settings: [tool.mypy] in pyproject.toml.
typecheck: $(VENV)/.dev-installed
	$(BIN)/python tools/typecheck.py

# buf lint/breaking on the protos (needs Node.js; npx fetches @bufbuild/buf from the npm registry).
lint-protos:
	cd protos && npx --yes @bufbuild/buf lint

# Validate docker-compose.yml with Debian's docker-compose (v1), when installed.
compose-check:
	docker-compose -f docker-compose.yml config -q

# Kept as an alias: `make test` now runs everything `check` used to (the stub freshness check
# is tests/shared/test_shared_layout.py::test_generated_stubs_are_fresh).
check: test

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache
