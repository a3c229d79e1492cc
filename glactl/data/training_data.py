"""Training data: sources (local text, Hugging Face datasets) encoded once to uint8 files, read as windows.

Text is byte-level (the tokenizer is UTF-8 bytes), so encoding is a streaming copy into
`$GLACTL_CACHE/data/<name>-<key>/{train,validation,test}.bin` plus `meta.json`. Batches are
random windows read through `numpy.memmap`, chosen by a pure function of (seed, step), so a
resumed run draws the same windows and data-parallel ranks can split a step's windows.
This module knows nothing about models.
"""

from __future__ import annotations

import codecs
import glob as globlib
import gzip
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glactl.errors import InputError

SPLITS = ("train", "validation", "test")
WIKITEXT = {"wikitext-103": "wikitext-103-raw-v1", "wikitext-2": "wikitext-2-raw-v1"}
WIKITEXT_REPO = "Salesforce/wikitext"
TEXT_SUFFIXES = (".txt", ".text", ".md", ".raw", ".gz", ".tokens", ".csv", ".json", ".jsonl")
BINARY_LIMIT = 0.30
VALID_FRACTION = 0.01
CHUNK_BYTES = 8 << 20
CACHE_VERSION = 1

Progress = Callable[[str, int, int | None], None]  # (description, bytes done, total or None)


def cache_root() -> Path:
    """Where encoded data lives: $GLACTL_CACHE or ~/.cache/glactl."""
    return Path(os.environ.get("GLACTL_CACHE") or Path.home() / ".cache" / "glactl")


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


# ---- encoding --------------------------------------------------------------------------
class _SplitWriter:
    """Append bytes to one split file, hashing and counting as it goes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = open(path, "wb")
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        if data:
            self.file.write(data)
            self.sha.update(data)
            self.size += len(data)

    def close(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        if self.size == 0:
            self.path.unlink()


def _open_bytes(path: Path) -> Any:
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rb")
    return open(path, "rb")


def _encode_local(
    files: list[Path], folder: Path, progress: Progress | None, allow_binary: bool
) -> tuple[dict, dict, dict]:
    """Copy local text files (gz decompressed) into train.bin, checking that they are text."""
    total = sum(f.stat().st_size for f in files)
    writer = _SplitWriter(folder / "train.bin")
    done = 0
    try:
        for path in files:
            counter = _TextCounter()
            last = b""
            try:
                with _open_bytes(path) as f:
                    _refuse_binary_start(path, f, allow_binary)  # before a byte goes into the cache
                    while chunk := f.read(CHUNK_BYTES):
                        counter.feed(chunk)
                        writer.write(chunk)
                        last = chunk[-1:]
                        done += len(chunk) if path.suffix.lower() != ".gz" else 0
                        if progress:
                            progress(f"encoding {path.name}", min(done, total), total)
            except (OSError, EOFError, gzip.BadGzipFile) as e:
                raise InputError(f"--data {path}: unreadable ({type(e).__name__}: {str(e)[:80]})") from None
            if path.suffix.lower() == ".gz":
                done += path.stat().st_size
            counter.finish()
            if counter.total == 0:
                raise InputError(f"--data {path}: the file is empty")
            if counter.binary_fraction > BINARY_LIMIT and not allow_binary:
                raise InputError(
                    f"--data {path}: looks binary ({100 * counter.binary_fraction:.0f}% of bytes are NUL or not UTF-8); "
                    "pass --allow-binary to train on it anyway"
                )
            if len(files) > 1 and last != b"\n":
                writer.write(b"\n")
    finally:
        writer.close()
    return {"train": writer.size}, {"train": writer.sha.hexdigest()}, {"files": [str(f) for f in files]}


SNIFF_BYTES = 64 << 10


def _refuse_binary_start(path: Path, f: Any, allow_binary: bool) -> None:
    """Refuse a file whose first 64 KiB look binary before encoding any of it (the whole file is checked after)."""
    if allow_binary:
        return
    head = f.read(SNIFF_BYTES)
    f.seek(0)
    counter = _TextCounter()
    counter.feed(head)
    if len(head) < SNIFF_BYTES:
        counter.finish()
    if counter.binary_fraction > BINARY_LIMIT:
        raise InputError(
            f"--data {path}: looks binary ({100 * counter.binary_fraction:.0f}% of its first bytes are NUL "
            "or not UTF-8); pass --allow-binary to train on it anyway"
        )


class _TextCounter:
    """Counts bytes that are NUL or not valid UTF-8, streaming."""

    def __init__(self) -> None:
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
        self.total = 0
        self.valid = 0
        self.nul = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self.nul += chunk.count(b"\0")
        self.valid += len(self.decoder.decode(chunk).encode("utf-8", "ignore"))

    def finish(self) -> None:
        self.valid += len(self.decoder.decode(b"", final=True).encode("utf-8", "ignore"))

    @property
    def binary_fraction(self) -> float:
        return (self.total - self.valid + self.nul) / self.total if self.total else 0.0


def join_rows(rows: Iterable[str]) -> Iterator[bytes]:
    """Rows of a text column as bytes: a row keeps its newline (one is added if missing), an empty row is " \\n".

    This reproduces the original WikiText `wiki.*.raw` files byte for byte from the HF rows.
    """
    for row in rows:
        if not row:
            yield b" \n"
        else:
            data = row.encode("utf-8")
            yield data if data.endswith(b"\n") else data + b"\n"


class DatasetUnavailable(InputError):
    """A Hugging Face dataset that cannot be had here (no network and not cached): one line; `reason` without advice."""

    def __init__(self, label: str, reason: str, advice: str = "use --data PATH to train on local text") -> None:
        self.label, self.reason = label, reason
        super().__init__(f"--data {label}: cannot load the dataset: {reason}; {advice}")


def network_reachable(timeout: float = 1.5) -> bool:
    """Whether the Hugging Face Hub answers a TCP connection (fails in milliseconds without a network)."""
    import socket
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _go_offline(datasets: Any) -> None:
    """Hugging Face's offline mode, so datasets reads its cache instead of retrying the network for half a minute."""
    try:
        import huggingface_hub.constants as hub

        hub.HF_HUB_OFFLINE = True
        datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
    except (ImportError, AttributeError):  # pragma: no cover - other versions read the environment
        pass


def _load_hf(path: str, config: str | None, spec: str) -> Any:
    """datasets.load_dataset with offline failures turned into one line naming `--data PATH`."""
    remote = not Path(path).expanduser().exists()
    offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
    no_network = remote and not offline and not network_reachable()
    if no_network:  # fail fast from the cache, not after half a minute of HF's retries
        os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
        offline = True
    try:
        import datasets
    except ImportError:  # pragma: no cover - a dependency
        raise InputError("the 'datasets' package is needed for Hugging Face data; or use --data PATH") from None
    try:
        datasets.logging.set_verbosity_error()
        datasets.disable_progress_bars()
    except AttributeError:  # pragma: no cover - older datasets
        pass
    label = spec if spec == path else f"{spec} ({path}" + (f", config {config})" if config else ")")
    if no_network:
        _go_offline(datasets)  # datasets may have been imported before: set its flags too
    kwargs: dict[str, Any] = {}
    if os.environ.get("HF_DATASETS_CACHE"):
        kwargs["cache_dir"] = os.environ["HF_DATASETS_CACHE"]  # honoured even if set after datasets was imported
    try:
        return datasets.load_dataset(path, config, **kwargs) if config else datasets.load_dataset(path, **kwargs)
    except KeyboardInterrupt:
        raise
    except ValueError as e:
        message = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        if "config" in message.lower():
            raise InputError(f"--data {label}: {message}") from None
        raise InputError(
            f"--data {label}: cannot load the dataset ({message}); use --data PATH to train on local text"
        ) from None
    except Exception as e:  # noqa: BLE001 - datasets raises many types for missing network/cache
        if not remote:
            detail = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
            raise InputError(f"--data {label}: cannot load the dataset ({type(e).__name__}: {detail})") from None
        why = (
            "no network (offline mode) and not in the datasets cache"
            if offline
            else "not reachable and not in the datasets cache"
        )
        raise DatasetUnavailable(label, why) from None


def _encode_hf(detail: dict[str, Any], folder: Path, progress: Progress | None) -> tuple[dict, dict, dict]:
    """Write each split of a Hugging Face dataset with a `text` column, rows joined by join_rows."""
    dataset = _load_hf(detail["path"], detail.get("config"), detail.get("spec", detail["path"]))
    if not hasattr(dataset, "keys"):
        dataset = {"train": dataset}
    sizes: dict[str, int] = {}
    hashes: dict[str, str] = {}
    found = [s for s in dataset.keys()]
    for split in found:
        name = {"valid": "validation", "dev": "validation"}.get(split, split)
        if name not in SPLITS:
            continue
        part = dataset[split]
        if "text" not in part.column_names:
            raise InputError(
                f"--data {detail['label']}: split {split!r} has no 'text' column (columns: {', '.join(part.column_names)})"
            )
        writer = _SplitWriter(folder / f"{name}.bin")
        try:
            n = len(part)
            for start in range(0, n, 10_000):
                rows = part[start : start + 10_000]["text"]
                writer.write(b"".join(join_rows(rows)))
                if progress:
                    progress(f"encoding {detail['label']} {name}", min(start + 10_000, n), n)
        finally:
            writer.close()
        sizes[name] = writer.size
        hashes[name] = writer.sha.hexdigest()
    if not any(sizes.values()):
        raise InputError(f"--data {detail['label']}: the dataset holds no text (splits: {', '.join(found)})")
    return sizes, hashes, {"hf_path": detail["path"], "hf_config": detail.get("config")}


def split_bytes(source: PreparedSource, split: str) -> bytes:
    """A whole split as bytes (for evaluation and tests; training reads windows instead)."""
    return source.array(split).tobytes()


# ---- windows ---------------------------------------------------------------------------
@dataclass
class Stream:
    """A token array plus the label used in messages."""

    label: str
    tokens: np.ndarray

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def step_generator(seed: int, step: int, salt: str = "batch") -> torch.Generator:
    """A generator seeded from (seed, step): batches are a pure function of both."""
    digest = hashlib.sha256(f"{salt}:{seed}:{step}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


@dataclass
class WindowSampler:
    """Random training windows of `seq_len + 1` bytes from weighted streams."""

    streams: list[Stream]
    weights: list[float]
    seq_len: int
    seed: int
    _probs: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        window = self.seq_len + 1
        for stream in self.streams:
            if len(stream) < window:
                raise InputError(
                    f"--data {stream.label}: {len(stream)} training bytes, shorter than one window "
                    f"of {window} (--seq-len {self.seq_len} + 1)"
                )
        total = sum(self.weights)
        self._probs = torch.tensor([w / total for w in self.weights], dtype=torch.float64)

    def windows(self, step: int, count: int) -> list[tuple[int, int]]:
        """The (stream, offset) pairs of a step: deterministic in (seed, step)."""
        g = step_generator(self.seed, step)
        if len(self.streams) == 1:
            which = torch.zeros(count, dtype=torch.long)
        else:
            which = torch.multinomial(self._probs, count, replacement=True, generator=g)
        u = torch.rand(count, generator=g, dtype=torch.float64)
        out = []
        for s, x in zip(which.tolist(), u.tolist()):
            span = len(self.streams[s]) - self.seq_len  # number of valid start offsets
            out.append((s, min(int(x * span), span - 1)))
        return out

    def batch(self, step: int, count: int, rank: int = 0, world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets [count, seq_len] for this rank: rank r takes windows r, r+world, ... of the step."""
        chosen = self.windows(step, count * world)[rank::world]
        return self.gather(chosen)

    def gather(self, chosen: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets [len(chosen), seq_len] for the given (stream, offset) windows."""
        return _gather(self.streams, chosen, self.seq_len)


def _gather(streams: list[Stream], chosen: list[tuple[int, int]], seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = np.stack([np.asarray(streams[s].tokens[o : o + seq_len + 1]) for s, o in chosen])
    data = torch.from_numpy(rows.astype(np.int64))
    return data[:, :-1], data[:, 1:]


def fixed_windows(streams: list[Stream], weights: list[float], count: int, seq_len: int) -> list[tuple[int, int]]:
    """Evaluation windows: evenly spaced, the same every time; shared among streams by weight (>= 1 each)."""
    window = seq_len + 1
    usable = [i for i, s in enumerate(streams) if len(s) >= window]
    if not usable:
        longest = max(len(s) for s in streams) if streams else 0
        raise InputError(
            f"validation data has {longest} bytes, shorter than one window of {window} (--seq-len {seq_len} + 1)"
        )
    total = sum(weights[i] for i in usable)
    shares = {i: max(1, round(count * weights[i] / total)) for i in usable}
    out = []
    for i, n in shares.items():
        span = len(streams[i]) - window
        n = min(n, span + 1)
        starts = np.linspace(0, span, n).round().astype(np.int64) if n > 1 else np.array([0])
        out.extend((i, int(o)) for o in starts)
    return out


def eval_batches(
    streams: list[Stream], chosen: list[tuple[int, int]], seq_len: int, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of fixed evaluation windows."""
    for start in range(0, len(chosen), batch_size):
        yield _gather(streams, chosen[start : start + batch_size], seq_len)


# ---- the training data of a run --------------------------------------------------------
@dataclass
class TrainingData:
    """Training streams with their weights and validation streams, ready for sampling."""

    sources: list[dict[str, Any]]
    train: list[Stream]
    weights: list[float]
    valid: list[Stream]
    valid_weights: list[float]
    messages: list[str]

    def fingerprint(self) -> dict[str, Any]:
        """What the data is, by content: each training source's sha256 and one over the validation text.

        A resumed run must train on the same data and keep scoring on the same validation text,
        or best/ would compare bits per byte measured on different texts.
        """
        valid = hashlib.sha256()
        for stream in self.valid:
            valid.update(len(stream).to_bytes(8, "little"))
            for start in range(0, len(stream), CHUNK_BYTES):
                valid.update(np.asarray(stream.tokens[start : start + CHUNK_BYTES]).tobytes())
        return {"train": {s["source"]: s.get("sha256") for s in self.sources}, "valid": valid.hexdigest()[:16]}


def load_training_data(
    data: list[str],
    valid: str | None,
    seq_len: int,
    progress: Progress | None = None,
    allow_binary: bool = False,
) -> TrainingData:
    """Prepare every `--data` source (and `--valid`), split by position where needed, weigh them."""
    if not data:
        raise InputError("--data is required (a text file, folder, glob, wikitext-103, wikitext-2 or hf:REPO)")
    window = seq_len + 1
    specs = [SourceSpec.parse(d) for d in data]
    train: list[Stream] = []
    valid_streams: list[Stream] = []
    weights: list[float | None] = []
    sources: list[dict[str, Any]] = []
    messages: list[str] = []
    for spec in specs:
        prepared = prepare_source(spec.text, progress, allow_binary)
        messages.append(
            f"{'reusing' if prepared.reused else 'encoded'} {spec.text} "
            f"({_human(sum(prepared.splits.values()))} in {prepared.folder})"
        )
        splits = prepared.splits
        if not splits.get("train"):
            raise InputError(
                f"--data {spec.text}: no train split (it has: {', '.join(s for s, n in splits.items() if n) or 'nothing'})"
            )
        tokens = prepared.array("train")
        if valid is None and (prepared.meta["kind"] == "local" or not splits.get("validation")):
            n = len(tokens)
            n_valid = max(math.ceil(n * VALID_FRACTION), window)
            if n - n_valid < window:
                raise InputError(
                    f"--data {spec.text}: {n} bytes, too short to split into training and validation "
                    f"windows of {window} bytes (--seq-len {seq_len} + 1); use a longer text or --valid FILE"
                )
            train.append(Stream(spec.text, tokens[: n - n_valid]))
            valid_streams.append(Stream(f"{spec.text} (last {n_valid} bytes)", tokens[n - n_valid :]))
        else:
            train.append(Stream(spec.text, tokens))
            if valid is None and splits.get("validation"):
                valid_streams.append(Stream(f"{spec.text} validation", prepared.array("validation")))
        weights.append(spec.weight)
        sources.append(
            {
                "source": spec.text,
                "weight": spec.weight,
                "train_bytes": len(train[-1]),
                "sha256": prepared.meta["sha256"].get("train"),
                "cache": str(prepared.folder),
            }
        )
    valid_weights: list[float] = [1.0] * len(valid_streams)
    if valid is not None:
        prepared = prepare_source(valid, progress, allow_binary)
        messages.append(f"{'reusing' if prepared.reused else 'encoded'} {valid} for validation")
        split = "validation" if prepared.meta["kind"] == "hf" and prepared.splits.get("validation") else "train"
        valid_streams = [Stream(valid, prepared.array(split))]
        valid_weights = [1.0]
    elif len(valid_streams) == len(train):
        valid_weights = [float(len(s)) for s in valid_streams]
    if not valid_streams:
        raise InputError("no validation data: the sources have no validation split; pass --valid FILE")
    for stream in valid_streams:
        if len(stream) < window:
            raise InputError(
                f"validation data {stream.label}: {len(stream)} bytes, shorter than one window of {window} "
                f"(--seq-len {seq_len} + 1)"
            )
    resolved = [float(w) if w is not None else float(len(s)) for w, s in zip(weights, train)]
    if any(w is not None for w in weights) and any(w is None for w in weights):
        # Mixed explicit and implicit weights: implicit ones are their share of the total size.
        total_size = sum(len(s) for s in train)
        resolved = [float(w) if w is not None else len(s) / total_size for w, s in zip(weights, train)]
    for source, w in zip(sources, resolved):
        source["weight"] = w
    return TrainingData(sources, train, resolved, valid_streams, valid_weights, messages)


class TextBatches:
    """Text as the training loop's batch source: random windows by (seed, step), fixed validation windows.

    Batches are (x, y, None): every position is scored (a task's source gives an answer mask instead).
    """

    def __init__(self, data: TrainingData, seq_len: int, seed: int, eval_count: int) -> None:
        self.data = data
        self.seq_len = seq_len
        self.sampler = WindowSampler(data.train, data.weights, seq_len, seed)
        self.eval_windows = fixed_windows(data.valid, data.valid_weights, eval_count, seq_len)

    def train_batch(self, step: int, count: int) -> tuple[torch.Tensor, torch.Tensor, None]:
        """The `count` windows of a step (deterministic in (seed, step)) as inputs and targets."""
        x, y = self.sampler.gather(self.sampler.windows(step, count))
        return x, y, None

    def eval_batches(self, rank: int, world: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, None]]:
        """This rank's share of the fixed validation windows (windows rank, rank + world, ...) in batches."""
        for x, y in eval_batches(self.data.valid, self.eval_windows[rank::world], self.seq_len, batch_size):
            yield x, y, None


def _human(n: int) -> str:
    """Sizes in glactl's one convention (KiB, MiB: powers of 1024)."""
    from glactl.report.display import human_bytes

    return human_bytes(n)
