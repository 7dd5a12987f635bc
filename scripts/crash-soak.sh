#!/usr/bin/env bash
# Runs the kill -9 crash-safety test for many more rounds than the default
# test run (200). Usage: scripts/crash-soak.sh [ROUNDS]   (default 2000)
set -euo pipefail
cd "$(dirname "$0")/.."
CRASH_ROUNDS="${1:-2000}" exec cargo test --release -p tokenizer-auth-tests --test crash -- --nocapture
