"""Train or evaluate the multimodal emotion model on KEMDy19 (or the synthetic demo corpus).

    python main.py --SorL speaker                     # train; a new folder under exp/
    python main.py --test_only exp/<run folder>       # evaluate a saved run
"""
import os

# oneDNN caches one convolution primitive per input shape. Clips of varying length make a new
# shape nearly every batch, and the default cache (1024 entries) grows CPU memory past 2 GB even on
# the demo; 128 entries keep the speed and bound the memory. Set before torch is imported.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "128")

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from constants import CV_FOLDS, DEFAULT_DATA_DIR, DEFAULT_TEXT_DIM, EMOTIONS, NUM_SESSIONS, SAMPLE_RATE
from dataset import ChunkBatchSampler, Corpus, WindowDataset, parse_sessions
from engine import evaluate, train_one_epoch
from loss import EmotionLoss, class_balanced_weights
from metric import selection_score
from model import EmotionModel
from preprocess import CorpusError, feature_settings, is_demo_corpus, preprocess
from utils import (SUMMARY_METRICS, append_jsonl, atomic_path, atomic_torch_save, make_run_dir, plot_confusion,
                   plot_curves, restore_rng_states, rng_states, set_seed, summary_table, write_json, write_text)

# Flags that may be given with --resume (e.g. a lower --lr after a divergence, more --epochs).
RESUME_OVERRIDES = ("lr", "epochs", "num_workers", "device", "gpu_id")
# Arguments that define the model's shape: --test_only rebuilds exactly these from the checkpoint.
MODEL_ARGS = ("text_dim", "audio_dim", "hidden_size", "num_layers", "bidirectional", "backbone", "no_cat", "dropout")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--gpu_id", type=int, default=0, help="CUDA device index (default: %(default)s)")
    a("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto = CUDA when present (default: %(default)s)")
    a("--save_path", default="exp", help="folder that holds the run folders (default: %(default)s)")
    a("--data_dir", default=DEFAULT_DATA_DIR,
      help="KEMDy19 folder; if it is the default and empty, the synthetic demo corpus is made there (default: %(default)s)")
    a("--text_encoder", default=None, help="sentence encoder for preprocessing: skt/kobert-base-v1 (default for "
                                           "KEMDy19), a Hugging Face id or folder, or tfidf (default for the demo)")
    a("--backbone", choices=["lstm", "gru"], default="lstm", help="recurrent backbone over the window (default: %(default)s)")
    a("--text_dim", type=int, default=DEFAULT_TEXT_DIM, help="sentence embedding size (default: %(default)s)")
    a("--audio_dim", type=int, default=256, help="audio encoder output size; conv widths are dim/8..dim (default: %(default)s)")
    a("--hidden_size", type=int, default=512, help="recurrent hidden size (default: %(default)s)")
    a("--num_layers", type=int, default=4, help="recurrent layers (default: %(default)s)")
    a("--dropout", type=float, default=0.2, help="dropout in fusion, recurrent and arousal/valence layers (default: %(default)s)")
    a("--bidirectional", action="store_true", help="bidirectional recurrent backbone (default: off)")
    a("--no_cat", action="store_true", help="ablation: do not feed emotion probabilities to the arousal/valence trunk")
    a("--ws", type=int, default=8, help="window size: the utterance and ws-1 before it (default: %(default)s)")
    a("--SorL", choices=["speaker", "listener"], default="speaker", help="whose emotion to predict (default: %(default)s)")
    a("--sr", type=int, default=SAMPLE_RATE, help="audio sampling rate of the feature cache (default: %(default)s)")
    a("--test_split", default="13,14,15,16", help="test sessions, e.g. [13,14,15,16] or 13,14,15,16 (default: %(default)s)")
    a("--val_split", default="auto", help="validation sessions held out of training: a list, 'auto' (the two sessions "
                                          "before the test split) or 'none' (published protocol: keep the last epoch) "
                                          "(default: %(default)s)")
    a("--batch_size", type=int, default=64, help="windows per batch (default: %(default)s)")
    a("--optim", choices=["sgd", "adam", "adagrad"], default="adam", help="optimizer (default: %(default)s)")
    a("--loss", choices=["normal", "cbloss"], default="normal", help="normal = KLDiv + MSE; cbloss = class-balanced "
                                                                     "emotion term (default: %(default)s)")
    a("--lam", type=float, default=0.66, help="weight of the emotion loss; 1-lam goes to arousal+valence (default: %(default)s)")
    a("--beta", type=float, default=0.99, help="class-balanced loss beta (default: %(default)s)")
    a("--lr", type=float, default=1e-3, help="learning rate (default: %(default)s)")
    a("--lr_decay", type=float, default=0.98, help="learning rate multiplier applied after every epoch (default: %(default)s)")
    a("--weight_decay", type=float, default=0.0, help="L2 weight decay (default: %(default)s)")
    a("--epochs", type=int, default=100, help="training epochs (default: %(default)s)")
    a("--num_workers", type=int, default=0, help="DataLoader worker processes (default: %(default)s)")
    a("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    a("--cv", action="store_true", help="run the session cross-validation folds (each a run folder in exp/cv_<...>/)")
    a("--cv_folds", default=";".join(",".join(map(str, f)) for f in CV_FOLDS),
      help="test sessions of each fold, folds separated by ';' (default: the published 5 folds %(default)s)")
    a("--resume", default=None, metavar="RUN", help="continue an interrupted run (exp/<run>) from its last checkpoint, "
                                                    "or an interrupted --cv folder; only " + " ".join(
                                                        f"--{k}" for k in RESUME_OVERRIDES) + " may be given with it")
    a("--test_only", nargs="?", const="", default=None, metavar="RUN",
      help="evaluate a saved run (a folder under --save_path, or a path) instead of training")
    a("--test_path", default=None, help="the run to evaluate with --test_only (same as --test_only RUN)")
    return p


def check_args(args: argparse.Namespace) -> None:
    checks = [(args.ws >= 1, "--ws must be at least 1"), (0.0 <= args.lam <= 1.0, "--lam must be in [0, 1]"),
              (0.0 <= args.beta < 1.0, "--beta must be in [0, 1)"), (args.batch_size >= 1, "--batch_size must be >= 1"),
              (args.epochs >= 1, "--epochs must be >= 1"), (args.lr > 0, "--lr must be > 0"),
              (args.sr == SAMPLE_RATE, f"--sr: the feature cache is computed at {SAMPLE_RATE} Hz"),
              (args.audio_dim % 8 == 0 and args.audio_dim >= 8, "--audio_dim must be a multiple of 8")]
    for ok, message in checks:
        if not ok:
            raise SystemExit(f"error: {message}")


def resolve_device(args: argparse.Namespace) -> torch.device:
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise SystemExit("error: --device cuda but no CUDA device is available")
        return torch.device(f"cuda:{args.gpu_id}")
    return torch.device("cpu")


def split_sessions(args: argparse.Namespace) -> tuple[list[int], list[int], list[int]]:
    test = parse_sessions(args.test_split, "--test_split")
    if args.val_split == "none":
        val = []
    elif args.val_split == "auto":  # the two sessions just before the test fold, wrapping around
        before = [(test[0] - 1 - k - 1) % NUM_SESSIONS + 1 for k in range(NUM_SESSIONS)]
        val = sorted([s for s in before if s not in test][:2])
    else:
        val = parse_sessions(args.val_split, "--val_split")
        if set(val) & set(test):
            raise SystemExit(f"error: --val_split {val} overlaps --test_split {test}")
    train = [s for s in range(1, NUM_SESSIONS + 1) if s not in test and s not in val]
    return train, val, test


def prepare_data(args: argparse.Namespace) -> Path:
    """Make the demo corpus if the default folder is empty, then preprocess (a no-op when up to date)."""
    data_dir = Path(args.data_dir)
    if not (data_dir / "annotation").exists() and args.data_dir == DEFAULT_DATA_DIR:
        from demo_corpus import make_demo_corpus
        print(f"No KEMDy19 corpus in {data_dir}: making the synthetic DEMO corpus there. Results on it say "
              "nothing about KEMDy19; put the licensed corpus in its place for real numbers.")
        make_demo_corpus(data_dir, seed=0)
    try:
        preprocess(data_dir, args.text_encoder, args.text_dim)
    except CorpusError as error:
        raise SystemExit(f"error: {error}") from None
    if is_demo_corpus(data_dir):
        print("NOTE: training on the synthetic demo corpus, not KEMDy19.")
    return data_dir


def make_loader(corpus: Corpus, sessions: list[int], args: argparse.Namespace, train: bool,
                device: torch.device, split: str = "training") -> DataLoader:
    dataset = WindowDataset(corpus, sessions, args.ws, train=train, seed=args.seed, split=split)
    sampler = ChunkBatchSampler(len(dataset), args.batch_size, chunk=args.ws, shuffle=train, seed=args.seed)
    return DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=args.num_workers,
                      pin_memory=device.type == "cuda")


def build_model(args: argparse.Namespace) -> EmotionModel:
    return EmotionModel(text_dim=args.text_dim, audio_dim=args.audio_dim, hidden_size=args.hidden_size,
                        num_layers=args.num_layers, bidirectional=args.bidirectional, backbone=args.backbone,
                        emotion_concat=not args.no_cat, dropout=args.dropout)


def make_optimizer(model: torch.nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    params, wd = model.parameters(), args.weight_decay
    if args.optim == "sgd":
        return torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=wd)
    if args.optim == "adagrad":
        return torch.optim.Adagrad(params, lr=args.lr, weight_decay=wd)
    return torch.optim.Adam(params, lr=args.lr, weight_decay=wd)


def write_test_outputs(run_dir: Path, corpus: Corpus, metrics: dict, outputs: dict, results_name: str,
                       extra: dict) -> None:
    rows = outputs["rows"]
    table = pd.DataFrame({"Segment ID": corpus.table["Segment ID"].to_numpy()[rows],
                          "emotion": corpus.table["Emotion"].to_numpy()[rows]})
    for i, name in enumerate(EMOTIONS):
        table[name] = outputs["probs"][:, i]
    table["arousal_true"], table["arousal_pred"] = outputs["av_true"][:, 0], outputs["av"][:, 0]
    table["valence_true"], table["valence_pred"] = outputs["av_true"][:, 1], outputs["av"][:, 1]
    with atomic_path(run_dir / results_name.replace("results", "predictions").replace(".json", ".csv")) as tmp:
        table.to_csv(tmp, index=False)
    write_json(run_dir / results_name, {"test": metrics, **extra})
    plot_confusion(metrics["confusion"], run_dir / results_name.replace("results", "confusion").replace(".json", ".png"),
                   f"test confusion ({run_dir.name})")


def train(args: argparse.Namespace, run_dir: Path | None = None, resume_overrides: dict | None = None) -> Path:
    """Train a new run (in a new folder unless `run_dir` is given) or, given `resume_overrides` (the flags
    given with --resume, possibly none), continue the run in `run_dir` from its last checkpoint: same
    model, optimizer, scheduler, best-so-far and RNG states."""
    resume = resume_overrides is not None
    device = resolve_device(args)
    set_seed(args.seed)
    train_sessions, val_sessions, test_sessions = split_sessions(args)
    run_dir = run_dir or make_run_dir(args.save_path, f"{args.backbone}_{args.SorL}_{args.optim}_{args.ws}")
    if not resume:  # a resumed run keeps its args.json; the checkpoints carry any --resume overrides
        try:  # an unwritable run folder fails here, before any data is prepared or any epoch is trained
            write_json(run_dir / "args.json", vars(args))
        except OSError as error:
            raise SystemExit(f"error: cannot write the run folder {run_dir}: {error.strerror}") from None
    print(f"run folder: {run_dir}\nsessions: train {train_sessions}, val {val_sessions or 'none'}, test {test_sessions}")
    data_dir = prepare_data(args)
    corpus = Corpus(data_dir, args.SorL, args.text_dim)
    train_loader = make_loader(corpus, train_sessions, args, True, device)
    val_loader = make_loader(corpus, val_sessions, args, False, device, "--val_split") if val_sessions else None
    test_loader = make_loader(corpus, test_sessions, args, False, device, "--test_split")

    model = build_model(args)
    train_rows = np.flatnonzero(np.isin(corpus.sessions, train_sessions))
    mean, std = corpus.mel_statistics(train_rows)
    model.audio.mel_mean.copy_(torch.from_numpy(mean))
    model.audio.mel_std.copy_(torch.from_numpy(std))
    model.to(device)
    class_weights = None
    if args.loss == "cbloss":
        class_weights = class_balanced_weights(corpus.labels[train_rows].sum(0), args.beta)
        print("class-balanced weights:", dict(zip(EMOTIONS, class_weights.round(decimals=3).tolist())))
    loss_fn = EmotionLoss(args.lam, class_weights).to(device)
    optimizer = make_optimizer(model, args)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=args.lr_decay)

    log_path = run_dir / "log.jsonl"
    log, best_score, best_epoch, best_val, first_epoch = [], -np.inf, 0, {}, 1
    if resume and (run_dir / "checkpoint.pth").exists():
        checkpoint = torch.load(run_dir / "checkpoint.pth", map_location=device, weights_only=True)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        best_score, best_epoch, best_val = checkpoint["best_score"], checkpoint["best_epoch"], checkpoint["best_val"]
        first_epoch = checkpoint["epoch"] + 1
        restore_rng_states(checkpoint["rng"])
        if "lr" in resume_overrides:  # e.g. after a divergence: continue with a lower learning rate
            for group in optimizer.param_groups:
                group["lr"] = args.lr
        print(f"resuming {run_dir} after epoch {checkpoint['epoch']} (best epoch so far {best_epoch})")
    if resume and log_path.exists():  # epochs logged after the last checkpoint are trained again
        log = [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines() if line.strip()]
        log = [r for r in log if r["epoch"] < first_epoch]
        write_text(log_path, "".join(json.dumps(r) + "\n" for r in log))

    for epoch in range(first_epoch, args.epochs + 1):
        train_loader.sampler.epoch = train_loader.dataset.epoch = epoch
        record = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
        try:
            record.update(train_one_epoch(model, train_loader, loss_fn, optimizer, device, epoch))
        except FloatingPointError as error:
            last = f"{run_dir / 'checkpoint.pth'} (epoch {epoch - 1})" if epoch > 1 else "none (first epoch)"
            raise SystemExit(f"error: {error}. Last good checkpoint: {last}. Resume with a lower learning rate: "
                             f"python main.py --resume {run_dir} --lr {optimizer.param_groups[0]['lr'] / 10:g}") from None
        scheduler.step()
        improved = val_loader is None
        if val_loader is not None:
            val_metrics, _ = evaluate(model, val_loader, device, desc=f"epoch {epoch} val")
            record.update({f"val_{k}": v for k, v in val_metrics.items() if not isinstance(v, (dict, list))})
            record["val_score"] = selection_score(val_metrics)
            improved = record["val_score"] > best_score
        if improved:
            best_score, best_epoch = record.get("val_score", 0.0), epoch
            best_val = {k: v for k, v in record.items() if k.startswith("val_")}
        record["seconds"] = record["train_seconds"]
        append_jsonl(log_path, record)
        log.append(record)
        checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                      "scheduler": scheduler.state_dict(), "epoch": epoch, "args": vars(args),
                      "best_score": best_score, "best_epoch": best_epoch, "best_val": best_val, "rng": rng_states(),
                      "features": feature_settings()}
        if improved:
            atomic_torch_save(checkpoint, run_dir / "best.pth")
        atomic_torch_save(checkpoint, run_dir / "checkpoint.pth")  # last: it marks the epoch as done
        val_text = f", val macro-F1 {record['val_macro_f1']:.3f} score {record['val_score']:.3f}" if val_loader else ""
        print(f"epoch {epoch}: loss {record['train_loss']:.4f}{val_text}{' *' if improved and val_loader else ''}")
    plot_curves(log, run_dir / "curves.png")

    model.load_state_dict(torch.load(run_dir / "best.pth", map_location=device, weights_only=True)["model"])
    metrics, outputs = evaluate(model, test_loader, device, desc="test")
    write_test_outputs(run_dir, corpus, metrics, outputs, "results.json",
                       {"best_epoch": best_epoch, "val": best_val, "sessions": {
                           "train": train_sessions, "val": val_sessions, "test": test_sessions}})
    print(f"best epoch {best_epoch} (by {'validation score' if val_loader else 'last epoch, --val_split none'})")
    print(summary_table(metrics, f"test {test_sessions}"))
    print(f"results: {run_dir / 'results.json'}")
    return run_dir


def resume_run(run_dir: Path, overrides: dict) -> Path:
    """Continue an interrupted run with its saved arguments (and the allowed `overrides`)."""
    if not (run_dir / "args.json").exists():
        raise SystemExit(f"error: --resume {run_dir} is not a run folder (no args.json)")
    if (run_dir / "results.json").exists():
        print(f"{run_dir} has finished (results.json exists): nothing to resume")
        return run_dir
    checkpoint_path = run_dir / "checkpoint.pth"
    if checkpoint_path.exists():  # its args hold the overrides of any earlier --resume
        saved = torch.load(checkpoint_path, map_location="cpu", weights_only=True)["args"]
    else:
        saved = json.loads((run_dir / "args.json").read_text(encoding="utf-8"))
        print(f"{run_dir} has no checkpoint yet (stopped in its first epoch): training it from the start")
    args = argparse.Namespace(**{**vars(get_parser().parse_args([])), **saved, **overrides, "resume": str(run_dir)})
    check_args(args)
    return train(args, run_dir, resume_overrides=overrides)


def run_cv(args: argparse.Namespace) -> Path:
    """Train every fold (a normal run folder foldK/ each) inside one parent folder, then summarise."""
    if args.resume:
        cv_dir = Path(args.resume)
        if not (cv_dir / "cv.json").exists():
            raise SystemExit(f"error: --resume {cv_dir} is not a cross-validation folder (no cv.json)")
        saved = json.loads((cv_dir / "cv.json").read_text(encoding="utf-8"))
        args = argparse.Namespace(**{**saved["args"], "resume": str(cv_dir)})
        folds = saved["folds"]
    else:
        folds = [parse_sessions(f, "--cv_folds") for f in args.cv_folds.split(";")]
        cv_dir = make_run_dir(args.save_path, f"cv_{args.backbone}_{args.SorL}_{args.optim}_{args.ws}")
        write_json(cv_dir / "cv.json", {"args": vars(args), "folds": folds})
    for k, fold in enumerate(folds, 1):
        fold_dir = cv_dir / f"fold{k}"
        if (fold_dir / "results.json").exists():
            print(f"fold {k} (test {fold}) already finished: kept")
            continue
        print(f"=== fold {k}/{len(folds)}: test sessions {fold} ===")
        if (fold_dir / "checkpoint.pth").exists():  # interrupted after an epoch: continue it
            resume_run(fold_dir, {})
            continue
        if fold_dir.exists():  # interrupted before its first checkpoint: keep it aside, train the fold again
            fold_dir.rename(cv_dir / f"fold{k}_interrupted_{time.strftime('%Y%m%d-%H%M%S')}")
        fold_dir.mkdir()
        fold_args = copy.copy(args)
        fold_args.test_split = ",".join(map(str, fold))
        train(fold_args, fold_dir)
    summary = summarize_folds([cv_dir / f"fold{k}" for k in range(1, len(folds) + 1)])
    write_json(cv_dir / "summary.json", summary)
    table = ["| metric | mean ± std | " + " | ".join(f"fold {k}" for k in range(1, len(folds) + 1)) + " |",
             "| --- | --- | " + " | ".join("---" for _ in folds) + " |"]
    for name in SUMMARY_METRICS:
        table.append(f"| {name} | {summary['mean'][name]:.3f} ± {summary['std'][name]:.3f} | "
                     + " | ".join(f"{f[name]:.3f}" for f in summary["folds"]) + " |")
    write_text(cv_dir / "summary.md", "\n".join(table) + "\n")
    print("\n".join(table))
    print(f"summary: {cv_dir / 'summary.json'}")
    return cv_dir


def summarize_folds(fold_dirs: list[Path]) -> dict:
    """Mean and sample standard deviation over folds of every scalar test metric."""
    folds = [json.loads((d / "results.json").read_text(encoding="utf-8"))["test"] for d in fold_dirs]
    folds = [{k: v for k, v in f.items() if k in SUMMARY_METRICS} for f in folds]
    values = {k: np.array([f[k] for f in folds]) for k in SUMMARY_METRICS}
    return {"folds": folds, "mean": {k: float(v.mean()) for k, v in values.items()},
            "std": {k: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for k, v in values.items()},
            "n_folds": len(folds)}


def find_run(args: argparse.Namespace) -> Path:
    name = args.test_only or args.test_path
    if not name:
        raise SystemExit("error: --test_only needs a run folder: --test_only exp/<run> or --test_path <run>")
    run_dir = Path(name) if Path(name).exists() else Path(args.save_path) / name
    missing = [f for f in ("args.json", "best.pth") if not (run_dir / f).exists()]
    if not run_dir.is_dir() or missing:
        raise SystemExit(f"error: {run_dir} is not a finished run folder (missing {', '.join(missing) or 'folder'})")
    return run_dir


def load_trained_model(checkpoint_path: Path, device: torch.device) -> tuple[EmotionModel, argparse.Namespace, dict]:
    """Rebuild exactly the saved model from the arguments inside its checkpoint -> (model, args, checkpoint)."""
    checkpoint = torch.load(checkpoint_path, map_location=device, weights_only=True)
    missing = [k for k in MODEL_ARGS if k not in checkpoint["args"]]
    if missing:
        raise SystemExit(f"error: {checkpoint_path} lacks the model arguments {missing}; "
                         "it was saved by an incompatible version")
    if checkpoint.get("features", feature_settings()) != feature_settings():
        raise SystemExit(f"error: {checkpoint_path} was trained on features {checkpoint['features']}, "
                         f"this code computes {feature_settings()}")
    args = argparse.Namespace(**{**vars(get_parser().parse_args([])), **checkpoint["args"]})
    model = build_model(args).to(device)
    model.load_state_dict(checkpoint["model"])
    return model.eval(), args, checkpoint


def evaluate_run(args: argparse.Namespace) -> dict:
    run_dir = find_run(args)
    device = resolve_device(args)
    model, saved, checkpoint = load_trained_model(run_dir / "best.pth", device)
    _, _, test_sessions = split_sessions(saved)
    corpus = Corpus(prepare_data(saved), saved.SorL, saved.text_dim)
    test_loader = make_loader(corpus, test_sessions, saved, False, device, "--test_split")
    metrics, outputs = evaluate(model, test_loader, device, desc="test")
    write_test_outputs(run_dir, corpus, metrics, outputs, "results_test_only.json",
                       {"best_epoch": checkpoint["best_epoch"]})
    print(summary_table(metrics, f"test {test_sessions} ({run_dir.name})"))
    print(f"results: {run_dir / 'results_test_only.json'}")
    return metrics


def explicit_flags(argv: list[str]) -> dict:
    """The flags given on the command line (not defaults), with their values."""
    parser = get_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS  # absent flags then stay out of the namespace
    return vars(parser.parse_args(argv))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = get_parser().parse_args(argv)
    check_args(args)
    if args.test_only is not None or args.test_path:
        evaluate_run(args)
    elif args.resume:
        given = explicit_flags(argv)
        extra = sorted(set(given) - set(RESUME_OVERRIDES) - {"resume"})
        if extra:
            raise SystemExit(f"error: --resume continues a run with its saved arguments; only "
                             f"{' '.join('--' + k for k in RESUME_OVERRIDES)} may be given with it, not "
                             f"{' '.join('--' + k for k in extra)}")
        run_path = Path(args.resume)
        if (run_path / "cv.json").exists():
            run_cv(args)
        else:
            resume_run(run_path, {k: given[k] for k in RESUME_OVERRIDES if k in given})
    elif args.cv:
        run_cv(args)
    else:
        train(args)


if __name__ == "__main__":
    main()
