#!/usr/bin/env bash
# The whole test suite: unit, integration, property, golden and doc tests.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked
