"""Build the notebooks' tables, then execute the notebooks headless and save their outputs.

    python -m echo_sim.report.notebook_exec                 # full grid, shipped trace, notebooks updated in place
    python -m echo_sim.report.notebook_exec --trace T.npz   # another acceptance trace
    python -m echo_sim.report.notebook_exec --quick --out-dir /tmp/nb   # the test suite's reduced grid

The tables are computed first, in this process, with progress bars (resumable: an interrupted run
keeps its finished points), so the notebooks find them cached and their saved outputs hold only
figures and tables. Needs the `notebooks` extra (nbclient, nbformat, ipykernel).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from echo_sim.atomic import write_text_atomic
from echo_sim.report.notebook_data import (ENV_JOBS, ENV_QUICK, ENV_REFRESH, ENV_RESULTS, ENV_TRACE, NOTEBOOKS_DIR,
                                    ablation_table, budget_table, extent_table, notebook_settings,
                                    throughput_table)

NOTEBOOKS = ("throughput_vs_concurrency.ipynb", "budget_anatomy.ipynb", "fidelity.ipynb")
CELL_TIMEOUT_S = 3600  # a cell that has to compute a missing table on the full grid takes minutes


def execute_notebook(path: Path, out: Path | None = None, timeout: int = CELL_TIMEOUT_S) -> Path:
    """Run every cell in a fresh kernel (cwd = the notebook's folder); raises nbclient's
    CellExecutionError naming the failing cell. Writes the executed notebook to `out` (default:
    in place), atomically, only when every cell succeeded."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(Path(path).parent)}})
    client.execute()
    target = Path(out) if out is not None else Path(path)
    write_text_atomic(target, nbformat.writes(notebook) + "\n")
    return target


def build_tables() -> None:
    """Compute (or load) every cached table the notebooks read, for the current environment."""
    settings = notebook_settings()
    print(settings.description, file=sys.stderr)
    for build in (throughput_table, ablation_table, budget_table, extent_table):
        print(f"table: {build.__name__}", file=sys.stderr)
        build(settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m echo_sim.report.notebook_exec", description=__doc__.split("\n")[0])
    parser.add_argument("notebooks", nargs="*", default=list(NOTEBOOKS), help="notebook names (default: all)")
    parser.add_argument("--quick", action="store_true", help="the reduced test grid")
    parser.add_argument("--trace", help="acceptance trace (default: the shipped MT-Bench trace)")
    parser.add_argument("--results", help="results root (default notebooks/results)")
    parser.add_argument("--jobs", type=int, help="worker processes for the sweeps")
    parser.add_argument("--refresh", action="store_true", help="recompute cached tables")
    parser.add_argument("--out-dir", type=Path, help="write executed notebooks here (default: in place)")
    parser.add_argument("--tables-only", action="store_true", help="build the tables, run no notebook")
    args = parser.parse_args(argv)
    for name, value in ((ENV_QUICK, "1" if args.quick else None), (ENV_TRACE, args.trace),
                        (ENV_RESULTS, args.results), (ENV_JOBS, None if args.jobs is None else str(args.jobs)),
                        (ENV_REFRESH, "1" if args.refresh else None)):
        if value is not None:
            os.environ[name] = value  # the kernels inherit the environment
    unknown = [name for name in args.notebooks if not (NOTEBOOKS_DIR / name).is_file()]
    if unknown:
        print(f"error: no notebook {', '.join(unknown)} in {NOTEBOOKS_DIR}", file=sys.stderr)
        return 2
    build_tables()
    os.environ.pop(ENV_REFRESH, None)  # the notebooks read what was just built
    for name in [] if args.tables_only else args.notebooks:
        out = None if args.out_dir is None else args.out_dir / name
        print(f"executing {name}", file=sys.stderr)
        print(f"wrote {execute_notebook(NOTEBOOKS_DIR / name, out)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
