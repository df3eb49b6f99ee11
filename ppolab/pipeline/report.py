"""report.json (fixed keys), report.md and the PNG plots of a finished run."""
from __future__ import annotations

from ..io import atomic_open, write_json
from .run import Run
from .stages import STAGES


def _ppo_block(r: dict) -> dict:
    keys = ("reward_start", "reward_end", "kl_per_token_end", "kl_per_sequence_end", "chrf_test")
    return {k: float(r[k]) for k in keys}


EVAL_ROWS = tuple(s.name for s in STAGES if s.eval_row)  # the model rows, from the stage registry


def flores_block(stages: dict) -> dict | None:
    """`{model row: {"flores": {direction: {chrf, chrf_pp, bleu, n}}, "test": {...}}}` of the rows
    that were scored (presets with `eval.flores_limit`); None when none was."""
    rows = {n: stages[n]["eval"] for n in EVAL_ROWS if (stages.get(n) or {}).get("eval")}
    return rows or None


def build_report(run: Run) -> dict:
    s = run.stages
    report = {
        "sft": {"chrf_test": float(s["sft"]["chrf_test"]), "bleu_test": float(s["sft"]["bleu_test"])},
        "synthetic": {"pairs": int(s["synth"]["pairs"])},
        "reward_model": {"val_accuracy": float(s["reward_model"]["val_accuracy"])},
        "ppo_coldstart": _ppo_block(s["ppo_coldstart"]),
        "reward_model_human": {"val_accuracy": float(s["reward_model_human"]["val_accuracy"]),
                               "pairs": int(s["reward_model_human"]["pairs"])},
        "ppo_final": _ppo_block(s["ppo_final"]),
        "seconds": float(sum(v.get("seconds", 0.0) for v in s.values())),
    }
    flores = flores_block(s)
    if flores is not None:
        report["flores"] = flores
    return report


def _chrf(report: dict, row: str, direction: str) -> float | None:
    block = (report.get("flores", {}).get(row) or {}).get("flores") or {}
    return block.get(direction, {}).get("chrf")


def targets(report: dict) -> list[tuple[str, bool, str]]:
    """The seeds' checklist, each as (what, met, measured)."""
    out = [("cold-start reward model val accuracy >= 0.70", report["reward_model"]["val_accuracy"] >= 0.70,
            f"{report['reward_model']['val_accuracy']:.3f}")]
    for stage in ("ppo_coldstart", "ppo_final"):
        r = report[stage]
        gain = r["reward_end"] - r["reward_start"]
        out.append((f"{stage}: reward_end - reward_start >= 0.2", gain >= 0.2, f"{gain:+.3f}"))
        out.append((f"{stage}: kl_per_token_end <= 0.2", r["kl_per_token_end"] <= 0.2, f"{r['kl_per_token_end']:.4f}"))
        drop = report["sft"]["chrf_test"] - r["chrf_test"]
        out.append((f"{stage}: chrF not below SFT by more than 0.5", drop <= 0.5,
                    f"{r['chrf_test']:.2f} vs SFT {report['sft']['chrf_test']:.2f}"))
    if "flores" in report:  # the real-model goals (issue: Gemma 3 270M end to end)
        out.append(("cold-start reward model val accuracy >= 0.75 (real model)",
                    report["reward_model"]["val_accuracy"] >= 0.75, f"{report['reward_model']['val_accuracy']:.3f}"))
        for direction in ("eng->arb", "fra->arb"):
            base, sft, final = (_chrf(report, r, direction) for r in ("base", "sft", "ppo_final"))
            if base is not None and sft is not None:
                out.append((f"FLORES {direction}: SFT chrF >= base few-shot", sft >= base, f"{sft:.2f} vs {base:.2f}"))
            if sft is not None and final is not None:
                out.append((f"FLORES {direction}: PPO final chrF >= SFT + 1.0", final >= sft + 1.0,
                            f"{final:.2f} vs {sft:.2f}"))
        # The sum of the stage times: a resumed run counts each stage's last (completing) attempt.
        out.append(("whole preset <= 120 min on the 2-core machine", report["seconds"] <= 7200,
                    f"{report['seconds'] / 60:.1f} min"))
    return out


def flores_table(report: dict) -> list[str]:
    """Markdown rows: chrF / chrF++ / BLEU per model row, FLORES subset and shipped test split."""
    if "flores" not in report:
        return []
    dirs = ("eng->arb", "fra->arb")
    lines = ["", "## FLORES-200 devtest subset and shipped test split (chrF / chrF++ / BLEU)", "",
             "| model | " + " | ".join(f"FLORES {d}" for d in dirs) + " | " + " | ".join(f"test {d}" for d in dirs) + " |",
             "|---" * 5 + "|"]
    for row, block in report["flores"].items():
        cells = []
        for part in ("flores", "test"):
            for d in dirs:
                v = (block.get(part) or {}).get(d)
                cells.append(f"{v['chrf']:.2f} / {v['chrf_pp']:.2f} / {v['bleu']:.2f} (n={v['n']})" if v else "–")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines


def plot(run: Run) -> list[str]:
    import matplotlib  # heavy (~1 s), and only the report's plots need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (run / "plots").mkdir(exist_ok=True)
    written = []
    for key, title, fname in (("score_mean", "PPO reward (normalised RM score)", "ppo_reward.png"),
                              ("kl_per_token", "KL per token (k1, policy vs SFT)", "ppo_kl.png")):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for stage in ("ppo_coldstart", "ppo_final"):
            rows = [r for r in run.step_rows(stage) if key in r]  # each step once, latest attempt
            if rows:
                ax.plot([r["step"] for r in rows], [r[key] for r in rows], label=stage)
        ax.set_title(title)
        ax.set_xlabel("PPO step")
        ax.legend()
        fig.tight_layout()
        with atomic_open(run / "plots" / fname, "wb", encoding=None) as f:
            fig.savefig(f, format="png", dpi=100)
        plt.close(fig)
        written.append(fname)
    s = run.stages
    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = [n for n in ("sft", "ppo_coldstart", "ppo_final") if n in s]
    ax.plot(names, [s[n]["chrf_test"] for n in names], marker="o")
    ax.set_title("chrF on the shipped test split, by stage")
    fig.tight_layout()
    with atomic_open(run / "plots" / "chrf.png", "wb", encoding=None) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    written.append("chrf.png")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for n in ("reward_model", "reward_model_human"):
        hist = s.get(n, {}).get("history", [])
        if hist:
            ax.plot([h["epoch"] for h in hist], [h["val_accuracy"] for h in hist], marker="o", label=n)
    ax.set_title("Reward model validation accuracy by epoch")
    ax.set_xlabel("epoch")
    ax.legend()
    fig.tight_layout()
    with atomic_open(run / "plots" / "rm_accuracy.png", "wb", encoding=None) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    written.append("rm_accuracy.png")
    return written


def write_report(run: Run) -> dict:
    report = build_report(run)
    write_json(run / "report.json", report)
    plots = plot(run)
    s = run.stages
    lines = [
        "# ppolab run report", "",
        f"Run directory: `{run.path}`; total {report['seconds']:.0f} s.", "",
        "Human feedback in this run came from a **simulated annotator** (it ranks the shown candidates by "
        "sentence chrF against the reference and sometimes writes the reference as a better translation), "
        "submitting through the same HTTP API as the web page. No human was present.", "",
        "Rewards are normalised reward-model scores (mean 0, std 1 on SFT samples), averaged over the first "
        "and last 10% of PPO steps. KL is k1 between the policy and the stage's reference: the policy the stage "
        "started from (the SFT model for the cold start, the cold-start policy for the final stage).", "",
        "| stage | figures |", "|---|---|",
        f"| SFT ({s['sft'].get('checkpoint', 'final')} checkpoint, what later stages load) | test chrF "
        f"{report['sft']['chrf_test']:.2f}, BLEU {report['sft']['bleu_test']:.2f} |",
        f"| synthetic preferences | {report['synthetic']['pairs']} pairs |",
        f"| reward model (cold start) | val accuracy {report['reward_model']['val_accuracy']:.3f} |",
    ]
    for stage in ("ppo_coldstart", "ppo_final"):
        r = report[stage]
        lines.append(f"| {stage} | reward {r['reward_start']:+.3f} -> {r['reward_end']:+.3f}, KL/token "
                     f"{r['kl_per_token_end']:.4f}, KL/seq {r['kl_per_sequence_end']:.3f}, chrF {r['chrf_test']:.2f} |")
        if stage == "ppo_coldstart":
            h = report["reward_model_human"]
            lines.append(f"| human feedback + reward model | {h['pairs']} pairs from "
                         f"{s.get('feedback', {}).get('feedback', '?')} judgements, val accuracy {h['val_accuracy']:.3f} |")
    lines += flores_table(report)
    lines += ["", "## Stage times", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {name} | {v.get('seconds', 0):.0f} |" for name, v in s.items()]
    lines += ["", "## Targets", "", "| target | met | measured |", "|---|---|---|"]
    lines += [f"| {what} | {'yes' if ok else '**no**'} | {m} |" for what, ok, m in targets(report)]
    lines += ["", "## Plots", ""] + [f"![{p}](plots/{p})" for p in plots]
    with atomic_open(run / "report.md") as f:
        f.write("\n".join(lines) + "\n")
    return report
