#!/usr/bin/env bash
# Builds the two Wharf images, wharf-registry:VERSION and wharf-operator:VERSION, as OCI
# archives (target/images/*.oci.tar) without a container daemon: each is the binary, the few
# files of Debian packages it needs at run time and a non-root user (images/oci_image.py).
# The same commit and the same Debian package versions give the same image digests (times
# are the commit's, files sorted and owned by root).
#
#   images/build.sh                      release binaries (cargo build --release)
#   images/build.sh --binaries DIR       binaries already built (the tests pass target/debug)
#   images/build.sh --out DIR            somewhere else than target/images
#
# Then: docker load -i target/images/wharf-registry.oci.tar (or podman load, or
# ctr image import), tag and push to the registry your clusters pull from.
# Prints one line per image: REFERENCE MANIFEST-DIGEST LAYER-BYTES ARCHIVE.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
binaries=""
out="$root/target/images"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --binaries) binaries="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        *) echo "images/build.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
for tool in python3 readelf objcopy dpkg-deb apt-get; do
    command -v "$tool" >/dev/null || { echo "images/build.sh: $tool is needed (Debian: binutils, dpkg, apt)" >&2; exit 1; }
done
if [[ -z "$binaries" ]]; then
    (cd "$root" && cargo build --release --locked -p wharf-registry -p wharf-operator) >&2
    binaries="$root/target/release"
fi

version="$(awk -F'"' '/^\[workspace.package\]/ {p = 1} p && $1 ~ /^version/ {print $2; exit}' "$root/Cargo.toml")"
revision="$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)"
created="$(git -C "$root" log -1 --format=%ct 2>/dev/null || echo 0)"
source="${WHARF_IMAGE_SOURCE:-$(git -C "$root" config --get remote.origin.url 2>/dev/null || true)}"

# The Debian packages whose files the images hold, at the versions this machine's apt would
# install, downloaded once into a cache keyed by version.
cache="${WHARF_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wharf/image-debs}"
mkdir -p "$cache" "$out"
debs="$(mktemp -d)"
trap 'rm -rf "$debs"' EXIT
versions=()
for package in libc6 libgcc-s1 gcc-12-base ca-certificates; do
    candidate="$(apt-cache policy "$package" | awk '$1 == "Candidate:" {print $2}')"
    if [[ -z "$candidate" || "$candidate" == "(none)" ]] && [[ "$(id -u)" == 0 ]]; then
        # A fresh machine may have no package lists yet.
        apt-get update -qq >&2
        candidate="$(apt-cache policy "$package" | awk '$1 == "Candidate:" {print $2}')"
    fi
    [[ -n "$candidate" && "$candidate" != "(none)" ]] || { echo "images/build.sh: apt knows no $package (apt-get update?)" >&2; exit 1; }
    file="$cache/$(echo "${package}_${candidate}" | tr ':~' '__').deb"
    if [[ ! -s "$file" ]]; then
        download="$debs/download"
        mkdir -p "$download" && chmod a+rwx "$download" # apt's _apt user writes there
        (cd "$download" && apt-get download -q "$package=$candidate" >&2 && mv ./*.deb "$file")
        rm -rf "$download"
    fi
    cp "$file" "$debs/"
    versions+=("$package=$candidate")
done

build() {
    local name="$1" cmd="$2"
    shift 2
    python3 "$root/images/oci_image.py" --binary "$binaries/$name" --name "$name" --version "$version" \
        --revision "$revision" --created "$created" --source "$source" --debs "$debs" \
        --debian-versions "${versions[*]}" --cmd "$cmd" --out "$out/$name.oci.tar" "$@"
}
build wharf-registry '["serve","--listen","0.0.0.0:8080","--data","/var/lib/wharf-data"]' --data-dir var/lib/wharf-data
build wharf-operator '["run"]'
