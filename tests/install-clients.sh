#!/usr/bin/env bash
# Installs the package clients the end-to-end tests drive, the browser the web
# interface tests drive (Debian's chromium and chromium-driver), and the S3 server
# and Azure emulator the storage tests start, into a cache folder outside the
# repository (keyed by the pinned versions), so a second run costs nothing.
# npm comes with the machine's Node.js, cargo with the Rust toolchain that
# builds the tests, go with the machine's Go toolchain, mvn with its Maven
# package.
set -euo pipefail

TOOLS_DIR="${WHARF_TEST_TOOLS:-$HOME/.cache/wharf/test-tools}"
PYTHON_CLIENTS="twine==7.0.0 uv==0.13.9 build==1.3.0 setuptools==80.9.0 wheel==0.45.1"
STAMP="$TOOLS_DIR/venv/.installed"
SOURCE_DIR="$(cd "$(dirname "$0")" && pwd)"

# Two runs at once (a developer's and a helper's) would install into the same
# folders and leave them broken: one at a time.
mkdir -p "$TOOLS_DIR"
exec 9>"$TOOLS_DIR/.install.lock"
flock 9

need() {
    command -v "$1" >/dev/null 2>&1 || { echo "install-clients: $1 is required but not installed ($2)" >&2; exit 1; }
}
need python3 "Debian: apt-get install python3 python3-venv"
need npm "Debian: apt-get install nodejs npm"
need cargo "install Rust with rustup"
# The cargo tests drive the toolchain's own cargo; credential providers
# (`cargo:token` for auth-required registries) need cargo 1.74 or newer.
CARGO_MINOR=$(cargo --version | sed -n 's/^cargo 1\.\([0-9]*\).*/\1/p')
if [ -z "$CARGO_MINOR" ] || [ "$CARGO_MINOR" -lt 74 ]; then
    echo "install-clients: cargo 1.74 or newer is required, found: $(cargo --version)" >&2
    exit 1
fi
need go "install the Go toolchain, 1.21 or newer"
need mvn "Debian: apt-get install maven"
# The Argo CD health checks (gitops/argocd/health.lua) are tested with a real Lua.
if ! command -v lua5.4 >/dev/null 2>&1 && ! command -v lua >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "install-clients: installing lua5.4 with apt-get"
        apt-get install -y -qq lua5.4 >/dev/null || { apt-get update -qq && apt-get install -y -qq lua5.4 >/dev/null; }
    else
        echo "install-clients: a Lua interpreter is required (Debian: apt-get install lua5.4)" >&2
        exit 1
    fi
fi

# debian_package COMMAND PACKAGE WHAT-FOR: installs PACKAGE with apt-get when COMMAND is missing.
debian_package() {
    command -v "$1" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "install-clients: installing $2 with apt-get ($3)"
        apt-get install -y -qq --no-install-recommends "$2" >/dev/null \
            || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "$2" >/dev/null; }
    else
        echo "install-clients: $1 is required for $3 (Debian: apt-get install $2)" >&2
        exit 1
    fi
}

# NuGet's own command-line client (nuget.exe, from the npm package
# nuget-exe) runs on Mono (about 80 s to install).
debian_package mono mono-complete "the NuGet client"
# The images (images/build.sh) run under a real OCI runtime; umoci unpacks them as any
# OCI consumer would.
debian_package runc runc "the image tests"
debian_package umoci umoci "the image tests"
debian_package podman podman "the image tests (podman load)"
debian_package objcopy binutils "the image build"
# The web interface is tested in a real browser, driven over WebDriver.
debian_package chromium chromium "the web interface tests"
debian_package chromedriver chromium-driver "the web interface tests"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$PYTHON_CLIENTS" ]; then
    echo "install-clients: Python clients already in $TOOLS_DIR/venv"
else
    rm -rf "$TOOLS_DIR/venv"
    mkdir -p "$TOOLS_DIR"
    python3 -m venv "$TOOLS_DIR/venv"
    # Ignore the machine's pip settings (extra find-links folders and the like).
    PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= "$TOOLS_DIR/venv/bin/pip" install --quiet --disable-pip-version-check $PYTHON_CLIENTS
    echo "$PYTHON_CLIENTS" > "$STAMP"
    echo "install-clients: installed $PYTHON_CLIENTS into $TOOLS_DIR/venv"
fi

# The S3-compatible server the object-storage tests start on loopback: moto's
# server, the one checked to make conditional writes atomic. Added to the same
# venv under its own stamp, so the clients above are not reinstalled for it.
S3_SERVER="moto[server]==5.2.5"
S3_STAMP="$TOOLS_DIR/venv/.installed-s3-server"
if [ -f "$S3_STAMP" ] && [ "$(cat "$S3_STAMP")" = "$S3_SERVER" ] && [ -x "$TOOLS_DIR/venv/bin/moto_server" ]; then
    echo "install-clients: S3 server already in $TOOLS_DIR/venv"
else
    PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= "$TOOLS_DIR/venv/bin/pip" install --quiet --disable-pip-version-check "$S3_SERVER"
    echo "$S3_SERVER" > "$S3_STAMP"
    echo "install-clients: installed $S3_SERVER into $TOOLS_DIR/venv"
fi

# Poetry, which `wharf login --tool poetry` is tested with, in a venv of its
# own (its dependencies would pin the other clients' otherwise).
POETRY="poetry==2.5.1"
POETRY_DIR="$TOOLS_DIR/poetry"
if [ -f "$POETRY_DIR/.installed" ] && [ "$(cat "$POETRY_DIR/.installed")" = "$POETRY" ] \
    && [ -x "$POETRY_DIR/bin/poetry" ]; then
    echo "install-clients: $POETRY already in $POETRY_DIR"
else
    rm -rf "$POETRY_DIR"
    python3 -m venv "$POETRY_DIR"
    PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= "$POETRY_DIR/bin/pip" install --quiet --disable-pip-version-check "$POETRY"
    echo "$POETRY" > "$POETRY_DIR/.installed"
    echo "install-clients: installed $POETRY into $POETRY_DIR"
fi

# The Azure Blob Storage emulator the Azure storage test starts: Azurite, from
# the npm registry, into its own folder keyed by version.
AZURITE="azurite@3.37.0"
AZURITE_DIR="$TOOLS_DIR/azurite"
# A copy that no longer starts (an interrupted install) is installed again.
if [ -f "$AZURITE_DIR/.installed" ] && [ "$(cat "$AZURITE_DIR/.installed")" = "$AZURITE" ] \
    && "$AZURITE_DIR/node_modules/.bin/azurite-blob" --version >/dev/null 2>&1; then
    echo "install-clients: Azurite already in $AZURITE_DIR"
else
    rm -rf "$AZURITE_DIR"
    mkdir -p "$AZURITE_DIR"
    npm install --prefix "$AZURITE_DIR" --no-audit --no-fund --loglevel error "$AZURITE" >/dev/null
    echo "$AZURITE" > "$AZURITE_DIR/.installed"
    echo "install-clients: installed $AZURITE into $AZURITE_DIR"
fi

# NuGet's command-line client, into its own folder keyed by version.
NUGET_CLIENT="nuget-exe@5.8.0"
NUGET_DIR="$TOOLS_DIR/nuget"
if [ -f "$NUGET_DIR/.installed" ] && [ "$(cat "$NUGET_DIR/.installed")" = "$NUGET_CLIENT" ] \
    && [ -f "$NUGET_DIR/node_modules/nuget-exe/nuget-5.8.0.exe" ]; then
    echo "install-clients: NuGet client already in $NUGET_DIR"
else
    rm -rf "$NUGET_DIR"
    mkdir -p "$NUGET_DIR"
    npm install --prefix "$NUGET_DIR" --no-audit --no-fund --loglevel error "$NUGET_CLIENT" >/dev/null
    echo "$NUGET_CLIENT" > "$NUGET_DIR/.installed"
    echo "install-clients: installed $NUGET_CLIENT into $NUGET_DIR"
fi

# pnpm and Yarn (Berry), which `wharf login --tool npm|yarn` is tested with,
# from the npm registry into folders keyed by version.
install_npm_client() { # package@version folder binary
    local dir="$TOOLS_DIR/$2"
    if [ -f "$dir/.installed" ] && [ "$(cat "$dir/.installed")" = "$1" ] && [ -x "$dir/node_modules/.bin/$3" ]; then
        echo "install-clients: $1 already in $dir"
    else
        rm -rf "$dir"
        mkdir -p "$dir"
        npm install --prefix "$dir" --no-audit --no-fund --loglevel error "$1" >/dev/null
        echo "$1" > "$dir/.installed"
        echo "install-clients: installed $1 into $dir"
    fi
}
install_npm_client "pnpm@12.25.1" pnpm pnpm
install_npm_client "@yarnpkg/cli-dist@4.18.1" yarn yarn

# The Go tests need a go command that reads GOPROXY credentials and module zips as 1.21 does.
GO_VERSION="$(go env GOVERSION)"
case "$GO_VERSION" in
    go1.[0-9]|go1.[0-9].*|go1.1[0-9]|go1.1[0-9].*|go1.20|go1.20.*)
        echo "install-clients: the Go tests need Go 1.21 or newer, found $GO_VERSION" >&2; exit 1 ;;
esac

# Maven: the tests run mvn without the network (every repository is
# mirrored to the Wharf under test), so the plugins their builds use are
# fetched here once, into a local repository the tests copy. They are
# fetched by running the tests' own project templates (deploy to a folder,
# then a dependent build), which pulls exactly what those builds load;
# `dependency:go-offline` would miss plugins' lazily resolved parts and
# Debian's plugin packages pin other versions than the templates.
MAVEN_TEMPLATES="$(cd "$(dirname "$0")/../registry/tests/maven" && pwd)"
M2_DIR="$TOOLS_DIR/m2"
M2_KEY="$( (mvn -B --version 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g' | head -n 1; cat "$MAVEN_TEMPLATES"/*.pom.xml) | sha256sum | cut -c1-32)"
prefetch_maven_plugins() {
rm -rf "$M2_DIR"
mkdir -p "$M2_DIR"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
repo="$M2_DIR/repository.partial"
group=dev.wharf.prefetch
project() { # dir artifact version
    mkdir -p "$scratch/$1/src/main/java/prefetch"
    sed -e "s/@GROUP@/$group/g" -e "s/@ARTIFACT@/$2/g" -e "s/@VERSION@/$3/g" \
        "$MAVEN_TEMPLATES/library.pom.xml" > "$scratch/$1/pom.xml"
    printf 'package prefetch;\npublic class %s { public static String name() { return "%s"; } }\n' \
        "$(echo "$2" | sed 's/^./\U&/')" "$2" > "$scratch/$1/src/main/java/prefetch/$(echo "$2" | sed 's/^./\U&/').java"
}
mvn_run() { # dir args...; the build's log is shown only when it fails
    local dir="$1"; shift
    if ! (cd "$scratch/$dir" && MAVEN_SKIP_RC=1 mvn -B -ntp -Dstyle.color=never -Dmaven.repo.local="$repo" "$@") \
        > "$scratch/mvn.log" 2>&1; then
        cat "$scratch/mvn.log" >&2
        echo "install-clients: mvn $* failed in the $dir template project" >&2
        exit 1
    fi
}
project lib lib 1.0
project tool tool 1.0-SNAPSHOT
for dir in lib tool; do
    mvn_run "$dir" deploy -DaltDeploymentRepository="prefetch::file://$scratch/deployed"
done
mkdir -p "$scratch/consumer/src/main/java/prefetch"
sed -e "s/@GROUP@/$group/g" -e "s/@RELEASE_ARTIFACT@/lib/g" -e "s/@RELEASE_VERSION@/1.0/g" \
    -e "s/@SNAPSHOT_ARTIFACT@/tool/g" -e "s/@SNAPSHOT_VERSION@/1.0-SNAPSHOT/g" \
    "$MAVEN_TEMPLATES/consumer.pom.xml" > "$scratch/consumer/pom.xml"
printf 'package prefetch;\npublic class Main { String both() { return Lib.name() + Tool.name(); } }\n' \
    > "$scratch/consumer/src/main/java/prefetch/Main.java"
mvn_run consumer package
# What the tests must not find locally: the throwaway projects. And the
# resolver's notes of where each file came from: with them, a file fetched
# from the public repository counts as unavailable through the tests' mirror.
rm -rf "$repo/dev/wharf/prefetch"
find "$repo" \( -name '_remote.repositories' -o -name '*.lastUpdated' -o -name 'resolver-status.properties' \) -delete
mv "$repo" "$M2_DIR/repository"
echo "$M2_KEY" > "$M2_DIR/.installed"
echo "install-clients: cached $(find "$M2_DIR/repository" -name '*.jar' | wc -l) Maven plugin jars in $M2_DIR/repository"
}
if [ -f "$M2_DIR/.installed" ] && [ "$(cat "$M2_DIR/.installed")" = "$M2_KEY" ]; then
    echo "install-clients: Maven plugins already in $M2_DIR/repository"
else
    prefetch_maven_plugins
fi
