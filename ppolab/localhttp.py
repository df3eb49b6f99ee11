"""Serving a self-contained page to the local browser only: loopback, Host check, CSP, security headers.

Written for the rollout inspector and shaped so the feedback server can adopt it: nothing here
knows what the page shows. A server without authentication is safe on 127.0.0.1 only if other
web pages cannot reach it either; a DNS-rebinding page reaches it under a foreign Host name,
which `host_allowed` refuses.
"""
from __future__ import annotations

import ipaddress
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler

# The page loads nothing from elsewhere: the browser enforces it. `connect-src 'self'` lets a page
# call its own server's API; a static page can drop it (see `page_csp`).
PAGE_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
            "img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'")


def page_csp(connect: bool = True) -> str:
    """The page policy; `connect=False` for a page that talks to no server at all (a static file)."""
    return PAGE_CSP if connect else PAGE_CSP.replace("connect-src 'self'", "connect-src 'none'")


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses (127.0.0.0/8, ::1), with or without brackets."""
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_host_header(value: str) -> str:
    """The host part of a Host header value: `127.0.0.1:8000` -> `127.0.0.1`, `[::1]:80` -> `::1`."""
    value = value.strip()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def host_allowed(header: str | None, bind_host: str) -> bool:
    """Whether a request's Host header names this server: a loopback name, or the host it was bound to.

    Bound to a wildcard (`0.0.0.0`, `::`), any IP literal is allowed too: a rebinding attack
    needs a host *name*. A missing header (HTTP/1.0) is refused: browsers always send one.
    """
    if not header:
        return False
    host = split_host_header(header).lower()
    if is_loopback(host) or host == bind_host.strip("[]").lower():
        return True
    if bind_host in ("", "0.0.0.0", "::"):
        try:
            ipaddress.ip_address(host)
            return True
        except ValueError:
            return False
    return False


def send(handler: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str,
         headers: dict[str, str] | None = None) -> None:
    """One complete response with the headers every local page response carries."""
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.send_header("Cache-Control", "no-store")
    handler.send_header("X-Content-Type-Options", "nosniff")
    handler.send_header("Referrer-Policy", "no-referrer")
    for k, v in (headers or {}).items():
        handler.send_header(k, v)
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(body)


def refuse_foreign_host(handler: BaseHTTPRequestHandler) -> bool:
    """Answer 421 and return True when the request's Host is not this server (DNS rebinding)."""
    bind_host = str(handler.server.server_address[0])
    if host_allowed(handler.headers.get("Host"), bind_host):
        return False
    send(handler, HTTPStatus.MISDIRECTED_REQUEST, b"unknown Host header\n", "text/plain; charset=utf-8")
    return True


def serve_until_interrupt(server, banner: str, exposed: str) -> None:
    """Run `server` until Ctrl-C, warning first when it listens beyond loopback.

    `banner`: the line that says what is served where; `exposed`: what anyone who can reach a
    non-loopback address could do (there is no authentication).
    """
    host = str(server.server_address[0])
    if not is_loopback(host):
        print(f"warning: listening on {host}: anyone who can reach this address can {exposed} "
              "(there is no authentication)", file=sys.stderr)
    print(f"{banner}; Ctrl-C to stop", file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
