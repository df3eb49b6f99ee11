"""The whole loop end to end on micro settings: files, report keys, skip on re-run, PPO resume."""
import dataclasses
import json

import pytest

from ppolab.pipeline import Run, get_preset, resolve, run_pipeline, write_report
from ppolab.pipeline.config import parse_override

MICRO = {
    "tokenizer": {"vocab_size": 400},
    "model": {"n_layers": 1, "hidden_size": 32, "n_heads": 2, "n_kv_heads": 1, "intermediate_size": 64},
    # max_length: the longest train row is ~175 tokens of a 400-token BPE
    "sft": {"epochs": 1, "batch_size": 32, "eval_limit": 4, "max_length": 192},
    "synth": {"n_sources": 8, "candidates_per_source": 3, "min_gap": 0.001, "max_new_tokens": 8, "batch_size": 8},
    "reward_model": {"epochs": 1, "batch_size": 8, "normalize_samples": 4, "val_fraction": 0.3},
    "ppo": {"steps": 2, "batch_size": 4, "minibatch_size": 2, "ppo_epochs": 1},
    "generation": {"max_new_tokens": 8},
    "feedback": {"items": 4, "candidates": 3, "custom_every": 2},
    "reward_model_human": {"epochs": 1, "batch_size": 4, "val_fraction": 0.5, "mix_synthetic": 4},
    "ppo_final": {"steps": 2, "batch_size": 4, "minibatch_size": 2},
    "eval": {"test_limit": 4, "max_new_tokens": 8},
}

def _ppo(cfg, **changes):
    """The run's cold-start PPO section with `changes` (lr 1e-5, as a short test stage wants)."""
    return dataclasses.replace(cfg.ppo, **{"lr": 1e-5, **changes})


REPORT_KEYS = {
    "sft": {"chrf_test", "bleu_test"},
    "synthetic": {"pairs"},
    "reward_model": {"val_accuracy"},
    "ppo_coldstart": {"reward_start", "reward_end", "kl_per_token_end", "kl_per_sequence_end", "chrf_test"},
    "reward_model_human": {"val_accuracy", "pairs"},
    "ppo_final": {"reward_start", "reward_end", "kl_per_token_end", "kl_per_sequence_end", "chrf_test"},
    "seconds": None,
}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    cfg = resolve("fast", MICRO)
    run = Run(tmp_path_factory.mktemp("run"), cfg)
    run_pipeline(run, cfg)
    return run, cfg, write_report(run)


def test_report_has_exactly_the_agreed_keys_and_types(finished_run):
    run, _, report = finished_run
    on_disk = json.loads((run / "report.json").read_text())
    assert on_disk == report
    assert set(report) == set(REPORT_KEYS)
    for k, sub in REPORT_KEYS.items():
        if sub is None:
            assert isinstance(report[k], float)
        else:
            assert set(report[k]) == sub
    assert isinstance(report["synthetic"]["pairs"], int) and isinstance(report["reward_model_human"]["pairs"], int)


def test_run_directory_layout(finished_run):
    run, *_ = finished_run
    for name in ("run.json", "metrics.jsonl", "report.md", "sft", "synthetic_preferences.jsonl",
                 "synthetic_data_stats.json", "reward_model_coldstart", "ppo_model_coldstart", "feedback.sqlite",
                 "human_preferences.jsonl", "reward_model_human", "ppo_model_final", "plots/ppo_reward.png",
                 "plots/ppo_kl.png", "plots/chrf.png", "plots/rm_accuracy.png", "rollouts.jsonl"):
        assert (run / name).exists(), name
    meta = json.loads((run / "run.json").read_text())
    assert {"config", "seed", "versions", "git_commit"} <= set(meta)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in rows} >= {"sft", "ppo_coldstart", "ppo_final", "reward_model"}
    assert "simulated annotator" in (run / "report.md").read_text()
    human = [json.loads(line) for line in (run / "human_preferences.jsonl").read_text().splitlines()]
    assert human and all(p["chosen"] != p["rejected"] for p in human)


def test_rerun_skips_completed_stages(finished_run, capsys):
    run, cfg, _ = finished_run
    before = (run / "stages.json").read_text()
    run_pipeline(run, cfg)
    assert "already complete" in capsys.readouterr().out
    assert (run / "stages.json").read_text() == before


def test_ppo_resumes_after_a_crash(finished_run, monkeypatch):
    run, cfg, _ = finished_run
    from ppolab.pipeline.stages import ppo as stages
    from ppolab.ppo import PPOTrainer

    section = _ppo(cfg, steps=3)
    real_step, calls = PPOTrainer.ppo_step, {"n": 0}

    def crashing_step(self, prompts):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return real_step(self, prompts)

    monkeypatch.setattr(PPOTrainer, "ppo_step", crashing_step)
    out = run / "ppo_resume_test"
    with pytest.raises(KeyboardInterrupt):
        stages.run_ppo(run, cfg, "ppo_resume", run / "sft", run / "reward_model_coldstart", out, section)
    assert (run / ".ppo_resume.checkpoint.pt").exists() and not out.exists()
    result = stages.run_ppo(run, cfg, "ppo_resume", run / "sft", run / "reward_model_coldstart", out, section)
    steps = [r["step"] for r in run.metrics("ppo_resume") if "score_mean" in r]
    assert steps == [1, 2, 3] and out.exists() and result["steps"] == 3


def test_ppo_killed_after_recording_resumes_without_duplicate_rollouts(finished_run, monkeypatch):
    """Killed between writing a step's rollouts and its checkpoint: the redone step is recorded once."""
    run, cfg, _ = finished_run
    from ppolab.inspect import load_rollouts
    from ppolab.pipeline.stages import ppo as stages
    from ppolab.ppo import PPOTrainer

    real_step, calls = PPOTrainer.ppo_step, {"n": 0}

    def killed_after_step(self, prompts):
        stats = real_step(self, prompts)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return stats

    monkeypatch.setattr(PPOTrainer, "ppo_step", killed_after_step)
    out = run / "ppo_rec_test"
    with pytest.raises(KeyboardInterrupt):
        stages.run_ppo(run, cfg, "ppo_rec", run / "sft", run / "reward_model_coldstart", out, _ppo(cfg, steps=3))
    recorded = [(s.stage, s.step) for s in load_rollouts(run / "rollouts.jsonl")]
    assert ("ppo_rec", 2) in recorded  # step 2's rollouts were on disk when the process died
    stages.run_ppo(run, cfg, "ppo_rec", run / "sft", run / "reward_model_coldstart", out, _ppo(cfg, steps=3))
    lines = [json.loads(line) for line in (run / "rollouts.jsonl").read_text(encoding="utf-8").splitlines()]
    mine = [(r["step"], r["type"], r.get("index")) for r in lines if r["stage"] == "ppo_rec"]
    assert len(mine) == len(set(mine)) and sorted({s for s, *_ in mine}) == [1, 2, 3]
    assert {r["stage"] for r in lines} >= {"ppo_coldstart", "ppo_final", "ppo_rec"}


def test_settings_overrides_name_unknown_keys():
    assert parse_override("ppo.steps=7") == {"ppo": {"steps": 7}}
    with pytest.raises(ValueError, match="ppo.stepz"):
        resolve("cpu-test", parse_override("ppo.stepz=7"))
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("huge")


def test_reference_pairs_prefer_the_reference_over_each_rejected_sample_once():
    from ppolab.pipeline.models import as_response
    from ppolab.pipeline.pairs import reference_pairs

    rows = [
        {"prompt": "P1", "reference": "مرحبا", "chosen": "a", "rejected": "b", "rejected_score": 0.1},
        {"prompt": "P1", "reference": "مرحبا", "chosen": "c", "rejected": "b", "rejected_score": 0.1},  # same rejected
        {"prompt": "P1", "reference": "مرحبا", "chosen": "a", "rejected": "d", "rejected_score": 0.2},
        {"prompt": "P2", "reference": "شكرا", "chosen": "e", "rejected": " شكرا ", "rejected_score": 1.0},  # = reference
    ]
    got = reference_pairs(rows)
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in got] == [
        ("P1", as_response("مرحبا"), as_response("b")), ("P1", as_response("مرحبا"), as_response("d"))]
    assert [p["chosen_score"] for p in got] == [1.0, 1.0] and [p["rejected_score"] for p in got] == [0.1, 0.2]


def test_each_stage_starts_from_its_own_seed(tmp_path, monkeypatch):
    """A stage draws the same random numbers whether earlier stages ran in this process or not."""
    import torch

    import ppolab.pipeline.stages as stages

    def draw(*args, **kwargs):
        return {"draw": torch.rand(3).tolist()}

    monkeypatch.setattr(stages, "STAGES", tuple(dataclasses.replace(s, run=draw) for s in stages.STAGES))
    cfg = resolve("fast", MICRO)
    fresh = Run(tmp_path / "fresh", cfg)
    run_pipeline(fresh, cfg)
    resumed = Run(tmp_path / "resumed", cfg)
    run_pipeline(resumed, cfg, only=["sft", "synth", "reward_model"])
    torch.rand(5)  # the process's RNG has moved on, as after a restart
    run_pipeline(resumed, cfg)
    draws = {name: s["draw"] for name, s in fresh.stages.items()}
    assert draws == {name: s["draw"] for name, s in resumed.stages.items()}
    assert len({tuple(d) for d in draws.values()}) == len(draws)  # and the stages differ from each other


# -- reliability: resume, unsafe checkpoints, stale temporaries --------------------------------------
PPO_FIGURES = ("reward_start", "reward_end", "kl_per_token_end", "kl_per_sequence_end", "chrf_test", "bleu_test")


@pytest.mark.parametrize("when", ["after_the_row", "before_the_row"])
def test_a_kill_between_metrics_row_and_checkpoint_changes_no_figure(finished_run, monkeypatch, when):
    """Killed around a step's two writes (its metrics row, its checkpoint), a resumed stage reports
    exactly what an uninterrupted one does, and the reader sees each step once."""
    from ppolab.pipeline.stages import ppo as stages

    run, cfg, _ = finished_run
    section = _ppo(cfg, steps=3)
    args = (run / "sft", run / "reward_model_coldstart")
    clean = stages.run_ppo(run, cfg, "ppo_clean", *args, run / "ppo_clean_out", section)

    real_log, killed = Run.log, []

    def log_then_die(self, stage, record):
        if stage == f"ppo_kill_{when}" and record.get("step") == 2 and not killed:
            killed.append(True)
            if when == "after_the_row":
                real_log(self, stage, record)
            raise KeyboardInterrupt("killed")
        real_log(self, stage, record)

    monkeypatch.setattr(Run, "log", log_then_die)
    stage = f"ppo_kill_{when}"
    with pytest.raises(KeyboardInterrupt):
        stages.run_ppo(run, cfg, stage, *args, run / f"{stage}_out", section)
    resumed = stages.run_ppo(run, cfg, stage, *args, run / f"{stage}_out", section)
    assert {k: resumed[k] for k in PPO_FIGURES} == {k: clean[k] for k in PPO_FIGURES}
    assert [r["step"] for r in run.step_rows(stage)] == [1, 2, 3]
    assert [r["score_mean"] for r in run.step_rows(stage)] == [r["score_mean"] for r in run.step_rows("ppo_clean")]


def test_step_rows_keep_each_step_once_from_the_latest_attempt(tmp_path):
    run = Run(tmp_path, {"seed": 0})
    for step, v in ((1, "a"), (2, "a"), (2, "b"), (3, "b"), (1, "c"), (2, "c")):  # dup step 2, restart at 1
        run.log("ppo", {"step": step, "v": v})
    run.log("ppo", {"event": "done"})
    assert [(r["step"], r["v"]) for r in run.step_rows("ppo")] == [(1, "c"), (2, "c")]


def test_a_torn_metrics_line_does_not_swallow_the_next_row(tmp_path):
    run = Run(tmp_path, {"seed": 0})
    run.log("ppo", {"step": 1})
    with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"stage": "ppo", "step": 2, "sco')  # killed mid-append
    run.log("ppo", {"step": 2})
    assert [r["step"] for r in run.step_rows("ppo")] == [1, 2]


class _RunsCode:
    """Unpickling this calls print: any callable would do, os.system included."""

    def __reduce__(self):
        return (print, ("PWNED: code ran while loading a checkpoint",))


def test_a_checkpoint_that_would_run_code_is_refused(finished_run, capsys):
    import torch

    from ppolab.errors import UserError
    from ppolab.pipeline.stages import ppo as stages

    run, cfg, _ = finished_run
    ckpt = run / ".ppo_evil.checkpoint.pt"
    torch.save({"step": 1, "payload": _RunsCode()}, ckpt)
    with pytest.raises(UserError, match=r"\.ppo_evil\.checkpoint\.pt: not a loadable ppolab checkpoint"):
        stages.run_ppo(run, cfg, "ppo_evil", run / "sft", run / "reward_model_coldstart", run / "evil_out",
                         _ppo(cfg, steps=2))
    assert "PWNED" not in capsys.readouterr().out


def test_stale_temporaries_are_removed_when_a_stage_starts(tmp_path, monkeypatch):
    import ppolab.pipeline.stages as stages

    monkeypatch.setattr(stages, "STAGES", tuple(dataclasses.replace(s, run=lambda *a, **k: {}) if s.name == "sft"
                                                else s for s in stages.STAGES))
    run = Run(tmp_path / "run", {"seed": 0})
    orphan = run / "..ppo_coldstart.checkpoint.pt.k2j4x9.tmp"
    orphan.write_bytes(b"\0" * 1000)
    orphan_dir = run / ".sft.abc123.tmp"
    (orphan_dir / "nested").mkdir(parents=True)
    (run / "plots").mkdir()
    nested = run / "plots" / ".chrf.png.q1w2e3.tmp"
    nested.write_bytes(b"x")
    (run / ".venv" / "lib").mkdir(parents=True)  # hidden folders (a run inside a checkout) are not walked
    keep = [run / ".ppo_coldstart.checkpoint.pt", run / "notes.tmp", run / "run.json",
            run / ".venv" / "lib" / ".cache.x1.tmp"]
    for p in keep:
        p.write_text("mine")
    run_pipeline(run, resolve("fast", MICRO), only=["sft"])
    assert not orphan.exists() and not orphan_dir.exists() and not nested.exists()
    assert all(p.exists() for p in keep)


def test_an_interrupted_directory_swap_is_undone(tmp_path):
    from ppolab.io import remove_stale_temporaries

    (tmp_path / ".sft.old").mkdir()
    (tmp_path / ".sft.old" / "model.safetensors").write_text("weights")
    (tmp_path / ".sft.zz9.tmp").mkdir()  # killed between atomic_dir's two renames
    remove_stale_temporaries(tmp_path)
    assert (tmp_path / "sft" / "model.safetensors").read_text() == "weights"
    assert not (tmp_path / ".sft.zz9.tmp").exists() and not (tmp_path / ".sft.old").exists()


@pytest.mark.parametrize("damage", ["truncate_backbone", "drop_head", "no_folder"])
def test_a_broken_reward_model_folder_is_named(finished_run, tmp_path, damage):
    import shutil

    from ppolab.errors import UserError
    from ppolab.pipeline.stages import ppo as stages

    run, cfg, _ = finished_run
    broken = tmp_path / "rm"
    shutil.copytree(run / "reward_model_coldstart", broken)
    if damage == "truncate_backbone":
        weights = broken / "backbone" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
        expected = f"{weights}: truncated"
    elif damage == "drop_head":
        (broken / "head.safetensors").unlink()
        expected = f"{broken / 'head.safetensors'}: missing"
    else:
        shutil.rmtree(broken)
        expected = f"{broken}: no such reward model folder"
    with pytest.raises(UserError, match=expected.replace(".", r"\.")):
        stages.run_ppo(run, cfg, "ppo_broken_rm", run / "sft", broken, tmp_path / "out", _ppo(cfg, steps=1))


def test_checkpoints_of_critic_free_stages_round_trip(tmp_path):
    """GRPO-style trainers have no value model: the checkpoint stores none and restores none."""
    import types

    import torch

    from ppolab.errors import UserError
    from ppolab.pipeline.stages.ppo import load_checkpoint, save_checkpoint
    from ppolab.ppo import PPOTrainer

    def trainer(value: bool):
        policy = torch.nn.Linear(3, 2)
        critic = torch.nn.Linear(3, 1) if value else None
        t = types.SimpleNamespace(
            policy=policy, policy_optimizer=torch.optim.AdamW(policy.parameters()), value=critic,
            value_optimizer=torch.optim.AdamW(critic.parameters()) if value else None,
            kl_controller=types.SimpleNamespace(value=0.1), steps_done=0)
        t.state_dict = types.MethodType(PPOTrainer.state_dict, t)  # the trainer's own state, as PPOTrainer has it
        t.load_state_dict = types.MethodType(PPOTrainer.load_state_dict, t)
        return t

    saved = trainer(value=False)
    saved.kl_controller.value = 0.07
    save_checkpoint(tmp_path / "c.pt", saved, 5, {"step": 5, "score_mean": 1.0})
    restored = trainer(value=False)
    assert load_checkpoint(tmp_path / "c.pt", restored) == (5, {"step": 5, "score_mean": 1.0})
    assert torch.equal(restored.policy.weight, saved.policy.weight) and restored.kl_controller.value == 0.07
    assert restored.steps_done == saved.steps_done
    with pytest.raises(UserError, match="without a value model"):
        load_checkpoint(tmp_path / "c.pt", trainer(value=True))


def _kill_once_at_step_2(monkeypatch, stage: str) -> None:
    """The first time `stage` logs its step-2 row, the process 'dies' (after the step's checkpoint)."""
    real_log, killed = Run.log, []

    def die_at_step_2(self, name, record):
        if name == stage and record.get("step") == 2 and not killed:
            killed.append(True)
            raise KeyboardInterrupt("killed")
        real_log(self, name, record)

    monkeypatch.setattr(Run, "log", die_at_step_2)


def test_a_critic_free_stage_resumes_after_a_kill(finished_run, monkeypatch):
    from ppolab.pipeline.stages import ppo as stages

    run, cfg, _ = finished_run
    section = _ppo(cfg, steps=3, advantage_estimator="grpo", group_size=2)
    _kill_once_at_step_2(monkeypatch, "ppo_grpo")
    args = (run, cfg, "ppo_grpo", run / "sft", run / "reward_model_coldstart", run / "ppo_grpo_out", section)
    with pytest.raises(KeyboardInterrupt):
        stages.run_ppo(*args)
    assert stages.run_ppo(*args)["steps"] == 3
    assert [r["step"] for r in run.step_rows("ppo_grpo")] == [1, 2, 3]


def test_a_stage_on_model_plus_chrf_logs_both_parts_and_resumes_with_the_same_norm(finished_run, monkeypatch):
    from ppolab.pipeline.stages import ppo as stages

    run, cfg, _ = finished_run
    section = _ppo(cfg, steps=3, reward="model+chrf", chrf_weight=0.25)
    _kill_once_at_step_2(monkeypatch, "ppo_mix")
    args = (run, cfg, "ppo_mix", run / "sft", run / "reward_model_coldstart", run / "ppo_mix_out", section)
    with pytest.raises(KeyboardInterrupt):
        stages.run_ppo(*args)
    norm = json.loads((run / "ppo_mix_chrf_norm.json").read_text())
    assert norm["scale"] > 0
    assert stages.run_ppo(*args)["steps"] == 3
    assert json.loads((run / "ppo_mix_chrf_norm.json").read_text()) == norm  # fitted once, reused on resume
    rows = run.step_rows("ppo_mix")
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:  # the score is the weighted sum of its logged parts
        assert r["score_mean"] == pytest.approx(r["reward_model"] + r["reward_chrf"], abs=1e-5)


def test_an_unknown_ppo_reward_is_named_before_any_stage_runs(tmp_path):
    from ppolab.config import ConfigError

    with pytest.raises(ConfigError, match="ppo.reward = 'bleu'"):
        resolve("fast", {"ppo": {"reward": "bleu"}})
    with pytest.raises(ConfigError, match="ppo.chrf_weight"):
        resolve("fast", {"ppo": {"chrf_weight": 1.5}})


def test_real_model_targets_include_the_chrf_gain_and_the_two_hour_budget():
    from ppolab.pipeline.report import targets

    ppo = {"reward_start": 0.0, "reward_end": 0.3, "kl_per_token_end": 0.05, "chrf_test": 30.0}
    flores = lambda en, fr: {"flores": {"eng->arb": {"chrf": en}, "fra->arb": {"chrf": fr}}}  # noqa: E731
    report = {"reward_model": {"val_accuracy": 0.8}, "sft": {"chrf_test": 30.0}, "ppo_coldstart": ppo,
              "ppo_final": ppo, "seconds": 7300.0,
              "flores": {"base": flores(18.0, 15.0), "sft": flores(20.0, 18.0), "ppo_final": flores(21.5, 18.5)}}
    met = {what: ok for what, ok, _ in targets(report)}
    assert met["FLORES eng->arb: PPO final chrF >= SFT + 1.0"] is True
    assert met["FLORES fra->arb: PPO final chrF >= SFT + 1.0"] is False
    assert met["whole preset <= 120 min on the 2-core machine"] is False
    tiny_run = {k: v for k, v in report.items() if k != "flores"}  # the cpu-test demo has no time goal
    assert "whole preset <= 120 min on the 2-core machine" not in {w for w, *_ in targets(tiny_run)}


def test_later_stages_load_the_best_sft_checkpoint_and_the_report_says_so(finished_run):
    from ppolab.pipeline.models import sft_dir

    run, *_ = finished_run
    assert run.stages["sft"]["checkpoint"] == "best" and sft_dir(run) == run / "sft" / "best"
    assert "| SFT (best checkpoint, what later stages load)" in (run / "report.md").read_text()


def test_sft_epochs_0_uses_the_given_model_as_the_sft_model(finished_run, tmp_path):
    from ppolab.config import ConfigError
    from ppolab.pipeline.models import sft_dir

    with pytest.raises(ConfigError, match="sft.epochs = 0: skipping SFT needs an already fine-tuned model"):
        resolve("fast", MICRO, {"sft": {"epochs": 0}})
    run, *_ = finished_run
    cfg = resolve("fast", MICRO, {"sft": {"epochs": 0}, "model": {"policy_path": str(run / "sft" / "final")}})
    fresh = Run(tmp_path / "given", cfg)
    run_pipeline(fresh, cfg, only=["sft"])
    assert fresh.stages["sft"]["checkpoint"] == "given" and sft_dir(fresh) == fresh / "sft"
    assert (fresh / "sft" / "final" / "config.json").is_file() and not (fresh / "sft" / "best").exists()
