"""The policy contract (POLICIES.md): decide what to verify, then learn from what was accepted.

Called by both engines (echo_sim.engine with a simulated clock, echo_runtime.engine with real
forwards), once per engine step, in this order:

    shape = policy.draft            # before drafting: how deep/wide the drafter grows this step
    sel = policy.select(lattices, context)   # after drafting: which nodes the target verifies
    policy.observe(outcome)         # after verification: what was accepted

Rules: a policy never calls a model and holds no global state; everything it needs comes in
through these arguments (plain numpy arrays) and its own instance fields, so two engines in one
process never interact. Selections are prefix-closed boolean masks over the batch's lattice
nodes (echo_sim.trees), or, for chain policies, per-request chain lengths over the spine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np

from echo_sim.trees import LatticeBatch

if TYPE_CHECKING:  # pragma: no cover
    from echo_sim.cost.model import CostModel


# A DraftShape dimension meaning "as much as the trace holds": policies that draft the whole
# lattice (or start from it) ask for this before they have seen a trace; engines clamp a tree
# draft to the trace's depth and width (a chain, width 1, replays the spine and is not clamped).
TRACE_LIMIT = 1 << 16


@dataclass(frozen=True)
class DraftShape:
    """What the drafter grows for the coming step: `depth` levels (S), `width` k per level.

    depth 0 means no drafting (`ar`). A chain is width 1.
    """

    depth: int
    width: int


@dataclass(slots=True)
class StepContext:
    """Everything about the step a policy may use besides the lattices (like Selection and Outcome, a
    value never modified once built; not frozen=True, whose __init__ costs ~2 µs more on every step).

    kv_lens   int64 [bs]  tokens already in each request's KV cache (prompt + committed output)
    cost      the step-time model (echo_sim.cost.model.CostModel): verify/draft/step times
    draft     the DraftShape actually grown this step
    trace_depth / trace_width   S and k of the lattices in the trace (upper bounds)
    prefill_seconds  T_prefill: the time of the prefill chunk this step carries (a cost the step
                     pays whatever is verified: cost-based objectives divide by it too)
    frontier  bool [n] or None: the nodes the drafter expanded (frontier nodes of levels below the
              drafted depth); None: a node with children in the lattice was expanded
    catch_up  int: tokens this step's level-1 draft forward extends over beyond one per request:
              the previous drafting step's accepted tokens, plus all tokens committed by steps
              without drafting since (echo_sim.engine DecodeBatch.draft_lag)
    on_path_depth  (oracle only, simulator only) width -> int [bs]: the on-path depth of the
              full-depth read of that width; None where the target's path is unknown
    """

    batch_size: int
    kv_lens: np.ndarray
    cost: "CostModel"
    draft: DraftShape
    trace_depth: int
    trace_width: int
    prefill_seconds: float = 0.0
    frontier: np.ndarray | None = None
    catch_up: int = 0
    on_path_depth: Callable[[int], np.ndarray] | None = None


@dataclass(slots=True)
class Selection:
    """A policy's answer for one step.

    nodes     bool [n]   selected lattice nodes, prefix-closed per request (all False for chains)
    chain     int32 [bs] or None: chain policies verify this many spine drafts per request instead
    padding   extra verified tokens that fill a captured graph bucket (cost like real tokens,
              never accepted)
    eager     True when the step's shape is not a captured graph (pays eager launch overhead)
    budget    the batch budget B the policy settled on (draft nodes beyond the roots), for logs
    draft_level_tokens   tokens of each draft level's forward when they are not the drafted
              shape's (bs, bs·k', …): echo's expand gate drafts ragged levels; None: the shape's
    drafted   the shape actually drafted when it is not policy.draft (the shape-best oracle picks
              it after seeing the step); None: policy.draft as the engine executed it
    """

    nodes: np.ndarray
    chain: np.ndarray | None = None
    padding: int = 0
    eager: bool = False
    budget: int | None = None
    draft_level_tokens: tuple[int, ...] | None = None
    drafted: DraftShape | None = None

    def draft_tokens_per_request(self, lattices: LatticeBatch) -> np.ndarray:
        """int64 [bs]: n_r, the verified draft tokens of each request (roots excluded)."""
        if self.chain is not None:
            return np.asarray(self.chain, dtype=np.int64)
        if lattices.num_nodes == 0:  # nothing drafted (ar, depth 0): no per-node pass
            return np.zeros(lattices.batch_size, dtype=np.intp)
        starts = lattices.offsets[:-1]
        if np.count_nonzero(lattices.offsets[1:] - starts) == len(starts):  # no empty lattice: one sum per lattice
            return np.add.reduceat(self.nodes, starts, dtype=np.intp)
        return np.bincount(lattices.request_of_node()[self.nodes], minlength=lattices.batch_size)


@dataclass(slots=True)
class Outcome:
    """What verification found, handed to observe().

    accepted        bool [n]   selected nodes that the target accepted (empty mask for chains)
    accepted_depth  int32 [bs] a_r, accepted draft tokens per request (bonus token excluded)
    """

    lattices: LatticeBatch
    selection: Selection
    accepted: np.ndarray
    accepted_depth: np.ndarray


class Policy(Protocol):
    """What both engines and the reports use of a policy, and nothing else.

    name          registry name; label: canonical spec (name + knobs that differ from defaults)
    draft         the DraftShape to grow this step (read before drafting; may change every step)
    note          why sglang_flags() is empty or partial, when it is
    needs_future  True when it reads the target's future output (oracle): the runtime refuses it live
    drafter_expands  the drafter's expand gate (echo): (lattices, frontier bool [n]) -> bool [n], the
                  frontier nodes to forward; None: the drafter forwards every frontier node
    """

    name: str
    draft: DraftShape
    note: str
    needs_future: bool
    drafter_expands: Callable[[LatticeBatch, np.ndarray], np.ndarray] | None

    @property
    def label(self) -> str: ...

    def sglang_flags(self) -> dict[str, object]: ...

    def select(self, lattices: LatticeBatch, context: StepContext) -> Selection: ...

    def observe(self, outcome: Outcome) -> None: ...


class PolicyError(ValueError):
    """A policy cannot run on this input (unknown name, bad knob, chain-only trace for a tree policy)."""
