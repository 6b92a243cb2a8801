"""A trained run folder as other entry points use it (main.py --test_only, predict.py, benchmark.py).

A run folder is self-contained: `best.pth` holds the weights, the arguments and the feature settings;
`corpus.json` the absolute corpus path (and --cache_dir), the sentence encoder, whether it was the
synthetic demo corpus, and a fingerprint of the tables and embeddings the run was trained on; `text_encoder.joblib` the fitted TF-IDF pipeline when the run
used one. So a run evaluates or predicts from any directory, and a changed corpus is noticed.
"""
import argparse
import json
import pickle
import shutil
import zipfile
from pathlib import Path

import joblib
import numpy as np
import torch

from constants import DEFAULT_TEXT_ENCODER_REAL
from dataset import Corpus, audio_cache_paths
from model import EmotionModel
from preprocess import feature_settings, is_demo_corpus
from text_encoder import embedding_paths, tfidf_embeddings, transformer_embeddings
from utils import atomic_path, cache_folders, file_sha1, split_data_dir, write_json

# Arguments that define the model's shape: it is rebuilt from exactly these.
MODEL_ARGS = ("text_dim", "audio_dim", "hidden_size", "num_layers", "bidirectional", "backbone", "no_cat", "dropout",
              "audio_pool", "no_direct")  # and speech_layers, speech_dim (0 = log-mel) since --speech_model
TFIDF_FILE = "text_encoder.joblib"


def build_model(args: argparse.Namespace) -> EmotionModel:
    return EmotionModel(text_dim=args.text_dim, audio_dim=args.audio_dim, hidden_size=args.hidden_size,
                        num_layers=args.num_layers, bidirectional=args.bidirectional, backbone=args.backbone,
                        emotion_concat=not args.no_cat, dropout=args.dropout, audio_pool=args.audio_pool,
                        direct=not args.no_direct, freq_mask=args.freq_mask, time_mask=args.time_mask,
                        speech_layers=args.speech_layers, speech_dim=args.speech_dim)


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    """torch.load with a one-line error for a missing, truncated or foreign file."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise SystemExit(f"error: {path} does not exist") from None
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise SystemExit(f"error: {path} is damaged or not a checkpoint of this repo ({first_line}); "
                         "if the run was interrupted, continue it with python main.py --resume <run>") from None


def load_trained_model(checkpoint_path: Path, device: torch.device) -> tuple[EmotionModel, argparse.Namespace, dict]:
    """Rebuild exactly the saved model from the arguments inside its checkpoint -> (model, args, checkpoint)."""
    checkpoint = load_checkpoint(checkpoint_path, device)
    missing = [k for k in MODEL_ARGS if k not in checkpoint["args"]]
    if missing:
        raise SystemExit(f"error: {checkpoint_path} lacks the model arguments {missing}; "
                         "it was saved by an incompatible version")
    args = argparse.Namespace(**{"freq_mask": 0, "time_mask": 0, "speech_model": None, "speech_layers": 0,
                                 "speech_dim": 0, "amp": False, "cache_dir": None, **checkpoint["args"]})
    if not args.speech_model and checkpoint.get("features", feature_settings()) != feature_settings():
        raise SystemExit(f"error: {checkpoint_path} was trained on features {checkpoint['features']}, "
                         f"this code computes {feature_settings()}")
    model = build_model(args).to(device)
    model.load_state_dict(checkpoint["model"])
    return model.eval(), args, checkpoint


def corpus_record(data_dir: str, cache_dir: str | None, role: str, text_dim: int, speech_model: str | None) -> dict:
    """What a run was trained on: the corpus folder(s), the cache location, the encoders, whether it was the demo,
    and content hashes of the tables, embeddings and audio feature index it read (editing a transcript or a label
    changes them)."""
    folders, caches = split_data_dir(data_dir), cache_folders(data_dir, cache_dir)
    meta_path = embedding_paths(caches[0], text_dim)[1]
    encoder = json.loads(meta_path.read_text(encoding="utf-8"))["encoder"] if meta_path.exists() else "given"
    fingerprint = {}
    for folder, cache in zip(folders, caches):
        files = [cache / f"df_{role}.csv", embedding_paths(cache, text_dim)[0], audio_cache_paths(cache, speech_model)[1]]
        # Several corpora: files are named by their corpus folder too (both have a df_speaker.csv).
        fingerprint.update({(f"{folder.name}/{p.name}" if len(folders) > 1 else p.name): file_sha1(p) for p in files})
    return {"data_dir": ",".join(str(f.resolve()) for f in folders),
            "cache_dir": str(Path(cache_dir).resolve()) if cache_dir else None, "role": role, "text_encoder": encoder,
            "text_dim": text_dim, "speech_model": speech_model, "demo": any(map(is_demo_corpus, folders)),
            "fingerprint": fingerprint}


def save_corpus_record(run_dir: Path, corpus: Corpus, args: argparse.Namespace) -> None:
    record = corpus_record(args.data_dir, args.cache_dir, args.SorL, args.text_dim, args.speech_model)
    if corpus.text_pipeline is not None:  # the TF-IDF fitted on several corpora at once
        with atomic_path(run_dir / TFIDF_FILE) as tmp:
            joblib.dump(corpus.text_pipeline, tmp)
    elif record["text_encoder"] == "tfidf":  # the fitted pipeline travels with the run
        shutil.copyfile(embedding_paths(corpus.folders[0], args.text_dim)[2], run_dir / TFIDF_FILE)
    write_json(run_dir / "corpus.json", record)


def check_corpus_unchanged(run_dir: Path, args: argparse.Namespace, allow_change: bool) -> None:
    """Refuse (or, with `allow_change`, warn) when the corpus differs from the one the run (`args`) was trained on."""
    saved_path = run_dir / "corpus.json"
    if not saved_path.exists():
        print(f"warning: {run_dir} has no corpus.json (an older run): cannot check that the corpus is unchanged")
        return
    saved = json.loads(saved_path.read_text(encoding="utf-8"))
    now = corpus_record(args.data_dir, args.cache_dir, args.SorL, args.text_dim, args.speech_model)
    changed = [name for name, digest in saved["fingerprint"].items() if now["fingerprint"].get(name) != digest]
    if not changed:
        return
    message = (f"the corpus at {args.data_dir} has changed since {run_dir.name} was trained ({', '.join(changed)} "
               f"differ; transcripts, labels or wavs were edited, or it was preprocessed again)")
    if not allow_change:
        raise SystemExit(f"error: {message}; its test figures would not be the run's. Pass --allow_corpus_change "
                         "to evaluate on the corpus as it is now")
    print(f"warning: {message}; evaluating on the corpus as it is now (--allow_corpus_change)")


def trained_on_demo(run_dir: Path) -> bool:
    """Whether the run was trained on the synthetic demo corpus (older runs: its marker, if the corpus is there)."""
    saved_path = run_dir / "corpus.json"
    if not saved_path.exists():
        return False
    saved = json.loads(saved_path.read_text(encoding="utf-8"))
    return saved["demo"] if "demo" in saved else any(map(is_demo_corpus, split_data_dir(saved["data_dir"])))


def run_text_encoder(run_dir: Path, args: argparse.Namespace):
    """texts -> (N, text_dim) embeddings with the run's own sentence encoder."""
    saved_path = run_dir / "corpus.json"
    encoder = json.loads(saved_path.read_text(encoding="utf-8"))["text_encoder"] if saved_path.exists() else None
    if encoder == "tfidf":
        pipeline = joblib.load(run_dir / TFIDF_FILE)
        return lambda texts: tfidf_embeddings(texts, pipeline, args.text_dim)
    if encoder is None:
        raise SystemExit(f"error: {run_dir} has no corpus.json (an older run): its text encoder is unknown; "
                         "train it again with this version to predict from text")
    if encoder == "given":  # the contest's own embedding_768.npy: KoBERT, as published
        encoder = DEFAULT_TEXT_ENCODER_REAL
    return lambda texts: np.asarray(transformer_embeddings(texts, encoder))
