"""The field's classical baseline: utterance-level functionals into linear models.

    python baseline.py --SorL speaker                        # eGeMAPSv02 + log-mel band statistics + text
    python baseline.py --SorL speaker --cv --seeds 0,1,2     # same protocol as main.py
    python baseline.py --audio_features compare              # ComParE_2016 (6,373 functionals)
    python baseline.py --speech_model ID_OR_DIR              # a pretrained speech encoder's layers, averaged

Audio: the --functionals the network reads (functionals.py: openSMILE's eGeMAPSv02, Eyben et al. 2016, or
ComParE_2016, and/or the mean and std of every log-mel band over the voiced frames; --audio_features names others),
or a pretrained speech encoder's pooled layers (--speech_model, see speech_features.py), as speaker z-scores with
--feature_norm speaker (the default, as for the network). Text: the same sentence embeddings the neural run uses.
Each block is standardised with training statistics; emotion is a class-weighted logistic regression (or linear
SVM) on the first written label, arousal and valence are ridge regressions. C and alpha are chosen on the validation
sessions (never the test sessions). The run folder has the same results.json / predictions.csv (and
predictions_val.csv) schema as main.py, so report.py and ensemble.py take both.
"""
import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from constants import RATING_RANGE
from dataset import Corpus
from errors import FlagError, one_line_errors
from experiment import is_experiment, run_experiment
from functionals import FUNCTIONALS
from metric import ccc, emotion_metrics
from normalization import speaker_zscores
from options import Parser, add_data_args, modality_check, parse_modalities
from protocol import DataSpec, prepare_data, resolve_data
from speech_features import LogMel
from trained_run import VAL_PREDICTIONS, write_predictions, write_run_args, write_test_outputs
from utils import open_run_dir, summary_table

AUDIO_FEATURES = [*FUNCTIONALS, "speech"]
C_GRID = [0.01, 0.1, 1.0, 10.0]
ALPHA_GRID = [1.0, 10.0, 100.0, 1000.0]


def get_parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__)
    add_data_args(p)
    p.add_argument("--audio_features", default=None,
                   help=f"comma list of {', '.join(AUDIO_FEATURES)} (speech = the --speech_model's layers, "
                        "averaged), or none for text only (default: speech with --speech_model, else --functionals)")
    p.add_argument("--no_text", action="store_true", help="audio features only")
    p.add_argument("--classifier", choices=["logreg", "svm"], default="logreg",
                   help="class-weighted emotion classifier (default: %(default)s)")
    p.add_argument("--resume", default=None, metavar="EXPERIMENT",
                   help="finish an interrupted --cv/--seeds experiment folder")
    return p


def speech_layer_average(corpus: Corpus) -> np.ndarray:
    """(rows, 2 * dim): a --speech_model's per-layer [mean | std] averaged over its layers (the uniform
    layer weighting of a SUPERB linear probe, before any layer is learned)."""
    layers, _ = corpus.speech_shape()
    return np.stack([np.asarray(corpus.frames[offset:offset + layers], dtype=np.float32).mean(0)
                     for offset in corpus.offsets])


def audio_feature_names(audio_features: str, speech_model: str | None) -> tuple[str, ...]:
    """--audio_features as names (functionals.FUNCTIONALS and speech); FlagError for anything else."""
    names = tuple(n for n in audio_features.replace(" ", "").split(",") if n and n != "none")
    unknown = [n for n in names if n not in AUDIO_FEATURES]
    if unknown:
        raise FlagError(f"--audio_features {audio_features}: unknown {unknown} "
                        f"(expected a comma list of {', '.join(AUDIO_FEATURES)} or none)")
    if "speech" in names and not speech_model:
        raise FlagError("--audio_features speech needs --speech_model ID_OR_DIR")
    return names


def feature_blocks(names: tuple[str, ...], no_text: bool, spec: DataSpec, corpus: Corpus) -> dict[str, np.ndarray]:
    """The feature blocks: the corpus's functionals (the names of --audio_features but speech) and a
    --speech_model's layer average, both as speaker z-scores with --feature_norm speaker; the sentence embeddings
    unless --no_text."""
    blocks = {}
    if corpus.functionals is not None:
        blocks["functionals"] = corpus.functionals
    if "speech" in names:
        blocks["speech"] = speech_layer_average(replace(spec, functionals=(), feature_norm="training").corpus())
    if spec.feature_norm == "speaker":
        blocks = {name: speaker_zscores(block, corpus.speakers) for name, block in blocks.items()}
    if not no_text:
        blocks["text"] = corpus.text
    if not blocks:
        raise FlagError("--audio_features none with --no_text leaves no features")
    return blocks


def standardize(blocks: dict[str, np.ndarray], train_rows: np.ndarray) -> np.ndarray:
    """Each block scaled with training statistics, NaN (a failed clip) set to the training mean."""
    scaled = []
    for features in blocks.values():
        features = np.where(np.isfinite(features), features, np.nanmean(features[train_rows], axis=0))
        scaled.append(StandardScaler().fit(features[train_rows]).transform(np.nan_to_num(features)))
    return np.concatenate(scaled, axis=1)


def fit_classifier(kind: str, c: float, x: np.ndarray, y: np.ndarray, seed: int):
    if kind == "svm":  # calibrated, so that predictions.csv holds probabilities as for every model
        return CalibratedClassifierCV(LinearSVC(C=c, class_weight="balanced", random_state=seed), cv=3).fit(x, y)
    return LogisticRegression(C=c, class_weight="balanced", max_iter=3000, random_state=seed).fit(x, y)


def class_probabilities(model, x: np.ndarray, n_classes: int) -> np.ndarray:
    """(rows, classes): classes absent from training get probability 0."""
    probs = np.zeros((len(x), n_classes))
    probs[:, model.classes_] = model.predict_proba(x)
    return probs


def fit_ratings(x: np.ndarray, av: np.ndarray, train_rows: np.ndarray, val_rows: np.ndarray) -> tuple[list, list]:
    """Arousal and valence ridge regressions on the rated training rows, alpha chosen on the rated validation rows
    (the middle of the grid without them) -> (regressors, alphas); none for a corpus without ratings."""
    regressors, alphas = [], []
    for k in range(2):
        train_k, val_k = (rows[np.isfinite(av[rows, k])] for rows in (train_rows, val_rows))
        if not len(train_k):
            return [], []
        scores = {a: ccc(av[val_k, k], Ridge(alpha=a).fit(x[train_k], av[train_k, k]).predict(x[val_k]))
                  for a in ALPHA_GRID} if len(val_k) else {100.0: 0.0}
        alphas.append(max(scores, key=scores.get))
        regressors.append(Ridge(alpha=alphas[-1]).fit(x[train_k], av[train_k, k]))
    return regressors, alphas


def train(args: argparse.Namespace, run_dir: Path | None = None) -> Path:
    spec = resolve_data(args)
    # The audio features are known once the modalities are: those of the corpus (its default) or of the flag.
    audio_features = args.audio_features or ("speech" if args.speech_model else args.functionals)
    names = audio_feature_names(audio_features, spec.speech_model)
    spec = replace(spec, functionals=tuple(n for n in names if n != "speech"))
    prepare_data(spec, modality_check(args.modalities))
    corpus = replace(spec, speech=LogMel(), feature_norm="training").corpus()  # (z-scored in feature_blocks)
    spec.check_split(corpus.sessions, corpus.first_label)  # before the run folder: a refused split leaves none
    modalities = parse_modalities(args.modalities, corpus.has_text, corpus.modalities, corpus.bio is not None)
    if "audio" not in modalities:
        names, corpus.functionals, audio_features = (), None, "none"
    run_dir = open_run_dir(run_dir, args.save_path, f"baseline_{args.SorL}")
    write_run_args(run_dir, {**vars(args), **spec.flags(), "audio_features": audio_features})
    shown = spec.record(set(corpus.sessions.tolist()))
    print(f"run folder: {run_dir}\n{spec.describe(set(corpus.sessions.tolist()), corpus.split_unit)}")
    rows = {name: np.flatnonzero(np.isin(corpus.sessions, sessions)) for name, sessions in
            (("train", spec.train), ("val", spec.val), ("test", spec.test))}
    blocks = feature_blocks(names, args.no_text or "text" not in modalities, spec, corpus)
    if "bio" in modalities:  # the bio-signal features (with their presence masks) as one more block
        blocks["bio"] = corpus.bio
    x = standardize(blocks, rows["train"])
    y, av, n_classes = corpus.first_label, corpus.arousal_valence, len(corpus.classes)

    def val_emotion(model) -> float:
        return emotion_metrics(class_probabilities(model, x[rows["val"]], n_classes), av[rows["val"]],
                               corpus.labels[rows["val"]], y[rows["val"]], av[rows["val"]], corpus.classes)["macro_f1"]

    # Hyper-parameters from the validation sessions; without them (--val_split none), the middle of the grid.
    if len(rows["val"]):
        scores = {c: val_emotion(fit_classifier(args.classifier, c, x[rows["train"]], y[rows["train"]], args.seed))
                  for c in C_GRID}
        best_c = max(scores, key=scores.get)
    else:
        best_c = 1.0
    classifier = fit_classifier(args.classifier, best_c, x[rows["train"]], y[rows["train"]], args.seed)
    regressors, best_alpha = fit_ratings(x, av, rows["train"], rows["val"])

    def predict(split_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
        probs = class_probabilities(classifier, x[split_rows], n_classes)
        av_pred = (np.clip(np.stack([r.predict(x[split_rows]) for r in regressors], axis=1), *RATING_RANGE)
                   if regressors else np.full((len(split_rows), 2), np.nan))
        return probs, av_pred, emotion_metrics(probs, av_pred, corpus.labels[split_rows], y[split_rows],
                                               av[split_rows], corpus.classes)

    val = {}
    if len(rows["val"]):
        val_probs, val_av, val_metrics = predict(rows["val"])
        val = {f"val_{k}": v for k, v in val_metrics.items() if not isinstance(v, (dict, list))}
        write_predictions(run_dir / VAL_PREDICTIONS, corpus, rows["val"], val_probs, val_av)
    probs, av_pred, metrics = predict(rows["test"])
    write_test_outputs(run_dir, corpus, rows["test"], probs, av_pred, metrics, "results.json", {
        "model": "baseline", "features": {k: int(v.shape[1]) for k, v in blocks.items()}, "audio_features": names,
        "chosen": {"C": best_c, **dict(zip(("alpha_arousal", "alpha_valence"), best_alpha))}, "val": val,
        "sessions": shown, "split_unit": corpus.split_unit})
    print(f"baseline: {args.classifier} C={best_c}, ridge alpha {best_alpha} (chosen on validation)")
    print(summary_table(metrics, f"test {shown['test']}"))
    print(f"results: {run_dir / 'results.json'}")
    return run_dir


def main(argv: list[str] | None = None) -> None:
    args = get_parser().parse_args(argv)
    with one_line_errors():
        if args.resume or is_experiment(args):
            run_experiment(args, f"baseline_{args.SorL}", train)
        else:
            train(args)


if __name__ == "__main__":
    main()
