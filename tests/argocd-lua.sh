#!/usr/bin/env bash
# Builds tests/argocd-lua — Argo CD's way of running a health check (gopher-lua, its sandbox,
# `obj` from JSON) — for the tests of gitops/argocd/health.lua. Cached outside the repository,
# keyed by a hash of the module's files, and rebuilt only when missing.
#
# Prints the path of the binary on its last line of stdout.
set -euo pipefail

module="$(cd "$(dirname "$0")" && pwd)/argocd-lua"
digest="$(cat "$module/go.mod" "$module/go.sum" "$module/main.go" | sha256sum | cut -c1-12)"
cache="${WHARF_ARGOCD_LUA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wharf/argocd-lua}"
binary="$cache/$digest/argocd-lua"

if [[ -x "$binary" ]]; then
    echo "$binary"
    exit 0
fi

command -v go >/dev/null || { echo "argocd-lua.sh: the Go toolchain is needed to build tests/argocd-lua" >&2; exit 1; }
mkdir -p "$cache"
staging="$(mktemp -d "$cache/.build.XXXXXX")"
trap 'rm -rf "$staging"' EXIT
(cd "$module" && GOWORK=off go build -trimpath -o "$staging/argocd-lua" .) >&2
rm -rf "${binary%/*}"
mv "$staging" "${binary%/*}"
trap - EXIT
echo "$binary"
