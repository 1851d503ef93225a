#!/usr/bin/env bash
# Builds the real S3-compatible server the object-storage suite runs beside moto: SeaweedFS's
# `weed` (its all-in-one `weed mini`), from its Go module at the version below, under the
# module's own go.mod (it pins several hundred dependencies); cached by version.
#
# Prints the path of the `weed` binary on its last line of stdout.
set -euo pipefail
source "$(dirname "$0")/go-module-binary.sh"

cache="${WHARF_SEAWEEDFS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wharf/seaweedfs}"
CGO_ENABLED=0 go_module_binary seaweedfs.sh weed github.com/seaweedfs/seaweedfs \
    v0.0.0-20261109003541-7506e5f91cd6 "$cache" ./weed -ldflags=-s
