"""Fault injection for the crash tests: run the CLI and SIGKILL the process at its N-th write.

``python tests/_crashhook.py ARGS...`` runs ``mobileclip ARGS...``. Every call that changes the
file system — ``open``/``io.open`` for writing, ``os.replace``/``os.rename``, ``os.mkdir``,
``os.unlink``/``os.remove``, ``shutil.rmtree``, ``os.fsync`` — counts as one operation:

* ``MC_CRASH_AT=N``: the process kills itself (SIGKILL, as ``kill -9``) just before operation N,
  so no handler, ``finally`` or ``atexit`` runs;
* ``MC_CRASH_COUNT=FILE``: after a normal exit, the number of operations is written to FILE.

Nothing here is imported by the package; it exists for tests/test_crash.py only.
"""
import builtins
import io
import os
import shutil
import signal
import sys

AT = int(os.environ.get("MC_CRASH_AT", "0") or 0)
COUNT_FILE = os.environ.get("MC_CRASH_COUNT")
_count = 0
_real_open = builtins.open
_real_write = os.write


def _tick() -> None:
    global _count
    _count += 1
    if AT and _count >= AT:
        os.kill(os.getpid(), signal.SIGKILL)


def _counting(fn):
    def wrapper(*args, **kwargs):
        _tick()
        return fn(*args, **kwargs)

    wrapper.__wrapped__ = fn
    return wrapper


def _open(file, mode="r", *args, **kwargs):
    if any(c in mode for c in "wax+"):
        _tick()
    return _real_open(file, mode, *args, **kwargs)


def install() -> None:
    builtins.open = _open
    io.open = _open
    for name in ("replace", "rename", "mkdir", "unlink", "remove", "fsync", "rmdir"):
        setattr(os, name, _counting(getattr(os, name)))
    shutil.rmtree = _counting(shutil.rmtree)


def main() -> int:
    install()
    from mobileclip.app.cli import main as cli_main

    try:
        code = cli_main(sys.argv[1:])
    finally:
        if COUNT_FILE:
            with _real_open(COUNT_FILE, "w") as f:
                f.write(str(_count))
    return code


if __name__ == "__main__":
    sys.exit(main())
