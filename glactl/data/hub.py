"""Hugging Face datasets: loaded from the Hub or its cache (failing fast offline), their text splits encoded."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from glactl.data.local import Progress, _SplitWriter
from glactl.errors import InputError

SPLITS = ("train", "validation", "test")


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
