"""echo_runtime on a tiny random Qwen2 pair built here (float64, CPU, no download).

Independent references: transformers' own forward (no cache, no custom mask) and greedy
generate(); the trace generator's teacher-forced lattices (echo_runtime.lattice, itself checked
against a brute-force expansion in test_trace_gen.py); the simulator (echo_sim.engine) replaying
the same trace through the same policy.
"""

from __future__ import annotations


import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from echo_runtime.draft_tree import commit_draft, grow_lattices  # noqa: E402
from echo_runtime.engine import LiveEngine, RequestSpec, RuntimeConfig  # noqa: E402
from echo_runtime.forward import chain_row, next_token_logits, tree_forward  # noqa: E402
from echo_runtime.kv_cache import KVCache  # noqa: E402
from echo_runtime.lattice import grow_request_lattices  # noqa: E402
from echo_runtime.signals import ModelSignals  # noqa: E402
from echo_runtime.verify import build_tree  # noqa: E402
from echo_sim.policies.registry import POLICY_NAMES, make_policy  # noqa: E402
from echo_sim.step import step_frame  # noqa: E402
from echo_sim.testing import RecordingPolicy  # noqa: E402
from runtime_support import CheapDraftCost, LinearCost, tiny_pair_models  # noqa: E402

VOCAB, WIDTH, DEPTH = 48, 3, 4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models are all per-op overhead: on a loaded 2-core machine a second intra-op thread
    waits a scheduler slice (~10 ms) on every op. Restored afterwards for other test files."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pair():
    return tiny_pair_models(VOCAB)


@pytest.fixture(scope="module")
def specs():
    rng = np.random.default_rng(7)
    return [RequestSpec(rng.integers(0, VOCAB, size=int(rng.integers(3, 9))), int(rng.integers(4, 13)))
            for _ in range(5)]


def plain_greedy(model, prompt, max_new):
    out = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=max_new, min_new_tokens=max_new,
                         pad_token_id=0, attention_mask=torch.ones(1, len(prompt)))
    return out[0, len(prompt):].tolist()


@pytest.fixture(scope="module")
def greedy_outputs(pair, specs):
    return [plain_greedy(pair[0], list(s.prompt), s.max_new) for s in specs]


def run_live(pair, specs, policy, concurrency=2):
    target, draft = pair
    engine = LiveEngine(target, draft, policy, LinearCost(), RuntimeConfig(concurrency, WIDTH, DEPTH), ModelSignals())
    return engine.run(specs)


def full_logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0]


def random_tree(rng, size):
    """Parents (verify-local, root = 0) of a random tree of `size` tokens in level order."""
    parent, depth = [-1], [0]
    for i in range(1, size):
        p = int(rng.integers(0, i))
        parent.append(p)
        depth.append(depth[p] + 1)
    order = np.argsort(depth, kind="stable")  # level order: parents precede children
    rank = np.empty(size, dtype=np.int64)
    rank[order] = np.arange(size)
    return np.array([-1 if parent[i] < 0 else rank[parent[i]] for i in order]), np.array(depth)[order]


def test_tree_forward_equals_plain_forward_on_every_path(pair):
    target = pair[0]
    rng = np.random.default_rng(0)
    cache = KVCache.allocate(target.config, 3, 64, torch.float64, "cpu")
    prompts = {2: [5, 9, 1, 4, 4, 7], 0: [3, 8, 2]}
    tree_forward(target, cache, [chain_row(s, np.array(p), 0) for s, p in prompts.items()])
    cache.keep(np.array(list(prompts)), [np.arange(len(p)) for p in prompts.values()])
    rows, paths = [], []
    for (slot, prompt), size in zip(prompts.items(), (7, 4)):  # ragged: rows of different sizes
        parent, depth = random_tree(rng, size)
        tokens = rng.integers(0, VOCAB, size=size)
        tree = build_tree(int(tokens[0]), np.arange(size - 1), tokens[1:], parent[1:] - 1, depth[1:])
        rows.append(tree.row(slot, len(prompt)))
        for i in range(size):  # the tokens on the root-to-i path
            walk, path = i, []
            while walk >= 0:
                path.insert(0, int(tree.tokens[walk]))
                walk = int(tree.parent[walk])
            paths.append(prompt + path)
    logits = next_token_logits(target, tree_forward(target, cache, rows))
    for got, tokens in zip(logits, paths):
        torch.testing.assert_close(got, full_logits(target, tokens)[-1], rtol=0, atol=1e-10)


def fresh_prefix(model, tokens):
    cache = KVCache.allocate(model.config, 1, len(tokens) + 1, torch.float64, "cpu")
    tree_forward(model, cache, [chain_row(0, np.array(tokens), 0)])
    return cache


def assert_prefix_matches(cache, slot, fresh):
    length = int(cache.lengths[slot])
    assert length == int(fresh.lengths[0]) or fresh.lengths[0] == 0
    for layer in range(len(cache.keys)):
        for stored, reference in ((cache.keys, fresh.keys), (cache.values, fresh.values)):
            np.testing.assert_allclose(stored[layer][slot, :, :length].numpy(),
                                       reference[layer][0, :, :length].numpy(), atol=1e-5, rtol=0)


def test_rollback_leaves_target_cache_equal_to_fresh_prefill(pair):
    target = pair[0]
    cache = KVCache.allocate(target.config, 2, 64, torch.float64, "cpu")
    prompt = [4, 1, 7, 7, 2]
    tree_forward(target, cache, [chain_row(1, np.array(prompt), 0)])
    cache.keep(np.array([1]), [np.arange(len(prompt))])
    # root 11; nodes: 0:(12 @d1) 1:(13 @d1) 2:(14 @d2 under 1) 3:(15 @d2 under 0) 4:(16 @d3 under 2)
    tree = build_tree(11, np.arange(5), np.array([12, 13, 14, 15, 16]), np.array([-1, -1, 1, 0, 2]),
                      np.array([1, 1, 2, 2, 3]))
    tree_forward(target, cache, [tree.row(1, len(prompt))])
    accepted = np.array([2, 3, 5])  # verify-local: root -> 13 -> 14 -> 16 (scratch order differs)
    cache.keep(np.array([1]), [np.concatenate(([0], accepted))])
    fresh = fresh_prefix(target, prompt + [11, 13, 14, 16])
    fresh.lengths[0] = len(prompt) + 4
    assert cache.lengths[1] == len(prompt) + 4
    assert_prefix_matches(cache, 1, fresh)


def test_draft_rollback_keeps_forwarded_path_and_matches_fresh_prefill(pair):
    draft = pair[1]
    cache = KVCache.allocate(draft.config, 1, 96, torch.float64, "cpu")
    prompt = np.array([6, 2, 9, 3])
    (lattice,) = grow_lattices(draft, cache, np.array([0]), [prompt], WIDTH, DEPTH)
    assert cache.lengths[0] == len(prompt)  # pending tokens joined the prefix, the tree did not
    # accept the path to a level-3 frontier node (its ancestors were forwarded too)
    node = int(np.flatnonzero((lattice.depth == 3) & (lattice.scratch >= 0))[0])
    path = [node]
    while lattice.parent[path[0]] >= 0:
        path.insert(0, int(lattice.parent[path[0]]))
    (pending,) = commit_draft(cache, np.array([0]), [lattice], [np.array(path)], [[40]])
    assert pending.tolist() == [40]
    tokens = prompt.tolist() + lattice.token[path].tolist()
    fresh = fresh_prefix(draft, tokens)
    fresh.lengths[0] = len(tokens)
    assert_prefix_matches(cache, 0, fresh)


@pytest.mark.parametrize("name", [n for n in POLICY_NAMES if n != "oracle"])
def test_every_policy_outputs_exactly_the_targets_greedy_tokens(pair, specs, greedy_outputs, name):
    record = run_live(pair, specs, make_policy(name))
    assert [q.output for q in record.requests] == greedy_outputs
    accepted = sum(step.accepted for step in record.steps)
    if name != "ar":  # the draft agrees often: speculation really ran and was really checked
        assert accepted > 0 and sum(step.selected for step in record.steps) > accepted


def test_oracle_is_refused_live(pair, specs):
    with pytest.raises(ValueError, match="oracle"):
        run_live(pair, specs, make_policy("oracle"))


def test_live_lattices_equal_the_trace_generators(pair, specs, greedy_outputs):
    """The lattice a live step drafts at position t is the trace generator's lattice at t."""
    recorder = RecordingPolicy(make_policy("static"))
    record = run_live(pair, specs, recorder)
    target, draft = pair
    decode_steps = [step for step in record.steps if step.batch_size > 0]
    assert len(decode_steps) == len(recorder.steps)
    expected_of = {}
    seen = 0
    for step, logged in zip(recorder.steps, decode_steps):
        lattices = step["lattices"]
        for row, (index, position) in enumerate(logged.rows):
            if index not in expected_of:
                expected_of[index] = grow_request_lattices(draft, torch.tensor(specs[index].prompt),
                                                           torch.tensor(greedy_outputs[index]), WIDTH, DEPTH)
            expected = expected_of[index]
            span = slice(lattices.offsets[row], lattices.offsets[row + 1])
            assert lattices.token[span].tolist() == expected.token[position].tolist()
            assert lattices.parent[span].tolist() == expected.parent[position].tolist()
            assert lattices.depth[span].tolist() == expected.depth.tolist()
            np.testing.assert_allclose(lattices.score[span], expected.score[position], rtol=1e-5)
            seen += 1
    assert seen == sum(q.steps for q in record.requests)


@pytest.mark.parametrize("name", ["echo", "static-adaptive", "goodput", "dynamic"])
def test_runtime_selections_replay_identically_through_a_fresh_policy(pair, specs, name):
    """One policy code path: the same object type, fed the runtime's recorded lattices and
    contexts in order, selects exactly what the runtime verified."""
    recorder = RecordingPolicy(make_policy(name))
    run_live(pair, specs, recorder, concurrency=3)
    fresh = make_policy(name)
    assert recorder.steps
    for step in recorder.steps:
        assert fresh.draft == step["draft"]
        again = fresh.select(step["lattices"], step["context"])
        np.testing.assert_array_equal(again.nodes, step["selection"].nodes)
        if step["selection"].chain is not None:
            np.testing.assert_array_equal(again.chain, step["selection"].chain)
        fresh.observe(step["outcome"])


class BucketCost(LinearCost):
    graph_buckets = (1, 2, 4, 8, 16, 32, 64)


class CheapDraftBucketCost(CheapDraftCost):
    graph_buckets = (1, 2, 4, 8, 16, 32, 64)


@pytest.mark.parametrize("name, cost_type", [("static", BucketCost), ("echo", BucketCost), ("static-chain", BucketCost),
                                             ("goodput", BucketCost), ("echo", CheapDraftBucketCost),
                                             ("echo:budget=fixed,N=2,tau=1.0", CheapDraftBucketCost),
                                             ("echo:probe=4", CheapDraftBucketCost)])
def test_trace_replay_runtime_takes_the_simulators_steps(name, cost_type):
    """Timing-only mode (random weights, acceptance from a trace) against echo_sim.engine on the
    same trace, workload and policy: every step verifies, accepts and commits the same tokens, and
    (CheapDraftCost: a draft level costs 0.5 ms) the drafter runs as many levels as the simulator
    charges, so echo's expand gate stops the random drafter where it stops the trace's."""
    from echo_runtime.random_models import random_pair
    from echo_runtime.signals import TraceSignals
    from echo_sim.config import SimConfig
    from echo_sim.engine import build_simulation
    from echo_sim.testing import random_trace

    trace = random_trace(np.random.default_rng(3), num_requests=4, output_len=(4, 12), width=2, depth=3, vocab=40)
    config = SimConfig(policy=name, concurrency=2, requests=6, step_log=True)
    simulation = build_simulation(config, trace=trace, policy=make_policy(name), cost=cost_type())
    simulated = simulation.run().result().steps
    stream = simulation.stream
    specs = [RequestSpec(np.arange(int(p)) % 40, int(n)) for p, n in zip(stream.prompt_len, stream.output_len)]
    target, draft = random_pair("tiny-qwen3", torch.float32, "cpu")
    engine = LiveEngine(target, draft, make_policy(name), cost_type(),
                        RuntimeConfig(2, trace.width, trace.depth), TraceSignals(trace, stream.trace_request))
    records = engine.run(specs).steps
    assert len(records) == len(simulated)
    live = step_frame(records)
    if cost_type is CheapDraftBucketCost:
        levels = [0.0005 * len(step.draft_levels) for step in records]
        np.testing.assert_allclose(levels, simulated["draft_time"], atol=1e-12)
        if "N=2" in name:  # a budget that binds: the expand gate's cut prunes, drafts stop early
            assert any(0 < len(step.draft_levels) < step.draft_depth for step in records)
    for column in ("batch_size", "prefill_tokens", "verify_tokens", "selected", "padding", "draft_depth",
                   "draft_width", "accepted", "committed", "kv_tokens", "attention_pairs"):
        assert simulated[column].tolist() == live[column].tolist(), column
    assert simulated["accepted"].sum() > 0


def test_kernel_path_gives_the_same_greedy_output(specs, monkeypatch):
    """kernels.tree_attention + tree_verify (Triton interpreter on CPU, compiled on a GPU) in place
    of SDPA + the Python walk: same tokens as the target's own greedy decoding (head_dim 64, float32)."""
    import kernels.tree_attention
    import kernels.tree_verify
    from kernels.testing import kernel_device
    from runtime_support import tiny_qwen2

    device = kernel_device()
    if device is None:
        pytest.skip("compiled Triton kernels need CUDA (or TRITON_INTERPRET=1)")

    calls = {"attention": 0, "verify": 0}
    for module, name, key in ((kernels.tree_attention, "tree_attention", "attention"),
                              (kernels.tree_verify, "greedy_verify", "verify")):
        def counted(*args, _real=getattr(module, name), _key=key, **kwargs):
            calls[_key] += 1
            return _real(*args, **kwargs)
        monkeypatch.setattr(module, name, counted)

    target = tiny_qwen2(4, VOCAB, layers=2, hidden=128, heads=2, kv_heads=1).float()
    draft = tiny_qwen2(4, VOCAB, layers=1, hidden=128, heads=2, kv_heads=1).float()
    draft.model.embed_tokens = target.model.embed_tokens  # shared vocabulary geometry: some agreement
    short = [RequestSpec(s.prompt, 5) for s in specs[:3]]
    expected = [plain_greedy(target, list(s.prompt), 5) for s in short]     # on the CPU
    engine = LiveEngine(target.to(device), draft.to(device), make_policy("static:S=3,k=2,N=6"), LinearCost(),
                        RuntimeConfig(2, 2, 3, kernels=True), ModelSignals(use_kernel=True), str(device))
    record = engine.run(short)
    assert [q.output for q in record.requests] == expected
    assert any(step.verify_tokens > step.batch_size for step in record.steps)
    decode_steps = sum(1 for step in record.steps if step.batch_size)
    assert calls == {"attention": 2 * decode_steps, "verify": decode_steps}  # 2 layers per verify


def beam_view(draft, spec, output, shape):
    """The simulator's view of one request under a (k', S') drafter: the trace generator's beam
    lattice of that shape at every position (every frontier node expanded, nothing gated)."""
    return grow_request_lattices(draft, torch.tensor(spec.prompt), torch.tensor(output), shape.width, shape.depth)


@pytest.mark.parametrize("spec", ["echo", "echo:probe=4", "echo:tau=0.3,probe=4"])
def test_runtime_drafts_echos_shape_and_expands_only_gated_in_nodes(pair, specs, greedy_outputs, spec):
    """Differential: a fresh echo replays the run on the simulator's lattices (the full beam of the
    policy's shape, gated-out subtrees included, frontier = the beam's), with the step's T_prefill.
    The runtime must have drafted that shape, forwarded exactly the frontier nodes the fresh policy's
    expand gate lets through (no gated-out node expanded, none missing), grown exactly their children,
    run one level forward per expanding level, and verified the same nodes."""
    from echo_runtime.draft_tree import Lattice, lattice_batch
    from echo_sim.policies.base import DraftShape, Outcome, StepContext
    from echo_sim.step import executed_draft
    from echo_sim.trees import ROOT_PARENT

    target, draft = pair
    cost = CheapDraftCost()
    recorder = RecordingPolicy(make_policy(spec))
    record = LiveEngine(target, draft, recorder, cost, RuntimeConfig(3, WIDTH, DEPTH), ModelSignals()).run(specs)
    assert [q.output for q in record.requests] == greedy_outputs
    decode_steps = [step for step in record.steps if step.batch_size > 0]
    assert len(decode_steps) == len(recorder.steps)
    fresh, views = make_policy(spec), {}
    gated_out = ragged = shapes = 0
    for step, logged in zip(recorder.steps, decode_steps):
        shape = executed_draft(fresh.draft, DEPTH, WIDTH)
        context = step["context"]
        assert context.draft == shape and (logged.draft_depth, logged.draft_width) == (shape.depth, shape.width)
        assert context.prefill_seconds == pytest.approx(0.0004 * logged.prefill_tokens)
        live = step["lattices"]
        if shape.depth == 0:
            again = fresh.select(live, context)
            fresh.observe(step["outcome"])
            continue
        shapes += shape != DraftShape(DEPTH, WIDTH)
        rows = []
        for index, position in logged.rows:
            key = (index, shape)
            if key not in views:
                views[key] = beam_view(draft, specs[index], greedy_outputs[index], shape)
            view = views[key]
            rows.append(Lattice(token=view.token[position].astype(np.int64), parent=view.parent[position].astype(np.int64),
                                depth=view.depth.astype(np.int64), cond_prob=view.cond_prob[position],
                                score=view.score[position], scratch=np.zeros(len(view.depth), dtype=np.int64)))
        simulated = lattice_batch(rows)
        on_path = np.concatenate([views[(i, shape)].on_path[p] for i, p in logged.rows])
        parent = simulated.global_parent()
        beam_frontier = np.zeros(simulated.num_nodes, dtype=bool)
        beam_frontier[parent[parent != ROOT_PARENT]] = True
        expanded = fresh.drafter_expands(simulated, beam_frontier)
        drafted = (parent == ROOT_PARENT) | expanded[np.maximum(parent, 0)]
        gated_out += int((beam_frontier & ~expanded).sum())
        # the runtime's lattice is the simulator's, gated-out subtrees removed, in the same order
        np.testing.assert_array_equal(live.token, simulated.token[drafted])
        np.testing.assert_array_equal(live.depth, simulated.depth[drafted])
        np.testing.assert_array_equal(live.offsets, np.concatenate(([0], np.cumsum(
            np.bincount(simulated.request_of_node()[drafted], minlength=simulated.batch_size)))))
        renumber = np.cumsum(drafted) - 1  # simulated node -> runtime node
        live_parent = live.global_parent()
        np.testing.assert_array_equal(live_parent, np.where(parent[drafted] == ROOT_PARENT, ROOT_PARENT,
                                                            renumber[np.maximum(parent[drafted], 0)]))
        np.testing.assert_array_equal(context.frontier, expanded[drafted])  # forwarded = expanded
        np.testing.assert_allclose(live.score, simulated.score[drafted], rtol=1e-5)
        per_level = np.bincount(simulated.depth[expanded], minlength=shape.depth)[1:shape.depth]
        levels = (len(logged.rows) + context.catch_up,) + tuple(int(c) for c in per_level[: np.argmin(
            np.append(per_level, 0) > 0)])
        assert logged.draft_levels == levels
        ragged += levels[1:] != (len(logged.rows) * shape.width,) * (shape.depth - 1)
        # the simulator's selection on its lattice verifies exactly the runtime's nodes
        simulated_context = StepContext(len(logged.rows), context.kv_lens, cost, shape, DEPTH, WIDTH,
                                        prefill_seconds=0.0004 * logged.prefill_tokens, frontier=beam_frontier)
        again = fresh.select(simulated, simulated_context)
        assert not again.nodes[~drafted].any()
        np.testing.assert_array_equal(again.nodes[drafted], step["selection"].nodes)
        accepted = again.nodes & on_path
        np.testing.assert_array_equal(accepted[drafted], step["outcome"].accepted)
        fresh.observe(Outcome(simulated, again, accepted, step["outcome"].accepted_depth))
    assert gated_out > 0 and ragged > 0 and shapes > 0  # the gate and the shape choice really acted
