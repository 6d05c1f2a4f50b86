"""Atomic file writes (a reader sees the old file or the new one, never half of one), and the
checks that an output path is usable, made before a command does any work.

The file gets the ordinary mode of a new file (0666 less the umask), not mkstemp's private 0600.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: read once, at import
    os.umask(mask)
    return mask


NEW_FILE_MODE = 0o666 & ~_read_umask()


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), NEW_FILE_MODE)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


class OutputError(ValueError):
    """The output folder cannot be used (a file, not writable, or in use by another sweep)."""


def prepare_folder(out: str | Path, option: str = "--out") -> Path:
    """Create `out` (and parents) or say in one line why it cannot be used."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{option} {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"{option} {out}: cannot create the folder ({error.strerror})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {out}: the folder is not writable")
    return out


def check_output_file(path: str | Path, option: str = "--out") -> Path:
    """An output file path that can be written: not a folder, its folder writable (or creatable)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{option} {path}: is a folder; give a file name")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {path}: {folder} is not a writable folder")
    return path
