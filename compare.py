"""Is one model ahead of another on the same test utterances, or within chance? A paired permutation test.

    python compare.py exp/cv_lstm_speaker_adam_8_<time> --versus exp/cv_baseline_speaker_<time>

The runs of A (the positional folders) and of B (--versus), experiment or run folders as ensemble.py reads them, are
paired by the test sessions they were tested on: on each fold, every run of A with every run of B (3 seeds against
the one deterministic baseline run: 3 pairs a fold). For UA, macro-F1 and WA (accuracy) it prints the mean of A and
of B over the pairs, the mean of A - B, in how many pairs A is ahead, level and behind, and a two-sided p-value of
the mean difference: an approximate paired permutation (randomisation) test (Noreen 1989; recommended for NLP and
speech metrics that are not means over utterances, such as macro-F1 and UA, by Dror et al., ACL 2018).
`--split val` compares the validation predictions instead (predictions_val.csv): whether a choice made on
validation rests on more than chance, without looking at the test sessions. Under the null hypothesis that A's and
B's predictions are exchangeable, each test utterance's predictions are swapped between A and B with probability
1/2, `--resamples` times, with one swap pattern for every pair of a fold (pairs that share a run, or seeds that
repeat each other, are not independent evidence); p = (1 + resamples whose mean difference is at least as far from
0 as the observed one) / (1 + resamples). On a skewed corpus a rare class has one to a few
test utterances a fold, and the UA of a fold moves by 1/(classes present) with each of them: the p-value says
whether a lead is more than that. Writes nothing.
"""
import numpy as np

from ensemble import Predictions, check_aligned, member_runs, runs_by_fold
from errors import RunFolderError, one_line_errors
from metric import resampled_scores
from options import Parser
from trained_run import VAL_PREDICTIONS

METRICS = ("ua", "macro_f1", "accuracy")
CELLS = 5_000_000  # resamples x utterances x classes scored at once (booleans): memory bounded on large folds
SPLITS = {"test": ("predictions.csv", "test"), "val": (VAL_PREDICTIONS, "validation")}  # --split: file, name


Pair = tuple[Predictions, Predictions]


def paired_runs(a: list[str], b: list[str], split: str = "test") -> list[list[Pair]]:
    """Per fold of A, the (A, B) predictions of `split` ("test" or "val") of every pair of runs tested on it;
    RunFolderError naming a fold of A that no run of B was tested on (or runs of one fold with other utterances or
    labels, or without validation predictions). B's folds that A lacks are named and left out."""
    folds_a, folds_b = runs_by_fold(member_runs(a)), runs_by_fold(member_runs(b))
    if unpaired := [fold for fold in folds_b if fold not in folds_a]:
        print(f"note: --versus runs tested on {'; '.join(unpaired)} have no run of A on the same sessions: left out")
    folds = []
    for fold, runs in folds_a.items():
        if fold not in folds_b:
            raise RunFolderError(f"{runs[0]} was tested on {fold}, which no run of --versus was tested on: compare "
                                 f"runs of the same folds (--versus folds: {'; '.join(folds_b)})")
        both = runs + folds_b[fold]
        file, name = SPLITS[split]
        predictions = [Predictions(run / file) for run in both]
        check_aligned(predictions, name, both)
        folds.append([(predictions[i], predictions[j]) for i in range(len(runs)) for j in range(len(runs), len(both))])
    return folds


def permutation_test(folds: list[list[Pair]], resamples: int = 10000, seed: int = 0) -> dict[str, dict]:
    """{metric: {a, b, difference (means over the pairs), ahead, level, behind (pairs), p}} of A against B, the
    pairs given per fold (paired_runs)."""
    rng = np.random.default_rng(seed)
    n_pairs = sum(map(len, folds))
    observed = {m: [] for m in METRICS}  # per pair: (A's score, B's score)
    null = {m: np.zeros(resamples) for m in METRICS}
    for fold in folds:
        labels, first = fold[0][0].labels, fold[0][0].first
        predicted = [(a.probs.argmax(1), b.probs.argmax(1)) for a, b in fold]  # class indices, once per pair
        for pred_a, pred_b in predicted:
            both = resampled_scores(np.stack([pred_a, pred_b]), labels, first)
            for m in METRICS:
                observed[m].append(both[m])
        chunk = max(1, CELLS // labels.size)
        for start in range(0, resamples, chunk):
            swap = rng.random((min(chunk, resamples - start), len(first))) < 0.5  # one pattern for the fold's pairs
            for pred_a, pred_b in predicted:
                one = resampled_scores(np.where(swap, pred_b, pred_a), labels, first)
                other = resampled_scores(np.where(swap, pred_a, pred_b), labels, first)
                for m in METRICS:
                    null[m][start:start + len(swap)] += (one[m] - other[m]) / n_pairs
    result = {}
    for m in METRICS:
        scores = np.array(observed[m])
        difference = scores[:, 0] - scores[:, 1]
        mean = float(difference.mean())
        # a tolerance, so that a resample that ties the observed difference counts as reaching it
        extreme = int((np.abs(null[m]) >= abs(mean) - 1e-12).sum())
        result[m] = {"a": float(scores[:, 0].mean()), "b": float(scores[:, 1].mean()), "difference": mean,
                     "ahead": int((difference > 0).sum()), "level": int((difference == 0).sum()),
                     "behind": int((difference < 0).sum()), "p": (1 + extreme) / (1 + resamples)}
    return result


def to_markdown(result: dict[str, dict], pairs: int, split: str = "test") -> str:
    lines = [f"{pairs} pairs of runs on the same folds, {SPLITS[split][1]} sessions", "",
             "| metric | A | B | A - B | pairs A ahead / level / behind | p (paired permutation) |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {m} | {r['a']:.3f} | {r['b']:.3f} | {r['difference']:+.3f} | {r['ahead']} / {r['level']} / "
              f"{r['behind']} | {r['p']:.4f} |" for m, r in result.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = Parser(description=__doc__)
    parser.add_argument("runs", nargs="+", help="model A: experiment folders (--cv/--seeds) and/or run folders")
    parser.add_argument("--versus", nargs="+", required=True, help="model B, the same kinds of folders")
    parser.add_argument("--resamples", type=int, default=10000, help="permutation resamples (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the resamples (default: %(default)s)")
    parser.add_argument("--split", choices=["test", "val"], default="test",
                        help="the test sessions' predictions or the validation sessions' (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.resamples < 1:
        parser.error("--resamples must be >= 1")
    with one_line_errors():
        folds = paired_runs(args.runs, args.versus, args.split)
        result = permutation_test(folds, args.resamples, args.seed)
    print(to_markdown(result, sum(map(len, folds)), args.split))
    return result


if __name__ == "__main__":
    main()
