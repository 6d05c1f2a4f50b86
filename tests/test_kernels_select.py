"""kernels.select must return exactly echo_sim.trees.supertree_select's mask (the numpy policy).

Random ragged batches with quantised values force exact ties in rank and score (and so exercise
every key of the tie-break), empty requests, budgets around the eligible count, and real random
lattices from echo_sim.testing.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from echo_sim.testing import random_trace  # noqa: E402
from echo_sim.trees import LatticeBatch, nodes_per_request  # noqa: E402
from echo_sim.trees import supertree_select as numpy_select  # noqa: E402
from kernels import KernelInputError  # noqa: E402
from kernels.select import SelectResult, plan_select, supertree_select, supertree_select_reference  # noqa: E402
from kernels.testing import fresh_seed, kernel_device, random_offsets, random_parents  # noqa: E402

DEVICE = kernel_device()
pytestmark = pytest.mark.skipif(DEVICE is None, reason="compiled Triton kernels need CUDA (or TRITON_INTERPRET=1)")


def _lattice(offsets: np.ndarray, parents: np.ndarray, score: np.ndarray) -> LatticeBatch:
    """A LatticeBatch around given structure (depth derived from parents; unused columns zero)."""
    n, bs = len(parents), len(offsets) - 1
    request = np.repeat(np.arange(bs), np.diff(offsets))
    depth = np.zeros(n, dtype=np.int32)
    for i in range(n):
        depth[i] = 1 if parents[i] < 0 else depth[parents[i] + offsets[request[i]]] + 1
    return LatticeBatch(offsets=offsets.astype(np.int64), token=np.zeros(n, np.int32), parent=parents.astype(np.int32),
                        depth=depth, cond_prob=np.zeros(n, np.float32), score=score, on_path=np.zeros(n, bool),
                        spine_run=np.zeros(bs, np.int32))


def _check_identical(lattice: LatticeBatch, rank, gate, threshold, budget, label):
    expected = numpy_select(lattice, rank, gate, threshold, budget)
    trees = plan_select(torch.from_numpy(lattice.offsets).to(DEVICE), torch.from_numpy(lattice.parent).to(DEVICE))
    as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(DEVICE)  # noqa: E731
    poisoned = SelectResult(torch.ones(lattice.num_nodes, dtype=torch.bool, device=DEVICE),
                            torch.full((lattice.batch_size,), -7, dtype=torch.int32, device=DEVICE))
    got = supertree_select(trees, as_t(rank), threshold, budget, gate_value=as_t(gate), score=as_t(lattice.score),
                           out=poisoned)
    assert np.array_equal(got.selected.cpu().numpy(), expected), f"{label}: kernel differs from numpy"
    assert np.array_equal(got.counts.cpu().numpy(), nodes_per_request(lattice, expected)), f"{label}: counts"
    ref = supertree_select_reference(trees, as_t(rank).cpu(), threshold, budget, gate_value=as_t(gate).cpu(),
                                     score=as_t(lattice.score).cpu())
    assert np.array_equal(ref.selected.cpu().numpy(), expected), f"{label}: torch reference differs from numpy"


def _random_values(gen: np.random.Generator, n: int, levels: int) -> np.ndarray:
    return (gen.integers(0, levels, size=n) / levels).astype(np.float32)


@pytest.mark.parametrize("levels", [3, 16, 0])   # 0: continuous values, no ties
def test_identical_to_numpy_on_random_ragged_batches_with_ties(levels):
    seed = fresh_seed()
    gen = np.random.default_rng(seed)
    torch_gen = torch.Generator().manual_seed(seed)
    for trial in range(4):
        bs = int(gen.integers(1, 9))
        offsets = random_offsets(torch_gen, bs, (0, 40)).numpy()
        parents = random_parents(torch_gen, torch.from_numpy(offsets), root_first=False).numpy()
        n = len(parents)
        draw = (lambda: gen.random(n).astype(np.float32)) if levels == 0 else (lambda: _random_values(gen, n, levels))
        rank, score, gate = draw(), draw(), draw()
        threshold = float(gen.choice([0.0, 0.2, 0.5, float(gate[0]) if n else 0.3]))
        budget = int(gen.choice([-1, 0, 1, n // 3, n // 2, n, n + 5]))
        _check_identical(_lattice(offsets, parents, score), rank, gate, threshold, budget,
                         f"seed {seed} trial {trial} levels {levels} budget {budget}")


def test_identical_on_ties_through_every_key():
    """All ranks equal, scores in two levels: the boundary is decided by depth, then by index."""
    seed = fresh_seed()
    gen = np.random.default_rng(seed)
    offsets = random_offsets(torch.Generator().manual_seed(seed), 6, (0, 60)).numpy()
    parents = random_parents(torch.Generator().manual_seed(seed + 1), torch.from_numpy(offsets), False).numpy()
    n = len(parents)
    rank = np.full(n, 0.5, np.float32)
    score = _random_values(gen, n, 2)
    for budget in (1, n // 4, n // 2, n - 1):
        _check_identical(_lattice(offsets, parents, score), rank, rank, 0.1, budget, f"seed {seed} budget {budget}")


def test_signed_zero_and_infinities_compare_like_numpy():
    offsets = np.array([0, 4, 8])
    parents = np.array([-1, -1, 0, 1, -1, 0, 1, -1])
    rank = np.array([0.0, -0.0, -np.inf, np.inf, -0.0, 0.0, np.inf, -1.0], np.float32)
    score = np.array([-0.0, 0.0, 1.0, 1.0, 0.0, -0.0, 2.0, 0.0], np.float32)
    gate = np.ones(8, np.float32)
    for budget in range(0, 9):
        _check_identical(_lattice(offsets, parents, score), rank, gate, 0.5, budget, f"budget {budget}")


def test_identical_on_real_random_lattices():
    seed = fresh_seed()
    trace = random_trace(np.random.default_rng(seed), num_requests=6, width=3, depth=4)
    positions = trace.position_offsets[:-1]
    lattice = trace.lattice_batch(positions)
    for threshold, budget in ((0.05, 10), (0.2, 25), (0.0, lattice.num_nodes // 2)):
        _check_identical(lattice, lattice.score, lattice.score, threshold, budget, f"seed {seed} τ {threshold}")


def test_bad_inputs_raise_clear_errors():
    offsets, parents = torch.tensor([0, 3]).to(DEVICE), torch.tensor([-1, 0, 0]).to(DEVICE)
    trees = plan_select(offsets, parents)
    values = torch.tensor([0.5, float("nan"), 0.1]).to(DEVICE)
    with pytest.raises(KernelInputError, match="rank_value holds NaN at node 1"):
        supertree_select(trees, values, 0.1, 2)
    with pytest.raises(KernelInputError, match="rank_value must have dtype"):
        supertree_select(trees, values.double(), 0.1, 2)
    with pytest.raises(KernelInputError, match="breaks level order"):
        plan_select(offsets, torch.tensor([-1, 2, 0]).to(DEVICE))
    with pytest.raises(KernelInputError, match="non-decreasing"):
        plan_select(torch.tensor([0, 2, 1, 3]).to(DEVICE), parents)
