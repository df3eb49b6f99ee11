"""The rollout inspector: its server's safety, and the page in a real headless Chromium."""
from __future__ import annotations

import http.client
import json
import threading

import pytest
import torch

from _browser import chromium_executable, launch_chromium
from ppolab.inspect import RolloutRecorder, make_server, render_html, write_html
from ppolab.localhttp import host_allowed
from tests.test_inspect_recorder import make_trainer

SCRIPT_PROMPT = "<script>window.pwned = 1</script> Translate: hello"
ARABIC = "صباح الخير"
PROMPTS = [SCRIPT_PROMPT, "ترجم: صباح الخير", "Where is the station?", "Merci beaucoup"] * 2


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A small recorded run: step 1 sampled, step 2 with every response forced to Arabic text."""
    run = tmp_path_factory.mktemp("run")
    t = make_trainer(RolloutRecorder(run / "rollouts.jsonl", per_step=3))
    t.ppo_step(PROMPTS)
    tok = t.tokenizer
    ids = tok(ARABIC, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    prompt_ids, prompt_mask = t.generator.encode_prompts(PROMPTS)
    rollout = t.generator.score(PROMPTS, prompt_ids, prompt_mask, torch.tensor([ids] * len(PROMPTS)))
    exp = t.make_experience(rollout)
    t.finish_step(rollout, exp, t.update(exp))
    return run


@pytest.fixture
def server(run_dir):
    srv = make_server(run_dir)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def get(server, path="/", host=None):
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    conn.putrequest("GET", path, skip_host=True)
    if host is not None:
        conn.putheader("Host", host)
    conn.endheaders()
    resp = conn.getresponse()
    return resp.status, dict(resp.getheaders()), resp.read()


def test_server_is_local_checks_host_and_sends_a_strict_policy(server):
    port = server.server_address[1]
    assert server.server_address[0] == "127.0.0.1"
    status, headers, body = get(server, host=f"127.0.0.1:{port}")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "connect-src 'none'" in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert b"ppolab" in body
    assert get(server, host=f"localhost:{port}")[0] == 200
    # DNS rebinding: a foreign name that resolves to 127.0.0.1 is refused, and so is no Host at all.
    assert get(server, host=f"evil.example:{port}")[0] == 421
    assert get(server, host=None)[0] == 421
    assert get(server, "/api/anything", host=f"127.0.0.1:{port}")[0] == 404


def test_host_allowed_rules():
    assert host_allowed("[::1]:8001", "::1") and host_allowed("localhost", "127.0.0.1")
    assert not host_allowed("attacker.example", "127.0.0.1")
    assert host_allowed("192.168.1.5:8001", "0.0.0.0")  # bound to all interfaces on purpose: IPs only
    assert not host_allowed("rebind.example:8001", "0.0.0.0")


def test_embedded_data_cannot_close_the_script(run_dir):
    html = render_html(run_dir)
    data = html.split('<script id="data" type="application/json">')[1].split("</script>")[0]
    assert "<" not in data and "window.pwned" in data  # the prompt is there, escaped, and ends nothing
    assert json.loads(data)["rollouts"][0]["prompt"] == SCRIPT_PROMPT
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "") and "https://" not in html


def token_backgrounds(page, selector):
    return page.locator(selector).evaluate_all("els => els.map(e => getComputedStyle(e).backgroundColor)")


def test_page_in_headless_chromium(server, run_dir, tmp_path):
    chromium_executable()  # skips, with the reason, when there is no Chromium
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency")
    expect = sync_api.expect
    records = [json.loads(line) for line in (run_dir / "rollouts.jsonl").read_text(encoding="utf-8").splitlines()]
    step1 = [r for r in records if r["type"] == "rollout" and r["step"] == 1]

    with sync_api.sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page()
            page.set_default_timeout(15_000)
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)
            page.goto(server.url)

            # The last step opens first: every response is the forced Arabic text, laid out right to left.
            expect(page.locator("#rollouts-title")).to_contain_text("step 2")
            rows = page.locator("#rollouts .tokens")
            expect(rows).to_have_count(3)
            assert rows.evaluate_all("els => els.map(e => getComputedStyle(e).direction)") == ["rtl"] * 3
            assert rows.evaluate_all("els => els.map(e => e.lang)") == ["ar"] * 3
            first = page.locator("#rollouts .rollout >> nth=0")
            boxes = [first.locator(".tok").nth(i).bounding_box() for i in (0, 1)]
            assert boxes[0]["x"] > boxes[1]["x"]  # token 0 sits right of token 1
            assert "".join(first.locator(".tok").all_text_contents()) == ARABIC + "</s>"

            # A prompt with markup is shown as text and runs nothing.
            expect(page.locator("#rollouts .prompt").first).to_have_text(SCRIPT_PROMPT)
            assert page.evaluate("window.pwned") is None
            assert page.locator("script").count() == 2  # the data block and the page's own code

            # Switching the colouring repaints the tokens and the legend.
            before = token_backgrounds(page, "#rollouts .tok")
            page.select_option("#colour", "advantage")
            expect(page.locator("#legend")).to_contain_text("advantage")
            assert token_backgrounds(page, "#rollouts .tok") != before
            options = page.locator("#colour option").evaluate_all("els => els.map(e => e.value)")
            assert {"kl", "advantage", "value", "reward", "ratio", "logprob"} <= set(options)

            # The numbers on focus.
            page.focus("#rollouts .tok >> nth=0")
            expect(page.locator("#detail")).to_contain_text("advantage")
            expect(page.locator("#detail")).to_contain_text("ratio")

            # A second step: its rollouts, with a flag on each response that never reached EOS.
            page.select_option("#step", "1")
            expect(page.locator("#rollouts-title")).to_contain_text("step 1")
            expect(page.locator("#rollouts .rollout")).to_have_count(len(step1))
            expect(page.locator("#rollouts .flag.noeos")).to_have_count(sum(not r["eos"] for r in step1))
            assert page.locator("#rollouts .tok").count() == sum(len(r["tokens"]["id"]) for r in step1)
            clipped = sum(sum(r["tokens"]["clipped"]) for r in step1)
            assert page.locator("#rollouts .tok.clipped").count() == clipped
            # The same prompt across both steps.
            expect(page.locator("#across .across-row")).to_have_count(2)
            expect(page.locator("#plots svg")).to_have_count(5)
            assert errors == []
        finally:
            browser.close()


def test_static_html_opens_with_the_network_off_and_without_a_value_model(run_dir, tmp_path):
    chromium_executable()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency")
    expect = sync_api.expect
    out = write_html(run_dir, tmp_path / "inspect.html")
    # The same run as if a critic-free estimator (GRPO) had recorded it: no value, no return, no value loss.
    lines = [json.loads(line) for line in (run_dir / "rollouts.jsonl").read_text(encoding="utf-8").splitlines()]
    for r in lines:
        r.get("tokens", {}).pop("value", None), r.get("tokens", {}).pop("return", None)
        r.get("means", {}).pop("value_loss", None)
    grpo = tmp_path / "grpo.jsonl"
    grpo.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines), encoding="utf-8")
    out_grpo = write_html(grpo, tmp_path / "grpo.html")

    with sync_api.sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            context = browser.new_context(offline=True)
            requests, errors = [], []
            context.on("request", lambda r: requests.append(r.url))
            page = context.new_page()
            page.set_default_timeout(15_000)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)
            page.goto(out.as_uri())
            expect(page.locator("#rollouts .rollout")).to_have_count(3)
            expect(page.locator("#plots svg")).to_have_count(5)
            assert requests == [out.as_uri()]  # nothing but the file itself

            page.goto(out_grpo.as_uri())
            expect(page.locator("#rollouts .rollout")).to_have_count(3)
            options = page.locator("#colour option").evaluate_all("els => els.map(e => e.value)")
            assert "value" not in options and "return" not in options and "advantage" in options
            expect(page.locator("#plots svg")).to_have_count(4)  # no value-loss plot
            page.focus("#rollouts .tok >> nth=0")
            expect(page.locator("#detail")).not_to_contain_text("value")
            assert errors == []
        finally:
            browser.close()
