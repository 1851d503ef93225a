# Sourced by the scripts that build a test server from a Go module's own main package
# (tests/oidc-provider.sh, tests/seaweedfs.sh): the module is downloaded at one version and
# built in a copy of it, under its own go.mod; the binary is cached outside the repository,
# keyed by version, and rebuilt only when missing.
#
# go_module_binary SCRIPT BINARY MODULE VERSION CACHE PACKAGE [GO BUILD FLAGS...]
#   prints the binary's path on its last line of stdout. A function `fix_module_copy`, when
#   the caller defines one, runs in the copy before the build.
go_module_binary() {
    local script="$1" binary="$2" module="$3" version="$4" cache="$5" package="$6"
    shift 6
    local dir="$cache/$binary-$version"
    if [[ -x "$dir/$binary" ]]; then
        echo "$dir/$binary"
        return 0
    fi
    command -v go >/dev/null || { echo "$script: the Go toolchain is needed to build $module" >&2; return 1; }
    echo "$script: building $module $version into $dir (a few minutes, once)" >&2
    mkdir -p "$cache"
    staging="$(mktemp -d "$cache/.build.XXXXXX")"
    trap 'rm -rf "$staging"' EXIT
    local source_dir
    source_dir="$(GOFLAGS= GOWORK=off go mod download -json "$module@$version" | awk -F'"' '$2 == "Dir" {print $4}')"
    [[ -d "$source_dir" ]] || { echo "$script: could not download $module@$version" >&2; return 1; }
    cp -r "$source_dir" "$staging/src"
    chmod -R u+w "$staging/src"
    if declare -F fix_module_copy >/dev/null; then
        (cd "$staging/src" && fix_module_copy)
    fi
    (cd "$staging/src" && GOFLAGS=-mod=mod GOWORK=off go build -trimpath "$@" -o "$staging/$binary" "$package") >&2
    mkdir -p "$dir.partial"
    mv "$staging/$binary" "$dir.partial/$binary"
    rm -rf "$dir"
    mv "$dir.partial" "$dir"
    trap - EXIT
    rm -rf "$staging"
    echo "$dir/$binary"
}
