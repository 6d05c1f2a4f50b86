"""`echo-sim`: one entry point, one module per subcommand.

Each subcommand module exposes `add_arguments(parser)` and `run(args) -> int`. Errors that are the
user's (bad input, unknown names, impossible configs) are ValueError subclasses: they print one line
and exit 2, having written nothing.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "run": ("echo_sim.cli.run", "simulate one policy at one load"),
    "sweep": ("echo_sim.cli.sweep", "compare policies across concurrency (or arrival rates)"),
    "capacity": ("echo_sim.cli.capacity", "per policy, the highest arrival rate meeting latency SLOs"),
    "trace-info": ("echo_sim.traces.info", "summarise an acceptance trace"),
    "import-specdecode": ("echo_sim.traces.import_specdecode", "import SpecDecode-Bench acc_len logs as a chain trace"),
}


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default (unless the text already states one)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" not in text and action.option_strings and action.default not in (None, argparse.SUPPRESS)
                and action.nargs != 0):  # not for flags (store_true: off unless given)
            text += " (default: %(default)s)"
        return text


def build_parser(prog: str, subcommands: dict[str, tuple[str, str]], argv: list[str] | None = None
                 ) -> argparse.ArgumentParser:
    """The parser; only the subcommand named in argv has its module imported (`echo-run --help`
    must not pay for importing torch)."""
    parser = argparse.ArgumentParser(prog=prog, formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    named = next((word for word in (sys.argv[1:] if argv is None else argv) if word in subcommands), None)
    for name, (module_name, help_text) in subcommands.items():
        # help= is %-formatted by argparse, description is printed as is
        sub_parser = sub.add_parser(name, help=help_text.replace("%", "%%"), description=help_text,
                                    formatter_class=HelpFormatter)
        if name == named:
            module = importlib.import_module(module_name)
            module.add_arguments(sub_parser)
            sub_parser.set_defaults(handler=module.run)
    return parser


def dispatch(prog: str, subcommands: dict[str, tuple[str, str]], argv: list[str] | None) -> int:
    args = build_parser(prog, subcommands, argv).parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except ValueError as error:  # user errors: one line, non-zero exit
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted (completed work is kept)", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    return dispatch("echo-sim", SUBCOMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
