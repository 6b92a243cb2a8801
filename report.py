"""Markdown (or CSV) tables of the test metrics of several runs, cross-validations and ensembles.

    python report.py exp/lstm_speaker_adam_8_* exp/cv_* exp/seeds_* exp/ensemble_* [--csv]

Single models and ensembles (ensemble.py) are never mixed: each gets a table of its own (a `kind` column in CSV).
Columns: the model (neural, baseline or ensemble), the arguments that differ between the runs (e.g. lam, loss,
beta, bidirectional), what the row is (`runs`: one run's seed and test sessions, an experiment's seeds x folds,
an ensemble's members), then instance P/R/F1, macro-F1, weighted-F1, accuracy (WA), UA (the mean of the per-class
recalls), CCC arousal and CCC valence ("–" where a corpus has no ratings); an experiment shows mean ± std over its
runs. Runs without results are listed as incomplete.
"""
import glob
import json
import sys
from pathlib import Path

import pandas as pd

from errors import RunFolderError, load_json
from options import Parser

REPORT_METRICS = ["instance_precision", "instance_recall", "instance_f1", "macro_f1", "weighted_f1", "accuracy",
                  "ua", "ccc_arousal", "ccc_valence"]
# Bookkeeping arguments that never explain a difference in results.
IGNORED_ARGS = {"save_path", "test_only", "test_path", "resume", "num_workers", "device", "gpu_id", "cv", "seeds",
                "seed", "test_split", "sr", "speech_layers", "speech_dim", "cache_dir", "allow_corpus_change"}


def _spread(mean: float | None, std: float | None = None) -> str:
    """"0.812" or "0.812 ± 0.020"; "–" where a run has no such figure (CCC without ratings, UA of older runs)."""
    if mean is None:
        return "–"
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"


def read_run(folder: Path) -> dict:
    """{'run', 'args', 'model', 'status', metrics...} of an experiment folder (runs.json) or a run folder (args.json)."""
    row = {"run": folder.name, "kind": "single", "model": ""}
    if (folder / "runs.json").exists():
        plan = load_json(folder / "runs.json")
        row["args"] = plan["args"]
        first = folder / plan["runs"][0]["name"] / "results.json"
        row["model"] = load_json(first).get("model", "neural") if first.exists() else ""
        if (folder / "summary.json").exists():
            summary = load_json(folder / "summary.json")
            folds = _count(summary["n_folds"], "fold")
            if "ensemble" in summary:
                row["kind"] = "ensemble"
                sizes = sorted(set(summary["ensemble"]["members_per_fold"]))
                row["runs"] = f"{summary['ensemble']['method']} of {'/'.join(map(str, sizes))} members x {folds}"
            else:
                row["runs"] = f"{_count(summary['n_seeds'], 'seed')} x {folds}"
            several = summary["n_runs"] > 1
            row.update({m: _spread(summary["mean"].get(m), summary["std"].get(m) if several else None)
                        for m in REPORT_METRICS})
        else:
            row["runs"] = "incomplete"
    elif (folder / "args.json").exists():
        row["args"] = load_json(folder / "args.json")
        if (folder / "results.json").exists():
            results = load_json(folder / "results.json")
            row["model"] = results.get("model", "neural")
            row["runs"] = f"seed {row['args'].get('seed', '')}, test {row['args'].get('test_split', '')}"
            row.update({m: _spread(results["test"].get(m)) for m in REPORT_METRICS})
        else:
            row["runs"] = "incomplete"
    else:
        row.update(args={}, runs="not a run folder")
    return row


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def read_run_or_say_why(folder: Path) -> dict:
    """read_run, or a row that names the damaged file: one bad folder never stops the report."""
    try:
        return read_run(folder)
    except (RunFolderError, KeyError, IndexError, TypeError) as error:
        reason = str(error) if isinstance(error, RunFolderError) else f"{folder}: missing field {error}"
        print(f"warning: {reason}; listed as damaged", file=sys.stderr)
        return {"run": folder.name, "kind": "single", "model": "", "args": {}, "runs": "damaged"}


def report(paths: list[str]) -> pd.DataFrame:
    folders = sorted({Path(p) for pattern in paths for p in (glob.glob(pattern) or [pattern])})
    rows = [read_run_or_say_why(f) for f in folders]
    keys = sorted({k for r in rows for k in r["args"]} - IGNORED_ARGS)
    # A column for each argument whose value differs among the runs that record it.
    differing = [k for k in keys if len({json.dumps(r["args"][k]) for r in rows if k in r["args"]}) > 1]
    table = pd.DataFrame([{"run": r["run"], "kind": r["kind"], "model": r["model"],
                           **{k: r["args"].get(k, "") for k in differing}, "runs": r["runs"],
                           **{m: r.get(m, "") for m in REPORT_METRICS}} for r in rows])
    return table.sort_values("kind", kind="stable", key=lambda kind: kind == "ensemble").reset_index(drop=True)


def to_markdown(table: pd.DataFrame) -> str:
    """One table of single models, then one of ensembles (where there are both, each under a heading)."""
    parts = []
    for kind, title in (("single", "single models"), ("ensemble", "ensembles")):
        rows = table[table["kind"] == kind].drop(columns="kind")
        if len(rows):
            lines = ["| " + " | ".join(rows.columns) + " |", "| " + " | ".join("---" for _ in rows.columns) + " |"]
            lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows.itertuples(index=False)]
            parts.append((f"{title}:\n" if table["kind"].nunique() > 1 else "") + "\n".join(lines))
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> str:
    parser = Parser(description=__doc__)
    parser.add_argument("runs", nargs="+", help="run or cross-validation folders (globs welcome)")
    parser.add_argument("--csv", action="store_true", help="print CSV instead of Markdown")
    args = parser.parse_args(argv)
    table = report(args.runs)
    text = table.to_csv(index=False) if args.csv else to_markdown(table)
    print(text)
    return text


if __name__ == "__main__":
    main()
