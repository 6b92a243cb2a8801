"""Utterance-level functionals: openSMILE's expert feature sets (eGeMAPSv02, Eyben et al. 2016; ComParE_2016) and the
mean and std of every log-mel band over the voiced frames. The baseline's linear models read them, and so does the
network (--functionals), beside what it learns from the spectrogram: a network that also sees what the baseline
sees (Pepino et al., Interspeech 2021, fused eGeMAPS with learned features).

openSMILE's functionals are computed once per corpus by preprocessing, when a run asks for them, and cached in its
cache folder (features/opensmile_<set>.npy + .json, remade when the corpus's files change); the band statistics
come from the log-mel cache in seconds.
"""
import json
import time
from pathlib import Path

import numpy as np

from audio import load_audio
from constants import MAX_FRAMES, SAMPLE_RATE
from errors import CorpusError, FlagError
from utils import cached_meta, progress_bar, write_array_cache

OPENSMILE_SETS = {"egemaps": "eGeMAPSv02", "compare": "ComParE_2016"}
FUNCTIONALS = (*OPENSMILE_SETS, "logmel")  # what --functionals and baseline.py's --audio_features name
VOICED_RANGE_DB = 40.0  # frames within 40 dB of the loudest frame of the clip count as voiced


def band_statistics(frames: np.ndarray) -> np.ndarray:
    """Log-mel frames (T, mels) of one clip -> (2 * mels,) float32: mean and std of every band over the voiced frames
    of its first 10 s (the span the network sees in evaluation)."""
    frames = np.asarray(frames[:MAX_FRAMES], dtype=np.float32)
    energy = np.logaddexp.reduce(frames, axis=1)  # log of the frame's mel energy
    voiced = frames[energy >= energy.max() - VOICED_RANGE_DB * np.log(10) / 10]
    return np.concatenate([voiced.mean(0), voiced.std(0)])


def logmel_band_statistics(frames: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """(rows, 2 * mels): `band_statistics` of every utterance of a log-mel cache (utterance i is
    frames[offsets[i]:offsets[i] + lengths[i]])."""
    return np.stack([band_statistics(frames[o:o + n]) for o, n in zip(offsets, lengths)]) if len(offsets) else \
        np.zeros((0, 2 * frames.shape[1]), np.float32)


def _smile(feature_set: str):
    import opensmile
    return opensmile.Smile(feature_set=getattr(opensmile.FeatureSet, OPENSMILE_SETS[feature_set]),
                           feature_level=opensmile.FeatureLevel.Functionals)


def clip_opensmile(audio: np.ndarray, feature_set: str) -> np.ndarray:
    """One 16 kHz clip's openSMILE functionals of `feature_set` ("egemaps" or "compare"), float32."""
    return _smile(feature_set).process_signal(audio, SAMPLE_RATE).to_numpy(np.float32)[0]


def opensmile_cache_paths(cache: Path, feature_set: str) -> tuple[Path, Path]:
    """(rows .npy, index .json) of the openSMILE functionals of `feature_set` in a cache folder."""
    npy_path = Path(cache) / "features" / f"opensmile_{OPENSMILE_SETS[feature_set]}.npy"
    return npy_path, npy_path.with_suffix(".json")


def build_opensmile_cache(cache: Path, wav_paths: dict[str, Path], sources: str, feature_set: str,
                          may_write=None) -> float:
    """Write the openSMILE functionals of `feature_set` ("egemaps" or "compare") of every utterance (Segment ID ->
    wav: `wav_paths`) into the cache folder `cache`, unless they are up to date (the corpus's `sources`
    fingerprint, the openSMILE version); `may_write(what)` may refuse (read-only storage). A clip openSMILE cannot
    process is a NaN row (named), which its readers set to a mean. -> seconds spent (0 when up to date)."""
    import opensmile

    npy_path, meta_path = opensmile_cache_paths(cache, feature_set)
    wanted = {"opensmile": opensmile.__version__, "sources": sources}
    if cached_meta(npy_path, meta_path, wanted) is not None:
        return 0.0
    if may_write is not None:
        may_write(f"{OPENSMILE_SETS[feature_set]} functionals")
    started, smile, ids = time.perf_counter(), _smile(feature_set), sorted(wav_paths)
    rows = np.full((len(ids), len(smile.feature_names)), np.nan, np.float32)
    for k, seg_id in enumerate(progress_bar(ids, desc=f"openSMILE {OPENSMILE_SETS[feature_set]}", unit="utt")):
        try:
            rows[k] = smile.process_signal(load_audio(wav_paths[seg_id]), SAMPLE_RATE).to_numpy(np.float32)[0]
        except (CorpusError, RuntimeError) as error:
            print(f"skipped by openSMILE: {wav_paths[seg_id]} ({error})")
    write_array_cache(npy_path, meta_path, rows, {**wanted, "feature_set": OPENSMILE_SETS[feature_set],
                                                  "names": smile.feature_names, "ids": ids})
    return time.perf_counter() - started


def load_opensmile(cache: Path, seg_ids: list[str], feature_set: str) -> np.ndarray:
    """(len(seg_ids), n) float32: the cached openSMILE functionals of the utterances (`build_opensmile_cache`);
    CorpusError if the cache folder has none."""
    npy_path, meta_path = opensmile_cache_paths(cache, feature_set)
    if not (npy_path.exists() and meta_path.exists()):
        raise CorpusError(f"no {OPENSMILE_SETS[feature_set]} functionals in {cache}; preprocess the corpus with them "
                          "(python main.py or baseline.py makes them)")
    position = {s: i for i, s in enumerate(json.loads(meta_path.read_text(encoding="utf-8"))["ids"])}
    return np.load(npy_path)[[position[s] for s in seg_ids]].astype(np.float32)


def parse_functionals(text: str | None, flag: str = "--functionals") -> tuple[str, ...]:
    """'egemaps,logmel' -> ("egemaps", "logmel") in FUNCTIONALS' order; "none" or empty -> (); FlagError (a
    ValueError naming `flag`) for anything else."""
    names = [n.strip() for n in (text or "").split(",") if n.strip() and n.strip() != "none"]
    unknown = [n for n in names if n not in FUNCTIONALS]
    if unknown:
        raise FlagError(f"{flag} {text}: unknown {', '.join(unknown)} (a comma list of {', '.join(FUNCTIONALS)}, "
                        "or none)")
    return tuple(n for n in FUNCTIONALS if n in names)
