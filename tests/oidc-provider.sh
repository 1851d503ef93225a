#!/usr/bin/env bash
# Builds the OpenID provider the OIDC tests run: Ory Hydra, from its Go module at the version
# below, with SQLite (its in-memory store); cached by version. The module's own go.mod
# replaces its API client with a folder the module download leaves out, so that one
# replacement is dropped (the client comes from the module proxy at the required version).
#
# Prints the path of the `hydra` binary on its last line of stdout.
set -euo pipefail
source "$(dirname "$0")/go-module-binary.sh"

fix_module_copy() {
    sed -i '\#^replace github.com/ory/hydra-client-go/v2 => ./internal/httpclient#d' go.mod
}

cache="${WHARF_OIDC_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wharf/oidc}"
CGO_ENABLED=1 go_module_binary oidc-provider.sh hydra github.com/ory/hydra/v2 v2.3.0 "$cache" . \
    -tags sqlite,sqlite_omit_load_extension
