"""tree_verify: greedy walk exact vs reference and a hand-worked case; sampling walk exact vs reference
and distributed as the target (chi-square, with a biased sampler as a control that must fail)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from kernels import KernelInputError  # noqa: E402
from kernels.tree_verify import (  # noqa: E402
    VerifyResult, greedy_verify, greedy_verify_reference, plan_verify, sample_verify, sample_verify_reference,
)
from kernels.testing import fresh_seed, kernel_device, random_verify_case  # noqa: E402

DEVICE = kernel_device()
pytestmark = pytest.mark.skipif(DEVICE is None, reason="compiled Triton kernels need CUDA (or TRITON_INTERPRET=1)")


def _poisoned(trees) -> VerifyResult:
    """Output buffers full of -7, so an entry the kernel forgets to write shows up."""
    width = max(trees.max_nodes - 1, 1)
    return VerifyResult(torch.full((trees.batch_size, width), -7, dtype=torch.int32, device=DEVICE),
                        torch.full((trees.batch_size,), -7, dtype=torch.int32, device=DEVICE),
                        torch.full((trees.batch_size,), -7, dtype=torch.int64, device=DEVICE))


def _poisoned_equal(got, expected, seed):
    for name in ("accepted", "accepted_len", "bonus_token"):
        assert torch.equal(getattr(got, name).cpu(), getattr(expected, name).cpu()), f"seed {seed}: {name} differs"


def test_greedy_hand_worked_batch():
    # request 0: root -> {1: tok 3, 2: tok 5}; 1 -> {3: tok 9, 4: tok 2}; 2 -> {5: tok 9}
    # targets: root 5 -> node 2; node 2: 9 -> node 5; node 5: 4, no child -> bonus 4
    # request 1: root only -> bonus 11; request 2: child token 1 but target 2 -> bonus 2
    offsets = torch.tensor([0, 6, 7, 9])
    parents = torch.tensor([-1, 0, 0, 1, 1, 2, -1, -1, 0])
    tokens = torch.tensor([7, 3, 5, 9, 2, 9, 0, 0, 1])
    target = torch.tensor([5, 0, 9, 0, 0, 4, 11, 2, 0])
    trees = plan_verify(offsets.to(DEVICE), parents.to(DEVICE), tokens.to(DEVICE))
    result = greedy_verify(trees, target.to(DEVICE), out=_poisoned(trees))
    assert result.accepted_len.tolist() == [2, 0, 0]
    assert result.accepted[0, :2].tolist() == [2, 5] and bool((result.accepted[:, 2:] == -1).all())
    assert result.bonus_token.tolist() == [4, 11, 2]


def test_greedy_kernel_matches_reference_and_walk_rules():
    seed = fresh_seed()
    case = random_verify_case(torch.Generator().manual_seed(seed), batch_size=7, nodes=(1, 40), vocab=40,
                              agreement=0.85, device=DEVICE)
    got = greedy_verify(case.trees, case.target, out=_poisoned(case.trees))
    _poisoned_equal(got, greedy_verify_reference(case.trees, case.target), seed)
    offsets, parents = case.trees.offsets.tolist(), case.trees.parents.tolist()
    tokens, target = case.trees.tokens.tolist(), case.target.tolist()
    for r in range(case.trees.batch_size):   # the rules, checked directly on the output
        lo, hi = offsets[r], offsets[r + 1]
        cur = 0
        for node in got.accepted[r, :int(got.accepted_len[r])].tolist():
            assert parents[lo + node] == cur and tokens[lo + node] == target[lo + cur], f"seed {seed}"
            cur = node
        kids = [c for c in range(hi - lo) if parents[lo + c] == cur and c > 0]
        assert all(tokens[lo + c] != target[lo + cur] for c in kids), f"seed {seed}: walk stopped early"
        assert int(got.bonus_token[r]) == target[lo + cur], f"seed {seed}"


def test_sampling_kernel_matches_reference():
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    for vocab in (13, 1500):   # one vocab tile and several
        case = random_verify_case(gen, batch_size=6, nodes=(1, 30), vocab=vocab, draft_boost=5.0, device=DEVICE)
        got = sample_verify(case.trees, case.probs, case.uniforms, out=_poisoned(case.trees))
        _poisoned_equal(got, sample_verify_reference(case.trees, case.probs, case.uniforms), seed)


def test_sampling_fallback_when_residual_is_empty():
    # the children hold all the mass the (slightly short) row has, and the coin lands above it: the
    # residual is empty, so the bonus falls back to the first non-child token of largest residual (0)
    offsets, parents, tokens = torch.tensor([0, 3]), torch.tensor([-1, 0, 0]), torch.tensor([0, 1, 2])
    probs = torch.tensor([[0.0, 0.5, 0.4999, 0.0], [0.25] * 4, [0.25] * 4])
    uniforms = torch.tensor([[0.99995, 0.5, 0.5]])
    trees = plan_verify(offsets.to(DEVICE), parents.to(DEVICE), tokens.to(DEVICE))
    got = sample_verify(trees, probs.to(DEVICE), uniforms.to(DEVICE), out=_poisoned(trees))
    _poisoned_equal(got, sample_verify_reference(trees, probs, uniforms), "fixed")
    assert int(got.accepted_len[0]) == 0 and int(got.bonus_token[0]) == 0


# --- the sampling walk is lossless: emitted tokens follow the target distribution -------------------
# Tree: root -> node 1 (token 0), node 2 (token 1); node 1 -> node 3 (token 2). Vocab 5.
TREE_PARENTS, TREE_TOKENS, VOCAB = [-1, 0, 0, 1], [4, 0, 1, 2], 5


def _target_probs(gen):
    probs = 0.6 * torch.distributions.Dirichlet(torch.full((VOCAB,), 2.0)).sample((4,)) + 0.4 / VOCAB
    return probs / probs.sum(1, keepdim=True)


def _expected_first_two(probs) -> dict:
    """P(first emitted token, second emitted token if the first was a drafted child) under the target."""
    node_of_token = {TREE_TOKENS[c]: c for c in (1, 2)}
    expected = {}
    for y1 in range(VOCAB):
        if y1 in node_of_token:
            for y2 in range(VOCAB):
                expected[(y1, y2)] = float(probs[0, y1] * probs[node_of_token[y1], y2])
        else:
            expected[(y1,)] = float(probs[0, y1])
    return expected


def _emitted(result, tokens) -> list[tuple]:
    out = []
    for r in range(result.accepted_len.numel()):
        path = [tokens[n] for n in result.accepted[r, :int(result.accepted_len[r])].tolist()]
        seq = path + [int(result.bonus_token[r])]
        out.append(tuple(seq[:2]) if seq[0] in (0, 1) else (seq[0],))
    return out


def _chi_square_p_value(observed: list[tuple], expected: dict) -> float:
    """Upper tail of Pearson's chi-square (Wilson–Hilferty normal approximation)."""
    total = len(observed)
    counts = {key: 0 for key in expected}
    for key in observed:
        counts[key] += 1
    stat = sum((counts[k] - total * p) ** 2 / (total * p) for k, p in expected.items())
    df = len(expected) - 1
    z = ((stat / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))
    return 0.5 * math.erfc(z / math.sqrt(2))


def _lossless_batch(gen, trials, device):
    offsets = torch.arange(trials + 1) * len(TREE_PARENTS)
    trees = plan_verify(offsets.to(device), torch.tensor(TREE_PARENTS * trials).to(device),
                        torch.tensor(TREE_TOKENS * trials).to(device))
    probs = _target_probs(gen)
    uniforms = torch.rand(trials, len(TREE_PARENTS), generator=gen)
    return trees, probs, probs.repeat(trials, 1), uniforms


def _biased_first_tokens(probs, uniforms) -> list[tuple]:
    """A classic bug as a control: the bonus is drawn from the full p, rejected siblings left in."""
    out = []
    for u in uniforms[:, 0].tolist():
        cumulative = torch.cumsum(probs[0, [0, 1]], 0)
        if u < float(cumulative[1]):
            out.append(None)  # accepted a child: the control only looks at rejections
            continue
        out.append((int(torch.searchsorted(torch.cumsum(probs[0], 0), torch.tensor(u - float(cumulative[1])))),))
    return out


def test_sampling_walk_is_lossless_reference_and_biased_control_fails():
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    trees, probs, rows, uniforms = _lossless_batch(gen, 3000, "cpu")
    result = sample_verify_reference(trees, rows, uniforms)
    p_value = _chi_square_p_value(_emitted(result, TREE_TOKENS), _expected_first_two(probs))
    assert p_value > 1e-4, f"seed {seed}: emitted tokens deviate from the target (p = {p_value:.2e})"
    # the control: among rejections the biased bonus must not match p restricted to non-children
    biased = [key for key in _biased_first_tokens(probs, uniforms) if key is not None]
    residual = {(y,): float(probs[0, y]) / float(probs[0, 2:].sum()) for y in range(2, VOCAB)}
    residual.update({(y,): 1e-12 for y in (0, 1)})
    assert _chi_square_p_value(biased, residual) < 1e-4, f"seed {seed}: the test cannot see a biased bonus"


@pytest.mark.slow
def test_sampling_walk_is_lossless_kernel():
    seed = fresh_seed()
    trees, probs, rows, uniforms = _lossless_batch(torch.Generator().manual_seed(seed), 2000, DEVICE)
    result = sample_verify(trees, rows.to(DEVICE), uniforms.to(DEVICE))
    p_value = _chi_square_p_value(_emitted(result, TREE_TOKENS), _expected_first_two(probs))
    assert p_value > 1e-4, f"seed {seed}: emitted tokens deviate from the target (p = {p_value:.2e})"


def test_bad_inputs_raise_clear_errors():
    offsets, parents = torch.tensor([0, 3]).to(DEVICE), torch.tensor([-1, 0, 0]).to(DEVICE)
    with pytest.raises(KernelInputError, match="siblings must be distinct"):
        plan_verify(offsets, parents, torch.tensor([0, 5, 5]).to(DEVICE))
    with pytest.raises(KernelInputError, match="breaks level order"):
        plan_verify(offsets, torch.tensor([-1, 0, 2]).to(DEVICE), torch.tensor([0, 1, 2]).to(DEVICE))
    with pytest.raises(KernelInputError, match="request 0 has 0 items"):
        plan_verify(torch.tensor([0, 0, 3]).to(DEVICE), parents, torch.tensor([0, 1, 2]).to(DEVICE))
    trees = plan_verify(offsets, parents, torch.tensor([0, 1, 2]).to(DEVICE))
    with pytest.raises(KernelInputError, match="3 coins per request"):
        sample_verify(trees, torch.rand(3, 4).to(DEVICE), torch.rand(1, 2).to(DEVICE))
    with pytest.raises(KernelInputError, match=r"uniforms must lie in \[0, 1\)"):
        sample_verify(trees, torch.rand(3, 4).to(DEVICE), torch.tensor([[0.1, float("nan"), 0.2]]).to(DEVICE))
    with pytest.raises(KernelInputError, match="probs must have dtype"):
        sample_verify(trees, torch.rand(3, 4, dtype=torch.float64).to(DEVICE), torch.rand(1, 3).to(DEVICE))
    with pytest.raises(KernelInputError, match="target has shape"):
        greedy_verify(trees, torch.zeros(4, dtype=torch.int64).to(DEVICE))
