"""Feedback layer without a browser: store, pairs, HTTP API (urllib), terminal."""
from __future__ import annotations

import http.client
import json
import sqlite3
import threading
import urllib.error
import urllib.request
from itertools import combinations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ppolab.feedback import (
    Candidate,
    FeedbackError,
    FeedbackStore,
    load_ratings,
    make_server,
    pairs_from_feedback,
    pairs_from_ratings,
    parse_ranking,
    run_terminal,
)
from ppolab.feedback.server import MAX_BODY_BYTES

CANDS = [Candidate("القطة نائمة.", 0.9), Candidate("القط ينام.", 0.5), Candidate("قطة تنام.", 0.1)]


def make_items(n, direction="en-ar"):
    return [{"source": f"The cat sleeps ({k}).", "direction": direction,
             "candidates": [Candidate(f"{c.text} {k}", c.score) for c in CANDS],
             "model_version": "v1"} for k in range(n)]


@pytest.fixture
def store(tmp_path):
    return FeedbackStore(tmp_path / "fb.sqlite")


# -- store ------------------------------------------------------------------------


def test_wal_mode_and_schema(store):
    conn = sqlite3.connect(store.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    cols = {r[1] for r in conn.execute("PRAGMA table_info(feedback)")}
    assert {"item_id", "annotator", "ranking", "custom_translation", "timestamp",
            "model_version", "client_submission_id"} <= cols
    conn.close()


def test_in_memory_path_rejected(tmp_path):
    with pytest.raises(ValueError, match="file path"):
        FeedbackStore(":memory:")


def test_add_items_shows_top_candidates_in_given_order(tmp_path):
    store = FeedbackStore(tmp_path / "s.sqlite", shown=3)
    (item_id,) = store.add_items([{
        "source": "Bonjour", "direction": "fr-ar", "reference": "مرحبا",
        "candidates": [("مرحبا", 2.0), {"text": "أهلا", "score": 1.0}, ("مرحبا", 0.5),  # dup text merged
                       ("سلام", 0.2), ("صباح الخير", -1.0)]}])
    item = store.get_item(item_id)
    assert [c.text for c in item.candidates] == ["مرحبا", "أهلا", "سلام"]
    assert item.candidates[0] == Candidate("مرحبا", 2.0)
    assert item.reference == "مرحبا" and item.direction == "fr-ar"


@pytest.mark.parametrize("bad, message", [
    ({"source": " ", "direction": "en-ar", "candidates": [("a", 1)]}, "source must not be empty"),
    ({"source": "x", "candidates": [("a", 1)]}, "direction"),
    ({"source": "x", "direction": "en-ar", "candidates": []}, "at least one candidate"),
    ({"source": "x", "direction": "en-ar", "candidates": [("a", float("nan"))]}, "finite"),
    ({"source": "x", "direction": "en-ar", "candidates": [{"text": "a"}]}, "'text' and 'score'"),
    ({"source": "x", "direction": "en-ar", "candidates": "abc"}, "must be a list"),
])
def test_add_items_is_all_or_nothing(store, bad, message):
    with pytest.raises(FeedbackError, match=message):
        store.add_items(make_items(2) + [bad])
    assert store.stats()["items"] == 0


def test_next_item_least_annotated_first_and_skips_own(store):
    a, b, c = store.add_items(make_items(3))
    assert store.next_item("amina").id == a
    store.submit(a, "amina", [0, 1, 2])
    assert store.next_item("amina").id == b
    # Another annotator gets the least-annotated items first: b and c have 0.
    assert store.next_item("omar").id == b
    assert store.next_item("omar", exclude=[b]).id == c
    store.submit(b, "omar", [2, 1, 0])
    store.submit(c, "omar", [2, 1, 0])
    assert store.next_item("omar").id == a  # the only one omar has not done
    store.submit(a, "omar", [1, 0, 2])
    assert store.next_item("omar") is None


@pytest.mark.parametrize("kwargs, message", [
    ({"annotator": "  "}, "annotator must not be empty"),
    ({"annotator": 3}, "annotator must be a string"),
    ({"annotator": "x" * 101}, "longer than"),
    ({"ranking": [0, 1]}, "permutation"),
    ({"ranking": [0, 0, 1]}, "permutation"),
    ({"ranking": [0, 1, 3]}, "permutation"),
    ({"ranking": [0, 1, 2, 3]}, "permutation"),
    ({"ranking": ["0", "1", "2"]}, "integers"),
    ({"ranking": [True, 0, 2]}, "integers"),
    ({"ranking": "012"}, "list of candidate indices"),
    ({"item_id": 999}, "unknown item 999"),
    ({"item_id": "1"}, "item_id must be an integer"),
    ({"custom_translation": 5}, "custom_translation must be a string"),
    ({"submission_id": ""}, "submission_id must not be empty"),
])
def test_submit_validation_stores_nothing(store, kwargs, message):
    (item_id,) = store.add_items(make_items(1))
    args = {"item_id": item_id, "annotator": "amina", "ranking": [0, 1, 2],
            "submission_id": "s1", **kwargs}
    with pytest.raises(FeedbackError, match=message):
        store.submit(**args)
    assert store.stats()["feedback"] == 0


def test_custom_translation_stripped_or_none(store):
    a, b = store.add_items(make_items(2))
    store.submit(a, "amina", [0, 1, 2], custom_translation="   ")
    store.submit(b, "amina", [0, 1, 2], custom_translation="  ترجمة أفضل \n")
    customs = [r["custom_translation"] for r in store.records()]
    assert customs == [None, "ترجمة أفضل"]
    assert store.stats()["custom_translations"] == 1


def test_duplicate_submission_is_stored_once(store):
    (item_id,) = store.add_items(make_items(1))
    first = store.submit(item_id, "amina", [2, 0, 1], submission_id="abc")
    again = store.submit(item_id, "amina", [2, 0, 1], submission_id="abc")
    assert not first.duplicate and again.duplicate
    assert again.feedback_id == first.feedback_id
    assert store.stats()["feedback"] == 1
    # Same key, different content: a client bug, refused rather than ignored.
    with pytest.raises(FeedbackError, match="already used for a different") as e:
        store.submit(item_id, "amina", [0, 1, 2], submission_id="abc")
    assert e.value.kind == "conflict"
    # Same annotator, same item, new key: one judgement per annotator per item.
    with pytest.raises(FeedbackError, match="already submitted") as e:
        store.submit(item_id, "amina", [0, 1, 2], submission_id="other")
    assert e.value.kind == "conflict"
    assert store.stats()["feedback"] == 1


def test_concurrent_double_submission_stored_once(store):
    (item_id,) = store.add_items(make_items(1))
    results, errors = [], []
    barrier = threading.Barrier(8)

    def send():
        barrier.wait()
        try:
            results.append(store.submit(item_id, "amina", [1, 0, 2], submission_id="same"))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sum(not r.duplicate for r in results) == 1 and len(results) == 8
    assert store.stats()["feedback"] == 1


def test_two_annotators_in_parallel_lose_nothing(store):
    n = 30
    store.add_items(make_items(n))
    errors = []

    def annotate(name):
        try:
            done = 0
            while (item := store.next_item(name)) is not None:
                store.submit(item.id, name, [2, 1, 0], custom_translation=f"{name} {item.id}")
                done += 1
            assert done == n
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=annotate, args=(name,)) for name in ("amina", "omar")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    stats = store.stats()
    assert stats["feedback"] == 2 * n
    assert stats["annotators"] == {"amina": n, "omar": n}
    assert stats["items_unannotated"] == 0
    records = store.records()
    assert {(r["annotator"], r["item_id"]) for r in records} == {
        (name, i) for name in ("amina", "omar") for i in range(1, n + 1)}


def test_export_jsonl_content_and_atomic(store, tmp_path):
    a, b = store.add_items(make_items(2))
    store.submit(a, "amina", [2, 0, 1])
    store.submit(b, "omar", [0, 1, 2], custom_translation="أفضل ترجمة")
    out_dir = tmp_path / "export"
    out_dir.mkdir()
    path = store.export_jsonl(out_dir)
    assert path.name == "human_preferences.jsonl"
    assert [p.name for p in out_dir.iterdir()] == ["human_preferences.jsonl"]  # no temp left
    pairs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(pairs) == 3 + 3 + 3
    t = [c.text + " 0" for c in CANDS]
    first = [(p["chosen"], p["rejected"]) for p in pairs if p["item_id"] == a]
    assert first == [(t[2], t[0]), (t[2], t[1]), (t[0], t[1])]
    assert all(p["annotator"] == "amina" and p["origin"] == "ranking" and p["direction"] == "en-ar"
               for p in pairs if p["item_id"] == a)
    custom = [p for p in pairs if p["origin"] == "custom"]
    assert {p["chosen"] for p in custom} == {"أفضل ترجمة"}
    assert {p["rejected"] for p in custom} == {c.text + " 1" for c in CANDS}
    assert set(pairs[0]) == {"source", "direction", "chosen", "rejected", "origin",
                             "annotator", "item_id"}
    # Exporting again to an explicit file path replaces it whole.
    again = store.export_jsonl(path)
    assert again == path and len(path.read_text(encoding="utf-8").splitlines()) == 9


# -- pairs ------------------------------------------------------------------------


def _record(ranking, custom=None, texts=("a", "b", "c"), annotator="amina"):
    return {"item_id": 1, "annotator": annotator, "source": "src", "direction": "en-ar",
            "candidates": [{"text": t, "score": 0.0} for t in texts], "ranking": ranking,
            "custom_translation": custom}


def test_pairs_from_ranking_of_three():
    pairs = pairs_from_feedback([_record([1, 2, 0])])
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("b", "c"), ("b", "a"), ("c", "a")]
    assert {p["origin"] for p in pairs} == {"ranking"}


def test_custom_translation_preferred_over_each_shown():
    pairs = pairs_from_feedback([_record([0, 1, 2], custom="better")])
    custom = [(p["chosen"], p["rejected"]) for p in pairs if p["origin"] == "custom"]
    assert custom == [("better", "a"), ("better", "b"), ("better", "c")]
    assert len(pairs) == 6
    # A "custom" text equal to a candidate never yields chosen == rejected.
    pairs = pairs_from_feedback([_record([0, 1, 2], custom="b")])
    assert all(p["chosen"] != p["rejected"] for p in pairs)
    assert len(pairs) == 3 + 2 - 1  # ("b","c") from the ranking is repeated by custom: deduped


def test_pairs_deduped_per_annotator_but_agreement_kept():
    pairs = pairs_from_feedback([_record([0, 1, 2]), _record([0, 1, 2]),
                                 _record([0, 1, 2], annotator="omar")])
    assert len(pairs) == 6


@given(st.permutations(list(range(6))).flatmap(
    lambda perm: st.integers(1, 6).map(lambda n: [i for i in perm if i < n])))
def test_ranking_pairs_property(ranking):
    texts = [f"t{i}" for i in range(len(ranking))]
    pairs = pairs_from_feedback([_record(ranking, texts=texts)])
    n = len(ranking)
    assert len(pairs) == n * (n - 1) // 2
    position = {texts[i]: pos for pos, i in enumerate(ranking)}
    assert all(position[p["chosen"]] < position[p["rejected"]] for p in pairs)
    assert {(p["chosen"], p["rejected"]) for p in pairs} == {
        (texts[x], texts[y]) for x, y in combinations(ranking, 2)}


def test_pairs_from_ratings(tmp_path):
    records = [
        {"source": "Hello", "direction": "en-ar", "annotator": "r1", "responses": [
            {"text": "مرحبا", "rating": 5}, {"text": "أهلا", "rating": 4},
            {"text": "وداعا", "rating": 1}, {"text": "مرحبا بك", "rating": 4}]},
        {"source": "Bonjour", "responses": [{"text": "صباح الخير", "rating": 3},
                                           {"text": "صباح الخير", "rating": 3}]},
    ]
    path = tmp_path / "ratings.json"
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    pairs = pairs_from_ratings(load_ratings(path))
    got = {(p["chosen"], p["rejected"]) for p in pairs}
    assert got == {("مرحبا", "أهلا"), ("مرحبا", "مرحبا بك"), ("مرحبا", "وداعا"),
                   ("أهلا", "وداعا"), ("مرحبا بك", "وداعا")}  # 4 vs 4: no pair
    assert all(p["origin"] == "rating" and p["direction"] == "en-ar" and p["annotator"] == "r1"
               for p in pairs)
    strict = pairs_from_ratings(records, min_difference=3)
    assert {(p["chosen"], p["rejected"]) for p in strict} == {
        ("مرحبا", "وداعا"), ("أهلا", "وداعا"), ("مرحبا بك", "وداعا")}
    assert pairs_from_ratings(records[1:], default_direction="fr-ar") == []


@pytest.mark.parametrize("bad, message", [
    ([{"source": "x", "responses": [{"text": "a", "rating": 6}]}], "1 to 5"),
    ([{"source": "x", "responses": [{"text": "a"}]}], "1 to 5"),
    ([{"responses": []}], "'source'"),
    ([{"source": "x", "responses": {"text": "a"}}], "'responses' must be a list"),
])
def test_pairs_from_ratings_rejects_bad_records(bad, message):
    with pytest.raises(FeedbackError, match=message):
        pairs_from_ratings(bad)


# -- HTTP API ---------------------------------------------------------------------


@pytest.fixture
def server(store):
    srv = make_server(store)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def call(srv, method, path, body=None, *, raw=None, headers=None):
    """(status, decoded JSON) for one request; 4xx/5xx do not raise."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    hdrs = {"Content-Type": "application/json"} if data is not None else {}
    hdrs.update(headers or {})
    req = urllib.request.Request(srv.url.rstrip("/") + path, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        assert e.headers.get_content_type() == "application/json"
        return e.code, json.loads(e.read())


def test_default_bind_is_loopback(server):
    assert server.server_address[0] == "127.0.0.1"
    assert server.server_address[1] > 0
    assert server.url.startswith("http://127.0.0.1:")


def test_page_is_served_self_contained(server):
    with urllib.request.urlopen(server.url, timeout=10) as resp:
        html = resp.read().decode()
        assert resp.headers.get_content_type() == "text/html"
        assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
    assert 'id="custom" dir="rtl" lang="ar"' in html
    assert "http://" not in html and "https://" not in html  # nothing fetched from elsewhere


def test_api_flow(server, store):
    a, b = store.add_items(make_items(2))
    status, item = call(server, "GET", "/api/next?annotator=amina")
    assert status == 200 and item["item_id"] == a and item["direction"] == "en-ar"
    assert [c["index"] for c in item["candidates"]] == [0, 1, 2]
    assert item["candidates"][0] == {"index": 0, "text": CANDS[0].text + " 0", "score": 0.9}
    body = {"item_id": a, "annotator": "amina", "ranking": [2, 0, 1], "submission_id": "u1",
            "custom_translation": None}
    assert call(server, "POST", "/api/submit", body) == (200, {"ok": True, "duplicate": False,
                                                             "feedback_id": 1})
    assert call(server, "POST", "/api/submit", body)[1]["duplicate"] is True
    assert call(server, "GET", "/api/next?annotator=amina&skip=2")[1] == {"done": True}
    assert call(server, "GET", "/api/next?annotator=amina")[1]["item_id"] == b
    status, stats = call(server, "GET", "/api/stats")
    assert status == 200 and stats["feedback"] == 1 and stats["annotators"] == {"amina": 1}


GOOD = {"item_id": 1, "annotator": "amina", "ranking": [0, 1, 2], "submission_id": "s"}


@pytest.mark.parametrize("method, path, kwargs, status, message", [
    ("POST", "/api/submit", {"raw": b"{not json"}, 400, "not valid UTF-8 JSON"),
    ("POST", "/api/submit", {"raw": b"\xff\xfe"}, 400, "not valid UTF-8 JSON"),
    ("POST", "/api/submit", {"body": [1, 2]}, 400, "JSON object"),
    ("POST", "/api/submit", {"body": {k: v for k, v in GOOD.items() if k != "ranking"}},
     400, "missing field(s): ranking"),
    ("POST", "/api/submit", {"body": {**GOOD, "custom": "x"}}, 400, "unknown field(s): custom"),
    ("POST", "/api/submit", {"body": {**GOOD, "ranking": "0 1 2"}}, 400, "ranking"),
    ("POST", "/api/submit", {"body": {**GOOD, "ranking": [0, 1, 1]}}, 400, "permutation"),
    ("POST", "/api/submit", {"body": {**GOOD, "item_id": "1"}}, 400, "item_id must be an integer"),
    ("POST", "/api/submit", {"body": {**GOOD, "item_id": 42}}, 404, "unknown item 42"),
    ("POST", "/api/submit", {"body": {**GOOD, "annotator": ""}}, 400, "annotator"),
    ("POST", "/api/submit", {"body": {**GOOD, "submission_id": 7}}, 400, "submission_id"),
    ("POST", "/api/submit", {"body": {**GOOD, "custom_translation": ["x"]}}, 400,
     "custom_translation"),
    ("POST", "/api/submit", {"raw": b"{" + b" " * MAX_BODY_BYTES + b"}"}, 413, "limit"),
    ("POST", "/api/submit", {"body": GOOD, "headers": {"Content-Type": "text/plain"}}, 415,
     "application/json"),
    ("GET", "/api/next", {}, 400, "annotator"),
    ("GET", "/api/next?annotator=%20", {}, 400, "annotator"),
    ("GET", "/api/next?annotator=a&skip=x", {}, 400, "skip"),
    ("GET", "/api/submit", {}, 405, "expects POST"),
    ("POST", "/api/next", {"body": {}}, 405, "expects GET"),
    ("GET", "/nope", {}, 404, "no such page"),
])
def test_malformed_requests_get_4xx_and_change_nothing(server, store, method, path, kwargs,
                                                       status, message):
    store.add_items(make_items(1))
    before = store.stats()
    got_status, body = call(server, method, path, **kwargs)
    assert got_status == status
    assert message in body["error"]
    assert store.stats() == before


def test_missing_content_length_is_refused(server, store):
    store.add_items(make_items(1))
    host, port = server.server_address
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.putrequest("POST", "/api/submit")
    conn.putheader("Content-Type", "application/json")
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 411 and "Content-Length" in json.loads(resp.read())["error"]
    conn.close()
    assert store.stats()["feedback"] == 0


def test_candidate_source_generates_items_on_demand(store):
    calls = []

    def source(text, direction):
        calls.append(text)
        if text == "empty":
            return []  # no usable candidate: the source is dropped, not retried forever
        return [Candidate(f"{text} ← ar{k}", 1.0 - k) for k in range(4)]

    srv = make_server(store, candidate_source=source, model_version="policy-7",
                      sources=[("one", "en-ar"), ("empty", "en-ar"),
                               {"source": "deux", "direction": "fr-ar"}])
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    try:
        status, item = call(srv, "GET", "/api/next?annotator=amina")
        assert status == 200 and item["source"] == "one" and item["model_version"] == "policy-7"
        assert len(item["candidates"]) == 3  # top 3 of the 4 generated
        assert calls == ["one"]  # generated lazily, one source at a time
        call(srv, "POST", "/api/submit", {"item_id": item["item_id"], "annotator": "amina",
                                          "ranking": [0, 1, 2], "submission_id": "x"})
        status, item = call(srv, "GET", "/api/next?annotator=amina")
        assert item["source"] == "deux" and item["direction"] == "fr-ar"
        assert calls == ["one", "empty", "deux"]
        # Another annotator first gets the existing items, generating nothing.
        assert call(srv, "GET", "/api/next?annotator=omar")[1]["source"] == "deux"
        assert call(srv, "GET", "/api/stats")[1]["pending_sources"] == 0
        assert store.records()[0]["model_version"] == "policy-7"
    finally:
        srv.shutdown()
        srv.server_close()


def test_failing_candidate_source_is_500_and_source_kept(store):
    def broken(text, direction):
        raise RuntimeError("model not loaded")

    srv = make_server(store, candidate_source=broken, sources=[("one", "en-ar")])
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    try:
        status, body = call(srv, "GET", "/api/next?annotator=amina")
        assert status == 500 and "model not loaded" in body["error"]
        assert srv.pending_sources == 1
    finally:
        srv.shutdown()
        srv.server_close()


def test_sources_without_candidate_source_is_an_error(store):
    with pytest.raises(ValueError, match="candidate_source"):
        make_server(store, sources=[("one", "en-ar")])


# -- terminal ---------------------------------------------------------------------


def scripted(answers):
    it = iter(answers)

    def fake_input(prompt):
        try:
            return next(it)
        except StopIteration:
            raise EOFError from None
    return fake_input


def test_parse_ranking():
    assert parse_ranking("2 1 3", 3) == [1, 0, 2]
    assert parse_ranking("3,1, 2", 3) == [2, 0, 1]
    assert parse_ranking("312", 3) == [2, 0, 1]
    for bad in ("1 2", "1 1 2", "a b c", "1 2 4", ""):
        with pytest.raises(ValueError):
            parse_ranking(bad, 3)


def test_terminal_flow(store):
    a, b, c = store.add_items(make_items(3))
    lines = []
    saved = run_terminal(store, input=scripted([
        "", "amina",            # empty name is asked again
        "2 2 1", "2 1 3", "",   # a typo, then a ranking; no custom translation
        "s",                    # skip item b
        "312", "  ترجمة أفضل ",  # item c, with a better translation
    ]), output=lines.append)
    assert saved == 2
    records = store.records()
    assert [(r["item_id"], r["ranking"], r["custom_translation"]) for r in records] == [
        (a, [1, 0, 2], None), (c, [2, 0, 1], "ترجمة أفضل")]
    text = "\n".join(lines)
    assert "The cat sleeps (0)." in text and f"1. {CANDS[0].text} 0" in text
    assert "each number 1 to 3 exactly once" in text
    assert "No more items for amina" in text


def test_terminal_quit_and_eof(store):
    store.add_items(make_items(2))
    lines = []
    assert run_terminal(store, "omar", input=scripted(["q"]), output=lines.append) == 0
    assert "Bye" in lines[-1]
    assert run_terminal(store, "omar", input=scripted(["1 2 3"]), output=lines.append) == 0
    assert lines[-1] == "Stopped."  # EOF while asked for the translation: nothing half-saved
    assert store.stats()["feedback"] == 0


# -- hardening: Host header, edges of the input, stalled clients, IPv6, busy port ----------------
def raw_request(srv, method, path, headers, body=b"", connect_to=None):
    """(status, JSON) for a request with exactly these headers (http.client adds no Host)."""
    host, port = srv.server_address[:2]
    conn = http.client.HTTPConnection(connect_to or host, port, timeout=10)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    for k, v in headers.items():
        conn.putheader(k, v)
    conn.endheaders(body or None)
    resp = conn.getresponse()
    out = resp.status, json.loads(resp.read())
    conn.close()
    return out


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1.evil.example",
                                  "localhost.evil.example:{port}", "[::2]:{port}"])
def test_dns_rebinding_hosts_are_refused(server, store, host):
    store.add_items(make_items(1))
    before = store.stats()
    port = server.server_address[1]
    host = host.format(port=port)
    status, body = raw_request(server, "GET", "/api/next?annotator=eve", {"Host": host})
    assert status == 421 and "does not answer for host" in body["error"] and "item_id" not in body
    data = json.dumps({**GOOD, "annotator": "eve"}).encode()
    status, _ = raw_request(server, "POST", "/api/submit", {"Host": host, "Content-Type": "application/json",
                                                          "Content-Length": str(len(data))}, data)
    assert status == 421 and store.stats() == before


def test_a_request_without_host_is_refused(server):
    assert raw_request(server, "GET", "/api/stats", {})[0] == 400


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST", "[::1]:{port}", "127.0.0.1"])
def test_the_names_it_serves_are_accepted(server, host):
    status, body = raw_request(server, "GET", "/api/stats", {"Host": host.format(port=server.server_address[1])})
    assert status == 200 and "items" in body


def test_the_host_it_was_started_on_and_allowed_hosts_are_accepted(store):
    srv = make_server(store, host="0.0.0.0", allowed_hosts=["annotate.lab"])
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    try:
        for host in ("0.0.0.0", "annotate.lab:8000", "localhost", "192.0.2.7"):  # an IP literal: no rebinding
            assert raw_request(srv, "GET", "/api/stats", {"Host": host}, connect_to="127.0.0.1")[0] == 200
        assert raw_request(srv, "GET", "/api/stats", {"Host": "other.lab"}, connect_to="127.0.0.1")[0] == 421
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("kwargs, message", [
    ({"body": {**GOOD, "item_id": 2 ** 64}}, "out of range"),
    ({"body": {**GOOD, "item_id": -(2 ** 70)}}, "out of range"),
    ({"raw": b'{"item_id": 1, "annotator": "\\ud800", "ranking": [0, 1, 2], "submission_id": "s"}'},
     "not valid UTF-8 JSON"),
    ({"raw": b'{"item_id": 1, "annotator": "a", "ranking": [0, 1, 2], "submission_id": "s",'
             b' "custom_translation": "x\\udc00y"}'}, "not valid UTF-8 JSON"),
    ({"body": {**GOOD, "annotator": "ami\u0000na"}}, "control characters"),
    ({"body": {**GOOD, "custom_translation": "مرحبا\u0000"}}, "NUL"),
    ({"body": {**GOOD, "submission_id": "s\u0000"}}, "NUL"),
])
def test_edge_inputs_get_400_not_500(server, store, kwargs, message):
    store.add_items(make_items(1))
    before = store.stats()
    status, body = call(server, "POST", "/api/submit", **kwargs)
    assert status == 400 and message in body["error"]
    assert store.stats() == before


def test_a_huge_skip_id_gets_400(server, store):
    store.add_items(make_items(1))
    status, body = call(server, "GET", f"/api/next?annotator=a&skip={2 ** 64}")
    assert status == 400 and "skip" in body["error"]


def test_the_store_refuses_what_sqlite_cannot_hold(store):
    (item,) = store.add_items(make_items(1))
    with pytest.raises(FeedbackError, match="out of range"):
        store.submit(2 ** 63, "amina", [0, 1, 2])
    with pytest.raises(FeedbackError, match="control characters"):
        store.submit(item, "a\x00b", [0, 1, 2])
    with pytest.raises(FeedbackError, match="lone surrogate"):
        store.submit(item, "amina", [0, 1, 2], custom_translation="\ud800")
    with pytest.raises(FeedbackError, match="out of range"):
        store.get_item(-(2 ** 64))


def test_a_stalled_client_is_disconnected(store):
    import socket
    import time

    srv = make_server(store, client_timeout=0.5)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    try:
        silent = socket.create_connection(srv.server_address[:2], timeout=10)  # says nothing at all
        half = socket.create_connection(srv.server_address[:2], timeout=10)  # promises a body, sends 1 byte
        half.sendall(b"POST /api/submit HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{")
        t0 = time.monotonic()
        assert silent.recv(100) == b""  # closed by the server, not by our 10 s timeout
        assert half.recv(100).startswith(b"HTTP/1.0 408")
        assert time.monotonic() - t0 < 5
        silent.close()
        half.close()
    finally:
        srv.shutdown()
        srv.server_close()


def test_ipv6_loopback_serves(store):
    store.add_items(make_items(1))
    srv = make_server(store, host="::1")
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    try:
        assert srv.url.startswith("http://[::1]:")
        assert call(srv, "GET", "/api/next?annotator=amina")[0] == 200
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_busy_port_is_one_clear_error(tmp_path, capsys):
    import socket

    from ppolab.cli import main

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        assert main(["feedback", "serve", "--run", str(tmp_path), "--port", str(port)]) == 1
    finally:
        busy.close()
    err = capsys.readouterr().err
    assert err == f"error: cannot listen on 127.0.0.1 port {port}: port already in use; pick another with --port\n"


# -- the queue (`ppolab feedback add`) and typed sentences -----------------------------------------


def fake_model(calls=None):
    def source(text, direction):
        if calls is not None:
            calls.append((text, direction))
        return [Candidate(f"{text} [{direction}] {k}", 1.0 - k / 10) for k in range(4)]
    return source


def test_queued_sources_outlive_the_process_and_become_items_once(tmp_path):
    path = tmp_path / "fb.sqlite"
    FeedbackStore(path).queue_sources([("one", "eng->arb"), ("two", "eng->fra")])
    store = FeedbackStore(path)  # a new process: the queue is in the file
    assert store.queued() == 2 and store.stats()["queued"] == 2
    calls = []
    srv = make_server(store, candidate_source=fake_model(calls), model_version="ppo_model_coldstart")
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        status, item = call(srv, "GET", "/api/next?annotator=amina")
        assert status == 200 and item["source"] == "one" and item["model_version"] == "ppo_model_coldstart"
        assert calls == [("one", "eng->arb")] and store.queued() == 1
        assert call(srv, "GET", "/api/next?annotator=omar")[1]["source"] == "one"  # no second item for it
        call(srv, "POST", "/api/submit", {"item_id": item["item_id"], "annotator": "amina", "ranking": [1, 0, 2],
                                          "submission_id": "s1"})
        item = call(srv, "GET", "/api/next?annotator=amina")[1]
        assert item["source"] == "two" and item["direction"] == "eng->fra" and store.queued() == 0
        assert len(calls) == 2
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_queued_source_without_usable_candidates_is_dropped_not_retried(store):
    store.queue_sources([("x", "eng->arb")])
    srv = make_server(store, candidate_source=lambda text, direction: [])
    try:
        assert srv.next_item("amina") is None and store.queued() == 0
    finally:
        srv.server_close()


def test_a_failing_model_leaves_the_source_queued(store):
    store.queue_sources([("x", "eng->arb")])

    def broken(text, direction):
        raise RuntimeError("model not loaded")

    srv = make_server(store, candidate_source=broken)
    try:
        with pytest.raises(RuntimeError):
            srv.next_item("amina")
        assert store.queued() == 1
    finally:
        srv.server_close()


def test_queue_sources_is_all_or_nothing(store):
    with pytest.raises(FeedbackError, match="source 1 must not be empty"):
        store.queue_sources([("fine", "eng->arb"), ("  ", "eng->arb")])
    assert store.queued() == 0


def test_compose_translates_a_typed_sentence_at_once(store):
    calls = []
    srv = make_server(store, candidate_source=fake_model(calls), model_version="v2",
                      directions=["eng->arb", "fra->arb"])
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        assert call(srv, "GET", "/api/config")[1] == {"compose": True, "directions": ["eng->arb", "fra->arb"]}
        status, item = call(srv, "POST", "/api/compose", {"source": "  Bonjour.  ", "direction": "fra->arb"})
        assert status == 200 and item["source"] == "Bonjour." and item["direction"] == "fra->arb"
        assert [c["score"] for c in item["candidates"]] == [1.0, 0.9, 0.8]  # top `shown`, best first
        assert calls == [("Bonjour.", "fra->arb")]
        assert call(srv, "POST", "/api/compose", {"source": "Hi."})[1]["direction"] == "eng->arb"  # the default
        for body, message in (({"source": " "}, "type a sentence"), ({"source": "Hi.", "direction": "deu->eng"},
                                                                       "expected one of eng->arb, fra->arb"),
                              ({"text": "Hi."}, "body must be")):
            status, err = call(srv, "POST", "/api/compose", body)
            assert status == 400 and message in err["error"]
        assert store.stats()["items"] == 2
    finally:
        srv.shutdown()
        srv.server_close()


def test_compose_without_a_model_says_how_to_get_one(server):
    assert call(server, "GET", "/api/config")[1] == {"compose": False, "directions": []}
    status, err = call(server, "POST", "/api/compose", {"source": "Hi."})
    assert status == 400 and "ppolab feedback serve --run DIR" in err["error"]


def test_terminal_types_a_sentence_of_ones_own(store):
    from ppolab.feedback.items import ItemMaker

    store.add_items(make_items(1))
    out = []
    answers = iter(["amina", "t", "My own sentence.", "2 1 3", "", "1 2 3", "", "", ])
    n = run_terminal(ItemMaker(store, fake_model(), "v2", directions=["eng->arb"]),
                     input=lambda prompt: next(answers), output=out.append)
    assert n == 2
    recs = store.records()
    assert [r["source"] for r in recs] == ["My own sentence.", store.get_item(1).source]
    assert recs[0]["ranking"] == [1, 0, 2] and recs[0]["model_version"] == "v2"
