# FinalPrice operators' interface. `just --list` (or `./just --list`) shows every recipe.

set shell := ["bash", "-euo", "pipefail", "-c"]
# Recipe arguments reach the commands as "$@", each one word whatever it holds.
set positional-arguments

# The nats-server to use: $NATS_SERVER_BIN, one on PATH, or the pinned one scripts/tools installs
# into .tools/ on demand.
nats_server := "$(" + quote(justfile_directory() / "scripts/tools") + " nats-server)"
# Docker Compose v2: Docker's plugin, or the standalone one scripts/tools puts into .tools/.
compose := "$(" + quote(justfile_directory() / "scripts/tools") + " docker-compose)"
export CARGO_TERM_COLOR := env_var_or_default("CARGO_TERM_COLOR", "auto")
# One database for every recipe: the SQLite file of `just up` unless DATABASE_URL says otherwise.
export DATABASE_URL := env_var_or_default("DATABASE_URL", "sqlite://.run/finalprice.db?mode=rwc")
# The operators' recipes reach the nats-servers of the running `just up` or `just up-cluster`
# (it writes .run/nats-url) unless NATS_URL is set; on up-cluster's they log in as its operator
# (.run/nats-operator-password) unless a NATS user is set.
nats_of_up := 'if [ -z "${NATS_URL:-}" ] && [ -f .run/nats-url ]; then export NATS_URL="$(cat .run/nats-url)"; if [ -z "${FINALPRICE_NATS__USER:-}" ] && [ -f .run/nats-operator-password ]; then export FINALPRICE_NATS__USER=operator FINALPRICE_NATS__PASSWORD_FILE=.run/nats-operator-password; fi; fi;'

# List the recipes
[private]
default:
    @{{quote(just_executable())}} --justfile {{quote(justfile())}} --list

# Build, start nats-server, migrate, run one worker and one front (SQLite unless DATABASE_URL); Ctrl-C stops all
[group('shopping stack')]
up: (preflight "up") build
    NATS_SERVER_BIN="{{nats_server}}" scripts/up

# Like `up` with three nats-servers as one cluster, the streams at R3, two workers and two fronts on one port; Ctrl-C stops all
[group('shopping stack')]
up-cluster: (preflight "up") build
    NATS_SERVER_BIN="{{nats_server}}" scripts/up --cluster

# Stop a `just up` or `just up-cluster` running in another terminal (fronts, then workers, then nats-servers)
[group('shopping stack')]
down:
    #!/usr/bin/env bash
    set -euo pipefail
    [ -f .run/pids ] || { echo "nothing started by just up or just up-cluster is running"; exit 0; }
    # .run/pids: one line per stage of the stop, in start order, the pids that stop together.
    # Once the fronts stop, `just up` stops the rest itself; a pid already gone is fine.
    tac .run/pids | while read -r -a stage; do
      kill -TERM "${stage[@]}" 2>/dev/null || true
      for pid in "${stage[@]}"; do
        while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
      done
    done
    rm -f .run/pids
    echo stopped

# Follow the logs of `just up` or `just up-cluster` (fronts, workers, nats-servers: every log in .run)
[group('shopping stack')]
logs:
    #!/usr/bin/env bash
    set -euo pipefail
    shopt -s nullglob
    logs=(.run/*.log)
    # Before the first start, wait for those of `just up`.
    [ ${#logs[@]} -gt 0 ] || logs=(.run/front.log .run/worker.log .run/nats.log)
    exec tail -n 50 -F "${logs[@]}"

# Prometheus with the shipped alert rules, scraping what `just up` or `just up-cluster` runs (PROMETHEUS_ADDR, default 127.0.0.1:9090); Ctrl-C stops it
[group('operations')]
prometheus:
    scripts/prometheus

# Show the queue, the consumer's backlog (lag), dead letters, and which fronts and workers are alive
[group('operations')]
status: build
    @{{nats_of_up}} target/debug/finalprice-worker status

# Write every committed order as CSV to stdout, streamed (any number of orders): just export > orders.csv
[group('operations')]
export: build
    @{{nats_of_up}} target/debug/finalprice-worker export

# Like `up`, with release builds: the stack to measure with `just load`
[group('shopping stack')]
up-release: (preflight "up")
    cargo build --release --workspace --bins
    BIN_DIR=target/release NATS_SERVER_BIN="{{nats_server}}" scripts/up

# Like `up-cluster`, with release builds
[group('shopping stack')]
up-cluster-release: (preflight "up")
    cargo build --release --workspace --bins
    BIN_DIR=target/release NATS_SERVER_BIN="{{nats_server}}" scripts/up --cluster

# Load a running stack: orders/s, latency, errors, each process's CPU and memory, a database check; e.g. `just load --connections 256 --seconds 30`; `just load --help` lists every option
[group('development')]
load *args: (preflight "build")
    cargo build --release -p finalprice-bench --bin finalprice-load
    target/release/finalprice-load "$@"

# Criterion benchmarks of the hot paths: form validation, wire messages, batch building
[group('development')]
bench: (preflight "build")
    cargo bench -p finalprice-bench --bench hot_paths

# Run the whole test suite against a real nats-server, PostgreSQL and SQLite
[group('development')]
test: (preflight "test")
    NATS_SERVER_BIN="{{nats_server}}" JUST={{quote(just_executable())}} scripts/test

# Apply the database migrations to DATABASE_URL (default: the SQLite file)
[group('operations')]
migrate: build
    target/debug/finalprice-worker migrate

# List the dead letters: orders that can never be written, with id and reason (no personal data)
[group('operations')]
dlq: build
    @{{nats_of_up}} target/debug/finalprice-worker dlq-list

# Put dead letters back into the queue once the cause is fixed: `just dlq-replay --all` or sequence numbers (asks first; `just --yes dlq-replay …` does not)
[group('operations')]
[confirm("Put these dead letters back into the order queue? Only once their cause is fixed. [y/N]")]
dlq-replay +selection: build
    @{{nats_of_up}} target/debug/finalprice-worker dlq-replay "$@"

# Print the Jaeger URL of the newest order's trace (JAEGER_URL, default http://127.0.0.1:16686)
[group('operations')]
traces:
    #!/usr/bin/env bash
    set -euo pipefail
    jaeger="${JAEGER_URL:-http://127.0.0.1:16686}"
    id="$(curl -fsS "$jaeger/api/traces?service=finalprice-front&operation=POST%20%2Forders&limit=1&lookback=1h" \
      | python3 -c 'import json,sys; d=json.load(sys.stdin)["data"]; print(d[0]["traceID"] if d else "")')"
    if [ -z "$id" ]; then echo "no order trace in Jaeger at $jaeger in the last hour" >&2; exit 1; fi
    echo "$jaeger/trace/$id"

# Compose: build the images and start the whole stack (writes .env with fresh random secrets, and the edge's certificate with `certs`, when there are none)
[group('compose')]
dc-up:
    #!/usr/bin/env bash
    set -euo pipefail
    # The secrets compose.yaml refuses to start without (see .env.example); only this machine
    # knows them. PostgreSQL takes its password when its volume is first made.
    secret() { head -c 24 /dev/urandom | base64 | tr -d '/+=\n'; }
    umask 077
    # An .env from an earlier release lacks the newer ones (Grafana's, one NATS password per
    # user): those are added, the others kept.
    [ -f .env ] || : >.env
    added=()
    for name in NATS_FRONT_PASSWORD NATS_WORKER_PASSWORD NATS_OPERATOR_PASSWORD \
      POSTGRES_PASSWORD GRAFANA_ADMIN_PASSWORD; do
      if ! grep -q "^$name=" .env; then
        [ -z "$(tail -c 1 .env)" ] || echo >>.env
        printf '%s=%s\n' "$name" "$(secret)" >>.env
        added+=("$name")
      fi
    done
    if [ ${#added[@]} -gt 0 ]; then
      echo "dc-up: wrote new random ${added[*]} into .env (kept for every later dc-up; readable by you only)"
    fi
    # The edge's HTTPS certificate (.run/certs): made when missing, renewed when it nears its end.
    scripts/certs
    {{compose}} up -d --build
    echo "dc-up: the form is on https://localhost:8443/ (http://localhost:8080/ redirects there; trust the CA .run/certs/ca.crt, e.g. curl --cacert .run/certs/ca.crt); Grafana on http://127.0.0.1:3000/ (admin, GRAFANA_ADMIN_PASSWORD in .env)"

# Compose: the edge's HTTPS certificate for localhost and 127.0.0.1 and its local CA, in .run/certs or `just certs DIR`; kept if there, `--force` (or FORCE=1) makes new ones
[group('compose')]
certs *args:
    @scripts/certs "$@"

# Compose: stop the stack (volumes are kept)
[group('compose')]
dc-down:
    {{compose}} down

# Compose: follow the logs of every service
[group('compose')]
dc-logs:
    {{compose}} logs -f --tail=50

# Compose: container states, then the order path's status from inside the stack (as the NATS user operator)
[group('compose')]
dc-status:
    {{compose}} ps
    {{compose}} run --rm operator status

# Compose: the nats CLI on the stack's network with its login, e.g. `just dc-nats consumer info ORDERS workers`
[group('compose')]
dc-nats *args:
    {{compose}} run --rm nats-box "$@"

# Compose: run this many fronts and workers, e.g. `just scale 3 4`
[group('compose')]
scale fronts workers:
    {{compose}} up -d --no-recreate --scale "front=$1" --scale "worker=$2"

# Compose: check compose.yaml by Compose v2's rules the way CI does (no Docker engine needed)
[group('compose')]
dc-lint:
    NATS_FRONT_PASSWORD=lint NATS_WORKER_PASSWORD=lint NATS_OPERATOR_PASSWORD=lint POSTGRES_PASSWORD=lint GRAFANA_ADMIN_PASSWORD=lint {{compose}} -f compose.yaml config -q

# Build both services (the test profile: one set of artifacts for `up` and `test`)
[group('development')]
build: (preflight "build")
    cargo build --workspace --bins

# Check formatting, lints and compose.yaml the way CI does
[group('development')]
lint: dc-lint
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Check dependency licenses, duplicate versions and sources (cargo-deny; installed if missing)
[group('development')]
deny:
    #!/usr/bin/env bash
    set -euo pipefail
    if ! command -v cargo-deny >/dev/null 2>&1; then cargo install --locked cargo-deny@0.20.2; fi
    cargo deny check licenses bans sources

# Format the code
[group('development')]
fmt:
    cargo fmt --all

# Print the path of nats-server, installing it into .tools/ if there is none
[private]
nats-server-path:
    @scripts/tools nats-server

# Check what the build, up or test needs before it starts (scripts/preflight)
[private]
preflight what:
    @scripts/preflight "$1"
