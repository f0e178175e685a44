"""Atomic file and directory writes (torch-free: the runtime uses them too).

Everything the toolkit writes under a real name gets there by ``os.replace`` of a finished
temporary file or directory beside it, so a crash leaves either the old content or the new,
never half of one. Temporaries are named ``.<name>.tmp-<pid>``: a later run removes the ones
whose process is gone (:func:`remove_stale_temps`), and a failed write removes its own.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

from .errors import MobileCLIPError

_TEMP = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)$")


class DiskFullError(MobileCLIPError, OSError):
    """The disk (or quota) filled up while writing; nothing half-written was left under a real name."""


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # someone else's live process
        return True
    return True


def remove_stale_temps(folder: Union[str, Path]) -> list:
    """Remove ``.<name>.tmp-<pid>`` files and directories in ``folder`` whose process no longer runs."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _TEMP.match(p.name)
        if m and not _pid_alive(int(m["pid"])):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def disk_full(e: BaseException, path: Union[str, Path]) -> BaseException:
    """``e`` as a :class:`DiskFullError` naming ``path`` when it is ENOSPC/EDQUOT, else ``e`` itself."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(e.errno, f"no space left on the device while writing {str(path)!r}; free some space "
                                      "and run the command again (nothing half-written was kept)")
    return e


@contextmanager
def atomic_write(path: Union[str, Path], mode: str = "wb") -> Iterator:
    """Open a temporary file beside ``path``; on success fsync and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp-{os.getpid()}", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        err = disk_full(e, path)
        if err is not e:
            raise err from e
        raise


def atomic_write_json(path: Union[str, Path], data) -> None:
    with atomic_write(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")


def temp_dir_for(final: Union[str, Path]) -> Path:
    """An empty temporary directory beside ``final``, to be moved into place by :func:`replace_dir`.

    Temporaries of processes that died before finishing are removed first.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(final.parent)
    recover_dir(final)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def old_dir_for(final: Union[str, Path]) -> Path:
    """Where :func:`replace_dir` parks the previous ``final`` while swapping (left behind only by a crash)."""
    final = Path(final)
    return final.parent / f".{final.name}.old"


def recover_dir(final: Union[str, Path]) -> None:
    """Put back the previous ``final`` that a crash inside :func:`replace_dir` left parked (final gone)."""
    final, old = Path(final), old_dir_for(final)
    if not final.exists() and old.is_dir():
        os.replace(old, final)


def replace_dir(tmp: Union[str, Path], final: Union[str, Path]) -> Path:
    """Move a finished directory into place; an existing ``final`` is removed only after the swap."""
    final = Path(final)
    old = old_dir_for(final)
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final
