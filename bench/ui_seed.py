"""Seeds a registry for bench/ui.sh over its npm API: COUNT packages `pkg-00000` …
(one version each, published 16 at a time) and one package `big` with VERSIONS
versions (published one after another, as a package grows). No network beyond the
registry on loopback.

usage: ui_seed.py URL REPOSITORY TOKEN COUNT VERSIONS
"""

import base64
import concurrent.futures
import gzip
import hashlib
import io
import json
import sys
import tarfile
import urllib.request


def tarball(name, version):
    manifest = json.dumps({"name": name, "version": version, "description": f"{name} for the UI benchmark"}).encode()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("package/package.json")
        info.size = len(manifest)
        info.mtime = 499162500
        tar.addfile(info, io.BytesIO(manifest))
    return gzip.compress(raw.getvalue(), mtime=0)


def publish(url, repository, token, name, version):
    data = tarball(name, version)
    readme = f"# {name}\n\nVersion {version}: a package of the UI benchmark, with *some* Markdown.\n"
    document = {
        "_id": name,
        "name": name,
        "dist-tags": {"latest": version},
        "versions": {
            version: {
                "name": name,
                "version": version,
                "description": f"{name} for the UI benchmark",
                "dependencies": {"left-pad": "^1.0.0"},
                "readme": readme,
                "dist": {"shasum": hashlib.sha1(data).hexdigest()},
            }
        },
        "_attachments": {
            f"{name}-{version}.tgz": {
                "content_type": "application/octet-stream",
                "data": base64.b64encode(data).decode(),
                "length": len(data),
            }
        },
    }
    request = urllib.request.Request(
        f"{url}/npm/{repository}/{name}",
        data=json.dumps(document).encode(),
        method="PUT",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=60) as reply:
        if reply.status != 201:
            raise SystemExit(f"publishing {name} {version}: {reply.status}")


def main():
    url, repository, token, count, versions = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: publish(url, repository, token, f"pkg-{i:05d}", "1.0.0"), range(count)))
    for i in range(versions):
        publish(url, repository, token, "big", f"1.{i // 100}.{i % 100}")


if __name__ == "__main__":
    main()
