#!/usr/bin/env bash
# The whole test suite: installs the package clients the end-to-end tests
# drive (tests/install-clients.sh), then runs every test of the workspace.
# Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/install-clients.sh
cargo test --workspace --locked "$@"
