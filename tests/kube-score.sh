#!/usr/bin/env bash
# Builds kube-score, which the operator's tests run on the objects it renders for a Domain,
# from its Go module at the version below; cached by version.
#
# Prints the path of the `kube-score` binary on its last line of stdout.
set -euo pipefail
source "$(dirname "$0")/go-module-binary.sh"

cache="${WHARF_KUBE_SCORE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wharf/kube-score}"
CGO_ENABLED=0 go_module_binary kube-score.sh kube-score github.com/zegl/kube-score v1.20.0 "$cache" ./cmd/kube-score -ldflags=-s
