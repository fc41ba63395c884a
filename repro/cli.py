"""How every tool in tools/ ends: one clear line for a user's mistake, a traceback only for a bug.

``tool_main("train_base", main)`` runs ``main()`` and maps what it raises to one line on stderr and an exit
code: a :class:`repro.errors.ReproError` or an ``OSError`` (bad input, missing file, disk full) is exit 2, a
Ctrl-C that escapes the tool's own handling (during start-up, say) is exit 130 as a shell reports it. Anything
else is a bug in our code and keeps its traceback. ``main`` may return an int (the exit code) or None (0).

Exit codes shared by the training tools (``repro.train.EXIT_CODES``): 0 finished, 2 bad input, 3 stopped
(a signal; rerun to resume), 4 diverged.
"""
from __future__ import annotations

import sys

from .errors import ReproError

BAD_INPUT = 2
INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a process ended by Ctrl-C


def error_line(tool: str, e: BaseException) -> str:
    """``tool: message`` for a ReproError; for an OSError, its strerror and the file it names."""
    if isinstance(e, OSError) and not isinstance(e, ReproError):
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        what = e.strerror or str(e)
        return f"{tool}: {where}{what}"
    return f"{tool}: {e}"


def tool_main(tool: str, main, argv=None) -> int:
    """Run ``main(argv)`` (``main()`` when argv is None) and exit the process as the module doc says."""
    try:
        rc = main(argv) if argv is not None else main()
    except (ReproError, OSError) as e:
        print(error_line(tool, e), file=sys.stderr, flush=True)
        rc = BAD_INPUT
    except KeyboardInterrupt:
        print(f"{tool}: interrupted", file=sys.stderr, flush=True)
        rc = INTERRUPTED
    sys.exit(0 if rc is None else int(rc))
