"""Recording rollouts: the file holds the trainer's numbers, stays bounded, survives a resume."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from ppolab.config import GenerationConfig, PPOConfig
from ppolab.inspect import RolloutRecorder, load_rollouts, read_records, token_texts
from ppolab.models import Reference, ValueModel
from ppolab.ppo.trainer import PPOTrainer
from ppolab.token_attribution import response_logprobs
from tests.helpers import ppo_trainer, tiny_policy, tiny_tokenizer

PROMPTS = ["Translate English to Arabic: hello", "Good morning, friend", "Where is the station?", "Merci beaucoup"]


def arabic_fraction(prompts, responses):
    return [sum("\u0600" <= ch <= "\u06ff" for ch in r) / max(len(r), 1) for r in responses]


def make_trainer(recorder, **ppo):
    return ppo_trainer(reward=arabic_fraction, seed=0, recorder=recorder,
                       **{"batch_size": 8, "minibatch_size": 4, "ppo_epochs": 2, "lr": 1e-2, "kl_coef": 0.05, **ppo})


def step_by_hand(t: PPOTrainer):
    rollout = t.rollout(PROMPTS * 2)
    exp = t.make_experience(rollout)
    stats = t.finish_step(rollout, exp, t.update(exp))
    return rollout, exp, stats


def test_recorded_numbers_equal_the_trainers_tensors(tmp_path):
    rec = RolloutRecorder(tmp_path / "rollouts.jsonl", per_step=3)
    t = make_trainer(rec)
    step_by_hand(t)
    rollout, exp, stats = step_by_hand(t)  # step 2: after an update, so the ratio is not all ones
    with torch.no_grad():
        new = response_logprobs(t.policy, rollout.input_ids[:3], rollout.attention_mask[:3], rollout.mask.shape[1])
    steps = load_rollouts(tmp_path)
    assert [(s.stage, s.step) for s in steps] == [("ppo", 1), ("ppo", 2)]
    s = steps[1]
    mask = rollout.mask[:3].bool()
    T = s.mask.shape[1]
    assert torch.equal(s.mask, mask[:, :T]) and bool(mask[:, T:].sum() == 0)  # masked positions excluded
    expected = {
        "logprob": rollout.logprobs, "ref_logprob": rollout.ref_logprobs, "kl": exp.kl,
        "value": exp.values, "reward": exp.rewards, "advantage": exp.advantages,
        "return": exp.returns, "new_logprob": new,
        "reward_kl": -stats["kl_coef"] * exp.kl, "ratio": torch.exp(new - rollout.logprobs[:3]),
    }
    for name, x in expected.items():
        got, want = s.tokens[name][s.mask], x[:3, :T][s.mask].float()
        torch.testing.assert_close(got, want, rtol=2e-6, atol=2e-6, msg=name)
        assert bool((s.tokens[name][~s.mask] == 0).all()), name
    # The score sits on the last token of the score part; the rest of it is zero.
    last = s.mask.sum(-1) - 1
    torch.testing.assert_close(s.tokens["reward_score"].gather(1, last[:, None])[:, 0], exp.scores[:3],
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s.scores, exp.scores[:3])
    assert torch.equal(s.eos, rollout.has_eos[:3])
    assert torch.equal(s.clipped[s.mask], ((s.tokens["ratio"] - 1).abs() > t.config.clip_eps)[s.mask])
    assert torch.equal(s.ids[s.mask], rollout.response_ids[:3, :T][mask[:, :T]])
    assert s.prompts == rollout.prompts[:3] and s.responses == rollout.response_texts[:3]
    assert s.means["clipfrac"] == pytest.approx(stats["clipfrac"], rel=1e-6)
    assert s.means["score_mean"] == pytest.approx(stats["score_mean"], rel=1e-6)
    assert s.clip_eps == t.config.clip_eps


def test_file_is_bounded_per_step_and_zero_turns_recording_off(tmp_path):
    path = tmp_path / "r.jsonl"
    t = make_trainer(RolloutRecorder(path, per_step=2), batch_size=16, minibatch_size=8)
    for _ in range(3):
        t.ppo_step(PROMPTS * 4)
    steps, rollouts = read_records(path)
    assert len(steps) == 3 and len(rollouts) == 3 * 2  # 2 of 16 rollouts per step, whatever the batch
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3 * (1 + 2)
    max_tokens = 8  # GenerationConfig.max_new_tokens
    assert all(len(json.loads(line).get("tokens", {}).get("id", [])) <= max_tokens for line in lines)

    off = tmp_path / "off.jsonl"
    t = make_trainer(RolloutRecorder(off, per_step=0))
    t.ppo_step(PROMPTS * 2)
    assert not off.exists()
    with pytest.raises(ValueError, match="per_step"):
        RolloutRecorder(off, per_step=-1)


def test_resumed_run_does_not_duplicate_steps(tmp_path):
    path = tmp_path / "rollouts.jsonl"
    t = make_trainer(RolloutRecorder(path, per_step=2, stage="ppo_coldstart"))
    for _ in range(3):
        t.ppo_step(PROMPTS * 2)
    with open(path, "a", encoding="utf-8") as f:  # killed while writing step 4
        f.write('{"type": "step", "stage": "ppo_coldstart", "st')
    # Another stage's steps in the same file are left alone.
    other = make_trainer(RolloutRecorder(path, per_step=1, stage="ppo_final"))
    other.ppo_step(PROMPTS * 2)
    assert [(s.stage, s.step) for s in load_rollouts(path)] == [("ppo_coldstart", i) for i in (1, 2, 3)] + [
        ("ppo_final", 1)]

    # Resumed from the checkpoint of step 2: steps 3 and 4 are done again.
    t2 = make_trainer(RolloutRecorder(path, per_step=2, stage="ppo_coldstart"))
    t2.steps_done = 2
    t2.ppo_step(PROMPTS * 2)
    t2.ppo_step(PROMPTS * 2)
    keys = [(r["stage"], r["step"], r.get("index")) for r in map(json.loads, path.read_text().splitlines())]
    assert len(keys) == len(set(keys))  # no line twice, not even in the raw file
    assert sorted((s.stage, s.step) for s in load_rollouts(path)) == [
        ("ppo_coldstart", i) for i in (1, 2, 3, 4)] + [("ppo_final", 1)]


def test_critic_free_experience_has_no_value_columns(tmp_path):
    """An estimator without a value model (GRPO, RLOO): value and return are absent, not zero."""
    path = tmp_path / "rollouts.jsonl"
    t = make_trainer(RolloutRecorder(path, per_step=2))
    rollout = t.rollout(PROMPTS * 2)
    exp = t.make_experience(rollout)
    t.update(exp)
    critic_free = dataclasses.replace(exp, values=None, returns=None)
    t.finish_step(rollout, critic_free, {})
    (s,) = load_rollouts(path)
    assert "value" not in s.tokens and "return" not in s.tokens
    assert {"logprob", "kl", "advantage", "ratio", "reward"} <= set(s.tokens)
    assert "value_loss" not in s.means


def test_token_texts_are_readable_arabic():
    tok = tiny_tokenizer()
    text = "الطقس جميل ژڤ."  # ژ, ڤ: letters the tiny tokenizer has no merge for, so split in bytes
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    pieces = token_texts(tok, ids)
    assert len(pieces) == len(ids)
    assert "\ufffd" not in "".join(pieces)
    shown = [p for p in pieces if not p.startswith("\\x")]  # split characters show as bytes, once
    assert "".join(shown) == text + tok.eos_token
    single = [tok.decode([i]) for i in ids]
    assert any("\ufffd" in s for s in single)  # the test exercises the split-character case


def test_bad_lines_name_the_file_and_line(tmp_path):
    path = tmp_path / "rollouts.jsonl"
    path.write_text('{"type": "step", "stage": "ppo", "step": 1}\nnot json\n{"type": "step"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"rollouts\.jsonl:2: not a rollout record"):
        load_rollouts(path)
    path.write_text('{"type": "rollout", "stage": "ppo", "step": 1, "prompt": "p", "score": 1, "eos": true,'
                    ' "tokens": {"id": [1, 2], "text": ["a"]}}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"rollouts\.jsonl:1: token column 'text' has 1 entries for 2 tokens"):
        load_rollouts(path)
    with pytest.raises(FileNotFoundError, match="no such rollouts file"):
        load_rollouts(tmp_path / "missing")


def test_prompts_recorded_before_are_recorded_again(tmp_path):
    """Sampled batches: rows whose prompt has a history come first, so one prompt can be followed."""
    path = tmp_path / "rollouts.jsonl"
    rec = RolloutRecorder(path, per_step=2, stage="s")
    assert rec.select(1, ["a", "b", "c", "d"]) == [0, 1]
    rec._seen.update(["a", "b"])  # what record() remembers after writing step 1
    assert rec.select(2, ["x", "b", "y", "a"]) == [1, 3]
    assert rec.select(3, ["x", "y", "b", "z"]) == [0, 2]  # one with a history, then the first row
    assert RolloutRecorder(path, per_step=0).select(1, ["a"]) == []

    # Through the trainer, and across a restart: the history is read back from the file.
    t = make_trainer(RolloutRecorder(path, per_step=2, stage="t"))
    t.ppo_step(PROMPTS * 2)  # records rows 0, 1: PROMPTS[0], PROMPTS[1]
    shuffled = [PROMPTS[2], PROMPTS[3], PROMPTS[1], PROMPTS[2], PROMPTS[0], PROMPTS[3], PROMPTS[2], PROMPTS[3]]
    resumed = RolloutRecorder(path, per_step=2, stage="t")
    t.recorder = resumed
    rollout = t.rollout(shuffled)
    exp = t.make_experience(rollout)
    t.finish_step(rollout, exp, t.update(exp))
    (s,) = [s for s in load_rollouts(path) if s.step == 2]
    assert s.prompts == [PROMPTS[1], PROMPTS[0]]
    assert [r["index"] for r in read_records(path)[1] if r["step"] == 2] == [2, 4]
    # The numbers are those of batch rows 2 and 4, the new log-probs too.
    rows = torch.tensor([2, 4])
    with torch.no_grad():
        new = response_logprobs(t.policy, rollout.input_ids[rows], rollout.attention_mask[rows], rollout.mask.shape[1])
    T = s.mask.shape[1]
    for name, x in {"logprob": rollout.logprobs[rows], "advantage": exp.advantages[rows], "new_logprob": new}.items():
        torch.testing.assert_close(s.tokens[name][s.mask], x[:, :T][s.mask].float(), rtol=2e-6, atol=2e-6, msg=name)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:.*quantize_per:UserWarning")
def test_a_quantised_sampler_records_its_logprobs_and_the_mismatch(tmp_path):
    rec = RolloutRecorder(tmp_path / "rollouts.jsonl", per_step=3)
    t = make_trainer(rec)
    t.generator = type(t.generator)(t.policy, t.tokenizer, GenerationConfig(max_new_tokens=8, sampler_quantization="int8"),
                                    t.ref, t.value)
    rollout, exp, stats = step_by_hand(t)
    s = load_rollouts(tmp_path)[0]
    T = s.mask.shape[1]
    got = s.tokens["sampler_logprob"][s.mask]
    torch.testing.assert_close(got, rollout.sampler_logprobs[:3, :T][s.mask], rtol=2e-6, atol=2e-6)
    diff = (rollout.logprobs - rollout.sampler_logprobs)[:3, :T][s.mask]
    torch.testing.assert_close(s.tokens["mismatch"][s.mask], diff, rtol=1e-5, atol=2e-6)
    assert float(diff.abs().max()) > 0
    assert stats["mismatch/logprob_abs_mean"] > 0
    assert s.means["mismatch/logprob_abs_mean"] == pytest.approx(stats["mismatch/logprob_abs_mean"], rel=1e-6)


def test_the_policys_own_sampler_records_no_sampler_columns(tmp_path):
    rec = RolloutRecorder(tmp_path / "rollouts.jsonl", per_step=2)
    step_by_hand(make_trainer(rec))
    s = load_rollouts(tmp_path)[0]
    assert "sampler_logprob" not in s.tokens and "mismatch" not in s.tokens
    assert s.means["mismatch/logprob_abs_max"] == 0.0
