"""Per-rank memory of the trained state (parameters + gradients + AdamW state) with FSDP2, 1 vs N ranks.

    python benchmarks/fsdp_memory.py            # launches 1 and 2 gloo ranks, prints and writes JSON

Each rank builds the same small llama policy (8 layers, hidden 256, the tiny tokenizer), places it
with `dist.prepare_models`, runs one response-log-prob backward and one AdamW step, then counts the
bytes its own tensors hold (a DTensor counts its local shard) and its peak RSS. Sharded state
must fall to about 1/N per rank; RSS also holds the interpreter, torch and the full model built
before sharding, so it falls less.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "fsdp_memory.json"


def local_bytes(tensors) -> int:
    from torch.distributed.tensor import DTensor

    total = 0
    for t in tensors:
        if t is None:
            continue
        t = t.to_local() if isinstance(t, DTensor) else t
        total += t.numel() * t.element_size()
    return total


def rank_main(outdir: Path) -> None:
    import torch.distributed as tdist

    sys.path.insert(0, str(ROOT))
    from ppolab import distributed as dist
    from ppolab.config import ModelConfig
    from ppolab.models import Reference, build_policy, build_tokenizer
    from ppolab.token_attribution.logprobs import response_logprobs

    torch.set_num_threads(1)
    tdist.init_process_group("gloo")
    tok = build_tokenizer()
    cfg = ModelConfig(arch="llama", n_layers=8, hidden_size=256, n_heads=4, n_kv_heads=2, intermediate_size=1024)
    policy = build_policy(cfg, tok)
    policy, ref, _, _ = dist.prepare_models(policy, Reference(policy), None, None)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4)
    ids = torch.randint(5, len(tok), (4, 48), generator=torch.Generator().manual_seed(0))
    response_logprobs(policy, ids, torch.ones_like(ids), 24).sum().backward()
    opt.step()
    params = list(policy.parameters())
    ref_params = list(ref.parameters())
    state = [v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    row = {
        "rank": tdist.get_rank(), "world_size": tdist.get_world_size(),
        "policy_params_bytes": local_bytes(params), "grads_bytes": local_bytes(p.grad for p in params),
        "adamw_state_bytes": local_bytes(state), "reference_params_bytes": local_bytes(ref_params),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    row["trained_state_bytes"] = row["policy_params_bytes"] + row["grads_bytes"] + row["adamw_state_bytes"]
    (outdir / f"rank{row['rank']}_of{row['world_size']}.json").write_text(json.dumps(row))
    tdist.destroy_process_group()


def main() -> None:
    import tempfile

    outdir = Path(tempfile.mkdtemp())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    rows = {}
    for n in (1, 2):
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
                        __file__, "--rank", str(outdir)], check=True, env=env, cwd=ROOT)
        rows[n] = [json.loads((outdir / f"rank{r}_of{n}.json").read_text()) for r in range(n)]
    one = rows[1][0]
    result = {"model": "llama 8 layers, hidden 256, intermediate 1024, tiny tokenizer; fp32, AdamW", "runs": rows,
              "ratio_2_over_1": {k: max(r[k] for r in rows[2]) / one[k] for k in one if k.endswith("bytes")}}
    for n, rs in rows.items():
        for r in rs:
            print(f"{n} rank(s), rank {r['rank']}: trained state {r['trained_state_bytes'] / 2**20:.2f} MiB "
                  f"(params {r['policy_params_bytes'] / 2**20:.2f}, grads {r['grads_bytes'] / 2**20:.2f}, "
                  f"AdamW {r['adamw_state_bytes'] / 2**20:.2f}), reference {r['reference_params_bytes'] / 2**20:.2f}, "
                  f"peak RSS {r['peak_rss_bytes'] / 2**20:.0f} MiB")
    for k, v in result["ratio_2_over_1"].items():
        print(f"2 ranks / 1 rank, {k}: {v:.3f}")
    OUT.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--rank":
        rank_main(Path(sys.argv[2]))
    else:
        main()
