"""Frozen pretrained speech encoders (wav2vec2, HuBERT, WavLM, data2vec-audio, XLS-R) as cached features.

    python preprocess.py --data_dir data/KEMDy19 --speech_model kresnik/wav2vec2-large-xlsr-korean

Per utterance and per layer (the CNN output and every transformer layer), the mean and the standard
deviation over time of the hidden states, as float16. The cache has the layout of the log-mel cache
(features/logmel.npy + .json) so the Dataset reads both the same way: one memory-mapped array of rows,
and per utterance an offset and a length; here an utterance's rows are its L layers, each row
[mean | std] of width 2 * hidden size. The model learns a softmax-weighted sum over the layers (SUPERB).

Extraction is batched by similar length, runs under bf16/fp16 autocast on CUDA, encodes clips longer
than CHUNK_SECONDS in pieces (bounded memory), and is resumable: rows go to a `.partial` array and a
progress file records how many utterances are done, so an interrupted run continues where it stopped.
"""
import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from constants import SAMPLE_RATE
from errors import PretrainedError
from utils import amp_dtype, autocast, cached_meta, from_pretrained, progress_bar, read_json, write_text

CHUNK_SECONDS = 20.0  # longer clips are encoded in pieces of at most this length
BATCH_SECONDS = 32.0  # padded audio per forward pass: bounds the CNN front end's activations (~1 GB at base size)
MIN_SAMPLES = 400  # the CNN front end's receptive field (25 ms): shorter pieces are zero-padded to it


def speech_cache_paths(out: str | Path, name: str) -> tuple[Path, Path]:
    """(rows .npy, index .json) of `name`'s cache in the cache folder `out`: one file per model (a hub id, or a
    folder by its full path)."""
    identity = str(Path(name).resolve()) if Path(name).is_dir() else name
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(identity).name)[:60]
    base = Path(out) / "features" / f"speech_{slug}_{hashlib.sha1(identity.encode()).hexdigest()[:8]}"
    return Path(f"{base}.npy"), Path(f"{base}.json")


def load_speech_config(name: str):
    """The model's config alone (cheap): enough to tell whether a cache is up to date."""
    from transformers import AutoConfig
    config = from_pretrained("speech model", name, "--speech_model",
                             lambda local: AutoConfig.from_pretrained(name, local_files_only=local))
    if not hasattr(config, "conv_kernel"):
        raise PretrainedError(f"--speech_model {name} is a {config.model_type} model, not a speech encoder "
                         "that takes raw audio (wav2vec2, HuBERT, WavLM, data2vec-audio, XLS-R)")
    return config


def load_speech_model(name: str, device: torch.device | None = None,
                      dtype: torch.dtype | None = None) -> tuple:
    """(feature extractor, model in eval mode, on `device` if given; its weights in `dtype` if given, else as
    saved) for a hub id or local folder; one line if unavailable or not a speech encoder."""
    from transformers import AutoFeatureExtractor, AutoModel
    load_speech_config(name)
    extractor = from_pretrained("speech model", name, "--speech_model",
                                lambda local: AutoFeatureExtractor.from_pretrained(name, local_files_only=local))
    model = from_pretrained("speech model", name, "--speech_model", lambda local: AutoModel.from_pretrained(
        name, local_files_only=local, **({"dtype": dtype} if dtype is not None else {})))
    return extractor, (model.to(device) if device is not None else model).eval()


def model_revision(name: str, config) -> str:
    """The hub commit of the weights, or for a local folder a fingerprint of its weight files."""
    if Path(name).is_dir():
        weights = sorted(p for p in Path(name).iterdir() if p.suffix in (".safetensors", ".bin"))
        stamp = "".join(f"{p.name}|{p.stat().st_size}|{p.stat().st_mtime_ns}\n" for p in weights)
        return "files:" + hashlib.sha1(stamp.encode()).hexdigest()
    return getattr(config, "_commit_hash", None) or "unknown"


def speech_settings(name: str, config) -> dict:
    return {"speech_model": name, "revision": model_revision(name, config), "model_type": config.model_type,
            "layers": config.num_hidden_layers + 1, "dim": config.hidden_size, "pool": "mean,std",
            "chunk_seconds": CHUNK_SECONDS, "sample_rate": SAMPLE_RATE}


def length_batches(lengths: list[int], budget: int) -> list[list[int]]:
    """Indices grouped in length order so that a group padded to its longest member holds <= `budget` samples."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    groups, current = [], []
    for i in order:
        if current and (len(current) + 1) * lengths[i] > budget:
            groups.append(current)
            current = []
        current.append(i)
    return groups + [current] if current else groups


@torch.inference_mode()
def encode_clips(audios: list[np.ndarray], extractor, model, device: torch.device) -> np.ndarray:
    """16 kHz clips -> (len(audios), L, 2 * D) float32: per layer, mean and std over the clip's frames.

    A clip longer than CHUNK_SECONDS is cut into pieces encoded separately; its statistics are taken
    over the frames of all its pieces, so memory depends on the piece length, not the clip length.
    """
    chunk = int(CHUNK_SECONDS * SAMPLE_RATE)
    pieces = [(i, audio[start:start + chunk]) for i, audio in enumerate(audios)
              for start in range(0, len(audio), chunk)]
    # Each piece through the feature extractor alone (its normalisation then sees the piece, not the padding
    # of a batch), so a clip's features do not depend on which clips share its batch.
    pieces = [(i, extractor(np.pad(p, (0, max(0, MIN_SAMPLES - len(p)))), sampling_rate=SAMPLE_RATE,
                            return_tensors="np")["input_values"][0]) for i, p in pieces]
    layers, dim = model.config.num_hidden_layers + 1, model.config.hidden_size
    total = np.zeros((len(audios), layers, dim))
    total_sq = np.zeros((len(audios), layers, dim))
    count = np.zeros(len(audios))
    # Models whose CNN uses group norm (wav2vec2-base) must not be given a mask: padding is then input,
    # which batching by similar length keeps to a few percent of each clip.
    masked = getattr(extractor, "return_attention_mask", False)
    for group in length_batches([len(p) for _, p in pieces], int(BATCH_SECONDS * SAMPLE_RATE)):
        lengths = torch.tensor([len(pieces[k][1]) for k in group])
        values = torch.zeros(len(group), int(lengths.max()))
        for row, k in enumerate(group):
            values[row, :lengths[row]] = torch.from_numpy(pieces[k][1])
        inputs = {"input_values": values.to(device)}
        if masked:
            inputs["attention_mask"] = (torch.arange(values.shape[1])[None, :] < lengths[:, None]).long().to(device)
        with autocast(device, amp_dtype(device, True)):
            states = model(**inputs, output_hidden_states=True).hidden_states
        states = torch.stack(states, dim=1).float()  # (B, L, T, D)
        frames = model._get_feat_extract_output_lengths(lengths)
        valid = (torch.arange(states.shape[2])[None, :] < frames[:, None]).to(device)[:, None, :, None]
        sums = (states * valid).sum(2).double().cpu().numpy()
        sums_sq = (states.square() * valid).sum(2).double().cpu().numpy()
        for row, k in enumerate(group):
            clip = pieces[k][0]
            total[clip] += sums[row]
            total_sq[clip] += sums_sq[row]
            count[clip] += int(frames[row])
    mean = total / count[:, None, None]
    std = np.sqrt(np.maximum(total_sq / count[:, None, None] - mean ** 2, 0.0))
    return np.concatenate([mean, std], axis=2).astype(np.float32)


def build_speech_cache(out: Path, seg_ids: list[str], wav_paths: list[Path], name: str, sources: str,
                       load_audio: Callable[[Path], np.ndarray], device: torch.device | None = None,
                       may_write: Callable[[str], None] | None = None) -> float:
    """Write the cache of `name` for `seg_ids` in the cache folder `out` unless it is up to date; resumes an
    interrupted extraction. `load_audio` reads a wav as 16 kHz mono float32 (preprocessing's reader);
    `may_write(what)`, called before anything is written, may refuse (a read-only cache folder).

    Returns the seconds spent extracting (0 when up to date).
    """
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    npy_path, meta_path = speech_cache_paths(out, name)
    settings = speech_settings(name, load_speech_config(name))
    if cached_meta(npy_path, meta_path, {"settings": settings, "sources": sources}) is not None:
        print(f"{npy_path.name} ({name}) is up to date")
        return 0.0
    if may_write is not None:
        may_write(f"{name} speech features")
    npy_path.parent.mkdir(parents=True, exist_ok=True)
    extractor, model = load_speech_model(name, device)
    # Utterances in length order, cut into batches by a fixed rule: a resumed run makes the same batches.
    durations = [sf.info(p).frames for p in wav_paths]
    order = sorted(range(len(seg_ids)), key=lambda i: (durations[i], seg_ids[i]))
    batches = [[order[k] for k in group] for group in
               length_batches([min(durations[i], int(CHUNK_SECONDS * SAMPLE_RATE)) for i in order],
                              int(BATCH_SECONDS * SAMPLE_RATE))]
    layers, dim = settings["layers"], settings["dim"]
    plan = {"settings": settings, "sources": sources, "ids": [seg_ids[i] for i in order]}
    partial_path = npy_path.with_name(npy_path.name + ".partial")
    progress_path = npy_path.with_name(npy_path.name + ".progress.json")
    state = read_json(progress_path)
    done = state.get("done", 0) if state.get("plan") == plan and partial_path.exists() else 0
    rows = np.lib.format.open_memmap(partial_path, mode="r+" if done else "w+", dtype=np.float16,
                                     shape=(len(seg_ids) * layers, 2 * dim))
    if done:
        print(f"resuming the {name} extraction: {done} of {len(seg_ids)} utterances already done")
    else:
        write_text(progress_path, json.dumps({"plan": plan, "done": 0}))
    position = {i: k for k, i in enumerate(order)}  # utterance -> its row block in the cache
    started, seconds_of_audio = time.perf_counter(), 0.0
    bar = progress_bar(total=len(seg_ids), initial=done, desc=f"speech features {Path(name).name}", unit="utt")
    finished = 0
    for batch in batches:
        finished += len(batch)
        if finished <= done:
            continue
        audios = [load_audio(wav_paths[i]) for i in batch]
        features = encode_clips(audios, extractor, model, device)
        for i, feature in zip(batch, features):
            rows[position[i] * layers:(position[i] + 1) * layers] = feature
        rows.flush()
        write_text(progress_path, json.dumps({"plan": plan, "done": finished}))
        seconds_of_audio += sum(len(a) for a in audios) / SAMPLE_RATE
        bar.update(len(batch))
        bar.set_postfix(real_time=f"{seconds_of_audio / (time.perf_counter() - started):.1f}x")
    bar.close()
    del rows
    os.replace(partial_path, npy_path)
    write_text(meta_path, json.dumps({**plan, "offsets": [k * layers for k in range(len(order))],
                                      "lengths": [layers] * len(order), "failed": {}}))
    progress_path.unlink()
    return time.perf_counter() - started
