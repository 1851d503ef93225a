#!/usr/bin/env python3
"""Helpers for bench/run.sh. Standard library only, no network.

Subcommands:
  npm-tgz   --out DIR --name NAME --versions V1,V2|--count N [--size BYTES]
            valid npm tarballs NAME-VERSION.tgz (package/package.json + random blob)
  wheels    --out DIR --name NAME --versions ...|--count N [--size BYTES]
            valid py3-none-any wheels (module, random data file, dist-info)
  tarball-url PACKUMENT.json VERSION BASE_URL
            print the absolute dist.tarball URL of VERSION
  link-url  PAGE.html FILENAME BASE_URL
            print the absolute URL of the <a> whose target file is FILENAME
  parse-wrk WRK_OUTPUT
            print "rps p99_ms non2xx socket_errors" (tab separated)
  report    RESULTS.tsv META.tsv OUT.md
            render the Markdown results table
"""

import argparse
import base64
import gzip
import hashlib
import html.parser
import io
import json
import os
import random
import re
import sys
import tarfile
import time
import urllib.parse
import zipfile

MIB = 1024 * 1024
NPM_MTIME = 499162500  # 1985-10-26T08:15:00Z, what npm pack uses


def version_list(args):
    if args.versions:
        return [v for v in args.versions.split(",") if v]
    return ["%s%d" % (args.prefix, i) for i in range(args.count)]


def rand_bytes(seed, size):
    return random.Random(seed).randbytes(size)


# --------------------------------------------------------------------- npm --
def make_npm_tgz(path, name, version, size):
    manifest = {
        "name": name,
        "version": version,
        "description": "Wharf benchmark package",
        "main": "index.js",
        "license": "MIT",
    }
    files = [
        ("package/package.json", (json.dumps(manifest, indent=2) + "\n").encode()),
        ("package/index.js", b"module.exports = 'bench';\n"),
        ("package/blob.bin", rand_bytes("npm:%s@%s" % (name, version), size)),
    ]
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for fname, data in files:
            info = tarfile.TarInfo(fname)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = NPM_MTIME
            tar.addfile(info, io.BytesIO(data))
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        with gzip.GzipFile(fileobj=fh, mode="wb", compresslevel=1, mtime=0, filename="") as gz:
            gz.write(raw.getvalue())
    os.replace(tmp, path)


def cmd_npm_tgz(args):
    os.makedirs(args.out, exist_ok=True)
    for v in version_list(args):
        path = os.path.join(args.out, "%s-%s.tgz" % (args.name, v))
        if not os.path.exists(path):
            make_npm_tgz(path, args.name, v, args.size)
        print(path)


# ------------------------------------------------------------------ wheels --
def normalize_dist(name):
    return re.sub(r"[-_.]+", "_", name).lower()


def record_hash(data):
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def make_wheel(path, name, version, size):
    dist = normalize_dist(name)
    distinfo = "%s-%s.dist-info" % (dist, version)
    metadata = (
        "Metadata-Version: 2.1\n"
        "Name: %s\n"
        "Version: %s\n"
        "Summary: Wharf benchmark package\n"
        "License: MIT\n"
        "Requires-Python: >=3.8\n"
        "Description-Content-Type: text/plain\n"
        "\n"
        "Synthetic package seeded by Wharf's bench/run.sh.\n" % (name, version)
    ).encode()
    wheel = (
        "Wheel-Version: 1.0\n"
        "Generator: wharf-bench\n"
        "Root-Is-Purelib: true\n"
        "Tag: py3-none-any\n"
    ).encode()
    files = [
        ("%s/__init__.py" % dist, ('__version__ = "%s"\n' % version).encode()),
        ("%s/blob.bin" % dist, rand_bytes("pypi:%s==%s" % (name, version), size)),
        ("%s/METADATA" % distinfo, metadata),
        ("%s/WHEEL" % distinfo, wheel),
    ]
    record = "".join("%s,%s,%d\n" % (n, record_hash(d), len(d)) for n, d in files)
    record += "%s/RECORD,,\n" % distinfo
    files.append(("%s/RECORD" % distinfo, record.encode()))
    tmp = path + ".tmp"
    with zipfile.ZipFile(tmp, "w") as zf:
        for fname, data in files:
            info = zipfile.ZipInfo(fname, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            # random data does not compress: store it, deflate the small files
            info.compress_type = zipfile.ZIP_STORED if fname.endswith(".bin") else zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    os.replace(tmp, path)


def cmd_wheels(args):
    os.makedirs(args.out, exist_ok=True)
    dist = normalize_dist(args.name)
    for v in version_list(args):
        path = os.path.join(args.out, "%s-%s-py3-none-any.whl" % (dist, v))
        if not os.path.exists(path):
            make_wheel(path, args.name, v, args.size)
        print(path)


# -------------------------------------------------------------- URL lookup --
def cmd_tarball_url(args):
    with open(args.packument, "rb") as fh:
        doc = json.load(fh)
    url = doc["versions"][args.version]["dist"]["tarball"]
    print(urllib.parse.urljoin(args.base, url))


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            for k, v in attrs:
                if k == "href" and v:
                    self.hrefs.append(v)


def cmd_link_url(args):
    parser = _Links()
    with open(args.page, encoding="utf-8", errors="replace") as fh:
        parser.feed(fh.read())
    for href in parser.hrefs:
        path = urllib.parse.urlsplit(href).path
        if urllib.parse.unquote(path.rsplit("/", 1)[-1]) == args.filename:
            url = urllib.parse.urljoin(args.base, href)
            print(urllib.parse.urldefrag(url)[0])
            return
    sys.exit("link-url: no link to %s in %s" % (args.filename, args.page))


# --------------------------------------------------------------------- wrk --
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def to_ms(text):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text.strip())
    if not m:
        return None
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(text):
    rps = p99 = None
    non2xx = errors = 0
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("Requests/sec:"):
            rps = float(s.split()[1])
        elif s.startswith("99%") or s.startswith("99.000%"):
            p99 = to_ms(s.split()[1])
        elif s.startswith("Non-2xx or 3xx responses:"):
            non2xx = int(s.split(":")[1])
        elif s.startswith("Socket errors:"):
            errors = sum(int(n) for n in re.findall(r"\d+", s))
    return rps, p99, non2xx, errors


def cmd_parse_wrk(args):
    with open(args.file, encoding="utf-8", errors="replace") as fh:
        rps, p99, non2xx, errors = parse_wrk(fh.read())
    print("%s\t%s\t%d\t%d" % (
        "%.1f" % rps if rps is not None else "NA",
        "%.2f" % p99 if p99 is not None else "NA",
        non2xx, errors))


# ------------------------------------------------------------------ report --
ENDPOINTS = [
    ("packument", "npm abbreviated packument", 0.5, "verdaccio"),
    ("tarball", "npm tarball", 0.7, "verdaccio"),
    ("tarballrange", "npm tarball, 64 KiB Range", 0.7, ""),
    ("simple", "PyPI simple page", 0.5, "pypiserver,devpi"),
    ("wheel", "PyPI wheel", 0.7, "pypiserver,devpi"),
    ("cargoindex", "Cargo sparse-index file", 0.5, ""),
    ("mavenpom", "Maven pom", 0.5, ""),
    ("goinfo", "Go .info", 0.5, ""),
    ("nugetreg", "NuGet registration index", 0.5, ""),
    ("nupkg", "NuGet .nupkg", 0.7, ""),
    ("swiftreleases", "Swift release list", 0.5, ""),
    ("swiftzip", "Swift source archive", 0.7, ""),
]
P99_TARGET_MS = 10.0
IDLE_RSS_TARGET_MIB = 30.0
PUBLISH_RISE_TARGET_MIB = 32.0
# The encrypted server (`wharfenc`) serves these; its req/s must be at least
# this share of the plain server's.
ENC_ENDPOINTS = ("tarball", "wheel", "tarballrange")
ENC_RATIO_TARGET = 0.6
# Wharf recording audit events (`wharf`) against the same binary with `--no-audit`
# (`wharfnoaudit`): recording downloads may cost at most 5 %.
AUDIT_ENDPOINTS = ("packument", "tarball")
AUDIT_RATIO_TARGET = 0.95


def load_results(path):
    """Per (server, endpoint): the median req/s and p99 over the rounds
    (BENCH_ROUNDS), so one noisy round on a shared machine does not decide."""
    rounds = {}
    if not os.path.exists(path):
        return {}
    with open(path) as fh:
        for line in fh:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 7 or parts[0] == "server":
                continue
            server, ep, rps, p99, non2xx, errors, size = parts[:7]
            rounds.setdefault((server, ep), []).append({
                "rps": None if rps == "NA" else float(rps),
                "p99": None if p99 == "NA" else float(p99),
                "bad": int(non2xx) + int(errors),
                "size": int(size) if size.isdigit() else None,
            })

    def median(values):
        values = sorted(v for v in values if v is not None)
        return values[len(values) // 2] if values else None

    res = {}
    for key, runs in rounds.items():
        res[key] = {
            "rps": median(r["rps"] for r in runs),
            "p99": median(r["p99"] for r in runs),
            "bad": sum(r["bad"] for r in runs),
            "size": runs[-1]["size"],
            "rounds": len(runs),
        }
    return res


def load_meta(path):
    meta = {}
    if os.path.exists(path):
        with open(path) as fh:
            for line in fh:
                if "\t" in line:
                    k, v = line.rstrip("\n").split("\t", 1)
                    meta[k] = v
    return meta


def fmt_rps(r):
    if r is None or r["rps"] is None:
        return "n/a"
    s = "%.0f" % r["rps"]
    if r["bad"]:
        s += " (%d bad)" % r["bad"]
    return s


def fmt_p99(r):
    if r is None or r["p99"] is None:
        return "n/a"
    return "%.2f ms" % r["p99"]


def fmt_mib(mib):
    return "%.1f" % mib if mib is not None else "n/a"


def fmt_size(n):
    if n is None:
        return "?"
    if n >= MIB:
        return "%.2f MiB" % (n / MIB)
    if n >= 1024:
        return "%.1f KiB" % (n / 1024)
    return "%d B" % n


def verdict(ok):
    return "PASS" if ok else "FAIL"


def cmd_report(args):
    res = load_results(args.results)
    meta = load_meta(args.meta)
    wharf_on = meta.get("wharf", "yes") == "yes"
    enc_on = wharf_on and meta.get("encrypted", "no") == "yes"
    out = []
    out.append("# Wharf benchmark results")
    out.append("")
    out.append("%s; wrk -t1 -c%s -d%ss --latency pinned to CPU %s, servers pinned to CPU %s; loopback only; "
               "%s: median of %s interleaved rounds, peers: one round." % (
        meta.get("date", time.strftime("%Y-%m-%d %H:%M:%S")), meta.get("connections", "64"),
        meta.get("seconds", "?"), meta.get("load_cpu", "1"), meta.get("server_cpu", "0"),
        "nginx, Wharf and encrypted Wharf" if enc_on else "nginx and Wharf", meta.get("rounds", "1")))
    out.append("Seeded: npm `bench-pkg` and PyPI `bench-pkg`, %s versions each, %s random payload per artifact. "
               "nginx serves %s as static files." % (
                   meta.get("versions", "50"), fmt_size(int(meta.get("artifact_bytes", MIB))),
                   "Wharf's own response bodies" if wharf_on else
                   "the peers' bodies (Verdaccio packument, pypiserver simple page; no Wharf in this run)"))
    if not wharf_on:
        out.append("")
        out.append("**Peers-only run (BENCH_ONLY_PEERS=1): Wharf was not started, so its columns are empty.**")
    out.append("")
    out.append("| endpoint | Wharf req/s | Wharf p99 | nginx req/s | nginx p99 | Wharf/nginx | target | p99 < %g ms | peers (req/s, p99) | body bytes (Wharf / nginx / peers) |" % P99_TARGET_MS)
    out.append("|---|---:|---:|---:|---:|---:|---|---|---|---|")
    all_pass = True
    for ep, label, target, peers in ENDPOINTS:
        w = res.get(("wharf", ep))
        n = res.get(("nginx", ep))
        if w and n and w["rps"] and n["rps"]:
            ratio = w["rps"] / n["rps"]
            ok = ratio >= target and not w["bad"]
            all_pass &= ok
            ratio_s = "%.2f× %s" % (ratio, verdict(ok))
        else:
            ratio_s = "n/a"
            if wharf_on:
                all_pass = False
        if w and w["p99"] is not None:
            ok = w["p99"] < P99_TARGET_MS
            all_pass &= ok
            p99_s = verdict(ok)
            if not ok and n and n["p99"] is not None and n["p99"] >= P99_TARGET_MS:
                p99_s += " (nginx too)"
        else:
            p99_s = "n/a"
        peer_cells = []
        sizes = [fmt_size(w["size"]) if w else "-", fmt_size(n["size"]) if n else "-"]
        for p in filter(None, peers.split(",")):
            r = res.get((p, ep))
            peer_cells.append("%s: %s, %s" % (p, fmt_rps(r), fmt_p99(r)))
            sizes.append(fmt_size(r["size"]) if r else "-")
        out.append("| %s | %s | %s | %s | %s | %s | ≥ %.1f× nginx | %s | %s | %s |" % (
            label, fmt_rps(w), fmt_p99(w), fmt_rps(n), fmt_p99(n), ratio_s, target, p99_s,
            "<br>".join(peer_cells), " / ".join(sizes)))
    out.append("")

    def mib(key):
        v = meta.get(key)
        try:
            return float(v)
        except (TypeError, ValueError):
            return None

    big = meta.get("big_mib", "200")

    def publish_lines(prefix, who):
        """The peak-RSS rise lines of the big publishes recorded under meta keys
        PREFIX_{pypi,npm}_*; returns (lines, all passed)."""
        lines, passed = [], True
        for key, label in (("pypi", "twine upload of a %s MiB wheel" % big),
                           ("npm", "npm publish of a %s MiB tarball" % big)):
            k = "%s_%s_" % (prefix, key)
            rise = mib(k + "rise_mib")
            status = meta.get(k + "status", "not run")
            if rise is not None and status == "ok":
                ok = rise < PUBLISH_RISE_TARGET_MIB
                passed &= ok
                lines.append("- Peak-RSS rise%s, %s: **%.1f MiB** (VmHWM %s → %s MiB; target < %g MiB) %s" % (
                    who, label, rise, meta.get(k + "hwm_before_mib", "?"),
                    meta.get(k + "hwm_after_mib", "?"), PUBLISH_RISE_TARGET_MIB, verdict(ok)))
            else:
                if key == "pypi" or status not in ("not run", "skipped"):
                    passed = False
                lines.append("- Peak-RSS rise%s, %s: %s%s" % (
                    who, label, status, " (rise %.1f MiB)" % rise if rise is not None else ""))
        return lines, passed

    if wharf_on:
        idle0, idle1, loaded = mib("rss_start_mib"), mib("rss_idle_mib"), mib("rss_after_load_mib")
        if idle1 is not None:
            ok = idle1 <= IDLE_RSS_TARGET_MIB
            all_pass &= ok
            out.append("- Idle RSS (after seeding, idle): **%.1f MiB** (target ≤ %g MiB) %s; right after start: %s MiB; after the load runs: %s MiB" % (
                idle1, IDLE_RSS_TARGET_MIB, verdict(ok),
                fmt_mib(idle0), fmt_mib(loaded)))
        else:
            all_pass = False
            out.append("- Idle RSS: n/a")
        lines, passed = publish_lines("publish", "")
        out.extend(lines)
        all_pass &= passed
    if enc_on:
        out.append("")
        out.append("## Encryption at rest")
        out.append("")
        out.append("A second Wharf from the same binary, its Domain encrypting everything it stores "
                   "(`spec.encryption.keySecretRef`), seeded with the same npm and PyPI content, "
                   "measured in the same rounds. The Range row asks for `%s`." % (
                       meta.get("range", "a 64 KiB range").replace("Range: ", "")))
        out.append("")
        out.append("| endpoint | Wharf req/s | Wharf p99 | encrypted req/s | encrypted p99 | encrypted/plain | target | body bytes (plain / encrypted) |")
        out.append("|---|---:|---:|---:|---:|---:|---|---|")
        labels = {ep: label for ep, label, _, _ in ENDPOINTS}
        for ep in ENC_ENDPOINTS:
            w = res.get(("wharf", ep))
            e = res.get(("wharfenc", ep))
            if w is None and e is None:
                # neither served it (a tarball too small for the range): the
                # first table and the notes say why
                continue
            if w and e and w["rps"] and e["rps"]:
                ratio = e["rps"] / w["rps"]
                ok = ratio >= ENC_RATIO_TARGET and not e["bad"]
                ratio_s = "%.2f× %s" % (ratio, verdict(ok))
            else:
                ok = False
                ratio_s = "n/a"
            all_pass &= ok
            out.append("| %s | %s | %s | %s | %s | %s | ≥ %.1f× Wharf | %s / %s |" % (
                labels[ep], fmt_rps(w), fmt_p99(w), fmt_rps(e), fmt_p99(e), ratio_s, ENC_RATIO_TARGET,
                fmt_size(w["size"]) if w else "-", fmt_size(e["size"]) if e else "-"))
        out.append("")
        idle, loaded = mib("rss_enc_idle_mib"), mib("rss_enc_after_load_mib")
        out.append("- Idle RSS, encrypted (for comparison, no target): %s MiB; after the load runs: %s MiB" % (
            fmt_mib(idle), fmt_mib(loaded)))
        lines, passed = publish_lines("publish_enc", ", encrypted")
        out.extend(lines)
        all_pass &= passed
    elif wharf_on:
        out.append("")
        out.append("Encryption at rest: not measured (BENCH_ENCRYPTED=0).")
    if wharf_on and meta.get("audit_compared", "no") == "yes":
        out.append("")
        out.append("## Audit trail")
        out.append("")
        out.append("A third Wharf from the same binary with `--no-audit`, seeded with the same npm content, "
                   "measured in the same rounds: the first Wharf records every download as an audit event "
                   "(on its standard output, a file here, and in its storage record).")
        out.append("")
        out.append("| endpoint | audit on req/s | audit on p99 | audit off req/s | audit off p99 | on/off | target |")
        out.append("|---|---:|---:|---:|---:|---:|---|")
        labels = {ep: label for ep, label, _, _ in ENDPOINTS}
        for ep in AUDIT_ENDPOINTS:
            on, off = res.get(("wharf", ep)), res.get(("wharfnoaudit", ep))
            if on and off and on["rps"] and off["rps"]:
                ratio = on["rps"] / off["rps"]
                ok = ratio >= AUDIT_RATIO_TARGET and not on["bad"]
                ratio_s = "%.3f× %s" % (ratio, verdict(ok))
            else:
                ok, ratio_s = False, "n/a"
            all_pass &= ok
            out.append("| %s | %s | %s | %s | %s | %s | ≥ %.2f× |" % (
                labels[ep], fmt_rps(on), fmt_p99(on), fmt_rps(off), fmt_p99(off), ratio_s, AUDIT_RATIO_TARGET))
    if wharf_on:
        out.append("")
        out.append("Overall: **%s**%s" % (verdict(all_pass), " (both tables and the memory lines)" if enc_on else ""))
    notes = meta.get("notes")
    if notes:
        out.append("")
        for n in notes.split(" | "):
            out.append("- note: " + n)
    text = "\n".join(out) + "\n"
    with open(args.out, "w") as fh:
        fh.write(text)
    sys.stdout.write(text)


def cmd_crate_publish(args):
    """Writes cargo's publish bodies (u32 LE length, JSON, u32 LE length, .crate), one per version."""
    import gzip
    import io
    import json
    import struct
    import tarfile
    os.makedirs(args.out, exist_ok=True)
    for i in range(args.count):
        version = "0.1.%d" % i
        root = "%s-%s" % (args.name, version)
        toml = ('[package]\nname = "%s"\nversion = "%s"\nedition = "2021"\n' % (args.name, version)).encode()
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for path, data in (("Cargo.toml", toml), ("src/lib.rs", b"pub fn answer() -> u32 { 42 }\n")):
                info = tarfile.TarInfo("%s/%s" % (root, path))
                info.size = len(data)
                info.mtime = 0
                tar.addfile(info, io.BytesIO(data))
        crate = gzip.compress(raw.getvalue(), mtime=0)
        meta = json.dumps({
            "name": args.name, "vers": version, "deps": [], "features": {}, "authors": [],
            "description": "benchmark crate", "license": "MIT", "links": None,
        }).encode()
        with open(os.path.join(args.out, "%s.body" % version), "wb") as fh:
            fh.write(struct.pack("<I", len(meta)) + meta + struct.pack("<I", len(crate)) + crate)


def cmd_go_zip(args):
    """Writes a Go module zip: every file under {module}@{version}/."""
    import zipfile
    prefix = "%s@%s/" % (args.module, args.version)
    with zipfile.ZipFile(args.out, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(prefix + "go.mod", "module %s\n\ngo 1.21\n" % args.module)
        zf.writestr(prefix + "bench.go", "package bench\n\nfunc Answer() int { return 42 }\n")


def cmd_nupkgs(args):
    """Writes .nupkg files {id}.{version}.nupkg for versions {prefix}0.., each with a random payload."""
    import zipfile
    os.makedirs(args.out, exist_ok=True)
    for version in version_list(args):
        nuspec = ('<?xml version="1.0"?><package><metadata><id>%s</id><version>%s</version>'
                  '<authors>bench</authors><description>benchmark package</description></metadata></package>'
                  % (args.name, version))
        path = os.path.join(args.out, "%s.%s.nupkg" % (args.name, version))
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
            zf.writestr("%s.nuspec" % args.name, nuspec)
            zf.writestr("content/payload.bin", rand_bytes(version, args.size))
        print(path)


def cmd_swift_zips(args):
    """Writes Swift source archives {version}.zip (one top-level folder with Package.swift), random payloads."""
    import zipfile
    os.makedirs(args.out, exist_ok=True)
    for version in version_list(args):
        path = os.path.join(args.out, "%s.zip" % version)
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
            zf.writestr("%s/Package.swift" % args.name,
                        '// swift-tools-version:5.7\nimport PackageDescription\n\nlet package = Package(name: "Bench")\n')
            zf.writestr("%s/Sources/Bench/payload.bin" % args.name, rand_bytes(version, args.size))
        print(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    for name, fn in (("npm-tgz", cmd_npm_tgz), ("wheels", cmd_wheels), ("nupkgs", cmd_nupkgs),
                     ("swift-zips", cmd_swift_zips)):
        p = sub.add_parser(name)
        p.add_argument("--out", required=True)
        p.add_argument("--name", default="bench-pkg")
        p.add_argument("--versions", default="")
        p.add_argument("--count", type=int, default=50)
        p.add_argument("--prefix", default="1.0.")
        p.add_argument("--size", type=int, default=MIB)
        p.set_defaults(fn=fn)

    p = sub.add_parser("crate-publish")
    p.add_argument("--out", required=True)
    p.add_argument("--name", default="bench-crate")
    p.add_argument("--count", type=int, default=50)
    p.set_defaults(fn=cmd_crate_publish)

    p = sub.add_parser("go-zip")
    p.add_argument("--out", required=True)
    p.add_argument("--module", required=True)
    p.add_argument("--version", required=True)
    p.set_defaults(fn=cmd_go_zip)

    p = sub.add_parser("tarball-url")
    p.add_argument("packument")
    p.add_argument("version")
    p.add_argument("base")
    p.set_defaults(fn=cmd_tarball_url)

    p = sub.add_parser("link-url")
    p.add_argument("page")
    p.add_argument("filename")
    p.add_argument("base")
    p.set_defaults(fn=cmd_link_url)

    p = sub.add_parser("parse-wrk")
    p.add_argument("file")
    p.set_defaults(fn=cmd_parse_wrk)

    p = sub.add_parser("report")
    p.add_argument("results")
    p.add_argument("meta")
    p.add_argument("out")
    p.set_defaults(fn=cmd_report)

    args = ap.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
