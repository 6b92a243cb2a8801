"""Run folders, atomic writes, array caches, file fingerprints and hashes, Hugging Face hub access, progress bars,
seeding, plots and the printed summary."""
import errno
import hashlib
import json
import os
import random
import socket
import time
import uuid
from datetime import timedelta
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure  # pyplot-free: writes files on a server, leaves a notebook's backend alone
from tqdm import tqdm

from errors import CorpusError, FlagError, PretrainedError, StorageError, load_json

SUMMARY_METRICS = ["instance_precision", "instance_recall", "instance_f1", "accuracy", "ua", "macro_f1",
                   "weighted_f1", "ccc_arousal", "ccc_valence"]


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_states() -> dict:
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = numpy_state["state"]["key"].tolist()  # plain types: loadable with weights_only
    return {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    numpy_state = states["numpy"]
    numpy_state["state"]["key"] = np.asarray(numpy_state["state"]["key"], dtype=np.uint32)
    np.random.set_state(numpy_state)
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def check_save_path(save_path: str) -> None:
    """One-line error now, not after preprocessing, if run folders cannot be created under `save_path`."""
    root = Path(save_path)
    existing = next(p for p in [root, *root.parents] if p.exists())
    if not existing.is_dir():
        raise FlagError(f"--save_path {root}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise FlagError(f"--save_path {root}: {existing} is not writable")


def make_run_dir(save_path: str, name: str) -> Path:
    """A new folder save_path/name_<time>[-k]; never an existing one."""
    root = Path(save_path)
    check_save_path(save_path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    try:
        root.mkdir(parents=True, exist_ok=True)
        for k in range(1000):
            run_dir = root / (f"{name}_{stamp}" + (f"-{k}" if k else ""))
            try:
                run_dir.mkdir()
                return run_dir
            except FileExistsError:
                continue
    except OSError as error:
        raise StorageError(f"cannot create a run folder in --save_path {root}: {error.strerror}") from None
    raise StorageError(f"could not create a new run folder under {root}")


def open_run_dir(run_dir: Path | None, save_path: str, name: str) -> Path:
    """The folder a run writes into: `run_dir` (an interrupted run's, or an experiment's planned run, made only now,
    once the run's checks have passed, so that a refused start leaves no folder), or a new one (`make_run_dir`)."""
    if run_dir is None:
        return make_run_dir(save_path, name)
    try:
        Path(run_dir).mkdir(exist_ok=True)
    except OSError as error:
        raise StorageError(f"cannot create the run folder {run_dir}: {error.strerror}") from None
    return Path(run_dir)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary name in the same folder; rename it to `path` once written. A process killed
    at any moment leaves the previous `path` intact and loadable."""
    path = Path(path)
    # Unique per process and call: two processes writing the same output never share a temporary file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)  # never left behind, whatever failed (e.g. `path` is a folder)
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            raise StorageError(f"disk full while writing {path}; the previous {path.name}, if any, is intact. "
                               "Free space and run the same command again (or --resume the run)") from None
        raise


def save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def read_json(path: Path) -> dict:
    """A cache record's object; {} where the file does not exist; CorpusError where it is damaged."""
    return load_json(path, CorpusError) if Path(path).exists() else {}


def cached_meta(npy_path: Path, meta_path: Path, wanted: dict) -> dict | None:
    """The index (`meta_path`, JSON) of an array cache (`npy_path`) when both files exist and the index records the
    values of `wanted` (what the cache was made from: sources, settings, versions); None when it must be rebuilt."""
    if not (Path(npy_path).exists() and Path(meta_path).exists()):
        return None
    meta = read_json(meta_path)
    return meta if all(meta.get(k) == v for k, v in wanted.items()) else None


def write_array_cache(npy_path: Path, meta_path: Path, array: np.ndarray, meta: dict) -> None:
    """An array cache and its JSON index (what `cached_meta` checks), each written atomically, the array first: an
    index never describes an array that is not there."""
    Path(npy_path).parent.mkdir(parents=True, exist_ok=True)
    save_npy(npy_path, array)
    write_text(meta_path, json.dumps(meta))


def fingerprint(folder: Path, paths: list[Path]) -> str:
    """Changes when any of `paths` is added, removed or modified (name relative to `folder`, size, mtime); the
    same for a copy (`cp -a`), a move or another path to the folder, so none of them recomputes anything."""
    digest = hashlib.sha1()
    for name, p in sorted((Path(p).relative_to(folder).as_posix(), Path(p)) for p in paths):
        st = p.stat()  # follows symlinks: an edit behind a link is seen
        digest.update(os.fsencode(name) + f"|{st.st_size}|{st.st_mtime_ns}\n".encode())  # any bytes in a name
    return digest.hexdigest()


def progress_bar(iterable=None, **kwargs) -> tqdm:
    """A tqdm progress bar, shown only on a terminal (a log file gets no carriage-return frames) and only by the
    first process of a data-parallel run."""
    shown = int(os.environ.get("RANK", "0")) == 0
    return tqdm(iterable, disable=None if shown else True, **kwargs)


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, or its type where it has none: the part a one-line error quotes."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def atomic_torch_save(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, obj: dict) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False))


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def plot_confusion(confusion: list[list[int]], path: Path, title: str, classes: list[str]) -> None:
    counts = np.asarray(confusion)
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    fig = Figure(figsize=(6.5, 5.5))
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, counts[i, j], ha="center", va="center", color="white" if shares[i, j] > 0.5 else "black")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes, yticklabels=classes,
           xlabel="predicted", ylabel="true (ties resolved)", title=title)
    ax.tick_params(axis="x", labelrotation=45)
    fig.colorbar(image, ax=ax, label="share of the true class")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_curves(log: list[dict], path: Path, best_epoch: int) -> None:
    """Training losses and validation scores per epoch, the selected epoch marked (markers, so that a
    one-epoch run shows points rather than an empty plot)."""
    epochs = [r["epoch"] for r in log]
    fig = Figure(figsize=(11, 4))
    left, right = fig.subplots(1, 2)
    for key in ("train_loss", "train_emotion", "train_arousal", "train_valence"):
        left.plot(epochs, [r[key] for r in log], marker="o", markersize=3, label=key.removeprefix("train_"))
    left.set(xlabel="epoch", ylabel="training loss", title="training loss")
    for key in ("score", "macro_f1", "instance_f1", "ccc_arousal", "ccc_valence"):
        if f"val_{key}" in log[0]:
            right.plot(epochs, [r[f"val_{key}"] for r in log], marker="o", markersize=3,
                       linewidth=2.5 if key == "score" else 1.2, label=key)
    right.set(xlabel="epoch", ylabel="score", title="validation (score selects the epoch)")
    for ax in (left, right):
        ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label=f"selected: epoch {best_epoch}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def figure(value: float | None) -> str:
    """A score as printed: 3 decimals, or "–" where there is none (e.g. CCC on a corpus without arousal)."""
    return "–" if value is None else f"{value:.3f}"


def summary_table(metrics: dict, title: str) -> str:
    lines = [f"| {title} | value |", "| --- | --- |"]
    lines += [f"| {name} | {figure(metrics.get(name))} |" for name in SUMMARY_METRICS]
    lines += [f"| F1 {name} | {figure(scores['f1'])} (n={scores['support']}) |"
              for name, scores in metrics["per_class"].items()]
    return "\n".join(lines)


def file_sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hub_reachable(timeout: float = 3.0) -> bool:
    """False at once when HF_HUB_OFFLINE is set, else whether the hub answers within `timeout` seconds.
    Without this, an unreachable hub costs tens of seconds of retries before the error."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def hub_cache_only(name: str) -> bool:
    """Whether `name` (a Hugging Face id or local folder) must load from the local cache alone: not a folder, and
    the hub unreachable. Offline, nothing then waits on network retries."""
    return not Path(name).is_dir() and not hub_reachable()


def from_pretrained(what: str, name: str, flag: str, load, alternative: str = ""):
    """`load(cache_only)` for a Hugging Face id or local folder `name` (cache_only: `hub_cache_only`), or a one-line
    PretrainedError naming `what`, the `flag` and how to get the files (`alternative`: another way, appended)."""
    cache_only = hub_cache_only(name)
    try:
        return load(cache_only)
    except (OSError, ValueError) as error:
        where = ("it is not a local folder, not in the local Hugging Face cache, and the hub cannot be reached"
                 if cache_only else first_line(error))
        raise PretrainedError(f"cannot load {what} '{name}' ({where}). Download it where the Hugging Face hub is "
                              f"reachable (`hf download {name} --local-dir DIR`) and pass {flag} DIR{alternative}") \
            from None


def init_distributed(device_type: str) -> tuple[int, int, int]:
    """(rank, world size, local rank) of a process started by torchrun (WORLD_SIZE > 1): joins the process
    group (NCCL on CUDA, each process on its own GPU; gloo on CPU); (0, 1, 0) otherwise. If one process
    fails, torchrun stops the others."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1, 0
    import torch.distributed as dist
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)  # else NCCL's collectives would all run on GPU 0
    if not dist.is_initialized():
        # Rank 0 preprocesses a new corpus while the others wait in a collective: allow it hours, not minutes.
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo", timeout=timedelta(hours=3))
    return dist.get_rank(), world_size, local_rank


def broadcast(value, world_size: int):
    """Rank 0's `value` on every process (a no-op in one process)."""
    if world_size == 1:
        return value
    import torch.distributed as dist
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def split_data_dir(data_dir: str | Path) -> list[Path]:
    """--data_dir as folders: one corpus, or several separated by commas."""
    return [Path(p) for p in str(data_dir).split(",") if p.strip()]


def cache_folder(data_dir: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Where the derived files of the corpus at `data_dir` go: the corpus folder itself (the published layout), or
    `cache_dir`/<corpus folder name> (--cache_dir: a corpus on read-only storage, or caches on a faster disk)."""
    return Path(data_dir) if cache_dir is None else Path(cache_dir) / Path(data_dir).resolve().name


def amp_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """Mixed precision on CUDA: bf16 where the card supports it (no gradient scaler needed), else fp16 (with
    one). None (float32) without `amp` or on CPU, where runs stay deterministic."""
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
