#!/usr/bin/env bash
# Builds the control plane the operator tests run against — kube-apiserver and etcd at the
# versions Kubernetes pins, and kubectl — from their Go modules (tests/control-plane/), the way envtest
# provides binaries for Go operators. The binaries are cached outside the repository, keyed
# by the module's version and a hash of its files, and rebuilt only when missing.
#
# Prints the folder holding `kube-apiserver`, `etcd` and `kubectl` on its last line of stdout.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
module="$here/control-plane"
version="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2} $2 == "k8s.io/kubernetes" && $3 ~ /^v/ {print $3}' "$module/go.mod")"
digest="$(cat "$0" "$module/go.mod" "$module/go.sum" "$module"/cmd/*/main.go | sha256sum | cut -c1-12)"
cache="${WHARF_CONTROL_PLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wharf/control-plane}"
bin="$cache/$version-$digest"

# The harness signs ServiceAccount tokens with a key openssl generates per run.
command -v openssl >/dev/null || { echo "control-plane.sh: openssl is needed (Debian: apt-get install openssl)" >&2; exit 1; }

if [[ -x "$bin/kube-apiserver" && -x "$bin/etcd" && -x "$bin/kubectl" ]]; then
    echo "$bin"
    exit 0
fi

command -v go >/dev/null || { echo "control-plane.sh: the Go toolchain is needed to build kube-apiserver and etcd" >&2; exit 1; }
echo "control-plane.sh: building kube-apiserver and etcd $version into $bin (several minutes, once)" >&2
mkdir -p "$cache"
staging="$(mktemp -d "$cache/.build.XXXXXX")"
trap 'rm -rf "$staging"' EXIT
# Stamp the version as Kubernetes' own build does, so clients that check the server's version
# (helm's kubeVersion, discovery) see v1.37.x rather than a development build.
major="${version#v}"; minor="${major#*.}"; major="${major%%.*}"; minor="${minor%%.*}"
stamp="-X k8s.io/component-base/version.gitVersion=$version -X k8s.io/component-base/version.gitMajor=$major"
stamp="$stamp -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
(cd "$module" && go build -trimpath -ldflags="-s $stamp" -o "$staging/" ./cmd/kube-apiserver ./cmd/etcd ./cmd/kubectl) >&2
rm -rf "$bin"
mv "$staging" "$bin"
trap - EXIT
echo "$bin"
