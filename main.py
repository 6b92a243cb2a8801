"""Train or evaluate the multimodal emotion model on KEMDy19/KEMDy20 (or the synthetic demo corpus).

    python main.py --SorL speaker                     # train; a new folder under exp/
    python main.py --test_only exp/<run folder>       # evaluate a saved run
    torchrun --nproc_per_node 4 main.py --SorL speaker --amp   # data-parallel on 4 GPUs
"""
import os

# oneDNN caches one convolution primitive per input shape. Clips of varying length make a new
# shape nearly every batch, and the default cache (1024 entries) grows CPU memory past 2 GB even on
# the demo; 128 entries keep the speed and bound the memory. Set before torch is imported.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "128")
if int(os.environ.get("RANK", "0")) > 0:  # data-parallel: only rank 0 shows progress (tqdm reads this at import)
    os.environ["TQDM_DISABLE"] = "1"

import argparse
import json
import sys
from contextlib import nullcontext, redirect_stdout
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader

from constants import EMOTIONS, SAMPLE_RATE
from dataset import ChunkBatchSampler, Corpus, WindowDataset
from engine import evaluate, train_one_epoch
from experiment import (add_data_args, is_experiment, prepare_data, run_experiment, split_record,
                        split_sessions, write_test_outputs)
from loss import EmotionLoss, class_balanced_weights
from metric import av_calibration, selection_score
from errors import CorpusError
from trained_run import build_model, check_corpus_unchanged, load_checkpoint, load_trained_model, save_corpus_record
from utils import (amp_dtype, append_jsonl, atomic_torch_save, broadcast, cache_folders, check_save_path,
                   init_distributed, make_run_dir, plot_curves, restore_rng_states, rng_states, set_seed, split_data_dir,
                   summary_table, write_json, write_text)

# Flags that may be given with --resume (e.g. a lower --lr after a divergence, more --epochs).
RESUME_OVERRIDES = ("lr", "epochs", "num_workers", "device", "gpu_id", "amp")
def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(p)
    a = p.add_argument
    a("--gpu_id", type=int, default=0, help="CUDA device index (default: %(default)s)")
    a("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto = CUDA when present (default: %(default)s)")
    a("--backbone", choices=["lstm", "gru"], default="lstm", help="recurrent backbone over the window (default: %(default)s)")
    a("--audio_dim", type=int, default=128, help="audio encoder output size; conv widths are dim/8..dim (default: %(default)s)")
    a("--audio_pool", choices=["bands", "mean"], default="bands",
      help="bands = mean and std over time per conv channel and frequency band; mean = average the frequency axis "
           "away, then mean and max over time (ablation) (default: %(default)s)")
    a("--hidden_size", type=int, default=128, help="recurrent hidden size (published: 512) (default: %(default)s)")
    a("--num_layers", type=int, default=2, help="recurrent layers (published: 4) (default: %(default)s)")
    a("--dropout", type=float, default=0.2, help="dropout in fusion, recurrent and arousal/valence layers (default: %(default)s)")
    a("--bidirectional", action="store_true", help="bidirectional recurrent backbone (default: off)")
    a("--no_cat", action="store_true", help="ablation: do not feed emotion probabilities to the arousal/valence trunk")
    a("--no_direct", action="store_true", help="ablation: the heads see only the last recurrent step, not also the "
                                               "target utterance's own features (the published model)")
    a("--freq_mask", type=int, default=20, help="SpecAugment: widest frequency mask in mel bands, 0 = off (default: %(default)s)")
    a("--time_mask", type=int, default=20, help="SpecAugment: widest time mask in frames, 0 = off (default: %(default)s)")
    a("--ws", type=int, default=8, help="window size: the utterance and ws-1 before it (default: %(default)s)")
    a("--sr", type=int, default=SAMPLE_RATE, help="audio sampling rate of the feature cache (default: %(default)s)")
    a("--batch_size", type=int, default=32, help="windows per batch (default: %(default)s)")
    a("--optim", choices=["sgd", "adam", "adamw", "adagrad"], default="adam",
      help="optimizer; adamw decouples --weight_decay from the gradient (default: %(default)s)")
    a("--loss", choices=["normal", "cbloss"], default="normal", help="normal = KLDiv + MSE; cbloss = class-balanced "
                                                                     "emotion term (default: %(default)s)")
    a("--av_loss", choices=["mse", "ccc"], default="mse",
      help="arousal/valence loss: mse (published) or 1 - CCC over the batch (default: %(default)s)")
    a("--av_calibration", choices=["val", "none"], default="val",
      help="val = after training, scale and shift arousal/valence so that their mean and std on the validation "
           "sessions match the ratings' (AVEC-style post-processing; identity without validation sessions); "
           "none = raw outputs. With --av_loss ccc it changes little: that loss already matches the spread "
           "(default: %(default)s)")
    a("--lam", type=float, default=0.66, help="weight of the emotion loss; 1-lam goes to arousal+valence (default: %(default)s)")
    a("--beta", type=float, default=0.99, help="class-balanced loss beta (default: %(default)s)")
    a("--lr", type=float, default=1e-3, help="learning rate (default: %(default)s)")
    a("--lr_decay", type=float, default=0.98, help="learning rate multiplier applied after every epoch (default: %(default)s)")
    a("--weight_decay", type=float, default=0.0, help="L2 weight decay (default: %(default)s)")
    a("--epochs", type=int, default=30, help="training epochs (published: 100) (default: %(default)s)")
    a("--ema", type=float, default=0.8, help="validate, select and test an exponential moving average of the weights "
                                             "over epochs with this decay, e.g. 0.8; 0 = the raw weights (default: %(default)s)")
    a("--patience", type=int, default=10, help="early stopping: stop after this many epochs without a better "
                                              "validation score, 0 = never (default: %(default)s)")
    a("--num_workers", type=int, default=0, help="DataLoader worker processes (default: %(default)s)")
    a("--amp", action="store_true", help="mixed precision on CUDA: bf16 where supported, else fp16 with a gradient "
                                        "scaler (default: float32; no effect on CPU)")
    a("--plan_only", action="store_true", help="with --cv/--seeds: write the experiment folder and its plan, train "
                                              "nothing; then start one `--resume <folder>` job per GPU")
    a("--resume", default=None, metavar="RUN", help="continue an interrupted run (exp/<run>) from its last checkpoint, "
                                                    "or an interrupted experiment (--cv/--seeds folder); only " + " ".join(
                                                        f"--{k}" for k in RESUME_OVERRIDES) + " may be given with it")
    a("--test_only", nargs="?", const="", default=None, metavar="RUN",
      help="evaluate a saved run (a folder under --save_path, or a path) instead of training")
    a("--test_path", default=None, help="the run to evaluate with --test_only (same as --test_only RUN)")
    a("--allow_corpus_change", action="store_true", help="--test_only on a corpus that differs from the one the run "
                                                         "was trained on: warn instead of refusing")
    p.set_defaults(speech_layers=0, speech_dim=0)  # not flags: the --speech_model cache's shape, set by train()
    return p


def check_args(args: argparse.Namespace) -> None:
    checks = [(args.ws >= 1, "--ws must be at least 1"), (0.0 <= args.lam <= 1.0, "--lam must be in [0, 1]"),
              (0.0 <= args.beta < 1.0, "--beta must be in [0, 1)"), (args.batch_size >= 1, "--batch_size must be >= 1"),
              (args.epochs >= 1, "--epochs must be >= 1"), (args.lr > 0, "--lr must be > 0"),
              (args.sr == SAMPLE_RATE, f"--sr: the feature cache is computed at {SAMPLE_RATE} Hz"),
              (args.audio_dim % 8 == 0 and args.audio_dim >= 8, "--audio_dim must be a multiple of 8"),
              (args.patience >= 0, "--patience must be >= 0"), (0.0 <= args.ema < 1.0, "--ema must be in [0, 1)"), (args.num_layers >= 1, "--num_layers must be >= 1"),
              (args.hidden_size >= 2, "--hidden_size must be >= 2"), (args.text_dim >= 1, "--text_dim must be >= 1"),
              (0.0 <= args.dropout < 1.0, "--dropout must be in [0, 1)"),
              (args.num_workers >= 0, "--num_workers must be >= 0"), (args.seed >= 0, "--seed must be >= 0"),
              (args.freq_mask >= 0 and args.time_mask >= 0, "--freq_mask and --time_mask must be >= 0"),
              (not args.plan_only or args.cv or args.seeds, "--plan_only goes with --cv and/or --seeds")]
    for ok, message in checks:
        if not ok:
            raise SystemExit(f"error: {message}")


def resolve_device(args: argparse.Namespace) -> torch.device:
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise SystemExit("error: --device cuda but no CUDA device is available")
        return torch.device(f"cuda:{args.gpu_id}")
    return torch.device("cpu")


def run_name(args: argparse.Namespace) -> str:
    return f"{args.backbone}_{args.SorL}_{args.optim}_{args.ws}"


def make_loader(corpus: Corpus, sessions: list[int], args: argparse.Namespace, train: bool,
                device: torch.device, split: str = "training", num_replicas: int = 1, rank: int = 0) -> DataLoader:
    dataset = WindowDataset(corpus, sessions, args.ws, train=train, seed=args.seed, split=split)
    sampler = ChunkBatchSampler(len(dataset), args.batch_size, chunk=args.ws, shuffle=train, seed=args.seed,
                                num_replicas=num_replicas, rank=rank)
    return DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=args.num_workers,
                      pin_memory=device.type == "cuda")


def make_optimizer(model: torch.nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    params, wd = model.parameters(), args.weight_decay
    if args.optim == "sgd":
        return torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=wd)
    if args.optim == "adagrad":
        return torch.optim.Adagrad(params, lr=args.lr, weight_decay=wd)
    if args.optim == "adamw":
        return torch.optim.AdamW(params, lr=args.lr, weight_decay=wd)
    return torch.optim.Adam(params, lr=args.lr, weight_decay=wd)


def train(args: argparse.Namespace, run_dir: Path | None = None, resume_overrides: dict | None = None) -> Path:
    """Train a new run (in a new folder unless `run_dir` is given) or, given `resume_overrides` (the flags
    given with --resume, possibly none), continue the run in `run_dir` from its last checkpoint: same
    model, optimizer, scheduler, best-so-far and RNG states."""
    resume = resume_overrides is not None
    device = resolve_device(args)
    # Under torchrun (WORLD_SIZE > 1) one process per GPU (or CPU process with gloo): each trains on its
    # share of the batches, gradients are averaged (DDP); rank 0 alone validates, tests and writes files.
    rank, world_size, local_rank = init_distributed(device.type)
    if world_size > 1 and device.type == "cuda":
        device = torch.device(f"cuda:{local_rank}")
    main_process = rank == 0
    set_seed(args.seed)
    train_sessions, val_sessions, test_sessions = split_sessions(args)
    if run_dir is None and main_process:
        check_save_path(args.save_path)  # before any data is prepared
    # Data first: bad data stops the start before a run folder exists, so none is left behind.
    # Absolute: the run evaluates and resumes from any directory. Rank 0 prepares, the others wait for it.
    folders = broadcast(prepare_data(args) if main_process else None, world_size)
    args.data_dir = ",".join(str(folder.resolve()) for folder in folders)
    args.cache_dir = str(Path(args.cache_dir).resolve()) if args.cache_dir else None
    corpus = Corpus(cache_folders(args.data_dir, args.cache_dir), args.SorL, args.text_dim, args.speech_model)
    args.speech_layers, args.speech_dim = corpus.speech_shape()  # the model's input shape, saved with its args
    train_loader = make_loader(corpus, train_sessions, args, True, device, num_replicas=world_size, rank=rank)
    val_loader = make_loader(corpus, val_sessions, args, False, device, "--val_split") if val_sessions else None
    test_loader = make_loader(corpus, test_sessions, args, False, device, "--test_split")
    run_dir = broadcast(run_dir or (make_run_dir(args.save_path, run_name(args)) if main_process else None), world_size)
    if not resume and main_process:  # a resumed run keeps its args.json; the checkpoints carry --resume overrides
        try:
            write_json(run_dir / "args.json", vars(args))
            save_corpus_record(run_dir, corpus, args)
        except OSError as error:
            raise SystemExit(f"error: cannot write the run folder {run_dir}: {error.strerror}") from None
    shown = split_record(train_sessions, val_sessions, test_sessions)
    print(f"run folder: {run_dir}\nsessions: train {shown['train']}, val {shown['val'] or 'none'}, test {shown['test']}")
    if world_size > 1:
        print(f"data-parallel over {world_size} processes: {world_size} x {args.batch_size} windows per step")

    model = build_model(args)
    train_rows = np.flatnonzero(np.isin(corpus.sessions, train_sessions))
    if not args.speech_model:  # log-mel bands are standardised with the training sessions' statistics
        mean, std = corpus.mel_statistics(train_rows)
        model.audio.mel_mean.copy_(torch.from_numpy(mean))
        model.audio.mel_std.copy_(torch.from_numpy(std))
    model.to(device)
    # DDP gives every process rank 0's initial weights; dropout and SpecAugment then draw per process.
    train_model = model
    if world_size > 1:
        torch.manual_seed(args.seed + rank)
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    dtype = amp_dtype(device, args.amp)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    class_weights = None
    if args.loss == "cbloss":
        class_weights = class_balanced_weights(corpus.labels[train_rows].sum(0), args.beta)
        print("class-balanced weights:", dict(zip(EMOTIONS, class_weights.round(decimals=3).tolist())))
    loss_fn = EmotionLoss(args.lam, class_weights, args.av_loss).to(device)
    optimizer = make_optimizer(model, args)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=args.lr_decay)
    # Weights averaged over epochs (an exponential moving average, buffers included): what is validated,
    # selected and tested. It smooths the epoch-to-epoch swings of a model trained on a small corpus.
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(args.ema), use_buffers=True) if args.ema else None
    scored = ema.module if ema is not None else model

    log_path = run_dir / "log.jsonl"
    log, best_score, best_epoch, best_val, first_epoch = [], -np.inf, 0, {}, 1
    if resume and (run_dir / "checkpoint.pth").exists():
        checkpoint = load_checkpoint(run_dir / "checkpoint.pth", device)
        model.load_state_dict(checkpoint["model"])
        if ema is not None:
            ema.load_state_dict(checkpoint["ema"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if scaler is not None and checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        best_score, best_epoch, best_val = checkpoint["best_score"], checkpoint["best_epoch"], checkpoint["best_val"]
        first_epoch = checkpoint["epoch"] + 1
        restore_rng_states(checkpoint["rng"])  # rank 0's states
        if world_size > 1:  # each process its own dropout and SpecAugment draws again
            torch.manual_seed(args.seed + rank + world_size * checkpoint["epoch"])
        if "lr" in resume_overrides:  # e.g. after a divergence: continue with a lower learning rate
            for group in optimizer.param_groups:
                group["lr"] = args.lr
        print(f"resuming {run_dir} after epoch {checkpoint['epoch']} (best epoch so far {best_epoch})")
    if resume and log_path.exists() and main_process:  # epochs logged after the last checkpoint are trained again
        log = [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines() if line.strip()]
        log = [r for r in log if r["epoch"] < first_epoch]
        write_text(log_path, "".join(json.dumps(r) + "\n" for r in log))

    try:
        for epoch in range(first_epoch, args.epochs + 1):
            # Checked before the epoch, so that a run resumed after its early stop does not train on.
            if val_loader is not None and args.patience and epoch - 1 - best_epoch >= args.patience:
                print(f"early stop after epoch {epoch - 1}: no better validation score in {args.patience} epochs")
                break
            train_loader.sampler.epoch = train_loader.dataset.epoch = epoch
            record = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
            try:
                record.update(train_one_epoch(train_model, train_loader, loss_fn, optimizer, device, epoch, dtype, scaler))
            except FloatingPointError as error:
                last = f"{run_dir / 'checkpoint.pth'} (epoch {epoch - 1})" if epoch > 1 else "none (first epoch)"
                raise SystemExit(f"error: {error}. Last good checkpoint: {last}. Resume with a lower learning rate: "
                                 f"python main.py --resume {run_dir} --lr {optimizer.param_groups[0]['lr'] / 10:g}") from None
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            if not main_process:  # rank 0 validates; the others need only its choice (for early stopping)
                best_epoch = broadcast(None, world_size)
                continue
            improved = val_loader is None
            if val_loader is not None:
                val_metrics, _ = evaluate(scored, val_loader, device, desc=f"epoch {epoch} val", dtype=dtype)
                record.update({f"val_{k}": v for k, v in val_metrics.items() if not isinstance(v, (dict, list))})
                record["val_score"] = selection_score(val_metrics)
                improved = record["val_score"] > best_score
            if improved:
                best_score, best_epoch = record.get("val_score", 0.0), epoch
                best_val = {k: v for k, v in record.items() if k.startswith("val_")}
            broadcast(best_epoch, world_size)
            record["seconds"] = record["train_seconds"]
            append_jsonl(log_path, record)
            log.append(record)
            checkpoint = {"model": model.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                          "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict(), "epoch": epoch, "args": vars(args),
                          "best_score": best_score, "best_epoch": best_epoch, "best_val": best_val, "rng": rng_states(),
                          "features": corpus.audio_settings, "scaler": scaler.state_dict() if scaler else None}
            if improved:
                atomic_torch_save({**checkpoint, "model": scored.state_dict()}, run_dir / "best.pth")
            atomic_torch_save(checkpoint, run_dir / "checkpoint.pth")  # last: it marks the epoch as done
            val_text = f", val macro-F1 {record['val_macro_f1']:.3f} score {record['val_score']:.3f}" if val_loader else ""
            print(f"epoch {epoch}: loss {record['train_loss']:.4f}{val_text}{' *' if improved and val_loader else ''}")
    except KeyboardInterrupt:
        done = f"epoch {epoch - 1} is the last saved" if epoch > 1 else "no epoch was finished"
        print(f"\ninterrupted during epoch {epoch} ({done}); continue with: python main.py --resume {run_dir}")
        raise
    if not main_process:
        return run_dir
    plot_curves(log, run_dir / "curves.png", best_epoch)

    best = load_checkpoint(run_dir / "best.pth", device)
    model.load_state_dict(best["model"])
    calibration = {}
    if args.av_calibration == "val" and val_loader is not None:
        calibration = calibrate_av(model, val_loader, device, dtype)
        atomic_torch_save({**best, "model": model.state_dict()}, run_dir / "best.pth")
    metrics, outputs = evaluate(model, test_loader, device, desc="test", dtype=dtype)
    write_test_outputs(run_dir, corpus, outputs["rows"], outputs["probs"], outputs["av"], metrics, "results.json",
                       {"model": "neural", "best_epoch": best_epoch, "val": best_val, "sessions": shown,
                        "processes": world_size, **calibration, **speech_record(model, corpus)})
    print(f"best epoch {best_epoch} (by {'validation score' if val_loader else 'last epoch, --val_split none'})")
    print(summary_table(metrics, f"test {shown['test']}"))
    print(f"results: {run_dir / 'results.json'}")
    return run_dir


def calibrate_av(model: torch.nn.Module, val_loader: DataLoader, device: torch.device,
                 dtype: torch.dtype | None) -> dict:
    """Fit the model's arousal/valence scale and shift on the validation sessions' raw outputs (from the
    identity map, so that fitting again, e.g. on a resumed run, gives the same map); -> its record."""
    model.reset_av_calibration()
    _, outputs = evaluate(model, val_loader, device, desc="calibrate", dtype=dtype)
    scale, shift = av_calibration(outputs["av_true"], outputs["av"])
    model.set_av_calibration(torch.from_numpy(scale).float(), torch.from_numpy(shift).float())
    return {"av_calibration": {name: {"scale": round(float(scale[k]), 4), "shift": round(float(shift[k]), 4)}
                               for k, name in enumerate(("arousal", "valence"))}}


def speech_record(model: torch.nn.Module, corpus: Corpus) -> dict:
    """For a --speech_model run: the encoder (id, revision) and the learned weight of each of its layers."""
    if not corpus.speech_shape()[0]:
        return {}
    return {"speech_model": corpus.audio_settings,
            "speech_layer_weights": [round(w, 4) for w in model.audio.layer_weights().tolist()]}


def resume_run(run_dir: Path, overrides: dict) -> Path:
    """Continue an interrupted run with its saved arguments (and the allowed `overrides`)."""
    if not (run_dir / "args.json").exists():
        raise SystemExit(f"error: --resume {run_dir} is not a run folder (no args.json)")
    if (run_dir / "results.json").exists():
        print(f"{run_dir} has finished (results.json exists): nothing to resume")
        return run_dir
    for stale in ("results_test_only.json", "predictions_test_only.csv", "confusion_test_only.png"):
        (run_dir / stale).unlink(missing_ok=True)  # an evaluation of a model that training will replace
    checkpoint_path = run_dir / "checkpoint.pth"
    if checkpoint_path.exists():  # its args hold the overrides of any earlier --resume
        saved = load_checkpoint(checkpoint_path)["args"]
    else:
        saved = json.loads((run_dir / "args.json").read_text(encoding="utf-8"))
        print(f"{run_dir} has no checkpoint yet (stopped in its first epoch): training it from the start")
    args = argparse.Namespace(**{**vars(get_parser().parse_args([])), **saved, **overrides, "resume": str(run_dir)})
    check_args(args)
    return train(args, run_dir, resume_overrides=overrides)


def find_run(args: argparse.Namespace) -> Path:
    name = args.test_only or args.test_path
    if not name:
        raise SystemExit("error: --test_only needs a run folder: --test_only exp/<run> or --test_path <run>")
    run_dir = next((p for p in (Path(name), Path(args.save_path) / name) if p.exists()), None)
    if run_dir is None:
        raise SystemExit(f"error: --test_only {name}: no such run folder (nor {Path(args.save_path) / name})")
    missing = [f for f in ("args.json", "best.pth") if not (run_dir / f).exists()]
    if not run_dir.is_dir() or missing:
        raise SystemExit(f"error: {run_dir} is not a finished run folder (missing {', '.join(missing) or 'folder'})")
    if not (run_dir / "results.json").exists():
        raise SystemExit(f"error: {run_dir} did not finish training (no results.json), so its best.pth is not the "
                         f"run's model; finish it first: python main.py --resume {run_dir}")
    return run_dir


def evaluate_run(args: argparse.Namespace) -> dict:
    run_dir = find_run(args)
    device = resolve_device(args)
    model, saved, checkpoint = load_trained_model(run_dir / "best.pth", device)
    _, _, test_sessions = split_sessions(saved)
    missing = [folder for folder in split_data_dir(saved.data_dir) if not (folder / "annotation").is_dir()]
    if missing:
        raise SystemExit(f"error: the corpus of {run_dir.name} is not at {missing[0]} any more; --test_only needs it "
                         "(predict.py needs only the run folder)")
    prepare_data(saved)
    check_corpus_unchanged(run_dir, saved, args.allow_corpus_change)
    corpus = Corpus(cache_folders(saved.data_dir, saved.cache_dir), saved.SorL, saved.text_dim, saved.speech_model)
    test_loader = make_loader(corpus, test_sessions, saved, False, device, "--test_split")
    metrics, outputs = evaluate(model, test_loader, device, desc="test", dtype=amp_dtype(device, saved.amp))
    write_test_outputs(run_dir, corpus, outputs["rows"], outputs["probs"], outputs["av"], metrics,
                       "results_test_only.json", {"model": "neural", "best_epoch": checkpoint["best_epoch"],
                                                  **speech_record(model, corpus)})
    print(summary_table(metrics, f"test {test_sessions} ({run_dir.name})"))
    print(f"results: {run_dir / 'results_test_only.json'}")
    return metrics


def explicit_flags(argv: list[str]) -> dict:
    """The flags given on the command line (not defaults), with their values."""
    parser = get_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS  # absent flags then stay out of the namespace
    parser._defaults.clear()  # and so do the derived values of set_defaults
    return vars(parser.parse_args(argv))


def main(argv: list[str] | None = None) -> None:
    quiet = int(os.environ.get("RANK", "0")) > 0  # data-parallel: rank 0 speaks for all processes
    try:
        with redirect_stdout(open(os.devnull, "w")) if quiet else nullcontext():
            try:
                dispatch(sys.argv[1:] if argv is None else argv)
            except CorpusError as error:
                raise SystemExit(f"error: {error}") from None
    except KeyboardInterrupt:  # the resume command was printed where the run was interrupted
        raise SystemExit(130) from None
    except SystemExit as stop:
        if quiet and stop.code not in (0, None):  # rank 0 has printed the same one-line error
            raise SystemExit(1) from None
        raise
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def dispatch(argv: list[str]) -> None:
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
        overrides = {k: given[k] for k in RESUME_OVERRIDES if k in given}
        if (run_path / "runs.json").exists():
            check_not_distributed("an experiment (--resume of a --cv/--seeds folder)")
            run_experiment(args, "", train, lambda run_dir: resume_run(run_dir, overrides), overrides)
        else:
            resume_run(run_path, overrides)
    elif is_experiment(args):
        check_not_distributed("--cv/--seeds")
        run_experiment(args, run_name(args), train, lambda run_dir: resume_run(run_dir, {}))
    else:
        train(args)


def check_not_distributed(what: str) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise SystemExit(f"error: {what} under torchrun: spread the runs over GPUs with one process each instead "
                         "(python main.py --cv ... --plan_only, then one `--resume <folder> --gpu_id K` per GPU)")


if __name__ == "__main__":
    main()
