#!/usr/bin/env bash
# Gathers the CustomResourceDefinitions of the third-party APIs the tests install beside the
# operator's own — Gateway API (its standard channel), cert-manager and the Prometheus
# Operator's ServiceMonitor, PodMonitor and PrometheusRule — from those projects' Go modules at
# the versions below, so nothing but the Go module proxy is needed. The manifests are copied
# unchanged, one CustomResourceDefinition a file, into a directory cached outside the
# repository, keyed by the versions (and the selection below), and gathered only when missing.
#
# Prints the directory's path on its last line of stdout.
set -euo pipefail

# sigs.k8s.io/gateway-api v1.7.0 declares `go 1.27.0`, which no released Go toolchain meets
# yet, so `go mod download` refuses it; v1.6.3 is the newest release it serves.
gateway_api_version=v1.6.3
cert_manager_version=v1.21.2
prometheus_operator_version=v0.85.0

gateway_api_module=sigs.k8s.io/gateway-api
cert_manager_module=github.com/cert-manager/cert-manager
prometheus_operator_module=github.com/prometheus-operator/prometheus-operator

# Every CustomResourceDefinition in Gateway API's standard channel (the directory also holds a
# ValidatingAdmissionPolicy, which is left out); these must be among them.
gateway_api_dir=config/crd/standard
gateway_api_required="gateway.networking.k8s.io_gatewayclasses.yaml gateway.networking.k8s.io_gateways.yaml
gateway.networking.k8s.io_httproutes.yaml gateway.networking.k8s.io_grpcroutes.yaml
gateway.networking.k8s.io_referencegrants.yaml"
# cert-manager's deploy/crds holds the plain controller-gen output its Helm chart's templated
# CRDs are made from (the same spec; the chart only adds labels and a keep annotation).
cert_manager_dir=deploy/crds
cert_manager_files="cert-manager.io_certificates.yaml cert-manager.io_certificaterequests.yaml
cert-manager.io_issuers.yaml cert-manager.io_clusterissuers.yaml
acme.cert-manager.io_orders.yaml acme.cert-manager.io_challenges.yaml"
prometheus_operator_dir=example/prometheus-operator-crd
prometheus_operator_files="monitoring.coreos.com_servicemonitors.yaml monitoring.coreos.com_podmonitors.yaml
monitoring.coreos.com_prometheusrules.yaml"

key="gateway-api-$gateway_api_version.cert-manager-$cert_manager_version.prometheus-operator-$prometheus_operator_version"
digest="$(echo "$gateway_api_dir $gateway_api_required $cert_manager_dir $cert_manager_files" \
    "$prometheus_operator_dir $prometheus_operator_files" | sha256sum | cut -c1-8)"
cache="${WHARF_THIRD_PARTY_CRDS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wharf/third-party-crds}"
dir="$cache/$key-$digest"

if [[ -d "$dir" ]]; then
    echo "$dir"
    exit 0
fi

command -v go >/dev/null || { echo "third-party-crds.sh: the Go toolchain is needed to download the CRDs' modules" >&2; exit 1; }
echo "third-party-crds.sh: gathering CRDs into $dir (once)" >&2
mkdir -p "$cache"
staging="$(mktemp -d "$cache/.build.XXXXXX")"
trap 'rm -rf "$staging"' EXIT
mkdir "$staging/work" "$staging/crds"

# module_dir MODULE VERSION: prints where the module's source is extracted.
module_dir() {
    local json source_dir
    json="$(cd "$staging/work" && GOFLAGS= GOWORK=off go mod download -json "$1@$2")" || true
    source_dir="$(awk -F'"' '$2 == "Dir" {print $4}' <<<"$json")"
    if [[ -z "$source_dir" || ! -d "$source_dir" ]]; then
        echo "third-party-crds.sh: could not download $1@$2: $(awk -F'"' '$2 == "Error" {print $4}' <<<"$json")" >&2
        return 1
    fi
    echo "$source_dir"
}

# take SOURCE: copies one manifest unchanged into the staging directory.
take() {
    [[ -f "$1" ]] || { echo "third-party-crds.sh: $1 is missing" >&2; exit 1; }
    local name
    name="$(basename "$1")"
    [[ ! -e "$staging/crds/$name" ]] || { echo "third-party-crds.sh: two manifests named $name" >&2; exit 1; }
    cp "$1" "$staging/crds/$name"
    chmod 0644 "$staging/crds/$name"
}

echo "third-party-crds.sh: $gateway_api_module $gateway_api_version" >&2
source_dir="$(module_dir "$gateway_api_module" "$gateway_api_version")"
for required in $gateway_api_required; do
    [[ -f "$source_dir/$gateway_api_dir/$required" ]] \
        || { echo "third-party-crds.sh: $gateway_api_module $gateway_api_version has no $gateway_api_dir/$required" >&2; exit 1; }
done
for file in "$source_dir/$gateway_api_dir"/gateway.networking.k8s.io_*.yaml; do
    if grep -q '^kind: CustomResourceDefinition$' "$file"; then
        take "$file"
    else
        echo "third-party-crds.sh: leaving out $(basename "$file") (not a CustomResourceDefinition)" >&2
    fi
done

echo "third-party-crds.sh: $cert_manager_module $cert_manager_version" >&2
source_dir="$(module_dir "$cert_manager_module" "$cert_manager_version")"
for file in $cert_manager_files; do
    take "$source_dir/$cert_manager_dir/$file"
done

echo "third-party-crds.sh: $prometheus_operator_module $prometheus_operator_version" >&2
source_dir="$(module_dir "$prometheus_operator_module" "$prometheus_operator_version")"
for file in $prometheus_operator_files; do
    take "$source_dir/$prometheus_operator_dir/$file"
done

# Each file must be exactly one CustomResourceDefinition, plain YAML (no Helm template lines),
# named GROUP_PLURAL.yaml after the CRD's metadata.name PLURAL.GROUP. A leading `---` is fine.
for file in "$staging/crds"/*.yaml; do
    name="$(basename "$file" .yaml)"
    problem=""
    if [[ "$(grep -c '^apiVersion:' "$file")" != 1 ]] || ! grep -q '^apiVersion: apiextensions.k8s.io/v1$' "$file"; then
        problem="not exactly one top-level apiVersion, apiextensions.k8s.io/v1"
    elif [[ "$(grep -c '^kind:' "$file")" != 1 ]] || ! grep -q '^kind: CustomResourceDefinition$' "$file"; then
        problem="not exactly one top-level kind, CustomResourceDefinition"
    elif awk 'NR > 1 && /^---/ {found = 1} END {exit !found}' <(grep -v -e '^[[:space:]]*$' -e '^#' "$file"); then
        problem="more than one YAML document"
    elif grep -q '^[[:space:]]*{{' "$file"; then
        problem="Helm template lines"
    elif [[ "$name" != *_* ]] || ! grep -q "^  name: ${name#*_}\.${name%%_*}\$" "$file"; then
        problem="no metadata.name ${name#*_}.${name%%_*}"
    fi
    if [[ -n "$problem" ]]; then
        echo "third-party-crds.sh: $(basename "$file") is not a single plain CustomResourceDefinition: $problem" >&2
        exit 1
    fi
done

rm -rf "$dir"
mv "$staging/crds" "$dir"
rm -rf "$staging"
trap - EXIT
echo "$dir"
