"""Step-time model (COST_MODEL.md): the simulator's clock.

CONTRACT (fixed; the engine and the policies build against it; the cost work fills in the bodies):

    @dataclass class StepShape:
        batch_size: int        decoding requests verified this step (0: a prefill-only step)
        verify_tokens: int     V = roots + selected draft nodes + bucket padding
        kv_tokens: int         Σ_r KV_r over the decoding requests (tokens already cached)
        attention_pairs: int   Σ_r V_r · (KV_r + V_r): exact attention work of the tree tokens
        draft_depth: int       levels drafted this step (0 = no drafting)
        draft_width: int       k per level (1 = chain)
        prefill_tokens: int = 0     prompt tokens of the prefill chunk scheduled in this step
        prefill_context: int = 0    tokens already cached for the prefilling request(s)
        eager: bool = False         the verify shape is not a captured graph
        prefill_draft: bool = True  the draft model prefills the chunk too (False: a policy that
                                    never drafts, e.g. ar, runs no draft model at all)
        draft_extend_tokens: int = 0   tokens the draft's level 1 extends over: everything committed
                                    since the draft last ran, Σ_r (1 + accepted_r) of the previous
                                    step when it drafted every step (0: batch_size, one per request)

    class CostModel:
        source: str                      "preset:h200/llama-3.1-8b" or "calibration:<path>"
        graph_buckets: tuple[int, ...]   captured verify-token buckets (sorted)
        def step_time(self, shape: StepShape) -> float                       seconds
        def components(self, shape: StepShape) -> dict[str, float]           prefill/draft/verify/overhead
        def verify_time(self, verify_tokens, batch_size: int, kv_tokens: int, eager: bool = False)
            -> np.ndarray   vectorised over an array of candidate V (what echo's goodput budget scans);
                            includes the per-step overhead; attention pairs approximated by spreading V
                            evenly over the batch
        def draft_time(self, batch_size: int, depth: int, width: int) -> float
        def graph_bucket(self, verify_tokens: int) -> int | None   smallest bucket >= V, None above all

    def load_cost_model(hardware: str = "h200", model: str = "llama-3.1-8b",
                        calibration: str | Path | None = None) -> CostModel
    class CostModelError(ValueError)   unknown preset (lists known ones), bad/NaN calibration file

Additions beyond the contract: `draft_time(..., kv_tokens=0, extend_tokens=None)` (the draft's
attention reads the cached context too: pass ΣKV when known; level 1 extends over the tokens
committed since the draft last ran), `ragged_draft_time(batch_size, level_tokens, kv_tokens)` (a
draft whose levels run different token counts: echo's expand gate, catch-up after steps without
drafting), `components(shape, draft_seconds=None)` (the engine passes a ragged draft's seconds in
place of the uniform shape's), `prefill_time`, `describe()`, `serving_knobs()`, `executed_shape` (THE graph-bucket
rule, echo_sim.cost.graphs), `kv_capacity_tokens`, `prefill_chunk_tokens`,
`load_cost_model(..., tp=None, cost=None, knobs=None)`; `hardware`/`model` default to None,
meaning h200 / llama-3.1-8b for presets and "whatever the file says" with a calibration. `cost`:
"fitted" (the default where a fitted profile exists, echo_sim.cost.fitted) or "roofline"; a
calibration supersedes both. `knobs`: the serving-engine knobs (echo_sim.cost.serving.ServingKnobs).

T_step = T_prefill + T_draft + T_verify + T_overhead. Graph mode: a verify of V tokens runs the
smallest captured bucket >= V (padding costs like real tokens) and pays one graph replay; a step
marked eager, or with V above the largest bucket, runs V tokens and pays eager launches
(echo_sim.cost.graphs: token buckets, or SGLang's per-batch-size EAGLE graphs). A prefill chunk
runs as its own forward or mixed into the verify forward (knob prefill_mode). Terms come from the
roofline (roofline.RooflineTerms, with or without fitted rates) or from a calibration file
(calibration_file.CalibratedTerms).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from echo_sim.cost.calibration_file import Calibration, CalibratedTerms, load_calibration
from echo_sim.cost.fitted import FittedProfile, fitted_profile_path, load_fitted_profile
from echo_sim.cost.graphs import GraphCapture, sglang_batch_sizes
from echo_sim.cost.presets import (CostModelError, HardwareSpec, ModelSpec, load_hardware,
                                   load_model)
from echo_sim.cost.memo import remembered
from echo_sim.cost.roofline import FEW, RooflineTerms
from echo_sim.cost.serving import ServingKnobs, check_cost_mode

__all__ = ["StepShape", "CostModel", "CostModelError", "load_cost_model", "roofline_cost_model",
           "calibrated_cost_model"]

DEFAULT_HARDWARE, DEFAULT_MODEL = "h200", "llama-3.1-8b"
EXECUTED_KEPT = 1 << 13  # shape lists whose fixed verify terms a cost model remembers (executed_seconds)


@dataclass(slots=True)
class StepShape:
    """What one engine step does (see the CONTRACT above for each field). A value never modified
    once built (not frozen=True, whose __init__ costs ~3 µs more: the engine builds one per step)."""

    batch_size: int
    verify_tokens: int
    kv_tokens: int
    attention_pairs: int
    draft_depth: int
    draft_width: int
    prefill_tokens: int = 0
    prefill_context: int = 0
    eager: bool = False
    prefill_draft: bool = True
    draft_extend_tokens: int = 0

    def __post_init__(self):
        counts = _counts_of(self)
        if not (set(map(type, counts)) == {int} and min(counts) >= 0):  # else: name the bad field
            self._check_counts()
        if self.verify_tokens < self.batch_size:
            raise CostModelError(f"StepShape: verify_tokens {self.verify_tokens} < batch_size "
                                 f"{self.batch_size} (every request verifies its root)")
        if self.batch_size == 0 and (self.verify_tokens or self.draft_depth):
            raise CostModelError("StepShape: batch_size 0 cannot verify or draft")
        if self.draft_depth > 0 and self.draft_width < 1:
            raise CostModelError(f"StepShape.draft_width = {self.draft_width}: must be >= 1 when drafting")

    def _check_counts(self) -> None:
        """Every count field an integer >= 0 (numpy integers and bools pass as integers)."""
        for name in _COUNT_FIELDS:
            value = getattr(self, name)
            try:
                if operator.index(value) < 0:
                    raise CostModelError(f"StepShape.{name} = {value}: must be >= 0")
            except TypeError:
                raise CostModelError(f"StepShape.{name} = {value!r}: must be an integer") from None


_COUNT_FIELDS = tuple(f.name for f in fields(StepShape) if f.type == "int")
_counts_of = operator.attrgetter(*_COUNT_FIELDS)  # the engine's shapes are plain ints: one check for all


class CostModel:
    """T_step from a set of terms (roofline or calibration), with graph-bucket bookkeeping."""

    def __init__(self, terms, *, graph_buckets, source: str, description: dict,
                 kv_capacity_tokens: int, prefill_chunk_tokens: int, knobs: ServingKnobs | None = None,
                 tp: int = 1):
        self.terms = terms
        self.knobs = knobs or ServingKnobs()
        self.graphs = GraphCapture(self.knobs.verify_graphs, tuple(int(b) for b in graph_buckets),
                                   sglang_batch_sizes(tp) if graph_buckets else (), self.knobs.graph_tokens)
        self.graph_buckets = self.graphs.token_sizes
        self.source = source
        self.kv_capacity_tokens = int(kv_capacity_tokens)
        self.prefill_chunk_tokens = int(prefill_chunk_tokens)
        self._description = {"source": source, **description}
        self._last_draft = (None, 0.0)  # a step's policy and engine ask for the same draft shape
        self._last_ragged = (None, 0.0, 0.0)
        self._last_prefill = (None, 0.0)  # the engine asks for the step's prefill before components() does
        self._executed_terms: dict = {}  # (bs, shapes) -> their fixed verify terms (executed_seconds)

    def describe(self) -> dict:
        """What a result record stores about its cost source: source, hardware, model, dtype, tp, cost model."""
        return dict(self._description)

    def serving_knobs(self) -> dict:
        """The serving-engine knobs every result records (echo_sim.cost.serving)."""
        return {"cost_model": self._description["cost_model"], **self.knobs.record()}

    def executed_shape(self, verify_tokens, batch_size: int, bucketing: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(tokens run int64, eager bool) per candidate V: the one graph-bucket rule (echo_sim.cost.graphs)."""
        return self.graphs.executed(verify_tokens, batch_size, bucketing)

    def executed_one(self, verify_tokens: int, batch_size: int, bucketing: bool = True) -> tuple[int, bool]:
        """executed_shape of one V in plain ints: (tokens run, eager)."""
        return self.graphs.executed_one(verify_tokens, batch_size, bucketing)

    def graph_bucket(self, verify_tokens: int, batch_size: int = 1) -> int | None:
        """The captured shape a verify of V tokens runs as, None when it runs eagerly."""
        tokens, eager = self.graphs.executed([verify_tokens], batch_size)
        return None if eager[0] else int(tokens[0])

    def _run_tokens(self, verify_tokens: np.ndarray, batch_size: int, eager: bool):
        """(tokens the forward runs, eager mask). Shape: verify_tokens float [n] -> [n], bool [n]."""
        if eager:
            return verify_tokens, np.ones(verify_tokens.shape, dtype=bool)
        tokens, eager_mask = self.graphs.executed(verify_tokens, batch_size)
        return np.where(eager_mask, verify_tokens, tokens).astype(float), eager_mask

    def verify_time(self, verify_tokens, batch_size: int, kv_tokens: int, eager: bool = False) -> np.ndarray:
        """Seconds of verify + per-step overhead for each candidate V (no draft, no prefill).

        Shape: verify_tokens int/float [...] -> float64 [...]. Attention pairs assume V and ΣKV
        spread evenly over the batch: pairs = V·(ΣKV + V) / bs.
        """
        if batch_size < 1 or kv_tokens < 0:
            raise CostModelError(f"verify_time: batch_size {batch_size} must be >= 1, kv_tokens {kv_tokens} >= 0")
        requested = np.asarray(verify_tokens, dtype=float)
        if requested.size and not requested.min() >= batch_size:  # also catches NaN
            raise CostModelError(f"verify_time: every V must be >= batch_size {batch_size} (one root each)")
        if 0 < requested.size <= FEW and isinstance(self.terms, RooflineTerms):
            seconds = self._verify_floats(requested.ravel().tolist(), batch_size, kv_tokens, eager)
            if seconds is not None:
                return np.array(seconds).reshape(requested.shape)
        tokens, eager_mask = self._run_tokens(np.atleast_1d(requested).ravel(), batch_size, eager)
        pairs = tokens * (kv_tokens + tokens) / batch_size
        seconds = (self.terms.verify_forward(tokens, batch_size, kv_tokens, pairs)
                   + self.terms.launch(eager_mask) + self.terms.scheduler(batch_size))
        return seconds.reshape(requested.shape)

    def _verify_floats(self, requested: list[float], batch_size: int, kv_tokens: int, eager: bool
                       ) -> list[float] | None:
        """verify_time of a few candidate V (the roofline's) in plain floats: _run_tokens's rule by
        executed_one, then the same IEEE operations in the same order as the array path (tests
        compare them). None when a V is not integral or a count is not tabulated yet."""
        run, launch = [], []
        for v in requested:
            if not v.is_integer():
                return None
            if eager:
                tokens, is_eager = v, True
            else:  # executed_one remembers its answers: the candidates' shapes recur every step
                graph, is_eager = self.graphs.executed_one(int(v), batch_size)
                tokens = v if is_eager else float(graph)
            run.append(tokens)
            launch.append(self.terms.target_eager_s if is_eager else self.terms.hw.graph_launch_s)
        pairs = [t * (kv_tokens + t) / batch_size for t in run]
        forward = self.terms.target.forward_floats(run, kv_tokens, pairs)
        if forward is None:
            return None
        scheduler = self.terms.scheduler(batch_size)
        return [f + s + scheduler for f, s in zip(forward, launch)]

    def executed_seconds(self, executed: np.ndarray, eager: np.ndarray, batch_size: int, kv_tokens: int,
                         count: int | None = None) -> np.ndarray | None:
        """verify_time of each executed shape, graph or eager (policies.common.step_seconds_reference:
        the same floats), for a shape list priced at step after step: its terms that do not depend on
        ΣKV (tokens run, the token-count table, launch, scheduler) are remembered per (batch size,
        shapes), so a step computes the attention term alone. The candidate lists of echo's budget
        and shape predictor, the oracle and goodput recur every step of a batch size. None where the
        reference must answer (terms not the roofline's, a count not tabulated yet, bad input).
        `count`: price only the first `count` shapes of the remembered list."""
        if not isinstance(self.terms, RooflineTerms) or batch_size < 1 or kv_tokens < 0 or len(executed) == 0:
            return None
        fixed = remembered(self._executed_terms, (batch_size, executed.tobytes(), eager.tobytes()),
                           lambda: self._executed_fixed_terms(executed, eager, batch_size), EXECUTED_KEPT)
        if fixed is None:
            return None
        tokens, tabled, launch, scheduler = fixed
        if count is not None:
            tokens, tabled, launch = tokens[:count], tabled[:count], launch[:count]
        pairs = tokens * (kv_tokens + tokens) / batch_size
        seconds = tabled + self.terms.target.net.num_layers * self.terms.target.verify_attention(tokens, kv_tokens, pairs)
        seconds += launch
        seconds += scheduler
        return seconds

    def _executed_fixed_terms(self, executed: np.ndarray, eager: np.ndarray, batch_size: int):
        """(tokens run, token-count seconds, launch seconds, scheduler seconds) of executed_seconds,
        by verify_time's own rules (_run_tokens per group, terms.launch); None where it must not answer."""
        requested = np.asarray(executed, dtype=float)
        if not requested.min() >= batch_size:
            return None
        tokens, launch = np.empty(len(requested)), np.empty(len(requested))
        for is_eager in (False, True):
            pick = eager == is_eager
            if pick.any():
                run, mask = self._run_tokens(requested[pick], batch_size, is_eager)
                tokens[pick], launch[pick] = run, self.terms.launch(mask)
        tabled = self.terms.target.verify_token_seconds(tokens)
        if tabled is None:  # counts not tabulated yet (a budget's window prices a prefix): tabulate them all
            self.terms.target.tabulate(tokens)
            tabled = self.terms.target.verify_token_seconds(tokens)
        if tabled is None:
            return None
        return tokens, tabled, launch, float(self.terms.scheduler(batch_size))

    def draft_time(self, batch_size: int, depth: int, width: int, kv_tokens: int = 0,
                   extend_tokens: int | None = None) -> float:
        """Seconds to draft `depth` levels of `width` for `batch_size` requests (0 when depth is 0).
        Level 1 extends over `extend_tokens` (default batch_size: one per request)."""
        if depth < 0 or (depth > 0 and (batch_size < 1 or width < 1)):
            raise CostModelError(f"draft_time: impossible shape bs={batch_size} depth={depth} width={width}")
        if depth == 0:  # what every terms' draft answers, without a cache key (steps that draft nothing)
            return 0.0
        extend = batch_size if not extend_tokens else max(int(extend_tokens), batch_size)
        key = (batch_size, depth, width, kv_tokens, extend)
        if self._last_draft[0] != key:
            self._last_draft = (key, float(self.terms.draft(batch_size, depth, width, kv_tokens, extend)))
        return self._last_draft[1]

    def draft_times(self, batch_size: int, depth: int, width: int, kv_tokens: int = 0) -> list[list[float]]:
        """[[draft_time(batch_size, d, w, kv_tokens) for d = 1 … depth] for w = 1 … width]: what the
        shape predictors price every step, the roofline's in one pass over the levels (draft_grid)."""
        if depth < 1 or batch_size < 1 or width < 1:
            raise CostModelError(f"draft_times: impossible shape bs={batch_size} depth={depth} width={width}")
        grid = (self.terms.draft_grid(batch_size, depth, width, kv_tokens)
                if isinstance(self.terms, RooflineTerms) else None)
        if grid is None:
            grid = [[float(self.terms.draft(batch_size, d, w, kv_tokens, batch_size)) for d in range(1, depth + 1)]
                    for w in range(1, width + 1)]
        return grid

    def ragged_draft_time(self, batch_size: int, level_tokens, kv_tokens: int = 0) -> float:
        """Seconds of a draft whose level l forward runs level_tokens[l-1] tokens (level 1: the
        roots plus any catch-up tokens; level l >= 2: the frontier nodes expanded at level l-1),
        each level one graph-replayed forward. A level costs what draft_time charges a level of
        that many tokens, so uniform levels (bs, bs·k, …) give draft_time exactly."""
        tokens = [float(t) for t in level_tokens]
        if batch_size < 1 or len(tokens) == 0 or min(tokens) <= 0:
            raise CostModelError(f"ragged_draft_time: impossible shape bs={batch_size} levels={tokens}")
        # Level 1 runs bs tokens here; its catch-up tokens are added below. The policy's budget
        # (without catch-up) and the engine's charge (with it) ask in one step: one computation.
        key = (batch_size, tuple(tokens[1:]), kv_tokens)
        if self._last_ragged[0] != key:
            first = float(self.terms.draft(batch_size, 1, 1, kv_tokens))
            if isinstance(self.terms, RooflineTerms):  # its levels priced by their token counts: one forward
                seconds = float(self.terms.draft_levels(batch_size, [float(batch_size), *tokens[1:]], kv_tokens))
            else:  # a calibration's levels 2…S cost alike: each level is what it adds at its width
                seconds = first + sum(float(self.terms.draft(batch_size, 2, t / batch_size, kv_tokens)) - first
                                      for t in tokens[1:])
            self._last_ragged = (key, seconds, first)
        _, seconds, first = self._last_ragged
        if tokens[0] != batch_size:  # catch-up tokens ride in level 1's forward
            # a calibration prices the level's rows too (one per request, DraftFit.per_level_request_s);
            # the roofline prices a level by its tokens
            level_one = (self.terms.draft(int(tokens[0]), 1, 1, kv_tokens) if isinstance(self.terms, RooflineTerms)
                         else self.terms.draft(batch_size, 1, 1, kv_tokens, int(tokens[0])))
            seconds += float(level_one) - first
        return seconds

    def prefill_time(self, prefill_tokens: int, prefill_context: int = 0, with_draft: bool = True) -> float:
        """Seconds of one prefill chunk of `prefill_tokens` over `prefill_context` cached tokens
        (target, plus the draft's prefill of the same chunk when `with_draft`), as its own forward."""
        if prefill_tokens < 0 or prefill_context < 0:
            raise CostModelError(f"prefill_time: negative tokens ({prefill_tokens}, {prefill_context})")
        if prefill_tokens == 0:  # what every terms' prefill answers, without a cache key (most steps)
            return 0.0
        key = (prefill_tokens, prefill_context, with_draft)
        if self._last_prefill[0] != key:
            self._last_prefill = (key, float(self.terms.prefill(prefill_tokens, prefill_context, with_draft)))
        return self._last_prefill[1]

    def components(self, shape: StepShape, draft_seconds: float | None = None) -> dict[str, float]:
        """Seconds of prefill, draft, verify and overhead (scheduler + launch) for one step;
        `draft_seconds`, when given, is the draft's time in place of the uniform shape's (a ragged
        draft, charged by ragged_draft_time)."""
        mixed = self.knobs.prefill_mode == "mixed" and shape.batch_size > 0 and shape.prefill_tokens > 0
        parts = {"prefill": 0.0 if mixed else self.prefill_time(shape.prefill_tokens, shape.prefill_context,
                                                                 shape.prefill_draft),
                 "draft": 0.0, "verify": 0.0, "overhead": float(self.terms.scheduler(shape.batch_size))}
        if shape.batch_size == 0:
            return parts
        # one shape: _run_tokens's rule in plain ints (executed_one), the same floats as the vector path
        if shape.eager or mixed:
            run, eager = shape.verify_tokens, True
        else:
            run, eager = self.graphs.executed_one(shape.verify_tokens, shape.batch_size)
        tokens = float(run)
        pairs = shape.attention_pairs * tokens / float(shape.verify_tokens)  # padding costs like the real tokens
        parts["draft"] = draft_seconds if draft_seconds is not None else self.draft_time(
            shape.batch_size, shape.draft_depth, shape.draft_width, shape.kv_tokens, shape.draft_extend_tokens)
        if mixed:  # one forward over the verify tokens and the chunk; the draft extends over the chunk too
            parts["verify"] = float(self.terms.mixed_forward(tokens, shape.batch_size, shape.kv_tokens, pairs,
                                                             shape.prefill_tokens, shape.prefill_context))
            if shape.prefill_draft:
                parts["prefill"] = float(self.terms.draft_prefill(shape.prefill_tokens, shape.prefill_context))
        else:
            parts["verify"] = self._verify_forward_one(tokens, shape.batch_size, shape.kv_tokens, pairs)
        parts["overhead"] += self._launch_one(eager)
        return parts

    def _verify_forward_one(self, tokens: float, batch_size: int, kv_tokens: int, pairs: float) -> float:
        """terms.verify_forward of one shape; the roofline's in plain floats (forward_floats)."""
        if isinstance(self.terms, RooflineTerms):
            seconds = self.terms.target.forward_floats([tokens], kv_tokens, [pairs])
            if seconds is not None:
                return seconds[0]
        return float(self.terms.verify_forward(np.array([tokens]), batch_size, kv_tokens, np.array([pairs]))[0])

    def _launch_one(self, eager: bool) -> float:
        """terms.launch of one shape."""
        if isinstance(self.terms, RooflineTerms):
            return self.terms.target_eager_s if eager else self.terms.hw.graph_launch_s
        return float(self.terms.launch(np.array([eager]))[0])

    def step_time(self, shape: StepShape) -> float:
        return sum(self.components(shape).values())


def roofline_cost_model(hardware: HardwareSpec, model: ModelSpec, tp: int | None = None,
                        fitted: FittedProfile | None = None, knobs: ServingKnobs | None = None) -> CostModel:
    """A roofline CostModel from specs (presets, or specs built in code for cross-checks); with a
    fitted profile, the roofline with fitted rates."""
    tp = model.tensor_parallel if tp is None else tp
    knobs = knobs or ServingKnobs()
    terms = RooflineTerms(hardware, model, tp, fitted.rates if fitted else None, knobs.routing)
    kind = "fitted" if fitted else "preset"
    source = f"{kind}:{hardware.name}/{model.name}" + ("" if tp == model.tensor_parallel else f"@tp{tp}")
    description = {"hardware": hardware.name, "model": model.name,
                   "draft": model.draft.name if model.draft else None, "dtype": model.dtype, "tp": tp,
                   "cost_model": "fitted" if fitted else "roofline"}
    if fitted:
        description["fitted_profile"] = fitted.path
    return CostModel(terms, graph_buckets=hardware.graph_buckets, source=source, description=description,
                     kv_capacity_tokens=terms.kv_capacity_tokens(),
                     prefill_chunk_tokens=hardware.prefill_chunk_tokens, knobs=knobs, tp=tp)


def calibrated_cost_model(calibration: Calibration, knobs: ServingKnobs | None = None) -> CostModel:
    description = {"hardware": calibration.hardware, "model": calibration.model,
                   "draft": calibration.draft_model, "dtype": calibration.dtype, "tp": calibration.tp,
                   "cost_model": "calibration"}
    return CostModel(CalibratedTerms(calibration), graph_buckets=calibration.graph_buckets,
                     source=f"calibration:{calibration.path}", description=description,
                     kv_capacity_tokens=calibration.kv_capacity_tokens,
                     prefill_chunk_tokens=calibration.prefill_chunk_tokens, knobs=knobs, tp=calibration.tp)


def load_cost_model(hardware: str | None = None, model: str | None = None,
                    calibration: str | Path | None = None, tp: int | None = None,
                    cost: str | None = None, knobs: ServingKnobs | None = None) -> CostModel:
    """A preset model (defaults h200 / llama-3.1-8b; fitted where a fitted profile exists, or
    cost="roofline"), or a calibration file's fitted model (it supersedes the presets).

    With a calibration, `hardware`, `model` and `tp` may be omitted; if given they must match the
    file (a mismatch is an error, never silently ignored); `cost` must then be None.
    """
    check_cost_mode(cost)
    if calibration is None:
        if tp is not None and tp < 1:
            raise CostModelError(f"tensor parallel degree {tp} must be >= 1")
        name = hardware or DEFAULT_HARDWARE
        profile_path = fitted_profile_path(name) if cost != "roofline" else None
        if cost == "fitted" and profile_path is None:
            raise CostModelError(f"cost 'fitted': no fitted profile for hardware {name!r} "
                                 "(echo_sim/presets/fitted/); use cost 'roofline'")
        fitted = load_fitted_profile(profile_path) if profile_path else None
        return roofline_cost_model(load_hardware(name), load_model(model or DEFAULT_MODEL), tp, fitted, knobs)
    if cost is not None:
        raise CostModelError(f"cost {cost!r} and a calibration file: the calibration supersedes the presets, "
                             "give one or the other")
    loaded = load_calibration(calibration)
    for name, asked, recorded in (("hardware", hardware, loaded.hardware), ("model", model, loaded.model),
                                  ("tp", tp, loaded.tp)):
        if asked is not None and asked != recorded:
            raise CostModelError(f"{calibration}: {name} is {recorded!r}, but {asked!r} was asked for")
    return calibrated_cost_model(loaded, knobs)
