"""The serving loop (ARCHITECTURE.md, "Data flow of one engine step") as one simpy process.

One engine process steps the whole running batch; per-request state lives in numpy arrays
(DecodeBatch), never in a process per request. Around each step:

- Arrivals. Closed loop: N clients with zero think time; a finished request's client sends its
  next request at the finish time. Open loop: arrival times are known in advance (seeded, or
  replayed); every request with arrival <= now joins the waiting queue at the start of a step.
  Same-time rule (deterministic): a request that arrives exactly when a step ends is admitted at
  the step that starts then. An idle engine sleeps on one timeout until the next arrival.
- Admission, FIFO, at the start of each step: while running requests (prefilling + decoding) <
  max_batch and the KV cache can hold the head request's prompt + output tokens. KV is reserved
  for the whole request at admission and released when it finishes: no preemption, no swapping,
  so a request once admitted always runs to the end (the head of the queue waits otherwise).
- Chunked prefill: up to `prefill_chunk` prompt tokens per step, FIFO over prefilling requests,
  costed in the same step as the decode batch: as its own forward or mixed into the verify forward
  (the cost model's prefill_mode knob, echo_sim.cost.serving). The step that completes a prompt commits y_0
  (the first token: TTFT); the request decodes from the next step, at position t = 1.
- Acceptance replay (TRACES.md): simulated request i replays trace request trace_request[i]; its
  output position t reads the trace's lattice at position t mod L_trace. When the workload's
  output is longer than the trace request, positions cycle (the lattice at a wrapped position
  comes from the start of the trace request; near the trace's end on-path depth is cut by the
  trace's own length, so cycling slightly underestimates acceptance there).
"""

from __future__ import annotations

import functools
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
import simpy

from echo_sim.config import (DEFAULT_KV_CAPACITY_TOKENS, DEFAULT_PREFILL_CHUNK, SimConfig, SimConfigError,
                             resolved_limit)
from echo_sim.cost.model import StepShape
from echo_sim.metrics import COUNTERS, RequestLog, StepLog, compute_metrics, selected_extent
from echo_sim.traces.reader import LatticeReader, chain_acceptance, empty_lattices, on_path_acceptance
from echo_sim.policies.base import Outcome, Selection, StepContext
from echo_sim.traces.format import TraceSet
from echo_sim.trees import LatticeBatch
from echo_sim.step import (StepRecord, chain_accepted, committed_counts, executed_draft, int_sum, int_sums,
                           policy_drafts, verify_shape)
from echo_sim.workload import RequestStream, build_stream


class DecodeBatch:
    """Requests past prefill, in the order they finished prefill (= admission order): the batch
    row order every policy sees (its request tie-break).

    One int64 table [len(FIELDS), bs], a row per field, so that dropping finished requests and
    joining new ones are one operation each. Each field is an attribute holding a view of its row
    (set once per table, not a property per read): update it in place (`batch.position += x`,
    `batch.draft_lag[:] = y`), never rebind it to a new array.
        request      simulated request id
        output_len   L of the simulated request
        prompt_len   prompt tokens
        trace_start  global trace position of its trace request's position 0
        trace_len    positions of its trace request (t reads t mod trace_len)
        draft_lag    tokens the draft's next level-1 forward extends over beyond the one token per
                     request: a drafting step leaves its accepted tokens (the draft extends over all
                     it committed, as SGLang's EAGLE draft extend does), a step without drafting adds
                     everything it commits (catch-up)
        position     output position t = tokens committed so far (the next lattice to read)
        decode_steps, decode_tokens, accepted_draft, verified_draft, oracle_depth
                     the request's RequestLog counters, summed here while it decodes and written to
                     the log when it finishes (a row-aligned add instead of a scatter per step)
    """

    FIELDS = ("request", "output_len", "prompt_len", "trace_start", "trace_len", "draft_lag", "position",
              *COUNTERS)  # position and the counters last: the rows every step adds to (STEP_ROWS)
    __slots__ = ("table", "size", *FIELDS)

    def __init__(self, table: np.ndarray):
        self.table = table
        self.size = table.shape[1]
        for name, row in zip(self.FIELDS, table):
            setattr(self, name, row)

    @classmethod
    def empty(cls) -> "DecodeBatch":
        return cls(np.zeros((len(cls.FIELDS), 0), dtype=np.int64))

    @classmethod
    def joining(cls, request, output_len, prompt_len, trace_start, trace_len) -> "DecodeBatch":
        """New rows at position 1 (y_0 committed by prefill), nothing lagging or counted yet."""
        table = np.zeros((len(cls.FIELDS), len(request)), dtype=np.int64)
        table[:5] = request, output_len, prompt_len, trace_start, trace_len
        table[cls.FIELDS.index("position")] = 1
        return cls(table)

    def keep(self, mask: np.ndarray) -> "DecodeBatch":
        return DecodeBatch(self.table[:, mask])

    def extend(self, other: "DecodeBatch") -> "DecodeBatch":
        return DecodeBatch(np.concatenate((self.table, other.table), axis=1))


COUNTER_ROWS = slice(len(DecodeBatch.FIELDS) - len(COUNTERS), None)  # the RequestLog counters, COUNTERS order
STEP_ROWS = slice(DecodeBatch.FIELDS.index("position"), None)  # position, then COUNTER_ROWS


class PrefillPlan(NamedTuple):
    """The step's prefill chunk: (entry, tokens this step, tokens already cached) per prefilling
    request served, and their totals."""

    chunks: list[tuple[list[int], int, int]]
    tokens: int
    context: int


NO_PREFILL = PrefillPlan([], 0, 0)  # a step with no prefilling request (its chunk list stays empty)


@dataclass(slots=True)
class DecodePlan:
    """What one step verifies and what it will commit (decided before the step's time passes).

    Shape (bs decoding requests, n lattice nodes): accepted bool [n]; counts int64 [6, bs], what
    each request adds to its DecodeBatch STEP_ROWS, in their order (position: committed; decode
    steps: 1; decode tokens: committed; accepted depth; drafted; oracle depth), so one add commits
    them all. `shape`: the step's StepShape (its prefill chunk included).
    """

    lattices: LatticeBatch
    selection: Selection
    accepted: np.ndarray
    counts: np.ndarray
    shape: StepShape
    draft_levels: tuple[int, ...] | None  # tokens per draft level when not the uniform shape's

    committed = property(lambda self: self.counts[0])
    accepted_depth = property(lambda self: self.counts[3])
    drafted = property(lambda self: self.counts[4])
    oracle_depth = property(lambda self: self.counts[5])


def bonus_only(lattices: LatticeBatch, selection: Selection) -> bool:
    """The step verifies no draft token (no lattice nodes, no chain): every request commits its
    bonus token alone, one token of output left or more (finished requests left the batch)."""
    return lattices.num_nodes == 0 and selection.chain is None


@functools.lru_cache(maxsize=1024)
def _bonus_counts(batch_size: int) -> np.ndarray:
    """DecodePlan.counts of a bonus-only step (read-only, shared): committed 1, a decode step,
    1 token, nothing accepted, drafted or on-path: what _decode_counts gives such a step."""
    counts = np.zeros((6, batch_size), dtype=np.int64)
    counts[:3] = 1
    counts.flags.writeable = False
    return counts


class Simulation:
    """One simulation with its own simpy Environment, policy instance and records: nothing is
    shared with other simulations in the process (tests run two interleaved)."""

    def __init__(self, config: SimConfig, trace: TraceSet, policy, cost, stream: RequestStream):
        self.config, self.trace, self.policy, self.cost, self.stream = config, trace, policy, cost, stream
        self.kv_capacity = resolved_limit(config.kv_capacity_tokens, cost, "kv_capacity_tokens",
                                          DEFAULT_KV_CAPACITY_TOKENS)
        self.prefill_chunk = resolved_limit(config.prefill_chunk, cost, "prefill_chunk_tokens",
                                            DEFAULT_PREFILL_CHUNK)
        self.env = simpy.Environment()
        self.requests = RequestLog(stream.prompt_len, stream.output_len, stream.trace_request)
        self.steps = StepLog(detail=config.step_log)
        self._reader = LatticeReader(trace)
        self._lattice_depth, self._lattice_width = trace.depth, trace.width  # header reads, once
        self.inexact_reads = self.on_path_cuts = 0  # request-steps whose narrow read is inexact (beam.py)
        self._drafts = policy_drafts(policy)
        self._draft_asked = self._draft_executed = None  # policy.draft and its executed_draft, kept while it holds
        self._trace_start = trace.position_offsets[stream.trace_request].astype(np.int64)
        self._trace_len = trace.output_len[stream.trace_request].astype(np.int64)
        self._kv_need = stream.prompt_len + stream.output_len
        self._waiting: deque[int] = deque()
        self._prefilling: deque[list[int]] = deque()  # [request, prompt tokens prefilled so far]
        self._batch = DecodeBatch.empty()
        self._kv_reserved = 0
        self._sent = 0  # requests sent (closed loop) or arrived (open loop) so far
        self._finished = 0
        self._check_fits()
        self.env.process(self._serve())

    @property
    def done(self) -> bool:
        return self._finished == self.stream.num_requests

    def run(self, until: float | None = None) -> "Simulation":
        self.env.run(until=until)
        return self

    # ------------------------------------------------------------------ arrivals and admission

    def _check_fits(self) -> None:
        worst = int(np.argmax(self._kv_need))
        if self._kv_need[worst] > self.kv_capacity:
            trace_id = self.trace.request_ids[int(self.stream.trace_request[worst])]
            raise SimConfigError(
                f"kv_capacity_tokens={self.kv_capacity} cannot hold simulated request {worst} (replaying "
                f"trace request {trace_id!r}: prompt {self.stream.prompt_len[worst]} + output "
                f"{self.stream.output_len[worst]} tokens)"
            )

    def _send(self, count: int) -> None:
        """Closed loop: the next `count` requests are sent now."""
        for request in range(self._sent, min(self._sent + count, self.stream.num_requests)):
            self.requests.arrival[request] = self.env.now
            self._waiting.append(request)
            self._sent += 1

    def _release_arrivals(self) -> None:
        """Open loop: every request with arrival <= now joins the queue, in arrival order."""
        arrival = self.stream.arrival
        end = int(np.searchsorted(arrival, self.env.now, side="right"))
        for request in range(self._sent, end):
            self.requests.arrival[request] = arrival[request]
            self._waiting.append(request)
        self._sent = max(self._sent, end)

    def _admit(self) -> None:
        """FIFO while the batch has room and the KV cache can hold the head request entirely."""
        while self._waiting and len(self._prefilling) + self._batch.size < self.config.max_batch:
            request = self._waiting[0]
            need = int(self._kv_need[request])
            if self._kv_reserved + need > self.kv_capacity:
                return
            self._waiting.popleft()
            self._kv_reserved += need
            self.requests.admitted[request] = self.env.now
            self._prefilling.append([request, 0])

    def _serve(self):
        if self.stream.arrival is None:
            self._send(self.config.concurrency)
        while not self.done:
            if self.stream.arrival is not None:
                self._release_arrivals()
            self._admit()
            if self._prefilling or self._batch.size:
                yield from self._step()
            elif self.stream.arrival is not None and self._sent < self.stream.num_requests:
                yield self.env.timeout(self.stream.arrival[self._sent] - self.env.now)  # idle
            else:  # cannot happen: every request fits an empty cache (_check_fits)
                raise RuntimeError("engine idle with requests left and none to come")

    # ------------------------------------------------------------------------------ the step

    def _step(self):
        """One engine step.

        The rule: every decoding request verifies its root (the last committed token) plus the
        draft nodes its policy selected, so the target forward verifies V = Σ_r (1 + n_r) tokens
        (plus graph-bucket padding), and commits its accepted depth + 1 (the bonus token), never
        beyond its output length: committed_r = min(a_r + 1, L_r − t_r) (echo_sim.step holds these
        rules for both engines). The step's prefill chunk runs in the same step (its own forward, or
        mixed into the verify forward: the cost model's prefill_mode); the draft's level 1 extends
        over the committed tokens. Everything is decided at the step's start; time passes (T_step =
        the sum of the cost model's prefill, draft, verify and overhead components); then the policy
        observes the outcome, the step is recorded, tokens are committed and finished requests leave.
        """
        start = self.env.now
        prefill = self._plan_prefill()
        plan = self._plan_decode(prefill) if self._batch.size else None
        shape = self._prefill_only_shape(prefill) if plan is None else plan.shape
        ragged = plan is not None and plan.draft_levels is not None  # a ragged draft replaces the uniform one
        draft_seconds = (self.cost.ragged_draft_time(shape.batch_size, plan.draft_levels, shape.kv_tokens)
                         if ragged else None)
        parts = self.cost.components(shape, draft_seconds=draft_seconds)
        yield self.env.timeout(sum(parts.values()))
        if plan is not None:
            self.policy.observe(Outcome(plan.lattices, plan.selection, plan.accepted, plan.accepted_depth))
        self._record(start, shape, plan, parts)
        if plan is not None:
            self._commit_decode(plan)
        self._commit_prefill(prefill.chunks)

    def _plan_prefill(self) -> PrefillPlan:
        """Up to prefill_chunk prompt tokens, FIFO over the prefilling requests."""
        if not self._prefilling:
            return NO_PREFILL
        budget, chunks, context = self.prefill_chunk, [], 0
        for entry in self._prefilling:
            if budget == 0:
                break
            take = min(int(self.stream.prompt_len[entry[0]]) - entry[1], budget)
            chunks.append((entry, take, entry[1]))
            budget -= take
            context += entry[1]
        return PrefillPlan(chunks, self.prefill_chunk - budget, context)

    def _plan_decode(self, prefill: PrefillPlan) -> DecodePlan:
        batch, bs = self._batch, self._batch.size
        if self.policy.draft is not self._draft_asked:  # a policy keeps its DraftShape while its shape holds
            self._draft_asked = self.policy.draft
            self._draft_executed = executed_draft(self._draft_asked, self._lattice_depth, self._lattice_width)
        draft = self._draft_executed
        positions = batch.trace_start + batch.position % batch.trace_len
        frontier = chain = None
        if draft.depth <= 0:
            lattices = empty_lattices(self.trace.spine_run[positions])
        else:
            # the nodes a width-k' drafter grows (beam-exact; a chain, width 1, replays the spine)
            read = self._reader.read_beam(positions, draft.depth, draft.width)
            lattices, frontier, chain = read.lattices, read.frontier, read.on_path_chain
            if read.exactness is not None:
                self.inexact_reads += int(np.count_nonzero(read.exactness.incomplete_level))
                self.on_path_cuts += int(np.count_nonzero(read.exactness.on_path_cut_level))
        kv_lens = batch.prompt_len + batch.position
        prefill_seconds = self.cost.prefill_time(prefill.tokens, prefill.context, self._drafts)
        catch_up = int_sum(batch.draft_lag) if draft.depth > 0 else 0
        context = StepContext(bs, kv_lens, self.cost, draft, self._lattice_depth, self._lattice_width,
                              prefill_seconds=prefill_seconds, frontier=frontier, catch_up=catch_up,
                              on_path_depth=lambda width: self._reader.on_path_depth(positions, width))
        selection = self.policy.select(lattices, context)
        if selection.drafted is not None:
            draft = selection.drafted
        kv_tokens = int_sum(kv_lens)
        if bonus_only(lattices, selection):  # each request verifies its root alone and commits it
            accepted, counts = lattices.on_path, _bonus_counts(bs)  # on_path: the empty bool [0]
            verify_tokens, attention_pairs = bs + int(selection.padding), kv_tokens + bs  # verify_shape, n_r = 0
        else:
            accepted, counts = self._decode_counts(lattices, selection, chain)
            verify_tokens, attention_pairs = verify_shape(kv_lens, counts[4], selection.padding)
        shape = StepShape(bs, verify_tokens, kv_tokens, attention_pairs, draft.depth, draft.width,
                          prefill_tokens=prefill.tokens, prefill_context=prefill.context,
                          eager=bool(selection.eager), prefill_draft=self._drafts,
                          draft_extend_tokens=bs + catch_up if draft.depth > 0 else 0)
        return DecodePlan(lattices, selection, accepted, counts, shape, self._draft_levels(draft, selection, catch_up))

    def _decode_counts(self, lattices: LatticeBatch, selection: Selection, chain) -> tuple[np.ndarray, np.ndarray]:
        """(accepted bool [n], DecodePlan.counts int64 [6, bs]) of a step that verifies drafts."""
        batch = self._batch
        accepted, accepted_depth, oracle_depth = (
            on_path_acceptance(lattices, selection.nodes) if chain is None
            else chain_acceptance(chain, lattices.offsets, selection.nodes))
        if selection.chain is not None:
            accepted_depth = chain_accepted(lattices.spine_run, selection.chain)
        counts = np.empty((6, batch.size), dtype=np.int64)
        counts[1] = 1
        counts[3], counts[4], counts[5] = accepted_depth, selection.draft_tokens_per_request(lattices), oracle_depth
        counts[0] = committed_counts(counts[3], batch.output_len - batch.position)  # int64 in, no cast
        counts[2] = counts[0]
        return accepted, counts

    def _draft_levels(self, draft, selection, catch_up: int) -> tuple[int, ...] | None:
        """Tokens of each draft forward when they differ from the uniform shape's (bs, bs·k', …):
        echo's ragged levels, their level 1 extending over the lagging tokens too (a uniform draft's
        level 1 is charged through StepShape.draft_extend_tokens)."""
        if draft.depth <= 0 or selection.draft_level_tokens is None:
            return None
        bs = self._batch.size
        levels = list(selection.draft_level_tokens or [bs] + [bs * draft.width] * (draft.depth - 1))
        levels[0] += catch_up
        return tuple(levels)

    def _prefill_only_shape(self, prefill: PrefillPlan) -> StepShape:
        """The shape of a step with no decoding request (its prefill chunk alone)."""
        return StepShape(batch_size=0, verify_tokens=0, kv_tokens=0, attention_pairs=0, draft_depth=0,
                         draft_width=0, prefill_tokens=prefill.tokens, prefill_context=prefill.context,
                         prefill_draft=self._drafts)

    # ------------------------------------------------------------------------------ commits

    def _commit_decode(self, plan: DecodePlan) -> None:
        batch = self._batch
        batch.table[STEP_ROWS] += plan.counts
        if plan.shape.draft_depth > 0:
            batch.draft_lag[:] = plan.committed - 1
        elif self._drafts:  # the draft model did not run: it has the committed tokens to catch up on
            batch.draft_lag += plan.committed
        done = batch.position >= batch.output_len
        if np.count_nonzero(done):
            finished = batch.table[:, done]
            self.requests.count(finished[0], finished[COUNTER_ROWS])
            for request in finished[0].tolist():
                self._finish(request)
            self._batch = batch.keep(~done)

    def _commit_prefill(self, chunks) -> None:
        """Prompts completed this step commit y_0 (first token) and join the decode batch."""
        for entry, take, _ in chunks:
            entry[1] += take
        joined = []
        while self._prefilling and self._prefilling[0][1] == self.stream.prompt_len[self._prefilling[0][0]]:
            request = self._prefilling.popleft()[0]
            self.requests.first_token[request] = self.env.now
            if self.stream.output_len[request] == 1:
                self._finish(request)
            else:
                joined.append(request)
        if joined:
            ids = np.asarray(joined, dtype=np.int64)
            self._batch = self._batch.extend(DecodeBatch.joining(
                ids, self.stream.output_len[ids], self.stream.prompt_len[ids], self._trace_start[ids],
                self._trace_len[ids]))

    def _finish(self, request: int) -> None:
        self.requests.finish[request] = self.env.now
        self._kv_reserved -= int(self._kv_need[request])
        self._finished += 1
        if self.stream.arrival is None:
            self._send(1)  # the client sends its next request (zero think time)

    # ------------------------------------------------------------------------------ records

    def _record(self, start: float, shape: StepShape, plan: DecodePlan | None, parts: dict) -> None:
        record = StepRecord(start, self.env.now, prefill_tokens=shape.prefill_tokens,
                            prefill_context=shape.prefill_context, draft_time=float(parts.get("draft", 0.0)))
        if plan is not None:
            selection = plan.selection
            record.batch_size, record.verify_tokens = shape.batch_size, shape.verify_tokens
            _, _, record.committed, record.accepted, record.selected, record.oracle_depth = int_sums(plan.counts)
            record.padding = int(selection.padding)
            record.budget = math.nan if selection.budget is None else float(selection.budget)
            record.eager, record.draft_depth, record.draft_width = shape.eager, shape.draft_depth, shape.draft_width
            record.kv_tokens, record.attention_pairs = shape.kv_tokens, shape.attention_pairs
        self.steps.append(record)
        if self.steps.detail:
            self.steps.components.append(dict(parts))
            self.steps.details.append(self._detail(plan))

    def _detail(self, plan: DecodePlan | None) -> tuple[list, ...]:
        """Per-request lists for the step log: ids, selected depth and width, accepted and oracle depth."""
        if plan is None:
            return ([], [], [], [], [])
        depth, width = selected_extent(plan.lattices, plan.selection)
        return (self._batch.request.tolist(), depth.tolist(), width.tolist(),
                plan.accepted_depth.tolist(), plan.oracle_depth.tolist())

    def result(self) -> "SimResult":
        if not self.done:
            raise RuntimeError("simulation has not finished; call run() first")
        requests = self.requests.frame()
        steps = self.steps.frame()
        metrics = compute_metrics(requests, steps, self.config.concurrency
                                  if self.config.arrival_mode == "closed" else None)
        request_steps = max(int(requests["decode_steps"].sum()), 1)
        metrics = {**self._identity(), **metrics, "inexact_read_share": self.inexact_reads / request_steps,
                   "on_path_cut_share": self.on_path_cuts / request_steps, "sim_cpu_seconds": float("nan")}
        return SimResult(metrics=metrics, requests=requests, steps=steps if self.config.step_log else None)

    def _identity(self) -> dict:
        config = self.config
        source = getattr(self.trace, "source_label", None) or str(self.trace.path)
        cost = getattr(self.cost, "describe", dict)()  # hardware/model come from the cost model
        return {
            "policy": self.policy.label, "concurrency": config.concurrency, "rate": config.rate,
            "arrival": config.arrival_mode, "workload": config.workload, "seed": config.seed,
            "requests": self.stream.num_requests, "hardware": cost.get("hardware", config.hardware),
            "model": cost.get("model", config.model),
            "max_batch": config.max_batch, "kv_capacity_tokens": self.kv_capacity,
            "prefill_chunk": self.prefill_chunk, "acceptance_source": source,
            "cost_source": str(self.cost.source),
            **getattr(self.cost, "serving_knobs", dict)(),
        }


@dataclass
class SimResult:
    """metrics: the `run --json` fields; requests: one row per request (RequestLog); steps: one row
    per engine step with per-request lists and step-time components (only with step_log)."""

    metrics: dict
    requests: pd.DataFrame
    steps: pd.DataFrame | None = None


def build_simulation(config: SimConfig, trace: TraceSet | None = None, policy=None, cost=None) -> Simulation:
    """A ready-to-run Simulation; trace, policy and cost default to what the config names."""
    config.validate_load()
    if trace is None:
        from echo_sim.trace_cache import trace_for  # read once per process (or the Ray worker's copy)

        trace = trace_for(config)
    config.validate_inputs(need_trace_file=False)
    if cost is None:
        cost = config.load_cost()
    if policy is None:
        from echo_sim.policies.registry import make_policy

        policy = make_policy(config.policy)
    stream = build_stream(config.workload, config.requests, config.seed, trace.prompt_len,
                          trace.output_len, config.arrival_mode, config.rate)
    return Simulation(config, trace, policy, cost, stream)


def simulate(config: SimConfig, trace: TraceSet | None = None) -> SimResult:
    """Run one simulation to the end. sim_cpu_seconds counts the run and the metrics, not loading."""
    simulation = build_simulation(config, trace)
    started = time.process_time()
    result = simulation.run().result()
    result.metrics["sim_cpu_seconds"] = time.process_time() - started
    return result
