#!/usr/bin/env bash
# The README's test command: bring the test stack up, then run every test —
# unit tests, the conformance suite and the model-based property test on
# every backend (memory, SQLite, PostgreSQL, Redis, ...), the derive's
# compile-error tests, the CLI tests and the doctests. A store that is
# configured but does not answer fails the run; nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/stack.sh up
set -a
# shellcheck disable=SC1091
. ./.env.test
set +a
cargo test --workspace --features dl-tests/integration "$@"
