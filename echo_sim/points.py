"""The per-point files of a sweep folder: OUT/points/<key>.json, one per finished grid point.

A point file is the point's metrics record plus a digest of it, written atomically. A file is used
on resume only when it parses, its digest matches and it is the point asked for; anything else
(truncated, empty, `[]`, an edited or deleted metric, a file of an older format) is named, moved to
OUT/points/damaged/ and recomputed, never half-trusted. One sweep at a time may write to a folder:
`PointStore.open` takes an exclusive lock on OUT/.sweep.lock for the store's lifetime.

Only the driver writes here; executors (echo_sim.executor) just compute records and hand them back.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
from pathlib import Path

from echo_sim.atomic import OutputError, prepare_folder, write_bytes_atomic, write_text_atomic

FORMAT = 1  # bump when the point-file layout changes: older files are then set aside and recomputed
LOCK_NAME = ".sweep.lock"


def canonical(value) -> str:
    """The one JSON spelling of a record or config (key order and NaN spelled the same every time)."""
    return json.dumps(value, sort_keys=True, default=str)


def digest(record: dict) -> str:
    return hashlib.sha256(canonical(record).encode()).hexdigest()


class PointStore:
    """Read, validate and write the point files of one sweep folder (hold it with `with`)."""

    def __init__(self, out: Path, lock_file):
        self.out = Path(out)
        self.points = self.out / "points"
        self._lock_file = lock_file

    @classmethod
    def open(cls, out: str | Path) -> "PointStore":
        out = prepare_folder(Path(out))
        try:
            handle = open(out / LOCK_NAME, "a+")
        except OSError as error:
            raise OutputError(f"--out {out}: cannot create {LOCK_NAME} ({error.strerror})") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            handle.close()
            raise OutputError(f"--out {out}: another sweep is writing there (pid {owner}); "
                              "wait for it or choose another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            (out / "points").mkdir(exist_ok=True)
        except OSError as error:
            handle.close()
            raise OutputError(f"--out {out}: cannot create points/ ({error.strerror})") from None
        return cls(out, handle)

    def close(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing the descriptor releases the flock
            self._lock_file = None

    def __enter__(self) -> "PointStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def path(self, key: str) -> Path:
        return self.points / f"{key}.json"

    def load(self, key: str, config: dict) -> dict | None:
        """The stored record of point `key` with this config; None when absent or set aside."""
        path = self.path(key)
        if not path.exists():
            return None
        record, problem = self._check(path, key, config)
        if problem is None:
            return record
        self.set_aside(path, problem)
        return None

    @staticmethod
    def _check(path: Path, key: str, config: dict) -> tuple[dict | None, str | None]:
        try:
            stored = json.loads(path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as error:
            return None, f"not JSON ({error})" if path.stat().st_size else "empty file"
        if not isinstance(stored, dict) or not isinstance(stored.get("record"), dict):
            return None, f"not a point file of format {FORMAT} (no record object)"
        if stored.get("format") != FORMAT:
            return None, f"format {stored.get('format')!r}, expected {FORMAT}"
        record = stored["record"]
        if stored.get("sha256") != digest(record):
            return None, "digest mismatch (edited or partly written)"
        if record.get("key") != key or canonical(record.get("config")) != canonical(config):
            return None, "belongs to another grid point"
        return record, None

    def set_aside(self, path: Path, problem: str) -> Path:
        damaged = self.points / "damaged"
        damaged.mkdir(exist_ok=True)
        target = damaged / path.name
        suffix = 1
        while target.exists():
            target = damaged / f"{path.stem}.{suffix}{path.suffix}"
            suffix += 1
        os.replace(path, target)
        print(f"point file {path}: {problem}; moved to {target}, recomputing", file=sys.stderr)
        return target

    def write(self, key: str, record: dict, steps_parquet: bytes | None = None) -> None:
        """Persist one finished point: the step log first, so a point file implies its step log."""
        if steps_parquet is not None:
            write_bytes_atomic(self.out / "steps" / f"{key}.parquet", steps_parquet)
        record = json.loads(canonical(record))  # JSON-native now, so the digest reads back identical
        stored = {"format": FORMAT, "sha256": digest(record), "record": record}
        write_text_atomic(self.path(key), canonical(stored))
