"""Where the repository's shipped data lives (a module of its own so that config and workload,
which both need it, do not import each other)."""

from __future__ import annotations

from pathlib import Path

# The repository root: traces/ (shipped acceptance traces, workload files) lives there.
REPO_ROOT = Path(__file__).resolve().parent.parent
TRACES_DIR = REPO_ROOT / "traces"
# The shipped MT-Bench acceptance trace (issue 2): the first match, in sorted order.
DEFAULT_TRACE_GLOB = "mt_bench*.trace.npz"
