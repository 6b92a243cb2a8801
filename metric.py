"""Emotion scores (the contest's instance-level P/R/F1 and standard per-utterance scores) and CCC."""
import numpy as np

from constants import EMOTIONS


def instance_prf(probs: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    """The published "F1" (its get_precision/get_recall at k=1): P = share of utterances whose top-1 class
    is among the true (tied) labels; R = mean over utterances of hit / that utterance's number of true
    labels (a per-utterance average, not total hits / total labels); F1 = 2PR / (P + R)."""
    hits = labels[np.arange(len(probs)), probs.argmax(1)]
    precision = float(hits.mean())
    recall = float((hits / labels.sum(1)).mean())
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, f1


def resolve_ties(pred: np.ndarray, labels: np.ndarray, first_label: np.ndarray) -> np.ndarray:
    """One true class per utterance: the prediction if it is one of the tied labels, else the first written."""
    return np.where(labels[np.arange(len(pred)), pred] > 0, pred, first_label)


def ccc(target: np.ndarray, pred: np.ndarray) -> float:
    """Concordance correlation coefficient with population moments; 0 when undefined (constant inputs)."""
    target, pred = np.asarray(target, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    covariance = np.mean((target - target.mean()) * (pred - pred.mean()))
    denominator = target.var() + pred.var() + (target.mean() - pred.mean()) ** 2
    return float(2 * covariance / denominator) if denominator > 0 else 0.0


def av_calibration(target: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column (arousal, valence): the scale and shift that give `pred` the mean and std of `target`.
    For a fixed correlation r this maximises CCC (it becomes r; the model clips the result to 1-5): the
    "centring and scaling" post-processing fitted on the development set in the AVEC challenges' baselines.
    An output that barely varies (std under 0.001 on the 1-5 scale) is only shifted: scaling it would
    blow up noise."""
    pred_std = pred.std(0)
    scale = np.where(pred_std > 1e-3, target.std(0) / np.maximum(pred_std, 1e-3), 1.0)
    return scale, target.mean(0) - scale * pred.mean(0)


def masked_ccc(target: np.ndarray, pred: np.ndarray) -> float | None:
    """CCC over the rows whose target is rated (not NaN); None where none is (a corpus without the scale)."""
    rated = np.isfinite(target)
    return ccc(target[rated], pred[rated]) if rated.any() else None


def emotion_metrics(probs: np.ndarray, av_pred: np.ndarray, labels: np.ndarray, first_label: np.ndarray,
                    av_true: np.ndarray, classes: list[str] | tuple[str, ...] = tuple(EMOTIONS)) -> dict:
    """Every test metric of results.json; arrays hold one row per utterance, probabilities and labels one column
    per class of `classes`, av columns (arousal, valence), NaN where not rated. UA (unweighted accuracy) is the
    mean of the per-class recalls over the classes in the truth; accuracy is WA (weighted accuracy)."""
    # scikit-learn takes about a second to import: loaded by the first evaluation, not by every command's start
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support, recall_score
    pred = probs.argmax(1)
    true = resolve_ties(pred, labels, first_label)
    index = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(true, pred, labels=index, zero_division=0)
    present = (support > 0) | np.isin(index, pred)  # in the truth or the predictions
    instance_p, instance_r, instance_f = instance_prf(probs, labels)
    return {
        "instance_precision": instance_p, "instance_recall": instance_r, "instance_f1": instance_f,
        "accuracy": float(accuracy_score(true, pred)),
        "ua": float(recall_score(true, pred, labels=np.unique(true), average="macro", zero_division=0)),
        "macro_f1": macro_f1(true, pred),
        "weighted_f1": float(f1_score(true, pred, labels=index, average="weighted", zero_division=0)),
        "ccc_arousal": masked_ccc(av_true[:, 0], av_pred[:, 0]), "ccc_valence": masked_ccc(av_true[:, 1], av_pred[:, 1]),
        # A class absent from the truth and never predicted has no precision, recall or F1 (None; macro-F1
        # leaves it out too); predicted but absent, it has precision and F1 0 and no recall.
        "per_class": {name: {"precision": float(precision[i]) if present[i] else None,
                             "recall": float(recall[i]) if support[i] else None,
                             "f1": float(f1[i]) if present[i] else None,
                             "support": int(support[i])} for i, name in enumerate(classes)},
        "confusion": confusion_matrix(true, pred, labels=index).tolist(),
    }


def macro_f1(true: np.ndarray, pred: np.ndarray) -> float:
    """Macro-F1 over the classes in the truth or the predictions (scikit-learn's default): a class absent from
    both has no F1 to average (a fold without a single fear utterance is not a fear F1 of 0)."""
    from sklearn.metrics import f1_score
    return float(f1_score(true, pred, labels=np.union1d(true, pred), average="macro", zero_division=0))


def resampled_scores(pred: np.ndarray, labels: np.ndarray, first_label: np.ndarray) -> dict[str, np.ndarray]:
    """UA, macro-F1 and accuracy (WA) of many predictions of the same utterances at once, each as emotion_metrics
    scores it (the tie rule, UA over the classes in the truth, macro-F1 over those in the truth or the predictions):
    `pred` (R, N) class indices, `labels` (N, C) multi-hot, `first_label` (N,) -> {metric: (R,)}. For the
    thousands of resamples of a permutation test, where one scikit-learn call per resample would take minutes."""
    true = np.where(labels[np.arange(pred.shape[1]), pred] > 0, pred, first_label)
    onehot = np.eye(labels.shape[1], dtype=bool)
    t, p = onehot[true], onehot[pred]  # (R, N, C)
    hits, n_true, n_pred = (t & p).sum(1), t.sum(1), p.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):  # classes out of the average are NaN, skipped by nanmean
        recall = np.where(n_true > 0, hits / n_true, np.nan)
        f1 = np.where(n_true + n_pred > 0, 2 * hits / (n_true + n_pred), np.nan)
    return {"ua": np.nanmean(recall, 1), "macro_f1": np.nanmean(f1, 1), "accuracy": (true == pred).mean(1)}


def decision_bias(logits: np.ndarray, labels: np.ndarray, first_label: np.ndarray,
                  grid: np.ndarray = np.arange(-3.0, 3.01, 0.25), passes: int = 2) -> np.ndarray:
    """A per-class bias to add to the logits that maximises macro-F1 on the given (validation) rows: coordinate
    ascent over `grid`, class by class, `passes` times, starting from zero and keeping a change only if it
    improves (ties keep the smaller move), so the result is deterministic. The decision-threshold adjustment of
    imbalanced classification, fitted on held-out data rather than the training prior."""
    bias = np.zeros(logits.shape[1])

    def score(b: np.ndarray) -> float:
        pred = (logits + b).argmax(1)
        return macro_f1(resolve_ties(pred, labels, first_label), pred)

    best = score(bias)
    for _ in range(passes):
        for c in range(logits.shape[1]):
            for value in sorted(grid, key=abs):
                trial = bias.copy()
                trial[c] = value
                if (s := score(trial)) > best:
                    best, bias = s, trial
    return bias


def selection_score(metrics: dict) -> float:
    """Validation score that picks the best epoch: mean of macro-F1 and the two CCCs (macro-F1 alone for a corpus
    without arousal/valence)."""
    scores = [metrics[k] for k in ("macro_f1", "ccc_arousal", "ccc_valence") if metrics[k] is not None]
    return sum(scores) / len(scores)
