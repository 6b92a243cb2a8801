"""One Markdown (or CSV) table of the test metrics of several runs and cross-validations.

    python report.py exp/lstm_speaker_adam_8_* exp/cv_* [--csv]

Columns: the arguments that differ between the runs (e.g. lam, loss, beta, bidirectional),
then instance P/R/F1, macro-F1, weighted-F1, accuracy, CCC arousal and CCC valence; a
cross-validation shows mean ± std over its folds. Runs without results are listed as incomplete.
"""
import argparse
import glob
import json
from pathlib import Path

import pandas as pd

REPORT_METRICS = ["instance_precision", "instance_recall", "instance_f1", "macro_f1", "weighted_f1", "accuracy",
                  "ccc_arousal", "ccc_valence"]
# Bookkeeping arguments that never explain a difference in results.
IGNORED_ARGS = {"save_path", "test_only", "test_path", "resume", "num_workers", "device", "gpu_id", "cv"}


def read_run(folder: Path) -> dict:
    """{'run', 'args', metrics...}: a CV folder (cv.json) or a run folder (args.json); 'status' says which."""
    row = {"run": folder.name}
    if (folder / "cv.json").exists():
        row["args"] = json.loads((folder / "cv.json").read_text(encoding="utf-8"))["args"]
        if (folder / "summary.json").exists():
            summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
            row["status"] = f"{summary['n_folds']}-fold CV"
            row.update({m: f"{summary['mean'][m]:.3f} ± {summary['std'][m]:.3f}" for m in REPORT_METRICS})
        else:
            row["status"] = "incomplete CV"
    elif (folder / "args.json").exists():
        row["args"] = json.loads((folder / "args.json").read_text(encoding="utf-8"))
        if (folder / "results.json").exists():
            test = json.loads((folder / "results.json").read_text(encoding="utf-8"))["test"]
            row["status"] = "test " + str(row["args"].get("test_split", ""))
            row.update({m: f"{test[m]:.3f}" for m in REPORT_METRICS})
        else:
            row["status"] = "incomplete"
    else:
        row.update(args={}, status="not a run folder")
    return row


def report(paths: list[str]) -> pd.DataFrame:
    folders = sorted({Path(p) for pattern in paths for p in (glob.glob(pattern) or [pattern])})
    rows = [read_run(f) for f in folders]
    keys = sorted({k for r in rows for k in r["args"]} - IGNORED_ARGS)
    # A column for each argument whose value differs among the runs that record it.
    differing = [k for k in keys if len({json.dumps(r["args"][k]) for r in rows if k in r["args"]}) > 1]
    table = pd.DataFrame([{"run": r["run"], **{k: r["args"].get(k, "") for k in differing}, "status": r["status"],
                           **{m: r.get(m, "") for m in REPORT_METRICS}} for r in rows])
    return table


def to_markdown(table: pd.DataFrame) -> str:
    header = "| " + " | ".join(table.columns) + " |"
    lines = [header, "| " + " | ".join("---" for _ in table.columns) + " |"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run or cross-validation folders (globs welcome)")
    parser.add_argument("--csv", action="store_true", help="print CSV instead of Markdown")
    args = parser.parse_args(argv)
    table = report(args.runs)
    text = table.to_csv(index=False) if args.csv else to_markdown(table)
    print(text)
    return text


if __name__ == "__main__":
    main()
