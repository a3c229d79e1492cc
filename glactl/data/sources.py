"""`--data` sources: what a value names, and its text encoded once (a streaming byte copy) into
`$GLACTL_CACHE/data/<name>-<key>/{train,validation,test}.bin` plus `meta.json`, reused after."""

from __future__ import annotations

import glob as globlib
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from glactl.data.hub import _encode_hf
from glactl.data.local import Progress, _encode_local
from glactl.errors import InputError
from glactl.runtime.cache import cache_root

WIKITEXT = {"wikitext-103": "wikitext-103-raw-v1", "wikitext-2": "wikitext-2-raw-v1"}
WIKITEXT_REPO = "Salesforce/wikitext"
TEXT_SUFFIXES = (".txt", ".text", ".md", ".raw", ".gz", ".tokens", ".csv", ".json", ".jsonl")
CACHE_VERSION = 1


# ---- source specs ------------------------------------------------------------------------
@dataclass
class SourceSpec:
    """One `--data` value: what to read and its sampling weight (None = proportional to size)."""

    text: str
    weight: float | None = None

    @classmethod
    def parse(cls, value: str) -> SourceSpec:
        """`SOURCE` or `SOURCE@WEIGHT` (the weight a positive number)."""
        value = value.strip()
        if not value:
            raise InputError("--data: empty value")
        if "@" in value:
            head, tail = value.rsplit("@", 1)
            try:
                weight = float(tail)
            except ValueError:
                if (
                    head
                    and not Path(value).expanduser().exists()
                    and (Path(head).expanduser().exists() or head in WIKITEXT or head.startswith("hf:"))
                ):
                    raise InputError(
                        f"--data {value!r}: the weight {tail!r} is not a number (SOURCE@WEIGHT, e.g. {head}@2)"
                    ) from None
                return cls(value)  # an '@' that is part of a path
            if not head:
                raise InputError(f"--data {value!r}: missing source before '@'")
            if not math.isfinite(weight) or weight <= 0:
                raise InputError(f"--data {value!r}: the weight must be a positive number")
            return cls(head, weight)
        return cls(value)


# ---- prepared (encoded) sources ----------------------------------------------------------
@dataclass
class PreparedSource:
    """An encoded source in the cache: one uint8 file per split it has."""

    name: str
    folder: Path
    meta: dict[str, Any]
    reused: bool = False

    @property
    def splits(self) -> dict[str, int]:
        return dict(self.meta["splits"])

    def array(self, split: str) -> np.ndarray:
        """The split's tokens as a read-only memmap (empty array for an empty split)."""
        size = self.meta["splits"].get(split, 0)
        if size == 0:
            return np.zeros(0, dtype=np.uint8)
        return np.memmap(self.folder / f"{split}.bin", dtype=np.uint8, mode="r", shape=(size,))


def split_bytes(source: PreparedSource, split: str) -> bytes:
    """A whole split as bytes (for evaluation and tests; training reads windows instead)."""
    return source.array(split).tobytes()


def _slug(text: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "-" for c in Path(text.rstrip("/")).name or text)
    return keep.strip("-.")[:40] or "data"


def _hash(document: Any) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:16]


def prepare_source(spec: str, progress: Progress | None = None, allow_binary: bool = False) -> PreparedSource:
    """Encode a source into the cache once (or reuse it) and return where it lives.

    `spec` is `wikitext-103`, `wikitext-2`, `hf:REPO[:CONFIG]`, a file, a glob, a folder of
    text files, or a Hugging Face-layout folder as `PATH:CONFIG`.
    """
    kind, detail = _classify(spec)
    if kind == "local":
        files = detail["files"]
        key = _hash(
            {
                "v": CACHE_VERSION,
                "kind": "local",
                "binary": allow_binary,
                "files": [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files],
            }
        )
        writer = lambda folder: _encode_local(files, folder, progress, allow_binary)  # noqa: E731
    else:
        key = _hash({"v": CACHE_VERSION, "kind": kind, "path": detail["path"], "config": detail.get("config")})
        detail["spec"] = spec
        writer = lambda folder: _encode_hf(detail, folder, progress)  # noqa: E731
    folder = cache_root() / "data" / f"{_slug(detail.get('label', spec))}-{key}"
    meta_path = folder / "meta.json"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            if _cache_intact(folder, meta):
                return PreparedSource(spec, folder, meta, reused=True)
        except (OSError, ValueError):
            pass
    staging = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        splits, hashes, stats = writer(staging)
        meta = {
            "cache_version": CACHE_VERSION,
            "source": spec,
            "kind": kind,
            "splits": splits,
            "sha256": hashes,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **stats,
        }
        (staging / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return PreparedSource(spec, folder, meta)


def _cache_intact(folder: Path, meta: dict[str, Any]) -> bool:
    """Every split file the meta names is there with its size."""
    splits = meta.get("splits")
    if not isinstance(splits, dict) or meta.get("cache_version") != CACHE_VERSION:
        return False
    for split, size in splits.items():
        if size and (not (folder / f"{split}.bin").is_file() or (folder / f"{split}.bin").stat().st_size != size):
            return False
    return True


def _classify(spec: str) -> tuple[str, dict[str, Any]]:
    """Which kind of source a `--data` string names, with what is needed to read it."""
    if spec in WIKITEXT:
        return "hf", {"path": WIKITEXT_REPO, "config": WIKITEXT[spec], "label": spec}
    if spec.startswith("hf:"):
        rest = spec[3:]
        repo, _, config = rest.partition(":")
        if not repo:
            raise InputError(f"--data {spec!r}: expected hf:REPO[:CONFIG]")
        return "hf", {
            "path": repo,
            "config": config or None,
            "label": repo.replace("/", "-") + (f"-{config}" if config else ""),
        }
    path = Path(spec).expanduser()
    if not path.exists() and ":" in spec:
        base, _, config = spec.rpartition(":")
        base_path = Path(base).expanduser()
        if base_path.is_dir() and config:
            return "hf", {"path": str(base_path.resolve()), "config": config, "label": f"{base_path.name}-{config}"}
    if path.is_dir() and _looks_like_hf(path):
        return "hf", {"path": str(path.resolve()), "config": None, "label": path.name}
    return "local", {"files": local_files(spec), "label": spec}


def _looks_like_hf(path: Path) -> bool:
    """A folder in the Hugging Face layout: parquet/arrow files below it."""
    return any(path.glob("*.parquet")) or any(path.glob("*/*.parquet")) or any(path.glob("data/*.parquet"))


def local_files(spec: str) -> list[Path]:
    """The files a local `--data` names: a file, a folder of text files, or a glob; InputError if none."""
    path = Path(spec).expanduser()
    if path.is_file():
        return [path.resolve()]
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not p.name.startswith(".") and (p.suffix.lower() in TEXT_SUFFIXES or not p.suffix)
        )
        if not files:
            raise InputError(f"--data {spec}: the folder holds no text files (.txt, .gz, ...)")
        return [p.resolve() for p in files]
    if any(c in spec for c in "*?["):
        files = sorted(
            Path(p).resolve() for p in globlib.glob(os.path.expanduser(spec), recursive=True) if Path(p).is_file()
        )
        if not files:
            raise InputError(f"--data {spec}: the pattern matches no files")
        return files
    if path.exists():  # a FIFO, a pipe such as /dev/stdin, a device: training reads its data more than once
        raise InputError(f"--data {spec}: not a regular file (a pipe or device); save the text to a file and pass that")
    hint = ""
    if ":" not in spec and "/" not in spec and "." not in spec:
        hint = f" (known dataset names: {', '.join(WIKITEXT)}, or hf:REPO[:CONFIG])"
    raise InputError(f"--data {spec}: no such file or folder{hint}")
