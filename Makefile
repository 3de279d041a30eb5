# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
AIRFLOW_VENV := .airflow-venv
AIRFLOW_VERSION := 3.3.2
NODE_EXAMPLE := examples/node
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test unit bench bench-audit profile phases install bench-tools airflow system-deps \
	apt-deps postgresql clean

## run: start a local Airflow 3 and the gateway in front of it (foreground)
run: install airflow
	$(BIN)/python -m txairflowrpc.devstack

## test: install what the tests need and run them all
test: install airflow system-deps
	$(BIN)/pytest

## unit: only the fast tests (no Airflow, no network)
unit: install
	$(BIN)/pytest tests/unit

# Heavy runs share the machine's 2 cores with other work: one at a time.
HEAVY_LOCK ?= /tmp/txairflowrpc-heavy.lock
BENCH_ARGS ?=
PROFILE_ARGS ?=

## bench: the gateway against its floor, a stdlib server and bare Airflow (stub and real);
##        table and plot in bench/results/ (about 20 minutes; BENCH_ARGS="--help" for options)
bench: bench-tools airflow postgresql
	flock $(HEAVY_LOCK) $(BIN)/python bench/run.py $(BENCH_ARGS)

## bench-audit: what the audit trail's durability costs (side by side, one run)
bench-audit: install
	flock $(HEAVY_LOCK) $(BIN)/python bench/audit_cost.py

## profile: py-spy records the gateway under the c=64 load; flamegraph in bench/results/
profile: bench-tools
	flock $(HEAVY_LOCK) $(BIN)/python bench/profile.py $(PROFILE_ARGS)

## phases: where one call's time goes at concurrency 1, phase by phase (bench/results/phases.md)
phases: bench-tools
	flock $(HEAVY_LOCK) $(BIN)/python bench/phases.py

install: $(VENV)/.installed
bench-tools: $(VENV)/.bench-installed
	@command -v wrk >/dev/null || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq wrk; }
airflow: $(AIRFLOW_VENV)/.installed $(AIRFLOW_VENV)/.postgres-drivers

# The project, editable in compat mode so that twistd finds twisted/plugins.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $@

# The benchmark's tools (plot, TOML fragments, py-spy): the bench extra.
$(VENV)/.bench-installed: $(VENV)/.installed pyproject.toml
	$(BIN)/pip install -q -e '.[test,bench]' --config-settings editable_mode=compat
	touch $@

# Airflow in its own venv: its dependencies must not mix with the gateway's.
$(AIRFLOW_VENV)/.installed:
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/pip install -q --upgrade pip
	$(AIRFLOW_VENV)/bin/pip install -q apache-airflow==$(AIRFLOW_VERSION)
	touch $@

# Airflow on PostgreSQL (tests, benchmark): psycopg2 for its sync sessions,
# asyncpg for its async ones (without it: "No module named 'asyncpg'").
$(AIRFLOW_VENV)/.postgres-drivers: $(AIRFLOW_VENV)/.installed
	$(AIRFLOW_VENV)/bin/pip install -q 'psycopg2-binary>=2.9.9' 'asyncpg>=0.30'
	touch $@

# What the tests need from Debian: PostgreSQL (the throwaway cluster the
# tests' Airflow runs on), and for the interoperability tests and the example
# clients (examples/): Perl's RPC::XML with HTTPS, Go with github.com/kolo/xmlrpc
# (built offline against Debian's copy), Ruby's xmlrpc, PHP's xmlrpc-epi,
# Node.js and npm, the C library xmlrpc-c and a C compiler, Java's aXMLRPC and
# a JDK (whose `java` runs a source file), curl (a client offering only HTTP/1.0 in ALPN), HAProxy (in
# front of several gateway instances: tests/integration/test_instances.py); for
# the deployment tests, systemd-analyze (systemd: checks conf/airflowrpc.service)
# and promtool (prometheus: checks conf/airflowrpc-alerts.yml; the package
# starts a Prometheus server on a host that runs systemd, not in a container
# whose policy-rc.d forbids it: `systemctl disable --now prometheus` if unwanted);
# then the Node example's packages from its lock file.
system-deps: apt-deps $(NODE_EXAMPLE)/node_modules/.installed
postgresql: apt-deps

# One apt-get update and one install, only when something is missing.
apt-deps:
	@missing=; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	perl -MRPC::XML::Client -MLWP::Protocol::https -MJSON::PP -e1 2>/dev/null || \
	  missing="$$missing librpc-xml-perl liblwp-protocol-https-perl"; \
	command -v go >/dev/null || missing="$$missing golang-go"; \
	[ -d /usr/share/gocode/src/github.com/kolo/xmlrpc ] || \
	  missing="$$missing golang-github-kolo-xmlrpc-dev"; \
	ruby -rxmlrpc/client -e1 2>/dev/null || missing="$$missing ruby ruby-xmlrpc"; \
	php -r 'exit(function_exists("xmlrpc_encode_request") ? 0 : 1);' 2>/dev/null || \
	  missing="$$missing php-cli php-xmlrpc"; \
	{ command -v node && command -v npm; } >/dev/null || missing="$$missing nodejs npm"; \
	command -v cc >/dev/null || missing="$$missing gcc"; \
	[ -f /usr/include/xmlrpc-c/client.h ] || missing="$$missing libxmlrpc-core-c3-dev"; \
	command -v javac >/dev/null || missing="$$missing default-jdk-headless"; \
	[ -f /usr/share/java/axmlrpc.jar ] || missing="$$missing libaxmlrpc-java"; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v haproxy >/dev/null || missing="$$missing haproxy"; \
	[ -z "$$missing" ] || { \
	  echo "apt-get install$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; }

$(NODE_EXAMPLE)/node_modules/.installed: $(NODE_EXAMPLE)/package-lock.json | apt-deps
	cd $(NODE_EXAMPLE) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

clean:
	rm -rf $(VENV) $(AIRFLOW_VENV) var build dist *.egg-info
