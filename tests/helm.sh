#!/usr/bin/env bash
# Builds the helm the chart tests run — helm's own command at the version tests/helm/go.mod
# pins — from its Go module, like tests/control-plane.sh builds kube-apiserver. The binary is
# cached outside the repository, keyed by version and a hash of the module files, and rebuilt
# only when missing.
#
# Prints the path of the `helm` binary on its last line of stdout.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
module="$here/helm"
version="$(awk '$1 == "helm.sh/helm/v3" && $2 ~ /^v/ {print $2} $2 == "helm.sh/helm/v3" && $3 ~ /^v/ {print $3}' "$module/go.mod")"
[[ -n "$version" ]] || { echo "helm.sh: no helm.sh/helm/v3 version in $module/go.mod" >&2; exit 1; }
# What helm's Makefile stamps in: its version, and the Kubernetes version `helm template` and
# `helm lint` assume without a cluster (client-go v0.N.x is Kubernetes 1.N).
client_go="$(awk '$1 == "k8s.io/client-go" && $2 ~ /^v/ {print $2}' "$module/go.mod")"
[[ "$client_go" =~ ^v0\.([0-9]+)\. ]] || { echo "helm.sh: no k8s.io/client-go v0.N version in $module/go.mod" >&2; exit 1; }
kube_minor="${BASH_REMATCH[1]}"
ldflags="-s -X helm.sh/helm/v3/internal/version.version=$version"
for package in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ldflags+=" -X $package.k8sVersionMajor=1 -X $package.k8sVersionMinor=$kube_minor"
done
digest="$( (cat "$module/go.mod" "$module/go.sum"; echo "$ldflags") | sha256sum | cut -c1-12)"
cache="${WHARF_HELM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wharf/helm}"
dir="$cache/$version-$digest"

if [[ -x "$dir/helm" ]]; then
    echo "$dir/helm"
    exit 0
fi

command -v go >/dev/null || { echo "helm.sh: the Go toolchain is needed to build helm" >&2; exit 1; }
echo "helm.sh: building helm $version into $dir (a minute or two, once)" >&2
mkdir -p "$cache"
staging="$(mktemp -d "$cache/.build.XXXXXX")"
trap 'rm -rf "$staging"' EXIT
(cd "$module" && GOWORK=off go build -trimpath -ldflags="$ldflags" -o "$staging/helm" helm.sh/helm/v3/cmd/helm) >&2
rm -rf "$dir"
mv "$staging" "$dir"
trap - EXIT
echo "$dir/helm"
