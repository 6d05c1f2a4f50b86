"""Notebooks: every notebook runs headless on a reduced grid (a failing cell fails the suite); the
committed notebooks carry a full run's outputs; the tables they plot match direct simulations,
are cached, and the fidelity readers report real files (or their absence) faithfully."""

import json

import nbformat
import numpy as np
import pandas as pd
import pytest

from echo_sim.report import notebook_data as nd
from echo_sim.report import notebook_fidelity as nf
from echo_sim.config import SimConfig
from echo_sim.engine import simulate
from echo_sim.report.notebook_exec import NOTEBOOKS, execute_notebook
from echo_sim.testing import random_trace
from echo_sim.traces.format import write_trace

WIDTH, DEPTH = 3, 4


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """The reduced-grid environment (what tests and `notebook_exec --quick` use), on a random trace."""
    root = tmp_path_factory.mktemp("notebooks")
    trace = root / "small.trace.npz"
    write_trace(random_trace(np.random.default_rng(11), num_requests=6, output_len=(10, 24), width=WIDTH,
                             depth=DEPTH), trace)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(nd.ENV_QUICK, "1")
        patch.setenv(nd.ENV_TRACE, str(trace))
        patch.setenv(nd.ENV_RESULTS, str(root / "results"))
        patch.delenv(nd.ENV_REFRESH, raising=False)
        patch.delenv(nd.ENV_JOBS, raising=False)
        yield nd.notebook_settings()


def outputs(notebook) -> list:
    return [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]


def image_count(notebook) -> int:
    return sum("image/png" in output.get("data", {}) for output in outputs(notebook))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes_on_reduced_grid(quick, tmp_path, name):
    executed = nbformat.read(execute_notebook(nd.NOTEBOOKS_DIR / name, tmp_path / name), as_version=4)
    assert not [o for o in outputs(executed) if o.output_type == "error"]
    assert image_count(executed) >= 1
    if name == "throughput_vs_concurrency.ipynb":
        text = "".join(o.get("text", "") for o in outputs(executed))
        assert "REDUCED test grid" in text and "NOT the shipped MT-Bench trace" in text
        exported = quick.figures / "throughput_vs_concurrency.png"
        assert exported.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_committed_notebooks_carry_full_run_outputs():
    for name in NOTEBOOKS:
        notebook = nbformat.read(nd.NOTEBOOKS_DIR / name, as_version=4)
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert all(cell.execution_count is not None for cell in code), f"{name} has unexecuted cells"
        assert not [o for o in outputs(notebook) if o.output_type == "error"], name
        assert image_count(notebook) >= 1, name
        text = "".join(o.get("text", "") for o in outputs(notebook))
        assert "REDUCED test grid" not in text, f"{name} carries a reduced-grid run"
    headline = nd.NOTEBOOKS_DIR / "figures" / "throughput_vs_concurrency.png"
    assert headline.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_throughput_table_matches_direct_simulation(quick):
    table = nd.throughput_table(quick)
    loads, policies = quick.grid.concurrency, nd.POLICY_NAMES
    assert len(table) == len(loads) * len(policies) * len(nd.COST_SETTINGS)
    for hardware, model in nd.COST_SETTINGS:
        part = table[(table["hardware"] == hardware) & (table["model"] == model)]
        assert set(part["cost_source"]) == {f"fitted:{hardware}/{model}"}  # the default cost model
        assert np.allclose(part[part["policy"] == "ar"]["speedup_vs_ar"], 1.0)
    config = SimConfig(policy="echo", concurrency=4, requests=quick.grid.requests, trace=str(quick.trace_file),
                       hardware="h200", model="qwen3-235b-a22b")
    direct = simulate(config).metrics
    row = table[(table["policy"] == "echo") & (table["concurrency"] == 4) & (table["model"] == "qwen3-235b-a22b")]
    ar = table[(table["policy"] == "ar") & (table["concurrency"] == 4) & (table["model"] == "qwen3-235b-a22b")]
    assert row["output_tokens_per_s"].item() == pytest.approx(direct["output_tokens_per_s"], rel=1e-12)
    assert row["mean_accepted_tokens"].item() == pytest.approx(direct["mean_accepted_tokens"], rel=1e-12)
    assert row["speedup_vs_ar"].item() == pytest.approx(direct["output_tokens_per_s"] / ar["output_tokens_per_s"].item())


def test_tables_are_cached_and_refresh_recomputes(quick, monkeypatch):
    nd.throughput_table(quick)  # built (or already built by another test)

    def no_sweep(*args, **kwargs):
        raise AssertionError("a cached table was recomputed")

    monkeypatch.setattr(nd, "run_grid", no_sweep)
    assert len(nd.throughput_table(quick)) > 0
    monkeypatch.setenv(nd.ENV_REFRESH, "1")
    with pytest.raises(AssertionError, match="recomputed"):
        nd.throughput_table(nd.notebook_settings())


def test_refresh_recomputes_the_points_too(quick, monkeypatch):
    nd.throughput_table(quick)  # its points are in the work folders now
    monkeypatch.setattr(nd, "_REFRESHED", set())
    monkeypatch.setenv(nd.ENV_REFRESH, "1")
    refresh = nd.notebook_settings()
    found = []  # point files in the work folder when each sweep starts
    real_run_grid = nd.run_grid

    def counting_run_grid(points, out, jobs):
        found.append(len(list(out.glob("points/*.json"))))
        return real_run_grid(points, out, jobs)

    monkeypatch.setattr(nd, "run_grid", counting_run_grid)
    nd.throughput_table(refresh)
    assert found and all(count == 0 for count in found)  # the older points were cleared, not resumed
    nd.throughput_table(refresh)  # once per process: this refresh's own points are reused
    assert found[-1] > 0


def test_cache_is_keyed_by_trace_contents(quick, tmp_path, monkeypatch):
    other = tmp_path / "small.trace.npz"  # same name, different lattices
    write_trace(random_trace(np.random.default_rng(12), num_requests=6, output_len=(10, 24)), other)
    monkeypatch.setenv(nd.ENV_TRACE, str(other))
    assert nd.notebook_settings().results != quick.results


def test_echo_step_tables_are_consistent(quick):
    budget, extents = nd.budget_table(quick), nd.extent_table(quick)
    assert set(budget["concurrency"]) == set(quick.grid.concurrency)
    assert (budget["verify_tokens"] == budget["batch_size"] + budget["selected"] + budget["padding"]).all()
    assert (budget["budget"] >= 0).all()
    assert set(extents["concurrency"]) == set(quick.grid.anatomy_loads)
    per_step = extents.groupby(["model", "concurrency", "step"]).agg(rows=("request", "size"), bs=("batch_size", "first"))
    assert (per_step["rows"] == per_step["bs"]).all()
    assert extents["selected_depth"].between(0, DEPTH).all()
    assert extents["selected_width"].between(0, WIDTH * WIDTH).all()  # a level holds at most k² nodes
    assert (extents["accepted_depth"] <= extents["selected_depth"]).all()
    assert (extents["oracle_depth"] >= extents["accepted_depth"]).all()
    snapshot = nd.snapshot_step(extents, "h200", "llama-3.1-8b", quick.grid.anatomy_loads[1])
    assert snapshot["step"].nunique() == 1
    assert list(snapshot["selected_depth"]) == sorted(snapshot["selected_depth"], reverse=True)


def test_steady_steps_keeps_the_window_and_thins_evenly():
    steps = pd.DataFrame({"step": range(10), "batch_size": [0] + [2] * 9, "end": np.arange(1.0, 11.0)})
    kept = nd.steady_steps({"window_start_s": 2.0, "window_end_s": 8.0}, steps, limit=100)
    assert list(kept["step"]) == [2, 3, 4, 5, 6, 7]  # ends in (2, 8]
    thinned = nd.steady_steps({"window_start_s": float("nan"), "window_end_s": float("nan")}, steps, limit=3)
    assert list(thinned["step"]) == [1, 5, 9]  # no window: every decode step, then 3 evenly spaced


def test_ablation_change_and_best_policy_by_hand():
    ablations = pd.DataFrame({
        "hardware": "h200", "model": "m", "concurrency": 4,
        "variant": list(nd.ABLATIONS.values()), "output_tokens_per_s": [200.0, 100.0, 250.0, 200.0, 50.0, 220.0],
    })
    change = nd.ablation_change(ablations)[4]
    assert change[("h200", "m", "gate off")] == pytest.approx(-50.0)
    assert change[("h200", "m", "calibration off")] == pytest.approx(25.0)
    assert change[("h200", "m", "shape adaptation off")] == pytest.approx(10.0)
    table = pd.DataFrame({"hardware": "h200", "model": "m", "concurrency": 8,
                          "policy": ["ar", "static", "echo", "oracle"],
                          "output_tokens_per_s": [100.0, 150.0, 180.0, 400.0]})
    best = nd.best_policy_table(table).iloc[0]
    assert best["fastest"] == "echo" and best["best_other"] == "static"
    assert best["echo_gain_over_best_other_pct"] == pytest.approx(20.0)
    assert best["fastest_speedup_vs_ar"] == pytest.approx(1.8)


def validation_row(policy, concurrency, simulated, measured):
    row = {"policy": policy, "concurrency": concurrency, "outputs_match_trace": True, "steady_state": True,
           "steps_simulated": 10, "steps_measured": 11}
    for quantity in nf.VALIDATED_QUANTITIES:
        row.update({f"{quantity}_simulated": simulated, f"{quantity}_measured": measured,
                    f"{quantity}_error_pct": (simulated - measured) / measured * 100})
    return row


def write_validation(root, rows):
    folder = root / "benchmarks" / "results" / "validate_cpu"
    folder.mkdir(parents=True, exist_ok=True)
    data = {"rows": rows, "hardware": "cpu", "target": "t", "draft": "d", "calibration": "c.json",
            "trace": "v.trace.npz"}
    (folder / "validation.json").write_text(json.dumps(data))
    return folder / "validation.json"


def test_validation_table_reads_rows_and_names_bad_files(tmp_path):
    assert nf.validation_table(tmp_path).empty  # absent: empty, reported as missing by the notebook
    path = write_validation(tmp_path, [validation_row("echo", 2, 12.0, 10.0)])
    table = nf.validation_table(tmp_path)
    assert len(table) == 3 and set(table["quantity"]) == set(nf.VALIDATED_QUANTITIES)
    assert table["error_pct"].tolist() == pytest.approx([20.0] * 3)
    summary = nf.validation_summary(table).iloc[0]
    assert summary["points"] == 1 and summary["outputs_match_trace"]
    for quantity in nf.VALIDATED_QUANTITIES:
        assert summary[f"{quantity}_max_abs_err_pct"] == pytest.approx(20.0)
    path.write_text(json.dumps({"rows": [{"policy": "echo"}]}))
    with pytest.raises(ValueError, match="validation.json"):
        nf.validation_table(tmp_path)


def write_exact_calibration(root) -> list[dict]:
    """A calibration file whose points follow the fitted model's form exactly (no residual)."""
    from echo_sim.cost.calibration_file import write_calibration

    points = []
    for bs in (1, 2, 4):
        for v_per in (1, 4, 8):
            v, kv = bs * v_per, 128 * bs
            points.append(dict(batch_size=bs, verify_tokens=v, kv_tokens=kv, draft_depth=2, draft_width=2, eager=True,
                               verify_s=0.01 + 0.002 * v + 1e-5 * kv, draft_s=0.004 + 0.001 * (bs + bs * 2)))
    write_calibration(root / "traces" / "calibration" / "cpu_m.json", points=points, hardware="cpu", model="m",
                      draft_model="d", dtype="float32", tp=1, software={}, command="test", graph_buckets=[],
                      kv_capacity_tokens=10_000, prefill_chunk_tokens=512, step_overhead_s=0.0,
                      per_request_overhead_s=0.0)
    return points


def test_calibration_residuals_against_an_exact_law(tmp_path):
    points = write_exact_calibration(tmp_path)
    folder = tmp_path / "traces" / "calibration"
    (folder / "broken.json").write_text('{"format": "echo-sim-calibration"}')
    residuals, problems = nf.calibration_residuals(tmp_path)
    assert len(residuals) == len(points) and set(residuals["file"]) == {"cpu_m.json"}
    assert residuals["verify_rel_err"].abs().max() < 1e-6
    assert residuals["draft_rel_err"].abs().max() < 1e-6
    assert len(problems) == 1 and "broken.json" in problems[0]
    stored = json.loads((folder / "cpu_m.json").read_text())["points"]
    assert residuals["verify_fit_s"].tolist() == pytest.approx([p["verify_fit_s"] for p in stored])


def write_crosscheck(root):
    path = root / nf.CROSSCHECK_CSV
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"source": "s", "device": "a100", "op": ["decode", "prefill", "linear"],
                  "measured_s": [2.0, 4.0, 1.0], "graph_s": [1.0, 5.0, 1.0], "eager_s": [3.0, 4.0, 1.0]}).to_csv(path)


def test_cost_crosscheck_errors_by_hand(tmp_path):
    assert nf.cost_crosscheck(tmp_path).empty
    write_crosscheck(tmp_path)
    table = nf.cost_crosscheck(tmp_path)
    assert table["op"].tolist() == ["decode", "prefill"]  # single operators are not steps
    assert table["graph_error"].tolist() == pytest.approx([-0.5, 0.25])
    assert table["eager_error"].tolist() == pytest.approx([0.5, 0.0])


def test_fidelity_notebook_plots_every_source(tmp_path, monkeypatch):
    """The cells that draw a validation table run too (the repository may not have one yet)."""
    root = tmp_path / "measured"
    write_validation(root, [validation_row(p, c, 10.0 + c, 10.0) for p in ("ar", "echo") for c in (1, 2)])
    write_exact_calibration(root)
    write_crosscheck(root)
    monkeypatch.setenv(nf.ENV_ROOT, str(root))
    executed = nbformat.read(execute_notebook(nd.NOTEBOOKS_DIR / "fidelity.ipynb", tmp_path / "f.ipynb"),
                             as_version=4)
    text = "".join(o.get("text", "") for o in outputs(executed))
    assert "NO VALIDATION TABLE" not in text and "NO CALIBRATION FILE" not in text and str(root) in text
    assert image_count(executed) == 3  # validation parity, calibration residuals, roofline cross-check


def test_acceptance_label_shortens_model_paths():
    table = pd.DataFrame({"acceptance_source": ["t.trace.npz (/m/d/draft.gguf -> /m/t/target.gguf)", None]})
    assert nd.acceptance_label(table) == "t.trace.npz (draft.gguf -> target.gguf)"
