"""What main.py and baseline.py share: the data and split flags, the session splits, the test
outputs of a run folder, and experiments of several runs (seeds x session folds) with a summary.

An experiment is one parent folder holding a normal run folder per (seed, fold), named `foldK`,
`seedS` or `seedS_foldK`, plus `runs.json` (the plan) and `summary.json` / `summary.md` (mean +-
sample std of every test metric over all its runs). It is resumable: finished runs are kept.
"""
import argparse
import copy
import fcntl
import json
import os
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from constants import CORPUS_CODES, DEFAULT_DATA_DIR, DEFAULT_TEXT_DIM, EMOTIONS, PROTOCOLS
from dataset import Corpus, parse_sessions
from preprocess import is_demo_corpus, preprocess
from readers import detect_corpus
from utils import SUMMARY_METRICS, atomic_path, make_run_dir, plot_confusion, split_data_dir, write_json, write_text


def add_data_args(p: argparse.ArgumentParser) -> None:
    """Flags with the same name and meaning in main.py and baseline.py."""
    a = p.add_argument
    a("--save_path", default="exp", help="folder that holds the run folders (default: %(default)s)")
    a("--data_dir", default=DEFAULT_DATA_DIR,
      help="KEMDy19 or KEMDy20 folder, or both separated by a comma to train on their union (sessions then read "
           "19_03, 20_03); if it is the default and empty, the synthetic demo corpus is made there "
           "(default: %(default)s)")
    a("--corpus", choices=["auto", *PROTOCOLS], default="auto",
      help="which corpus --data_dir holds; auto = from its annotation file names (default: %(default)s)")
    a("--cache_dir", default=None, metavar="DIR",
      help="where preprocessing's derived files (tables, embeddings, feature caches) are: DIR/<corpus folder name> "
           "instead of the corpus folder, e.g. for a corpus on read-only storage (default: the corpus folder)")
    a("--text_encoder", default=None, help="sentence encoder for preprocessing: skt/kobert-base-v1 (default for "
                                           "KEMDy19), a Hugging Face id or folder, or tfidf (default for the demo)")
    a("--speech_model", default=None, metavar="ID_OR_DIR",
      help="audio from this pretrained speech encoder's cached layer features (a Hugging Face id or local folder: "
           "wav2vec2, HuBERT, WavLM, data2vec-audio, XLS-R) instead of log-mel spectrograms (default: log-mel)")
    a("--text_dim", type=int, default=DEFAULT_TEXT_DIM, help="sentence embedding size (default: %(default)s)")
    a("--SorL", choices=["speaker", "listener"], default="speaker", help="whose emotion to predict (default: %(default)s)")
    a("--test_split", default=None, help="test sessions, e.g. [13,14,15,16] or 13,14,15,16 (default: the corpus's "
                                         "published test split: KEMDy19 13-16, KEMDy20 33-40)")
    a("--val_split", default="auto", help="validation sessions held out of training: a list, 'auto' (the two sessions "
                                          "before the test split) or 'none' (published protocol: keep the last epoch) "
                                          "(default: %(default)s)")
    a("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    a("--seeds", default=None, help="several seeds, e.g. 0,1,2: one run folder each in one experiment folder with a "
                                    "mean +- std summary; combines with --cv (default: only --seed)")
    a("--cv", action="store_true", help="run the session cross-validation folds (one run folder each, with a summary)")
    a("--cv_folds", default=None, help="test sessions of each fold, folds separated by ';' (default: the corpus's "
                                       "published 5 folds: KEMDy19 1-4;5-8;...;17-20, KEMDy20 1-8;...;33-40)")


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        raise SystemExit(f"error: --seeds '{text}' is not a list of integers like 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise SystemExit(f"error: --seeds '{text}' must list distinct seeds, like 0,1,2")
    return seeds


def session_label(key: int) -> int | str:
    """A session as shown: its number in one corpus, `19_03` for session 3 of KEMDy19 among several."""
    return f"{key // 100}_{key % 100:02d}" if key >= 100 else key


def split_record(train: list[int], val: list[int], test: list[int]) -> dict[str, list]:
    """The sessions of a run as results.json and the console show them."""
    return {name: [session_label(k) for k in keys] for name, keys in (("train", train), ("val", val), ("test", test))}


def format_split(keys: list[int]) -> str:
    return ",".join(str(session_label(k)) for k in keys)


def resolve_protocol(args: argparse.Namespace) -> list[list[int]]:
    """The session keys of --data_dir, grouped by corpus; fills --test_split and --cv_folds
    with the published splits when they are not given (several corpora: each corpus's own test sessions,
    and fold k = fold k of every corpus, e.g. KEMDy20 8k+1..8k+8 with KEMDy19 4k+1..4k+4). A listener run on
    a corpus without listener labels stops here, before any work."""
    folders = split_data_dir(args.data_dir)
    forced = getattr(args, "corpus", "auto")
    if len(folders) > 1 and forced != "auto":
        raise SystemExit("error: --corpus names the corpus of one folder; with several in --data_dir each is "
                         "recognised from its annotation files")
    kinds = [detect_corpus(folder, forced) for folder in folders]
    if len(folders) > 1 and len(set(kinds)) < len(kinds):
        raise SystemExit(f"error: --data_dir {args.data_dir}: two folders of the same corpus; give each corpus once")
    args.corpus = kinds[0] if len(kinds) == 1 else forced
    protocols = [PROTOCOLS[kind] for kind in kinds]
    prefix = [100 * CORPUS_CODES[kind] if len(kinds) > 1 else 0 for kind in kinds]
    groups = [[base + s for s in range(1, p.sessions + 1)] for p, base in zip(protocols, prefix)]
    if args.test_split is None:
        args.test_split = format_split([base + s for p, base in zip(protocols, prefix) for s in p.test_split])
    if args.cv_folds is None:
        args.cv_folds = ";".join(format_split([base + s for p, base in zip(protocols, prefix) for s in p.cv_folds[k]])
                                 for k in range(len(protocols[0].cv_folds)))
    unlabelled = [p.name for p in protocols if not p.listener]
    if args.SorL == "listener" and unlabelled:
        raise SystemExit(f"error: --SorL listener: {unlabelled[0]} ({args.data_dir}) annotates only the speaker's "
                         "emotion; use --SorL speaker")
    return groups


def parse_split(text: str, flag: str, groups: list[list[int]]) -> list[int]:
    """Session keys from a list like 13,14 (one corpus) or 19_13,20_33 (several); one-line error otherwise."""
    if len(groups) == 1:
        return parse_sessions(text, flag, len(groups[0]))
    known = {str(session_label(k)): k for group in groups for k in group}
    items = [s for s in re.split(r"[\s,]+", text.strip().strip("[]")) if s]
    bad = [s for s in items if s not in known]
    if not items or bad:
        raise SystemExit(f"error: {flag} '{text}' must name sessions of the corpora, like 19_13,20_33 "
                         f"(got {bad or 'none'})")
    return sorted({known[s] for s in items})


def split_sessions(args: argparse.Namespace) -> tuple[list[int], list[int], list[int]]:
    """(train, validation, test) session keys from --test_split and --val_split, within the corpus's sessions
    (`--val_split auto`: in each corpus, the two sessions just before its test sessions, wrapping around)."""
    groups = resolve_protocol(args)
    test = parse_split(args.test_split, "--test_split", groups)
    if args.val_split == "none":
        val = []
    elif args.val_split == "auto":
        val = []
        for group in groups:
            tested = [k for k in group if k in test]
            if tested:
                first = group.index(tested[0])
                before = [group[(first - 1 - k) % len(group)] for k in range(len(group))]
                val += [k for k in before if k not in test][:2]
        val = sorted(val)
    else:
        val = parse_split(args.val_split, "--val_split", groups)
        if set(val) & set(test):
            raise SystemExit(f"error: --val_split {args.val_split} overlaps --test_split {args.test_split}")
    train = [k for group in groups for k in group if k not in test and k not in val]
    return train, val, test


def prepare_data(args: argparse.Namespace) -> list[Path]:
    """Make the demo corpus if the default folder is empty, then preprocess every corpus folder (a no-op when
    up to date) -> the folders. Jobs that share a corpus (folds spread over GPUs) take turns (preprocess's lock)."""
    folders = split_data_dir(args.data_dir)
    if args.speech_model and Path(args.speech_model).is_dir():  # a local model folder, usable from anywhere
        args.speech_model = str(Path(args.speech_model).resolve())
    for data_dir in folders:
        if not (data_dir / "annotation").exists() and str(data_dir) == DEFAULT_DATA_DIR:
            from demo_corpus import make_demo_corpus
            print(f"No KEMDy19 corpus in {data_dir}: making the synthetic DEMO corpus there. Results on it say "
                  "nothing about KEMDy19; put the licensed corpus in its place for real numbers.")
            make_demo_corpus(data_dir, seed=0)
        preprocess(data_dir, args.text_encoder, args.text_dim, speech_model=args.speech_model,
                   corpus=args.corpus if len(folders) == 1 else "auto", cache_dir=args.cache_dir)
        if is_demo_corpus(data_dir):
            name = PROTOCOLS[detect_corpus(data_dir)].name
            print(f"NOTE: {data_dir} is the synthetic demo corpus, not {name}.")
    return folders


def write_test_outputs(run_dir: Path, corpus: Corpus, rows: np.ndarray, probs: np.ndarray, av_pred: np.ndarray,
                       metrics: dict, results_name: str, extra: dict) -> None:
    """results*.json ({"test": metrics, **extra}), predictions*.csv (one row per test utterance: Segment ID,
    label(s) as written, 7 probabilities, arousal/valence true and predicted) and confusion*.png."""
    table = pd.DataFrame({"Segment ID": corpus.table["Segment ID"].to_numpy()[rows],
                          "emotion": corpus.table["Emotion"].to_numpy()[rows]})
    for i, name in enumerate(EMOTIONS):
        table[name] = probs[:, i]
    av_true = corpus.arousal_valence[rows]
    table["arousal_true"], table["arousal_pred"] = av_true[:, 0], av_pred[:, 0]
    table["valence_true"], table["valence_pred"] = av_true[:, 1], av_pred[:, 1]
    with atomic_path(run_dir / results_name.replace("results", "predictions").replace(".json", ".csv")) as tmp:
        table.to_csv(tmp, index=False)
    write_json(run_dir / results_name, {"test": metrics, **extra})
    plot_confusion(metrics["confusion"], run_dir / results_name.replace("results", "confusion").replace(".json", ".png"),
                   f"test confusion ({run_dir.name})")


def is_experiment(args: argparse.Namespace) -> bool:
    return bool(args.cv or args.seeds)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim_run(folder: Path, name: str) -> str | None:
    """Take run `name` of an experiment for this process -> None, or the "host pid" of the job that has it.

    A claim is the file `.claims/<name>` naming the job's host and pid, taken under a lock on the folder,
    so several jobs (one per GPU) can work through one plan and no run is trained twice. The claim of a
    job that died on this host is taken over, so no run is lost either.
    """
    claims = folder / ".claims"
    claims.mkdir(exist_ok=True)
    path, mine = claims / name, f"{socket.gethostname()} {os.getpid()}"
    with open(claims / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        holder = path.read_text(encoding="utf-8").split() if path.exists() else []
        alive = len(holder) != 2 or holder[0] != socket.gethostname() or _pid_alive(int(holder[1]))
        if holder and holder != mine.split() and alive:
            return " ".join(holder)
        path.write_text(mine, encoding="utf-8")
    return None


def run_experiment(args: argparse.Namespace, name: str, train_run: Callable[[argparse.Namespace, Path], object],
                   continue_run: Callable[[Path], object] | None = None, overrides: dict | None = None) -> Path:
    """Every (seed, fold) of `args` as a run folder in one experiment folder, then the summary.

    `train_run(run_args, folder)` trains one run into an existing empty folder; `continue_run(folder)`,
    if given, continues a run interrupted after a checkpoint. With `args.resume` (an experiment folder)
    the saved plan is continued (with the `overrides` given, e.g. another --gpu_id): finished runs are
    kept, and a run stopped before its first checkpoint is renamed `<run>_interrupted_<time>` (never
    deleted) and trained again. Several jobs may continue one plan at once (see `claim_run`); the job
    that finds every run finished writes the summary. `args.plan_only` writes the plan and stops.
    """
    if args.resume:
        folder = Path(args.resume)
        if not (folder / "runs.json").exists():
            raise SystemExit(f"error: --resume {folder} is not an experiment folder (no runs.json)")
        saved = json.loads((folder / "runs.json").read_text(encoding="utf-8"))
        # Under the saved plan, this version's defaults: a flag added since the plan was written gets its default.
        args = argparse.Namespace(**{**vars(args), **saved["args"], **(overrides or {}), "resume": str(folder)})
        runs = saved["runs"]
    else:
        seeds = parse_seeds(args.seeds) if args.seeds else [args.seed]
        groups = resolve_protocol(args)
        folds = ([parse_split(f, "--cv_folds", groups) for f in args.cv_folds.split(";")] if args.cv
                 else [parse_split(args.test_split, "--test_split", groups)])
        runs = [{"name": "_".join(([f"seed{seed}"] if args.seeds else []) + ([f"fold{k}"] if args.cv else [])),
                 "seed": seed, "test_split": format_split(fold)}
                for seed in seeds for k, fold in enumerate(folds, 1)]
        prefix = ("cv_" if args.cv else "seeds_") + name
        prepare_data(args)  # bad data stops here, before an experiment folder exists
        folder = make_run_dir(args.save_path, prefix)
        write_json(folder / "runs.json", {"args": {**vars(args), "plan_only": False}, "runs": runs})
        if getattr(args, "plan_only", False):
            gpus = " ".join(str(g) for g in range(min(len(runs), 4)))
            print(f"plan of {len(runs)} runs written to {folder}; train them with one job per GPU, e.g. on "
                  f"{min(len(runs), 4)} GPUs\n  for g in {gpus}; do python main.py --resume {folder} --gpu_id $g & done; "
                  "wait\n(on CPU, add --device cpu; each job takes the runs no other job has)")
            return folder
    elsewhere = []
    for k, run in enumerate(runs, 1):
        run_dir = folder / run["name"]
        if (run_dir / "results.json").exists():
            print(f"{run['name']} (test {run['test_split']}) already finished: kept")
            continue
        holder = claim_run(folder, run["name"])
        if holder is not None:
            print(f"{run['name']} is being trained by another job (host and pid: {holder}): skipped")
            elsewhere.append(run["name"])
            continue
        if (run_dir / "results.json").exists():  # finished by another job between the check and the claim
            (folder / ".claims" / run["name"]).unlink(missing_ok=True)
            continue
        print(f"=== run {k}/{len(runs)}: {run['name']}, seed {run['seed']}, test sessions {run['test_split']} ===")
        try:
            if continue_run is not None and (run_dir / "checkpoint.pth").exists():
                continue_run(run_dir)
                continue
            if run_dir.exists():
                run_dir.rename(folder / f"{run['name']}_interrupted_{time.strftime('%Y%m%d-%H%M%S')}")
            run_dir.mkdir()
            run_args = copy.copy(args)
            run_args.seed, run_args.test_split = run["seed"], run["test_split"]
            run_args.cv, run_args.seeds = False, None
            train_run(run_args, run_dir)
        except KeyboardInterrupt:
            print(f"experiment interrupted in {run['name']}; continue the whole experiment (finished runs are kept) "
                  f"with the same script and --resume {folder}")
            raise
        finally:
            (folder / ".claims" / run["name"]).unlink(missing_ok=True)
    unfinished = [r["name"] for r in runs if not (folder / r["name"] / "results.json").exists()]
    if unfinished:  # trained by other jobs right now: the last of them writes the summary
        print(f"{len(unfinished)} runs are still being trained by other jobs ({', '.join(elsewhere)}); the job "
              f"that finishes last writes the summary (or run --resume {folder} once they are done)")
        return folder
    summary = summarize_runs(folder, runs)
    write_json(folder / "summary.json", summary)
    table = summary_markdown(summary)
    write_text(folder / "summary.md", table + "\n")
    print(table)
    print(f"summary: {folder / 'summary.json'}")
    return folder


def summarize_runs(folder: Path, runs: list[dict]) -> dict:
    """Mean and sample standard deviation over runs of every scalar test metric, and each run's values."""
    tests = [json.loads((folder / r["name"] / "results.json").read_text(encoding="utf-8"))["test"] for r in runs]
    per_run = [{**r, **{m: t[m] for m in SUMMARY_METRICS}} for r, t in zip(runs, tests)]
    values = {m: np.array([t[m] for t in tests]) for m in SUMMARY_METRICS}
    # Mean over the runs where the class has an F1 (None where no run's test split had or predicted it).
    scored = {e: [t["per_class"][e]["f1"] for t in tests if t["per_class"][e]["f1"] is not None] for e in EMOTIONS}
    per_class = {e: float(np.mean(f1s)) if f1s else None for e, f1s in scored.items()}
    return {"runs": per_run, "n_runs": len(runs), "n_seeds": len({r["seed"] for r in runs}),
            "n_folds": len({r["test_split"] for r in runs}),
            "mean": {m: float(v.mean()) for m, v in values.items()},
            "std": {m: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for m, v in values.items()},
            "mean_per_class_f1": per_class}


def summary_markdown(summary: dict) -> str:
    runs = summary["runs"]
    lines = ["| metric | mean ± std | " + " | ".join(r["name"] for r in runs) + " |",
             "| --- | --- | " + " | ".join("---" for _ in runs) + " |"]
    for m in SUMMARY_METRICS:
        lines.append(f"| {m} | {summary['mean'][m]:.3f} ± {summary['std'][m]:.3f} | "
                     + " | ".join(f"{r[m]:.3f}" for r in runs) + " |")
    return "\n".join(lines)
