"""GitHub markdown tables for the benchmark reports (no extra dependency)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def markdown(frame: pd.DataFrame, number: str = "{:.3f}") -> str:
    """One row per frame row; floats formatted with `number`."""
    def cell(x) -> str:
        return number.format(x) if isinstance(x, (float, np.floating)) else str(x)
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)
