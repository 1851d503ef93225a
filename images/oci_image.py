"""Assembles one Wharf image as an OCI image layout in a tar archive, byte for byte the same
for the same inputs: the binary, the few files of Debian packages it needs at run time (the
C library its ELF header names, libgcc's unwinder, Mozilla's CA certificates) and a user of
its own. No shell, no package manager. `docker load`, `podman load` and containerd's
`ctr image import` read the archive (it carries `index.json` and the older `manifest.json`).

Usage (images/build.sh runs it):
  oci_image.py --binary PATH --name wharf-registry --version 0.1.0 --revision SHA
               --created EPOCH --debs DIR --debian-versions TEXT --cmd '["serve"]'
               [--data-dir /var/lib/wharf-data] [--source URL] --out FILE
"""

import argparse
import datetime
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile

UID = 65532
LIBRARY_DIR = "lib/x86_64-linux-gnu"
INTERPRETER = "lib64/ld-linux-x86-64.so.2"
CERTIFICATES = "etc/ssl/certs/ca-certificates.crt"


def sha256(data):
    return hashlib.sha256(data).hexdigest()


class Tree:
    """The image's files: path -> (kind, mode, uid, bytes or link target)."""

    def __init__(self):
        self.entries = {}

    def directory(self, path, mode=0o755, uid=0):
        parts = path.strip("/").split("/")
        for depth in range(1, len(parts) + 1):
            self.entries.setdefault("/".join(parts[:depth]), ("dir", 0o755, 0, None))
        self.entries[path.strip("/")] = ("dir", mode, uid, None)

    def file(self, path, data, mode=0o644):
        path = path.strip("/")
        if "/" in path:
            self.directory(os.path.dirname(path))
        self.entries[path] = ("file", mode, 0, data)

    def symlink(self, path, target):
        path = path.strip("/")
        self.directory(os.path.dirname(path))
        self.entries[path] = ("link", 0o777, 0, target)

    def tar(self, mtime):
        """An uncompressed tar of the tree: sorted, owned by root (or the image's user where
        a folder says so), every time the same."""
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(self.entries):
                kind, mode, uid, data = self.entries[path]
                info = tarfile.TarInfo(path)
                info.mtime = mtime
                info.mode = mode
                info.uid = info.gid = uid
                info.uname = info.gname = ""
                if kind == "dir":
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                elif kind == "link":
                    info.type = tarfile.SYMTYPE
                    info.linkname = data
                    tar.addfile(info)
                else:
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        return out.getvalue()


def gzipped(data):
    out = io.BytesIO()
    with gzip.GzipFile(filename="", fileobj=out, mode="wb", mtime=0, compresslevel=6) as stream:
        stream.write(data)
    return out.getvalue()


def needed_libraries(binary):
    """The shared libraries the binary's dynamic section names."""
    output = subprocess.run(["readelf", "-d", binary], check=True, capture_output=True, text=True).stdout
    return [line.split("[", 1)[1].split("]", 1)[0] for line in output.splitlines() if "(NEEDED)" in line]


def unpack_debs(debs, into):
    for deb in sorted(os.listdir(debs)):
        if deb.endswith(".deb"):
            subprocess.run(["dpkg-deb", "-x", os.path.join(debs, deb), into], check=True)


def read(path):
    with open(path, "rb") as handle:
        return handle.read()


def stripped(binary):
    """The binary without its debug sections (a debug build carries hundreds of MiB)."""
    with tempfile.TemporaryDirectory() as scratch:
        copy = os.path.join(scratch, "binary")
        subprocess.run(["objcopy", "--strip-debug", binary, copy], check=True)
        return read(copy)


def build_tree(args, packages):
    tree = Tree()
    name = args.name
    tree.file(f"usr/local/bin/{name}", stripped(args.binary), mode=0o755)
    for library in needed_libraries(args.binary):
        found = [
            os.path.join(packages, folder, library)
            for folder in ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu")
            if os.path.exists(os.path.join(packages, folder, library))
        ]
        if not found:
            sys.exit(f"oci_image.py: {library}, which {name} needs, is in none of the Debian packages given")
        tree.file(f"{LIBRARY_DIR}/{library}", read(os.path.realpath(found[0])), mode=0o755)
    tree.symlink(INTERPRETER, f"/{LIBRARY_DIR}/ld-linux-x86-64.so.2")
    # What update-ca-certificates would write: every Mozilla certificate, in name order.
    mozilla = os.path.join(packages, "usr/share/ca-certificates/mozilla")
    bundle = b"".join(read(os.path.join(mozilla, c)).rstrip(b"\n") + b"\n" for c in sorted(os.listdir(mozilla)))
    tree.file(CERTIFICATES, bundle)
    for package in ("libc6", "gcc-12-base", "ca-certificates"):
        tree.file(f"usr/share/doc/{package}/copyright", read(os.path.join(packages, "usr/share/doc", package, "copyright")))
    tree.file("etc/passwd", f"root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:{UID}:{UID}:nonroot:/home/nonroot:/sbin/nologin\n".encode())
    tree.file("etc/group", f"root:x:0:\nnonroot:x:{UID}:\n".encode())
    tree.directory("home/nonroot", mode=0o700, uid=UID)
    tree.directory("tmp", mode=0o1777)
    if args.data_dir:
        tree.directory(args.data_dir, mode=0o700, uid=UID)
    return tree


def main():
    parser = argparse.ArgumentParser()
    for flag in ("--binary", "--name", "--version", "--revision", "--debs", "--cmd", "--out", "--debian-versions"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--created", required=True, type=int)
    parser.add_argument("--data-dir")
    parser.add_argument("--source", default="")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as packages:
        unpack_debs(args.debs, packages)
        layer_tar = build_tree(args, packages).tar(args.created)
    layer = gzipped(layer_tar)
    created = datetime.datetime.fromtimestamp(args.created, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    reference = f"{args.name}:{args.version}"
    annotations = {
        "org.opencontainers.image.title": args.name,
        "org.opencontainers.image.revision": args.revision,
        "org.opencontainers.image.version": args.version,
        "org.opencontainers.image.created": created,
        "org.opencontainers.image.licenses": "Apache-2.0",
        "dev.wharf.image.debian-packages": args.debian_versions,
    }
    if args.source:
        annotations["org.opencontainers.image.source"] = args.source
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": {
            "User": f"{UID}:{UID}",
            "Entrypoint": [f"/usr/local/bin/{args.name}"],
            "Cmd": json.loads(args.cmd),
            "Env": ["PATH=/usr/local/bin", f"SSL_CERT_FILE=/{CERTIFICATES}"],
            "WorkingDir": "/home/nonroot",
            "Labels": annotations,
        },
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{sha256(layer_tar)}"]},
        "history": [{"created": created, "created_by": f"images/build.sh ({args.name} and Debian's {args.debian_versions})"}],
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": f"sha256:{sha256(config_bytes)}", "size": len(config_bytes)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": f"sha256:{sha256(layer)}", "size": len(layer)}],
        "annotations": annotations,
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": f"sha256:{sha256(manifest_bytes)}",
                "size": len(manifest_bytes),
                "annotations": {"io.containerd.image.name": reference, "org.opencontainers.image.ref.name": args.version},
            }
        ],
    }
    # The older docker-archive description, for `docker load` before OCI layouts.
    legacy = [{"Config": f"blobs/sha256/{sha256(config_bytes)}", "RepoTags": [reference], "Layers": [f"blobs/sha256/{sha256(layer)}"]}]

    archive = Tree()
    archive.file("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    archive.file("index.json", json.dumps(index, sort_keys=True, separators=(",", ":")).encode())
    archive.file("manifest.json", json.dumps(legacy, sort_keys=True, separators=(",", ":")).encode())
    for blob in (layer, config_bytes, manifest_bytes):
        archive.file(f"blobs/sha256/{sha256(blob)}", blob)
    with open(args.out + ".partial", "wb") as out:
        out.write(archive.tar(args.created))
    os.replace(args.out + ".partial", args.out)
    print(f"{reference} sha256:{sha256(manifest_bytes)} {len(layer)} {args.out}")


if __name__ == "__main__":
    main()
