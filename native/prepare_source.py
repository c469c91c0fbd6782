#!/usr/bin/env python3
"""Fetch the pinned llama.cpp tree and lay radar_gguf's native changes over it.

The source of truth is the llama-cpp-python 0.3.36 source distribution on the package
index: it vendors llama.cpp (ggml 0.25.3, upstream 0c1e570) and the matching Python
bindings. This script

  1. downloads it with pip into a cache (once), and checks its sha256,
  2. unpacks it into --out (a fresh copy per build directory),
  3. copies native/files/ over vendor/llama.cpp/ (whole new files: the Radar CPU and CUDA kernels),
  4. applies native/patches/*.patch in order (git format-patch series of edits to upstream files).

A wrong hash or a patch that does not apply stops with a message that says which.
Prints the path of the prepared tree on stdout (last line).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

SDIST_NAME = "llama_cpp_python-0.3.36.tar.gz"
SDIST_REQ = "llama-cpp-python==0.3.36"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
NATIVE = Path(__file__).resolve().parent


def die(msg: str) -> None:
    print(f"radar_gguf native: error: {msg}", file=sys.stderr)
    sys.exit(1)


def cache_dir() -> Path:
    root = os.environ.get("RADAR_GGUF_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "radar_gguf"
    )
    return Path(root) / "sdist"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_sdist() -> Path:
    """Return the verified sdist, downloading it with pip if it is not cached."""
    local = os.environ.get("RADAR_GGUF_SDIST")  # offline builds: point at a copy
    dest = cache_dir()
    path = Path(local) if local else dest / SDIST_NAME
    if not path.exists():
        if local:
            die(f"RADAR_GGUF_SDIST={local} does not exist")
        dest.mkdir(parents=True, exist_ok=True)
        print(f"-- radar_gguf: downloading {SDIST_REQ} source distribution with pip", file=sys.stderr)
        # --no-build-isolation: pip only needs the metadata; without it pip would try to
        # build cmake from source when asked for --no-binary.
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-python",
               "--no-build-isolation", SDIST_REQ, "-d", str(dest)]
        r = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr)
        if r.returncode != 0 or not path.exists():
            die(f"could not download {SDIST_REQ} with pip (command: {' '.join(cmd)})")
    got = sha256(path)
    if got != SDIST_SHA256:
        if not local:
            path.unlink()  # a corrupt download must not poison the next build
        die(f"{path}: sha256 {got} does not match the pin {SDIST_SHA256}; "
            "the download was corrupt or the file is not the pinned llama-cpp-python 0.3.36 "
            "(it was removed from the cache; run the build again)")
    return path


def unpack(sdist: Path, out: Path, pristine: bool = False) -> Path:
    root = out / "llama_cpp_python-0.3.36"
    stamp = out / ".prepared"
    want = "pristine" if pristine else stamp_text()
    if stamp.exists() and stamp.read_text() == want and root.exists():
        return root  # same sdist + same native/: keep the tree (and its mtimes) for incremental builds
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    with tarfile.open(sdist) as tf:
        tf.extractall(out, filter="data") if hasattr(tarfile, "data_filter") else tf.extractall(out)
    llama = root / "vendor" / "llama.cpp"
    if pristine:
        stamp.write_text(want)
        return root
    files = NATIVE / "files"
    for src in sorted(files.rglob("*")):
        if src.is_file():
            dst = llama / src.relative_to(files)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    # The vendored tree carries a `.git` file pointing at a submodule dir that the sdist lacks;
    # make it a repository of its own so `git apply` cannot resolve paths against an outer repo.
    (llama / ".git").unlink(missing_ok=True)
    git = ["git", "-c", "core.autocrlf=false"]
    subprocess.run(git + ["init", "-q"], cwd=llama, check=True)
    for patch in sorted((NATIVE / "patches").glob("*.patch")):
        r = subprocess.run(git + ["apply", "--whitespace=nowarn", "-p1", str(patch)],
                           cwd=llama, capture_output=True, text=True)
        if r.returncode != 0:
            shutil.rmtree(out)
            die(f"patch {patch.name} does not apply to the pinned tree:\n{r.stderr.strip()}")
    stamp.write_text(want)
    return root


def stamp_text() -> str:
    """Identity of native/: the build re-prepares the tree when any patch or file changes."""
    h = hashlib.sha256(SDIST_SHA256.encode())
    for p in sorted(list((NATIVE / "patches").glob("*.patch")) + [f for f in (NATIVE / "files").rglob("*") if f.is_file()]):
        h.update(str(p.relative_to(NATIVE)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="directory to prepare the tree in")
    ap.add_argument("--pristine", action="store_true", help="unpack only: no native/ files or patches")
    args = ap.parse_args()
    root = unpack(fetch_sdist(), args.out.resolve(), pristine=args.pristine)
    print(root)


if __name__ == "__main__":
    main()
