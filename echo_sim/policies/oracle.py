"""`oracle`: verify exactly the on-path nodes (no waste): a per-step ceiling.

shape=best (default): per step, the draft shape — width k' <= k, depth S' <= S, or no drafting —
and exactly its on-path nodes with the most committed tokens per second: a k'-wide draft's on-path
depth d_k' comes from the beam-exact read of that width (StepContext.on_path_depth; k' = 1 is the
spine, the chain's exact replay), it accepts a_r = min(d_k', S') and takes
T_draft(bs, S', k') + T_verify(bucket(bs + Σ a_r)) + T_prefill (draft time per depth as echo's
predictor has it: shape.draft_levels). shape=full: always the full lattice's on-path nodes.

Neither is a global optimum (accepting less at one step can land on a better position later), so
compare policies to it per step. The only policy allowed to read `lattices.on_path`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import ClassVar, Literal

import numpy as np

from echo_sim.policies.base import TRACE_LIMIT, DraftShape, Selection, StepContext
from echo_sim.policies.common import fitted_selection, require_confidences, step_seconds
from echo_sim.policies.knobs import KnobbedPolicy
from echo_sim.policies.shape import NO_DRAFT, draft_levels
from echo_sim.traces.reader import on_path_acceptance
from echo_sim.trees import LatticeBatch


@dataclass
class OraclePolicy(KnobbedPolicy):
    name: ClassVar[str] = "oracle"
    note: ClassVar[str] = "oracle knows the target's output: a ceiling, not a deployable configuration"
    needs_future: ClassVar[bool] = True
    shape: Literal["best", "full"] = "best"
    draft: DraftShape = field(init=False, default=DraftShape(depth=TRACE_LIMIT, width=TRACE_LIMIT))

    def select(self, lattices: LatticeBatch, context: StepContext) -> Selection:
        require_confidences(self.name, lattices)
        if self.shape == "full" or context.on_path_depth is None or lattices.batch_size == 0:
            nodes = lattices.on_path.astype(bool, copy=True)
            drafts = int(nodes.sum())
            return fitted_selection(context.cost, nodes, lattices.batch_size, drafts, budget=drafts)
        shape, accepted = self._best_shape(lattices, context)
        bs = lattices.batch_size
        if shape.width == 1:  # a chain (or nothing): the spine's exact replay
            nodes = np.zeros(lattices.num_nodes, dtype=bool)
            return fitted_selection(context.cost, nodes, bs, int(accepted.sum()), chain=accepted.astype(np.int32),
                                    budget=int(accepted.sum()), drafted=shape)
        nodes = lattices.on_path & (lattices.depth <= accepted[lattices.request_of_node()])
        return fitted_selection(context.cost, nodes, bs, int(nodes.sum()), budget=int(nodes.sum()), drafted=shape)

    def _best_shape(self, lattices: LatticeBatch, context: StepContext) -> tuple[DraftShape, np.ndarray]:
        """(shape, accepted int64 [bs]) with the most committed tokens per second this step."""
        bs, kv = lattices.batch_size, int(np.sum(context.kv_lens))
        width, depth = context.draft.width, context.draft.depth
        full_depth = on_path_acceptance(lattices, np.zeros(lattices.num_nodes, dtype=bool))[2]
        reach = {1: np.asarray(lattices.spine_run, dtype=np.int64)}
        for w in range(2, width + 1):
            reach[w] = full_depth if w == width else np.asarray(context.on_path_depth(w), dtype=np.int64)
        shapes = self._shapes(width, depth)
        # accepted[1 + (w - 1)·depth + d - 1] = min(reach of width w, d): every shape's row at once
        accepted = np.zeros((1 + width * depth, bs), dtype=np.int64)
        np.minimum(np.stack([reach[w] for w in range(1, width + 1)])[:, None, :],
                   np.arange(1, depth + 1)[None, :, None], out=accepted[1:].reshape(width, depth, bs))
        verify = bs + accepted.sum(axis=1)
        executed, eager = context.cost.executed_shape(verify, bs)
        seconds = step_seconds(context.cost, executed, eager, bs, kv) + context.prefill_seconds
        first, per_level = draft_levels(context.cost, bs, kv, width, depth)
        seconds[1:] += (first + np.arange(depth)[None, :] * per_level[:, None]).ravel()  # shapes' order
        rates = verify / seconds  # committed tokens Σ (a_r + 1) = V
        best = int(np.argmax(rates))
        return shapes[best], accepted[best]

    @staticmethod
    @cache
    def _shapes(width: int, depth: int) -> tuple[DraftShape, ...]:
        """No drafting, then every (d, w), width-major: the candidates of _best_shape, in its order."""
        return (NO_DRAFT, *(DraftShape(d, w) for w in range(1, width + 1) for d in range(1, depth + 1)))
