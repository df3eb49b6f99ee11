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


def test_unknown_override_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown setting 'ppo.nope'"):
        main(["sft", "--run", str(tmp_path), "--set", "ppo.nope=1"])
