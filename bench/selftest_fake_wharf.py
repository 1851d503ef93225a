#!/usr/bin/env python3
"""A stand-in for `wharf-registry serve`, only for testing bench/run.sh itself.

It speaks just enough of Wharf's interface for the benchmark script:
  GET  /readyz
  POST /api/v1/auth/token                 (Bearer $WHARF_ADMIN_TOKEN)
  PUT  /npm/main/<name>                   (npm publish; Bearer minted token)
  GET  /npm/main/<name>                   (abbreviated packument)
  GET  /npm/main/<name>/-/<file>.tgz
  POST /pypi/main/                        (twine upload; basic __token__:<token>)
  GET  /pypi/main/simple/<name>/
  GET  /pypi/main/files/<file>

Usage: WHARF_BIN=bench/selftest_fake_wharf.py BENCH_SKIP_BUILD=1 bench/run.sh
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
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
TOKENS = set()
NPM = {}    # name -> {version: {"file":..., "shasum":..., "integrity":...}}
PYPI = {}   # normalized name -> {filename: sha256}


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

    def body(self):
        return self.rfile.read(int(self.headers.get("content-length", "0")))

    def authed(self):
        auth = self.headers.get("authorization", "")
        if auth.startswith("Bearer "):
            return auth[7:] in TOKENS
        if auth.startswith("Basic "):
            user, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
            return user == "__token__" and pw in TOKENS
        return False

    def do_GET(self):
        data = self.server.data
        path = self.path.split("?", 1)[0]
        if path == "/readyz":
            return self.send(200, b"ok", "text/plain")
        m = re.fullmatch(r"/npm/main/([^/]+)/-/([^/]+\.tgz)", path)
        if m:
            f = os.path.join(data, "npm", m.group(2))
            if os.path.exists(f):
                with open(f, "rb") as fh:
                    return self.send(200, fh.read(), "application/octet-stream")
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
                with open(f, "rb") as fh:
                    return self.send(200, fh.read(), "application/octet-stream")
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
            raw = b"content-type: " + self.headers["content-type"].encode() + b"\r\n\r\n" + self.body()
            msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
            fields, content, filename = {}, None, None
            for part in msg.iter_parts():
                name = part.get_param("name", header="content-disposition")
                if name == "content":
                    content, filename = part.get_payload(decode=True), part.get_filename()
                else:
                    fields[name] = part.get_content()
            os.makedirs(os.path.join(data, "pypi"), exist_ok=True)
            with open(os.path.join(data, "pypi", filename), "wb") as fh:
                fh.write(content)
            with LOCK:
                PYPI.setdefault(norm(fields["name"]), {})[filename] = hashlib.sha256(content).hexdigest()
            return self.send(200, b"OK", "text/plain")
        return self.send(404, {"error": "not found"})

    def do_PUT(self):
        data = self.server.data
        m = re.fullmatch(r"/npm/main/([^/]+)", self.path)
        if not m:
            return self.send(404, {"error": "not found"})
        if not self.authed():
            self.body()
            return self.send(401, {"error": "unauthorized"})
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["serve"])
    ap.add_argument("--listen", required=True)
    ap.add_argument("--data", required=True)
    args = ap.parse_args()
    host, port = args.listen.rsplit(":", 1)
    srv = ThreadingHTTPServer((host, int(port)), Handler)
    srv.daemon_threads = True
    srv.data = args.data
    srv.admin = os.environ["WHARF_ADMIN_TOKEN"]
    print("fake wharf listening on %s" % args.listen, file=sys.stderr)
    srv.serve_forever()


if __name__ == "__main__":
    main()
