"""Speaker normalisation (--feature_norm speaker): every acoustic input standardised with statistics of its
speaker's own utterances, for training, validation and test speakers alike. No label is read: a test speaker's
statistics come from its unlabelled test audio, the field's usual transductive normalisation (Keesing et al.,
Interspeech 2021: eGeMAPS on RAVDESS UAR 0.50 -> 0.61, mean over 17 corpora 0.455 -> 0.548; Pepino et al.,
Interspeech 2021: frozen wav2vec2 on RAVDESS 75.7 -> 84.3). A voice's level, pitch range and timbre differ between
people more than between one person's emotions; its own statistics take them out.

The speaker of an utterance is the voice in its wav: KEMDy19's session and actor (F/M), KEMDy20's participant,
RAVDESS's actor, TESS's and EmoDB's speaker, a manifest's `speaker` column.
"""
from dataclasses import dataclass

import numpy as np
import pandas as pd

MIN_STD = 1e-5  # a feature (nearly) constant over a speaker's utterances is centred, not blown up
# A speaker with fewer utterances is standardised with the statistics of all utterances pooled: one or two clips
# do not tell a voice from its emotion (one clip's functionals z-scored over itself are all 0).
MIN_SPEAKER_UTTERANCES = 5


def speaker_keys(table: pd.DataFrame, kind: str) -> np.ndarray:
    """The speaker of every row of a corpus table (readers.TABLE_COLUMNS), as strings: KEMDy19 names its actors F and
    M within a session, so the key there is the session and the actor (`Sess03_F`); elsewhere the `speaker`."""
    speakers = table["speaker"].astype(str)
    if kind == "kemdy19":
        speakers = "Sess" + table["Session"].astype(int).map("{:02d}".format) + "_" + speakers
    return speakers.to_numpy()


def group_index(keys: np.ndarray) -> np.ndarray:
    """Each row's group (speaker) as 0..G-1, in the order of the sorted keys."""
    return np.unique(keys, return_inverse=True)[1].reshape(-1)


def _spread(total: np.ndarray, total_sq: np.ndarray, count: np.ndarray, groups: np.ndarray, min_rows: int,
            fallback: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std from per-group sums; a group of fewer than `min_rows` rows takes the `fallback` (mean, std) where
    given (predict.py: the run's training statistics), else those of all rows pooled."""
    rare = np.bincount(groups, minlength=len(total)) < min_rows
    if rare.any() and fallback is None:
        total[rare], total_sq[rare], count[rare] = total.sum(0), total_sq.sum(0), count.sum(0)
    mean = total / np.maximum(count, 1)
    std = np.sqrt(np.maximum(total_sq / np.maximum(count, 1) - mean ** 2, 0.0))
    std = np.where(std > MIN_STD, std, 1.0)
    if rare.any() and fallback is not None:
        mean[rare], std[rare] = fallback
    return mean.astype(np.float32), std.astype(np.float32)


def row_statistics(x: np.ndarray, groups: np.ndarray, min_rows: int = 1,
                   fallback: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per group, the mean and std of every column of `x` (rows, F) over the group's rows, NaN cells left out ->
    (mean (G, F), std (G, F)); a column constant over a group gets std 1; a group of fewer than `min_rows` rows
    gets the `fallback` statistics ((F,), (F,)), or without one those of all rows."""
    n_groups, finite = int(groups.max()) + 1 if len(groups) else 0, np.isfinite(x)
    values = np.where(finite, x, 0.0).astype(np.float64)
    total, total_sq, count = (np.zeros((n_groups, x.shape[1])) for _ in range(3))
    np.add.at(total, groups, values)
    np.add.at(total_sq, groups, values ** 2)
    np.add.at(count, groups, finite)
    return _spread(total, total_sq, count, groups, min_rows, fallback)


def zscores(x: np.ndarray, groups: np.ndarray, min_rows: int = 1,
            fallback: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """`x` (rows, F) standardised per group with the group's own `row_statistics` (the `fallback`'s, or those of all
    rows, for a group of fewer than `min_rows`); NaN cells stay NaN."""
    mean, std = row_statistics(x, groups, min_rows, fallback)
    return ((x - mean[groups]) / std[groups]).astype(np.float32)


@dataclass(frozen=True)
class FrameNorm:
    """Per-speaker statistics of a frame cache: utterance i's rows are standardised with mean[group[i], r] and
    std[group[i], r], r its row within the utterance (log-mel: one statistic per band for every frame, R = 1;
    a speech model's layer rows: one per layer, R = L)."""
    group: np.ndarray  # (utterances,) int
    mean: np.ndarray  # (G, R, W) float32
    std: np.ndarray  # (G, R, W) float32

    @classmethod
    def of(cls, frames: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, groups: np.ndarray,
           rows_per_utterance: int, min_utterances: int = 1,
           fallback: tuple[np.ndarray, np.ndarray] | None = None) -> "FrameNorm":
        """The statistics of every utterance's rows (all of its frames), pooled per group (for a group of fewer than
        `min_utterances`: the `fallback` statistics ((R, W), (R, W)), or without one those of all utterances)."""
        n_groups, width, r = int(groups.max()) + 1, frames.shape[1], rows_per_utterance
        total, total_sq, count = np.zeros((n_groups, r, width)), np.zeros((n_groups, r, width)), np.zeros((n_groups, r, 1))
        for group, offset, length in zip(groups, offsets, lengths):
            chunk = np.asarray(frames[offset:offset + length], dtype=np.float64)
            if r == 1:
                total[group, 0] += chunk.sum(0)
                total_sq[group, 0] += (chunk ** 2).sum(0)
                count[group, 0] += length
            else:
                total[group] += chunk
                total_sq[group] += chunk ** 2
                count[group] += 1
        return cls(np.asarray(groups), *_spread(total, total_sq, count, np.asarray(groups), min_utterances,
                                                fallback))

    def apply(self, x: np.ndarray, utterances: np.ndarray, take: np.ndarray, first: np.ndarray) -> np.ndarray:
        """`x`: the packed rows of `utterances` (take[k] rows of utterance k, from its row first[k] on) ->
        standardised, float32."""
        group = np.repeat(self.group[utterances], take)
        row = np.arange(take.sum()) - np.repeat(np.cumsum(take) - take, take) + np.repeat(first, take)
        row = np.minimum(row, self.mean.shape[1] - 1)
        return ((x - self.mean[group, row]) / self.std[group, row]).astype(np.float32)


def speaker_zscores(x: np.ndarray, speakers: np.ndarray,
                    fallback: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """`x` (rows, F) standardised per speaker (`speakers`: each row's key, `speaker_keys`), a speaker of fewer
    than MIN_SPEAKER_UTTERANCES rows with the `fallback` statistics, or without one those of all rows."""
    return zscores(x, group_index(speakers), MIN_SPEAKER_UTTERANCES, fallback)


def speaker_frame_norm(frames: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, speakers: np.ndarray,
                       rows_per_utterance: int, fallback: tuple[np.ndarray, np.ndarray] | None = None) -> FrameNorm:
    """The FrameNorm of a frame cache per speaker (`speakers`: each utterance's key), a speaker of fewer than
    MIN_SPEAKER_UTTERANCES utterances with the `fallback` statistics, or without one those of all utterances."""
    return FrameNorm.of(frames, offsets, lengths, group_index(speakers), rows_per_utterance, MIN_SPEAKER_UTTERANCES,
                        fallback)


def below_floor(speakers: np.ndarray) -> np.ndarray:
    """(rows,) bool: whether each row's speaker has fewer than MIN_SPEAKER_UTTERANCES rows, so that its statistics
    are not its own (`speaker_zscores`, `speaker_frame_norm`)."""
    groups = group_index(speakers)
    return np.bincount(groups)[groups] < MIN_SPEAKER_UTTERANCES
