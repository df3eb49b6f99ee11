"""Real people in the loop, end to end in a real browser: queue sources, type one on the page, rank,
write a better translation, retrain; the new reward model trained on those pairs and the final
policy moved away from the cold-start one. Then a second round, and nothing to do without new
judgements."""
from __future__ import annotations

import json
import threading

import pytest
import torch
from safetensors.torch import load_file

from _browser import chromium_executable, launch_chromium
from ppolab.cli import main
from ppolab.feedback import FeedbackStore, make_server
from ppolab.pipeline import Run, get_preset, run_pipeline
from ppolab.pipeline.human import RunCandidates, run_config
from ppolab.pipeline.presets import merge
from test_pipeline import MICRO

COLD_START = ["sft", "synth", "reward_model", "ppo_coldstart"]


@pytest.fixture(scope="module")
def cold_run(tmp_path_factory):
    cfg = merge(get_preset("fast"), MICRO)
    run = Run(tmp_path_factory.mktemp("human"), cfg)
    run_pipeline(run, cfg, only=COLD_START)
    run.close()
    return run.path


def weights(folder):
    files = sorted(folder.glob("*.safetensors"))
    assert files, f"no weights in {folder}"
    out = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


def test_queue_type_rank_correct_retrain_in_a_browser(cold_run, tmp_path, capsys):
    chromium_executable()  # skips, with the reason, when there is no Chromium
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency")
    expect = sync_api.expect
    run = cold_run
    sources = tmp_path / "sources.txt"
    sources.write_text("Good morning, everyone.\n\n", encoding="utf-8")
    assert main(["feedback", "add", "--run", str(run), "--file", str(sources)]) == 0
    assert main(["feedback", "add", "--run", str(run), "--text", "Where is the station?"]) == 0
    assert "queued 1 source(s) (eng->arb); 2 waiting" in capsys.readouterr().out

    # The server exactly as `ppolab feedback serve --run` builds it (which blocks until Ctrl-C).
    cfg = run_config(run, "fast", [])
    store = FeedbackStore(run / "feedback.sqlite", shown=cfg["feedback"]["shown"])
    source = RunCandidates(run, cfg)
    srv = make_server(store, candidate_source=source, model_version=source.model_version,
                      directions=["eng->arb", "fra->arb"])
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    typed = "The weather is nice today."
    better = "صباح الخير للجميع."
    try:
        with sync_api.sync_playwright() as p:
            browser = launch_chromium(p)
            try:
                page = browser.new_page()
                page.set_default_timeout(60_000)
                errors = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(srv.url)
                page.fill("#annotator", "amina")
                page.click("#start")
                # The first queued source, its candidates sampled from the cold-start policy now.
                expect(page.locator("#source")).to_have_text("Good morning, everyone.")
                expect(page.locator("#own")).to_be_visible()
                n = page.locator(".candidate").count()
                assert n >= 2
                page.click(f'.candidate[data-index="{n - 1}"] .up')  # rank: the last one up
                page.click("#submit")
                # The second: a better translation than any candidate.
                expect(page.locator("#source")).to_have_text("Where is the station?")
                page.fill("#custom", better)
                page.click("#submit")
                expect(page.locator("#done")).to_be_visible()
                # A sentence of the annotator's own, translated at once.
                page.fill("#own-source", typed)
                page.select_option("#own-direction", "eng->arb")
                page.click("#own-go")
                expect(page.locator("#source")).to_have_text(typed)
                page.click("#submit")
                expect(page.locator("#done")).to_be_visible()
                assert errors == []
            finally:
                browser.close()
    finally:
        srv.shutdown()
        srv.server_close()

    recs = store.records()
    assert [r["source"] for r in recs] == ["Good morning, everyone.", "Where is the station?", typed]
    assert recs[0]["ranking"] == [*range(n - 2), n - 1, n - 2] and recs[1]["custom_translation"] == better
    assert {r["model_version"] for r in recs} == {"ppo_model_coldstart"}

    capsys.readouterr()
    assert main(["retrain", "--run", str(run), "--preset", "fast"]) == 0
    stages = json.loads((run / "stages.json").read_text(encoding="utf-8"))
    h, final = stages["reward_model_human"], stages["ppo_final"]
    pairs = [json.loads(line) for line in (run / "human_preferences.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {p["source"] for p in pairs} == {r["source"] for r in recs}  # the typed sentence's pairs too
    assert any(p["origin"] == "custom" and p["chosen"] == better for p in pairs)
    # The reward model trained (and validated) on exactly those pairs, from the cold-start one.
    assert h["pairs"] == len(pairs) and h["human_train_pairs"] + h["human_val_pairs"] == len(pairs)
    assert h["round"] == 1 and h["judgements"] == 3
    assert final["policy_start"] == "ppo_model_coldstart"
    cold, new = weights(run / "ppo_model_coldstart"), weights(run / "ppo_model_final")
    assert cold.keys() == new.keys() and any(not torch.equal(cold[k], new[k]) for k in cold)
    assert (run / "report.md").exists()

    # No new judgement: nothing to retrain, said in one line.
    assert main(["retrain", "--run", str(run), "--preset", "fast"]) == 1
    assert "no new judgements since round 1 (3 in all)" in capsys.readouterr().err

    # One more judgement (in the terminal this time): a second round, from the round-1 policy.
    answers = iter(["omar", " ".join(map(str, range(1, n + 1))), "", "q"])
    assert main(["feedback", "add", "--run", str(run), "--text", "Thank you very much."]) == 0
    import builtins

    orig = builtins.input
    builtins.input = lambda prompt="": next(answers)
    try:
        assert main(["feedback", "annotate", "--run", str(run), "--annotator", "omar", "--preset", "fast"]) == 0
    finally:
        builtins.input = orig
    assert main(["retrain", "--run", str(run), "--preset", "fast"]) == 0
    stages = json.loads((run / "stages.json").read_text(encoding="utf-8"))
    assert stages["ppo_final_2"]["round"] == 2 and stages["ppo_final_2"]["policy_start"] == "ppo_model_final"
    assert (run / "reward_model_human_2").is_dir() and (run / "ppo_model_final_2").is_dir()
    assert stages["reward_model_human"] == h  # round 1 kept as it was
