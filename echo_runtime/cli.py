"""`echo-run`: real speculative decoding (torch). Same subcommand pattern as `echo-sim`."""

from __future__ import annotations

import sys

from echo_sim.cli.main import dispatch

SUBCOMMANDS = {
    "trace": ("echo_runtime.trace_gen", "generate a real acceptance trace with a draft/target pair"),
    "calibrate": ("echo_runtime.calibrate", "time the runtime's forwards over a grid and write a calibration file"),
    "live": ("echo_runtime.live", "serve prompts with real speculative decoding; echo-sim run's metrics, measured"),
    "validate": ("echo_runtime.validate", "simulate and serve the same workload; the simulator's error in %"),
    "fetch-models": ("echo_runtime.fetch_models", "download, assemble and sha256-check the Qwen2.5-Coder GGUF pair"),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch("echo-run", SUBCOMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
