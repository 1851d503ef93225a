#!/usr/bin/env bash
# Installs the package clients the end-to-end tests drive, into a cache
# folder outside the repository (keyed by the pinned versions), so a second
# run costs nothing. npm comes with the machine's Node.js, cargo with the
# Rust toolchain that builds the tests, go with the machine's Go toolchain.
set -euo pipefail

TOOLS_DIR="${WHARF_TEST_TOOLS:-$HOME/.cache/wharf/test-tools}"
PYTHON_CLIENTS="twine==7.0.0 uv==0.13.9 build==1.3.0 setuptools==80.9.0 wheel==0.45.1"
STAMP="$TOOLS_DIR/venv/.installed"
SOURCE_DIR="$(cd "$(dirname "$0")" && pwd)"

need() {
    command -v "$1" >/dev/null 2>&1 || { echo "install-clients: $1 is required but not installed ($2)" >&2; exit 1; }
}
need python3 "Debian: apt-get install python3 python3-venv"
need npm "Debian: apt-get install nodejs npm"
need cargo "install Rust with rustup"
# The cargo tests drive the toolchain's own cargo; credential providers
# (`cargo:token` for auth-required registries) need cargo 1.74 or newer.
CARGO_MINOR=$(cargo --version | sed -n 's/^cargo 1\.\([0-9]*\).*/\1/p')
if [ -z "$CARGO_MINOR" ] || [ "$CARGO_MINOR" -lt 74 ]; then
    echo "install-clients: cargo 1.74 or newer is required, found: $(cargo --version)" >&2
    exit 1
fi
need go "install the Go toolchain, 1.21 or newer"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$PYTHON_CLIENTS" ]; then
    echo "install-clients: Python clients already in $TOOLS_DIR/venv"
else
    rm -rf "$TOOLS_DIR/venv"
    mkdir -p "$TOOLS_DIR"
    python3 -m venv "$TOOLS_DIR/venv"
    # Ignore the machine's pip settings (extra find-links folders and the like).
    PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= "$TOOLS_DIR/venv/bin/pip" install --quiet --disable-pip-version-check $PYTHON_CLIENTS
    echo "$PYTHON_CLIENTS" > "$STAMP"
    echo "install-clients: installed $PYTHON_CLIENTS into $TOOLS_DIR/venv"
fi

# The go command sends credentials only over https, so the Go tests put a
# TLS terminator (our own, in tests/tls-terminator, standard library only)
# in front of the registry. Built once per Go version and source.
GO_VERSION="$(go env GOVERSION)"
case "$GO_VERSION" in
    go1.[0-9]|go1.[0-9].*|go1.1[0-9]|go1.1[0-9].*|go1.20|go1.20.*)
        echo "install-clients: the Go tests need Go 1.21 or newer, found $GO_VERSION" >&2; exit 1 ;;
esac
SOURCE_KEY="$(cat "$SOURCE_DIR/tls-terminator/go.mod" "$SOURCE_DIR/tls-terminator/main.go" | sha256sum | cut -c1-16)"
TERMINATOR="$TOOLS_DIR/tls-terminator-$GO_VERSION-$SOURCE_KEY"
if [ -x "$TERMINATOR" ]; then
    echo "install-clients: TLS terminator already in $TERMINATOR"
else
    mkdir -p "$TOOLS_DIR"
    (cd "$SOURCE_DIR/tls-terminator" &&
        GOFLAGS= GOWORK=off GOPROXY=off GOTOOLCHAIN=local GOCACHE="$TOOLS_DIR/go-build-cache" \
            go build -trimpath -o "$TERMINATOR.partial" . )
    mv "$TERMINATOR.partial" "$TERMINATOR"
    echo "install-clients: built $TERMINATOR"
fi
ln -sfn "$TERMINATOR" "$TOOLS_DIR/tls-terminator"
