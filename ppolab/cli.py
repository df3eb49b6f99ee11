"""The `ppolab` command: parse flags, pick a preset, call the pipeline. Heavy imports stay lazy."""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # ppolab never downloads weights or data
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from .errors import UserError  # noqa: E402 (no imports of its own)
from .io import read_utf8  # noqa: E402 (stdlib only)



def _config_file(path: Path) -> dict:
    text = read_utf8(path, "config file")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise UserError(f"{path}: invalid YAML ({' '.join(str(e).split())})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{e.lineno}: invalid JSON ({e.msg}, column {e.colno})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected an object of settings such as {{\"ppo\": {{\"steps\": 10}}}}, "
                        f"got a {type(data).__name__}")
    return data


# Flags kept as shorthands of settings: (argparse dest, section, key); None = not given.
SHORTHANDS = {"dpo": (("beta", "dpo", "beta"), ("lr", "dpo", "lr"), ("epochs", "dpo", "epochs"),
                      ("loss_type", "dpo", "loss_type")),
              "orpo": (("beta", "orpo", "beta"), ("lr", "orpo", "lr"), ("epochs", "orpo", "epochs"))}


def _settings(args):
    """The run's PipelineConfig: the preset, then `--config`, `--set` and shorthand flags, all
    read by the one strict loader (ppolab.pipeline.config.config_from_dict)."""
    from .config import ConfigError
    from .pipeline.config import config_from_dict, merge, parse_override
    from .pipeline.presets import preset_dict

    data = preset_dict(args.preset)
    if getattr(args, "config", None):
        path = Path(args.config)
        data = merge(data, _config_file(path))
        try:
            config_from_dict(data)  # the preset is valid: an error here is the file's
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    for item in getattr(args, "set", None) or []:
        data = merge(data, parse_override(item))
    for dest, section, key in SHORTHANDS.get(args.command, ()):
        if getattr(args, dest, None) is not None:
            data = merge(data, {section: {key: getattr(args, dest)}})
    return config_from_dict(data)


def _show_config(args, cfg) -> bool:
    """`--show-config`: print the resolved settings as JSON (and run nothing)."""
    if not getattr(args, "show_config", False):
        return False
    from .pipeline.config import config_to_dict

    print(json.dumps(config_to_dict(cfg), indent=2))
    return True


def _add_settings(p: argparse.ArgumentParser, run_required: bool = True) -> None:
    p.add_argument("--preset", default="cpu-test", help="cpu-test (default), fast, research, production, gemma-cpu (the `gemma` extra)")
    p.add_argument("--config", help="JSON or YAML file of settings overriding the preset")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one setting, e.g. ppo.steps=10")
    p.add_argument("--show-config", action="store_true", help="print the resolved settings as JSON and exit")
    if run_required:
        p.add_argument("--run", required=True, help="run directory")


def cmd_demo(args) -> int:
    from .pipeline import Run, run_pipeline, write_report
    from .pipeline.report import targets

    cfg = _settings(args)
    if _show_config(args, cfg):
        return 0
    run = Run(args.out, cfg)
    t0 = time.time()
    run_pipeline(run, cfg)
    report = write_report(run)
    run.close()
    print(json.dumps(report, indent=2))
    for what, ok, measured in targets(report):
        print(f"  [{'ok' if ok else 'MISSED'}] {what}: {measured}")
    import resource

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    print(f"report: {run / 'report.md'} ({time.time() - t0:.0f} s this invocation, peak RSS {peak_mb:.0f} MB)")
    if (run / "rollouts.jsonl").exists():
        print(f"PPO token by token: ppolab inspect --run {args.out}")
    return 0


def cmd_stage(args) -> int:
    from .pipeline import STAGES, Run, run_pipeline

    cfg = _settings(args)
    if _show_config(args, cfg):
        return 0
    run = Run(args.run, cfg)
    command = f"{args.command} --final" if getattr(args, "final", False) else args.command
    stage = next(s.name for s in STAGES if s.cli_name == command)
    results = run_pipeline(run, cfg, only=[stage])
    print(json.dumps({k: v for k, v in results.get(stage, {}).items() if k != "history"}, indent=2, default=str))
    return 0


def cmd_preference(args) -> int:
    """DPO or ORPO from the SFT model on the run's synthetic preferences, with the run's `model`
    section (LoRA, dtype, quantisation, vocabulary trim) applied exactly as in the PPO stages."""
    import dataclasses

    from .models import wrap_lora
    from .pipeline.evaluate import evaluate
    from .pipeline.models import load_policy, sft_dir
    from .pipeline.pairs import rm_pair
    from .preference import train_dpo, train_orpo
    from .sft import save_sft
    from .synthetic import load_preferences

    cfg = _settings(args)
    if _show_config(args, cfg):
        return 0
    run = Path(args.run)
    policy, tok = load_policy(sft_dir(run), cfg)
    if cfg.model.lora:  # the reference is then the base with the adapter off, as in PPO
        policy = wrap_lora(policy, cfg.model)
    pairs = [rm_pair(p) for p in load_preferences(run / "synthetic_preferences.jsonl")]
    out = run / f"{args.command}_model"
    section = getattr(cfg, args.command)
    history = (train_dpo if args.command == "dpo" else train_orpo)(policy, tok, pairs, section)
    if hasattr(policy, "merge_and_unload"):
        policy = policy.merge_and_unload()
    save_sft(policy, tok, out, extra={"training_log.json": {"trainer": args.command, "history": history,
                                                             "config": dataclasses.asdict(section)}})
    ev = evaluate(policy, tok, cfg)
    print(json.dumps({"model": str(out), "steps": len(history), "last": history[-1] if history else None,
                      "chrf_test": ev["chrf"], "bleu_test": ev["bleu"]}, indent=2, default=float))
    return 0


def cmd_translate(args) -> int:
    import torch

    from .data import build_prompt
    from .models import RewardModel
    from .model_files import check_model_folder, check_reward_folder
    from .pipeline.models import as_response
    from .sft import load_sft
    from .sft.translate import translate

    texts = [args.text] if args.text else [ln.strip() for ln in read_utf8(Path(args.file), "--file").splitlines()]
    texts = [t for t in texts if t]
    if not texts:
        raise UserError(f"{args.file or 'TEXT'}: nothing to translate (give TEXT or --file F with one sentence a line)")
    check_model_folder(args.model)
    if args.reward_model:
        check_reward_folder(args.reward_model)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    model, tok = load_sft(args.model)
    model.eval()
    reward = RewardModel.load(args.reward_model).eval() if args.reward_model else None
    for text in texts:
        t0 = time.perf_counter()
        cands = translate(model, tok, [text], args.src, "arb", do_sample=args.n > 1, num_return_sequences=args.n,
                          max_new_tokens=args.max_new_tokens)
        cands = cands[0] if args.n > 1 else [cands[0]]
        cands = list(dict.fromkeys(c for c in cands if c.strip())) or [""]
        if reward is not None:
            prompt = build_prompt(text, args.src, "arb", tok)
            scores = reward.score([prompt] * len(cands), [as_response(c) for c in cands]).tolist()
        else:
            scores = [None] * len(cands)  # no reward model, no score: JSON null (NaN is not JSON)
        ranked = sorted(zip(cands, scores), key=lambda cs: -cs[1] if cs[1] is not None else 0)[: args.top]
        latency = time.perf_counter() - t0
        print(json.dumps({"source": text, "candidates": [{"text": c, "score": s} for c, s in ranked],
                          "n": args.n, "seconds": round(latency, 3)}, ensure_ascii=False))
    return 0


def cmd_evaluate(args) -> int:
    import torch

    from .config import ModelConfig
    from .data import load_parallel
    from .model_files import check_model_folder
    from .sft import load_sft
    from .sft.translate import evaluate_translation

    # The cheap checks first: a bad folder or corpus fails before the model loads.
    check_model_folder(args.model)
    examples = list(load_parallel(args.corpus, src=args.src, tgt=args.tgt))
    if args.limit:
        examples = examples[: args.limit]
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    model, tok = load_sft(args.model, ModelConfig(vocab_trim=args.vocab_trim))
    model.eval()
    ev = evaluate_translation(model, tok, examples, max_new_tokens=args.max_new_tokens)
    print(json.dumps({"corpus": args.corpus, "direction": f"{args.src}->{args.tgt}", "n": ev["n"],
                      "chrf": ev["chrf"], "chrf_pp": ev["chrf_pp"], "bleu": ev["bleu"]}))
    return 0


def cmd_feedback(args) -> int:
    from .feedback import FeedbackStore

    run = Path(args.run)
    if not run.is_dir():
        # FeedbackStore would create the folder and an empty store: a typo must not look like "no items".
        raise UserError(f"{run}: no such run directory" if not run.exists() else f"{run}: not a directory")
    store_path = run / "feedback.sqlite"
    if args.action == "export":
        path = FeedbackStore(store_path).export_jsonl(run)
        print(f"wrote {path}")
    elif args.action == "serve":
        from .feedback import serve

        store = FeedbackStore(store_path)
        try:
            serve(store, host=args.host, port=args.port, allowed_hosts=args.allow_host or ())
        except OSError as e:
            reason = "port already in use; pick another with --port" if e.errno == errno.EADDRINUSE else e.strerror
            raise UserError(f"cannot listen on {args.host} port {args.port}: {reason}") from None
    elif args.action == "cli":
        from .feedback import run_terminal

        n = run_terminal(FeedbackStore(store_path), annotator=args.annotator)
        print(f"saved {n} judgements")
    elif args.action == "import":
        from .feedback import load_ratings, pairs_from_ratings
        from .io import write_jsonl

        pairs = pairs_from_ratings(load_ratings(args.file), min_difference=args.min_difference)
        out = run / "rating_preferences.jsonl"
        write_jsonl(out, pairs)
        print(f"wrote {len(pairs)} pairs to {out}")
    return 0


def cmd_inspect(args) -> int:
    """Serve the rollout inspector for a run, or write it as one static HTML file."""
    from .inspect.page import rollouts_file, write_html

    if not rollouts_file(args.run).exists():
        raise SystemExit(f"error: {rollouts_file(args.run)} not found: record rollouts with PPO first "
                         "(ppo.record_rollouts > 0; `ppolab demo` and examples/ppo_step_by_step.py do)")
    if args.html:
        print(f"wrote {write_html(args.run, args.html)}")
        return 0
    from .inspect import serve

    serve(args.run, host=args.host, port=args.port)
    return 0


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    """Every (sub)command takes --debug: user errors then show their traceback too."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                          help="show the Python traceback of any error")


def _stage_help(stage) -> str:
    """The first line of the stage module's docstring."""
    return (sys.modules[stage.run.__module__].__doc__ or stage.name).strip().splitlines()[0].rstrip(".")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="ppolab", description="PPO for RLHF of language models: EN/FR -> AR showcase.")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("demo", help="the whole loop on the embedded default (tiny models, shipped corpus, CPU)")
    _add_settings(p, run_required=False)
    p.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    p.set_defaults(fn=cmd_demo)

    # One command per stage the registry names (`cli_name`; "CMD --flag" is a flag of CMD), e.g.
    # `ppolab ppo` and `ppolab ppo --final`. The registry imports torch: every command loads it.
    from .pipeline.stages import STAGES

    commands: dict[str, list] = {}
    for s in STAGES:
        if s.cli_name:
            commands.setdefault(s.cli_name.split()[0], []).append(s)
    for name, stages in commands.items():
        p = sub.add_parser(name, help=" / ".join(_stage_help(s) for s in stages))
        _add_settings(p)
        for s in stages:
            flag = s.cli_name.split()[1:]
            if flag:
                p.add_argument(flag[0], action="store_true", help=f"the {s.name} stage: {_stage_help(s)}")
        p.set_defaults(fn=cmd_stage)

    for name in ("dpo", "orpo"):
        p = sub.add_parser(name, help=f"{name.upper()} from the SFT model on the run's synthetic preferences")
        _add_settings(p)
        # shorthands of --set {name}.beta=... etc. (SHORTHANDS); unset: the settings' value
        p.add_argument("--beta", type=float, help=f"= --set {name}.beta=...")
        p.add_argument("--lr", type=float, help=f"= --set {name}.lr=...")
        p.add_argument("--epochs", type=int, help=f"= --set {name}.epochs=...")
        if name == "dpo":
            p.add_argument("--loss-type", choices=["sigmoid", "ipo"], help="= --set dpo.loss_type=...")
        p.set_defaults(fn=cmd_preference)

    p = sub.add_parser("translate", help="N candidates ranked by the reward model")
    p.add_argument("--model", required=True)
    p.add_argument("--reward-model")
    p.add_argument("--n", type=_at_least_one, default=8)
    p.add_argument("--top", type=_at_least_one, default=3)
    p.add_argument("--src", default="eng", choices=["eng", "fra"])
    p.add_argument("--max-new-tokens", type=int, default=48)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("text", nargs="?")
    g.add_argument("--file")
    p.set_defaults(fn=cmd_translate)

    p = sub.add_parser("evaluate", help="chrF, chrF++ and BLEU of a model on a corpus, as JSON")
    p.add_argument("--model", required=True)
    p.add_argument("--corpus", required=True)
    p.add_argument("--src", required=True, choices=["eng", "fra"])
    p.add_argument("--tgt", default="arb")
    p.add_argument("--limit", type=int)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--vocab-trim", choices=["arabic"], help="output-head trim, as ModelConfig.vocab_trim "
                   "(the gemma-cpu preset uses arabic)")
    p.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser("feedback", help="human feedback: serve the web page, terminal mode, export, import")
    fsub = p.add_subparsers(dest="action", required=True)
    for action in ("serve", "cli", "export", "import"):
        q = fsub.add_parser(action)
        q.add_argument("--run", required=True)
        if action == "serve":
            q.add_argument("--host", default="127.0.0.1")
            q.add_argument("--port", type=int, default=8000)
            q.add_argument("--allow-host", action="append", metavar="NAME",
                           help="another name browsers use for this server (the Host header), e.g. the "
                                "machine's name with --host 0.0.0.0; others get 421 (DNS rebinding)")
        if action == "cli":
            q.add_argument("--annotator")
        if action == "import":
            q.add_argument("file", help="ratings JSON: [{source, direction, responses: [{text, rating}]}]")
            q.add_argument("--min-difference", type=float, default=1.0)
    p.set_defaults(fn=cmd_feedback)

    p = sub.add_parser("inspect", help="the rollout inspector: PPO token by token (web page, or --html FILE)")
    p.add_argument("--run", required=True, help="run directory (its rollouts.jsonl) or a rollouts .jsonl file")
    p.add_argument("--html", metavar="OUT.html", help="write one self-contained static page instead of serving")
    p.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1: no authentication, keep it local")
    p.add_argument("--port", type=int, default=8001)
    p.set_defaults(fn=cmd_inspect)
    return ap


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions whose message is the whole story: bad input, not a bug in ppolab."""
    from .config import ConfigError
    from .data.loaders import CorpusError
    from .feedback.store import FeedbackError

    return UserError, ConfigError, CorpusError, FeedbackError, FileNotFoundError, NotADirectoryError, IsADirectoryError


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except Exception as e:
        if getattr(args, "debug", False) or not isinstance(e, _user_errors()):
            raise  # a bug: the traceback is what a report needs
        print(f"error: {e}", file=sys.stderr)
        return 1
