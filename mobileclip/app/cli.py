"""The `mobileclip` command line."""
# The docstring above is the parser's description (`mobileclip --help`). This module holds the
# parser, the one error boundary (`main`, `user_error`) and the command groups share common.py;
# each group (models.py, train.py, export.py, runtime.py, bench.py, demo.py) registers its own
# subcommands with `register(sub)`.
from __future__ import annotations

import argparse
import errno
import sys
from typing import Optional, Sequence

from ..errors import MobileCLIPError
from .common import EXTRA_OF


def build_parser() -> argparse.ArgumentParser:
    from . import bench, demo, export, models, runtime, train

    p = argparse.ArgumentParser(prog="mobileclip", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    # The order of `mobileclip --help`.
    for group in (models,    # models, zeroshot, retrieval
                  train,     # synth, distill, cache-teacher
                  export,    # convert, export, validate
                  runtime,   # classify, index, search: the torch-free runtime
                  bench,     # bench: models x runtimes x precisions x batch sizes
                  demo):     # demo
        group.register(sub)
    return p


# OS errors that are about the user's paths or disk, not about this program.
_USER_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.ENOSPC,
                errno.EDQUOT, errno.EROFS, errno.ENAMETOOLONG, errno.ELOOP, errno.EEXIST, errno.ENOTEMPTY}


def user_error(e: BaseException) -> Optional[str]:
    """The one-line message for an error the user can fix, or None for a bug (which keeps its traceback)."""
    if isinstance(e, MobileCLIPError):
        return str(e)
    if isinstance(e, ModuleNotFoundError) and e.name:
        top = e.name.split(".")[0]
        if top in EXTRA_OF:
            from ..version import DISTRIBUTION

            return (f"this command needs {top}, which is not installed: pip install "
                    f"'{DISTRIBUTION}[{EXTRA_OF[top]}]'")
        return None
    if isinstance(e, OSError) and e.errno in _USER_ERRNOS:
        where = f" {e.filename!r}" if e.filename else ""
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"no space left on the device{' writing' + where if where else ''}; free some space and run again"
        return f"{e.strerror or e}:{where}" if where else str(e)
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `mobileclip models | head`
        sys.stderr.close()
        return 0
    except (MobileCLIPError, ModuleNotFoundError, OSError) as e:
        msg = user_error(e)
        if msg is None:
            raise
        print(f"mobileclip: error: {' '.join(msg.split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mobileclip: interrupted", file=sys.stderr)
        return 130
