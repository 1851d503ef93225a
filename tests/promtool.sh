#!/usr/bin/env bash
# Builds promtool, which the chart's tests run on the alerting rules it ships (`promtool
# check rules` and `promtool test rules`), from the Prometheus Go module at the version below;
# cached by version.
#
# Prints the path of the `promtool` binary on its last line of stdout.
set -euo pipefail
source "$(dirname "$0")/go-module-binary.sh"

cache="${WHARF_PROMTOOL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wharf/promtool}"
CGO_ENABLED=0 go_module_binary promtool.sh promtool github.com/prometheus/prometheus v0.316.0 "$cache" ./cmd/promtool -ldflags=-s
