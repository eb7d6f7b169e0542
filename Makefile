# ChurnGuard — every entry point installs what it needs into .venv first (Python 3.11 + make only).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
# Re-install whenever pyproject.toml changes.
STAMP := $(VENV)/.installed-$(shell (sha256sum pyproject.toml 2>/dev/null || shasum -a 256 pyproject.toml) | cut -c1-16)
PYTEST_ARGS ?=

.PHONY: install demo serve train test lint bench-quality bench-serving bench-instructions bench-batch-memory bench-scale template-checks clean infra-venv sam-test bench-sam fuzz serve-sam deploy training-image

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "ChurnGuard needs Python 3.11 (set PYTHON=/path/to/python3.11)")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[train,serve,dev]"
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

## The main job on the embedded default (no Docker, no AWS account): moto server + resources from
## template.yaml, a CDNOW model (trained or reused), the API on 127.0.0.1, an S3 drop scored via the
## scoring-jobs queue, promotions in the queue. `make serve` keeps the stack up until Ctrl-C.
demo: install
	$(PY) -m infra.local_stack

serve: install
	$(PY) -m infra.local_stack --serve

## Train on CDNOW (or SM_CHANNEL_TRAIN); writes the model directory to artifacts/model/.
train: install
	$(PY) -m training.train --model-dir artifacts/model

## The test suite: unit, integration (moto over HTTP), e2e (local stack) and the sam build packages under
## sam local (tests/sam: needs Docker, or root to set up podman; skipped with the reason otherwise,
## never skipped with CI=true). See README for the layers.
test: install infra-venv
	$(PY) -m pytest -n 2 --dist loadfile --cov --cov-report=term $(PYTEST_ARGS)

## The long API fuzz run: schemathesis, 10,000 examples per operation (CI runs 3,400: tests/fuzz).
fuzz: install
	CHURNGUARD_FUZZ_EXAMPLES=$${CHURNGUARD_FUZZ_EXAMPLES:-10000} $(PY) -m pytest -p no:xdist -s tests/fuzz

## Only the packages under sam local (timings printed).
sam-test: install infra-venv
	$(PY) -m pytest -p no:xdist -s tests/sam $(PYTEST_ARGS)

## sam local cold/warm latency per function -> benchmarks/results/sam_local.{json,md}
bench-sam: install infra-venv
	$(PY) -m benchmarks.sam_local

## sam local start-api on 127.0.0.1:3000 over the built packages and moto in a container, until Ctrl-C.
serve-sam: install infra-venv
	$(PY) -m infra.sam_local --serve

## The SageMaker training image (training/Containerfile), tagged with the code version.
training-image: install
	$(PY) -m infra.training_image

## One deploy: sam build + deploy, training image to ECR, training events, first model + holdout, API
## instructions. `make deploy DEPLOY_ARGS=--dry-run` prints every command and upload instead.
DEPLOY_ARGS ?=
deploy: install infra-venv
	$(PY) -m infra.deploy $(DEPLOY_ARGS)

## ruff, and mypy --strict on the Lambda side: the domain package and each function (one run per
## function: every handler module is called app).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy shared/churnguard
	@for app in functions/*/app.py; do echo "mypy $$app"; $(VENV)/bin/mypy $$app || exit 1; done

## Quality benchmark (default: CDNOW, its protocol, one split) -> benchmarks/results/quality.{md,json};
## DATA=cdnow|tafeng|<dir>[,...] AS_OF=YYYY-MM-DD HORIZON_WEEKS=n WEEKS=n SPLITS=K are passed on when set
## (only from the command line: make would also take them from the environment, e.g. a DATA variable)
given = $(if $(filter command line,$(origin $(1))),$(2) $($(1)))
bench-quality: QUALITY_ARGS = $(call given,DATA,--data) $(call given,AS_OF,--as-of) \
	$(call given,HORIZON_WEEKS,--horizon-weeks) $(call given,WEEKS,--weeks) $(call given,SPLITS,--splits)
bench-quality: install
	$(PY) -m benchmarks.quality $(strip $(QUALITY_ARGS))

clean:
	rm -rf $(VENV) artifacts .pytest_cache .ruff_cache

## Serving benchmark (warm/cold API, batch, 1M customers, Keras peer, package sizes) -> benchmarks/results/serving.{md,json};
## then real-time (POST /v1/events, the inactivity sweep at 1M customers) -> benchmarks/results/realtime.{md,json}
bench-serving: install
	$(PY) -m benchmarks.serving
	$(PY) -m benchmarks.realtime

## Instructions per warm API request and per part (valgrind; counted, not timed: neighbours do not move it).
bench-instructions: install
	$(PY) -m benchmarks.instructions

## Batch peak memory by file shape, the fit behind batch admission -> benchmarks/results/batch_memory.{md,json}
bench-batch-memory: install
	$(PY) -m benchmarks.batch_memory

## sam validate --lint, cfn-lint on the translated template, checkov, sam build (no Docker) + sizes
INFRA_VENV := .cache/venv-infra
## The SAM CLI + checkov venv (their pins fight ours), built once by the same helper the tests use.
infra-venv: install
	$(PY) -c 'from tests.helpers import ROOT, cached_venv; cached_venv("venv-infra", "-r", str(ROOT / "infra/requirements-checks.txt"))'

template-checks: infra-venv
	$(INFRA_VENV)/bin/python infra/template_checks.py

## Scale: multi-part dataset drops through the two-phase shuffle, 1M + 3M customers, projected to 10M / 100M
## customers -> benchmarks/results/scale.{md,json} (~35 min on 2 cores; not in make test). SCALE_ARGS=--workers 2
SCALE_ARGS ?=
bench-scale: install
	$(PY) -m benchmarks.scale $(SCALE_ARGS)
