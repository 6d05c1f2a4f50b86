"""Where the shipped data lives (a module of its own so that config and workload, which both need
it, do not import each other).

TRACES_DIR (acceptance traces, workload files, prompts, calibrations), first that exists:
    $ECHO_TRACES_DIR                         an explicit choice
    <repository>/traces                      a checkout or an editable install (`pip install -e .`)
    <sys.prefix>/share/echo-toolkit/traces   a plain `pip install .`: pyproject.toml ships traces/
                                             there as data files
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# The repository root of a checkout (in a plain install: the site-packages folder).
REPO_ROOT = Path(__file__).resolve().parent.parent
INSTALLED_TRACES_DIR = Path(sys.prefix) / "share" / "echo-toolkit" / "traces"
ENV_TRACES_DIR = "ECHO_TRACES_DIR"


def find_traces_dir() -> Path:
    if os.environ.get(ENV_TRACES_DIR):
        return Path(os.environ[ENV_TRACES_DIR])
    checkout = REPO_ROOT / "traces"
    if checkout.is_dir() or not INSTALLED_TRACES_DIR.is_dir():
        return checkout
    return INSTALLED_TRACES_DIR


TRACES_DIR = find_traces_dir()
# The shipped MT-Bench acceptance trace (issue 2): the first match, in sorted order.
DEFAULT_TRACE_GLOB = "mt_bench*.trace.npz"
