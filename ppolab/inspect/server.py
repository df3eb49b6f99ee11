"""`ppolab inspect --run DIR`: the inspector page on 127.0.0.1, re-read from rollouts.jsonl on each load.

There is no API: the page carries its data, so a reload during training shows the new steps.
Same safety as the feedback server: loopback by default, Host check, CSP, nosniff.
"""
from __future__ import annotations

import os
import socket
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from .. import localhttp
from .page import render_html, rollouts_file


class InspectServer(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client must not keep the process alive

    def __init__(self, address: tuple[str, int], run: str | os.PathLike, quiet: bool = True):
        self.run = Path(run)
        self.quiet = quiet
        rollouts_file(self.run).stat()  # fail now, not on the first request, when there is nothing to show
        if ":" in address[0]:  # an IPv6 address such as ::1
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


class _Handler(BaseHTTPRequestHandler):
    server: InspectServer
    server_version = "ppolab-inspect"
    timeout = 30  # seconds a connection may sit idle before it is dropped

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (stdlib name)
        if not self.server.quiet:
            print(f"[inspect] {self.address_string()} {format % args}", file=sys.stderr)

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        if localhttp.refuse_foreign_host(self):
            return
        path = urlsplit(self.path).path
        if path not in ("/", "/index.html"):
            localhttp.send(self, HTTPStatus.NOT_FOUND, f"no such page: {path}\n".encode(), "text/plain; charset=utf-8")
            return
        try:
            body = render_html(self.server.run).encode("utf-8")
        except (OSError, ValueError) as e:  # e.g. a damaged line: say which, keep serving
            localhttp.send(self, HTTPStatus.INTERNAL_SERVER_ERROR, f"{e}\n".encode(), "text/plain; charset=utf-8")
            return
        localhttp.send(self, HTTPStatus.OK, body, "text/html; charset=utf-8",
                       {"Content-Security-Policy": localhttp.page_csp(connect=False)})

    do_HEAD = do_GET


def make_server(run: str | os.PathLike, host: str = "127.0.0.1", port: int = 0, quiet: bool = True) -> InspectServer:
    """Create (not start) the server for a run directory; `port=0` picks a free port (see `.url`)."""
    return InspectServer((host, port), run, quiet=quiet)


def serve(run: str | os.PathLike, host: str = "127.0.0.1", port: int = 8001) -> None:
    """Serve the page until Ctrl-C."""
    server = make_server(run, host, port, quiet=False)
    localhttp.serve_until_interrupt(server, f"Rollout inspector on {server.url} ({rollouts_file(run)})",
                                    exposed="read the rollouts")
