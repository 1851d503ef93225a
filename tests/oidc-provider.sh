#!/usr/bin/env bash
# Builds the OpenID provider the OIDC tests run: Ory Hydra, from its Go module at the version
# below, with SQLite (its in-memory store). The module's own go.mod replaces its API client
# with a folder the module download leaves out, so the build runs in a copy of the module with
# that one replacement dropped (the client comes from the module proxy at the required
# version). The binary is cached outside the repository, keyed by version, and rebuilt only
# when missing.
#
# Prints the path of the `hydra` binary on its last line of stdout.
set -euo pipefail

version=v2.3.0
module=github.com/ory/hydra/v2
cache="${WHARF_OIDC_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wharf/oidc}"
dir="$cache/hydra-$version"

if [[ -x "$dir/hydra" ]]; then
    echo "$dir/hydra"
    exit 0
fi

command -v go >/dev/null || { echo "oidc-provider.sh: the Go toolchain is needed to build Hydra" >&2; exit 1; }
echo "oidc-provider.sh: building Ory Hydra $version into $dir (a few minutes, once)" >&2
mkdir -p "$cache"
staging="$(mktemp -d "$cache/.build.XXXXXX")"
trap 'rm -rf "$staging"' EXIT
source_dir="$(GOFLAGS= GOWORK=off go mod download -json "$module@$version" | awk -F'"' '$2 == "Dir" {print $4}')"
[[ -d "$source_dir" ]] || { echo "oidc-provider.sh: could not download $module@$version" >&2; exit 1; }
cp -r "$source_dir" "$staging/src"
chmod -R u+w "$staging/src"
sed -i '\#^replace github.com/ory/hydra-client-go/v2 => ./internal/httpclient#d' "$staging/src/go.mod"
(cd "$staging/src" && CGO_ENABLED=1 GOFLAGS=-mod=mod GOWORK=off \
    go build -trimpath -tags sqlite,sqlite_omit_load_extension -o "$staging/hydra" .) >&2
mkdir -p "$dir.partial"
mv "$staging/hydra" "$dir.partial/hydra"
rm -rf "$dir"
mv "$dir.partial" "$dir"
trap - EXIT
rm -rf "$staging"
echo "$dir/hydra"
