#!/usr/bin/env python3
"""A stand-in for `wharf-registry serve`, only for testing bench/run.sh itself.

It speaks just enough of Wharf's interface for the benchmark script:
  GET  /readyz
  POST /api/v1/auth/token                 (Bearer $WHARF_ADMIN_TOKEN)
  PUT  /npm/main/<name>                   (npm publish; Bearer minted token)
  GET  /npm/main/<name>                   (abbreviated packument)
  GET  /npm/main/<name>/-/<file>.tgz      (also one `Range: bytes=a-b`: 206)
  POST /pypi/main/                        (twine upload; basic __token__:<token>)
  GET  /pypi/main/simple/<name>/
  GET  /pypi/main/files/<file>
and, in memory and barely, what the script seeds and reads of the other formats:
  Cargo publish and its index file, a Maven PUT and GET, a Go module zip and its
  .info, a NuGet push, registration index and .nupkg, a Swift publish, release
  list and source archive.

Usage: WHARF_BIN=bench/selftest_fake_wharf.py BENCH_SKIP_BUILD=1 bench/run.sh
It also stands in for the encrypted server (`serve --config FILE --secrets-dir
DIR`): it stores nothing encrypted, and takes its data folder from the
Domain's `filesystem.path` in FILE.
Its numbers mean nothing (it is a threaded Python server that buffers uploads
in memory); it exists to prove the script's Wharf half end to end.
"""

import argparse
import base64
import email.parser
import email.policy
import hashlib
import json
import os
import re
import secrets
import struct
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
TOKENS = set()
NPM = {}    # name -> {version: {"file":..., "shasum":..., "integrity":...}}
PYPI = {}   # normalized name -> {filename: sha256}
FILES = {}  # path -> (bytes, content type): the other formats' stored bodies
CRATES = {}  # name -> [index lines]


def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-wharf"

    def log_message(self, *args):
        pass

    def send(self, code, body=b"", ctype="application/json"):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def send_file(self, path, ctype):
        """The file, or the one `bytes=a-b` range asked for (206), as Wharf does."""
        with open(path, "rb") as fh:
            data = fh.read()
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("range", "").strip())
        if not m:
            return self.send(200, data, ctype)
        start = int(m.group(1))
        end = min(int(m.group(2)) + 1 if m.group(2) else len(data), len(data))
        if start >= end:
            self.send_response(416)
            self.send_header("content-range", "bytes */%d" % len(data))
            self.send_header("content-length", "0")
            self.end_headers()
            return
        self.send_response(206)
        self.send_header("content-type", ctype)
        self.send_header("content-range", "bytes %d-%d/%d" % (start, end - 1, len(data)))
        self.send_header("content-length", str(end - start))
        self.end_headers()
        self.wfile.write(data[start:end])

    def body(self):
        return self.rfile.read(int(self.headers.get("content-length", "0")))

    def authed(self):
        if self.headers.get("x-nuget-apikey") in TOKENS:
            return True
        auth = self.headers.get("authorization", "")
        if auth.startswith("Bearer "):
            return auth[7:] in TOKENS
        if auth.startswith("Basic "):
            user, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
            return user == "__token__" and pw in TOKENS
        return False

    def parts(self, body):
        """A multipart/form-data body as [(field name, filename, bytes)]."""
        raw = b"content-type: " + self.headers["content-type"].encode() + b"\r\n\r\n" + body
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
        return [(part.get_param("name", header="content-disposition"), part.get_filename(),
                 part.get_payload(decode=True)) for part in msg.iter_parts()]

    def do_GET(self):
        data = self.server.data
        path = self.path.split("?", 1)[0]
        if path == "/readyz":
            return self.send(200, b"ok", "text/plain")
        m = re.fullmatch(r"/npm/main/([^/]+)/-/([^/]+\.tgz)", path)
        if m:
            f = os.path.join(data, "npm", m.group(2))
            if os.path.exists(f):
                return self.send_file(f, "application/octet-stream")
            return self.send(404, {"error": "not found"})
        m = re.fullmatch(r"/npm/main/([^/]+)", path)
        if m and m.group(1) in NPM:
            name = m.group(1)
            host = "http://%s" % self.headers.get("host")
            vers = {v: {"name": name, "version": v,
                        "dist": {"tarball": "%s/npm/main/%s/-/%s" % (host, name, i["file"]),
                                 "shasum": i["shasum"], "integrity": i["integrity"]}}
                    for v, i in NPM[name].items()}
            doc = {"name": name, "dist-tags": {"latest": list(vers)[-1]}, "versions": vers}
            return self.send(200, doc, "application/vnd.npm.install-v1+json")
        m = re.fullmatch(r"/pypi/main/simple/([^/]+)/", path)
        if m and norm(m.group(1)) in PYPI:
            files = PYPI[norm(m.group(1))]
            links = "".join('<a href="../../files/%s#sha256=%s">%s</a><br/>\n' % (f, h, f)
                            for f, h in sorted(files.items()))
            page = "<!DOCTYPE html>\n<html><body>\n%s</body></html>\n" % links
            return self.send(200, page.encode(), "text/html")
        m = re.fullmatch(r"/pypi/main/files/([^/]+)", path)
        if m:
            f = os.path.join(data, "pypi", m.group(1))
            if os.path.exists(f):
                return self.send_file(f, "application/octet-stream")
        return self.get_other(path)

    def get_other(self, path):
        m = re.fullmatch(r"/cargo/main/index/(?:[^/]+/)*([^/]+)", path)
        if m and m.group(1) in CRATES:
            return self.send(200, "".join(CRATES[m.group(1)]).encode(), "text/plain")
        m = re.fullmatch(r"(/go/main/.+/@v/[^/]+)\.info", path)
        if m and m.group(1) + ".zip" in FILES:
            version = m.group(1).rsplit("/", 1)[1]
            return self.send(200, {"Version": version, "Time": "2020-01-01T00:00:00Z"})
        m = re.fullmatch(r"/nuget/main/v3/registration/([^/]+)/index\.json", path)
        if m:
            versions = sorted(p.split("/")[-2] for p in FILES
                              if p.startswith("/nuget/main/v3/flatcontainer/%s/" % m.group(1)))
            if versions:
                return self.send(200, {"count": 1, "items": [
                    {"lower": versions[0], "upper": versions[-1], "count": len(versions),
                     "items": [{"catalogEntry": {"id": m.group(1), "version": v}} for v in versions]}]})
        m = re.fullmatch(r"/swift/main/([^/]+)/([^/]+)", path)
        if m:
            prefix = "/swift/main/%s/%s/" % m.groups()
            releases = {p[len(prefix):-4]: {"url": "http://%s%s" % (self.headers.get("host"), p)}
                        for p in FILES if p.startswith(prefix) and p.endswith(".zip")}
            if releases:
                return self.send(200, {"releases": releases})
        if path in FILES:
            body, ctype = FILES[path]
            return self.send(200, body, ctype)
        return self.send(404, {"error": "not found"})

    def do_POST(self):
        data = self.server.data
        if self.path == "/api/v1/auth/token":
            self.body()
            if self.headers.get("authorization") != "Bearer " + self.server.admin:
                return self.send(401, {"error": "unauthorized"})
            tok = secrets.token_hex(16)
            TOKENS.add(tok)
            return self.send(200, {"token": tok, "expiresAt": "2099-01-01T00:00:00Z"})
        if self.path == "/pypi/main/":
            if not self.authed():
                self.body()
                return self.send(403, {"error": "forbidden"})
            fields, content, filename = {}, None, None
            for name, fname, payload in self.parts(self.body()):
                if name == "content":
                    content, filename = payload, fname
                else:
                    fields[name] = payload.decode()
            os.makedirs(os.path.join(data, "pypi"), exist_ok=True)
            with open(os.path.join(data, "pypi", filename), "wb") as fh:
                fh.write(content)
            with LOCK:
                PYPI.setdefault(norm(fields["name"]), {})[filename] = hashlib.sha256(content).hexdigest()
            return self.send(200, b"OK", "text/plain")
        return self.send(404, {"error": "not found"})

    def do_PUT(self):
        data = self.server.data
        if not self.authed():
            self.body()
            return self.send(401, {"error": "unauthorized"})
        m = re.fullmatch(r"/npm/main/([^/]+)", self.path)
        if not m:
            return self.put_other(self.path, self.body())
        doc = json.loads(self.body())
        name = doc["name"]
        os.makedirs(os.path.join(data, "npm"), exist_ok=True)
        for fname, att in doc.get("_attachments", {}).items():
            blob = base64.b64decode(att["data"])
            with open(os.path.join(data, "npm", fname), "wb") as fh:
                fh.write(blob)
        with LOCK:
            for v, meta in doc["versions"].items():
                NPM.setdefault(name, {})[v] = {
                    "file": "%s-%s.tgz" % (name, v),
                    "shasum": meta["dist"]["shasum"], "integrity": meta["dist"].get("integrity", "")}
        return self.send(201, {"ok": True})

    def put_other(self, path, body):
        if path == "/cargo/main/api/v1/crates/new":
            n = struct.unpack("<I", body[:4])[0]
            meta = json.loads(body[4:4 + n])
            with LOCK:
                CRATES.setdefault(meta["name"], []).append(json.dumps(
                    {"name": meta["name"], "vers": meta["vers"], "deps": [], "cksum": "0" * 64,
                     "features": {}, "yanked": False}) + "\n")
            return self.send(200, {"warnings": {"invalid_categories": [], "invalid_badges": [], "other": []}})
        if path == "/nuget/main/v3/package/":
            for _, fname, payload in self.parts(body):
                m = re.fullmatch(r"(.+?)\.(\d+\.\d+\.\d+)\.nupkg", os.path.basename(fname or ""))
                if m:
                    pid, version = m.group(1).lower(), m.group(2)
                    FILES["/nuget/main/v3/flatcontainer/%s/%s/%s.%s.nupkg" % (pid, version, pid, version)] = (
                        payload, "application/octet-stream")
            return self.send(201, b"", "text/plain")
        m = re.fullmatch(r"(/swift/main/[^/]+/[^/]+)/([^/]+)", path)
        if m:
            for name, _, payload in self.parts(body):
                if name == "source-archive":
                    FILES["%s/%s.zip" % m.groups()] = (payload, "application/zip")
            return self.send(201, b"", "text/plain")
        if re.match(r"/(maven|go)/main/", path):
            FILES[path] = (body, "application/xml" if path.endswith((".pom", ".xml")) else "application/octet-stream")
            return self.send(201, b"", "text/plain")
        return self.send(404, {"error": "not found"})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["serve"])
    ap.add_argument("--listen", required=True)
    ap.add_argument("--data")
    ap.add_argument("--config")
    ap.add_argument("--secrets-dir")  # the key Secret: nothing is encrypted here
    args = ap.parse_args()
    data = args.data
    if data is None and args.config:
        # no YAML parser in the standard library; the script writes `path: "..."`
        with open(args.config) as fh:
            m = re.search(r'^\s*path:\s*"?([^"\n]+?)"?\s*$', fh.read(), re.M)
        data = m.group(1) if m else None
    if data is None:
        ap.error("--data, or --config with a filesystem path, is required")
    host, port = args.listen.rsplit(":", 1)
    srv = ThreadingHTTPServer((host, int(port)), Handler)
    srv.daemon_threads = True
    srv.data = data
    srv.admin = os.environ["WHARF_ADMIN_TOKEN"]
    print("fake wharf listening on %s" % args.listen, file=sys.stderr)
    srv.serve_forever()


if __name__ == "__main__":
    main()
