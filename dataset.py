"""The corpus arrays of a run, context windows of utterances over the preprocessing cache (no audio decoding while
training), batches and loaders, and the inputs of fine-tuned encoders (waveforms, token ids).

A sample is the last utterance of a dialogue window plus the `ws - 1` utterances before it (the
dialogue start is padded); its targets are the last utterance's labels. Batches are built whole
(`__getitem__` takes a list of window indices): the distinct utterances of a batch are cropped
from the memory-mapped spectrogram array once, and the windows refer to them by index, since
neighbouring windows share `ws - 1` utterances. A fine-tuning run also gets each batch's waveforms and token
ids (`LiveInputs`), read from the corpus folder as it trains.
"""
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from asr import cached_transcripts, recorded_asr, with_transcripts
from audio import load_audio
from biosignals import FEATURES as BIO_FEATURES, load_bio
from constants import (CORPUS_CODES, DEFAULT_TEXT_ENCODER_REAL, KEMDY_FACTS, MANIFEST, MAX_FRAMES, NUM_RATERS,
                       SAMPLE_RATE, TEXT_MAX_LENGTH, WAVS)
from errors import CorpusError, FlagError, load_json
from functionals import load_opensmile, logmel_band_statistics
from normalization import FrameNorm, row_statistics, speaker_frame_norm, speaker_keys, speaker_zscores
from speech_features import MIN_SAMPLES, FeatureSource, LogMel
from text_encoder import KoBertTokenizer, embedding_paths, fit_tfidf, load_embeddings, tfidf_embeddings, tokenize
from utils import atomic_path, read_json, split_data_dir


def _labels_to_multi_hot(cells: pd.Series, classes: list[str]) -> np.ndarray:
    index = {name: i for i, name in enumerate(classes)}
    out = np.zeros((len(cells), len(classes)), dtype=np.float32)
    for i, cell in enumerate(cells):
        for name in filter(None, str(cell).split(";")):
            out[i, index[name]] = 1.0
    return out


def apply_label_map(table: pd.DataFrame, classes: list[str],
                    label_map: tuple[tuple[str, str], ...]) -> tuple[pd.DataFrame, list[str]]:
    """--label_map on a table's labels (totals and raters), applied once to the original labels: each renamed or
    merged into another, or dropped (empty target); rows left without a label are dropped -> (table, the classes
    after the map, in their order)."""
    mapping = dict(label_map)
    unknown = sorted(set(mapping) - set(classes))
    if unknown:
        raise FlagError(f"--label_map: {', '.join(unknown)} is not a class of the corpus ({', '.join(classes)})")
    if all(not mapping.get(c, c) for c in classes):
        raise FlagError("--label_map drops every class of the corpus")

    def remap(cell: str) -> str:
        return ";".join(dict.fromkeys(filter(None, (mapping.get(x, x) for x in str(cell).split(";") if x))))
    columns = [c for c in table.columns if c == "Emotion" or c.startswith("Emotion.")]
    table = table.assign(**{c: table[c].map(remap) for c in columns})
    return table[table["Emotion"] != ""].reset_index(drop=True), list(dict.fromkeys(
        filter(None, (mapping.get(c, c) for c in classes))))


def context_windows(dialogues: np.ndarray, ws: int) -> np.ndarray:
    """(N, ws) row indices: window i ends at row i and holds earlier rows of the same dialogue; -1 pads.

    Rows must be in dialogue order (preprocessing sorts them by dialogue and start time).
    """
    n = len(dialogues)
    _, first_row = np.unique(dialogues, return_index=True)
    start_of = np.maximum.accumulate(np.isin(np.arange(n), first_row) * np.arange(n))
    rows = np.arange(n)[:, None] - np.arange(ws - 1, -1, -1)[None, :]
    return np.where(rows >= start_of[:, None], rows, -1)


class ConcatFrames:
    """Several memory-mapped frame arrays read as one, without copying: rows of part k follow part k-1's."""

    def __init__(self, parts: list[np.ndarray]):
        self.parts = parts
        self.starts = np.cumsum([0] + [len(p) for p in parts])
        self.shape = (int(self.starts[-1]), parts[0].shape[1])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: slice | np.ndarray) -> np.ndarray:
        if isinstance(index, slice):  # one clip: never spans two parts
            k = int(np.searchsorted(self.starts, index.start, side="right")) - 1
            return self.parts[k][index.start - self.starts[k]:index.stop - self.starts[k]]
        index = np.asarray(index)
        part = np.searchsorted(self.starts, index, side="right") - 1
        out = np.empty((len(index), self.shape[1]), dtype=self.parts[0].dtype)
        for k in np.unique(part):
            out[part == k] = self.parts[k][index[part == k] - self.starts[k]]
        return out


class Corpus:
    """Everything a run needs from the preprocessing outputs of one role, aligned by table row.

    `folders` are the cache folders of one corpus or several (preprocess.py's outputs; the corpus folders
    themselves unless --cache_dir moved them), as a list or a comma-separated string. Several corpora are
    read as their union, with session keys 1903 ("19_03") and dialogues prefixed by the corpus, so that no
    session or dialogue of one meets the other's. `frames` holds the audio features of all utterances, one
    after the other, of the feature source `speech` (speech_features.py): log-mel frames, or a pooled encoder's L
    layer rows of each utterance; `audio_settings` are the source's settings; with `logmel` (--fuse_logmel), `mel`
    holds the log-mel frames too. `functionals` (rows, F) holds the utterance functionals named (functionals.py;
    None without). With `feature_norm` "speaker", the functionals are z-scores over each speaker's utterances and
    `frame_norm` (and `mel.norm`) each speaker's frame statistics (normalization.py), applied as batches are
    assembled; with "training", all stay raw (the model standardises them with training statistics). Transcripts
    are the corpus's, with those of the ASR the cache was preprocessed with where it has none (`asr`, asr.py).
    """

    def __init__(self, folders: list[Path] | str | Path, role: str, text_dim: int, speech: FeatureSource = LogMel(),
                 label_map: tuple[tuple[str, str], ...] = (), bio_alignment: str = "clock",
                 feature_norm: str = "training", functionals: tuple[str, ...] = (), logmel: bool = False):
        folders = split_data_dir(folders) if isinstance(folders, (str, Path)) else list(folders)
        if len(folders) > 1:
            self._union([Corpus([folder], role, text_dim, speech, label_map, bio_alignment, functionals=functionals,
                                logmel=logmel) for folder in folders], text_dim)
        else:
            self._read(folders[0], role, text_dim, speech, label_map, bio_alignment, functionals, logmel)
        self.feature_norm, self.frame_norm = feature_norm, None
        self.raw_functionals = self.functionals
        if feature_norm == "speaker":
            self.frame_norm = speaker_frame_norm(self.frames, self.offsets, self.lengths, self.speakers,
                                                 max(self.speech_shape()[0], 1))
            if self.mel is not None:
                self.mel.norm = speaker_frame_norm(self.mel.frames, self.mel.offsets, self.mel.lengths, self.speakers,
                                                   1)
            if self.functionals is not None:
                self.functionals = speaker_zscores(self.functionals, self.speakers)

    def _read(self, folder: Path, role: str, text_dim: int, speech: FeatureSource,
              label_map: tuple[tuple[str, str], ...], bio_alignment: str, functionals: tuple[str, ...],
              logmel: bool) -> None:
        self.folders, self.text_pipeline = [folder], None
        manifest = load_json(folder / MANIFEST, CorpusError)
        self.kind, facts = manifest["corpus"], manifest.get("facts", KEMDY_FACTS)
        self.has_text, self.has_av = facts["text"], facts["arousal_valence"]
        self.split_unit = facts["split_unit"]  # what a session is (corpora.split_units)
        self.modalities = tuple(facts.get("modalities", KEMDY_FACTS["modalities"]))  # the corpus's default
        self.table, self.classes = pd.read_csv(folder / f"df_{role}.csv", keep_default_na=False), facts["classes"]
        # The ASR the cache was preprocessed with (asr.py), and the utterances whose transcript is its.
        self.asr, self.asr_ids = recorded_asr(manifest), []
        if self.asr is not None:
            self.table, self.asr_ids = with_transcripts(self.table, cached_transcripts(folder, self.asr[0]),
                                                        self.asr[1])
            self.has_text = True
        if label_map:
            self.table, self.classes = apply_label_map(self.table, self.classes, label_map)
        self.source = np.zeros(len(self.table), dtype=int)  # which of `folders` each row comes from
        self.speakers = speaker_keys(self.table, self.kind)
        self.audio_settings, self.frames, self.offsets, self.lengths = self._audio_cache(folder, speech)
        self.mel = Frames(*self._audio_cache(folder, LogMel())[1:]) if logmel and speech != LogMel() else None
        self.functional_names, self.functionals = functionals, self._functionals(folder, speech, functionals)
        npy_path = embedding_paths(folder, text_dim)[0]
        embeddings = load_embeddings(npy_path)
        zero = np.zeros(text_dim, dtype=np.float32)
        self.text = np.stack([np.asarray(embeddings.get(s, zero), dtype=np.float32)
                              for s in self.table["Segment ID"]]) if len(self.table) else np.zeros((0, text_dim))
        meta_path = embedding_paths(folder, text_dim)[1]
        self.text_encoder = json.loads(meta_path.read_text(encoding="utf-8"))["encoder"] if meta_path.exists() else "given"
        if self.text.shape[1] != text_dim:
            raise CorpusError(f"{npy_path} holds {self.text.shape[1]}-d embeddings, not --text_dim {text_dim}")
        self.labels = _labels_to_multi_hot(self.table["Emotion"], self.classes)
        self.first_label = np.array([self.classes.index(c.split(";")[0]) for c in self.table["Emotion"]], dtype=int)
        # Soft target: share of the raters choosing each emotion (a rater's tie splits evenly); a corpus without
        # raters (one label per utterance) gets its label, ties split evenly.
        soft = np.zeros_like(self.labels)
        for k in range(1, NUM_RATERS + 1):
            votes = _labels_to_multi_hot(self.table[f"Emotion.{k}"], self.classes)
            soft += votes / np.maximum(votes.sum(1, keepdims=True), 1)
        no_votes = soft.sum(1) == 0
        soft[no_votes] = self.labels[no_votes]
        self.soft = soft / soft.sum(1, keepdims=True)
        # NaN where a corpus has no arousal/valence rating: the loss and CCC leave those rows out.
        self.arousal_valence = self.table[["Arousal", "Valence"]].apply(pd.to_numeric, errors="coerce").to_numpy(
            dtype=np.float32)
        self.sessions = self.table["Session"].to_numpy()
        self.dialogues = self.table["dialogue"].to_numpy()
        # Per-utterance bio-signal features (biosignals.py), or None for a corpus without bio folders.
        self.bio = load_bio(folder, bio_alignment, self.table)

    def _audio_cache(self, folder: Path, speech: FeatureSource) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
        """(settings, frames memory-mapped, offsets and lengths of the table's rows) of the cache of `speech`."""
        npy_path, meta_path = speech.paths(folder)
        if not meta_path.exists():
            raise CorpusError(f"no features of --speech_model {speech.name} in {folder}; make them with "
                              f"python preprocess.py --data_dir <corpus> --speech_model {speech.name}")
        meta = load_json(meta_path, CorpusError)
        position = {seg: i for i, seg in enumerate(meta["ids"])}
        rows = self.table["Segment ID"].map(position).to_numpy()
        return (meta["settings"], np.load(npy_path, mmap_mode="r"), np.asarray(meta["offsets"], dtype=np.int64)[rows],
                np.asarray(meta["lengths"], dtype=np.int64)[rows])

    def _functionals(self, folder: Path, speech: FeatureSource, names: tuple[str, ...]) -> np.ndarray | None:
        """(rows, F) float32: the utterance functionals `names`, side by side in that order; None without."""
        blocks = []
        for name in names:
            if name == "logmel":  # from the log-mel cache, also when the audio path reads a speech model's layers
                _, frames, offsets, lengths = (self._audio_cache(folder, LogMel()) if speech != LogMel() else
                                               (None, self.frames, self.offsets, self.lengths))
                blocks.append(logmel_band_statistics(frames, offsets, lengths))
            else:
                blocks.append(load_opensmile(folder, self.table["Segment ID"].tolist(), name))
        return np.concatenate(blocks, axis=1) if blocks else None

    def _union(self, parts: list["Corpus"], text_dim: int) -> None:
        settings = [p.audio_settings for p in parts]
        if any(s != settings[0] for s in settings):
            raise CorpusError("the corpora of --data_dir have different audio features; preprocess them "
                              "with the same settings (and the same --speech_model)")
        # The contest's given embedding file is KoBERT's, as computing them here with the default encoder.
        encoders = {DEFAULT_TEXT_ENCODER_REAL if p.text_encoder == "given" else p.text_encoder for p in parts}
        if len(encoders) > 1:
            raise CorpusError(f"the corpora of --data_dir have different sentence encoders {sorted(encoders)}; "
                              "preprocess them with the same --text_encoder")
        codes = [CORPUS_CODES[p.kind] for p in parts]
        tables = []
        for p, code in zip(parts, codes):
            table = p.table.copy()
            table["Session"] = 100 * code + table["Session"]
            table["dialogue"] = f"{code}_" + table["dialogue"]
            tables.append(table)
        self.table = pd.concat(tables, ignore_index=True)
        self.folders, self.kind = [p.folders[0] for p in parts], "+".join(p.kind for p in parts)
        self.classes, self.has_text, self.has_av = parts[0].classes, parts[0].has_text, parts[0].has_av  # KEMDy's
        self.modalities, self.split_unit = parts[0].modalities, parts[0].split_unit
        self.asr = next((p.asr for p in parts if p.asr is not None), None)
        self.asr_ids = [seg for p in parts for seg in p.asr_ids]
        self.source = np.concatenate([np.full(len(p.table), k) for k, p in enumerate(parts)])
        self.audio_settings, self.text_encoder = settings[0], encoders.pop()
        self.frames = ConcatFrames([p.frames for p in parts])
        self.offsets = np.concatenate([p.offsets + start for p, start in zip(parts, self.frames.starts)])
        self.mel = None
        if parts[0].mel is not None:
            frames = ConcatFrames([p.mel.frames for p in parts])
            self.mel = Frames(frames, np.concatenate([p.mel.offsets + start for p, start in zip(parts, frames.starts)]),
                              np.concatenate([p.mel.lengths for p in parts]))
        for name in ("lengths", "labels", "first_label", "soft", "arousal_valence"):
            setattr(self, name, np.concatenate([getattr(p, name) for p in parts]))
        self.text_pipeline = None
        if self.text_encoder == "tfidf":  # each corpus fitted its own TF-IDF space: fit one on the union
            texts = self.table["text"].tolist()
            self.text_pipeline = fit_tfidf(list(dict.fromkeys(texts)), text_dim)
            self.text = tfidf_embeddings(texts, self.text_pipeline, text_dim)
        else:
            self.text = np.concatenate([p.text for p in parts])
        self.sessions = self.table["Session"].to_numpy()
        self.dialogues = self.table["dialogue"].to_numpy()
        self.speakers = np.concatenate([f"{code}_" + p.speakers.astype(object) for p, code in zip(parts, codes)])
        self.functional_names = parts[0].functional_names
        self.functionals = None if parts[0].functionals is None else np.concatenate([p.functionals for p in parts])
        self.bio = None if all(p.bio is None for p in parts) else np.concatenate(
            [p.bio if p.bio is not None else np.zeros((len(p.table), len(BIO_FEATURES)), np.float32) for p in parts])

    def speech_shape(self) -> tuple[int, int]:
        """(layers, hidden size) of the speech model's features; (0, 0) for log-mel frames."""
        return self.audio_settings.get("layers", 0), self.audio_settings.get("dim", 0)

    def training_statistics(self, rows: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The raw features' mean and std over `rows` (the training utterances): "frames" (R, W) per frame row
        (log-mel: one per band; a speech model's layer rows: one per layer), "mel" (1, mels) for the log-mel frames
        read beside a speech model's, "functionals" (F,) where the corpus has them. What a recording without other
        utterances of its speaker is standardised with (predict.py)."""
        groups = np.zeros(len(rows), dtype=int)
        norm = FrameNorm.of(self.frames, self.offsets[rows], self.lengths[rows], groups, max(self.speech_shape()[0], 1))
        out = {"frames": (norm.mean[0], norm.std[0])}
        if self.mel is not None:
            mel = FrameNorm.of(self.mel.frames, self.mel.offsets[rows], self.mel.lengths[rows], groups, 1)
            out["mel"] = (mel.mean[0], mel.std[0])
        if self.raw_functionals is not None:
            mean, std = row_statistics(self.raw_functionals[rows], groups)
            out["functionals"] = (mean[0], std[0])
        return out


class WindowDataset(Dataset):
    """Windows ending at the rows of `sessions`; item = a whole batch, built from a list of window indices."""

    def __init__(self, corpus: Corpus, sessions: list[int], ws: int, train: bool, seed: int = 0,
                 split: str = "split", live=None):
        """`live`: for fine-tuned encoders, what adds their inputs (waveforms, token ids) to a batch
        (`LiveInputs`)."""
        self.corpus, self.train, self.seed, self.epoch, self.live = corpus, train, seed, 0, live
        self.windows = context_windows(corpus.dialogues, ws)[np.isin(corpus.sessions, sessions)]
        if len(self.windows) == 0:
            raise FlagError(f"{split} sessions {sessions} have no utterances in the corpus "
                            f"(it has sessions {sorted(set(corpus.sessions.tolist()))})")

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        c = self.corpus
        windows = self.windows[np.asarray(indices)]
        # Random 10 s crops of longer clips in training, seeded by (seed, epoch, batch) for reproducibility.
        rng = np.random.default_rng((self.seed, self.epoch, int(indices[0]))) if self.train else None
        batch = assemble_batch(c.frames, c.offsets, c.lengths, c.text, windows, rng, c.bio, c.frame_norm,
                               c.functionals, c.mel)
        last = windows[:, -1]
        batch.update(soft=torch.from_numpy(c.soft[last]), labels=torch.from_numpy(c.labels[last]),
                     first_label=torch.from_numpy(c.first_label[last]),
                     arousal_valence=torch.from_numpy(c.arousal_valence[last]), rows=torch.from_numpy(last))
        if self.live is not None:
            batch.update(self.live(windows, batch["slots"].numpy(), rng))
        return batch


@dataclass
class Frames:
    """An audio feature cache read for a table's rows: every utterance's rows (memory-mapped), each row's offset and
    length in them, and with speaker normalisation the speakers' statistics (`norm`)."""
    frames: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray
    norm: FrameNorm | None = None


def _crop(frames: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, utterances: np.ndarray,
          rng: np.random.Generator | None, norm: FrameNorm | None) -> tuple[np.ndarray, np.ndarray]:
    """The rows of `utterances`, packed -> (rows float32, rows taken per utterance): at most 10 s of frames each, a
    random stretch with `rng`, else the first; standardised with their speakers' statistics by `norm`."""
    lengths = lengths[utterances]
    take = np.minimum(lengths, MAX_FRAMES)
    starts = offsets[utterances]
    if rng is not None:
        starts = starts + (rng.random(len(utterances)) * (lengths - take + 1)).astype(np.int64)
    packed_starts = np.cumsum(take) - take
    frame_index = np.arange(take.sum()) + np.repeat(starts - packed_starts, take)
    rows = np.asarray(frames[frame_index], dtype=np.float32)
    if norm is not None:
        rows = norm.apply(rows, utterances, take, starts - offsets[utterances])
    return rows, take


def assemble_batch(frames: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, text: np.ndarray,
                   windows: np.ndarray, rng: np.random.Generator | None = None, bio: np.ndarray | None = None,
                   norm: FrameNorm | None = None, functionals: np.ndarray | None = None,
                   mel: Frames | None = None) -> dict[str, torch.Tensor]:
    """Model inputs for `windows` (B, ws) of utterance indices (-1 = padding).

    The distinct utterances are cropped once from `frames` (all utterances' frames concatenated;
    utterance i is frames[offsets[i]:offsets[i] + lengths[i]]): a random 10 s crop with `rng`,
    else the first 10 s. They are returned packed, without padding: `spec` is their frames one
    after the other and `spec_lengths` their lengths. `slots` maps each window step to its
    utterance (its row in `text`). With `bio` (utterances x bio features), `bio` holds theirs, and likewise
    `functionals`, and `mel`/`mel_lengths` their log-mel frames cropped so (read beside a speech model's rows).
    `norm` standardises the frames with their speakers' statistics.
    """
    utterances, inverse = np.unique(windows[windows >= 0], return_inverse=True)
    slots = np.full(windows.shape, -1)
    slots[windows >= 0] = inverse
    spec, take = _crop(frames, offsets, lengths, utterances, rng, norm)
    batch = {"spec": torch.from_numpy(spec),
             "spec_lengths": torch.from_numpy(take), "text": torch.from_numpy(np.asarray(text[utterances])),
             "slots": torch.from_numpy(slots)}
    if bio is not None:
        batch["bio"] = torch.from_numpy(bio[utterances])
    if functionals is not None:
        batch["functionals"] = torch.from_numpy(functionals[utterances])
    if mel is not None:
        rows, take = _crop(mel.frames, mel.offsets, mel.lengths, utterances, rng, mel.norm)
        batch.update(mel=torch.from_numpy(rows), mel_lengths=torch.from_numpy(take))
    return batch


class ChunkBatchSampler(Sampler):
    """Batches of shuffled chunks of `chunk` consecutive windows (training), or in order (evaluation).

    Consecutive windows share most utterances, so a batch of chunks holds ~2x fewer distinct
    utterances per window than one drawn window by window: the audio encoder runs that much less.
    With `num_replicas` > 1 (data-parallel training), every process draws the same batches and takes
    every num_replicas-th one, starting at its `rank` (a DistributedSampler that keeps the chunks);
    the last batches are repeated so that all processes take the same number of steps.
    """

    def __init__(self, n_windows: int, batch_size: int, chunk: int, shuffle: bool, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0, weights: np.ndarray | None = None):
        self.n, self.batch_size, self.chunk, self.shuffle, self.seed, self.epoch = \
            n_windows, batch_size, max(1, chunk), shuffle, seed, 0
        self.num_replicas, self.rank, self.weights = num_replicas, rank, weights

    def __iter__(self):
        order = np.arange(self.n)
        if self.shuffle and self.weights is not None:  # class-balanced: n windows drawn with replacement
            order = np.random.default_rng((self.seed, self.epoch)).choice(
                self.n, size=self.n, p=self.weights / self.weights.sum())
        elif self.shuffle:
            chunks = np.array_split(order, int(np.ceil(self.n / self.chunk)))
            perm = np.random.default_rng((self.seed, self.epoch)).permutation(len(chunks))
            order = np.concatenate([chunks[i] for i in perm])
        batches = [order[start:start + self.batch_size].tolist() for start in range(0, self.n, self.batch_size)]
        if self.num_replicas > 1:
            needed = len(self) * self.num_replicas
            batches = (batches * -(-needed // len(batches)))[:needed][self.rank::self.num_replicas]
        yield from batches

    def __len__(self) -> int:
        return int(np.ceil(np.ceil(self.n / self.batch_size) / self.num_replicas))


def make_loader(corpus: Corpus, sessions: list[int] | tuple[int, ...], ws: int, batch_size: int, train: bool,
                seed: int = 0, num_workers: int = 0, pin_memory: bool = False, split: str = "training",
                num_replicas: int = 1, rank: int = 0, class_balanced: bool = False, live=None) -> DataLoader:
    """Batches of the windows ending in `sessions` (shuffled chunks when `train`, or with `class_balanced` windows
    drawn with probability 1 / (count of their target's class); with `num_replicas` > 1 this process's share).
    `split` names the flag behind `sessions` in the error for an empty split; `live` see WindowDataset."""
    dataset = WindowDataset(corpus, list(sessions), ws, train=train, seed=seed, split=split, live=live)
    weights = None
    if class_balanced:
        targets = corpus.first_label[dataset.windows[:, -1]]
        weights = 1.0 / np.bincount(targets, minlength=len(corpus.classes))[targets]
    sampler = ChunkBatchSampler(len(dataset), batch_size, chunk=ws, shuffle=train, seed=seed,
                                num_replicas=num_replicas, rank=rank, weights=weights)
    return DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=num_workers, pin_memory=pin_memory)


def tokenizer_fingerprint(tokenizer) -> str:
    """What decides a tokenizer's ids, without file paths: KoBERT's sentencepiece model, a fast tokenizer's full
    description (normaliser, pre-tokeniser, vocabulary), else its class and vocabulary."""
    if isinstance(tokenizer, KoBertTokenizer):
        return hashlib.sha1(tokenizer.model_file.read_bytes()).hexdigest()
    if getattr(tokenizer, "is_fast", False):
        return hashlib.sha1(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()
    return hashlib.sha1(json.dumps([type(tokenizer).__name__, sorted(tokenizer.get_vocab().items())]).encode()) \
        .hexdigest()


def token_ids(cache: Path, tokenizer, seg_ids: list[str], texts: list[str],
              max_length: int = TEXT_MAX_LENGTH) -> tuple[np.ndarray, np.ndarray]:
    """(ids (N, max_length) int64 zero-padded, lengths (N,)) of every transcript under `tokenizer`
    (text_encoder.load_tokenizer's), cached once per corpus in its cache folder: features/tokens_<hash>.npz, keyed by
    the tokenizer's fingerprint and the texts, so that runs with the same tokenizer share it (not written where
    the folder is read-only)."""
    key = json.dumps([tokenizer_fingerprint(tokenizer), max_length, seg_ids, texts])
    path = Path(cache) / "features" / f"tokens_{hashlib.sha1(key.encode()).hexdigest()[:16]}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as cached:
            return cached["ids"], cached["lengths"]
    ids, lengths = np.zeros((len(texts), max_length), dtype=np.int64), np.zeros(len(texts), dtype=np.int64)
    for start in range(0, len(texts), 1024):
        batch = tokenize(tokenizer, texts[start:start + 1024], max_length)
        width = batch["input_ids"].shape[1]
        ids[start:start + 1024, :width] = batch["input_ids"].numpy()
        lengths[start:start + 1024] = batch["attention_mask"].sum(1).numpy()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, ids=ids, lengths=lengths)
    except OSError:  # read-only storage: tokenising again next time is cheap
        pass
    return ids, lengths


def crop(audio: np.ndarray, max_samples: int, rng: np.random.Generator | None) -> np.ndarray:
    """At most `max_samples` of a clip: a random stretch in training (`rng`), else its start (as evaluation crops
    log-mel spectrograms)."""
    if len(audio) <= max_samples:
        return audio
    start = int(rng.integers(0, len(audio) - max_samples + 1)) if rng is not None else 0
    return audio[start:start + max_samples]


def pad_waves(audios: list[np.ndarray], min_samples: int = MIN_SAMPLES) -> dict[str, torch.Tensor]:
    """Clips -> {"waves": (U, T) zero-padded float32, "wave_lengths": (U,)}: T is at least `min_samples`, and a
    clip shorter than the CNN's receptive field (MIN_SAMPLES) counts as that long (zero-padded, as in the cache)."""
    lengths = np.maximum([len(a) for a in audios], MIN_SAMPLES)
    waves = np.zeros((len(audios), max(int(lengths.max()), min_samples)), dtype=np.float32)
    for i, audio in enumerate(audios):
        waves[i, :len(audio)] = audio
    return {"waves": torch.from_numpy(waves), "wave_lengths": torch.from_numpy(lengths.astype(np.int64))}


class LiveInputs:
    """What the fine-tuned encoders read for a batch, besides the cached features: the waveforms of its target
    utterances (or of all its utterances, `context="encoder"`), cropped to `max_seconds`, and every utterance's
    token ids. `wavs[row]` is a table row's wav (None: no speech is fine-tuned), `tokens` (ids, lengths) per row
    (None: no text is); training batches (given an `rng`) are padded to at least `min_samples` (`wave_floor`).
    Picklable, for DataLoader workers."""

    def __init__(self, wavs: list[Path] | None, max_seconds: float, min_samples: int = MIN_SAMPLES,
                 context: str = "cache", tokens: tuple[np.ndarray, np.ndarray] | None = None):
        self.wavs, self.max_samples, self.min_samples = wavs, int(max_seconds * SAMPLE_RATE), min_samples
        self.context, self.tokens = context, tokens

    def __call__(self, windows: np.ndarray, slots: np.ndarray, rng: np.random.Generator | None) -> dict:
        utterances = np.unique(windows[windows >= 0])  # the order of assemble_batch's distinct utterances
        out = {}
        if self.wavs is not None:
            chosen = np.arange(len(utterances)) if self.context == "encoder" else np.unique(slots[:, -1])
            audios = [crop(load_audio(self.wavs[utterances[k]]), self.max_samples, rng) for k in chosen]
            out.update(pad_waves(audios, self.min_samples if rng is not None else MIN_SAMPLES),
                       wave_slots=torch.from_numpy(chosen))
        if self.tokens is not None:
            ids, lengths = self.tokens[0][utterances], self.tokens[1][utterances]
            width = max(int(lengths.max()), 1)
            out.update(tokens=torch.from_numpy(np.ascontiguousarray(ids[:, :width])),
                       token_mask=torch.from_numpy((np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)))
        return out


def corpus_wavs(cache: Path, data_dir: Path) -> dict[str, Path]:
    """Segment ID -> its wav, from a cache folder's record (wavs.json) of the corpus at `data_dir`."""
    return {seg_id: Path(data_dir) / rel for seg_id, rel in read_json(Path(cache) / WAVS).items()}


def row_wavs(corpus: Corpus, data_dirs: list[Path]) -> list[Path]:
    """The wav of every row of `corpus` read from the corpus folders `data_dirs` (in its order)."""
    maps = [corpus_wavs(cache, folder) for cache, folder in zip(corpus.folders, data_dirs)]
    return [maps[source][seg] for source, seg in zip(corpus.source, corpus.table["Segment ID"])]


def live_inputs(config, corpus: Corpus, data_dirs: tuple[Path, ...], max_seconds: float, tokenizer=None,
                min_samples: int = MIN_SAMPLES) -> LiveInputs | None:
    """What adds the fine-tuned encoders' inputs to the batches of `corpus`, read from the corpus folders
    `data_dirs`, for a model.ModelConfig `config` (None for one that fine-tunes nothing): its wavs, and the token
    ids of `tokenizer` (text_encoder.load_tokenizer's) cached in the corpus's cache folder."""
    speech, text = config.finetune_speech, config.finetune_text
    if not (speech or text):
        return None
    tokens = token_ids(corpus.folders[0], tokenizer, corpus.table["Segment ID"].tolist(),
                       corpus.table["text"].tolist()) if text else None
    return LiveInputs(row_wavs(corpus, list(data_dirs)) if speech else None, max_seconds, min_samples,
                      config.finetune_context, tokens)
