"""Acceptance traces (TRACES.md, format version 1): the in-memory TraceSet, reader, writer, validator.

TraceSet fields, R requests, P = Σ L_r positions, N nodes:
    header           dict      TRACES.md header (format_version, generator, command, models + sha256,
                               tokenizer, dataset, prompt_ids, decoding, width k, depth S,
                               max_new_tokens, created, absent_columns)
    request_ids      list[str] [R]
    prompt_len       int32 [R]
    output_len       int32 [R]   L_r
    position_offsets int64 [R+1] positions of request r: position_offsets[r] : position_offsets[r+1]
                                 (position t of request r is global index position_offsets[r] + t)
    target_token     int32 [P]   y_t
    draft_rank       int16 [P]   rank of y_t in the draft's top-16 at the teacher-forced prefix, -1 absent
    draft_prob       float32 [P] or None (draft's probability of y_t; None for chain-only imports)
    target_prob      float32 [P] or None (optional)
    node_offsets     int64 [P+1] nodes of position p: node_offsets[p] : node_offsets[p+1] (all empty
                                 for chain-only imports)
    node_token, node_parent (int32, local, -1 = root child), node_depth (int32), node_cond_prob,
    node_score (float32), node_on_path (bool)  [N]
    spine_run        int32 [P]   derived: consecutive positions from t (within the request) whose
                                 draft_rank is 0, i.e. what a greedy chain accepts at t (uncapped).
                                 Chain-only imports may set it directly (then draft_rank is -1/0 filler
                                 and declared absent in the header).

File (one per trace set, extension `.trace.npz`): a compressed npz with `header` (UTF-8 JSON in a
uint8 array) and one array per column, under the field names above. Columns in
header["absent_columns"] are not stored (in memory they are None or filler: target_token -1,
draft_rank 0 where spine_run > 0 else -1). spine_run is stored only when draft_rank is absent;
otherwise it is derived. Integer columns are stored narrow (node_parent int16, node_depth uint8).

The reader validates everything on load; TraceError names file, request, position and field.
"""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from echo_sim.atomic import write_bytes_atomic
from echo_sim.trees import ROOT_PARENT, LatticeBatch

FORMAT_VERSION = 1
TRACE_SUFFIX = ".trace.npz"
MAX_DRAFT_RANK = 15  # draft_rank is the rank among the draft's top-16
REQUIRED_HEADER_KEYS = (
    "format_version", "generator", "draft_model", "target_model", "width", "depth", "decoding",
    "absent_columns",
)
OPTIONAL_COLUMNS = ("target_token", "draft_rank", "draft_prob", "target_prob", "node_cond_prob", "node_score")
# column -> (what indexes it, dtype in the file); in memory node_parent and node_depth widen to int32.
FILE_SCHEMA = {
    "prompt_len": ("request", np.int32), "output_len": ("request", np.int32),
    "position_offsets": ("request+1", np.int64),
    "target_token": ("position", np.int32), "draft_rank": ("position", np.int16),
    "draft_prob": ("position", np.float32), "target_prob": ("position", np.float32),
    "spine_run": ("position", np.int32),
    "node_offsets": ("position+1", np.int64),
    "node_token": ("node", np.int32), "node_parent": ("node", np.int16), "node_depth": ("node", np.uint8),
    "node_cond_prob": ("node", np.float32), "node_score": ("node", np.float32),
    "node_on_path": ("node", np.bool_),
}
MEMORY_DTYPE = {name: np.int32 if name in ("node_parent", "node_depth") else dtype
                for name, (_, dtype) in FILE_SCHEMA.items()}
PROBABILITY_COLUMNS = ("draft_prob", "target_prob", "node_cond_prob", "node_score")


class TraceError(ValueError):
    """A trace file or TraceSet is malformed; the message names file, request, position and field."""


def spine_runs(draft_rank: np.ndarray, position_offsets: np.ndarray) -> np.ndarray:
    """int32 [P]: run of consecutive draft_rank == 0 positions starting at each position, per request."""
    hit = (np.asarray(draft_rank) == 0).astype(np.int64)
    runs = np.zeros(len(hit), dtype=np.int64)
    # Walk backwards once: run[t] = hit[t] * (1 + run[t+1]) within a request. Vectorised via the
    # distance to the next miss (or the request's end).
    n = len(hit)
    if n == 0:
        return runs.astype(np.int32)
    ends = np.zeros(n, dtype=bool)
    ends[np.asarray(position_offsets[1:]) - 1] = True  # last position of each request
    index = np.arange(n)
    stop = np.where((hit == 0), index, n)  # a miss stops a run at itself
    # the run from t stops at the first miss >= t or just past the request end
    stop = np.where(ends & (hit == 1), index + 1, stop)
    next_stop = np.minimum.accumulate(stop[::-1])[::-1]
    runs = next_stop - index
    return runs.astype(np.int32)


@dataclass(frozen=True)
class TraceSet:
    header: dict
    request_ids: list[str]
    prompt_len: np.ndarray
    output_len: np.ndarray
    position_offsets: np.ndarray
    target_token: np.ndarray
    draft_rank: np.ndarray
    node_offsets: np.ndarray
    node_token: np.ndarray
    node_parent: np.ndarray
    node_depth: np.ndarray
    node_cond_prob: np.ndarray
    node_score: np.ndarray
    node_on_path: np.ndarray
    draft_prob: np.ndarray | None = None
    target_prob: np.ndarray | None = None
    spine_run: np.ndarray | None = None
    path: str | None = None
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.spine_run is None:
            object.__setattr__(self, "spine_run", spine_runs(self.draft_rank, self.position_offsets))

    @property
    def num_requests(self) -> int:
        return len(self.output_len)

    @property
    def num_positions(self) -> int:
        return int(self.position_offsets[-1])

    @property
    def num_nodes(self) -> int:
        return int(self.node_offsets[-1])

    @property
    def width(self) -> int:
        return int(self.header.get("width", 0))

    @property
    def depth(self) -> int:
        return int(self.header.get("depth", 0))

    @property
    def has_confidences(self) -> bool:
        return self.num_nodes > 0 and "node_cond_prob" not in self.header.get("absent_columns", [])

    @property
    def is_chain_only(self) -> bool:
        """No lattices: only the spine (e.g. an imported per-position accepted-length log)."""
        return self.num_nodes == 0

    @property
    def source_label(self) -> str:
        """'<file> (<draft> -> <target>)': how every result names its acceptance source."""
        name = Path(self.path).name if self.path else "<in-memory trace>"
        return f"{name} ({self.header.get('draft_model', '?')} -> {self.header.get('target_model', '?')})"

    def describe(self) -> dict:
        """Plain summary (sizes, models, lattice shape, source label) for reports and trace-info."""
        return {
            "source": self.source_label, "requests": self.num_requests, "positions": self.num_positions,
            "nodes": self.num_nodes, "draft_model": self.header.get("draft_model"),
            "target_model": self.header.get("target_model"), "width": self.width, "depth": self.depth,
            "chain_only": self.is_chain_only, "absent_columns": list(self.header.get("absent_columns", [])),
        }

    def lattice_batch(self, positions: np.ndarray, max_depth: int | None = None) -> LatticeBatch:
        """The lattices of these global positions, concatenated (vectorised gather)."""
        positions = np.asarray(positions, dtype=np.int64)
        starts = self.node_offsets[positions]
        counts = self.node_offsets[positions + 1] - starts
        offsets = np.zeros(len(positions) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        total = int(offsets[-1])
        index = np.arange(total, dtype=np.int64) + np.repeat(starts - offsets[:-1], counts)
        batch = LatticeBatch(
            offsets=offsets,
            token=self.node_token[index],
            parent=self.node_parent[index],
            depth=self.node_depth[index],
            cond_prob=self.node_cond_prob[index],
            score=self.node_score[index],
            on_path=self.node_on_path[index],
            spine_run=self.spine_run[positions],
            has_confidences=self.has_confidences,
        )
        return batch if max_depth is None else batch.truncate_depth(max_depth)


# --------------------------------------------------------------------------------------------- errors


class _Locator:
    """Turns a flat request / position / node index into 'request 'id', position t, node j'."""

    def __init__(self, source: str, request_ids, position_offsets=None, node_offsets=None):
        self.source, self.request_ids = source, request_ids
        self.position_offsets, self.node_offsets = position_offsets, node_offsets

    def fail(self, column: str, problem: str, *, request=None, position=None, node=None) -> TraceError:
        where = []
        if node is not None:
            position = int(np.searchsorted(self.node_offsets, node, side="right") - 1)
            where.append(f"node {int(node - self.node_offsets[position])}")
        if position is not None:
            request = int(np.searchsorted(self.position_offsets, position, side="right") - 1)
            where.insert(0, f"position {int(position - self.position_offsets[request])}")
        if request is not None:
            rid = self.request_ids[request] if request < len(self.request_ids) else f"#{request}"
            where.insert(0, f"request {rid!r}")
        place = ", ".join(where)
        return TraceError(f"{self.source}: {place + ': ' if place else ''}field {column}: {problem}")

    def first(self, bad: np.ndarray, column: str, problem: str, level: str, values=None) -> None:
        """Raise for the first True in `bad` (a mask over requests, positions or nodes)."""
        if not np.any(bad):
            return
        index = int(np.argmax(bad))
        shown = f" (got {np.asarray(values)[index].item()!r})" if values is not None else ""
        raise self.fail(column, problem + shown, **{level: index})


# ----------------------------------------------------------------------------------------- validation


def _check_header(header, source: str) -> None:
    if not isinstance(header, dict):
        raise TraceError(f"{source}: header: not a JSON object")
    if "format_version" not in header:
        raise TraceError(f"{source}: header: field format_version: missing")
    if header["format_version"] != FORMAT_VERSION:
        raise TraceError(f"{source}: header: field format_version: {header['format_version']!r} "
                         f"is not supported (this reader reads version {FORMAT_VERSION})")
    for key in REQUIRED_HEADER_KEYS:
        if key not in header:
            raise TraceError(f"{source}: header: field {key}: missing")
    absent = header["absent_columns"]
    if not isinstance(absent, list) or any(name not in OPTIONAL_COLUMNS for name in absent):
        raise TraceError(f"{source}: header: field absent_columns: {absent!r} must list only {OPTIONAL_COLUMNS}")
    for key in ("width", "depth"):
        if not isinstance(header[key], int) or header[key] < 0:
            raise TraceError(f"{source}: header: field {key}: {header[key]!r} is not a non-negative integer")


def _check_offsets(loc: _Locator, name: str, offsets, size: int, level: str) -> None:
    if len(offsets) != size + 1:
        raise loc.fail(name, f"has {len(offsets)} entries, expected {size + 1}")
    if offsets[0] != 0:
        raise loc.fail(name, f"must start at 0 (got {offsets[0]})")
    loc.first(np.diff(offsets) < 0, name, "offsets not monotone", level)


def _check_shapes(columns: dict, header: dict, loc: _Locator) -> None:
    """Lengths and offsets: everything needed before any value can be indexed safely."""
    absent = set(header["absent_columns"])
    num_requests = len(loc.request_ids)
    for name in ("prompt_len", "output_len"):
        if len(columns[name]) != num_requests:
            raise loc.fail(name, f"has {len(columns[name])} entries for {num_requests} requests")
    offsets = columns["position_offsets"]
    _check_offsets(loc, "position_offsets", offsets, num_requests, "request")
    num_positions = int(offsets[-1])
    loc.first(np.diff(offsets) != columns["output_len"], "output_len", "does not match position_offsets",
              "request", columns["output_len"])
    loc.position_offsets = offsets
    for name, (level, _) in FILE_SCHEMA.items():
        if level == "position" and columns.get(name) is not None and len(columns[name]) != num_positions:
            raise loc.fail(name, f"has {len(columns[name])} entries, position_offsets need {num_positions} "
                                 "(truncated array?)")
    for name in ("draft_prob", "target_prob"):
        if (columns.get(name) is None) != (name in absent):
            raise loc.fail(name, "present/absent does not match header absent_columns")
    node_offsets = columns["node_offsets"]
    _check_offsets(loc, "node_offsets", node_offsets, num_positions, "position")
    loc.node_offsets = node_offsets
    num_nodes = int(node_offsets[-1])
    for name, (level, _) in FILE_SCHEMA.items():
        if level == "node" and columns[name] is not None and len(columns[name]) != num_nodes:
            raise loc.fail(name, f"has {len(columns[name])} entries, node_offsets need {num_nodes} (truncated array?)")
    if num_nodes and absent & {"node_cond_prob", "node_score"}:
        raise loc.fail("node_cond_prob", "lattice nodes present but confidences declared absent")


def _check_positions(trace: TraceSet, loc: _Locator) -> None:
    absent = set(trace.header["absent_columns"])
    loc.first(trace.output_len < 1, "output_len", "must be >= 1 (prefill commits y0)", "request", trace.output_len)
    loc.first(trace.prompt_len < 0, "prompt_len", "must be >= 0", "request", trace.prompt_len)
    if len(set(trace.request_ids)) != len(trace.request_ids):
        duplicate = next(r for i, r in enumerate(trace.request_ids) if r in trace.request_ids[:i])
        raise loc.fail("request_ids", f"duplicate id {duplicate!r}")
    for name in PROBABILITY_COLUMNS:
        values = getattr(trace, name)
        if values is not None:
            level = "node" if name.startswith("node_") else "position"
            loc.first(~((values >= 0) & (values <= 1)), name, "probability outside [0, 1] or NaN", level, values)
    loc.first(trace.spine_run < 0, "spine_run", "must be >= 0", "position", trace.spine_run)
    if "draft_rank" not in absent:
        rank = trace.draft_rank
        loc.first((rank < -1) | (rank > MAX_DRAFT_RANK), "draft_rank", f"out of range [-1, {MAX_DRAFT_RANK}]",
                  "position", rank)
        derived = spine_runs(rank, trace.position_offsets)
        loc.first(trace.spine_run != derived, "spine_run", "does not match the run of draft_rank == 0",
                  "position", trace.spine_run)


def _check_lattices(trace: TraceSet, loc: _Locator) -> None:
    """Parents earlier, depth = parent depth + 1, level order, depth <= S, on_path closed and exact."""
    if trace.num_nodes == 0:
        return
    offsets = trace.node_offsets
    node_position = np.repeat(np.arange(trace.num_positions), np.diff(offsets))
    local = np.arange(trace.num_nodes) - offsets[node_position]
    parent, depth, on_path = trace.node_parent, trace.node_depth, trace.node_on_path
    loc.first((parent < ROOT_PARENT) | (parent >= local), "node_parent", "parent not earlier in its lattice",
              "node", parent)
    is_root_child = parent == ROOT_PARENT
    gparent = np.where(is_root_child, 0, parent + offsets[node_position])
    expected_depth = np.where(is_root_child, 1, depth[gparent] + 1)
    loc.first(depth != expected_depth, "node_depth", "depth != parent depth + 1 (1 for root children)",
              "node", depth)
    loc.first((local > 0) & (depth < np.roll(depth, 1)), "node_depth", "nodes not in level order", "node", depth)
    if trace.depth > 0:
        loc.first(depth > trace.depth, "node_depth", f"deeper than header depth {trace.depth}", "node", depth)
    parent_on_path = is_root_child | on_path[gparent]
    loc.first(on_path & ~parent_on_path, "node_on_path", "on-path child of an off-path parent", "node")
    if "target_token" in trace.header["absent_columns"]:
        return
    # on-path iff the path spells y_t .. y_{t+j-1} with t + j - 1 < L (parents already checked)
    request = np.searchsorted(trace.position_offsets, node_position, side="right") - 1
    target_index = node_position + depth - 1
    in_output = target_index < trace.position_offsets[request + 1]
    matches = in_output & (trace.node_token == trace.target_token[np.where(in_output, target_index, 0)])
    loc.first(on_path != (matches & parent_on_path), "node_on_path", "inconsistent with target tokens",
              "node", on_path)


def _check_dtypes(trace: TraceSet, loc: _Locator) -> None:
    for name, dtype in MEMORY_DTYPE.items():
        values = getattr(trace, name)
        if values is not None and np.asarray(values).dtype.kind != np.dtype(dtype).kind:
            raise loc.fail(name, f"dtype {np.asarray(values).dtype} is not {np.dtype(dtype).name}-like")


def validate_trace(trace: TraceSet, source: str | None = None) -> None:
    """Raise TraceError naming file, request, position and field of the first problem (vectorised)."""
    source = source or trace.path or "<in-memory trace>"
    _check_header(trace.header, source)
    if len(trace.output_len) == 0:
        raise TraceError(f"{source}: no requests (a trace needs at least one)")
    loc = _Locator(source, list(trace.request_ids))
    columns = {name: getattr(trace, name) for name in FILE_SCHEMA}
    _check_dtypes(trace, loc)
    _check_shapes(columns, trace.header, loc)
    _check_positions(trace, loc)
    _check_lattices(trace, loc)


# ------------------------------------------------------------------------------------------------ I/O


def write_trace(trace: TraceSet, path: str | Path) -> Path:
    """Validate, then write one compressed file atomically (temp file in the same folder + os.replace)."""
    path = Path(path)
    if path.is_dir():
        raise TraceError(f"{path}: is a folder; give a file name such as run{TRACE_SUFFIX}")
    validate_trace(trace, source=str(path))
    absent = set(trace.header["absent_columns"])
    try:
        header_json = json.dumps(trace.header, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise TraceError(f"{path}: header: not JSON-serialisable ({error})") from None
    arrays = {"header": np.frombuffer(header_json.encode(), dtype=np.uint8),
              "request_ids": np.asarray(trace.request_ids, dtype=str)}
    for name, (_, dtype) in FILE_SCHEMA.items():
        stored_spine = name == "spine_run" and "draft_rank" in absent
        if name in absent or (name == "spine_run" and not stored_spine):
            continue
        values = getattr(trace, name)
        if np.dtype(dtype).kind in "iu" and len(values) and (values.min() < np.iinfo(dtype).min
                                                             or values.max() > np.iinfo(dtype).max):
            raise TraceError(f"{path}: field {name}: values do not fit the file's {np.dtype(dtype).name}")
        arrays[name] = np.asarray(values).astype(dtype)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    write_bytes_atomic(path, buffer.getvalue())
    return path


def _load_members(path: Path) -> dict:
    source = str(path)
    if not zipfile.is_zipfile(path):
        raise TraceError(f"{source}: not a trace file (expected a compressed .npz archive)")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise TraceError(f"{source}: not a readable trace file ({error})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise TraceError(f"{source}: not a trace file (expected a .npz archive)")
    members = {}
    with archive:
        for name in archive.files:
            try:
                members[name] = archive[name]
            except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error) as error:
                raise TraceError(f"{source}: field {name}: cannot be read ({error})") from None
    return members


def _parse_header(members: dict, source: str) -> dict:
    if "header" not in members:
        raise TraceError(f"{source}: header: missing (not a format-{FORMAT_VERSION} trace file)")
    try:
        header = json.loads(members["header"].tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TraceError(f"{source}: header: not valid JSON ({error})") from None
    _check_header(header, source)
    return header


def _file_columns(members: dict, header: dict, source: str) -> dict:
    """Columns with the file's exact dtypes, widened for memory; absent ones None (filled later)."""
    absent = set(header["absent_columns"])
    columns = {}
    for name, (_, dtype) in FILE_SCHEMA.items():
        stored = name not in absent and (name != "spine_run" or "draft_rank" in absent)
        if not stored:
            columns[name] = None
            continue
        if name not in members:
            raise TraceError(f"{source}: field {name}: missing (not declared absent in the header)")
        values = members[name]
        if values.ndim != 1 or values.dtype != dtype:
            raise TraceError(f"{source}: field {name}: expected a 1-d {np.dtype(dtype).name} array, "
                             f"got {values.ndim}-d {values.dtype}")
        columns[name] = values.astype(MEMORY_DTYPE[name], copy=False)
    ids = members.get("request_ids")
    if ids is None or ids.ndim != 1 or ids.dtype.kind != "U":
        raise TraceError(f"{source}: field request_ids: missing or not a 1-d string array")
    columns["request_ids"] = ids.tolist()
    return columns


def _fill_absent(columns: dict, header: dict) -> None:
    """In-memory stand-ins for absent columns (documented filler, never NaN)."""
    absent = set(header["absent_columns"])
    if {"node_cond_prob", "node_score"} & absent:
        for name in ("node_cond_prob", "node_score"):
            columns[name] = np.zeros(len(columns["node_token"]), dtype=np.float32)
    num_positions = int(columns["position_offsets"][-1])
    if "target_token" in absent:
        columns["target_token"] = np.full(num_positions, -1, dtype=np.int32)
    if "draft_rank" in absent:
        columns["draft_rank"] = np.where(columns["spine_run"] > 0, 0, -1).astype(np.int16)


def read_trace(path: str | Path) -> TraceSet:
    """Load and fully validate one trace file; nothing is returned unless every check passes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such trace file")
    source = str(path)
    try:
        members = _load_members(path)
        header = _parse_header(members, source)
        columns = _file_columns(members, header, source)
        _check_shapes(columns, header, _Locator(source, columns["request_ids"]))
        _fill_absent(columns, header)
        known = {f.name for f in fields(TraceSet)} - {"_cache"}
        trace = TraceSet(header=header, path=source, **{k: v for k, v in columns.items() if k in known})
        validate_trace(trace, source)
    except TraceError:
        raise
    except Exception as error:  # a corrupted archive can fail anywhere in zipfile / numpy (issue 15)
        raise TraceError(f"{source}: not a readable trace file ({type(error).__name__}: {error})") from None
    return trace
