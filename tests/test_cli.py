import json
import subprocess
import sys

import pytest

from ppolab.cli import build_parser, main

COMMANDS = ["demo", "sft", "synth", "train-rm", "ppo", "dpo", "orpo", "translate", "evaluate", "feedback"]


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_subcommand_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    assert "usage: ppolab" in capsys.readouterr().out


def test_console_script_is_declared():
    import tomllib
    from pathlib import Path

    meta = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert meta["project"]["scripts"]["ppolab"] == "ppolab.cli:main"


def test_evaluate_reads_a_flores_style_tsv(tmp_path, capsys):
    from ppolab.config import ModelConfig
    from ppolab.models import build_tiny_causal_lm, build_tokenizer
    from ppolab.sft.trainer import save_sft

    tsv = tmp_path / "devtest.eng-fra-arb.tsv"
    tsv.write_text("id\teng\tfra\tarb\n1\t\"Hello\" there.\tBonjour.\tمرحبا.\n2\tThanks.\tMerci.\tشكرا.\n",
                   encoding="utf-8")
    tok = build_tokenizer(["Hello there", "Bonjour", "مرحبا شكرا"], vocab_size=300)
    model = build_tiny_causal_lm(ModelConfig(arch="llama", n_layers=1, hidden_size=32, n_heads=2, n_kv_heads=1,
                                             intermediate_size=64), tok)
    save_sft(model, tok, tmp_path / "model")
    for src in ("eng", "fra"):
        assert main(["evaluate", "--model", str(tmp_path / "model"), "--corpus", str(tsv), "--src", src,
                     "--max-new-tokens", "4"]) == 0
        out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert out["n"] == 2 and out["direction"] == f"{src}->arb" and {"chrf", "chrf_pp", "bleu"} <= set(out)


def test_unknown_override_is_a_clear_error(tmp_path, capsys):
    assert main(["sft", "--run", str(tmp_path), "--set", "ppo.nope=1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unknown setting 'ppo.nope'; the settings of ppo are: ") and err.count("\n") == 1
    assert "clip_eps, " in err  # the known keys, from the dataclasses


# -- user errors: one line naming the file or setting, exit 1, no traceback (item 5, 6, 9) -----------
@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from ppolab.config import ModelConfig
    from ppolab.models import build_tiny_causal_lm, build_tokenizer
    from ppolab.sft.trainer import save_sft

    out = tmp_path_factory.mktemp("model") / "model"
    tok = build_tokenizer(["Hello there", "Bonjour", "مرحبا شكرا"], vocab_size=300)
    model = build_tiny_causal_lm(ModelConfig(arch="llama", n_layers=1, hidden_size=32, n_heads=2, n_kv_heads=1,
                                             intermediate_size=64), tok)
    save_sft(model, tok, out)
    return out


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("setting, expected", [
    ("ppo.steps=ten", "setting ppo.steps = 'ten': expected an integer"),
    ("ppo=5", "setting ppo = 5: expected a table of settings"),
    ("ppo.lr=fast", "setting ppo.lr = 'fast': expected a number"),
    ("seed=abc", "setting seed = 'abc': expected an integer"),
    ("ppo.steps=0", "setting ppo.steps = 0: expected a value >= 1"),
    ("ppo.lr=-1e-5", "setting ppo.lr = -1e-05: expected"),
    ("ppo_final.batch_size=12", "setting ppo_final.batch_size = 12: 12 is not divisible by minibatch_size 8"),
    ("synth.candidates_per_source=2", "setting synth.candidates_per_source = 2: expected an int in 3..8"),
    ("ppo.whiten_advantages=1", "setting ppo.whiten_advantages = 1: expected true or false"),
    ("eval.test_limit=many", "setting eval.test_limit = 'many': expected"),
])
def test_bad_settings_fail_before_any_stage_with_one_line(tmp_path, capsys, setting, expected):
    run = tmp_path / "run"
    err = _one_line_error(capsys, ["ppo", "--run", str(run), "--set", setting])
    assert expected in err
    assert not run.exists()  # nothing written, no stage started


def test_settings_with_null_defaults_accept_null_and_their_type():
    from ppolab.pipeline import PRESETS, resolve

    for override in ({"eval": {"test_limit": 5}}, {"eval": {"test_limit": None}}, {"synth": {"n_sources": None}},
                     {"sft": {"eval_limit": None}}, {"ppo": {"lr": 1}}):
        resolve("cpu-test", override)
    for name in PRESETS:
        resolve(name)


def test_a_field_added_to_a_section_dataclass_is_settable_and_typed_by_its_annotation():
    """No list of settings to keep: a new field of a section's dataclass is read by the loader at once."""
    import dataclasses

    from ppolab.config import ConfigError
    from ppolab.pipeline.config import EvalConfig, PipelineConfig, config_from_dict

    @dataclasses.dataclass
    class Eval2(EvalConfig):
        brand_new_limit: int = 50

    @dataclasses.dataclass
    class Tree(PipelineConfig):
        eval: Eval2 = dataclasses.field(default_factory=Eval2)

    assert config_from_dict({"eval": {"brand_new_limit": 10}}, Tree).eval.brand_new_limit == 10
    with pytest.raises(ConfigError, match="eval.brand_new_limit = 'all': expected an integer"):
        config_from_dict({"eval": {"brand_new_limit": "all"}}, Tree)


def test_the_pipeline_itself_refuses_bad_settings(tmp_path):
    import dataclasses

    from ppolab.config import ConfigError
    from ppolab.pipeline import Run, get_preset, run_pipeline

    cfg = get_preset("fast")
    cfg = dataclasses.replace(cfg, ppo=dataclasses.replace(cfg.ppo, steps=0))  # built around the loader
    with pytest.raises(ConfigError, match="ppo.steps = 0"):
        run_pipeline(Run(tmp_path, cfg), cfg)
    with pytest.raises(ConfigError, match="ppo.steps = 0"):
        run_pipeline(Run(tmp_path, {}), {"ppo": {"steps": 0}})  # a plain dict goes through the loader
    assert not (tmp_path / "sft").exists()


@pytest.mark.parametrize("content, expected", [
    ("[1, 2]", "expected an object of settings"),
    ('{"ppo": {"steps": }', ":1: invalid JSON"),
    ('{"ppo": {"stepz": 1}}', "unknown setting 'ppo.stepz'"),
    ('{"ppo": {"steps": "ten"}}', "setting ppo.steps = 'ten': expected an integer"),
])
def test_a_bad_config_file_is_named(tmp_path, capsys, content, expected):
    path = tmp_path / "settings.json"
    path.write_text(content)
    err = _one_line_error(capsys, ["sft", "--run", str(tmp_path / "run"), "--config", str(path)])
    assert str(path) in err and expected in err


def test_a_config_file_that_is_not_utf8_is_named(tmp_path, capsys):
    path = tmp_path / "settings.json"
    path.write_bytes(b'{"seed": 1,\n "x": "\xff"}')
    err = _one_line_error(capsys, ["sft", "--run", str(tmp_path / "run"), "--config", str(path)])
    assert f"{path}:2: invalid UTF-8" in err


def test_debug_keeps_the_traceback(tmp_path):
    from ppolab.config import ConfigError

    with pytest.raises(ConfigError):
        main(["sft", "--run", str(tmp_path), "--set", "seed=abc", "--debug"])


def test_a_truncated_safetensors_is_named(tiny_model_dir, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    err = _one_line_error(capsys, ["translate", "--model", str(broken), "Hello"])
    assert f"{weights}: truncated safetensors file" in err


@pytest.mark.parametrize("remove, expected", [
    (("tokenizer.json", "tokenizer_config.json"), "no tokenizer files"),
    (("model.safetensors",), "no weights"),
    (("config.json",), "no config.json"),
])
def test_an_incomplete_model_folder_is_named(tiny_model_dir, tmp_path, capsys, remove, expected):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    for name in remove:
        (broken / name).unlink()
    err = _one_line_error(capsys, ["evaluate", "--model", str(broken), "--corpus", "x.tsv", "--src", "eng"])
    assert str(broken) in err and expected in err


def test_a_missing_model_folder_is_named(tmp_path, capsys):
    err = _one_line_error(capsys, ["translate", "--model", str(tmp_path / "nope"), "Hello"])
    assert f"{tmp_path / 'nope'}: no such model folder" in err


def test_a_bad_corpus_row_is_named(tiny_model_dir, tmp_path, capsys):
    tsv = tmp_path / "c.eng-arb.tsv"
    tsv.write_text("id\teng\tarb\n1\tHello.\tمرحبا.\n2\tOnly two\n", encoding="utf-8")
    err = _one_line_error(capsys, ["evaluate", "--model", str(tiny_model_dir), "--corpus", str(tsv), "--src", "eng"])
    assert f"{tsv}:3" in err


@pytest.mark.parametrize("command", ["translate", "feedback import"])
def test_invalid_utf8_input_is_named(tiny_model_dir, tmp_path, capsys, command):
    bad = tmp_path / "input.txt"
    bad.write_bytes(b"Hello.\n\xc3\x28 broken\n")
    argv = (["translate", "--model", str(tiny_model_dir), "--file", str(bad)] if command == "translate"
            else ["feedback", "import", "--run", str(tmp_path), str(bad)])
    assert f"{bad}:2: invalid UTF-8" in _one_line_error(capsys, argv)


@pytest.mark.parametrize("action", ["serve", "export", "cli"])
def test_feedback_on_a_missing_run_directory_is_an_error(tmp_path, capsys, monkeypatch, action):
    import ppolab.feedback

    # Were the check missing, serve would listen forever: fail the test instead of hanging it.
    monkeypatch.setattr(ppolab.feedback, "serve", lambda *a, **k: pytest.fail("served a missing run directory"))
    missing = tmp_path / "typo"
    err = _one_line_error(capsys, ["feedback", action, "--run", str(missing)])
    assert f"{missing}: no such run directory" in err and not missing.exists()


def test_translate_without_reward_model_prints_strict_json(tiny_model_dir, capsys):
    assert main(["translate", "--model", str(tiny_model_dir), "--n", "3", "--top", "2", "--max-new-tokens", "3",
                 "Hello"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    out = json.loads(line, parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
    assert all(c["score"] is None for c in out["candidates"]) and 1 <= len(out["candidates"]) <= 2


@pytest.mark.parametrize("flag", ["--top", "--n"])
@pytest.mark.parametrize("value", ["-1", "0"])
def test_translate_rejects_counts_below_one(tiny_model_dir, capsys, flag, value):
    with pytest.raises(SystemExit) as e:
        main(["translate", "--model", str(tiny_model_dir), flag, value, "Hello"])
    assert e.value.code == 2 and f"argument {flag}: expected a whole number >= 1" in capsys.readouterr().err


def test_feedback_serve_passes_host_and_extra_names(tmp_path, monkeypatch):
    import ppolab.feedback

    seen = {}
    monkeypatch.setattr(ppolab.feedback, "serve", lambda store, **kw: seen.update(kw))
    assert main(["feedback", "serve", "--run", str(tmp_path), "--host", "::1", "--allow-host", "lab.local"]) == 0
    assert seen == {"host": "::1", "port": 8000, "allowed_hosts": ["lab.local"]}
