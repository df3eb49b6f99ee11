"""A small annotation web server (stdlib only) in front of a ``FeedbackStore``.

Routes:

* ``GET /``                              the annotation page (self-contained HTML)
* ``GET /api/next?annotator=NAME[&skip=1,2]``  next item for NAME, or ``{"done": true}``
* ``POST /api/submit``                   JSON ``{item_id, annotator, ranking,
  custom_translation?, submission_id}`` -> ``{ok, duplicate, feedback_id}``
* ``GET /api/stats``                     counts from ``FeedbackStore.stats()``
* ``GET /api/config``                    ``{compose, directions}``: whether a typed sentence can be translated
* ``POST /api/compose``                  JSON ``{source, direction?}`` -> a new item for that sentence,
  its candidates made by the model at once (the box "a sentence of your own" on the page)

Every error is a 4xx/5xx JSON ``{"error": message}`` and changes nothing.
The server binds to 127.0.0.1 by default: it has no authentication, so it
should only be exposed to a network you trust. It answers only requests whose
``Host`` header names it (127.0.0.1, localhost, [::1], the host it was started
on, and any ``allowed_hosts``; see ``ppolab.localhttp.host_allowed``): a page
on another site whose name resolves to 127.0.0.1 (DNS rebinding) gets 421 and
reads nothing. A client that stalls for
``client_timeout`` seconds is disconnected, so it cannot hold a thread forever.

Items normally come pre-filled by the pipeline. With a ``candidate_source``, the
server also turns waiting sources (``sources``, and the store's queue that
``ppolab feedback add`` fills) into items, one model call each, whenever an
annotator has nothing left to do; see `ppolab.feedback.items.ItemMaker`.
"""
from __future__ import annotations

import json
import socket
import sys
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import parse_qs, urlsplit

from ppolab.feedback.items import ItemMaker
from ppolab.feedback.store import CandidateSource, FeedbackError, FeedbackItem, FeedbackStore, check_item_id
from ppolab.localhttp import host_allowed, send, serve_until_interrupt, split_host_header

__all__ = ["FeedbackServer", "make_server", "serve", "MAX_BODY_BYTES"]

MAX_BODY_BYTES = 64 * 1024  # a submission is a few hundred bytes; this is generous
CLIENT_TIMEOUT_S = 30.0  # a request line, headers or body not sent within this: the connection is closed
_DRAIN_LIMIT = 1024 * 1024  # read (and drop) an oversized body up to this, so the client sees our 413
PAGE_PATH = Path(__file__).with_name("page.html")

_SUBMIT_REQUIRED = {"item_id", "annotator", "ranking", "submission_id"}
_SUBMIT_ALLOWED = _SUBMIT_REQUIRED | {"custom_translation"}
_ERROR_STATUS = {"invalid": HTTPStatus.BAD_REQUEST, "not_found": HTTPStatus.NOT_FOUND,
                 "conflict": HTTPStatus.CONFLICT}

# The page must work offline and load nothing from elsewhere; the policy makes
# that a rule the browser enforces rather than a convention.
_PAGE_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
             "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'")


class _HttpError(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


def _item_json(item: FeedbackItem) -> dict[str, Any]:
    # The reference translation is deliberately not sent: it would bias the annotator.
    return {"item_id": item.id, "source": item.source, "direction": item.direction,
            "model_version": item.model_version,
            "candidates": [{"index": i, "text": c.text, "score": c.score}
                           for i, c in enumerate(item.candidates)]}


class FeedbackServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` holding the store and the optional item generator."""

    daemon_threads = True  # a stuck client must not keep the process alive

    def __init__(self, address: tuple[str, int], store: FeedbackStore,
                 candidate_source: CandidateSource | None = None, model_version: str = "",
                 sources: Iterable[Any] = (), quiet: bool = True, *, directions: Iterable[str] = (),
                 allowed_hosts: Iterable[str] = (), client_timeout: float = CLIENT_TIMEOUT_S) -> None:
        host = address[0].strip("[]")
        address = (host, *address[1:])
        if ":" in host:
            self.address_family = socket.AF_INET6  # e.g. --host ::1
        self.allowed_hosts = {split_host_header(h).lower().rstrip(".") for h in allowed_hosts}  # beyond loopback
        self.client_timeout = client_timeout
        self.store = store
        self.candidate_source = candidate_source
        self.model_version = model_version
        self.quiet = quiet
        self.page = PAGE_PATH.read_bytes()
        self.items = ItemMaker(store, candidate_source, model_version, sources, directions, log=self.log)
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}/"

    @property
    def pending_sources(self) -> int:
        return self.items.pending

    def next_item(self, annotator: str, exclude: Iterable[int] = ()) -> FeedbackItem | None:
        return self.items.next_item(annotator, exclude)

    def log(self, message: str) -> None:
        if not self.quiet:
            print(f"[feedback] {message}", file=sys.stderr)


class _Handler(BaseHTTPRequestHandler):
    server: FeedbackServer
    server_version = "ppolab-feedback"

    # -- plumbing ------------------------------------------------------------

    def setup(self) -> None:
        # StreamRequestHandler applies `timeout` to the socket: a stalled read raises instead of
        # blocking this thread forever.
        self.timeout = self.server.client_timeout
        super().setup()

    def _check_host(self) -> None:
        host = self.headers.get("Host")
        if host is None:
            raise _HttpError(HTTPStatus.BAD_REQUEST, "a Host header is required")
        name = split_host_header(host).lower().rstrip(".")
        if not host_allowed(host, str(self.server.server_address[0])) and name not in self.server.allowed_hosts:
            # DNS rebinding: another site's name now resolving to this address. Answer nothing.
            names = ", ".join(["127.0.0.1", "localhost", "[::1]", *sorted(self.server.allowed_hosts)])
            raise _HttpError(HTTPStatus.MISDIRECTED_REQUEST,
                             f"this server does not answer for host {host!r}; use one of {names}")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib name)
        self.server.log(f"{self.address_string()} {format % args}")

    def _send(self, status: int, body: bytes, content_type: str,
              headers: dict[str, str] | None = None) -> None:
        send(self, status, body, content_type, headers)  # no-store, nosniff, no-referrer

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self._send(status, body, "application/json; charset=utf-8")

    def _dispatch(self, routes: dict[str, Any]) -> None:
        try:
            self._check_host()
            url = urlsplit(self.path)
            route = routes.get(url.path)
            if route is None:
                other = "POST" if self.command == "GET" else "GET"
                known = _ROUTES[other]
                if url.path in known:
                    raise _HttpError(HTTPStatus.METHOD_NOT_ALLOWED,
                                     f"{url.path} expects {other}, not {self.command}")
                raise _HttpError(HTTPStatus.NOT_FOUND, f"no such page: {url.path}")
            route(self, url)
        except _HttpError as e:
            self._json(e.status, {"error": str(e)})
        except FeedbackError as e:
            self._json(_ERROR_STATUS.get(e.kind, HTTPStatus.BAD_REQUEST), {"error": str(e)})
        except Exception as e:  # a bug or a failing candidate source: say so, keep serving
            traceback.print_exc()
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR,
                       {"error": f"internal error: {type(e).__name__}: {e}"})

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        self._dispatch(_ROUTES["GET"])

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch(_ROUTES["POST"])

    def _read_json_body(self) -> Any:
        if self.headers.get("Transfer-Encoding"):
            raise _HttpError(HTTPStatus.LENGTH_REQUIRED,
                             "chunked bodies are not supported; send Content-Length")
        if self.headers.get_content_type() != "application/json":
            # Also a CSRF guard: a cross-site page cannot send application/json
            # without a CORS preflight, which this server never approves.
            raise _HttpError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                             "Content-Type must be application/json")
        raw_length = self.headers.get("Content-Length")
        if raw_length is None:
            raise _HttpError(HTTPStatus.LENGTH_REQUIRED, "Content-Length header is required")
        try:
            length = int(raw_length)
            if length < 0:
                raise ValueError
        except ValueError:
            raise _HttpError(HTTPStatus.BAD_REQUEST,
                             f"invalid Content-Length: {raw_length!r}") from None
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            if length <= _DRAIN_LIMIT:
                self.rfile.read(length)
            raise _HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                             f"request body is {length} bytes; the limit is {MAX_BODY_BYTES}")
        try:
            raw = self.rfile.read(length)
        except TimeoutError:
            self.close_connection = True
            raise _HttpError(HTTPStatus.REQUEST_TIMEOUT,
                             f"request body not received within {self.server.client_timeout:g} s") from None
        if len(raw) != length:
            raise _HttpError(HTTPStatus.BAD_REQUEST, "request body shorter than Content-Length")
        try:
            body = json.loads(raw.decode("utf-8"))
            # JSON may spell lone surrogates (\ud800), which are not text: refuse them here, not
            # as a 500 when SQLite or the response encoder meets them.
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except (UnicodeDecodeError, UnicodeEncodeError, json.JSONDecodeError) as e:
            raise _HttpError(HTTPStatus.BAD_REQUEST, f"body is not valid UTF-8 JSON: {e}") from None
        except RecursionError:
            raise _HttpError(HTTPStatus.BAD_REQUEST, "body is nested too deeply") from None
        return body

    # -- routes --------------------------------------------------------------

    def _page(self, url: Any) -> None:
        self._send(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8",
                   {"Content-Security-Policy": _PAGE_CSP})

    def _next(self, url: Any) -> None:
        query = parse_qs(url.query, keep_blank_values=True)
        names = query.get("annotator", [])
        if len(names) != 1 or not names[0].strip():
            raise _HttpError(HTTPStatus.BAD_REQUEST,
                             "give exactly one non-empty annotator: /api/next?annotator=NAME")
        skip: list[int] = []
        for part in ",".join(query.get("skip", [])).split(","):
            if part.strip():
                try:
                    skip.append(check_item_id(int(part), "skip"))
                except (ValueError, FeedbackError):
                    raise _HttpError(HTTPStatus.BAD_REQUEST,
                                     f"skip must be comma-separated item ids, got {part!r}") from None
        item = self.server.next_item(names[0], skip)
        self._json(HTTPStatus.OK, {"done": True} if item is None else _item_json(item))

    def _submit(self, url: Any) -> None:
        body = self._read_json_body()
        if not isinstance(body, dict):
            raise _HttpError(HTTPStatus.BAD_REQUEST, "body must be a JSON object")
        missing = sorted(_SUBMIT_REQUIRED - body.keys())
        if missing:
            raise _HttpError(HTTPStatus.BAD_REQUEST, f"missing field(s): {', '.join(missing)}")
        unknown = sorted(body.keys() - _SUBMIT_ALLOWED)
        if unknown:
            # Strict on purpose: a typo such as "custom" must not silently drop a translation.
            raise _HttpError(HTTPStatus.BAD_REQUEST, f"unknown field(s): {', '.join(unknown)}")
        if not isinstance(body["submission_id"], str):
            raise _HttpError(HTTPStatus.BAD_REQUEST, "submission_id must be a string")
        result = self.server.store.submit(
            body["item_id"], body["annotator"], body["ranking"],
            custom_translation=body.get("custom_translation"),
            submission_id=body["submission_id"])
        self._json(HTTPStatus.OK, {"ok": True, "duplicate": result.duplicate,
                                   "feedback_id": result.feedback_id})

    def _config(self, url: Any) -> None:
        items = self.server.items
        self._json(HTTPStatus.OK, {"compose": items.candidate_source is not None, "directions": items.directions})

    def _compose(self, url: Any) -> None:
        body = self._read_json_body()
        if not isinstance(body, dict) or not set(body) <= {"source", "direction", "annotator"}:
            raise _HttpError(HTTPStatus.BAD_REQUEST, "body must be {\"source\": TEXT, \"direction\"?: \"eng->arb\"}")
        self._json(HTTPStatus.OK, _item_json(self.server.items.compose(body.get("source"), body.get("direction"))))

    def _stats(self, url: Any) -> None:
        stats = self.server.store.stats()
        stats["pending_sources"] = self.server.pending_sources
        self._json(HTTPStatus.OK, stats)


_ROUTES = {
    "GET": {"/": _Handler._page, "/index.html": _Handler._page,
            "/api/next": _Handler._next, "/api/stats": _Handler._stats, "/api/config": _Handler._config},
    "POST": {"/api/submit": _Handler._submit, "/api/compose": _Handler._compose},
}


def _as_store(store: FeedbackStore | str | Path) -> FeedbackStore:
    return store if isinstance(store, FeedbackStore) else FeedbackStore(store)


def make_server(store: FeedbackStore | str | Path, host: str = "127.0.0.1", port: int = 0,
                candidate_source: CandidateSource | None = None, model_version: str = "",
                *, sources: Iterable[Any] = (), quiet: bool = True, allowed_hosts: Iterable[str] = (),
                client_timeout: float = CLIENT_TIMEOUT_S, directions: Iterable[str] = ()) -> FeedbackServer:
    """Create (not start) the server; ``port=0`` picks a free port (see ``.url``).

    Run it with ``server.serve_forever()`` (e.g. in a thread) and stop it with
    ``server.shutdown(); server.server_close()``. ``sources`` are
    ``(text, direction)`` pairs or ``{"source", "direction", "reference"?}``
    dicts turned into items through ``candidate_source`` on demand, stamped
    with ``model_version``. ``allowed_hosts``: more names the ``Host`` header
    may carry (e.g. this machine's name when listening on 0.0.0.0).
    """
    return FeedbackServer((host, port), _as_store(store), candidate_source=candidate_source,
                          model_version=model_version, sources=sources, quiet=quiet, directions=directions,
                          allowed_hosts=allowed_hosts, client_timeout=client_timeout)


def serve(store: FeedbackStore | str | Path, host: str = "127.0.0.1", port: int = 8000,
          candidate_source: CandidateSource | None = None, model_version: str = "",
          *, sources: Iterable[Any] = (), quiet: bool = False, allowed_hosts: Iterable[str] = (),
          directions: Iterable[str] = ()) -> None:
    """Serve the annotation page until Ctrl-C."""
    server = make_server(store, host, port, candidate_source, model_version,
                         sources=sources, quiet=quiet, allowed_hosts=allowed_hosts, directions=directions)
    serve_until_interrupt(server, f"Annotation server on {server.url} (store: {server.store.path})",
                          "read items and submit feedback")
