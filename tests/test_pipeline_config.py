"""Every field of every PipelineConfig section, set with `--set section.field=value` through the real
CLI parsing path, reaches the object the stage builds and uses (the PPOConfig given to PPOTrainer,
the GenerationConfig of its rollouts, the SFTConfig given to train_sft, ...).

The fields come from `dataclasses.fields`, so a field any branch adds to PPOConfig, GenerationConfig,
ModelConfig, SFTConfig, ... is walked with no change here; it only needs a valid non-default value
when its type has none in `by_type` (a string naming a choice, say): add it to `VALUES`.

Each probe runs the stage on a micro preset with the library functions it calls replaced by spies
that record what they are given and return tiny stand-ins, so a probe takes milliseconds to a second.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import shutil
import sys
import types
import typing
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from ppolab.cli import _settings, build_parser, main
from ppolab.config import ConfigError, GenerationConfig, ModelConfig, PPOConfig
from ppolab.data import load_shipped_corpus
from ppolab.errors import UserError
from ppolab.models import RewardModel, build_tiny_causal_lm, build_tokenizer
from ppolab.pipeline import Run, run_pipeline
from ppolab.pipeline import config as pc
from ppolab.pipeline.config import merge
from ppolab.pipeline.presets import preset_dict
from ppolab.preference import DPOConfig, ORPOConfig
from ppolab.reward import RewardTrainConfig
from ppolab.sft import SFTConfig
from ppolab.synthetic import SynthConfig
from test_pipeline import MICRO as PIPELINE_MICRO

# The micro preset every probe starts from (fast + test_pipeline's micro settings, smaller still):
# what a probe runs for real is tiny.
MICRO = merge(PIPELINE_MICRO, {"sft": {"train_limit": 40}, "generation": {"max_new_tokens": 4},
                               "eval": {"max_new_tokens": 4}})

# Valid non-default values where the type alone gives none (choices, paths) or where a field's
# validate() needs a particular one (divisibility, ranges). Fields of other branches' seams are
# listed ahead so their merge is walked at once.
VALUES = {
    "device": "cuda", "threads": 2,
    "data.valid_fraction": 0.2, "data.test_fraction": 0.2, "data.train": "mine.tsv", "data.valid": "mine_valid.tsv", "data.test": "mine_test.tsv", "data.pairs": "eng->arb",
    "prompt.format": "fewshot", "sft.checkpoint": "final",
    "model.policy_path": "some/model", "model.reward_path": "some/reward", "model.arch": "gemma2",
    "model.hidden_size": 64, "model.n_heads": 4, "model.n_kv_heads": 2, "model.value_init": "shared",
    "model.dtype": "bfloat16", "model.vocab_trim": "arabic", "model.lora_target_modules": ["q_proj"],
    "model.bnb_4bit_quant_type": "fp4", "model.sharding": "fsdp", "model.mixed_precision": "bf16",
    "generation.engine": "static", "generation.sampler_quantization": "int8",
    "synth.pair_strategy": "best_vs_worst", "synth.strategies": [{"name": "cool", "temperature": 0.5}],
    "reward_model.unfreeze_schedule": "top_first", "reward_model_human.unfreeze_schedule": "top_first",
    "reward_model.val_fraction": 0.95, "reward_model_human.val_fraction": 0.95,
    "reward_model.normalize_samples": 6, "reward_model_human.normalize_samples": 6,
    "feedback.annotator": "human",
    "dpo.loss_type": "ipo",
}
for _s in ("ppo", "ppo_final"):
    VALUES.update({f"{_s}.batch_size": 8, f"{_s}.minibatch_size": 4, f"{_s}.group_size": 2, f"{_s}.dual_clip": 3.0,
                   f"{_s}.kl_estimator": "k2", f"{_s}.kl_loss_estimator": "k1", f"{_s}.advantage_estimator": "reinforce_pp",
                   f"{_s}.loss_aggregation": "seq-mean-token-sum", f"{_s}.kl_in": "loss", f"{_s}.reward": "chrf",
                   f"{_s}.rollout_correction": "tis", f"{_s}.rollout_correction_level": "sequence"})
# A field whose effect needs another setting beside it: (section.field) -> extra --set items.
ALONGSIDE = {"ppo.chrf_weight": ["ppo.reward=\"model+chrf\""],
             "ppo_final.chrf_weight": ["ppo_final.reward=\"model+chrf\""]}


def by_type(hint, current):
    """A valid value of type `hint` that differs from `current`."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if args and type(None) in typing.get_args(hint):  # optional
        hint = args[0]
    if hint is bool:
        return not current
    if hint is int:
        return 1 if current is None else current + 1
    if hint is float:
        if current is None:
            return 1.0
        return current * 0.5 if current else 0.1
    if typing.get_origin(hint) in (tuple, list) and current:
        return list(current)[:1]
    return None


def walked():
    """(section or None, field name, annotation) of every field of every section, and the top level."""
    hints = typing.get_type_hints(pc.PipelineConfig)
    for f in dataclasses.fields(pc.PipelineConfig):
        if dataclasses.is_dataclass(hints[f.name]):
            sub = typing.get_type_hints(hints[f.name])
            for g in dataclasses.fields(hints[f.name]):
                if g.init:
                    yield f.name, g.name, sub[g.name]
        else:
            yield None, f.name, hints[f.name]


FIELDS = list(walked())
IDS = [f"{s}.{n}" if s else n for s, n, _ in FIELDS]


# -- the probe's run directory -----------------------------------------------------------------------
class Captured(Exception):
    """Raised by a spy once the stage has handed it what the probe checks."""


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """Models and files a run has when its later stages start, all tiny."""
    root = tmp_path_factory.mktemp("template")
    from ppolab.sft import save_sft

    texts = [t for ex in load_shipped_corpus("train") for t in (ex.source, ex.target)]
    tok = build_tokenizer(texts, vocab_size=400)
    mcfg = ModelConfig(arch="llama", n_layers=1, hidden_size=32, n_heads=2, n_kv_heads=1, intermediate_size=64)
    policy = build_tiny_causal_lm(mcfg, tok)
    for name in ("sft", "ppo_model_coldstart"):
        save_sft(policy, tok, root / name)
    rm = RewardModel.from_causal_lm(build_tiny_causal_lm(mcfg, tok), tok)
    for name in ("reward_model_coldstart", "reward_model_human"):
        rm.save(root / name)
    examples = load_shipped_corpus("train")[:40]
    with open(root / "synthetic_preferences.jsonl", "w", encoding="utf-8") as f:
        for i, ex in enumerate(examples):
            f.write(json.dumps({"prompt": f"P{i}", "source": ex.source, "reference": ex.target,
                                "direction": ex.direction, "chosen": f"good {i}", "rejected": f"bad {i}",
                                "chosen_score": 0.6, "rejected_score": 0.1, "chosen_strategy": "t0.7",
                                "rejected_strategy": "t1.6", "source_id": f"s{i}"}, ensure_ascii=False) + "\n")
    with open(root / "human_preferences.jsonl", "w", encoding="utf-8") as f:
        for i, ex in enumerate(examples[:20]):
            f.write(json.dumps({"item_id": i, "source": ex.source, "direction": ex.direction,
                                "chosen": f"better {i}", "rejected": f"worse {i}"}, ensure_ascii=False) + "\n")
    flores = root / "flores.tsv"
    rows = load_shipped_corpus("test", src="eng")[:6]
    french = load_shipped_corpus("test", src="fra")[:6]
    flores.write_text("id\teng\tfra\tarb\n" + "".join(f"{i}\t{e.source}\t{f_.source}\t{e.target}\n"
                                                     for i, (e, f_) in enumerate(zip(rows, french))), encoding="utf-8")
    (root / "micro.json").write_text(json.dumps(MICRO))
    return root


def patch_everywhere(monkeypatch, original, fake) -> None:
    """Replace `original` by `fake` in every ppolab module that holds it (imported at the top or
    read from its package at call time)."""
    for name, mod in list(sys.modules.items()):
        if name == "ppolab" or name.startswith("ppolab."):
            for attr, value in list(vars(mod).items()):
                if value is original:
                    monkeypatch.setattr(mod, attr, fake)


class Spies:
    """The library functions a stage calls, replaced by recorders returning tiny stand-ins."""

    def __init__(self, monkeypatch, template: Path, run_ppo_steps: bool = False):
        import ppolab.feedback
        import ppolab.ppo
        import ppolab.reward
        import ppolab.sft
        import ppolab.synthetic
        from ppolab.models import builders, tokenizer as tok_module

        self.seen = defaultdict(list)
        self.template = template
        real_load_sft, real_rm_load = ppolab.sft.load_sft, RewardModel.load
        translation = importlib.import_module("ppolab.sft.translate")  # ppolab.sft.translate is the function
        real_translate = translation.translate  # replaced: probes need no decoding
        seen = self.seen

        def load_sft(path, model_config=None):
            seen[ModelConfig].append(model_config)
            return real_load_sft(template / "sft")

        def rm_load(path, mcfg=None):
            seen[ModelConfig].append(mcfg)
            return real_rm_load(template / "reward_model_coldstart")

        def wrap_lora(model, mcfg):
            seen["wrap_lora"].append(mcfg)
            return model

        real_build_tokenizer, real_build_tiny = tok_module.build_tokenizer, builders.build_tiny_causal_lm

        def build_tokenizer_(texts, vocab_size=512):
            seen["vocab_size"].append(vocab_size)
            return real_build_tokenizer(list(texts)[:200], vocab_size=400)

        def build_tiny(mcfg, tok):
            seen[ModelConfig].append(mcfg)
            return real_build_tiny(ModelConfig(arch="llama", n_layers=1, hidden_size=32, n_heads=2,
                                                             n_kv_heads=1, intermediate_size=64), tok)

        def train_sft(model, tok, train, valid=None, config=None, out_dir=None, **kwargs):
            seen[SFTConfig].append(config)
            if out_dir is not None:  # as train_sft does: a final and a best-validation checkpoint
                for name in ("final", "best"):
                    shutil.copytree(template / "sft", Path(out_dir) / name, dirs_exist_ok=True)
            seen["sft_train"].append(list(train))
            seen["prompt_format"].append(getattr(tok, "ppolab_prompt_format", None))
            return [{"epoch": 1, "train_loss": 1.0, "valid_chrf": 1.0}]

        def evaluate_translation(model, tok, examples, max_new_tokens=64, batch_size=32, **kwargs):
            seen["evaluate"].append({"n": len(examples), "max_new_tokens": max_new_tokens, "batch_size": batch_size})
            return {"chrf": 1.0, "bleu": 1.0, "chrf_pp": 1.0, "n": len(examples), "hypotheses": [""] * len(examples)}

        def synth(model, tok, examples, metric, config, out_dir, **kwargs):
            seen[SynthConfig].append(config)
            seen["synth_examples"].append(list(examples))
            raise Captured

        def build_reward_model(lm, tok, config=None, **kwargs):
            seen[RewardTrainConfig].append(config)
            return real_rm_load(template / "reward_model_coldstart")

        def train_reward_model(model, pairs, valid_pairs=None, config=None, **kwargs):
            seen[RewardTrainConfig].append(config)
            seen["rm_pairs"].append((list(pairs), list(valid_pairs)))
            return [{"epoch": 1, "val_accuracy": 0.5, "train_accuracy": 0.5}]

        def normalize(model, prompts, responses):
            seen["normalize_n"].append(len(prompts))
            raise Captured

        class Trainer:
            def __init__(self, config, policy, ref, value, reward, tokenizer, generation=None, recorder=None, **kw):
                seen[PPOConfig].append(config)
                seen[GenerationConfig].append(generation)
                seen["recorder"].append(recorder)
                seen["reward"].append(reward)
                if not run_ppo_steps:
                    raise Captured
                self.policy, self.value, self.steps_done = policy, value, 0
                self.policy_optimizer = torch.optim.SGD(policy.parameters(), lr=0.0)
                self.value_optimizer = torch.optim.SGD(value.parameters(), lr=0.0) if value is not None else None
                self.kl_controller = types.SimpleNamespace(value=0.1)

            def ppo_step(self, prompts):
                seen["ppo_steps"].append(len(prompts))
                return {"score_mean": 0.0, "kl_per_token": 0.0, "kl": 0.0, "timings": {}, "generated_texts": ["x"]}

            def state_dict(self):
                return {"steps_done": self.steps_done}

            def load_state_dict(self, sd):
                self.steps_done = sd["steps_done"]

        def save_sft(*args, **kwargs):
            raise Captured

        def translate(model, tok, sources, src, tgt, **kwargs):
            """Distinct texts of distinct lengths (chrF against a reference varies), no decoding."""
            seen["translate"].append(kwargs)
            n = kwargs.get("num_return_sequences", 1)
            texts = [[f"{s[: 3 + i + j]}" for j in range(n)] for i, s in enumerate(sources)]
            return texts if n > 1 else [t[0] for t in texts]

        class Store:
            def __init__(self, path, shown=3, **kwargs):
                seen["shown"].append(shown)

            def stats(self):
                return {"items": 0}

            def add_items(self, items):
                seen["feedback_items"].append(len(items))

        def make_server(store, port=0, **kwargs):
            seen["port"].append(port)
            return types.SimpleNamespace(serve_forever=lambda: None, url="http://probe", shutdown=lambda: None,
                                         server_close=lambda: None)

        def annotate(url, references, name="x", custom_every=0):
            seen["custom_every"].append(custom_every)
            raise Captured

        def train_preference(policy, tok, pairs, config, **kwargs):
            seen[type(config)].append(config)
            raise Captured

        from ppolab.feedback import simulated

        for original, fake in ((real_load_sft, load_sft), (ppolab.sft.train_sft, train_sft),
                               (builders.wrap_lora, wrap_lora), (real_build_tiny, build_tiny),
                               (real_build_tokenizer, build_tokenizer_),
                               (translation.evaluate_translation, evaluate_translation),
                               (ppolab.synthetic.generate_synthetic_preferences, synth),
                               (ppolab.reward.build_reward_model, build_reward_model),
                               (ppolab.reward.train_reward_model, train_reward_model),
                               (ppolab.reward.normalize_reward_model, normalize),
                               (ppolab.ppo.PPOTrainer, Trainer), (ppolab.sft.save_sft, save_sft),
                               (ppolab.feedback.FeedbackStore, Store), (ppolab.feedback.make_server, make_server),
                               (simulated.simulate_annotator, annotate), (real_translate, translate),
                               (ppolab.preference.train_dpo, train_preference),
                               (ppolab.preference.train_orpo, train_preference)):
            patch_everywhere(monkeypatch, original, fake)
        monkeypatch.setattr(RewardModel, "load", rm_load)
        monkeypatch.setattr(torch, "set_num_threads", lambda n: seen["threads"].append(n))
        monkeypatch.setenv("PPOLAB_FLORES", str(template / "flores.tsv"))


# section -> the stage that reads it (the CLI's `demo` settings, run with only=[stage])
STAGE_OF = {None: "sft", "data": "sft", "tokenizer": "sft", "prompt": "sft", "sft": "sft", "eval": "sft",
            "synth": "synth", "reward_model": "reward_model", "model": "ppo_coldstart",
            "generation": "ppo_coldstart", "ppo": "ppo_coldstart", "feedback": "feedback",
            "reward_model_human": "reward_model_human", "ppo_final": "ppo_final"}


def probe(monkeypatch, template, tmp_path, sets: list[str], command: str = "demo", run_ppo_steps=False):
    """Parse `--set` items as the CLI does, run the section's stage with spies; return (cfg, spies, error)."""
    run_dir = tmp_path / "run"
    shutil.copytree(template, run_dir)
    spies = Spies(monkeypatch, template, run_ppo_steps=run_ppo_steps)
    spies.seen["run_dir"].append(run_dir)
    argv = [command, "--preset", "fast", "--config", str(template / "micro.json")]
    argv += ["--run", str(run_dir)] if command != "demo" else ["--out", str(run_dir)]
    for item in sets:
        argv += ["--set", item]
    args = build_parser().parse_args(argv)
    cfg = _settings(args)  # the real CLI parsing path
    return cfg, spies, run_dir


def run_stage(cfg, run_dir, stage):
    try:
        run_pipeline(Run(run_dir, cfg), cfg, only=[stage])
    except (Captured, UserError, RuntimeError) as e:
        return e
    return None


# Fields the pipeline itself reads: (section, field) -> check(cfg, seen, value, error) -> bool.
def _last(seen, key):
    assert seen[key], f"the stage never reached {key}"
    return seen[key][-1]


def _split_sizes(seen):
    train, val = _last(seen, "rm_pairs")
    return len(train), len(val)


OWN = {
    (None, "seed"): lambda cfg, seen, v, e: _last(seen, SFTConfig).seed == v,
    (None, "threads"): lambda cfg, seen, v, e: v in seen["threads"],
    (None, "device"): lambda cfg, seen, v, e: isinstance(e, RuntimeError) and "device=cuda" in str(e),
    ("tokenizer", "vocab_size"): lambda cfg, seen, v, e: _last(seen, "vocab_size") == v,
    ("prompt", "format"): lambda cfg, seen, v, e: _last(seen, "prompt_format") == v,
    ("sft", "checkpoint"): lambda cfg, seen, v, e: json.loads(
        (_last(seen, "run_dir") / "stages.json").read_text())["sft"]["checkpoint"] == v,
    ("sft", "train_limit"): lambda cfg, seen, v, e: len(_last(seen, "sft_train")) == v,
    ("data", "pairs"): lambda cfg, seen, v, e: {ex.direction for ex in _last(seen, "sft_train")} == {v},
    ("eval", "test_limit"): lambda cfg, seen, v, e: seen["evaluate"][0]["n"] == v,
    ("eval", "max_new_tokens"): lambda cfg, seen, v, e: {c["max_new_tokens"] for c in seen["evaluate"]} == {v},
    ("eval", "batch_size"): lambda cfg, seen, v, e: {c["batch_size"] for c in seen["evaluate"]} == {v},
    ("eval", "flores_limit"): lambda cfg, seen, v, e: len(seen["evaluate"]) == 2 and seen["evaluate"][1]["n"] == 2 * v,
    ("synth", "n_sources"): lambda cfg, seen, v, e: len(_last(seen, "synth_examples")) == v,
    ("reward_model", "val_fraction"): lambda cfg, seen, v, e: _split_sizes(seen)[1] > _split_sizes(seen)[0],
    ("reward_model", "normalize_samples"): lambda cfg, seen, v, e: _last(seen, "normalize_n") == v,
    ("reward_model", "reference_pairs"): lambda cfg, seen, v, e: any(
        p.get("chosen_score") == 1.0 for p in _last(seen, "rm_pairs")[0]),
    ("reward_model_human", "val_fraction"): lambda cfg, seen, v, e: _split_sizes(seen)[1] >= 15,
    ("reward_model_human", "normalize_samples"): lambda cfg, seen, v, e: _last(seen, "normalize_n") == v,
    ("reward_model_human", "mix_synthetic"): lambda cfg, seen, v, e: (
        _split_sizes(seen)[0] - (20 - _split_sizes(seen)[1]) == v),
    ("feedback", "items"): lambda cfg, seen, v, e: _last(seen, "feedback_items") == v,
    ("feedback", "candidates"): lambda cfg, seen, v, e: _last(seen, "translate")["num_return_sequences"] == v,
    ("feedback", "shown"): lambda cfg, seen, v, e: _last(seen, "shown") == v,
    ("feedback", "custom_every"): lambda cfg, seen, v, e: _last(seen, "custom_every") == v,
    ("feedback", "port"): lambda cfg, seen, v, e: _last(seen, "port") == v,
    ("feedback", "annotator"): lambda cfg, seen, v, e: isinstance(e, UserError) and "feedback.annotator" in str(e),
}
for _key in ("train", "valid", "test", "valid_fraction", "test_fraction"):
    OWN[("data", _key)] = (lambda k: lambda cfg, seen, v, e: isinstance(e, UserError) and f"data.{k}" in str(e))(_key)
for _s in ("ppo", "ppo_final"):
    OWN[(_s, "steps")] = lambda cfg, seen, v, e: len(seen["ppo_steps"]) == v
    OWN[(_s, "record_rollouts")] = lambda cfg, seen, v, e: _last(seen, "recorder").per_step == v
    OWN[(_s, "reward")] = lambda cfg, seen, v, e: set(_last(seen, "reward").parts) == {"chrf"}
    OWN[(_s, "chrf_weight")] = lambda cfg, seen, v, e: _last(seen, "reward").parts["chrf"][1] == v
OWN[("ppo_final", "lr_factor")] = lambda cfg, seen, v, e: _last(seen, PPOConfig).lr == pytest.approx(cfg.ppo_final.lr * v)
OWN[("ppo_final", "lr")] = lambda cfg, seen, v, e: _last(seen, PPOConfig).lr == pytest.approx(v * cfg.ppo_final.lr_factor)


def library_class(section_cls, field_name):
    """The library dataclass (not a pipeline stage-keys class) a section's field belongs to, if any."""
    for base in section_cls.__mro__:
        if (dataclasses.is_dataclass(base) and not base.__module__.startswith("ppolab.pipeline")
                and field_name in {f.name for f in dataclasses.fields(base)}):
            return base
    return None


@pytest.mark.parametrize("section, name, hint", FIELDS, ids=IDS)
def test_every_setting_reaches_the_object_its_stage_uses(section, name, hint, template, tmp_path, monkeypatch):
    key = f"{section}.{name}" if section else name
    base = pc.config_from_dict(merge(preset_dict("fast"), MICRO))
    current = getattr(getattr(base, section) if section else base, name)
    value = VALUES.get(key, by_type(hint, current))
    assert value is not None and value != current, f"{key}: give a valid non-default value in VALUES"
    if key == "device" and torch.cuda.is_available():
        pytest.skip("device=cuda is the default path on a machine with a GPU")
    sets = [f"{key}={json.dumps(value)}"] + ALONGSIDE.get(key, [])
    section_cls = type(getattr(base, section)) if section else pc.PipelineConfig
    command = section if section in ("dpo", "orpo") else "demo"
    own = OWN.get((section, name))
    steps = own is not None and name == "steps"
    cfg, spies, run_dir = probe(monkeypatch, template, tmp_path, sets, command, run_ppo_steps=steps)
    resolved = getattr(getattr(cfg, section) if section else cfg, name)
    expected = tuple(value) if isinstance(resolved, tuple) and isinstance(value, list) else value
    if key == "synth.strategies":
        expected = tuple(pc.SynthConfig(strategies=value).strategies)
    assert resolved == expected, f"--set {key} did not reach the PipelineConfig"
    if command in ("dpo", "orpo"):
        with pytest.raises(Captured):
            main([command, "--preset", "fast", "--config", str(template / "micro.json"), "--run", str(run_dir),
                  "--set", sets[0]])
        error = None
    else:
        error = run_stage(cfg, run_dir, STAGE_OF[section])
    seen = spies.seen
    if own is not None:
        assert own(cfg, seen, value, error), f"{key}={value!r} did not reach the stage ({error!r})"
        return
    lib = library_class(section_cls, name)
    assert lib is not None, f"{key}: a pipeline key with no check: add one to OWN"
    assert seen[lib], f"{key}: the stage never built a {lib.__name__} ({error!r})"
    got = getattr(seen[lib][-1], name)
    assert got == expected, f"{key}: {lib.__name__}.{name} given to the stage is {got!r}, not {expected!r}"


@pytest.mark.parametrize("command", ["dpo", "orpo"])
def test_dpo_and_orpo_load_the_policy_with_the_model_section(command, template, tmp_path, monkeypatch):
    """LoRA, dtype, quantisation and vocabulary trim reach the DPO/ORPO policy as they do PPO's."""
    sets = ["model.lora=true", "model.dtype=\"bfloat16\"", "model.vocab_trim=\"arabic\"", f"{command}.lr=0.001"]
    cfg, spies, run_dir = probe(monkeypatch, template, tmp_path, sets, command)
    argv = [command, "--preset", "fast", "--config", str(template / "micro.json"), "--run", str(run_dir)]
    with pytest.raises(Captured):
        main(argv + [x for s in sets for x in ("--set", s)] + ["--beta", "0.3"])
    mcfg = spies.seen[ModelConfig][-1]
    assert (mcfg.lora, mcfg.dtype, mcfg.vocab_trim) == (True, "bfloat16", "arabic")
    assert spies.seen["wrap_lora"] == [mcfg]
    trained = spies.seen[DPOConfig if command == "dpo" else ORPOConfig][-1]
    assert (trained.lr, trained.beta) == (0.001, 0.3)  # --beta: a shorthand of --set {command}.beta


# -- the loader's errors ----------------------------------------------------------------------------
@pytest.mark.parametrize("data, expected", [
    ({"ppo": {"stepz": 1}}, "unknown setting 'ppo.stepz'; the settings of ppo are: adam_eps, "),
    ({"ppo": {"max_new_tokens": 8}}, "unknown setting 'ppo.max_new_tokens' (now generation.max_new_tokens)"),
    ({"nope": 1}, "unknown setting 'nope'; the sections and top-level settings are: seed, device"),
    ({"ppo": {"steps": "ten"}}, "setting ppo.steps = 'ten': expected an integer"),
    ({"ppo": {"lr": True}}, "setting ppo.lr = True: expected a number"),
    ({"eval": {"test_limit": 2.5}}, "setting eval.test_limit = 2.5: expected an integer or null"),
    ({"model": {"lora_target_modules": ["q", 3]}}, "setting model.lora_target_modules[1] = 3: expected a string"),
    ({"generation": {"top_p": 0}}, "setting generation.top_p = 0.0: expected in (0, 1]"),
    ({"sft": {"epochs": -1}}, "setting sft.epochs = -1: expected an int >= 1"),
    ({"sft": {"epochs": 0}}, "setting sft.epochs = 0: skipping SFT needs an already fine-tuned model"),
    ({"dpo": {"label_smoothing": 0.7}}, "setting dpo.label_smoothing = 0.7: expected in [0, 0.5)"),
    ({"ppo": {"minibatch_size": 32}}, "setting ppo.batch_size = 16: 16 is not divisible by minibatch_size 32"),
    ({"ppo": {"minibatch_size": 3}, "ppo_final": {"batch_size": 9}},
     "setting ppo.batch_size = 16: 16 is not divisible by minibatch_size 3"),
    ({"ppo": {"adaptive_kl": True}, "ppo_final": {"kl_in": "loss"}},
     "setting ppo_final.adaptive_kl (from ppo.adaptive_kl) = True: steers the reward penalty's coefficient"),
    ({"feedback": {"annotator": "robot"}}, "setting feedback.annotator = 'robot': expected one of 'simulated' or"),
    ({"data": {"pairs": "eng-arb"}}, "setting data.pairs = 'eng-arb': expected comma-separated src->tgt"),
    ({"ppo": 5}, "setting ppo = 5: expected a table of settings"),
    ({"device": "tpu"}, "setting device = 'tpu': expected 'cpu' or 'cuda'"),
])
def test_errors_name_the_setting_the_value_and_what_was_expected(data, expected):
    from ppolab.pipeline import resolve

    with pytest.raises(ConfigError) as e:
        resolve("cpu-test", data)
    assert expected in str(e.value), str(e.value)


def test_layered_sections_start_from_their_base_and_keep_their_own_keys():
    from ppolab.pipeline import resolve

    cfg = resolve("cpu-test", {"ppo": {"kl_coef": 0.3, "lr": 1e-4}, "reward_model": {"max_length": 170}})
    assert cfg.ppo_final.kl_coef == 0.3 and cfg.ppo_final.batch_size == 32 and cfg.ppo.batch_size == 16
    assert cfg.ppo_final.stage_lr == pytest.approx(1e-4 * 0.6) and cfg.ppo.stage_lr == 1e-4
    assert cfg.reward_model_human.max_length == 170 and cfg.reward_model_human.epochs == 3
    assert resolve("cpu-test", {"seed": 7}).ppo_final.seed == 7  # every section's seed: the top-level one
    assert resolve("cpu-test", {"seed": 7, "sft": {"seed": 2}}).sft.seed == 2


def test_show_config_prints_the_resolved_settings_that_load_back_to_the_same_config(capsys):
    from ppolab.pipeline import resolve

    assert main(["demo", "--preset", "gemma-cpu", "--set", "ppo.clip_eps=0.1", "--show-config"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["ppo"]["clip_eps"] == 0.1 and shown["model"]["policy_path"] == "gemma3-270m"
    assert pc.config_from_dict(shown) == resolve("gemma-cpu", {"ppo": {"clip_eps": 0.1}})
