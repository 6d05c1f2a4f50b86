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

The reader validates everything on load; TraceError names file, request, position and field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from echo_sim.trees import LatticeBatch

FORMAT_VERSION = 1


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
