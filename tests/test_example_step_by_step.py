"""The step-through example runs as a student would run it, prints readably and records both runs."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ppolab.inspect import load_rollouts

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ppo_step_by_step.py"


def test_example_prints_readable_tokens_and_records_both_runs(tmp_path):
    out = subprocess.run([sys.executable, str(EXAMPLE), "--steps", "3", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "\ufffd" not in text  # tokens print as whole characters or as bytes
    assert "state-action pairs" in text and "healthy 0.1-0.3" in text
    assert "run 'healthy'" in text and "run 'no_kl'" in text and "ppolab inspect --run" in text
    steps = load_rollouts(tmp_path)
    assert [(s.stage, s.step) for s in steps] == [("healthy", i) for i in (1, 2, 3)] + [("no_kl", i) for i in (1, 2, 3)]
    assert all(len(s.prompts) == 4 for s in steps)
