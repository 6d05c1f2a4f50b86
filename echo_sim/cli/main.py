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


def build_parser(prog: str, subcommands: dict[str, tuple[str, str]]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in subcommands.items():
        module = importlib.import_module(module_name)
        escaped = help_text.replace("%", "%%")  # argparse formats help strings with %
        sub_parser = sub.add_parser(name, help=escaped, description=escaped)
        module.add_arguments(sub_parser)
        sub_parser.set_defaults(handler=module.run)
    return parser


def dispatch(prog: str, subcommands: dict[str, tuple[str, str]], argv: list[str] | None) -> int:
    args = build_parser(prog, subcommands).parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except ValueError as error:  # user errors: one line, non-zero exit
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except FileNotFoundError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted (completed work is kept)", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    return dispatch("echo-sim", SUBCOMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
