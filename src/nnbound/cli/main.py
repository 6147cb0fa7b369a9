"""The ``nnbound`` command: one subcommand per task; errors in the input become one line and
exit code 2, data goes to stdout, notes and progress to stderr."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from nnbound.allocator import keep_freed_memory
from nnbound.errors import NnboundError

# The order subcommands are listed in; any other ``cli/cmd_<name>.py`` module follows.
PREFERRED_ORDER = ("demo", "train", "info", "predict", "bounds", "robustness")


def subcommands() -> list[str]:
    """Every ``nnbound.cli.cmd_<name>`` module is the subcommand ``<name>``."""
    import pkgutil

    import nnbound.cli

    found = {
        m.name[4:] for m in pkgutil.iter_modules(nnbound.cli.__path__) if m.name.startswith("cmd_")
    }
    first = [n for n in PREFERRED_ORDER if n in found]
    return first + sorted(found - set(first))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"nnbound: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    from importlib import import_module

    from nnbound import __version__

    parser = _Parser(prog="nnbound", description=__doc__)
    parser.add_argument("--version", action="version", version=f"nnbound {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in subcommands():
        module = import_module(f"nnbound.cli.cmd_{name.replace('-', '_')}")
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__)
        module.configure(p)
        p.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if os.environ.get("NNBOUND_KEEP_FREED_MEMORY", "1") != "0":
        keep_freed_memory()
    try:
        from nnbound.cli.validate import validate_args

        validate_args(args)
        return int(args.run(args) or 0)
    except NnboundError as exc:
        print(f"nnbound: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nnbound: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
