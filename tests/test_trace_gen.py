"""`echo-run trace` end to end on a tiny random Qwen2 pair built here (no download, CPU, float64).

References are independent of the generator: the target's tokens against transformers' own greedy
generate(), every lattice against a brute-force expansion (one plain forward per expanded node over
its full context: no KV cache, no custom mask, frontier picked by a Python sort).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from echo_runtime import trace_gen  # noqa: E402
from echo_runtime.cli import main as echo_run  # noqa: E402
from echo_sim.traces.format import read_trace  # noqa: E402

CHAT_TEMPLATE = ("{% for m in messages %}<|user|>{{ m['content'] }}<|im_end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
PROMPTS = ["write a sort in c9", "hi", "explain kv caches to me2"]
VOCAB = 48  # model rows; the tokenizer below has 41 tokens
WIDTH, DEPTH, MAX_NEW = 3, 3, 10


def tiny_tokenizer():
    """A real Qwen2Tokenizer (byte-level, Qwen's pre-tokenizer) over single characters."""
    chars = ["Ġ"] + list("abcdefghijklmnopqrstuvwxyz0123456789")
    tokenizer = transformers.Qwen2Tokenizer(vocab={c: i for i, c in enumerate(chars)}, merges=[],
                                            unk_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|user|>", "<|assistant|>"]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_qwen2(seed: int, layers: int, hidden: int):
    config = transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        tie_word_embeddings=True, dtype="float64")
    model = transformers.Qwen2ForCausalLM(config).to(torch.float64).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # peaked random weights: distinct probabilities, few near-ties
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float64) * 0.3)
    return model


def plain_greedy(model, prompt_ids, eos_id=None):
    """transformers' own greedy decoding: the independent reference for the target tokens."""
    out = model.generate(torch.tensor([prompt_ids]), do_sample=False, max_new_tokens=MAX_NEW,
                         eos_token_id=eos_id, pad_token_id=0, attention_mask=torch.ones(1, len(prompt_ids)))
    return out[0, len(prompt_ids):].tolist()


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    """Target and draft folders (+ prompts file); the target's EOS is a token it really emits."""
    root = tmp_path_factory.mktemp("tiny_pair")
    tokenizer = tiny_tokenizer()
    target, draft = tiny_qwen2(1, layers=3, hidden=32), tiny_qwen2(2, layers=2, hidden=32)
    first = trace_gen.chat_prompt_ids(tokenizer, PROMPTS[0]).tolist()
    free_run = plain_greedy(target, first)
    eos_at = next(i for i in range(3, len(free_run)) if free_run[i] not in free_run[:i])
    target.generation_config.eos_token_id = free_run[eos_at]  # request 0 ends at EOS, early
    for name, model in (("target", target), ("draft", draft)):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    prompts = root / "question.jsonl"
    prompts.write_text("".join(json.dumps({"question_id": 100 + i, "category": "x", "turns": [text, "2nd"]}) + "\n"
                               for i, text in enumerate(PROMPTS)))
    return {"root": root, "target": target, "draft": draft, "tokenizer": tokenizer,
            "prompts": prompts, "eos": free_run[eos_at], "eos_at": eos_at}


def cli_args(pair, out, *extra):
    return ["trace", "--target", str(pair["root"] / "target"), "--draft", str(pair["root"] / "draft"),
            "--prompts", str(pair["prompts"]), "--max-new-tokens", str(MAX_NEW), "--width", str(WIDTH),
            "--depth", str(DEPTH), "--dtype", "float64", "--target-batch", "2", "--out", str(out), *extra]


def brute_force_lattice(draft, prefix, width, depth):
    """[(token, parent, depth, cond_prob, score)] in level order, one uncached forward per node."""
    def child_probs(tokens):
        with torch.no_grad():
            logits = draft(input_ids=torch.tensor([tokens])).logits[0, -1]
        probs = torch.softmax(logits, dim=-1).numpy()  # float64 softmax: independent of float32 path
        order = sorted(range(len(probs)), key=lambda v: -probs[v])[:width]
        return [(v, float(probs[v])) for v in order]

    nodes = [(v, -1, 1, p, np.float32(p)) for v, p in child_probs(prefix)]
    frontier = list(range(width))
    for level in range(2, depth + 1):
        candidates = []
        for node in frontier:
            path, walk = [], node
            while walk != -1:
                path.insert(0, nodes[walk][0])
                walk = nodes[walk][1]
            for v, p in child_probs(prefix + path):
                candidates.append((v, node, level, p, np.float32(nodes[node][4]) * np.float32(p)))
        base = len(nodes)
        nodes += candidates
        ranked = sorted(range(len(candidates)), key=lambda i: (-candidates[i][4], i))
        frontier = [base + i for i in ranked[:width]]
    return nodes


def brute_on_path(nodes, y, t):
    def spells(i):
        token, parent, node_depth = nodes[i][0], nodes[i][1], nodes[i][2]
        pos = t + node_depth - 1
        return pos < len(y) and token == y[pos] and (parent == -1 or spells(parent))
    return [spells(i) for i in range(len(nodes))]


@pytest.fixture(scope="module")
def generated(tiny_pair, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "tiny.trace.npz"
    assert echo_run(cli_args(tiny_pair, out)) == 0
    return read_trace(out)


def test_target_tokens_equal_plain_greedy_generate(tiny_pair, generated):
    assert generated.request_ids == ["100", "101", "102"]
    for r, text in enumerate(PROMPTS):
        prompt = trace_gen.chat_prompt_ids(tiny_pair["tokenizer"], text).tolist()
        y = generated.target_token[generated.position_offsets[r]:generated.position_offsets[r + 1]]
        assert generated.prompt_len[r] == len(prompt)
        assert y.tolist() == plain_greedy(tiny_pair["target"], prompt, tiny_pair["eos"])
    assert generated.output_len[0] == tiny_pair["eos_at"] + 1  # stopped at EOS, EOS kept
    assert generated.target_token[generated.output_len[0] - 1] == tiny_pair["eos"]


def test_every_lattice_matches_brute_force_expansion(tiny_pair, generated):
    draft, trace = tiny_pair["draft"], generated
    checked = 0
    for r, text in enumerate(PROMPTS):
        prompt = trace_gen.chat_prompt_ids(tiny_pair["tokenizer"], text).tolist()
        first, last = trace.position_offsets[r], trace.position_offsets[r + 1]
        y = trace.target_token[first:last].tolist()
        for t in range(len(y)):
            expected = brute_force_lattice(draft, prompt + y[:t], WIDTH, DEPTH)
            nodes = slice(trace.node_offsets[first + t], trace.node_offsets[first + t + 1])
            assert trace.node_token[nodes].tolist() == [n[0] for n in expected], (r, t)
            assert trace.node_parent[nodes].tolist() == [n[1] for n in expected], (r, t)
            assert trace.node_depth[nodes].tolist() == [n[2] for n in expected], (r, t)
            np.testing.assert_allclose(trace.node_cond_prob[nodes], [n[3] for n in expected], rtol=1e-5)
            np.testing.assert_allclose(trace.node_score[nodes], [n[4] for n in expected], rtol=1e-5)
            assert trace.node_on_path[nodes].tolist() == brute_on_path(expected, y, t), (r, t)
            checked += 1
    assert checked == trace.num_positions and trace.node_on_path.any()
    assert len(trace.node_token) == trace.num_positions * (WIDTH + (DEPTH - 1) * WIDTH ** 2)


def test_spine_rank_and_probability_match_full_distribution(tiny_pair, generated):
    trace = generated
    for r, text in enumerate(PROMPTS):
        prompt = trace_gen.chat_prompt_ids(tiny_pair["tokenizer"], text).tolist()
        first, last = trace.position_offsets[r], trace.position_offsets[r + 1]
        y = trace.target_token[first:last].tolist()
        with torch.no_grad():
            logits = tiny_pair["draft"](input_ids=torch.tensor([prompt + y])).logits[0]
        for t in range(len(y)):
            probs = torch.softmax(logits[len(prompt) + t - 1], dim=-1).numpy()
            rank = int((probs > probs[y[t]]).sum())
            assert trace.draft_rank[first + t] == (rank if rank < 16 else -1)
            assert trace.draft_prob[first + t] == pytest.approx(probs[y[t]], rel=1e-5)


def test_header_is_complete(generated, tiny_pair):
    header = generated.header
    assert header["width"] == WIDTH and header["depth"] == DEPTH and header["max_new_tokens"] == MAX_NEW
    assert header["decoding"] == "greedy" and header["prompt_ids"] == ["100", "101", "102"]
    assert header["command"].startswith("echo-run trace --target ")
    weights = tiny_pair["root"] / "target" / "model.safetensors"
    import hashlib
    assert header["target_sha256"] == {"model.safetensors": hashlib.sha256(weights.read_bytes()).hexdigest()}
    for key in ("draft_model", "target_model", "draft_sha256", "tokenizer", "dataset", "created",
                "generator_version", "format_version"):
        assert header[key], key


def test_interrupted_run_resumes_and_reuses_finished_requests(tiny_pair, generated, tmp_path, monkeypatch):
    out = tmp_path / "resume.trace.npz"
    real = trace_gen.generate_group
    made = []

    def interrupt_second(*args, **kwargs):
        for part in real(*args, **kwargs):
            if len(made) == 1:
                raise KeyboardInterrupt
            made.append(part.request_id)
            yield part

    monkeypatch.setattr(trace_gen, "generate_group", interrupt_second)
    assert echo_run(cli_args(tiny_pair, out)) == 130
    parts = tmp_path / "resume.trace.npz.parts"
    assert not out.exists() and sorted(p.name for p in parts.iterdir()) == ["100.npz", "params.json", "target"]
    assert sorted(p.name for p in (parts / "target").iterdir()) == ["100.npz", "101.npz"]  # group of 2
    made.clear()
    decoded = []
    real_decode = trace_gen.greedy_decode
    monkeypatch.setattr(trace_gen, "greedy_decode", lambda model, prompts, *a: decoded.append(len(prompts))
                        or real_decode(model, prompts, *a))

    def record(*args, **kwargs):
        for part in real(*args, **kwargs):
            made.append(part.request_id)
            yield part

    monkeypatch.setattr(trace_gen, "generate_group", record)
    assert echo_run(cli_args(tiny_pair, out)) == 0
    assert made == ["101", "102"]  # request 100 came from its part
    assert decoded == [1]  # only 102 was decoded again: 101's target output was kept
    resumed = read_trace(out)
    for name in ("target_token", "node_token", "node_parent", "node_score", "node_on_path", "draft_rank"):
        np.testing.assert_array_equal(getattr(resumed, name), getattr(generated, name), err_msg=name)


def test_resume_with_other_parameters_is_refused(tiny_pair, tmp_path, capsys):
    out = tmp_path / "mismatch.trace.npz"
    assert echo_run(cli_args(tiny_pair, out, "--limit", "1")) == 0
    other = cli_args(tiny_pair, out, "--limit", "1")
    other[other.index("--max-new-tokens") + 1] = "4"
    assert echo_run(other) == 2
    assert "max_new_tokens=10" in capsys.readouterr().err


@pytest.mark.parametrize("line, problem", [("not json", "not JSON"), ('{"question_id": 1}', "turns")])
def test_bad_prompts_file_is_a_clear_error(tiny_pair, tmp_path, capsys, line, problem):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(line + "\n")
    args = cli_args(tiny_pair, tmp_path / "x.trace.npz")
    args[args.index("--prompts") + 1] = str(bad)
    assert echo_run(args) == 2
    err = capsys.readouterr().err
    assert f"{bad}:1" in err and problem in err and not (tmp_path / "x.trace.npz").exists()


def test_unknown_question_id_is_a_clear_error(tiny_pair, tmp_path, capsys):
    assert echo_run(cli_args(tiny_pair, tmp_path / "x.trace.npz", "--ids", "100", "999")) == 2
    assert "unknown question ids 999" in capsys.readouterr().err
    assert not (tmp_path / "x.trace.npz").exists()


@pytest.mark.slow
def test_shipped_mt_bench_lattices_match_brute_force_with_the_real_draft():
    """Real pair (fetched with get-qwen-coder-pair.sh into $ECHO_QWEN_DIR; dequantized copies cached in
    $ECHO_MODEL_CACHE): 3 random positions of the shipped trace re-expanded node by node, one uncached
    forward per expanded node (~1-2 min per position on 1 CPU thread)."""
    import os
    from pathlib import Path

    from echo_runtime.models import load_model

    folder = Path(os.environ.get("ECHO_MODEL_DIR", Path(__file__).resolve().parents[1] / "models" / "qwen-coder"))
    draft_file = "qwen2.5-coder-0.5b-instruct-awq-q4km.gguf"
    if not (folder / draft_file).is_file():
        pytest.skip(f"real draft not found in {folder} (set ECHO_MODEL_DIR)")
    root = Path(__file__).resolve().parents[1] / "traces"
    trace = read_trace(root / "mt_bench_qwen_coder.trace.npz")
    cache = os.environ.get("ECHO_MODEL_CACHE")
    draft = load_model(str(folder), draft_file, "float32", Path(cache) if cache else None)
    torch.set_num_threads(1)
    prompts = {p.request_id: p.text for p in trace_gen.read_prompts(root / "prompts" / "mt_bench_question.jsonl")}
    rng = np.random.default_rng(11)
    for r in rng.choice(trace.num_requests, 3, replace=False):
        prompt = trace_gen.chat_prompt_ids(draft.tokenizer, prompts[trace.request_ids[r]]).tolist()
        assert len(prompt) == trace.prompt_len[r]
        first = trace.position_offsets[r]
        y = trace.target_token[first:trace.position_offsets[r + 1]].tolist()
        t = int(rng.integers(len(y)))
        expected = brute_force_lattice(draft.model, prompt + y[:t], trace.width, trace.depth)
        nodes = slice(trace.node_offsets[first + t], trace.node_offsets[first + t + 1])
        assert trace.node_token[nodes].tolist() == [n[0] for n in expected], (r, t)
        assert trace.node_parent[nodes].tolist() == [n[1] for n in expected], (r, t)
        np.testing.assert_allclose(trace.node_score[nodes], [n[4] for n in expected], rtol=1e-4, atol=1e-6)
