"""The S3-compatible server the storage tests start on loopback: moto's server
application (moto[server], installed by tests/install-clients.sh), with its
requests handled one at a time.

Why not plain `moto_server`: moto checks `If-None-Match: *` and then writes,
with no lock between the two, so under concurrent requests two create-only
writes of one key can both succeed (seen: 2 winners of 20). S3 makes that
check atomic, and the tests that prove "exactly one publisher wins" need a
server that does too. Serialising requests gives that; moto keeps everything
in memory, so each request is short.

Usage: python s3-server.py --host 127.0.0.1 --port PORT
"""

import argparse
import os
import signal
import sys
import threading

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import run_simple


class OneRequestAtATime:
    """WSGI middleware: the whole request, body included, runs under one lock."""

    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        with self.lock:
            response = self.app(environ, start_response)
            try:
                return [b"".join(response)]
            finally:
                close = getattr(response, "close", None)
                if close is not None:
                    close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # moto builds URLs that point back at itself from this, as moto_server does.
    os.environ.setdefault("MOTO_PORT", str(args.port))
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(
        args.host,
        args.port,
        OneRequestAtATime(app),
        threaded=True,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    main()
