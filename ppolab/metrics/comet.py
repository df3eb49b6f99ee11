"""COMET scores through a subprocess in the isolated ``comet_env`` project.

unbabel-comet pins transformers<5, numpy<2 and huggingface-hub<1, so it cannot
be imported into ppolab's environment. Instead ``CometScorer`` runs
``comet_env/score_comet.py`` in that project's own virtual environment and
talks to it in JSON lines (one request line in, one response line out; the
protocol is documented at the top of score_comet.py).

Nothing is ever downloaded: the checkpoint must be a local copy (the model
folder with ``checkpoints/model.ckpt`` and ``hparams.yaml``, or the .ckpt file
itself), and the environment is run with ``uv run --no-sync`` so a missing
``uv sync`` is reported instead of silently fetching gigabytes of wheels.

By default every ``score`` call starts a fresh process, which reloads the model
(tens of seconds for wmt22-comet-da). For repeated scoring, e.g. as a reward
during training, pass ``persistent=True``: the process then stays up between
calls until ``close()`` (or the end of a ``with`` block).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO

__all__ = ["DEFAULT_ENV_DIR", "CometScorer", "CometUnavailable"]

# <repo>/comet_env, next to the ppolab package in a source checkout.
DEFAULT_ENV_DIR = Path(__file__).resolve().parents[2] / "comet_env"
SCRIPT_NAME = "score_comet.py"
_STDERR_TAIL_CHARS = 3000


class CometUnavailable(RuntimeError):
    """COMET cannot be run: missing checkpoint or environment, or the scorer process failed."""


def _resolve_checkpoint(checkpoint: str | os.PathLike) -> Path:
    """The model folder (Hub layout) or the .ckpt file -> the .ckpt file; must exist locally."""
    path = Path(checkpoint).expanduser()
    ckpt = path / "checkpoints" / "model.ckpt" if path.is_dir() else path
    if not ckpt.is_file():
        raise CometUnavailable(
            f"COMET checkpoint not found at {ckpt}; nothing is downloaded — see comet_env/README.md "
            "for placing a local copy of e.g. Unbabel/wmt22-comet-da"
        )
    return ckpt.resolve()


class CometScorer:
    """Segment-level COMET scores from a local checkpoint, computed in a subprocess.

    checkpoint: local COMET model folder (containing ``checkpoints/model.ckpt``
        and ``hparams.yaml``) or the ``model.ckpt`` file.
    env_dir: the isolated COMET uv project holding ``score_comet.py``.
    python: run ``score_comet.py`` with this interpreter instead of
        ``uv run --project env_dir`` (e.g. a conda env that has unbabel-comet).
    batch_size: COMET's inference batch size.
    command: full command to run instead (a list; stdin/stdout speak the
        score_comet.py protocol). For tests and unusual setups.
    gpus: 0 or 1; None lets the scorer use a GPU when one is visible.
    persistent: keep one scorer process (and the loaded model) alive across calls.
    timeout: seconds to wait for one non-persistent call before giving up.
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike,
        env_dir: str | os.PathLike = DEFAULT_ENV_DIR,
        python: str | os.PathLike | None = None,
        batch_size: int = 16,
        *,
        command: Sequence[str] | None = None,
        gpus: int | None = None,
        persistent: bool = False,
        timeout: float | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if gpus not in (None, 0, 1):
            raise ValueError(f"gpus must be None, 0 or 1, got {gpus!r}")
        self.checkpoint = _resolve_checkpoint(checkpoint)
        self.env_dir = Path(env_dir).expanduser().resolve()
        self.batch_size = batch_size
        self.gpus = gpus
        self.persistent = persistent
        self.timeout = timeout
        self.command = list(command) if command is not None else self._default_command(python)
        self._proc: subprocess.Popen | None = None
        self._stderr: IO[bytes] | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ setup

    def _default_command(self, python: str | os.PathLike | None) -> list[str]:
        script = self.env_dir / SCRIPT_NAME
        if not script.is_file():
            raise CometUnavailable(f"COMET environment not found: {script} does not exist (env_dir={self.env_dir})")
        if python is not None:
            exe = shutil.which(str(python))
            if exe is None:
                raise CometUnavailable(f"python executable for COMET not found: {python}")
            return [exe, str(script)]
        uv = shutil.which("uv")
        if uv is None:
            raise CometUnavailable("`uv` is not on PATH; install uv or pass python=<interpreter with unbabel-comet>")
        if not (self.env_dir / ".venv").is_dir():
            raise CometUnavailable(
                f"COMET environment at {self.env_dir} is not set up (no .venv): "
                f"run `uv sync --project {self.env_dir}` once (downloads torch and unbabel-comet; see comet_env/README.md)"
            )
        # --no-sync: never install or download at scoring time; a stale or
        # missing environment should fail loudly instead.
        return [uv, "run", "--no-sync", "--project", str(self.env_dir), "python", str(script)]

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        # Offline by default: the checkpoint and encoder files are local.
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
        # ppolab's own venv must not leak into the COMET project's interpreter.
        env.pop("VIRTUAL_ENV", None)
        env.setdefault("PYTHONIOENCODING", "utf-8")
        return env

    def _start(self) -> subprocess.Popen:
        # stderr goes to a file, not a pipe: a chatty child (progress bars,
        # warnings) can never block on a full pipe, and we can still show its tail.
        self._stderr = tempfile.TemporaryFile()
        try:
            return subprocess.Popen(
                self.command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                env=self._child_env(),
            )
        except OSError as exc:
            raise CometUnavailable(f"could not start COMET scorer {self.command!r}: {exc}") from exc

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0, os.SEEK_END)
        size = self._stderr.tell()
        self._stderr.seek(max(0, size - _STDERR_TAIL_CHARS))
        return self._stderr.read().decode("utf-8", "replace").strip()

    def _fail(self, what: str, returncode: int | None = None) -> CometUnavailable:
        tail = self._stderr_tail()
        msg = f"COMET scorer failed: {what}"
        if returncode is not None:
            msg += f" (exit status {returncode})"
        msg += f"\ncommand: {' '.join(self.command)}"
        if tail:
            msg += f"\n--- stderr (tail) ---\n{tail}"
        return CometUnavailable(msg)

    # ---------------------------------------------------------------- scoring

    def score(self, sources: Sequence[str], hyps: Sequence[str], refs: Sequence[str]) -> list[float]:
        """COMET score of each (source, hypothesis, reference) triple (wmt22-comet-da: roughly 0-1)."""
        if not (len(sources) == len(hyps) == len(refs)):
            raise ValueError(
                f"sources, hyps and refs differ in length: {len(sources)}, {len(hyps)}, {len(refs)}"
            )
        if not hyps:
            return []
        data = []
        for i, (s, h, r) in enumerate(zip(sources, hyps, refs)):
            if not all(isinstance(x, str) for x in (s, h, r)):
                raise TypeError(f"segment {i}: sources, hyps and refs must be strings")
            data.append({"src": s.strip(), "mt": h.strip(), "ref": r.strip()})
        request = {"checkpoint": str(self.checkpoint), "batch_size": self.batch_size, "gpus": self.gpus, "data": data}
        line = json.dumps(request, ensure_ascii=False) + "\n"
        with self._lock:
            if not self.persistent:
                try:
                    return self._parse(self._ask_once(line), len(data))
                finally:
                    self._close_stderr()  # after _parse, so its errors can still show stderr
            try:
                return self._parse(self._ask_persistent(line), len(data))
            except CometUnavailable:
                # After a bad answer the stream cannot be trusted; start afresh next time.
                self._close_process()
                raise

    def _ask_once(self, line: str) -> str:
        proc = self._start()
        try:
            out, _ = proc.communicate(line.encode("utf-8"), timeout=self.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise self._fail(f"no answer within {self.timeout} s") from None
        text = out.decode("utf-8", "replace").strip()
        if proc.returncode != 0 or not text:
            raise self._fail(self._error_in(text) or "no result", proc.returncode)
        return text.splitlines()[-1]

    def _ask_persistent(self, line: str) -> str:
        if self._proc is None or self._proc.poll() is not None:
            self._close_process()
            self._proc = self._start()
        proc = self._proc
        try:
            proc.stdin.write(line.encode("utf-8"))
            proc.stdin.flush()
            reply = proc.stdout.readline().decode("utf-8", "replace").strip()
        except BrokenPipeError:
            reply = ""
        if not reply or self._error_in(reply):
            # The scorer exits after reporting an error; collect its status and stderr.
            try:
                returncode = proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                returncode = proc.wait()
            err = self._fail(self._error_in(reply) or "process ended without answering", returncode)
            self._close_process()
            raise err
        return reply

    @staticmethod
    def _error_in(reply: str) -> str | None:
        """The 'error' message of a protocol error line, if that is what `reply` is."""
        try:
            obj = json.loads(reply.splitlines()[-1]) if reply else None
        except json.JSONDecodeError:
            return None
        return str(obj["error"]) if isinstance(obj, dict) and "error" in obj else None

    def _parse(self, reply: str, n: int) -> list[float]:
        try:
            obj = json.loads(reply)
            scores = [float(s) for s in obj["scores"]]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise self._fail(f"unreadable answer {reply[:200]!r} ({exc})") from None
        if len(scores) != n:
            raise self._fail(f"got {len(scores)} scores for {n} segments")
        return scores

    # -------------------------------------------------------------- lifecycle

    def _close_stderr(self) -> None:
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def _close_process(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.stdin and not proc.stdin.closed:
                try:
                    proc.stdin.close()  # EOF: the scorer's request loop ends cleanly
                except BrokenPipeError:
                    pass
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout:
                proc.stdout.close()
        self._close_stderr()

    def close(self) -> None:
        """Stop the persistent scorer process, if one is running."""
        with self._lock:
            self._close_process()

    def __enter__(self) -> CometScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self._close_process()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"CometScorer(checkpoint={str(self.checkpoint)!r}, batch_size={self.batch_size}, persistent={self.persistent})"
