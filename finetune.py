"""Pretrained encoders trained end to end (--finetune_speech, --finetune_text), the route of every top KEMDy result:
their backbones loaded from a hub id or local folder (a new run) or rebuilt from a run folder (--resume,
--test_only, predict.py), and what a training run of them needs (`finetune_inputs`). The modules that turn
waveforms or token ids into the features the model fuses are model.WaveformEncoder and model.TokenEncoder; the
waveforms and token ids of a batch are dataset.LiveInputs.

A run folder keeps each backbone's config and its feature extractor or tokenizer files (`speech_backbone/`,
`text_backbone/`: JSON, vocabularies, a sentencepiece model; never code), so the run rebuilds the backbones without
the hub; their fine-tuned weights are in best.pth and checkpoint.pth with the rest of the model.
"""
import shutil
from pathlib import Path

import numpy as np
import torch

from dataset import LiveInputs, live_inputs
from errors import FlagError, PretrainedError, RunFolderError
from model import Backbones
from speech_features import MIN_SAMPLES, load_speech_model
from text_encoder import KoBertTokenizer, load_text_model, load_tokenizer, text_config
from utils import first_line

SPEECH_DIR, TEXT_DIR = "speech_backbone", "text_backbone"
TEXT_FAMILIES = ("bert", "roberta", "electra", "xlm-roberta")


def _text_config(name: str):
    config = text_config(name)
    if config.model_type not in TEXT_FAMILIES:
        raise PretrainedError(f"--text_encoder {name} is a {config.model_type} model; --finetune_text takes a "
                              f"{', '.join(TEXT_FAMILIES)} encoder")
    return config


def _speech_flags(extractor) -> dict:
    """What a speech backbone's feature extractor says of its input: an attention mask, clips standardised."""
    return {"masked": bool(getattr(extractor, "return_attention_mask", False)),
            "normalize": bool(getattr(extractor, "do_normalize", True))}


def pretrained_backbones(speech_model: str | None, text_encoder: str | None) -> Backbones:
    """The pretrained weights of a new fine-tuning run, from hub ids or local folders (None: not fine-tuned), in
    fp32 (trained so; autocast with --amp), with the speech backbone's feature extractor and the text backbone's
    tokenizer; PretrainedError, one line and in seconds, for one that cannot be loaded."""
    backbones = Backbones()
    if speech_model:
        backbones.extractor, backbones.speech = load_speech_model(speech_model, dtype=torch.float32)
        backbones.masked, backbones.normalize = _speech_flags(backbones.extractor).values()
    if text_encoder:
        _text_config(text_encoder)
        backbones.tokenizer = load_tokenizer(text_encoder)
        backbones.text = load_text_model(text_encoder, dtype=torch.float32)
    return backbones


def save_backbones(run_dir: Path, backbones: Backbones) -> None:
    """The backbones' configs and their feature extractor or tokenizer files into the run folder (no weights:
    the fine-tuned ones are in the checkpoints), so that the run rebuilds them without the hub."""
    if backbones.speech is not None:
        (run_dir / SPEECH_DIR).mkdir(exist_ok=True)
        backbones.speech.config.save_pretrained(run_dir / SPEECH_DIR)
        backbones.extractor.save_pretrained(run_dir / SPEECH_DIR)
    if backbones.text is not None:
        (run_dir / TEXT_DIR).mkdir(exist_ok=True)
        backbones.text.config.save_pretrained(run_dir / TEXT_DIR)
        if isinstance(backbones.tokenizer, KoBertTokenizer):  # a BERT config + spiece.model: the KoBERT layout
            shutil.copyfile(backbones.tokenizer.model_file, run_dir / TEXT_DIR / "spiece.model")
        else:
            backbones.tokenizer.save_pretrained(run_dir / TEXT_DIR)


def run_tokenizer(run_dir: Path):
    """The tokenizer a fine-tuned text backbone was trained with, from its run folder."""
    return load_tokenizer(str(run_dir / TEXT_DIR))


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
            backbones.extractor = AutoFeatureExtractor.from_pretrained(run_dir / SPEECH_DIR)
            backbones.masked, backbones.normalize = _speech_flags(backbones.extractor).values()
        if text:
            backbones.text = AutoModel.from_config(AutoConfig.from_pretrained(run_dir / TEXT_DIR), dtype=torch.float32)
            backbones.tokenizer = run_tokenizer(run_dir)
    except (OSError, ValueError, PretrainedError) as error:
        raise RunFolderError(f"{run_dir}: the fine-tuned encoders' files are damaged or incomplete "
                             f"({first_line(error)}); copy the whole run folder") from None
    return backbones


def wave_floor(speech_config, time_mask: float) -> int:
    """The fewest samples a training batch of waveforms is padded to: one receptive field, plus with time masking
    one masked span of frames (HF's mask drawing needs the batch's frames to hold one)."""
    stride = int(np.prod(speech_config.conv_stride))
    return MIN_SAMPLES + (speech_config.mask_time_length * stride if time_mask > 0 else 0)


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
    if speech and corpus.audio_settings.get("model_type") == "whisper":
        raise FlagError("--finetune_speech trains the wav2vec2 family (wav2vec2, HuBERT, WavLM, XLS-R); a Whisper "
                        "--speech_model is read frozen: drop --finetune_speech")
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
    floor = wave_floor(backbones.speech.config, config.encoder_time_mask) if speech else MIN_SAMPLES
    return backbones, live_inputs(config, corpus, data_dirs, max_seconds, backbones.tokenizer, floor)
