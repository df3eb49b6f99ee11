"""Synthetic preference pairs: sample several translations per source, score them against the
reference, and pair a clearly better one (chosen) with a clearly worse one (rejected).

Files written in ``out_dir``:

* ``synthetic_preferences.jsonl`` -- the pairs, one JSON object a line (schema: `PAIR_FIELDS`).
  This is what DPO / reward-model training reads (`load_preferences`).
* ``synthetic_candidates.jsonl`` -- one line per finished source: its deduplicated, scored
  candidates and how many pairs it gave (``n_pairs``). A source's line is its commit record.
* ``synthetic_run.json`` -- the settings the run was started with (resuming checks them).
* ``synthetic_data_stats.json`` -- statistics recomputed from the two JSONL files at the end.

Resuming. Each batch of sources is appended pairs first, candidates second, each write flushed
and fsynced, so a kill loses at most the batch being written. On start the two files are
reconciled: a torn last line (a kill mid-write) is dropped, and a source counts as done only if
its candidates line is present *and* the pairs file holds exactly its ``n_pairs`` pairs;
anything else of an unfinished source is removed before it is generated again. A re-run thus
never duplicates a pair, and a finished run re-run changes nothing. Sampling is seeded per batch
from (seed, strategy, the batch's source ids) over fixed batches of the example list, so a
resumed run samples exactly what an uninterrupted one would (same batch_size and hardware).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..data import TranslationExample, build_prompt
from ..errors import UserError
from ..io import atomic_open, write_json
from .strategies import PAIR_STRATEGIES, SamplingStrategy, SynthConfig

__all__ = [
    "CANDIDATES_FILE",
    "PAIR_FIELDS",
    "PREFERENCES_FILE",
    "PreferenceFileError",
    "RUN_FILE",
    "STATS_FILE",
    "generate_synthetic_preferences",
    "load_preferences",
    "normalize_whitespace",
    "select_pairs",
]

logger = logging.getLogger(__name__)

PREFERENCES_FILE = "synthetic_preferences.jsonl"
CANDIDATES_FILE = "synthetic_candidates.jsonl"
RUN_FILE = "synthetic_run.json"
STATS_FILE = "synthetic_data_stats.json"
_RUN_FORMAT = 1

# One pair line, in the order written. Scores are the metric's sentence scores.
PAIR_FIELDS: dict[str, type] = {
    "prompt": str,  # the exact text the candidates were generated from (prompt_fn's output)
    "source": str,
    "reference": str,  # the corpus target the candidates were scored against
    "direction": str,  # e.g. "eng->arb"
    "chosen": str,
    "rejected": str,
    "chosen_score": float,
    "rejected_score": float,
    "chosen_strategy": str,  # SamplingStrategy.name that first produced the text
    "rejected_strategy": str,
    "source_id": str,  # TranslationExample.id; (source_id, direction) identifies the source
}

Key = tuple[str, str]  # (source_id, direction)


class PreferenceFileError(UserError):
    """A preference or candidates file has a malformed line; the message is ``path:line: reason``."""

    def __init__(self, path: str | os.PathLike, line: int | None, reason: str):
        self.path, self.line, self.reason = str(path), line, reason
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {reason}")


# ---------------------------------------------------------------------------- small helpers


def normalize_whitespace(text: str) -> str:
    """Collapse whitespace runs to one space and strip: candidates that differ only in spacing
    are the same translation, and must not become a pair."""
    return re.sub(r"\s+", " ", text).strip()


def select_pairs(scores: Sequence[float], min_gap: float, pair_strategy: str, max_pairs: int) -> list[tuple[int, int]]:
    """(chosen, rejected) index pairs over one source's candidates, given their scores.

    A pair needs ``scores[chosen] >= scores[rejected] + min_gap``. "best_vs_worst" gives at most
    one pair, the highest-scoring candidate against the lowest; "all_above_threshold" gives every
    ordered pair that passes, largest gap first, at most `max_pairs`. Ties break by candidate
    index, so the result is deterministic.
    """
    if pair_strategy not in PAIR_STRATEGIES:
        raise ValueError(f"pair_strategy must be one of {', '.join(PAIR_STRATEGIES)}, got {pair_strategy!r}")
    n = len(scores)
    if n < 2:
        return []
    if pair_strategy == "best_vs_worst":
        best = min(range(n), key=lambda i: (-scores[i], i))
        worst = min(range(n), key=lambda i: (scores[i], i))
        return [(best, worst)] if scores[best] >= scores[worst] + min_gap else []
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j and scores[i] >= scores[j] + min_gap]
    pairs.sort(key=lambda p: (-(scores[p[0]] - scores[p[1]]), p[0], p[1]))
    return pairs[:max_pairs]


def _key(ex: TranslationExample) -> Key:
    return (str(ex.id), ex.direction)


def _batch_seed(seed: int, strategy: SamplingStrategy, keys: Sequence[Key]) -> int:
    """A torch seed that depends only on the run seed, the strategy and the batch's sources, so
    a batch samples the same candidates whether or not earlier batches ran in this process."""
    blob = json.dumps([seed, strategy.name, [list(k) for k in keys]], ensure_ascii=False).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big") & (2**63 - 1)


def _device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # a parameterless stand-in
        return torch.device("cpu")


# ------------------------------------------------------------------------------ sampling


@torch.no_grad()
def _sample(model, tokenizer, prompts: list[str], strategy: SamplingStrategy, n: int,
            max_new_tokens: int, seed: int) -> list[list[str]]:
    """`n` sampled continuations of each prompt (one generate call), decoded and stripped."""
    from transformers import GenerationConfig

    device = _device(model)
    # Same convention as the PPO rollouts (SequenceGenerator): no special tokens added, since a
    # chat template already carries its own BOS; left padding so every row ends at its prompt.
    enc = tokenizer(prompts, add_special_tokens=False, padding=True, padding_side="left", return_tensors="pt")
    input_ids, attention_mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    from ..sft.translate import stop_ids

    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    stops = stop_ids(tokenizer) + ([] if eos is None else [eos] if isinstance(eos, int) else list(eos))
    gen_cfg = GenerationConfig(
        do_sample=True,
        temperature=strategy.temperature,
        # 0 (not None) switches top-k off: transformers 5 fills a None from the model's
        # generation_config, then from the global default top_k=50.
        top_k=strategy.top_k,
        top_p=strategy.top_p,
        # Explicit neutral values, so a checkpoint's generation_config.json (e.g. a repetition
        # penalty) cannot silently change what a strategy means.
        typical_p=1.0, repetition_penalty=1.0, no_repeat_ngram_size=0, num_beams=1,
        max_new_tokens=max_new_tokens,
        num_return_sequences=n,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=list(dict.fromkeys(stops)),
        use_cache=True,
    )
    # fork_rng: seeding here must not disturb the caller's random stream.
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=gen_cfg)
    texts = tokenizer.batch_decode(out[:, input_ids.shape[1]:], skip_special_tokens=True)
    # generate() repeats each prompt n times in a row: rows b*n .. b*n+n-1 belong to prompt b.
    # One answer per line in few-shot prompts: the text ends at the first newline.
    texts = [t.split("\n", 1)[0].strip() for t in texts]
    return [texts[b * n:(b + 1) * n] for b in range(len(prompts))]


def _generate_chunk(model, tokenizer, prompts: list[str], keys: list[Key], config: SynthConfig) -> list[list[tuple[str, str]]]:
    """For each prompt, `candidates_per_source` (text, strategy name) in candidate order.

    One generate call per strategy for the whole chunk: strategy s samples candidates
    s, s + S, s + 2S, ... of every source (S = number of strategies).
    """
    n_cand, n_strat = config.candidates_per_source, len(config.strategies)
    out: list[list[tuple[str, str] | None]] = [[None] * n_cand for _ in prompts]
    for s, strategy in enumerate(config.strategies):
        indices = list(range(s, n_cand, n_strat))
        if not indices:
            continue
        seed = _batch_seed(config.seed, strategy, keys)
        samples = _sample(model, tokenizer, prompts, strategy, len(indices), config.max_new_tokens, seed)
        for b, texts in enumerate(samples):
            for i, text in zip(indices, texts):
                out[b][i] = (text, strategy.name)
    return out  # type: ignore[return-value]


# ------------------------------------------------------------------------- file handling


def _pair_problem(row: Any) -> str | None:
    """Why `row` is not a valid pair line, or None."""
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    missing = [k for k in PAIR_FIELDS if k not in row]
    if missing:
        return f"missing field(s) {missing}"
    for k, typ in PAIR_FIELDS.items():
        v = row[k]
        if typ is float:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                return f"field {k!r} must be a finite number, got {v!r}"
        elif not isinstance(v, str):
            return f"field {k!r} must be a string, got {type(v).__name__}"
    if not row["chosen"].strip() or not row["rejected"].strip():
        return "chosen and rejected must be non-empty"
    if row["chosen"] == row["rejected"]:
        return "chosen and rejected are the same text"
    if not row["chosen_score"] > row["rejected_score"]:
        return f"chosen_score {row['chosen_score']} does not exceed rejected_score {row['rejected_score']}"
    return None


def _candidates_problem(row: Any) -> str | None:
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    for k, typ in (("source_id", str), ("direction", str), ("n_pairs", int), ("n_generated", int),
                   ("candidates", list), ("empty_strategies", list)):
        if not isinstance(row.get(k), typ) or isinstance(row.get(k), bool):
            return f"field {k!r} must be a {typ.__name__}, got {row.get(k)!r}"
    for c in row["candidates"]:
        if not (isinstance(c, dict) and isinstance(c.get("text"), str) and isinstance(c.get("strategies"), list)
                and isinstance(c.get("score"), (int, float))):
            return "each candidate needs 'text', 'score' and 'strategies'"
    return None


def _read_lines(path: Path) -> tuple[list[tuple[int, str, dict]], bool]:
    """Complete lines of a JSONL file we wrote: [(line number, raw line, parsed)], torn.

    `torn` is True when the file ends without a newline: the tail of an interrupted append,
    which is dropped. Any other unreadable line is corruption and raises PreferenceFileError.
    """
    if not path.exists():
        return [], False
    data = path.read_bytes()
    parts = data.split(b"\n")
    torn = parts[-1] != b""
    rows = []
    for lineno, raw in enumerate(parts[:-1], start=1):
        try:
            text = raw.decode("utf-8")
            rows.append((lineno, text, json.loads(text)))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise PreferenceFileError(path, lineno, f"not valid JSON ({e}); the file was edited or damaged") from None
    return rows, torn


def _recover(out_dir: Path) -> dict[Key, dict]:
    """Reconcile the pairs and candidates files after a possible kill; return the finished
    sources (key -> candidates row). Rows of unfinished sources are removed from both files."""
    pref_path, cand_path = out_dir / PREFERENCES_FILE, out_dir / CANDIDATES_FILE
    pair_lines, pairs_torn = _read_lines(pref_path)
    cand_lines, cands_torn = _read_lines(cand_path)

    committed: dict[Key, dict] = {}
    for lineno, _, row in cand_lines:
        problem = _candidates_problem(row)
        if problem:
            raise PreferenceFileError(cand_path, lineno, problem)
        key = (row["source_id"], row["direction"])
        if key in committed:
            raise PreferenceFileError(cand_path, lineno, f"source {key} appears twice; the file was edited")
        committed[key] = row
    counts: Counter[Key] = Counter()
    for lineno, _, row in pair_lines:
        problem = _pair_problem(row)
        if problem:
            raise PreferenceFileError(pref_path, lineno, problem)
        counts[(row["source_id"], row["direction"])] += 1

    # Done = committed and all its pairs present. A source whose pairs were cut short (or
    # written but never committed) is redone from scratch.
    done = {k: row for k, row in committed.items() if counts[k] == row["n_pairs"]}
    keep_pairs = [raw for _, raw, row in pair_lines if (row["source_id"], row["direction"]) in done]
    keep_cands = [raw for _, raw, row in cand_lines if (row["source_id"], row["direction"]) in done]
    if pairs_torn or cands_torn or len(keep_pairs) != len(pair_lines) or len(keep_cands) != len(cand_lines):
        logger.warning(
            "%s: resuming an interrupted run: dropped %d pair line(s) and %d candidate line(s) of "
            "unfinished sources%s; they are generated again",
            out_dir, len(pair_lines) - len(keep_pairs), len(cand_lines) - len(keep_cands),
            " and a torn last line" if pairs_torn or cands_torn else "",
        )
        for path, lines in ((pref_path, keep_pairs), (cand_path, keep_cands)):
            with atomic_open(path) as f:
                f.write("".join(line + "\n" for line in lines))
    return done


def _settings(config: SynthConfig) -> dict:
    """What must not change between a run and its resumption (batch_size may: it only changes
    speed and, for the unfinished sources, which samples are drawn)."""
    d = json.loads(json.dumps(config.to_dict()))
    d.pop("batch_size")
    return d


def _check_run_file(out_dir: Path, config: SynthConfig) -> None:
    path = out_dir / RUN_FILE
    want = _settings(config)
    if path.exists():
        try:
            have = json.loads(path.read_text(encoding="utf-8"))["settings"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: unreadable run settings ({e!r}); restore it or use a fresh out_dir") from None
        diffs = [f"{k}: {have.get(k)!r} -> {want[k]!r}" for k in want if have.get(k) != want[k]]
        if diffs:
            raise ValueError(
                f"{out_dir} holds a run started with other settings ({'; '.join(diffs)}); "
                "resume with the original SynthConfig or use a fresh out_dir"
            )
        return
    for name in (PREFERENCES_FILE, CANDIDATES_FILE):
        if (out_dir / name).exists() and (out_dir / name).stat().st_size > 0:
            raise ValueError(
                f"{out_dir / name} exists but {path} does not, so the settings that produced it are "
                "unknown; move the file away or use a fresh out_dir"
            )
    write_json(path, {"format": _RUN_FORMAT, "settings": want})


def _append(path: Path, rows: list[dict]) -> None:
    """Append whole lines and make them durable before the next step depends on them."""
    if not rows:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


# ---------------------------------------------------------------------------- statistics


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _compute_stats(out_dir: Path, config: SynthConfig) -> dict[str, Any]:
    pair_lines, _ = _read_lines(out_dir / PREFERENCES_FILE)
    cand_lines, _ = _read_lines(out_dir / CANDIDATES_FILE)
    pairs = [row for _, _, row in pair_lines]
    cands = [row for _, _, row in cand_lines]

    per_strategy: dict[str, dict[str, Any]] = {}
    scores: dict[str, list[float]] = {s.name: [] for s in config.strategies}
    empty: Counter[str] = Counter()
    for row in cands:
        empty.update(row["empty_strategies"])
        for c in row["candidates"]:
            for name in c["strategies"]:  # a duplicate counts for every strategy that sampled it
                scores.setdefault(name, []).append(float(c["score"]))
    chosen = Counter(p["chosen_strategy"] for p in pairs)
    rejected = Counter(p["rejected_strategy"] for p in pairs)
    for name, xs in scores.items():
        per_strategy[name] = {
            "candidates": len(xs), "empty": empty[name], "mean_score": _mean(xs),
            "chosen": chosen[name], "rejected": rejected[name],
        }
    per_direction: dict[str, dict[str, int]] = {}
    for row in cands:
        d = per_direction.setdefault(row["direction"], {"sources": 0, "pairs": 0})
        d["sources"] += 1
        d["pairs"] += row["n_pairs"]
    gaps = [p["chosen_score"] - p["rejected_score"] for p in pairs]
    return {
        "sources": len(cands),
        "sources_with_pairs": sum(1 for r in cands if r["n_pairs"] > 0),
        "candidates": sum(r["n_generated"] for r in cands),
        "empty_candidates": sum(len(r["empty_strategies"]) for r in cands),
        "unique_candidates": sum(len(r["candidates"]) for r in cands),
        "pairs": len(pairs),
        "mean_gap": _mean(gaps),
        "mean_chosen_score": _mean([p["chosen_score"] for p in pairs]),
        "mean_rejected_score": _mean([p["rejected_score"] for p in pairs]),
        "per_strategy": per_strategy,
        "per_direction": per_direction,
    }


# ------------------------------------------------------------------------------ main entry


def _check_examples(examples: list) -> None:
    seen: dict[Key, int] = {}
    for i, ex in enumerate(examples):
        for attr in ("source", "target", "src_lang", "tgt_lang", "id", "direction"):
            if not isinstance(getattr(ex, attr, None), str):
                raise TypeError(f"examples[{i}]: expected a TranslationExample, got {type(ex).__name__} "
                                f"(no string {attr!r})")
        if not ex.target.strip():
            raise ValueError(f"examples[{i}] (id {ex.id!r}): empty reference; candidates cannot be scored")
        key = _key(ex)
        if key in seen:
            raise ValueError(f"examples[{seen[key]}] and examples[{i}] share id {ex.id!r} and direction "
                             f"{ex.direction}; (id, direction) must be unique to track progress")
        seen[key] = i


def generate_synthetic_preferences(
    model,
    tokenizer,
    examples: Sequence[TranslationExample],
    metric,
    config: SynthConfig | None,
    out_dir: str | os.PathLike,
    prompt_fn: Callable[[TranslationExample], str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Sample candidates for every example, score them against its reference, write pairs.

    Args:
        model: a causal LM with ``generate`` (transformers, peft-wrapped or not).
        tokenizer: its tokenizer; needs a pad token.
        examples: the sources (their ``target`` is the reference); ``(id, direction)`` unique.
        metric: anything with ``sentence_scores(sources, hyps, refs) -> list[float]``, e.g.
            `ppolab.metrics.CombinedMetric`; higher is better.
        config: `SynthConfig` (None: the defaults).
        out_dir: where the files go; an existing run there is resumed (same settings required).
        prompt_fn: example -> the prompt text generated from; default
            ``build_prompt(ex.source, ex.src_lang, ex.tgt_lang, tokenizer)``. Pass the SFT
            model's convention here if it differs (e.g. a trailing space).
        progress: show a tqdm bar.

    Returns:
        The statistics also written to ``synthetic_data_stats.json``: counts over everything in
        `out_dir` (sources, candidates, unique_candidates, pairs, mean_gap, per_strategy, ...),
        plus ``sources_this_run``, ``sources_already_done``, ``seconds`` (this call's wall time)
        and ``config``.
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    config = SynthConfig() if config is None else config
    if not isinstance(config, SynthConfig):
        raise TypeError(f"config must be a SynthConfig, got {type(config).__name__}")
    config.validate()
    if not callable(getattr(metric, "sentence_scores", None)):
        raise TypeError(f"metric must have sentence_scores(sources, hyps, refs); got {type(metric).__name__}")
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token (batched generation pads); "
                         "set tokenizer.pad_token = tokenizer.eos_token")
    examples = list(examples)
    _check_examples(examples)
    if prompt_fn is None:
        def prompt_fn(ex: TranslationExample) -> str:
            return build_prompt(ex.source, ex.src_lang, ex.tgt_lang, tokenizer)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_run_file(out_dir, config)
    done = _recover(out_dir)
    already = sum(1 for ex in examples if _key(ex) in done)

    pref_path, cand_path = out_dir / PREFERENCES_FILE, out_dir / CANDIDATES_FILE
    # Batches are fixed slices of `examples`, so a resumed run regenerates a half-finished batch
    # with the same sources (hence the same seed and samples) as the interrupted one.
    bs = config.batch_size
    chunks = [examples[i:i + bs] for i in range(0, len(examples), bs)]
    n_new = n_new_pairs = 0
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    bar = tqdm(total=len(examples), initial=already, disable=not progress, unit="src", desc="synthetic pairs")
    try:
        for chunk in chunks:
            keys = [_key(ex) for ex in chunk]
            todo = [b for b, k in enumerate(keys) if k not in done]
            if not todo:
                continue
            prompts = []
            for ex in chunk:
                p = prompt_fn(ex)
                if not isinstance(p, str) or not p.strip():
                    raise ValueError(f"prompt_fn returned {p!r} for example id {ex.id!r}; expected a non-empty string")
                prompts.append(p)
            generated = _generate_chunk(model, tokenizer, prompts, keys, config)

            # Deduplicate per source (first sampler of a text keeps the credit), drop empties,
            # then score every unique candidate of the batch in one metric call.
            per_source = []
            for b in todo:
                texts: dict[str, list[str]] = {}
                empty_strats = []
                for text, strat in generated[b]:
                    norm = normalize_whitespace(text)
                    if not norm:
                        empty_strats.append(strat)
                    else:
                        texts.setdefault(norm, []).append(strat)
                per_source.append((b, texts, empty_strats))
            flat = [(b, t) for b, texts, _ in per_source for t in texts]
            scores: list[float] = []
            if flat:
                raw = metric.sentence_scores([chunk[b].source for b, _ in flat], [t for _, t in flat],
                                             [chunk[b].target for b, _ in flat])
                scores = [float(s) for s in raw]
                if len(scores) != len(flat):
                    raise ValueError(f"metric.sentence_scores returned {len(scores)} scores for {len(flat)} candidates")
                bad = [s for s in scores if not math.isfinite(s)]
                if bad:
                    raise ValueError(f"metric.sentence_scores returned non-finite score(s) {bad[:3]}")

            pair_rows, cand_rows = [], []
            pos = 0
            for b, texts, empty_strats in per_source:
                ex = chunk[b]
                cands = [(t, scores[pos + j], strats) for j, (t, strats) in enumerate(texts.items())]
                pos += len(cands)
                chosen_rejected = select_pairs([c[1] for c in cands], config.min_gap,
                                               config.pair_strategy, config.max_pairs_per_source)
                for ci, ri in chosen_rejected:
                    c, r = cands[ci], cands[ri]
                    pair_rows.append({
                        "prompt": prompts[b], "source": ex.source, "reference": ex.target,
                        "direction": ex.direction, "chosen": c[0], "rejected": r[0],
                        "chosen_score": c[1], "rejected_score": r[1],
                        "chosen_strategy": c[2][0], "rejected_strategy": r[2][0], "source_id": str(ex.id),
                    })
                cand_rows.append({
                    "source_id": str(ex.id), "direction": ex.direction, "n_pairs": len(chosen_rejected),
                    "n_generated": len(generated[b]), "empty_strategies": empty_strats,
                    "candidates": [{"text": t, "score": s, "strategies": st} for t, s, st in cands],
                })
            # Pairs first, then the candidates lines that commit their sources (see _recover).
            _append(pref_path, pair_rows)
            _append(cand_path, cand_rows)
            for b in todo:
                done[keys[b]] = {}
            n_new += len(todo)
            n_new_pairs += len(pair_rows)
            bar.update(len(todo))
            bar.set_postfix(pairs=n_new_pairs)
    finally:
        bar.close()
        if hasattr(model, "train"):
            model.train(was_training)

    stats = _compute_stats(out_dir, config)
    stats.update({
        "sources_this_run": n_new,
        "sources_already_done": already,
        "seconds": round(time.perf_counter() - start, 3),
        "config": json.loads(json.dumps(config.to_dict())),  # as the file holds it (lists)
    })
    write_json(out_dir / STATS_FILE, stats)
    return stats


def load_preferences(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a synthetic_preferences.jsonl: one dict per pair, validated.

    Every line must be a JSON object with the `PAIR_FIELDS` (extra keys are kept), distinct
    non-empty chosen/rejected texts and ``chosen_score > rejected_score``; the same pair
    (source_id, direction, chosen, rejected) may not appear twice. Blank lines are skipped.
    Raises `PreferenceFileError` naming ``file:line`` on the first bad line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"preference file not found: {path}")
    rows: list[dict[str, Any]] = []
    seen: dict[tuple, int] = {}
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                hint = ("; the last line looks cut off by an interrupted run: re-run "
                        "generate_synthetic_preferences on the same out_dir to repair it") if not raw.endswith(b"\n") else ""
                raise PreferenceFileError(path, lineno, f"not valid JSON ({e}){hint}") from None
            problem = _pair_problem(row)
            if problem:
                raise PreferenceFileError(path, lineno, problem)
            key = (row["source_id"], row["direction"], row["chosen"], row["rejected"])
            if key in seen:
                raise PreferenceFileError(path, lineno, f"duplicate of the pair on line {seen[key]}")
            seen[key] = lineno
            rows.append(row)
    return rows
