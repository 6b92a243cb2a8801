"""Run folders: checkpoints (save, load, resume), the model rebuilt from its checkpoint, what the run was trained on,
its text encoder, and its test outputs; used by main.py, predict.py, benchmark.py and experiments.

A run folder is self-contained data, never code. `best.pth` (the selected model) and `checkpoint.pth` (the last
epoch, for --resume) hold the weights, the ModelConfig, the run's resolved arguments and the feature settings, and
load with `weights_only=True`; `corpus.json` holds the corpus folders (and --cache_dir), the sentence encoder,
whether it was the synthetic demo corpus, and content hashes of the tables and embeddings the run was trained on;
`text_encoder.npz` + `.json` the fitted TF-IDF pipeline as arrays and a vocabulary. Runs saved by earlier versions
(a pickled `text_encoder.joblib`, no ModelConfig) still load; their pickle only behind `trust_pickle`
(--trust_run), since unpickling a file can run any code.
"""
import argparse
import json
import pickle
import shutil
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from asr import Recognizer
from audio import feature_settings
from constants import DEFAULT_TEXT_ENCODER_REAL
from dataset import Corpus
from errors import CorpusError, RunFolderError, StorageError, load_json
from finetune import run_backbones
from model import EmotionModel, ModelConfig
from options import run_arguments
from preprocess import is_demo_corpus
from protocol import DataSpec
from text_encoder import (embedding_paths, load_tfidf, save_tfidf, tfidf_embeddings, tfidf_exists,
                          transformer_embeddings)
from utils import atomic_path, atomic_torch_save, file_sha1, first_line, plot_confusion, rng_states, write_json

TFIDF_BASE = "text_encoder"  # text_encoder.npz + text_encoder.json in a run folder
PICKLED_TFIDF = "text_encoder.joblib"  # the TF-IDF of runs whose folders still held a pickle
# ModelConfig fields whose default is not what models saved before the field existed were.
BEFORE_CONFIG = {"speech_norm": "layer"}
# The arguments an older checkpoint (without "model_config") must hold to rebuild its model.
OLD_MODEL_ARGS = ("text_dim", "audio_dim", "hidden_size", "num_layers", "bidirectional", "backbone", "no_cat",
                  "dropout", "audio_pool", "no_direct")


@dataclass
class Progress:
    """Where training stands: the last finished epoch, and the best validation score so far (its emotion
    cross-entropy breaking ties) and its epoch."""
    epoch: int = 0
    best_score: float = float("-inf")
    best_nll: float = float("inf")  # the best epoch's validation emotion cross-entropy (breaks ties of the score)
    best_epoch: int = 0
    best_val: dict = field(default_factory=dict)


def save_checkpoint(path: Path, *, model: torch.nn.Module, ema, optimizer, scheduler, scaler, progress: Progress,
                    config: ModelConfig, run_args: dict, features: dict, statistics: dict) -> None:
    """Everything to resume exactly (weights, EMA, optimizer, scheduler, scaler, RNG states, progress) and to
    rebuild the model alone (its ModelConfig, the run's arguments, the feature settings, the raw features'
    training statistics: what predict.py standardises a lone recording with); written atomically."""
    atomic_torch_save({"model": model.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                       "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                       "scaler": scaler.state_dict() if scaler is not None else None, "rng": rng_states(),
                       "epoch": progress.epoch, "best_score": progress.best_score, "best_nll": progress.best_nll,
                       "best_epoch": progress.best_epoch, "best_val": progress.best_val,
                       "model_config": asdict(config), "args": run_args, "features": features,
                       "statistics": statistics}, path)


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    """torch.load (weights only: no code runs) with a one-line RunFolderError for a missing, truncated or
    foreign file."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise RunFolderError(f"{path} does not exist") from None
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as error:
        # (a file cut short reads as an OSError "Invalid argument" when its zip directory points past its end)
        raise RunFolderError(f"{path} is damaged or not a checkpoint of this repo ({first_line(error)}); if the run "
                             "was interrupted, continue it with python main.py --resume <run>") from None


def restore_training(checkpoint: dict, *, model: torch.nn.Module, ema, optimizer, scheduler, scaler) -> Progress:
    """Load a checkpoint's training state into the objects of a resumed run -> its progress (RNG states are
    restored by the caller, which knows the process's rank)."""
    model.load_state_dict(checkpoint["model"])
    if ema is not None:
        ema.load_state_dict(checkpoint["ema"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    if scaler is not None and checkpoint.get("scaler"):
        scaler.load_state_dict(checkpoint["scaler"])
    return Progress(epoch=checkpoint["epoch"], best_score=checkpoint["best_score"], best_epoch=checkpoint["best_epoch"],
                    best_val=checkpoint["best_val"],
                    best_nll=checkpoint.get("best_nll", float("-inf")))  # older runs: ties kept the earlier epoch


def checkpoint_config(checkpoint: dict, path: Path) -> ModelConfig:
    """The checkpoint's ModelConfig; for a run saved before it existed, the one its arguments describe."""
    if "model_config" in checkpoint:  # (fields added since it was saved: what its model was)
        return ModelConfig(**{**BEFORE_CONFIG, **checkpoint["model_config"]})
    missing = [k for k in OLD_MODEL_ARGS if k not in checkpoint["args"]]
    if missing:
        raise RunFolderError(f"{path} lacks the model arguments {missing}; it was saved by an incompatible version")
    return ModelConfig.from_args(checkpoint["args"])


def load_trained_model(path: Path, device: torch.device) -> tuple[EmotionModel, argparse.Namespace, dict]:
    """Rebuild exactly the saved model from its checkpoint -> (model in eval mode, the run's arguments
    (`run_arguments`), checkpoint)."""
    checkpoint = load_checkpoint(path, device)
    config = checkpoint_config(checkpoint, path)
    args = run_arguments(checkpoint["args"])
    if not config.speech_layers and checkpoint.get("features", feature_settings()) != feature_settings():
        raise RunFolderError(f"{path} was trained on features {checkpoint['features']}, this code computes "
                             f"{feature_settings()}")
    finetuned = config.finetune_speech or config.finetune_text
    model = EmotionModel(config, run_backbones(path.parent, config.finetune_speech, config.finetune_text)
                         if finetuned else None).to(device)
    model.load_state_dict(checkpoint["model"])
    return model.eval(), args, checkpoint


def finished(run_dir: Path) -> bool:
    """Whether a folder holds a finished run: its results.json, written by the test after training's last step (a
    run stopped by Ctrl-C or a crash has a best.pth, the best model so far, but no results.json)."""
    return (Path(run_dir) / "results.json").exists()


def check_finished(run_dir: Path) -> None:
    """RunFolderError for a run that did not finish training: its best.pth is not the run's model. The one rule of
    every reader of a run's model (--test_only, predict.py; ensemble.py and compare.py read finished runs alone)."""
    if not finished(run_dir):
        raise RunFolderError(f"{run_dir} did not finish training (no results.json), so its best.pth is not the "
                             f"run's model; finish it first: python main.py --resume {run_dir}")


def find_run(name: str, save_path: str) -> Path:
    """A finished run folder named as given or under --save_path; RunFolderError saying what is missing."""
    run_dir = next((p for p in (Path(name), Path(save_path) / name) if p.exists()), None)
    if run_dir is None:  # a bare name may also be a folder under --save_path; a path is only itself
        also = f" (nor {Path(save_path) / name})" if Path(name).parent == Path(".") else ""
        raise RunFolderError(f"--test_only {name}: no such run folder{also}")
    missing = [f for f in ("args.json", "best.pth") if not (run_dir / f).exists()]
    if not run_dir.is_dir() or missing:
        raise RunFolderError(f"{run_dir} is not a finished run folder (missing {', '.join(missing) or 'folder'})")
    check_finished(run_dir)
    return run_dir


def corpus_record(spec: DataSpec, text_dim: int) -> dict:
    """What a run was trained on: the corpus folder(s), the cache location, the encoders, whether it was the demo,
    and content hashes of the tables, embeddings and audio feature index it read (editing a transcript or a label
    changes them)."""
    meta_path = embedding_paths(spec.caches[0], text_dim)[1]
    encoder = json.loads(meta_path.read_text(encoding="utf-8"))["encoder"] if meta_path.exists() else "given"
    fingerprint = {}
    for folder, cache in zip(spec.folders, spec.caches):
        files = [cache / f"df_{spec.role}.csv", embedding_paths(cache, text_dim)[0],
                 spec.speech.paths(cache)[1]]
        # Several corpora: files are named by their corpus folder too (both have a df_speaker.csv).
        fingerprint.update({(f"{folder.name}/{p.name}" if len(spec.folders) > 1 else p.name): file_sha1(p)
                            for p in files})
    return {"data_dir": ",".join(map(str, spec.folders)), "cache_dir": str(spec.cache_dir) if spec.cache_dir else None,
            "role": spec.role, "text_encoder": encoder, "text_dim": text_dim, "speech_model": spec.speech_model,
            "demo": any(map(is_demo_corpus, spec.folders)), "fingerprint": fingerprint}


def save_corpus_record(run_dir: Path, corpus: Corpus, spec: DataSpec) -> None:
    """corpus.json (with --asr, its settings and the utterances whose transcript is ASR's), and the fitted TF-IDF
    pipeline when the run's text encoder is one."""
    record = corpus_record(spec, spec.text_dim)
    if corpus.asr is not None:
        record["asr"] = {**corpus.asr[0].settings(), "replace": corpus.asr[1], "utterances": corpus.asr_ids}
    if corpus.text_pipeline is not None:  # the TF-IDF fitted on several corpora at once
        save_tfidf(corpus.text_pipeline, run_dir / TFIDF_BASE)
    elif record["text_encoder"] == "tfidf":  # the corpus's fitted pipeline travels with the run
        base = embedding_paths(spec.caches[0], spec.text_dim)[2]
        for suffix in (".npz", ".json"):
            shutil.copyfile(base.with_name(base.name + suffix), run_dir / f"{TFIDF_BASE}{suffix}")
    write_json(run_dir / "corpus.json", record)


def check_corpus_unchanged(run_dir: Path, spec: DataSpec, allow_change: bool) -> None:
    """Refuse (or, with `allow_change`, warn) when the corpus differs from the one the run was trained on."""
    saved_path = run_dir / "corpus.json"
    if not saved_path.exists():
        print(f"warning: {run_dir} has no corpus.json (an older run): cannot check that the corpus is unchanged")
        return
    saved = load_json(saved_path)
    now = corpus_record(spec, saved["text_dim"])
    changed = [name for name, digest in saved["fingerprint"].items() if now["fingerprint"].get(name) != digest]
    if not changed:
        return
    message = (f"the corpus at {now['data_dir']} has changed since {run_dir.name} was trained ({', '.join(changed)} "
               f"differ; transcripts, labels or wavs were edited, or it was preprocessed again)")
    if not allow_change:
        raise RunFolderError(f"{message}; its test figures would not be the run's. Pass --allow_corpus_change to "
                             "evaluate on the corpus as it is now")
    print(f"warning: {message}; evaluating on the corpus as it is now (--allow_corpus_change)")


def run_recognizer(run_dir: Path) -> Recognizer | None:
    """The --asr model a run was trained with (corpus.json), where it is a folder that is still there (None
    otherwise: predict.py then needs --asr to transcribe)."""
    saved = load_json(run_dir / "corpus.json").get("asr") if (run_dir / "corpus.json").exists() else None
    return Recognizer(saved["model"], saved["language"]) if saved and Path(saved["model"]).is_dir() else None


def trained_on_demo(run_dir: Path) -> bool:
    """Whether the run was trained on the synthetic demo corpus (older runs: its marker, if the corpus is there)."""
    saved_path = run_dir / "corpus.json"
    if not saved_path.exists():
        return False
    saved = load_json(saved_path)
    return saved["demo"] if "demo" in saved else any(is_demo_corpus(p) for p in saved["data_dir"].split(","))


def run_text_encoder(run_dir: Path, text_dim: int, trust_pickle: bool = False):
    """texts -> (N, text_dim) embeddings with the run's own sentence encoder. A pickled pipeline (runs saved by
    earlier versions) is loaded only with `trust_pickle`: unpickling can run any code its author put in it."""
    saved_path = run_dir / "corpus.json"
    encoder = load_json(saved_path)["text_encoder"] if saved_path.exists() else None
    if encoder == "tfidf":
        if tfidf_exists(run_dir / TFIDF_BASE):
            try:
                pipeline = load_tfidf(run_dir / TFIDF_BASE)
            except CorpusError as error:
                raise RunFolderError(str(error)) from None
        elif not (run_dir / PICKLED_TFIDF).exists():
            raise RunFolderError(f"{run_dir} lacks its TF-IDF pipeline ({TFIDF_BASE}.npz + .json); copy the whole "
                                 "run folder")
        elif not trust_pickle:
            raise RunFolderError(f"{run_dir / PICKLED_TFIDF} is a pickle (a run saved by an earlier version), and "
                                 "loading a pickle can run any code: pass --trust_run only if you trust whoever made "
                                 "this run folder")
        else:
            import joblib
            pipeline = joblib.load(run_dir / PICKLED_TFIDF)
        return lambda texts: tfidf_embeddings(texts, pipeline, text_dim)
    if encoder is None:
        raise RunFolderError(f"{run_dir} has no corpus.json (an older run): its text encoder is unknown; train it "
                             "again with this version to predict from text")
    if encoder == "none":  # a corpus without transcripts: every embedding is zero
        return lambda texts: np.zeros((len(texts), text_dim), np.float32)
    if encoder == "given":  # the contest's own embedding_768.npy: KoBERT, as published
        encoder = DEFAULT_TEXT_ENCODER_REAL
    return lambda texts: np.asarray(transformer_embeddings(texts, encoder))


VAL_PREDICTIONS = "predictions_val.csv"  # the model's outputs on the validation sessions (ensemble.py's stacking)


def write_predictions(path: Path, corpus: Corpus, rows: np.ndarray, probs: np.ndarray, av_pred: np.ndarray) -> None:
    """One row per utterance of `rows`: Segment ID, label(s) as written, one probability per class, arousal/valence
    true and predicted where the corpus rates them."""
    table = pd.DataFrame({"Segment ID": corpus.table["Segment ID"].to_numpy()[rows],
                          "emotion": corpus.table["Emotion"].to_numpy()[rows]})
    for i, name in enumerate(corpus.classes):
        table[name] = probs[:, i]
    if corpus.has_av:
        av_true = corpus.arousal_valence[rows]
        table["arousal_true"], table["arousal_pred"] = av_true[:, 0], av_pred[:, 0]
        table["valence_true"], table["valence_pred"] = av_true[:, 1], av_pred[:, 1]
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def write_test_outputs(run_dir: Path, corpus: Corpus, rows: np.ndarray, probs: np.ndarray, av_pred: np.ndarray,
                       metrics: dict, results_name: str, extra: dict) -> None:
    """results*.json ({"test": metrics, **extra}), predictions*.csv (`write_predictions` of the test utterances)
    and confusion*.png."""
    write_predictions(run_dir / results_name.replace("results", "predictions").replace(".json", ".csv"), corpus, rows,
                      probs, av_pred)
    write_json(run_dir / results_name, {"test": metrics, **extra})
    plot_confusion(metrics["confusion"], run_dir / results_name.replace("results", "confusion").replace(".json", ".png"),
                   f"test confusion ({run_dir.name})", corpus.classes)


def write_run_args(run_dir: Path, run_args: dict) -> None:
    """args.json: the run's arguments with the data flags resolved (what --resume and report.py read)."""
    try:
        write_json(run_dir / "args.json", run_args)
    except OSError as error:
        raise StorageError(f"cannot write the run folder {run_dir}: {error.strerror}") from None


@dataclass
class ResumeState:
    """What continuing an interrupted run starts from, read once: its arguments (the last checkpoint's, which
    hold the overrides of any earlier --resume; its args.json if it stopped before its first checkpoint) and that
    checkpoint (None before the first)."""
    args: dict
    checkpoint: dict | None


def resume_state(run_dir: Path) -> ResumeState | None:
    """The state to continue an interrupted run from (`checkpoint.pth` loaded once, on the CPU), or None for a
    finished run. An evaluation of the model that training will replace is removed."""
    if not (run_dir / "args.json").exists():
        raise RunFolderError(f"--resume {run_dir} is not a run folder (no args.json)")
    if finished(run_dir):
        print(f"{run_dir} has finished (results.json exists): nothing to resume")
        return None
    for stale in ("results_test_only.json", "predictions_test_only.csv", "confusion_test_only.png"):
        (run_dir / stale).unlink(missing_ok=True)
    if (run_dir / "checkpoint.pth").exists():
        checkpoint = load_checkpoint(run_dir / "checkpoint.pth")
        return ResumeState(checkpoint["args"], checkpoint)
    print(f"{run_dir} has no checkpoint yet (stopped in its first epoch): training it from the start")
    return ResumeState(load_json(run_dir / "args.json"), None)
