"""Experiments of several runs (seeds x session folds) with a summary, for main.py and baseline.py.

An experiment is one parent folder holding a normal run folder per (seed, fold), named `foldK`,
`seedS` or `seedS_foldK`, plus `runs.json` (the plan) and `summary.json` / `summary.md` (mean +-
sample std of every test metric over all its runs). It is resumable: finished runs are kept.
"""
import argparse
import fcntl
import os
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from errors import FlagError, RunFolderError, load_json
from options import check_fitted, modality_check, parse_imbalance, run_arguments
from protocol import prepare_data, resolve_data
from trained_run import finished
from utils import SUMMARY_METRICS, figure, make_run_dir, write_json, write_text


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        raise FlagError(f"--seeds '{text}' is not a list of integers like 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise FlagError(f"--seeds '{text}' must list distinct seeds, like 0,1,2")
    return seeds


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


def _plan(args: argparse.Namespace, name: str) -> tuple[Path, argparse.Namespace, list[dict]]:
    """A new experiment's folder and plan (`runs.json`: the arguments, data flags resolved, and one run per seed
    and fold); or, with --resume, the saved plan under this version's defaults (a flag added since the plan was
    written gets its default) and the `overrides` given."""
    if args.resume:
        folder = Path(args.resume)
        if not (folder / "runs.json").exists():
            raise RunFolderError(f"--resume {folder} is not an experiment folder (no runs.json)")
        saved = load_json(folder / "runs.json")
        if saved.get("ensemble"):  # its summary is ensemble.py's, and a resume would overwrite it
            raise RunFolderError(f"--resume {folder} is an ensemble folder (ensemble.py), which trains nothing and has "
                                 "nothing to resume; run ensemble.py again on its members to make it anew")
        return folder, run_arguments(saved["args"], {"resume": str(folder)}, defaults=args), saved["runs"]
    seeds = parse_seeds(args.seeds) if args.seeds else [args.seed]
    spec = resolve_data(args)
    folds = spec.cv_folds if args.cv else [spec.test]
    runs = [{"name": "_".join(([f"seed{seed}"] if args.seeds else []) + ([f"fold{k}"] if args.cv else [])),
             "seed": seed, "test_split": spec.format(fold)} for seed in seeds for k, fold in enumerate(folds, 1)]
    # Every check of a single run's start, for each run, before an experiment folder exists: flags, then the data.
    run_specs = [resolve_data(argparse.Namespace(**{**vars(args), "test_split": run["test_split"]})) for run in runs]
    if hasattr(args, "imbalance"):  # (main.py's flag; baseline.py has none)
        imbalance = parse_imbalance(args.imbalance)
        for run_spec in run_specs:
            check_fitted(imbalance, run_spec.val, args.val_split)
    prepare_data(spec, modality_check(args.modalities))
    labelled = replace(spec, functionals=(), feature_norm="training").corpus()
    for run_spec in run_specs:
        run_spec.check_split(labelled.sessions, labelled.first_label)
    folder = make_run_dir(args.save_path, ("cv_" if args.cv else "seeds_") + name)
    write_json(folder / "runs.json", {"args": {**vars(args), **spec.flags(), "plan_only": False}, "runs": runs})
    return folder, args, runs


def _run_one(folder: Path, run: dict, args: argparse.Namespace, train_run: Callable, continue_run: Callable | None):
    """Train one planned run into its folder, which the run makes once its checks have passed (a run stopped before
    its first checkpoint is renamed, never deleted, and trained again), or continue it from its checkpoint."""
    run_dir = folder / run["name"]
    try:
        if continue_run is not None and (run_dir / "checkpoint.pth").exists():
            continue_run(run_dir)
            return
        if run_dir.exists():
            run_dir.rename(folder / f"{run['name']}_interrupted_{time.strftime('%Y%m%d-%H%M%S')}")
        train_run(argparse.Namespace(**{**vars(args), "seed": run["seed"], "test_split": run["test_split"],
                                        "cv": False, "seeds": None}), run_dir)
    except KeyboardInterrupt:
        print(f"experiment interrupted in {run['name']}; continue the whole experiment (finished runs are kept) "
              f"with the same script and --resume {folder}")
        raise
    finally:
        (folder / ".claims" / run["name"]).unlink(missing_ok=True)


def run_experiment(args: argparse.Namespace, name: str, train_run: Callable[[argparse.Namespace, Path], object],
                   continue_run: Callable[[Path], object] | None = None, overrides: dict | None = None) -> Path:
    """Every (seed, fold) of `args` as a run folder in one experiment folder, then the summary.

    `train_run(run_args, folder)` trains one run into `folder`, which it makes (utils.open_run_dir);
    `continue_run(folder)`, if given, continues a run interrupted after a checkpoint. With `args.resume` (an
    experiment folder) the saved plan is continued (with the `overrides` given, e.g. another --gpu_id): finished
    runs are kept, and a run stopped before its first checkpoint is renamed `<run>_interrupted_<time>` (never
    deleted) and trained again. Several jobs may continue one plan at once (see `claim_run`); the job
    that finds every run finished writes the summary. `args.plan_only` writes the plan and stops.
    """
    folder, args, runs = _plan(args, name)
    args = argparse.Namespace(**{**vars(args), **(overrides or {})})
    if getattr(args, "plan_only", False):  # (main.py's flag; baseline.py has none)
        gpus = " ".join(str(g) for g in range(min(len(runs), 4)))
        print(f"plan of {len(runs)} runs written to {folder}; train them with one job per GPU, e.g. on "
              f"{min(len(runs), 4)} GPUs\n  for g in {gpus}; do python main.py --resume {folder} --gpu_id $g & done; "
              "wait\n(on CPU, add --device cpu; each job takes the runs no other job has)")
        return folder
    elsewhere = []
    for k, run in enumerate(runs, 1):
        if finished(folder / run["name"]):
            print(f"{run['name']} (test {run['test_split']}) already finished: kept")
            continue
        holder = claim_run(folder, run["name"])
        if holder is not None:
            print(f"{run['name']} is being trained by another job (host and pid: {holder}): skipped")
            elsewhere.append(run["name"])
            continue
        if finished(folder / run["name"]):  # finished by another job between check and claim
            (folder / ".claims" / run["name"]).unlink(missing_ok=True)
            continue
        print(f"=== run {k}/{len(runs)}: {run['name']}, seed {run['seed']}, test sessions {run['test_split']} ===")
        _run_one(folder, run, args, train_run, continue_run)
    unfinished = [r["name"] for r in runs if not finished(folder / r["name"])]
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


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample std over the runs that have the figure (None where none has: e.g. CCC without ratings)."""
    present = np.array([v for v in values if v is not None], dtype=float)
    if not len(present):
        return None, None
    return float(present.mean()), float(present.std(ddof=1)) if len(present) > 1 else 0.0


def summarize_runs(folder: Path, runs: list[dict]) -> dict:
    """Mean and sample standard deviation over runs of every scalar test metric, and each run's values."""
    tests = [load_json(folder / r["name"] / "results.json")["test"] for r in runs]
    per_run = [{**r, **{m: t.get(m) for m in SUMMARY_METRICS}} for r, t in zip(runs, tests)]
    stats = {m: _mean_std([t.get(m) for t in tests]) for m in SUMMARY_METRICS}
    # Mean over the runs where the class has an F1 (None where no run's test split had or predicted it).
    classes = list(dict.fromkeys(c for t in tests for c in t["per_class"]))
    per_class = {c: _mean_std([t["per_class"].get(c, {}).get("f1") for t in tests])[0] for c in classes}
    return {"runs": per_run, "n_runs": len(runs), "n_seeds": len({r["seed"] for r in runs}),
            "n_folds": len({r["test_split"] for r in runs}),
            "mean": {m: mean for m, (mean, _) in stats.items()}, "std": {m: std for m, (_, std) in stats.items()},
            "mean_per_class_f1": per_class}


def summary_markdown(summary: dict) -> str:
    runs = summary["runs"]
    lines = ["| metric | mean ± std | " + " | ".join(r["name"] for r in runs) + " |",
             "| --- | --- | " + " | ".join("---" for _ in runs) + " |"]
    for m in SUMMARY_METRICS:
        spread = "–" if summary["mean"][m] is None else f"{summary['mean'][m]:.3f} ± {summary['std'][m]:.3f}"
        lines.append(f"| {m} | {spread} | " + " | ".join(figure(r[m]) for r in runs) + " |")
    return "\n".join(lines)
