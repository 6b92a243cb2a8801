"""Several finished runs evaluated as one model: the seeds of an experiment, several experiments, the baseline too.

    python ensemble.py exp/cv_lstm_speaker_adam_8_<time>                       # the seeds of each fold, averaged
    python ensemble.py exp/cv_lstm_<time> exp/cv_baseline_<time> --method stacking

Members are grouped by the sessions they were tested on (a fold): every run of the given experiment or run
folders that tested the same sessions is a member of that fold's ensemble. `average` takes the mean of the members'
class probabilities (and arousal/valence); `stacking` weights them, the weights chosen on the validation sessions
alone by greedy ensemble selection with replacement (Caruana et al., ICML 2004): starting from nothing, the member
whose addition most raises the validation score (main.py's model selection: macro-F1, and the CCCs where rated) is
added, again and again; a member's weight is the share of the rounds that chose it. The test rows are never read
while choosing. The challenge winners on mostly neutral speech all ensemble (Odyssey 2024: a 7-model vote;
Interspeech 2025: stacking of 12 models).

Writes a new folder `<save_path>/ensemble_<time>/`: `members.json` (the members and weights of every fold: what
predict.py reads), one folder per fold with results.json, predictions.csv, predictions_val.csv and confusion.png
(the schema of a run), and summary.json / summary.md (mean ± std over the folds); report.py lists it on a row of
its own.
"""
from pathlib import Path

import numpy as np
import pandas as pd

from errors import FlagError, RunFolderError, load_json, one_line_errors
from experiment import summarize_runs, summary_markdown
from metric import emotion_metrics, selection_score
from options import Parser
from trained_run import VAL_PREDICTIONS, finished
from utils import first_line, make_run_dir, plot_confusion, summary_table, write_json, write_text

MEMBERS = "members.json"
METHODS = ("average", "stacking")
AV_COLUMNS = ("arousal_pred", "valence_pred")
ROUNDS_PER_MEMBER = 4  # stacking: greedy selection rounds per member (a weight resolution of 1/(4 x members))


def member_runs(paths: list[str]) -> list[Path]:
    """The finished run folders of experiment folders (runs.json) and run folders, in the order given;
    RunFolderError naming a path that holds none."""
    runs = []
    for path in map(Path, paths):
        if (path / "runs.json").exists():
            plan = load_json(path / "runs.json")
            found = [path / r["name"] for r in plan["runs"] if finished(path / r["name"])]
        else:
            found = [path] if finished(path) else []
        if not found:
            raise RunFolderError(f"{path} holds no finished run (no results.json)")
        runs += found
    return runs


def corpus_of(run: Path) -> str:
    """What a run was trained and tested on, as its args.json records it: the corpus folders' names (a moved or
    copied corpus is the same corpus) and kind, whose emotion, and the label map."""
    args = load_json(run / "args.json")
    folders = ", ".join(Path(d).name for d in str(args.get("data_dir", "")).split(","))
    mapped = f", --label_map {args['label_map']}" if args.get("label_map") else ""
    return f"{folders} ({args.get('corpus')}, --SorL {args.get('SorL')}{mapped})"


def check_members(runs: list[Path], folds: dict[str, list[Path]]) -> None:
    """RunFolderError for a fold of an ensemble, a run given twice, runs of other corpora (or roles, or label maps),
    and runs that share no fold (each tested on other sessions: there is nothing to combine); a note where a fold has
    one member."""
    seen: dict[Path, Path] = {}
    for run in runs:
        if load_json(run / "results.json").get("model") == "ensemble":
            raise RunFolderError(f"{run} is a fold of an ensemble: give the folders of its members instead")
        if run.resolve() in seen:
            raise RunFolderError(f"{run} is given twice (also as {seen[run.resolve()]}): each run is one member")
        seen[run.resolve()] = run
    first = corpus_of(runs[0])
    for run in runs[1:]:
        if corpus_of(run) != first:
            raise RunFolderError(f"{run} was trained on {corpus_of(run)}, {runs[0]} on {first}: the members of an "
                                 "ensemble are runs of one corpus and one label set")
    alone = [fold for fold, members in folds.items() if len(members) == 1]
    if len(runs) > 1 and len(alone) == len(folds):
        raise RunFolderError(f"the runs share no fold: each was tested on other sessions ({'; '.join(folds)}); an "
                             "ensemble combines runs tested on the same sessions")
    if alone:
        print(f"note: {'the ensemble has' if len(runs) == 1 else 'on ' + '; '.join(alone) + ','} one member: its "
              "figures are that run's own")


def runs_by_fold(runs: list[Path]) -> dict[str, list[Path]]:
    """The runs grouped by the test sessions they were tested on (their --test_split), in the order given."""
    folds: dict[str, list[Path]] = {}
    for run in runs:
        # a run records its split in args.json, the fold of an ensemble folder in its results.json
        record = run / "args.json" if (run / "args.json").exists() else run / "results.json"
        folds.setdefault(str(load_json(record).get("test_split")), []).append(run)
    return folds


class Predictions:
    """A predictions CSV of a run (trained_run.write_predictions): its rows sorted by Segment ID, the class
    probabilities (rows, classes), arousal/valence predictions (rows, 2; NaN where the corpus has none), and what
    the metrics need: the labels as multi-hot, the first written label, the rated arousal/valence."""

    def __init__(self, path: Path):
        if not path.exists():
            raise RunFolderError(f"{path} is missing: the run was trained before runs wrote it, or it has no "
                                 "validation sessions (stacking and compare.py --split val need them)")
        try:
            table = pd.read_csv(path, keep_default_na=False, dtype={"Segment ID": str, "emotion": str})
        except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as error:
            raise RunFolderError(f"{path} is empty or damaged ({first_line(error)}): make the run's predictions "
                                 "again (python main.py --test_only RUN) or leave the run out") from None
        columns = list(table.columns)
        self.classes = tuple(c for c in columns[2:] if not c.startswith(("arousal_", "valence_")))
        if columns[:2] != ["Segment ID", "emotion"] or not self.classes or table.empty:
            raise RunFolderError(f"{path} is not a predictions table of a run (Segment ID, emotion and a probability "
                                 "per class, one row per utterance)")
        probs = table[list(self.classes)].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
        index = {c: i for i, c in enumerate(self.classes)}
        for row, (cell, finite) in enumerate(zip(table["emotion"], np.isfinite(probs).all(1))):
            unknown = [n for n in cell.split(";") if n and n not in index]
            if not finite or unknown or not cell.strip(";"):
                what = ("a probability is blank or not a number" if not finite else
                        f"label {(unknown or [cell])[0]!r} is not one of its classes ({', '.join(self.classes)})")
                raise RunFolderError(f"{path} line {row + 2}: {what}; the file was damaged or edited")
        order = np.argsort(table["Segment ID"].to_numpy(), kind="stable")
        table, probs = table.iloc[order].reset_index(drop=True), probs[order]
        self.ids = table["Segment ID"].to_numpy()
        self.probs = probs
        rated = all(c in table for c in AV_COLUMNS)
        self.av = (table[list(AV_COLUMNS)].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64) if rated
                   else np.full((len(table), 2), np.nan))
        self.av_true = (table[["arousal_true", "valence_true"]].apply(pd.to_numeric, errors="coerce")
                        .to_numpy(np.float64) if rated else np.full((len(table), 2), np.nan))
        self.labels = np.zeros_like(self.probs)
        self.first = np.zeros(len(table), dtype=int)
        for row, cell in enumerate(table["emotion"]):
            names = [n for n in cell.split(";") if n]
            self.labels[row, [index[n] for n in names]] = 1.0
            self.first[row] = index[names[0]]
        self.emotion = table["emotion"].to_numpy()

    def metrics(self, probs: np.ndarray, av: np.ndarray) -> dict:
        return emotion_metrics(probs, av, self.labels, self.first, self.av_true, self.classes)


def combine(members: list[Predictions], weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The weighted mean of the members' probabilities and arousal/valence (members without ratings left out of
    the latter)."""
    weights = np.asarray(weights, dtype=np.float64)
    probs = sum(w * m.probs for w, m in zip(weights, members)) / weights.sum()
    rated = [(w, m.av) for w, m in zip(weights, members) if w > 0 and np.isfinite(m.av).all()]
    av = (sum(w * a for w, a in rated) / sum(w for w, _ in rated)) if rated else members[0].av * np.nan
    return probs, av


def select_weights(members: list[Predictions], rounds: int) -> np.ndarray:
    """Greedy ensemble selection with replacement on the members' validation predictions: `rounds` times, the
    member whose addition gives the best validation score (ties: the earlier member) -> weights summing to 1."""
    counts = np.zeros(len(members))
    for _ in range(rounds):
        scores = [selection_score(members[0].metrics(*combine(members, counts + np.eye(len(members))[k])))
                  for k in range(len(members))]
        counts[int(np.argmax(scores))] += 1
    return counts / counts.sum()


def check_aligned(predictions: list[Predictions], what: str, runs: list[Path]) -> None:
    first = predictions[0]
    for p, run in zip(predictions[1:], runs[1:]):
        same = (p.classes == first.classes and np.array_equal(p.ids, first.ids)
                and np.array_equal(p.emotion, first.emotion))
        if not same:
            raise RunFolderError(f"{run} has other {what} utterances, classes or labels than {runs[0]}: the runs of "
                                 "one fold must be runs of one corpus, split and labels (--SorL, --label_map)")


def ensemble_fold(runs: list[Path], method: str) -> tuple[dict, Predictions, tuple, Predictions | None, tuple | None]:
    """One fold's ensemble of `runs` -> (record: members and weights, the test predictions and their combined
    (probs, av), the same for validation where every member has it)."""
    tests = [Predictions(run / "predictions.csv") for run in runs]
    check_aligned(tests, "test", runs)
    has_val = all((run / VAL_PREDICTIONS).exists() for run in runs)
    vals = [Predictions(run / VAL_PREDICTIONS) for run in runs] if has_val or method == "stacking" else None
    if vals is not None:
        check_aligned(vals, "validation", runs)
    weights = (select_weights(vals, ROUNDS_PER_MEMBER * len(runs)) if method == "stacking"
               else np.full(len(runs), 1 / len(runs)))
    models = [load_json(run / "results.json").get("model", "neural") for run in runs]
    record = {"members": [{"run": str(run.resolve()), "model": model, "weight": round(float(w), 6)}
                          for run, model, w in zip(runs, models, weights)]}
    return (record, tests[0], combine(tests, weights), vals[0] if vals else None,
            combine(vals, weights) if vals else None)


def _write_fold(folder: Path, record: dict, test: Predictions, combined: tuple, val: Predictions | None,
                val_combined: tuple | None, method: str, test_split: str) -> dict:
    folder.mkdir()
    metrics = test.metrics(*combined)
    for name, preds, (probs, av) in (("predictions.csv", test, combined),
                                     *(((VAL_PREDICTIONS, val, val_combined),) if val is not None else ())):
        table = pd.DataFrame({"Segment ID": preds.ids, "emotion": preds.emotion})
        for i, c in enumerate(preds.classes):
            table[c] = probs[:, i]
        if np.isfinite(preds.av_true).any():
            table["arousal_true"], table["arousal_pred"] = preds.av_true[:, 0], av[:, 0]
            table["valence_true"], table["valence_pred"] = preds.av_true[:, 1], av[:, 1]
        write_text(folder / name, table.to_csv(index=False))
    val_record = ({f"val_{k}": v for k, v in val.metrics(*val_combined).items() if not isinstance(v, (dict, list))}
                  if val is not None else {})
    write_json(folder / "results.json", {"test": metrics, "val": val_record, "model": "ensemble", "method": method,
                                         "test_split": test_split, **record})
    plot_confusion(metrics["confusion"], folder / "confusion.png", f"test confusion ({folder.parent.name}, "
                   f"{folder.name})", list(test.classes))
    return metrics


def run_ensemble(paths: list[str], method: str, save_path: str) -> Path:
    """The ensembles of every fold of the runs under `paths` (see the module's text) in a new folder."""
    if method not in METHODS:
        raise FlagError(f"--method {method}: choose {' or '.join(METHODS)}")
    runs = member_runs(paths)
    folds = runs_by_fold(runs)
    check_members(runs, folds)
    fitted = [ensemble_fold(members, method) for members in folds.values()]  # refusals before any folder
    classes = list(dict.fromkeys(test.classes for _, test, _, _, _ in fitted))
    if len(classes) > 1:
        raise RunFolderError(f"the runs' classes differ ({' vs '.join(', '.join(c) for c in classes)}): the members "
                             "of an ensemble are runs of one label set")
    folder = make_run_dir(save_path, "ensemble")
    plan, records = [], []
    for k, ((test_split, members), (record, test, combined, val, val_combined)) in enumerate(
            zip(folds.items(), fitted), 1):
        metrics = _write_fold(folder / f"fold{k}", record, test, combined, val, val_combined, method, test_split)
        plan.append({"name": f"fold{k}", "seed": None, "test_split": test_split})
        records.append({"test_split": test_split, **record})
        weights = ", ".join(f"{Path(m['run']).parent.name}/{Path(m['run']).name} {m['weight']:.2f}"
                            for m in record["members"])
        print(f"fold{k} (test {test_split}): {len(members)} members ({weights})")
        print(summary_table(metrics, f"ensemble, test {test_split}"))
    write_json(folder / MEMBERS, {"method": method, "sources": [str(Path(p).resolve()) for p in paths],
                                  "folds": records})
    write_json(folder / "runs.json", {"args": {"method": method, "sources": paths}, "runs": plan, "ensemble": True})
    summary = summarize_runs(folder, plan)
    write_json(folder / "summary.json", {**summary, "ensemble": {"method": method,
                                                                 "members_per_fold": [len(m) for m in folds.values()]}})
    table = summary_markdown(summary)
    write_text(folder / "summary.md", table + "\n")
    print(table)
    print(f"ensemble: {folder}")
    return folder


def main(argv: list[str] | None = None) -> Path:
    parser = Parser(description=__doc__)
    parser.add_argument("runs", nargs="+", help="experiment folders (--cv/--seeds) and/or run folders")
    parser.add_argument("--method", choices=METHODS, default="average",
                        help="average = the mean of the members; stacking = weights chosen on the validation "
                             "sessions (default: %(default)s)")
    parser.add_argument("--save_path", default="exp", help="where the ensemble folder is made (default: %(default)s)")
    args = parser.parse_args(argv)
    with one_line_errors():
        return run_ensemble(args.runs, args.method, args.save_path)


if __name__ == "__main__":
    main()
