"""The runtime's serving loop: continuous batching, closed loop, one shared policy object.

One engine step, the same data flow as echo_sim.engine (ARCHITECTURE.md):

    admit (prefill) -> draft (grow lattices) -> policy.select -> verify (one target forward
    with a tree mask) -> greedy acceptance -> commit -> policy.observe -> retire / next request

Rule of the step: verified tokens = roots + selected nodes (+ graph padding); committed tokens per
request = accepted nodes + 1 (the bonus token), capped at the request's remaining output. A root
is the last committed token; its K/V enters the target cache only when it is verified, so after a
step the target cache holds prompt + output[:-1] and the new root is the bonus token.

Newly admitted requests are prefilled at the start of a step (prefill commits y_0) and decode from
the next step on. The closed-loop client of a finished request sends its next request at once.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from echo_runtime.draft_tree import commit_draft, grow_lattices
from echo_runtime.forward import chain_row, next_token_logits, tree_forward
from echo_runtime.kv_cache import KVCache, check_memory
from echo_runtime.timing import Clock
from echo_runtime.verify import VerifyTree, build_tree
from echo_sim.policies.base import DraftShape, Outcome, Selection, StepContext
from echo_sim.step import StepRecord, executed_draft, policy_drafts, verify_shape
from echo_sim.trees import LatticeBatch


@dataclass(frozen=True)
class RuntimeConfig:
    """concurrency C (closed-loop clients = KV slots); width/depth: the largest lattice the drafter
    grows (what `trace_width`/`trace_depth` are to the simulator); eos ends a request early;
    kernels: the Triton verification kernels instead of SDPA (what a CUDA run uses)."""

    concurrency: int
    width: int = 4
    depth: int = 6
    eos_token_ids: tuple[int, ...] = ()
    capacity: int | None = None  # KV tokens per slot; default: longest prompt + output + tree room
    kernels: bool = False  # verify with kernels.tree_attention (+ tree_verify via ModelSignals): on CUDA
    clock: str = "auto"  # echo_runtime.timing: cuda events on a GPU, thread CPU time on a CPU, or "wall"


@dataclass(frozen=True)
class RequestSpec:
    """A request to serve: prompt token ids and the output length cap."""

    prompt: np.ndarray
    max_new: int


@dataclass
class LiveRequest:
    index: int
    prompt: np.ndarray
    max_new: int
    arrival: float
    slot: int = -1
    output: list[int] = field(default_factory=list)
    draft_pending: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    admitted_time: float = float("nan")
    first_token_time: float = float("nan")
    finish_time: float = float("nan")
    steps: int = 0
    accepted_draft: int = 0  # Σ accepted depth a (bonus excluded)
    verified_draft: int = 0  # Σ draft nodes verified for it
    done: bool = False

    @property
    def position(self) -> int:
        """t: index of the next output token (the root is y_{t-1})."""
        return len(self.output)


@dataclass
class RunRecord:
    """Everything a run measured: per-request lifecycles and per-step records (times in seconds
    from the run's start)."""

    requests: list[LiveRequest]
    steps: list[StepRecord]
    policy: str
    concurrency: int


class LiveEngine:
    def __init__(self, target, draft, policy, cost, config: RuntimeConfig, signals,
                 device: str = "cpu") -> None:
        self.target, self.draft, self.policy, self.cost = target, draft, policy, cost
        self.config, self.signals, self.device = config, signals, torch.device(device)
        self.uses_draft = policy_drafts(policy)
        if policy.needs_future and not signals.uses_trace:
            raise ValueError(f"policy {policy.name!r} reads the target's future output (lattice on_path): "
                             "it runs in the simulator or in a trace replay, not live")
        self.dtype = next(target.parameters()).dtype
        self.clock = Clock(self.device, config.clock)

    # ---- the loop -------------------------------------------------------------------------
    def run(self, specs: list[RequestSpec], progress=None) -> RunRecord:
        capacity = self.config.capacity or self._default_capacity(specs)
        # C closed-loop clients never hold more than the requests there are: one slot per request at most
        slots = min(self.config.concurrency, len(specs))
        needed = KVCache.nbytes(self.target.config, slots, capacity, self.dtype)
        needed += KVCache.nbytes(self.draft.config, slots, capacity, self.dtype) if self.uses_draft else 0
        check_memory(needed, self.device, f"the KV caches ({slots} slots x {capacity} tokens)")
        self.target_cache = KVCache.allocate(self.target.config, slots, capacity, self.dtype, self.device)
        self.draft_cache = (KVCache.allocate(self.draft.config, slots, capacity, self.dtype, self.device)
                            if self.uses_draft else None)
        self.start = self.clock.now()
        requests = [LiveRequest(i, np.asarray(s.prompt, np.int64), s.max_new, arrival=0.0)
                    for i, s in enumerate(specs)]
        arrived = min(slots, len(requests))  # closed loop: C clients send their first request at 0
        admitted_count = 0
        active: list[LiveRequest] = []
        finished: list[LiveRequest] = []
        steps: list[StepRecord] = []
        while admitted_count < len(requests) or active:
            free = sorted(set(range(slots)) - {q.slot for q in active})
            admitted = requests[admitted_count: min(arrived, admitted_count + len(free))]
            admitted_count += len(admitted)
            for request, slot in zip(admitted, free):
                request.slot = slot
            record = self.step(active, admitted)
            steps.append(record)
            for request in [q for q in active + admitted if q.done]:
                request.finish_time = record.end
                self.target_cache.release(request.slot)
                if self.draft_cache is not None:
                    self.draft_cache.release(request.slot)
                finished.append(request)
                if arrived < len(requests):  # its client sends the next request at once
                    requests[arrived].arrival = record.end
                    arrived += 1
            active = [q for q in active + admitted if not q.done]
            if progress is not None:
                progress(len(finished))
        finished.sort(key=lambda q: q.index)
        return RunRecord(finished, steps, self.policy.name, slots)

    def step(self, running: list[LiveRequest], admitted: list[LiveRequest]) -> StepRecord:
        """One engine step (module docstring). Returns the step's record."""
        watch = self.clock.stopwatch()
        begin = self.clock.now() - self.start
        wall_begin = time.perf_counter()
        watch.mark("start")
        if admitted:
            self._prefill(admitted)
        watch.mark("prefill")
        record = StepRecord(begin, begin, batch_size=len(running),
                            prefill_tokens=int(sum(len(q.prompt) for q in admitted)),
                            kv_tokens=int(sum(len(q.prompt) + q.position for q in running)))
        if running:
            self._decode(running, watch, record)
        record.end = self.clock.now() - self.start
        for request in admitted:
            request.admitted_time, request.first_token_time = begin, record.end
        record.laps = {**{f"{k}_s": v for k, v in watch.laps().items()}, "wall_s": time.perf_counter() - wall_begin}
        record.draft_time = record.laps.get("draft_s", 0.0)
        return record

    # ---- phases ---------------------------------------------------------------------------
    def _prefill(self, admitted: list[LiveRequest]) -> None:
        rows = [chain_row(q.slot, q.prompt, 0) for q in admitted]
        hidden = tree_forward(self.target, self.target_cache, rows)
        last = torch.as_tensor(np.cumsum([len(q.prompt) for q in admitted]) - 1, device=hidden.device)
        argmax = next_token_logits(self.target, hidden[last]).argmax(dim=-1).cpu().numpy()
        self.target_cache.keep(np.array([q.slot for q in admitted]), [np.arange(len(q.prompt)) for q in admitted])
        if self.uses_draft:
            tree_forward(self.draft, self.draft_cache, rows)
            self.draft_cache.keep(np.array([q.slot for q in admitted]), [np.arange(len(q.prompt)) for q in admitted])
        for request, top in zip(admitted, argmax):
            request.output.append(self.signals.first_token(request, int(top)))
            request.draft_pending = np.array(request.output, dtype=np.int64)
            request.done = self._finished(request)

    def _decode(self, running: list[LiveRequest], watch, record: StepRecord) -> None:
        shape = self._draft_shape()
        slots = np.array([q.slot for q in running], dtype=np.int64)
        grown, levels = None, []
        pending = [q.draft_pending for q in running]
        if shape.depth > 0:
            rule = self.policy.drafter_expands  # echo's expand gate, None for the others
            expand = self.signals.expand_rule(rule, running, shape) if rule is not None and shape.depth > 1 else None
            grown = grow_lattices(self.draft, self.draft_cache, slots, pending, shape.width, shape.depth,
                                  on_level=lambda level, tokens: levels.append(tokens), expand=expand)
        watch.mark("draft")
        record.draft_levels = tuple(levels)
        lattices, frontier = self.signals.lattices(running, grown, shape)
        catch_up = int(sum(len(p) for p in pending)) - len(running) if shape.depth > 0 else 0
        selection = self.policy.select(lattices, self._context(running, shape, record, frontier, catch_up))
        watch.mark("select")
        trees = self._verify_trees(running, lattices, grown, selection, shape)
        rows = [tree.row(q.slot, len(q.prompt) + q.position - 1) for q, tree in zip(running, trees)]
        hidden = tree_forward(self.target, self.target_cache, rows, use_kernel=self.config.kernels)
        argmax = next_token_logits(self.target, hidden).argmax(dim=-1)
        walks = self.signals.accept(lattices, selection, running, trees, argmax)
        watch.mark("verify")
        kv = np.array([len(q.prompt) + q.position for q in running], dtype=np.int64)
        record.verify_tokens, record.attention_pairs = verify_shape(kv, [t.selected for t in trees], selection.padding)
        record.rows = tuple((q.index, q.position) for q in running)
        outcome, committed = self._commit(running, lattices, selection, trees, walks, grown)
        self.policy.observe(outcome)
        watch.mark("commit")
        record.selected, record.padding = int(sum(t.selected for t in trees)), int(selection.padding)
        record.budget = math.nan if selection.budget is None else float(selection.budget)
        record.eager, record.draft_depth, record.draft_width = bool(selection.eager), shape.depth, shape.width
        record.accepted, record.committed = int(outcome.accepted_depth.sum()), committed

    def _commit(self, running, lattices: LatticeBatch, selection: Selection, trees: list[VerifyTree],
                walks, grown) -> tuple[Outcome, int]:
        accepted = np.zeros(lattices.num_nodes, dtype=bool)
        depth = np.array([len(path) for path, _ in walks], dtype=np.int32)
        committed, new_tokens = 0, []
        for row, (request, tree, (path, bonus)) in enumerate(zip(running, trees, walks)):
            if selection.chain is None:
                accepted[lattices.offsets[row] + tree.nodes[path - 1]] = True
            tokens = [int(t) for t in tree.tokens[path]] + [bonus]
            tokens = tokens[: request.max_new - request.position]
            stop = [i for i, t in enumerate(tokens) if t in self.config.eos_token_ids]
            tokens = tokens[: stop[0] + 1] if stop else tokens
            request.output += tokens
            request.steps += 1
            request.accepted_draft += len(path)
            request.verified_draft += tree.selected
            committed += len(tokens)
            request.done = self._finished(request)
            new_tokens.append(np.asarray(tokens, dtype=np.int64))
        slots = np.array([q.slot for q in running], dtype=np.int64)
        self.target_cache.keep(slots, [np.concatenate(([0], path)) for path, _ in walks])
        if grown is not None:  # finished requests may have cut their bonus: their pending is moot
            lattice_paths = [tree.nodes[path - 1] for tree, (path, _) in zip(trees, walks)]
            pending = commit_draft(self.draft_cache, slots, grown, lattice_paths, [[b] for _, b in walks])
        elif self.uses_draft:  # drafted nothing this step: the whole commit waits for the draft
            pending = [np.concatenate([q.draft_pending, t]) for q, t in zip(running, new_tokens)]
        else:
            pending = [np.zeros(0, dtype=np.int64) for _ in running]
        for request, tokens in zip(running, pending):
            request.draft_pending = tokens
        outcome = Outcome(lattices=lattices, selection=selection, accepted=accepted, accepted_depth=depth)
        return outcome, committed

    # ---- helpers --------------------------------------------------------------------------
    def _draft_shape(self) -> DraftShape:
        """The policy's shape as executed on the configured lattice (echo_sim.step.executed_draft)."""
        return executed_draft(self.policy.draft, self.config.depth, self.config.width)

    def _context(self, running: list[LiveRequest], shape: DraftShape, record: StepRecord,
                 frontier: np.ndarray | None, catch_up: int) -> StepContext:
        """What echo_sim.engine hands the policy: T_prefill of the step's prefill chunk (the
        admitted prompts, with the draft's prefill when the policy drafts), the drafter's frontier,
        the tokens level 1 really ran beyond one per request. (That last one differs from the
        simulator's after a drafting step: the runtime keeps the draft K/V of the accepted nodes it
        forwarded and re-runs only the others, the simulator charges every accepted token, as
        SGLang's EAGLE draft extend does. No policy reads it.)"""
        kv = np.array([len(q.prompt) + q.position for q in running], dtype=np.int64)
        prefill_seconds = self.cost.prefill_time(record.prefill_tokens, record.prefill_context, self.uses_draft)
        return StepContext(batch_size=len(running), kv_lens=kv, cost=self.cost, draft=shape,
                           trace_depth=self.config.depth, trace_width=self.config.width,
                           prefill_seconds=prefill_seconds, frontier=frontier, catch_up=catch_up)

    def _verify_trees(self, running, lattices: LatticeBatch, grown, selection: Selection,
                      shape: DraftShape) -> list[VerifyTree]:
        chain = selection.chain is not None
        if chain and shape.width != 1:
            raise ValueError(f"policy {self.policy.name!r} selected a chain but drafted width {shape.width}")
        padding = _spread(selection.padding, len(running))
        trees = []
        for row, request in enumerate(running):
            token, parent, depth = self.signals.node_arrays(lattices, row, grown, chain)
            if chain:
                nodes = np.arange(min(int(selection.chain[row]), len(token)))
            else:
                nodes = np.flatnonzero(selection.nodes[lattices.offsets[row]: lattices.offsets[row + 1]])
            trees.append(build_tree(request.output[-1], nodes, token, parent, depth, int(padding[row])))
        return trees

    def _finished(self, request: LiveRequest) -> bool:
        return request.position >= request.max_new or request.output[-1] in self.config.eos_token_ids

    def _default_capacity(self, specs: list[RequestSpec]) -> int:
        lattice = self.config.width + max(self.config.depth - 1, 0) * self.config.width ** 2
        longest = max(len(s.prompt) + s.max_new for s in specs)
        return longest + 2 * (lattice + 2) + 256  # + tree scratch and room for graph padding


def _spread(total: int, rows: int) -> np.ndarray:
    """int [rows]: `total` padding tokens spread evenly over the rows (first rows get the rest)."""
    base = np.full(rows, total // max(rows, 1), dtype=np.int64)
    base[: total % max(rows, 1)] += 1
    return base
