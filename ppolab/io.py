"""File helpers. Atomic writing: temp file in the same folder, fsync, rename, so a crash never leaves
half a file; and a strict UTF-8 reader whose error names the file and line."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError


def _temp_name(path: Path) -> dict:
    # One naming rule for every temporary, so remove_stale_temporaries can recognise them.
    return {"dir": path.parent, "prefix": f".{path.name}.", "suffix": ".tmp"}


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[Any]:
    """Open a temp file beside `path`; on clean exit it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(**_temp_name(path))
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_utf8(path: str | os.PathLike, what: str = "file") -> str:
    """A UTF-8 text file, or one `UserError` naming it (and the line of the first bad byte)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} not found" if not path.exists() else f"{path}: not a file")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: invalid UTF-8 (byte {raw[e.start]:#04x} at offset {e.start}); "
                        "save the file as UTF-8") from None


def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_open(path) as f:
        json.dump(data, f, indent=2, ensure_ascii=False)


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    with atomic_open(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp folder beside `path`; on clean exit it becomes `path` (an old one is replaced)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(**_temp_name(path)))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete what killed atomic writes left in `folder` and its subfolders; return what was removed.

    A kill between mkstemp and the rename leaves `.NAME.XXXX.tmp` (a file, or a folder from
    atomic_dir) that nothing will ever read: as large as what was being written. A kill between
    atomic_dir's two renames leaves `.NAME.old` and no `NAME`: that old copy is put back. Call it
    only when no other process writes into `folder`.
    """
    folder = Path(folder)
    # The folder and its subfolders one level down (plots/, sft/, ...): where ppolab writes. Not
    # deeper, so a run directory placed in a large tree does not make every stage walk all of it.
    subfolders = [p for p in folder.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")]
    removed = []
    for p in [q for d in (folder, *subfolders) for q in d.iterdir() if q.name.startswith(".")]:
        name = p.name
        if name.endswith(".tmp") and name.count(".") >= 3:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
        elif name.endswith(".old") and p.is_dir() and not p.is_symlink():
            original = p.with_name(name[1:-len(".old")])
            if original.exists():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
            else:
                os.replace(p, original)
    return removed
