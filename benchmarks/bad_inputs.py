"""Catalogue of bad inputs (issue 15): how each command of a checkout answers them. (Interruptions
of a sweep are tested in tests/test_sweep_interruptions.py.)

    python benchmarks/bad_inputs.py --before /tmp/wt-17f63f9 --out benchmarks/results/bad_inputs.md

runs every case against this checkout ("after") and, with --before, against another checkout of
the repository (a `git worktree` of an older commit: "before"), and writes a table of
cases / clean errors / tracebacks / partial writes / accepted per group, plus one line per case.

A case is a command line run in a fresh scratch folder whose inputs it prepares itself; verdicts:
    clean      exit code != 0, no traceback, stderr is one line, and nothing was written
    traceback  a Python traceback on stderr (whatever else happened)
    partial    an error exit that left files or folders behind in the scratch folder
    accepted   exit 0 on input that should have been refused (or, for the "must run" group,
               the one right answer: exit 0)
    hang       killed at the per-case time limit
Fuzz groups feed many mutated files to one reader in one process and count what it raises
(a named error: TraceError / CostModelError / WorkloadError; anything else is a "traceback").
Memory-hungry cases run under an address-space limit (RLIMIT_AS, 4 GiB): an unbounded allocation
then fails fast instead of taking the machine down.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
ADDRESS_LIMIT = 4 << 30
CASE_TIMEOUT_S = 120
SIM = ["-m", "echo_sim.cli.main"]
RUN = ["-m", "echo_runtime.cli"]


@dataclass
class Case:
    group: str
    name: str
    argv: list[str]  # python arguments; {trace}, {cal}, {dir} are filled in per scratch folder
    prepare: str = ""  # name of a preparation in PREPARE
    memory_limit: bool = False
    must_run: bool = False  # valid input: the right answer is exit 0
    keep: list[str] = field(default_factory=list)  # files the case itself prepares (not writes)


def small_sweep(*extra: str) -> list[str]:
    return [*SIM, "sweep", "--requests", "16", "--concurrency", "1,2", "--jobs", "1", "--no-plots",
            "--out", "X", *extra]


CASES = [
    # ---------------------------------------------------------------- sweep / run: arguments
    Case("sim arguments", "unknown policy", small_sweep("--policies", "nosuch")),
    Case("sim arguments", "concurrency 0", small_sweep("--concurrency", "0")),
    Case("sim arguments", "concurrency 1,x", small_sweep("--concurrency", "1,x")),
    Case("sim arguments", "jobs 0", small_sweep("--jobs", "0")),
    Case("sim arguments", "seeds -1", small_sweep("--seeds", "-1")),
    Case("sim arguments", "rates nan", [*SIM, "sweep", "--rates", "nan", "--requests", "16", "--out", "X"]),
    Case("sim arguments", "requests 0", small_sweep("--requests", "0")),
    Case("sim arguments", "unknown workload", small_sweep("--workload", "nosuch")),
    Case("sim arguments", "unknown hardware", small_sweep("--hardware", "tpu9000")),
    Case("sim arguments", "kv-capacity 10", small_sweep("--kv-capacity", "10")),
    Case("sim arguments", "static:S=100 (beyond the trace)", small_sweep("--policies", "static:S=100")),
    Case("sim arguments", "static:k=10 (beyond the trace)", small_sweep("--policies", "static:S=5,k=10,N=16")),
    Case("sim arguments", "run static:S=100", [*SIM, "run", "--policy", "static:S=100", "--concurrency", "1",
                                               "--requests", "8"]),
    Case("sim arguments", "run kv-capacity 10", [*SIM, "run", "--policy", "ar", "--concurrency", "1",
                                                 "--requests", "8", "--kv-capacity", "10"]),
    # ---------------------------------------------------------------- output folder
    Case("output folder", "--out is a file", small_sweep("--policies", "ar"), prepare="out_file", keep=["X"]),
    Case("output folder", "--out inside a file", [*SIM, "sweep", "--requests", "8", "--concurrency", "1",
                                                  "--policies", "ar", "--jobs", "1", "--out", "X/sub"],
         prepare="out_file", keep=["X"]),
    # ---------------------------------------------------------------- files: traces
    Case("trace files", "missing trace", small_sweep("--trace", "/nonexistent/t.trace.npz")),
    Case("trace files", "text file as trace", small_sweep("--trace", "{dir}/text.trace.npz"), "text_trace",
         keep=["text.trace.npz"]),
    Case("trace files", "empty trace file", small_sweep("--trace", "{dir}/empty.trace.npz"), "empty_trace",
         keep=["empty.trace.npz"]),
    Case("trace files", "truncated trace", small_sweep("--trace", "{dir}/cut.trace.npz"), "cut_trace",
         keep=["cut.trace.npz"]),
    Case("trace files", "0-request trace: trace-info --json", [*SIM, "trace-info", "{dir}/zero.trace.npz", "--json"],
         "zero_trace", keep=["zero.trace.npz"]),
    Case("trace files", "0-request trace: sweep", small_sweep("--trace", "{dir}/zero.trace.npz"), "zero_trace",
         keep=["zero.trace.npz"]),
    *[Case("trace files", f"byte-flipped trace #{i}", small_sweep("--policies", "ar", "--trace", f"{{dir}}/flip{i}.trace.npz"),
           f"flip_trace:{i}", keep=[f"flip{i}.trace.npz"]) for i in range(12)],
    # ---------------------------------------------------------------- files: calibrations
    Case("calibration files", "fit.draft null, drafting policy", small_sweep("--policies", "ar,echo", "--calibration",
                                                                              "{dir}/nodraft.json"),
         "cal_nodraft", keep=["nodraft.json"]),
    Case("calibration files", "all-zero fit", small_sweep("--policies", "ar", "--calibration", "{dir}/zero.json"),
         "cal_zero", keep=["zero.json"]),
    Case("calibration files", "not JSON", small_sweep("--calibration", "{dir}/bad.json"), "cal_bad", keep=["bad.json"]),
    Case("calibration files", "NaN overhead", small_sweep("--calibration", "{dir}/nan.json"), "cal_nan",
         keep=["nan.json"]),
    # ---------------------------------------------------------------- import-specdecode
    Case("specdecode logs", "acc_len 99999999999", [*SIM, "import-specdecode", "{dir}/big.jsonl", "--proposer", "eagle",
                                                   "--out", "out.trace.npz"], "log_big", keep=["big.jsonl"]),
    Case("specdecode logs", "acc_len true", [*SIM, "import-specdecode", "{dir}/bool.jsonl", "--proposer", "eagle",
                                            "--out", "out.trace.npz"], "log_bool", keep=["bool.jsonl"]),
    Case("specdecode logs", "empty log", [*SIM, "import-specdecode", "{dir}/empty.jsonl", "--proposer", "eagle",
                                         "--out", "out.trace.npz"], "log_empty", keep=["empty.jsonl"]),
    # ---------------------------------------------------------------- runtime (torch)
    Case("runtime", "validate --target /nonexistent", [*RUN, "validate", "--target", "/nonexistent", "--out", "Z",
                                                       "--limit", "1"]),
    Case("runtime", "live --threads -2", [*RUN, "live", "--random-shape", "tiny-llama", "--concurrency", "1",
                                          "--trace", "{trace}", "--requests", "2", "--threads", "-2"]),
    Case("runtime", "live --requests 0", [*RUN, "live", "--random-shape", "tiny-llama", "--concurrency", "1",
                                          "--trace", "{trace}", "--requests", "0"]),
    Case("runtime", "calibrate --draft-width 0", [*RUN, "calibrate", "--random-shape", "tiny-llama", "--draft-width",
                                                  "0", "--out", "cal.json"]),
    Case("runtime", "calibrate --out <directory>", [*RUN, "calibrate", "--random-shape", "tiny-llama",
                                                    "--batch-sizes", "1", "--tokens-per-request", "1", "--kv-lens", "8",
                                                    "--draft-depths", "1", "--curve-tokens", "1",
                                                    "--prefill-tokens", "8", "--repeats", "1", "--out", "D"],
         prepare="out_dir", keep=["D"]),
    Case("runtime", "truncated GGUF", [*RUN, "live", "--target", "{dir}/m", "--target-gguf", "t.gguf",
                                       "--draft-gguf", "t.gguf", "--concurrency", "1", "--model-cache", "cache",
                                       "--prompts", "{dir}/p.jsonl"], "bad_gguf", keep=["m", "p.jsonl"]),
    Case("runtime", "invalid config.json", [*RUN, "live", "--target", "{dir}/hf", "--target-gguf", "",
                                            "--draft-gguf", "", "--concurrency", "1", "--prompts", "{dir}/p.jsonl"],
         "bad_config", keep=["hf", "p.jsonl"]),
    Case("runtime", "empty prompts file", [*RUN, "trace", "--target", "{dir}/hf", "--draft", "{dir}/hf",
                                           "--prompts", "{dir}/empty.jsonl", "--out", "t.trace.npz"],
         "log_empty", keep=["empty.jsonl"]),
    Case("runtime", "non-UTF-8 prompts file", [*RUN, "trace", "--target", "{dir}/hf", "--draft", "{dir}/hf",
                                               "--prompts", "{dir}/latin.jsonl", "--out", "t.trace.npz"],
         "latin_prompts", keep=["latin.jsonl"]),
    Case("runtime", "live --concurrency 100000 (4 GiB limit)",
         [*RUN, "live", "--random-shape", "tiny-llama", "--concurrency", "100000", "--trace", "{trace}",
          "--requests", "100000"], memory_limit=True),
    # ---------------------------------------------------------------- valid input that must run
    Case("must run", "sweep --policies ar,static:S=5,k=4,N=16", small_sweep("--policies", "ar,static:S=5,k=4,N=16"),
         must_run=True),
    Case("must run", "trace-info --json", [*SIM, "trace-info", "{trace}", "--json"], must_run=True),
]


# ------------------------------------------------------------------------------- preparations


def shipped_trace(repo: Path) -> Path:
    return sorted((repo / "traces").glob("mt_bench*.trace.npz"))[0]


def calibration(repo: Path) -> dict:
    return json.loads((repo / "traces" / "calibration" / "cpu-2core_qwen2.5-coder-1.5b.json").read_text())


def _zero_floats(value):
    if isinstance(value, dict):
        return {k: _zero_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_zero_floats(v) for v in value]
    return 0.0 if isinstance(value, float) else value


def prepare(kind: str, scratch: Path, repo: Path, small_trace: Path) -> None:
    blob = small_trace.read_bytes()
    name, _, arg = kind.partition(":")
    if name == "out_file":
        (scratch / "X").write_text("a file, not a folder")
    elif name == "out_dir":
        (scratch / "D").mkdir()
    elif name == "text_trace":
        (scratch / "text.trace.npz").write_text("hello")
    elif name == "empty_trace":
        (scratch / "empty.trace.npz").write_bytes(b"")
    elif name == "cut_trace":
        (scratch / "cut.trace.npz").write_bytes(blob[: len(blob) // 2])
    elif name == "zero_trace":
        shutil.copy(ZERO_TRACE, scratch / "zero.trace.npz")
    elif name == "flip_trace":
        data = bytearray(blob)
        at = (int(arg) * 7919 + 31) % len(data)
        data[at] ^= 0xFF
        (scratch / f"flip{arg}.trace.npz").write_bytes(bytes(data))
    elif name.startswith("cal_"):
        data = calibration(repo)
        if name == "cal_nodraft":
            data["fit"]["draft"] = None
        elif name == "cal_zero":
            data["fit"]["verify"] = _zero_floats(data["fit"]["verify"])
            data["fit"]["draft"] = _zero_floats(data["fit"]["draft"])
            data["overhead"] = _zero_floats(data["overhead"])
        elif name == "cal_nan":
            data["overhead"]["step_s"] = float("nan")
        text = json.dumps(data) if name != "cal_bad" else "{not json"
        (scratch / f"{name[4:]}.json").write_text(text)
    elif name.startswith("log_"):
        values = {"log_big": [1, 99999999999], "log_bool": [1, True, 2]}.get(name)
        text = "" if values is None else json.dumps({"id": 1, "prompt_token_ids": [1], "acc_eagle": {"acc_len": values}})
        (scratch / f"{name[4:]}.jsonl").write_text(text)
    elif name == "bad_gguf":
        (scratch / "m").mkdir()
        (scratch / "m" / "t.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 20)
        (scratch / "p.jsonl").write_text(json.dumps({"question_id": 1, "turns": ["hi"]}) + "\n")
    elif name == "latin_prompts":
        (scratch / "latin.jsonl").write_bytes(b'{"question_id": 1, "turns": ["caf\xe9"]}\n')
    elif name == "bad_config":
        (scratch / "hf").mkdir()
        (scratch / "hf" / "config.json").write_text("{broken")
        (scratch / "p.jsonl").write_text(json.dumps({"question_id": 1, "turns": ["hi"]}) + "\n")
    else:
        raise ValueError(f"unknown preparation {kind}")


def make_small_traces(repo: Path, folder: Path) -> tuple[Path, Path]:
    """A small valid trace and a 0-request one, written by the checkout's own writer (the before
    checkout's validator accepts an empty trace; the after one refuses it, so it is built by hand)."""
    import numpy as np

    code = textwrap.dedent(f"""
        import numpy as np
        from echo_sim.testing import random_trace
        from echo_sim.traces.format import write_trace
        write_trace(random_trace(np.random.default_rng(5), num_requests=3, output_len=(6, 9), width=2, depth=3),
                    {str(folder / 'small.trace.npz')!r})
    """)
    subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(repo)), check=True)
    small = folder / "small.trace.npz"
    with np.load(small) as archive:
        members = {k: archive[k] for k in archive.files}
    empty = {k: (v[:1] if k.endswith("offsets") else v[:0]) for k, v in members.items() if k != "header"}
    for key in ("position_offsets", "node_offsets"):
        empty[key] = np.zeros(1, dtype=members[key].dtype)
    np.savez_compressed(folder / "zero.trace.npz", header=members["header"], **empty)
    return small, folder / "zero.trace.npz"


ZERO_TRACE: Path


# ------------------------------------------------------------------------------------- running


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_LIMIT, ADDRESS_LIMIT))


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def run_case(case: Case, repo: Path, small_trace: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="bad-input-") as tmp:
        scratch = Path(tmp)
        if case.prepare:
            prepare(case.prepare, scratch, repo, small_trace)
        before = files_under(scratch)
        argv = [a.format(trace=shipped_trace(repo), dir=scratch) for a in case.argv]
        env = dict(os.environ, PYTHONPATH=str(repo), ECHO_MODEL_DIR=str(scratch / "no-models"))
        started = time.monotonic()
        try:
            done = subprocess.run([sys.executable, *argv], cwd=scratch, env=env, capture_output=True, text=True,
                                  timeout=CASE_TIMEOUT_S, preexec_fn=_limit_memory if case.memory_limit else None)
            code, err = done.returncode, done.stderr
        except subprocess.TimeoutExpired as error:
            code, err = None, (error.stderr or b"").decode(errors="replace") if isinstance(error.stderr, bytes) else ""
        seconds = time.monotonic() - started
        written = sorted(files_under(scratch) - before)
    for prog in ("echo-sim: error:", "echo-run: error:"):  # an error printed right after a progress bar
        err = err.replace(prog, "\n" + prog)
    lines = [line for line in err.replace("\r", "\n").splitlines()
             if line.strip() and not line.lstrip().startswith(("sweep:", "serve", "calibrat", "note:", "resuming", "live ", "validate:",
                                                        "warning:"))
             and "it/s]" not in line and "point/s]" not in line]
    if code is None:
        verdict = "hang"
    elif "Traceback (most recent call last)" in err:
        verdict = "traceback"
    elif case.must_run:
        verdict = "accepted" if code == 0 else ("clean" if len(lines) == 1 else "traceback")
    elif code == 0:
        verdict = "accepted"
    elif written:
        verdict = "partial"
    elif len(lines) == 1:
        verdict = "clean"
    else:
        verdict = "traceback"  # several lines of error output without a traceback: not one clean line
    last = lines[-1] if lines else ""
    return {"group": case.group, "name": case.name, "verdict": verdict, "exit": code, "seconds": round(seconds, 1),
            "written": written[:5], "message": last[:240]}


FUZZ_CODE = textwrap.dedent("""
    import json, random, sys, collections
    from pathlib import Path
    kind, source, count, folder = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    rng = random.Random(15)
    outcome = collections.Counter()
    if kind == "trace":
        from echo_sim.traces.format import read_trace, TraceError as Named
        blob = source.read_bytes()
        def variant(i):
            data = bytearray(blob)
            for _ in range(rng.randint(1, 6)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            if rng.random() < 0.2:
                data = data[: rng.randrange(len(data))]
            path = folder / f"v{i}.trace.npz"
            path.write_bytes(bytes(data))
            return lambda: read_trace(path)
    elif kind == "calibration":
        from echo_sim.cost.calibration_file import calibration_from_dict
        from echo_sim.cost.presets import CostModelError as Named
        base = json.loads(source.read_text())
        leaves = [None, True, False, 0, -1, 1.5, float("nan"), float("inf"), "", "x", [], {}, 2**70]
        def variant(i):
            data = json.loads(json.dumps(base))
            node = data
            while True:
                keys = list(node) if isinstance(node, dict) else list(range(len(node)))
                if not keys:
                    break
                key = rng.choice(keys)
                if isinstance(node[key], (dict, list)) and node[key] and rng.random() < 0.7:
                    node = node[key]
                    continue
                node[key] = rng.choice(leaves)
                break
            return lambda: calibration_from_dict(data, "fuzz.json")
    else:
        from echo_sim.workload import WORKLOAD_FILES, read_workload, WorkloadError as Named
        spec = WORKLOAD_FILES["sharegpt"]
        pieces = [spec.prompt_column, spec.output_column, ",", "\\n", "1", "0", "-3", "nan", "1e99", "x", '"',
                  "\\xff", "\\x00", " "]
        def variant(i):
            sub = folder / f"w{i}"
            sub.mkdir()
            text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
            if rng.random() < 0.5:
                text = f"{spec.prompt_column},{spec.output_column}\\n" + text
            (sub / spec.file).write_bytes(text.encode("utf-8", "surrogateescape") if rng.random() < 0.8
                                          else text.encode("utf-16"))
            return lambda: read_workload("sharegpt", sub)
    for i in range(count):
        call = variant(i)
        try:
            call()
            outcome["accepted"] += 1
        except Named:
            outcome["clean"] += 1
        except Exception as error:
            outcome["traceback"] += 1
            outcome["kinds:" + type(error).__name__] += 1
    print(json.dumps(outcome))
""")

FUZZ = (("trace", 400), ("calibration", 400), ("workload", 400))


def run_fuzz(repo: Path, small_trace: Path) -> list[dict]:
    rows = []
    for kind, count in FUZZ:
        source = {"trace": small_trace, "calibration": repo / "traces" / "calibration" / "cpu-2core_qwen2.5-coder-1.5b.json",
                  "workload": small_trace}[kind]
        with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
            done = subprocess.run([sys.executable, "-c", FUZZ_CODE, kind, str(source), str(count), tmp],
                                  env=dict(os.environ, PYTHONPATH=str(repo)), capture_output=True, text=True,
                                  timeout=600, preexec_fn=_limit_memory)
        if done.returncode != 0:
            raise RuntimeError(f"fuzz {kind} crashed: {done.stderr[-2000:]}")
        outcome = json.loads(done.stdout.strip().splitlines()[-1])
        kinds = {k[6:]: v for k, v in outcome.items() if k.startswith("kinds:")}
        rows.append({"group": f"fuzz: {kind} reader (in process)", "cases": count,
                     "clean": outcome.get("clean", 0), "traceback": outcome.get("traceback", 0),
                     "accepted": outcome.get("accepted", 0), "kinds": kinds})
    return rows


def catalogue(repo: Path, only: str | None = None) -> dict:
    global ZERO_TRACE
    with tempfile.TemporaryDirectory(prefix="bad-input-traces-") as tmp:
        small, ZERO_TRACE = make_small_traces(repo, Path(tmp))
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        cases = []
        for case in CASES:
            if only and only not in case.group:
                continue
            cases.append(run_case(case, repo, small))
            print(f"  [{commit}] {case.group}: {case.name}: {cases[-1]['verdict']}", file=sys.stderr)
        fuzz = [] if only else run_fuzz(repo, small)
    return {"repo": str(repo), "commit": commit, "cases": cases, "fuzz": fuzz}


# ------------------------------------------------------------------------------------- report

VERDICTS = ("clean", "traceback", "partial", "accepted", "hang")


def summary_rows(result: dict) -> list[tuple]:
    groups: dict[str, dict] = {}
    for case in result["cases"]:
        counts = groups.setdefault(case["group"], {v: 0 for v in VERDICTS} | {"cases": 0})
        counts["cases"] += 1
        counts[case["verdict"]] += 1
    rows = [(g, c["cases"], c["clean"], c["traceback"], c["partial"], c["accepted"], c["hang"]) for g, c in groups.items()]
    rows += [(f["group"], f["cases"], f["clean"], f["traceback"], 0, f["accepted"], 0) for f in result["fuzz"]]
    return rows


def markdown(results: dict[str, dict], command: str) -> str:
    out = ["# Bad inputs: catalogue (issue 15)", "",
           f"Command: `{command}`  ", f"Machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; "
           "memory-hungry cases under RLIMIT_AS = 4 GiB.", "",
           "Verdicts: **clean** = non-zero exit, one stderr line, nothing written; **traceback** = a Python "
           "traceback (or several error lines); **partial** = an error exit that left files behind; "
           "**accepted** = exit 0 (for bad input: silently accepted; in the *must run* group: the right answer); "
           "**hang** = killed at the time limit. Fuzz rows: mutated files fed to one reader in process "
           "(clean = its named error).", ""]
    header = "| group | cases | clean | tracebacks | partial writes | accepted | hang |"
    for label, result in results.items():
        out += [f"## {label} ({result['commit']})", "", header, "|" + "---|" * 7]
        totals = [0] * 6
        for row in summary_rows(result):
            out.append("| " + " | ".join(map(str, row)) + " |")
            totals = [t + v for t, v in zip(totals, row[1:])]
        out.append("| **all** | " + " | ".join(f"**{t}**" for t in totals) + " |")
        kinds = {k: v for f in result["fuzz"] for k, v in f["kinds"].items()}
        if kinds:
            out.append("")
            out.append("Fuzz exceptions other than the named error: " +
                       ", ".join(f"{k} ×{v}" for k, v in sorted(kinds.items())))
        out.append("")
    out += ["## Per case", "", "| group | case | " + " | ".join(results) + " | message (" + list(results)[-1] + ") |",
            "|" + "---|" * (3 + len(results))]
    first = next(iter(results.values()))
    for i, case in enumerate(first["cases"]):
        verdicts = [r["cases"][i]["verdict"] for r in results.values()]
        message = list(results.values())[-1]["cases"][i]["message"].replace("|", "\\|")
        out.append(f"| {case['group']} | {case['name']} | " + " | ".join(verdicts) + f" | {message} |")
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, help="another checkout to compare with (e.g. a worktree of 17f63f9)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/bad_inputs.md"),
                        help="markdown table; the raw results go next to it as .json (default: %(default)s)")
    parser.add_argument("--only", help="run only the case groups whose name contains this (a quick check)")
    args = parser.parse_args()
    results = {}
    if args.before:
        results["before"] = catalogue(args.before.resolve(), args.only)
    results["after"] = catalogue(HERE, args.only)
    command = "python benchmarks/bad_inputs.py" + (f" --before <worktree of {results['before']['commit']}>"
                                                    if args.before else "")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    args.out.write_text(markdown(results, command))
    print(markdown(results, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
