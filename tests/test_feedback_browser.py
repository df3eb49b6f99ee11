"""The annotation page in a real headless Chromium (Playwright, system browser)."""
from __future__ import annotations

import json
import re
import threading

import pytest

from _browser import chromium_executable, launch_chromium
from ppolab.feedback import Candidate, FeedbackStore, make_server

ITEMS = [
    {"source": "The weather is nice today.", "direction": "en-ar", "model_version": "v1",
     "candidates": [Candidate("الطقس جميل اليوم.", 0.91), Candidate("الجو لطيف اليوم.", 0.62),
                    Candidate("الطقس اليوم جميل.", 0.33)]},
    {"source": "Je lis un livre.", "direction": "fr-ar", "model_version": "v1",
     "candidates": [Candidate("أقرأ كتابا.", 0.8), Candidate("أنا أقرأ كتاب.", 0.4),
                    Candidate("قراءة كتاب.", 0.2)]},
]
CUSTOM = "أنا أقرأ كتابًا."
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@pytest.fixture
def server(tmp_path):
    store = FeedbackStore(tmp_path / "fb.sqlite")
    store.add_items(ITEMS)
    srv = make_server(store)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def order(page):
    return page.locator(".candidate").evaluate_all("els => els.map(e => Number(e.dataset.index))")


def test_annotate_rank_and_custom_in_browser(server, tmp_path):
    chromium_executable()  # skips, with the reason, when there is no Chromium
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency")
    expect = sync_api.expect
    store = server.store
    texts = [[c.text for c in item["candidates"]] for item in ITEMS]

    with sync_api.sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page()
            page.set_default_timeout(15_000)
            errors, submissions = [], []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: submissions.append(r.post_data_json)
                    if r.url.endswith("/api/submit") else None)
            page.goto(server.url)

            # The name is asked for before anything else.
            page.click("#start")
            expect(page.locator("#status")).to_contain_text("enter your name")
            page.fill("#annotator", "amina")
            page.click("#start")

            expect(page.locator("#source")).to_have_text(ITEMS[0]["source"])
            cands = page.locator(".candidate")
            expect(cands).to_have_count(3)
            expect(cands.nth(0)).to_contain_text("0.910")  # reward-model score shown
            # Arabic displays right-to-left; the source picks its own direction.
            assert cands.evaluate_all(
                "els => els.map(e => getComputedStyle(e).direction)") == ["rtl"] * 3
            assert cands.evaluate_all("els => els.map(e => e.lang)") == ["ar"] * 3
            assert page.eval_on_selector(
                "#custom", "e => [getComputedStyle(e).direction, e.lang]") == ["rtl", "ar"]
            assert page.get_attribute("#source", "dir") == "auto"

            # Move candidate 3 up: best-first order becomes 1, 3, 2.
            page.click('.candidate[data-index="2"] .up')
            assert order(page) == [0, 2, 1]
            assert cands.locator(".rank").all_text_contents() == ["1", "2", "3"]
            page.dblclick("#submit")  # a double click must be stored once

            expect(page.locator("#source")).to_have_text(ITEMS[1]["source"])
            assert order(page) == [0, 1, 2]
            expect(page.locator("#custom")).to_have_value("")

            # Keyboard only: Alt+Down twice on a focused candidate, then Enter on a ▲.
            page.focus('.candidate[data-index="0"]')
            page.keyboard.press("Alt+ArrowDown")
            page.keyboard.press("Alt+ArrowDown")
            assert order(page) == [1, 2, 0]
            page.focus('.candidate[data-index="2"] .up')
            page.keyboard.press("Enter")
            assert order(page) == [2, 1, 0]
            # Focus follows the moved candidate, so the user can keep pressing.
            assert page.evaluate(
                "document.activeElement.closest('.candidate').dataset.index") == "2"
            page.fill("#custom", CUSTOM)
            page.click("#submit")

            expect(page.locator("#done")).to_be_visible()
            # The name is remembered: a reload goes straight to work (here: done).
            page.reload()
            expect(page.locator("#done")).to_be_visible()
            expect(page.locator("#login")).to_be_hidden()
            assert errors == []
        finally:
            browser.close()

    assert store.stats()["feedback"] == 2
    assert len(submissions) == 2  # the disabled button swallowed the second click
    ids = [s["submission_id"] for s in submissions]
    assert all(UUID.match(i) for i in ids) and ids[0] != ids[1]
    assert submissions[0]["ranking"] == [0, 2, 1] and "custom_translation" not in submissions[0]
    assert submissions[1]["custom_translation"] == CUSTOM

    path = store.export_jsonl(tmp_path)
    pairs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    got = [(p["item_id"], p["origin"], p["chosen"], p["rejected"]) for p in pairs]
    a, b = texts
    assert got == [
        (1, "ranking", a[0], a[2]), (1, "ranking", a[0], a[1]), (1, "ranking", a[2], a[1]),
        (2, "ranking", b[2], b[1]), (2, "ranking", b[2], b[0]), (2, "ranking", b[1], b[0]),
        (2, "custom", CUSTOM, b[2]), (2, "custom", CUSTOM, b[1]), (2, "custom", CUSTOM, b[0]),
    ]
    assert {p["annotator"] for p in pairs} == {"amina"}
    assert [p["direction"] for p in pairs] == ["en-ar"] * 3 + ["fr-ar"] * 6
