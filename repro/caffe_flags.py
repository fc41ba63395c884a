"""``caffe <command> <args>``'s command line, parsed as gflags parses it (tools/caffe.cpp's DEFINE_* flags).

gflags takes ``-flag=value``, ``-flag value``, ``--flag=value`` and ``--flag value`` alike, flags before or
after the command; an unknown flag or a missing value is an error. The flags and defaults are caffe.cpp's.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from .errors import ReproError

COMMANDS = ("device_query", "test", "time", "train")  # caffe.cpp's RegisterBrewFunction, sorted as it lists
USAGE = ("usage: caffe.py <command> <args>\n\n"
         "commands:\n"
         "  train           train or finetune a model\n"
         "  test            score a model\n"
         "  device_query    show GPU diagnostic information\n"
         "  time            benchmark model execution time\n\n"
         "flags (-flag value, -flag=value, --flag value):\n"
         "  -solver FILE         the solver definition (train)\n"
         "  -model FILE          the model definition (test, time)\n"
         "  -weights A[,B]       pretrained weights to fine-tune from (train) or score (test)\n"
         "  -snapshot FILE       a .solverstate to resume training from\n"
         "  -gpu N[,M]|all       run on these GPUs (default: CPU, or the solver's solver_mode / device_id)\n"
         "  -iterations N        iterations to run (test, time; default 50)\n"
         "  -phase TRAIN|TEST    network phase for time (default TRAIN)\n"
         "  -level N, -stage A[,B]   the network's NetState level and stages\n"
         "  -sigint_effect stop|snapshot|none   (default stop)\n"
         "  -sighup_effect stop|snapshot|none   (default snapshot)")


class FlagError(ReproError):
    """A command line caffe.cpp would refuse."""


@dataclass
class Flags:
    command: str = ""
    gpu: str = ""
    solver: str = ""
    model: str = ""
    phase: str = ""
    level: int = 0
    stage: str = ""
    snapshot: str = ""
    weights: str = ""
    iterations: int = 50
    sigint_effect: str = "stop"
    sighup_effect: str = "snapshot"
    extra: list = field(default_factory=list)


_NAMES = {f.name for f in fields(Flags)} - {"command", "extra"}
_INTS = {"level", "iterations"}


def parse(argv: list[str]) -> Flags:
    """The Flags of ``argv`` (without the program name). Raises FlagError with one line naming the problem."""
    flags, positional = Flags(), []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg in ("-h", "-help", "--help"):
            raise FlagError(USAGE)
        if arg == "--":
            positional += argv[i:]
            break
        if not arg.startswith("-") or arg == "-":
            positional.append(arg)
            continue
        name, eq, value = arg.lstrip("-").partition("=")
        if name not in _NAMES:
            raise FlagError(f"unknown command line flag '{name}' (caffe's flags: "
                            f"{', '.join('-' + n for n in sorted(_NAMES))})")
        if not eq:
            if i >= len(argv):
                raise FlagError(f"flag '-{name}' is missing its argument")
            value = argv[i]
            i += 1
        if name in _INTS:
            try:
                value = int(value)
            except ValueError:
                raise FlagError(f"flag '-{name}': {value!r} is not an integer") from None
        setattr(flags, name, value)
    if not positional:
        raise FlagError("no command given; " + USAGE.splitlines()[0] + f" (commands: {', '.join(COMMANDS)})")
    flags.command, flags.extra = positional[0], positional[1:]
    if flags.command not in COMMANDS:
        raise FlagError(f"Unknown action: {flags.command} (available caffe actions: {', '.join(COMMANDS)})")
    if flags.extra:
        raise FlagError(f"unexpected argument(s) after '{flags.command}': {' '.join(flags.extra)}")
    for name in ("sigint_effect", "sighup_effect"):
        if getattr(flags, name) not in ("stop", "snapshot", "none"):
            raise FlagError(f'Invalid signal effect "{getattr(flags, name)}" was specified for -{name} '
                            f"(stop, snapshot or none)")
    if flags.phase not in ("", "TRAIN", "TEST"):
        raise FlagError('phase must be "TRAIN" or "TEST"')
    return flags
