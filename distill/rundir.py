"""A run's directory: what may be started, resumed or overwritten there, and where a resume reads its state."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

from mobileclip.files import atomic_write, old_dir_for
from mobileclip.errors import ConfigError, TrainingError


RUN_MARKERS = ("train_config.yaml", "metrics.jsonl", "summary.json", "last", "student", "eval.jsonl",
               "student_init.json")
NOT_STARTED = {"train_config.yaml", "student_init.json"}   # what a run writes before its first step


def check_run_dir(out: Path, resume: Optional[str], overwrite: bool, main: bool = True) -> None:
    """Refuse to write a run into a directory that holds another one, unless resuming it or replacing it.

    ``overwrite`` removes an existing *run* directory (one holding a run's files) before training; any
    other non-empty directory is refused either way, so nothing that is not a run can be deleted.
    """
    if resume and overwrite:
        raise ConfigError("--resume continues a run and --overwrite replaces it: pass one of them")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={str(out)!r} is a file; give a directory for the run")
    if resume or not out.is_dir() or not any(out.iterdir()):
        return
    if {p.name for p in out.iterdir()} <= NOT_STARTED:   # a run that never reached its first step: nothing to resume
        if main:
            for name in NOT_STARTED:
                (out / name).unlink(missing_ok=True)
        return
    markers = [m for m in RUN_MARKERS if (out / m).exists()]
    if not markers:
        raise ConfigError(f"out={str(out)!r} is a non-empty directory that holds no run; choose another out= "
                          "(a run directory is never mixed with other files)")
    if not overwrite:
        raise ConfigError(f"out={str(out)!r} already holds a run ({', '.join(markers[:3])}); pass --resume "
                          f"{out} to continue it, --overwrite to replace it, or choose another out=")
    if main:
        import shutil

        shutil.rmtree(out)


def drop_rows_after(path: Path, step: int) -> None:
    """Keep the rows of a JSONL log up to ``step`` (a resumed run rewrites what came after its checkpoint)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:   # a line cut by a crash
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            keep.append(line)
    with atomic_write(path, "w") as f:
        f.write("".join(ln + "\n" for ln in keep))


def find_resume_dir(path: Path) -> Path:
    """The directory holding a run's ``train_state.pt``: the run's out dir, its ``last/``, or what a crash
    between the two renames of ``save_state`` left behind."""
    path = Path(path)
    if path.is_dir() and not (path / "train_state.pt").is_file() and (path / "last").is_dir():
        path = path / "last"
    if not (path / "train_state.pt").is_file():
        old = old_dir_for(path)
        if (old / "train_state.pt").is_file():
            return old
        raise TrainingError(f"cannot resume: {str(path)!r} holds no train_state.pt "
                            "(pass a run's out dir or its last/ checkpoint)")
    return path
