"""What the benchmark scripts share: a child process per measurement (JSON on its last stdout line,
its own peak RSS), /proc memory readings, and the tiny Llama set-up.

Each script runs as `python benchmarks/NAME.py`, so its folder is on sys.path: `from _common import ...`.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile

# glibc raises its mmap threshold each time a large block is freed, after which tensors of that size
# come from the heap and stay resident once freed: RSS would then count allocator cache, not live
# tensors. A fixed threshold keeps every tensor >= 128 KiB in its own mapping.
MMAP_THRESHOLD = str(128 * 1024)


def child_env(fixed_mmap_threshold: bool = True, **extra: str) -> dict[str, str]:
    """This process's environment for a child: offline, quiet, single tokenizer thread, `extra` on top."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}
    if fixed_mmap_threshold:
        env.setdefault("MALLOC_MMAP_THRESHOLD_", MMAP_THRESHOLD)
    env.update(extra)
    return env


def run_child(cmd: list[str], env: dict | None = None, what: str = "child", cwd=None,
              echo: bool = False, quiet: bool = True) -> dict:
    """Run `cmd`, return the JSON object on its last stdout line plus `peak_rss_mb` (the child's own).

    The peak is the child's `ru_maxrss` from `os.wait4` (its whole life, its reaped children too), so
    no other process's memory is in it. `quiet`: its stderr is kept and shown only if it fails;
    otherwise it goes to ours as it runs (progress). A failure raises naming `what`.
    """
    if echo:
        print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    with tempfile.TemporaryFile(mode="w+") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env if env is not None else child_env(), stdout=subprocess.PIPE,
                                stderr=err if quiet else None, text=True)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)  # rusage of this child (and its reaped children) only
        proc.returncode = os.waitstatus_to_exitcode(status)
        proc.stdout.close()
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                               f"{err.read()[-3000:]}{out[-1000:]}")
    res = json.loads(out.strip().splitlines()[-1])
    res.setdefault("peak_rss_mb", round(usage.ru_maxrss / 1024, 1))  # Linux: KiB
    return res


def rss_mib() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MiB, from /proc (Linux)."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(rest.split()[0]) / 1024  # kB -> MiB
    return fields["VmRSS"], fields["VmHWM"]


def reset_peak() -> None:
    """Make VmHWM restart from the current RSS (Linux >= 4.0), so the peak excludes import spikes."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """This process's peak RSS so far in MB (`ru_maxrss`, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tiny_model_config(layers: int, hidden: int, heads: int = 4, kv_heads: int | None = None,
                      intermediate: int | None = None, arch: str = "llama", **fields):
    """The benchmarks' tiny `ModelConfig`: MLP width 4 x hidden and kv heads = heads unless given."""
    from ppolab.config import ModelConfig

    return ModelConfig(arch=arch, n_layers=layers, hidden_size=hidden, n_heads=heads, n_kv_heads=kv_heads or heads,
                       intermediate_size=intermediate or 4 * hidden, **fields)


def tiny_llama(layers: int, hidden: int, lora: bool = False, vocab_size: int = 512, **config):
    """`(policy, tokenizer)`: the offline tiny model of the benchmarks on a byte-level BPE of `vocab_size`."""
    from ppolab.models import build_policy, build_tokenizer

    tok = build_tokenizer(vocab_size=vocab_size)
    return build_policy(tiny_model_config(layers, hidden, lora=lora, **config), tok), tok
