#!/usr/bin/env bash
# The whole test suite: unit, integration, property, golden and doc tests,
# with the servers the tests need (a throwaway Postgres, see scripts/pg.sh)
# started here and stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
PG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/overseer-pg.XXXXXX")
cleanup() {
    bash scripts/pg.sh stop "$PG_DIR" || true
    rm -rf "$PG_DIR"
}
trap cleanup EXIT
OVERSEER_TEST_PG_URL=$(bash scripts/pg.sh start "$PG_DIR")
export OVERSEER_TEST_PG_URL
export OVERSEER_REQUIRE_SERVERS=1
cargo test --workspace --locked
