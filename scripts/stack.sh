#!/usr/bin/env bash
# The test stack: PostgreSQL, Redis, MongoDB (SecantusDB's secantusd-rs),
# ScyllaDB (the CQL test server of tests/, on the kassandra engine) and NATS
# with JetStream (the CDC relay's event-bus sink).
#
#   scripts/stack.sh up       bring every store up, wait until each answers,
#                             write .env.test, say what runs where
#   scripts/stack.sh down     stop the processes this script started
#   scripts/stack.sh env      print .env.test
#   scripts/stack.sh status   say which stores answer
#
# With a Docker engine it uses compose.yaml. Without one it runs local
# processes: PostgreSQL and Redis are used as they are when they answer,
# started when installed but stopped, installed from Debian's packages when
# absent; MongoDB is SecantusDB's secantusd-rs, built once with cargo install
# and reused; ScyllaDB is the CQL test server built from this workspace
# (cargo build -p dl-tests --bin cql-test-server); NATS is used as it is
# when a server with JetStream answers on 127.0.0.1:4222, else Debian's
# nats-server is installed and started with -js. Data and logs live in
# .stack/ (git-ignored).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
STATE="$ROOT/.stack"
mkdir -p "$STATE"

PG_URL_DEFAULT="postgres://postgres@127.0.0.1:5432/test"
REDIS_URL_DEFAULT="redis://127.0.0.1:6379/0"
MONGO_PORT=27017
MONGO_URL_DEFAULT="mongodb://127.0.0.1:${MONGO_PORT}/?directConnection=true"
SECANTUS_VERSION="0.5.3-beta.196"
SCYLLA_PORT=9042
NATS_PORT=4222

say() { printf 'stack: %s\n' "$*" >&2; }
die() { printf 'stack: error: %s\n' "$*" >&2; exit 1; }

port_open() { # host port
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && exec 3>&- 3<&-
}

wait_for() { # what seconds command...
  local what=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      die "$what did not answer within ${secs}s"
    fi
    sleep 0.5
  done
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else die "need root to run: $*"; fi
}

apt_install() {
  command -v apt-get >/dev/null || die "cannot install $* : no apt-get here (install it by hand, or use Docker with compose.yaml)"
  say "installing $* from Debian's packages"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

docker_engine() { command -v docker >/dev/null && docker info >/dev/null 2>&1; }

# ---------------------------------------------------------------- PostgreSQL
pg_answers() { psql "$1" -Atqc 'select 1' >/dev/null 2>&1; }

postgres_up() {
  local url=${TEST_POSTGRES_URL:-$PG_URL_DEFAULT}
  if pg_answers "$url"; then
    say "postgres: answering at ${url%%\?*} (used as it is)"
    PG_URL=$url
    return
  fi
  if ! command -v pg_ctlcluster >/dev/null; then
    apt_install postgresql postgresql-client
  fi
  local ver
  ver=$(ls /etc/postgresql | sort -V | tail -n 1)
  [ -n "$ver" ] || die "postgres: installed but no cluster found under /etc/postgresql"
  if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
    say "postgres: starting cluster $ver/main"
    as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start || die "postgres: could not start cluster $ver/main"
  fi
  wait_for "postgres" 60 pg_isready -h 127.0.0.1 -p 5432 -q
  if ! pg_answers "$url"; then
    # A fresh Debian install asks for passwords on TCP: let the local test
    # user in without one (loopback only) and create the test database.
    local hba="/etc/postgresql/$ver/main/pg_hba.conf"
    if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
      say "postgres: allowing password-less loopback connections for tests ($hba)"
      as_root sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
      as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main reload
    fi
    as_root su postgres -c "psql -Atqc \"select 1 from pg_database where datname='test'\" | grep -q 1 || createdb test"
  fi
  pg_answers "$url" || die "postgres: running, but $url does not accept connections"
  say "postgres: answering at ${url%%\?*}"
  PG_URL=$url
}

# ---------------------------------------------------------------- Redis
redis_answers() { [ "$(redis-cli -u "$1" ping 2>/dev/null)" = "PONG" ]; }

redis_up() {
  local url=${TEST_REDIS_URL:-$REDIS_URL_DEFAULT}
  command -v redis-cli >/dev/null || apt_install redis-server redis-tools
  if redis_answers "$url"; then
    say "redis: answering at $url (used as it is)"
    REDIS_URL=$url
    return
  fi
  command -v redis-server >/dev/null || apt_install redis-server
  say "redis: starting redis-server on 127.0.0.1:6379 (nothing kept on disk)"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir "$STATE" --logfile "$STATE/redis.log" --pidfile "$STATE/redis.pid"
  wait_for "redis" 30 redis_answers "$url"
  echo started > "$STATE/redis.ours"
  REDIS_URL=$url
}

# ---------------------------------------------------------------- MongoDB (SecantusDB)
secantus_bin() {
  if command -v secantusd-rs >/dev/null; then command -v secantusd-rs; return; fi
  local cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin/secantusd-rs"
  [ -x "$cargo_bin" ] && echo "$cargo_bin"
}

mongo_up() {
  if port_open 127.0.0.1 "$MONGO_PORT"; then
    say "mongo: answering on 127.0.0.1:$MONGO_PORT (used as it is)"
    MONGO_URL=${TEST_MONGODB_URI:-$MONGO_URL_DEFAULT}
    return
  fi
  local bin
  bin=$(secantus_bin || true)
  if [ -z "$bin" ]; then
    command -v cmake >/dev/null || apt_install cmake
    say "mongo: building SecantusDB's secantusd-rs $SECANTUS_VERSION once (cargo install; about 10 minutes on 2 cores)"
    cargo install secantus-mdb --version "$SECANTUS_VERSION" --ignore-rust-version --locked >"$STATE/secantus-install.log" 2>&1 \
      || die "mongo: cargo install secantus-mdb failed; see $STATE/secantus-install.log"
    bin=$(secantus_bin) || die "mongo: secantusd-rs not found after install"
  fi
  mkdir -p "$STATE/mongo-data"
  say "mongo: starting $bin on 127.0.0.1:$MONGO_PORT"
  nohup "$bin" --port "$MONGO_PORT" --storage-path "$STATE/mongo-data" >"$STATE/mongo.log" 2>&1 &
  echo $! > "$STATE/mongo.pid"
  wait_for "mongo (secantusd-rs)" 60 port_open 127.0.0.1 "$MONGO_PORT"
  MONGO_URL=${TEST_MONGODB_URI:-$MONGO_URL_DEFAULT}
}

# ---------------------------------------------------------------- ScyllaDB (CQL test server)
scylla_up() {
  if port_open 127.0.0.1 "$SCYLLA_PORT"; then
    say "scylla: answering on 127.0.0.1:$SCYLLA_PORT (used as it is)"
    SCYLLA_URI=127.0.0.1:$SCYLLA_PORT
    # A server found running is taken for the CQL test server unless
    # TEST_SCYLLA_LWT=true says it is a ScyllaDB.
    SCYLLA_LWT=${TEST_SCYLLA_LWT:-false}
    return
  fi
  say "scylla: building the CQL test server (cargo build -p dl-tests --bin cql-test-server)"
  cargo build -q -p dl-tests --bin cql-test-server >"$STATE/cql-build.log" 2>&1 \
    || die "scylla: building the CQL test server failed; see $STATE/cql-build.log"
  local dir
  dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
  say "scylla: starting the CQL test server on 127.0.0.1:$SCYLLA_PORT (in memory)"
  nohup "$dir/debug/cql-test-server" --port "$SCYLLA_PORT" >"$STATE/scylla.log" 2>&1 &
  echo $! > "$STATE/scylla.pid"
  wait_for "scylla (cql-test-server)" 60 port_open 127.0.0.1 "$SCYLLA_PORT"
  SCYLLA_URI=127.0.0.1:$SCYLLA_PORT
  SCYLLA_LWT=false
}

# The server's INFO line, when a NATS server answers on the port.
nats_info() {
  local line
  exec 3<>"/dev/tcp/127.0.0.1/$NATS_PORT" || return 1
  IFS= read -r -t 5 line <&3 || { exec 3>&- 3<&-; return 1; }
  exec 3>&- 3<&-
  printf '%s' "$line"
}
nats_answers() { nats_info | grep -q '"jetstream":true'; }

nats_up() {
  if port_open 127.0.0.1 "$NATS_PORT"; then
    nats_answers || die "nats: a server answers on 127.0.0.1:$NATS_PORT without JetStream; restart it with -js"
    say "nats: answering with JetStream on 127.0.0.1:$NATS_PORT (used as it is)"
  else
    command -v nats-server >/dev/null || apt_install nats-server
    say "nats: starting nats-server -js on 127.0.0.1:$NATS_PORT (store in .stack/nats)"
    mkdir -p "$STATE/nats"
    nohup nats-server -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$STATE/nats" >"$STATE/nats.log" 2>&1 &
    echo $! > "$STATE/nats.pid"
    wait_for "nats" 30 nats_answers
  fi
  NATS_URL="nats://127.0.0.1:$NATS_PORT"
}

# ---------------------------------------------------------------- commands
write_env() {
  cat > "$ROOT/.env.test" <<EOF
# Written by scripts/stack.sh $(date -u +%Y-%m-%dT%H:%M:%SZ). The integration tests read these.
TEST_POSTGRES_URL=$PG_URL
TEST_REDIS_URL=$REDIS_URL
TEST_MONGODB_URI=$MONGO_URL
TEST_SCYLLA_URI=$SCYLLA_URI
# Lightweight transactions: true for ScyllaDB, false for the CQL test server.
TEST_SCYLLA_LWT=$SCYLLA_LWT
TEST_NATS_URL=$NATS_URL
EOF
}

up() {
  local started=$SECONDS
  if docker_engine; then
    say "docker engine found: docker compose up (compose.yaml)"
    docker compose up -d --wait
    PG_URL="postgres://postgres:postgres@127.0.0.1:5432/test"
    REDIS_URL=$REDIS_URL_DEFAULT
    MONGO_URL="mongodb://127.0.0.1:${MONGO_PORT}/?directConnection=true"
    SCYLLA_URI=127.0.0.1:$SCYLLA_PORT
    SCYLLA_LWT=true
    NATS_URL="nats://127.0.0.1:$NATS_PORT"
  else
    postgres_up
    redis_up
    mongo_up
    scylla_up
    nats_up
  fi
  # The restart fault test runs a private redis-server on its own port.
  command -v redis-server >/dev/null || apt_install redis-server
  write_env
  say "ready in $((SECONDS - started))s; settings in .env.test"
}

down() {
  if docker_engine; then
    docker compose down
  fi
  if [ -f "$STATE/mongo.pid" ]; then
    kill "$(cat "$STATE/mongo.pid")" 2>/dev/null && say "mongo: stopped" || true
    rm -f "$STATE/mongo.pid"
  fi
  if [ -f "$STATE/scylla.pid" ]; then
    kill "$(cat "$STATE/scylla.pid")" 2>/dev/null && say "scylla: stopped" || true
    rm -f "$STATE/scylla.pid"
  fi
  if [ -f "$STATE/redis.ours" ] && [ -f "$STATE/redis.pid" ]; then
    kill "$(cat "$STATE/redis.pid")" 2>/dev/null && say "redis: stopped" || true
    rm -f "$STATE/redis.ours" "$STATE/redis.pid"
  fi
  if [ -f "$STATE/nats.pid" ]; then
    kill "$(cat "$STATE/nats.pid")" 2>/dev/null && say "nats: stopped" || true
    rm -f "$STATE/nats.pid"
  fi
}

status() {
  pg_answers "${TEST_POSTGRES_URL:-$PG_URL_DEFAULT}" && say "postgres: up" || say "postgres: down"
  redis_answers "${TEST_REDIS_URL:-$REDIS_URL_DEFAULT}" && say "redis: up" || say "redis: down"
  port_open 127.0.0.1 "$MONGO_PORT" && say "mongo: up" || say "mongo: down"
  port_open 127.0.0.1 "$SCYLLA_PORT" && say "scylla: up" || say "scylla: down"
  nats_answers && say "nats: up (JetStream)" || say "nats: down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  env) cat "$ROOT/.env.test" ;;
  status) status ;;
  *) die "usage: scripts/stack.sh up|down|env|status" ;;
esac
