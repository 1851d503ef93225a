#!/usr/bin/env bash
# Storage collector benchmark: one collection of a Domain on a local folder with
# BENCH_BLOBS blobs (default 100,000) in 1,000 packages, a quarter of them freed.
# Prints the collection's time and the peak-RSS rise while it ran. See bench/README.md.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_BLOBS=${BENCH_BLOBS:-100000}
cd "$ROOT"
cargo build --release --locked -p wharf-core --example collect
"$ROOT/target/release/examples/collect" "$BENCH_BLOBS"
