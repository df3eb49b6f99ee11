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

STAGE_COMMANDS = {"sft": "sft", "synth": "synth", "train-rm": "reward_model", "ppo": "ppo_coldstart"}


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


def _settings(args) -> dict:
    from .config import ConfigError
    from .pipeline.presets import get_preset, merge, parse_override
    from .pipeline.validate import validate_settings

    cfg = get_preset(args.preset)
    if getattr(args, "config", None):
        path = Path(args.config)
        try:
            cfg = merge(cfg, _config_file(path))
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    for item in getattr(args, "set", None) or []:
        cfg = merge(cfg, parse_override(item))
    return validate_settings(cfg)


def _add_settings(p: argparse.ArgumentParser, run_required: bool = True) -> None:
    p.add_argument("--preset", default="cpu-test", help="cpu-test (default), fast, research, production, gemma-cpu (the `gemma` extra)")
    p.add_argument("--config", help="JSON or YAML file of settings overriding the preset")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one setting, e.g. ppo.steps=10")
    if run_required:
        p.add_argument("--run", required=True, help="run directory")


def cmd_demo(args) -> int:
    from .pipeline import Run, run_pipeline, write_report
    from .pipeline.report import targets

    cfg = _settings(args)
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
    from .pipeline import Run, run_pipeline

    cfg = _settings(args)
    run = Run(args.run, cfg)
    stage = "ppo_final" if args.command == "ppo" and args.final else STAGE_COMMANDS[args.command]
    results = run_pipeline(run, cfg, only=[stage])
    print(json.dumps({k: v for k, v in results.get(stage, {}).items() if k != "history"}, indent=2, default=str))
    return 0


def cmd_preference(args) -> int:
    """DPO or ORPO from the SFT model on the run's synthetic preferences."""
    from .pipeline.stages import _evaluate, _load_policy, _rm_pair
    from .preference import DPOConfig, ORPOConfig, train_dpo, train_orpo
    from .synthetic import load_preferences

    cfg = _settings(args)
    run = Path(args.run)
    policy, tok = _load_policy(run / "sft")
    pairs = [_rm_pair(p) for p in load_preferences(run / "synthetic_preferences.jsonl")]
    out = run / f"{args.command}_model"
    if args.command == "dpo":
        history = train_dpo(policy, tok, pairs, DPOConfig(beta=args.beta, lr=args.lr, epochs=args.epochs,
                                                          loss_type=args.loss_type), out_dir=out)
    else:
        history = train_orpo(policy, tok, pairs, ORPOConfig(beta=args.beta, lr=args.lr, epochs=args.epochs), out_dir=out)
    ev = _evaluate(policy, tok, cfg)
    print(json.dumps({"model": str(out), "steps": len(history), "last": history[-1] if history else None,
                      "chrf_test": ev["chrf"], "bleu_test": ev["bleu"]}, indent=2, default=float))
    return 0


def cmd_translate(args) -> int:
    import torch

    from .data import build_prompt
    from .models import RewardModel
    from .model_files import check_model_folder, check_reward_folder
    from .pipeline.stages import as_response
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

    if args.action in HUMAN_ACTIONS:
        return cmd_human_feedback(args)
    run = Path(args.run)
    if not run.is_dir():
        # FeedbackStore would create the folder and an empty store: a typo must not look like "no items".
        raise UserError(f"{run}: no such run directory" if not run.exists() else f"{run}: not a directory")
    store_path = run / "feedback.sqlite"
    if args.action == "export":
        path = FeedbackStore(store_path).export_jsonl(run)
        print(f"wrote {path}")
    elif args.action == "cli":
        from .feedback import run_terminal

        n = run_terminal(FeedbackStore(store_path), annotator=args.annotator)
        print(f"saved {n} judgements")
    elif args.action == "import":
        from .feedback import load_ratings, pairs_from_ratings
        from .io import write_jsonl

        pairs = pairs_from_ratings(load_ratings(args.file), min_difference=args.min_difference,
                                   default_direction=args.direction)
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


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="ppolab", description="PPO for RLHF of language models: EN/FR -> AR showcase.")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("demo", help="the whole loop on the embedded default (tiny models, shipped corpus, CPU)")
    _add_settings(p, run_required=False)
    p.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    p.set_defaults(fn=cmd_demo)

    for name, helptext in (("sft", "supervised fine-tuning"), ("synth", "synthetic preference pairs"),
                           ("train-rm", "cold-start reward model"), ("ppo", "PPO (cold start; --final for the final stage)")):
        p = sub.add_parser(name, help=helptext)
        _add_settings(p)
        if name == "ppo":
            p.add_argument("--final", action="store_true", help="the final stage (human-tuned reward model)")
        p.set_defaults(fn=cmd_stage)

    for name in ("dpo", "orpo"):
        p = sub.add_parser(name, help=f"{name.upper()} from the SFT model on the run's synthetic preferences")
        _add_settings(p)
        p.add_argument("--beta", type=float, default=0.1)
        p.add_argument("--lr", type=float, default=5e-6 if name == "dpo" else 8e-6)
        p.add_argument("--epochs", type=int, default=1)
        if name == "dpo":
            p.add_argument("--loss-type", default="sigmoid", choices=["sigmoid", "ipo"])
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
    for action in ("cli", "export", "import"):
        q = fsub.add_parser(action)
        q.add_argument("--run", required=True)
        if action == "cli":
            q.add_argument("--annotator")
        if action == "import":
            q.add_argument("file", help="ratings JSON: [{source, direction, responses: [{text, rating}]}]")
            q.add_argument("--min-difference", type=float, default=1.0)
            q.add_argument("--direction", help="the pair of records that name none, e.g. eng->arb")
    _add_human_commands(sub, fsub)
    p.set_defaults(fn=cmd_feedback)

    p = sub.add_parser("inspect", help="the rollout inspector: PPO token by token (web page, or --html FILE)")
    p.add_argument("--run", required=True, help="run directory (its rollouts.jsonl) or a rollouts .jsonl file")
    p.add_argument("--html", metavar="OUT.html", help="write one self-contained static page instead of serving")
    p.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1: no authentication, keep it local")
    p.add_argument("--port", type=int, default=8001)
    p.set_defaults(fn=cmd_inspect)
    return ap


# -- real people in the loop (issue 18; kept together to keep merges easy) ----------------------------
HUMAN_ACTIONS = ("add", "serve", "annotate")


def _run_dir(path: str) -> Path:
    run = Path(path)
    if not run.is_dir():
        # FeedbackStore would create the folder and an empty store: a typo must not look like "no items".
        raise UserError(f"{run}: no such run directory" if not run.exists() else f"{run}: not a directory")
    return run


def _run_pairs(cfg: dict) -> list[str]:
    from .data import parse_pairs

    pairs = (cfg.get("data") or {}).get("pairs") or "eng->arb,fra->arb"
    return [f"{s}->{t}" for s, t in parse_pairs(pairs)]


def cmd_human_feedback(args) -> int:
    """`feedback add` queues sources; `serve` and `annotate` show candidates of the run's newest
    policy (ranked by its newest reward model) for queued and typed sentences."""
    from .feedback import FeedbackStore
    from .pipeline.human import RunCandidates, run_config

    run_path = _run_dir(args.run)
    cfg = run_config(run_path, args.preset, args.set or [])
    directions = _run_pairs(cfg)
    store = FeedbackStore(run_path / "feedback.sqlite", shown=cfg["feedback"]["shown"])
    if args.action == "add":
        direction = args.direction or directions[0]
        if direction not in directions:
            raise UserError(f"--direction {direction}: this run's pairs are {', '.join(directions)}")
        if args.text is not None:
            texts, where = [args.text], "--text"
        else:
            texts, where = read_utf8(Path(args.file), "--file").splitlines(), args.file
        texts = [t.strip() for t in texts if t.strip()]
        if not texts:
            raise UserError(f"{where}: no sentence to queue (one sentence a line)")
        store.queue_sources([(t, direction) for t in texts])
        print(f"queued {len(texts)} source(s) ({direction}); {store.queued()} waiting. Annotate them with "
              f"`ppolab feedback serve --run {run_path}` or `ppolab feedback annotate --run {run_path}`")
        return 0
    model = {}
    try:
        if not (run_path / "run.json").exists():
            raise LookupError  # a folder holding a store only: its stored items, no model
        source = RunCandidates(run_path, cfg)
        print(f"candidates: {cfg['feedback']['candidates']} samples of {source.models['policy']}, ranked by "
              f"{source.models['reward']}; {store.queued()} queued source(s)")
        model = {"candidate_source": source, "model_version": source.model_version, "directions": directions}
    except LookupError:
        pass
    except UserError as e:  # a run with no trained policy yet: the stored items only
        print(f"note: {e}; showing the stored items only", file=sys.stderr)
    if args.action == "annotate":
        from .feedback import run_terminal
        from .feedback.items import ItemMaker

        items = ItemMaker(store, model.get("candidate_source"), model.get("model_version", ""),
                          directions=directions)
        print(f"saved {run_terminal(items, annotator=args.annotator)} judgements; retrain with "
              f"`ppolab retrain --run {run_path}`")
        return 0
    from .feedback import serve

    try:
        serve(store, host=args.host, port=args.port, allowed_hosts=args.allow_host or (), **model)
    except OSError as e:
        reason = "port already in use; pick another with --port" if e.errno == errno.EADDRINUSE else e.strerror
        raise UserError(f"cannot listen on {args.host} port {args.port}: {reason}") from None
    return 0


def cmd_retrain(args) -> int:
    """Human round n: judgements -> human reward model -> final PPO; then the report."""
    from .pipeline import write_report
    from .pipeline.human import retrain, run_config
    from .pipeline.run import Run

    run_path = _run_dir(args.run)
    cfg = run_config(run_path, args.preset, args.set or [])
    torch_threads(cfg)
    run = Run(run_path, cfg)
    result = retrain(run, cfg)
    try:
        write_report(run)
        print(f"report: {run / 'report.md'}")
    finally:
        run.close()
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "history"} if isinstance(v, dict) else v
                      for k, v in result.items()}, indent=2, default=str))
    return 0


def torch_threads(cfg: dict) -> None:
    import torch

    torch.set_num_threads(int(cfg.get("threads") or 1))


def _add_human_commands(sub, fsub) -> None:
    for action in HUMAN_ACTIONS:
        q = fsub.add_parser(action, help={"add": "queue sources for candidates from the run's newest policy",
                                          "serve": "the annotation web page (queued and typed sentences)",
                                          "annotate": "annotate in the terminal (queued and typed sentences)"}[action])
        q.add_argument("--run", required=True)
        q.add_argument("--preset", default="cpu-test", help="settings a run.json of another version lacks")
        q.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one of the run's settings")
        if action == "add":
            g = q.add_mutually_exclusive_group(required=True)
            g.add_argument("--file", help="sources, one sentence a line")
            g.add_argument("--text", help="one source sentence")
            q.add_argument("--direction", help="the pair, e.g. eng->arb (default: the run's first)")
        if action == "serve":
            q.add_argument("--host", default="127.0.0.1")
            q.add_argument("--port", type=int, default=8000)
            q.add_argument("--allow-host", action="append", metavar="NAME",
                           help="another name browsers use for this server (the Host header), e.g. the "
                                "machine's name with --host 0.0.0.0; others get 421 (DNS rebinding)")
        if action == "annotate":
            q.add_argument("--annotator")
    p = sub.add_parser("retrain", help="judgements so far -> human reward model -> final PPO (a new round each call)")
    p.add_argument("--run", required=True)
    p.add_argument("--preset", default="cpu-test", help="settings a run.json of another version lacks")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one of the run's settings")
    p.set_defaults(fn=cmd_retrain)


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
