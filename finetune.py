"""Pretrained encoders trained end to end (--finetune_speech, --finetune_text), the route of every top KEMDy result:
the modules that turn waveforms or token ids into the features the model fuses, their backbones loaded from a hub
id or local folder (a new run) or from a run folder (--resume, --test_only, predict.py), and the data they read.

- Speech: a wav2vec2/HuBERT/WavLM/data2vec-audio/XLS-R backbone turns a 16 kHz clip (normalised as its feature
  extractor does) into, per layer, the mean and std over time of its hidden states: the statistics of the frozen
  cache (speech_features.py), now with gradients, so that the same SUPERB layer weights read both. By default
  only a window's target utterance goes through the backbone and its context utterances come from the frozen
  cache (`finetune_context="cache"`: a step encodes the batch's targets alone, about half the clips of "encoder",
  which sends every utterance of the windows through it, with the chunked batches, and ws times fewer with
  windows drawn apart; benchmark.py measures both).
- Text: a BERT/RoBERTa/ELECTRA backbone over each utterance's token ids, pooled by the first token's state
  ("cls", as BertForSequenceClassification and KLUE's baselines) or the mean of the token states ("mean", as the
  frozen sentence embeddings); the token ids are computed once per corpus and cached.
A run folder keeps each backbone's config and its feature extractor or tokenizer files (`speech_backbone/`,
`text_backbone/`: JSON, vocabularies, a sentencepiece model; never code), so the run rebuilds the backbones without
the hub; their fine-tuned weights are in best.pth and checkpoint.pth with the rest of the model.
"""
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from constants import SAMPLE_RATE, TEXT_MAX_LENGTH
from errors import FlagError, PretrainedError, RunFolderError
from preprocess import corpus_wavs, load_audio
from speech_features import MIN_SAMPLES, load_speech_config
from text_encoder import KoBertTokenizer, load_tokenizer, tokenize
from utils import atomic_path, hub_cache_only, pretrained_load_error

SPEECH_DIR, TEXT_DIR = "speech_backbone", "text_backbone"
TEXT_FAMILIES = ("bert", "roberta", "electra", "xlm-roberta")


def transformer_layers(backbone: nn.Module) -> nn.ModuleList:
    """The stack of transformer layers of a speech (`encoder.layers`) or text (`encoder.layer`) backbone."""
    encoder = backbone.encoder
    return encoder.layers if hasattr(encoder, "layers") else encoder.layer


def _freeze(module: nn.Module) -> None:
    for parameter in module.parameters():
        parameter.requires_grad_(False)


class WaveformEncoder(nn.Module):
    """Waveforms (U, T) at 16 kHz and their lengths (U,) -> (U, L, 2, D): per layer (the CNN output and every
    transformer layer), the mean and standard deviation over the clip's frames of the hidden states.

    `masked`: give the backbone an attention mask (models with a layer-norm CNN; a group-norm CNN, as wav2vec2-base,
    is given none, as its feature extractor says, and sees a training batch's zero padding, as in its own
    fine-tuning recipe). `freeze_cnn` keeps the convolutional feature encoder fixed, the usual practice since
    wav2vec 2.0's fine-tuning (its weights carry little an utterance label can improve and its activations take
    most of the memory); the bottom `freeze_layers` transformer layers stay fixed too, with what lies below them.
    `time_mask`: the backbone's own SpecAugment-like masking of its CNN features in training (`mask_time_prob`
    of its config, spans of `mask_time_length` frames), 0 = off. Layer drop is turned off: the layer weights
    read every layer's states.
    """

    def __init__(self, backbone: nn.Module, masked: bool, normalize: bool, freeze_cnn: bool = True,
                 freeze_layers: int = 0, time_mask: float = 0.0):
        super().__init__()
        self.backbone, self.masked, self.normalize = backbone, masked, normalize
        backbone.config.mask_time_prob, backbone.config.mask_feature_prob = time_mask, 0.0
        backbone.config.apply_spec_augment = time_mask > 0
        backbone.config.layerdrop = 0.0  # a dropped layer would leave its hidden states out of the output
        if time_mask > 0 and getattr(backbone, "masked_spec_embed", None) is None:
            # A config saved without masking has no mask embedding: add one, initialised as the model does.
            backbone.masked_spec_embed = nn.Parameter(torch.empty(backbone.config.hidden_size).uniform_())
        if freeze_cnn:
            backbone.feature_extractor._freeze_parameters()  # (HuBERT has no freeze_feature_encoder())
        if freeze_layers:  # what lies below the first trained layer: projection, position embedding, mask vector
            below = [backbone.feature_projection, backbone.encoder.pos_conv_embed]
            if not getattr(backbone.config, "do_stable_layer_norm", False):  # post-norm models normalise first
                below.append(backbone.encoder.layer_norm)
            for module in below:
                _freeze(module)
            if getattr(backbone, "masked_spec_embed", None) is not None:
                backbone.masked_spec_embed.requires_grad_(False)
        for layer in list(transformer_layers(backbone))[:freeze_layers]:
            _freeze(layer)

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if not self.masked and not self.training and len(waves) > 1:
            # Without an attention mask the padding is input: in evaluation each clip goes alone, so that its
            # features do not depend on the clips that share its batch (and predict.py gives the same).
            return torch.cat([self(waves[i:i + 1, :int(n)], lengths[i:i + 1]) for i, n in enumerate(lengths)])
        valid = (torch.arange(waves.shape[1], device=waves.device)[None, :] < lengths[:, None]).to(waves.dtype)
        if self.normalize:  # zero mean, unit variance over each clip's own samples (Wav2Vec2FeatureExtractor)
            count = lengths[:, None].to(waves.dtype)
            mean = (waves * valid).sum(1, keepdim=True) / count
            var = (((waves - mean) * valid) ** 2).sum(1, keepdim=True) / count
            waves = (waves - mean) / torch.sqrt(var + 1e-7) * valid
        mask = valid.long() if self.masked else None
        hidden = self.backbone(waves, attention_mask=mask, output_hidden_states=True).hidden_states
        states = torch.stack(hidden, 1).float()  # statistics in float32 under autocast too
        frames = self.backbone._get_feat_extract_output_lengths(lengths)
        keep = (torch.arange(states.shape[2], device=waves.device)[None, :] < frames[:, None])
        keep = keep[:, None, :, None].to(states.dtype)
        count = frames.to(states.dtype)[:, None, None]
        mean = (states * keep).sum(2) / count
        std = torch.sqrt(((states - mean[:, :, None]) ** 2 * keep).sum(2) / count + 1e-8)
        return torch.stack([mean, std], 2)  # (U, L, 2, D)


class TokenEncoder(nn.Module):
    """Token ids (U, N) and their attention mask -> (U, H): the first token's state (`pool="cls"`) or the mean of
    the token states under the mask (`"mean"`). The bottom `freeze_layers` layers (and the embeddings with them)
    stay fixed."""

    def __init__(self, backbone: nn.Module, pool: str = "cls", freeze_layers: int = 0):
        super().__init__()
        self.backbone, self.pool = backbone, pool
        if getattr(backbone, "pooler", None) is not None:  # BERT's pooler is not read: keep it out of training
            _freeze(backbone.pooler)
        if freeze_layers:
            _freeze(backbone.embeddings)
        for layer in list(transformer_layers(backbone))[:freeze_layers]:
            _freeze(layer)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        states = self.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        if self.pool == "cls":
            return states[:, 0]
        weights = mask[..., None].to(states.dtype)
        return (states * weights).sum(1) / weights.sum(1).clamp(min=1)


@dataclass
class Backbones:
    """The pretrained networks a fine-tuning run trains: a speech backbone with its feature extractor's settings
    (`masked`: it takes an attention mask; `normalize`: clips are standardised), a text backbone."""
    speech: nn.Module | None = None
    masked: bool = False
    normalize: bool = True
    text: nn.Module | None = None


def _loaded(name: str, what: str, flag: str, loader):
    cache_only = hub_cache_only(name)
    try:
        return loader(cache_only)
    except (OSError, ValueError) as error:
        raise pretrained_load_error(what, name, flag, error, cache_only) from None


def _text_config(name: str):
    from transformers import AutoConfig
    config = _loaded(name, "text encoder", "--text_encoder",
                     lambda local: AutoConfig.from_pretrained(name, local_files_only=local))
    if config.model_type not in TEXT_FAMILIES:
        raise PretrainedError(f"--text_encoder {name} is a {config.model_type} model; --finetune_text takes a "
                              f"{', '.join(TEXT_FAMILIES)} encoder")
    return config


def pretrained_backbones(speech_model: str | None, text_encoder: str | None) -> Backbones:
    """The pretrained weights of a new fine-tuning run, from hub ids or local folders (None: not fine-tuned);
    PretrainedError, one line and in seconds, for one that cannot be loaded."""
    from transformers import AutoFeatureExtractor, AutoModel
    backbones = Backbones()
    if speech_model:
        load_speech_config(speech_model)  # one line if it is not a speech encoder
        extractor = _loaded(speech_model, "speech model", "--speech_model",
                            lambda local: AutoFeatureExtractor.from_pretrained(speech_model, local_files_only=local))
        backbones.speech = _loaded(speech_model, "speech model", "--speech_model", lambda local: AutoModel.from_pretrained(
            speech_model, local_files_only=local, dtype=torch.float32))  # trained in fp32 (autocast with --amp)
        backbones.masked = bool(getattr(extractor, "return_attention_mask", False))
        backbones.normalize = bool(getattr(extractor, "do_normalize", True))
    if text_encoder:
        _text_config(text_encoder)
        backbones.text = _loaded(text_encoder, "text encoder", "--text_encoder", lambda local: AutoModel.from_pretrained(
            text_encoder, local_files_only=local, dtype=torch.float32))
    return backbones


def save_backbones(run_dir: Path, speech_model: str | None, text_encoder: str | None) -> None:
    """The backbones' configs and their feature extractor or tokenizer files into the run folder (no weights:
    the fine-tuned ones are in the checkpoints), so that the run rebuilds them without the hub."""
    from transformers import AutoConfig, AutoFeatureExtractor
    for name, folder in ((speech_model, run_dir / SPEECH_DIR), (text_encoder, run_dir / TEXT_DIR)):
        if name:
            folder.mkdir(exist_ok=True)
            AutoConfig.from_pretrained(name, local_files_only=hub_cache_only(name)).save_pretrained(folder)
    if speech_model:
        AutoFeatureExtractor.from_pretrained(speech_model, local_files_only=hub_cache_only(speech_model)) \
            .save_pretrained(run_dir / SPEECH_DIR)
    if text_encoder:
        tokenizer = load_tokenizer(text_encoder)
        if isinstance(tokenizer, KoBertTokenizer):  # a BERT config + spiece.model: the KoBERT folder layout
            shutil.copyfile(tokenizer.model_file, run_dir / TEXT_DIR / "spiece.model")
        else:
            tokenizer.save_pretrained(run_dir / TEXT_DIR)


def run_backbones(run_dir: Path, speech: bool, text: bool) -> Backbones:
    """The backbones of a fine-tuning run rebuilt from its folder alone (random weights, for the checkpoint's);
    RunFolderError if the folder lost them."""
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel
    for wanted, folder in ((speech, run_dir / SPEECH_DIR), (text, run_dir / TEXT_DIR)):
        if wanted and not (folder / "config.json").exists():
            raise RunFolderError(f"{folder} is missing: the run's fine-tuned encoder cannot be rebuilt without it; "
                                 "copy the whole run folder")
    backbones = Backbones()
    try:
        if speech:
            backbones.speech = AutoModel.from_config(AutoConfig.from_pretrained(run_dir / SPEECH_DIR),
                                                     dtype=torch.float32)
            extractor = AutoFeatureExtractor.from_pretrained(run_dir / SPEECH_DIR)
            backbones.masked = bool(getattr(extractor, "return_attention_mask", False))
            backbones.normalize = bool(getattr(extractor, "do_normalize", True))
        if text:
            backbones.text = AutoModel.from_config(AutoConfig.from_pretrained(run_dir / TEXT_DIR), dtype=torch.float32)
    except (OSError, ValueError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise RunFolderError(f"{run_dir}: the fine-tuned encoders' files are damaged or incomplete ({first_line}); "
                             "copy the whole run folder") from None
    return backbones


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
    (text_encoder.load_tokenizer), cached once per corpus in its cache folder: features/tokens_<hash>.npz, keyed by
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


def wave_floor(speech_config, time_mask: float) -> int:
    """The fewest samples a training batch of waveforms is padded to: one receptive field, plus with time masking
    one masked span of frames (HF's mask drawing needs the batch's frames to hold one)."""
    stride = int(np.prod(speech_config.conv_stride))
    return MIN_SAMPLES + (speech_config.mask_time_length * stride if time_mask > 0 else 0)


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


def row_wavs(corpus, data_dirs: list[Path]) -> list[Path]:
    """The wav of every row of a dataset.Corpus read from the corpus folders `data_dirs` (in its order)."""
    maps = [corpus_wavs(cache, folder) for cache, folder in zip(corpus.folders, data_dirs)]
    return [maps[source][seg] for source, seg in zip(corpus.source, corpus.table["Segment ID"])]


def live_inputs(config, corpus, data_dirs: tuple[Path, ...], max_seconds: float, tokenizer: str,
                min_samples: int = MIN_SAMPLES) -> LiveInputs | None:
    """What adds the fine-tuned encoders' inputs to the batches of a dataset.Corpus read from the corpus folders
    `data_dirs` (None for a config that fine-tunes nothing): its wavs, and the token ids of `tokenizer` (an id or
    folder) cached in the corpus's cache folder."""
    speech, text = config.finetune_speech, config.finetune_text
    if not (speech or text):
        return None
    tokens = token_ids(corpus.folders[0], load_tokenizer(tokenizer), corpus.table["Segment ID"].tolist(),
                       corpus.table["text"].tolist()) if text else None
    return LiveInputs(row_wavs(corpus, list(data_dirs)) if speech else None, max_seconds, min_samples,
                      config.finetune_context, tokens)


def finetune_inputs(config, corpus, data_dirs: tuple[Path, ...], speech_model: str | None, max_seconds: float,
                    run_dir: Path | None = None) -> tuple[Backbones | None, LiveInputs | None]:
    """For training a fine-tuning model.ModelConfig (--finetune_speech / --finetune_text) on a dataset.Corpus read
    from the corpus folders `data_dirs`: its backbones, pretrained (a new run, or one resumed before its first
    checkpoint) or rebuilt from `run_dir`, and what adds their inputs to the batches (`live_inputs`); (None, None)
    otherwise. FlagError for a corpus or flags they cannot work with, PretrainedError for a backbone that cannot
    be loaded."""
    speech, text = config.finetune_speech, config.finetune_text
    if not (speech or text):
        return None, None
    for flag, on, modality in (("speech", speech, "audio"), ("text", text, "text")):
        if on and modality not in config.modalities:
            raise FlagError(f"--finetune_{flag} trains the {modality} encoder, but --modalities leaves {modality} out")
    if speech and not config.speech_layers:
        raise FlagError("--finetune_speech needs --speech_model ID_OR_DIR (preprocessed with it: its frozen features "
                        "give the windows' context utterances)")
    if text and corpus.text_encoder in ("tfidf", "given", "none"):
        raise FlagError(f"--finetune_text needs a transformer --text_encoder ID_OR_DIR (BERT, RoBERTa, ELECTRA), not "
                        f"the corpus's {corpus.text_encoder} embeddings")
    if run_dir is None:
        backbones = pretrained_backbones(speech_model if speech else None, corpus.text_encoder if text else None)
    else:
        backbones = run_backbones(run_dir, speech, text)
    if text and backbones.text.config.hidden_size != config.text_dim:
        raise FlagError(f"--finetune_text: --text_dim {config.text_dim} is not the hidden size "
                        f"{backbones.text.config.hidden_size} of --text_encoder {corpus.text_encoder}")
    if speech and (backbones.speech.config.num_hidden_layers + 1, backbones.speech.config.hidden_size) != \
            (config.speech_layers, config.speech_dim):
        raise FlagError(f"--finetune_speech: the cached features ({config.speech_layers} layers of width "
                        f"{config.speech_dim}) are not those of --speech_model {speech_model}")
    tokenizer = str(run_dir / TEXT_DIR) if run_dir is not None else corpus.text_encoder
    floor = wave_floor(backbones.speech.config, config.encoder_time_mask) if speech else MIN_SAMPLES
    return backbones, live_inputs(config, corpus, data_dirs, max_seconds, tokenizer, floor)
