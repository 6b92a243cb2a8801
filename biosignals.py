"""Bio-signals of the KEMDy wearables (Empatica E4: EDA in µS and skin temperature in °C at 4 Hz in both corpora,
inter-beat intervals in KEMDy20) as per-utterance features, cached like the spectrograms. The readers follow a
format note measured on real files of both corpora (KEMDY_BIOSIGNALS.md; the section numbers below are its).

KEMDy19 (`EDA|TEMP/SessionNN/Original/SessNN{F,M}.csv`, one file per session and wearer, no header, rows
`value,t,clock[,SegmentID]`): a file joins two recordings (`t` restarts) and has forward gaps after which the
shipped Segment IDs are displaced, since they were placed by counting rows (3b). The clock-consistent alignment
(`alignment="clock"`, 3d): a virtual sample index v = round(4 t) - 1 + (samples of the earlier recordings); per
file and dialogue an anchor A, the 5 % quantile of (first row carrying a segment's ID - 4 ws), so that the rows
labelled before a gap decide it; a segment's samples are ceil(A + 4 ws) <= v < ceil(A + 4 we). It reproduces the
annotation's EDA/TEMP start values (3c). `alignment="ids"` takes the rows that carry the segment's ID as shipped.

KEMDy20 (`EDA|TEMP|IBI/SessionNN/SessNN_scriptNN_UserNNNX.csv`, one file per dialogue and wearer; EDA/TEMP: a
header with the unix start and a rate line, rows at start + 0.25 i; IBI: `t,ibi,datetime[,SegmentID]`, beats at
start + t): one anchor per wearer and dialogue, the midpoint of the interval that the file's own ID rows allow
(section 5; shared by the stem's EDA, TEMP and IBI files, never between the two wearers, whose clocks disagree).

Features per utterance, from the wristband of the person whose emotion is predicted (the speaker, or for KEMDy19's
listener rows the listener's own): each signal z-scored over that wearer's whole recording (the usual practice for
EDA, whose level differs between people), then over the segment: mean, std, min, max and slope for EDA and TEMP;
EDA's tonic level and its skin-conductance responses (neurokit2's high-pass decomposition and SCR peak detection
over the whole recording, then the tonic mean and the peak count in the segment: 4 Hz segments of a few seconds
are too short to decompose alone); IBI mean and RMSSD where beats exist; a presence mask per signal. A missing
file, a 0-byte IBI file, a file cut short or a segment in a gap gives zeros and a 0 mask, never a dropped utterance.
"""
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from utils import cached_meta, fingerprint, write_array_cache

RATE = 4.0  # Hz, EDA and TEMP in both corpora
SIGNALS = ("EDA", "TEMP", "IBI")
FEATURES = ("EDA_mean", "EDA_std", "EDA_min", "EDA_max", "EDA_slope", "EDA_tonic", "EDA_scr",
            "TEMP_mean", "TEMP_std", "TEMP_min", "TEMP_max", "TEMP_slope", "IBI_mean", "IBI_rmssd",
            "EDA_present", "TEMP_present", "IBI_present")
BIO_FORMAT = "kemdy-bio/1"
K20_FILE = re.compile(r"^(Sess\d{2}_script\d{2})_(User\d{3}[FM])\.csv$")


@dataclass
class Recording:
    """One bio file: per row a position on the file's own time axis (KEMDy19: virtual sample index; KEMDy20: unix
    seconds), its value and the Segment ID it carries ("" for none); `restarts`: rows where a new recording begins."""
    position: np.ndarray
    values: np.ndarray
    ids: np.ndarray
    restarts: list[int] = field(default_factory=list)
    skipped: int = 0  # lines that are not rows of the layout


def _lines(path: Path) -> list[list[str]]:
    text = path.read_bytes().decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
    return [line.strip().split(",") for line in text.split("\n") if line.strip()]


def read_kemdy19(path: Path) -> Recording:
    """A KEMDy19 EDA/TEMP file (no header; `value,t,clock[,SegmentID]`) on its virtual sample index (3d.2):
    gaps keep their missing samples' places, a restart of `t` continues after the earlier recordings."""
    values, t, ids, skipped = [], [], [], 0
    for fields in _lines(path):
        try:
            value, seconds = float(fields[0]), float(fields[1])
        except (ValueError, IndexError):
            skipped += 1
            continue
        if len(fields) not in (3, 4):
            skipped += 1
            continue
        values.append(value)
        t.append(seconds)
        ids.append(fields[3] if len(fields) == 4 else "")
    t = np.asarray(t)
    restarts = (np.flatnonzero(np.diff(t) < 0) + 1).tolist()
    position = np.zeros(len(t), dtype=np.int64)
    base = 0
    for start, end in zip([0] + restarts, restarts + [len(t)]):
        position[start:end] = np.round(RATE * t[start:end]).astype(np.int64) - 1 + base
        base += int(round(RATE * t[end - 1]))
    return Recording(position, np.asarray(values, dtype=np.float64), np.asarray(ids, dtype=object), restarts,
                     skipped)


def read_kemdy20(path: Path) -> Recording | None:
    """A KEMDy20 file: EDA/TEMP (`<unix>,<datetime>`, `<rate>,hz`, then `value,datetime[,SegmentID]`) or IBI
    (`<unix>,IBI,<datetime>`, then `t,ibi,datetime[,SegmentID]`) on unix seconds; None for an empty file."""
    lines = _lines(path)
    if not lines:
        return None
    try:
        start = float(lines[0][0])
    except ValueError:
        return None
    ibi = len(lines[0]) > 1 and lines[0][1].strip().upper() == "IBI"
    rate, data = RATE, lines[1:]
    if not ibi and data and data[0][-1].strip().lower() == "hz":
        rate, data = float(data[0][0]), data[1:]
    position, values, ids, skipped = [], [], [], 0
    for i, fields in enumerate(data):
        try:
            if ibi:
                position.append(start + float(fields[0]))
                values.append(float(fields[1]))
            else:
                values.append(float(fields[0]))
                position.append(start + i / rate)
        except (ValueError, IndexError):
            skipped += 1
            continue
        wanted = 4 if ibi else 3
        ids.append(fields[wanted - 1] if len(fields) >= wanted else "")
    return Recording(np.asarray(position, dtype=np.float64), np.asarray(values, dtype=np.float64),
                     np.asarray(ids, dtype=object), [], skipped)


def kemdy19_rows(recording: Recording, segments: pd.DataFrame, alignment: str = "clock") -> dict[str, np.ndarray]:
    """Segment ID -> the row indices of its samples in a KEMDy19 file, for `segments` (Segment ID, dialogue, start,
    end: the dialogues' segments of both speakers, ws/we in seconds). A dialogue none of whose IDs is in the file
    (e.g. past a file cut short) gets no rows."""
    out = {}
    if alignment == "ids":
        for seg in segments["Segment ID"]:
            out[seg] = np.flatnonzero(recording.ids == seg)
        return out
    labelled = np.flatnonzero(recording.ids != "")
    first = dict(zip(recording.ids[labelled][::-1], labelled[::-1]))  # the first row carrying each ID
    for _, group in segments.groupby("dialogue", sort=False):
        starts = group["start"].to_numpy(dtype=float)
        offsets = [first[seg] - RATE * ws for seg, ws in zip(group["Segment ID"], starts) if seg in first]
        if not offsets:
            continue
        anchor = float(np.quantile(offsets, 0.05))
        low = np.searchsorted(recording.position, np.ceil(anchor + RATE * starts))
        high = np.searchsorted(recording.position, np.ceil(anchor + RATE * group["end"].to_numpy(dtype=float)))
        for seg, a, b in zip(group["Segment ID"], low, high):
            out[seg] = np.arange(a, b)
    return out


def kemdy20_anchor(recordings: list[Recording], spans: dict[str, tuple[float, float]],
                   step: float = 1 / RATE) -> float | None:
    """The anchor A (unix seconds of the dialogue's time 0) of one wearer's regularly sampled KEMDy20 files of a
    dialogue (EDA and TEMP: one clock, a sample every `step` s): the midpoint of the interval their ID rows allow.
    A segment's rows lie in [A + ws, A + we) and the rows just before and after its run do not, so A is in
    (max(last - we, first - step - ws), min(first - ws, last + step - we)] for each labelled segment (section 5
    pins A to 48 ms on the real files this way); None without a usable ID row."""
    lower, upper = -np.inf, np.inf
    for recording in recordings:
        for seg in set(recording.ids) - {""}:
            if seg not in spans:
                continue
            ws, we = spans[seg]
            rows = np.flatnonzero(recording.ids == seg)
            first, last = recording.position[rows[0]], recording.position[rows[-1]]
            lower, upper = max(lower, last - we), min(upper, first - ws)
            if rows[0] > 0:  # the row before the run is outside the segment (none before a file's first row)
                lower = max(lower, first - step - ws)
            if rows[-1] < len(recording.ids) - 1:  # and the row after it (none after a file cut short)
                upper = min(upper, last + step - we)
    return None if not np.isfinite(lower) else (lower + upper) / 2


def window_rows(position: np.ndarray, anchor: float, start: float, end: float) -> np.ndarray:
    """The rows whose time lies in [anchor + start, anchor + end) (KEMDy20, seconds)."""
    return np.arange(np.searchsorted(position, anchor + start), np.searchsorted(position, anchor + end))


def eda_components(values: np.ndarray, restarts: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(tonic level per sample, 0/1 SCR peak per sample) of an EDA recording in µS, each recording decomposed on
    its own by neurokit2 (high-pass tonic/phasic split, SCR peaks of the phasic part). Zeros (the E4 writes 0 at a
    recording's start and while it loses skin contact) are interpolated over."""
    import neurokit2 as nk
    tonic, peaks = np.full(len(values), np.nan), np.zeros(len(values))
    for start, end in zip([0] + restarts, restarts + [len(values)]):
        part = pd.Series(np.where(values[start:end] > 0, values[start:end], np.nan)).interpolate(
            limit_direction="both").to_numpy()
        if end - start < 8 * RATE or not np.isfinite(part).all():  # too short to decompose, or all zero
            continue
        components = nk.eda_phasic(part, sampling_rate=RATE, method="highpass")
        tonic[start:end] = components["EDA_Tonic"].to_numpy()
        found = nk.eda_peaks(components["EDA_Phasic"].to_numpy(), sampling_rate=RATE)[1]["SCR_Peaks"]
        peaks[start + np.asarray(found, dtype=int)] = 1
    return tonic, peaks


def _slope(values: np.ndarray) -> float:
    """Least-squares slope per second of samples at 4 Hz; 0 for fewer than 2."""
    if len(values) < 2:
        return 0.0
    x = np.arange(len(values)) / RATE
    return float(np.polyfit(x, values, 1)[0])


def _statistics(values: np.ndarray) -> list[float]:
    finite = values[np.isfinite(values)]
    if not len(finite):
        return [0.0] * 5
    return [float(finite.mean()), float(finite.std()), float(finite.min()), float(finite.max()), _slope(finite)]


def utterance_features(eda: tuple | None, temp: np.ndarray | None, ibi: np.ndarray | None) -> np.ndarray:
    """The FEATURES vector of one utterance from its samples: `eda` (z-scored values, z-scored tonic, SCR peak
    flags), `temp` z-scored values, `ibi` (raw intervals in seconds, z-scored intervals); None or empty = absent."""
    out = np.zeros(len(FEATURES), dtype=np.float32)
    if eda is not None and len(eda[0]):
        values, tonic, peaks = eda
        out[0:5] = _statistics(values)
        out[5] = np.nanmean(tonic) if np.isfinite(tonic).any() else 0.0
        out[6] = peaks.sum()
        out[14] = 1
    if temp is not None and len(temp):
        out[7:12] = _statistics(temp)
        out[15] = 1
    if ibi is not None and len(ibi[0]):
        raw, z = ibi
        out[12] = z.mean()
        out[13] = np.sqrt(np.mean(np.diff(raw) ** 2)) if len(raw) > 1 else 0.0
        out[16] = 1
    return out


def bio_files(data_dir: Path) -> list[Path]:
    """Every file under the corpus's bio-signal folders (EDA, TEMP, IBI, ECG), for the cache's fingerprint."""
    return sorted(p for name in (*SIGNALS, "ECG") if (data_dir / name).is_dir()
                  for p in (data_dir / name).rglob("*") if p.is_file())


def _recordings(data_dir: Path, kind: str, notes: list[str]) -> dict[tuple, dict[str, Recording]]:
    """(file key -> signal -> Recording) of the corpus's bio files; file key: KEMDy19 (session, "F"|"M"), KEMDy20
    (dialogue, user). Unreadable names and empty files are named in `notes`."""
    pattern = "Session*/Original/Sess*.csv" if kind == "kemdy19" else "Session*/*.csv"
    name = re.compile(r"^Sess(\d{2})([FM])\.csv$") if kind == "kemdy19" else K20_FILE
    out: dict[tuple, dict[str, Recording]] = {}
    for signal in SIGNALS if kind == "kemdy20" else ("EDA", "TEMP"):
        for path in sorted((data_dir / signal).glob(pattern)):
            match, shown = name.match(path.name), path.relative_to(data_dir)
            if not match:
                notes.append(f"{shown}: not a {kind.upper()} bio file name")
                continue
            recording = read_kemdy19(path) if kind == "kemdy19" else read_kemdy20(path)
            if recording is None or not len(recording.values):
                notes.append(f"{shown}: no samples")
                continue
            if recording.skipped:
                notes.append(f"{shown}: {recording.skipped} lines that are not rows of the layout, skipped")
            key = (int(match[1]), match[2]) if kind == "kemdy19" else (match[1], match[2])
            out.setdefault(key, {})[signal] = recording
    return out


@dataclass
class Prepared:
    """A recording ready for features: per row its z-scored value (over the wearer's recordings) and, for EDA, the
    z-scored tonic level and the SCR peak flags; IBI keeps its raw intervals for RMSSD."""
    recording: Recording
    z: np.ndarray
    tonic: np.ndarray | None = None
    peaks: np.ndarray | None = None


def _prepare(recordings: dict[tuple, dict[str, Recording]], wearer_of_key) -> dict[tuple, dict[str, Prepared]]:
    """Each recording z-scored with the mean and std of all its wearer's samples of that signal (EDA zeros, contact
    losses, left out), EDA decomposed first."""
    def usable(signal: str, values: np.ndarray) -> np.ndarray:
        return np.where(values > 0, values, np.nan) if signal == "EDA" else values
    components = {(k, "EDA"): eda_components(r["EDA"].values, r["EDA"].restarts) for k, r in recordings.items()
                  if "EDA" in r}
    pools: dict[tuple, list[np.ndarray]] = {}
    for key, signals in recordings.items():
        for signal, recording in signals.items():
            pools.setdefault((wearer_of_key(key), signal), []).append(usable(signal, recording.values))
            if signal == "EDA":
                pools.setdefault((wearer_of_key(key), "tonic"), []).append(components[key, "EDA"][0])
    scale = {}
    for pool, parts in pools.items():
        values = np.concatenate(parts)
        values = values[np.isfinite(values)]
        scale[pool] = (values.mean(), values.std() or 1.0) if len(values) else (0.0, 1.0)

    def z(key: tuple, signal: str, values: np.ndarray) -> np.ndarray:
        mean, std = scale[wearer_of_key(key), signal]
        return (values - mean) / std
    prepared = {}
    for key, signals in recordings.items():
        for signal, recording in signals.items():
            item = Prepared(recording, z(key, signal, usable(signal, recording.values)))
            if signal == "EDA":
                tonic, item.peaks = components[key, "EDA"]
                item.tonic = z(key, "tonic", tonic)
            prepared.setdefault(key, {})[signal] = item
    return prepared


def _wearer_of(table: pd.DataFrame, kind: str) -> np.ndarray:
    """Whose wristband each row reads: the speaker's, or for a KEMDy19 listener row the other actor's."""
    if kind == "kemdy19":
        other = table["speaker"].map({"F": "M", "M": "F"})
        return table["speaker"].where(table["role"] == "speaker", other).to_numpy()
    return table["speaker"].to_numpy()


def _segment_rows(prepared: dict[tuple, dict[str, Prepared]], segments: pd.DataFrame, kind: str, alignment: str,
                  notes: list[str]) -> dict[tuple, dict[str, dict[str, np.ndarray]]]:
    """file key -> signal -> Segment ID -> row indices of its samples in that file."""
    out = {}
    spans = dict(zip(segments["Segment ID"], zip(segments["start"].astype(float), segments["end"].astype(float))))
    for key, signals in prepared.items():
        if kind == "kemdy19":
            own = segments[segments["dialogue"].str.startswith(f"Sess{key[0]:02d}_")]
            out[key] = {s: kemdy19_rows(p.recording, own, alignment) for s, p in signals.items()}
            for signal, rows in out[key].items():
                empty = sorted(set(own["dialogue"]) - {d for d, seg in zip(own["dialogue"], own["Segment ID"])
                                                       if len(rows.get(seg, ()))})
                if empty:
                    notes.append(f"{signal} Sess{key[0]:02d}{key[1]}: no samples for {', '.join(empty)}")
            continue
        own = segments[segments["dialogue"] == key[0]]
        anchor = kemdy20_anchor([signals[s].recording for s in ("EDA", "TEMP") if s in signals], spans)
        if anchor is None:
            notes.append(f"{key[0]}_{key[1]}: no Segment ID row to anchor its files; not aligned")
            continue
        out[key] = {s: {seg: (np.flatnonzero(p.recording.ids == seg) if alignment == "ids" else
                              window_rows(p.recording.position, anchor, *spans[seg])) for seg in own["Segment ID"]}
                    for s, p in signals.items()}
    return out


def corpus_features(data_dir: Path, kind: str, table: pd.DataFrame,
                    alignment: str = "clock") -> tuple[np.ndarray, dict]:
    """(features (len(table), len(FEATURES)) float32, report) for every row of a KEMDy annotation table (columns
    Segment ID, dialogue, start, end, speaker, role, Session). The report counts the rows with each signal per role
    and names what could not be read or aligned; nothing here raises for one bad file."""
    notes: list[str] = ["ECG/: no documented layout; not read"] if (data_dir / "ECG").is_dir() else []
    recordings = _recordings(data_dir, kind, notes)
    prepared = _prepare(recordings, (lambda key: key) if kind == "kemdy19" else (lambda key: key[1]))
    segments = table.drop_duplicates("Segment ID")[["Segment ID", "dialogue", "start", "end"]]
    rows = _segment_rows(prepared, segments, kind, alignment, notes)
    wearer = _wearer_of(table, kind)
    keys = [(int(session), w) if kind == "kemdy19" else (dialogue, w)
            for session, dialogue, w in zip(table["Session"], table["dialogue"], wearer)]
    missing = sorted({k for k in keys if k not in prepared}, key=str)
    if missing:
        shown = [f"Sess{k[0]:02d}{k[1]}" if kind == "kemdy19" else f"{k[0]}_{k[1]}" for k in missing]
        notes.append(f"no bio files (masked) for {len(shown)} wearer recordings: {', '.join(shown[:12])}"
                     + (f" and {len(shown) - 12} more" if len(shown) > 12 else ""))
    features = np.zeros((len(table), len(FEATURES)), dtype=np.float32)
    for i, (seg, key) in enumerate(zip(table["Segment ID"], keys)):
        picked = {s: rows[key][s].get(seg, np.array([], dtype=int)) for s in rows.get(key, {})}
        signals = prepared.get(key, {})
        eda = signals.get("EDA")
        features[i] = utterance_features(
            (eda.z[picked["EDA"]], eda.tonic[picked["EDA"]], eda.peaks[picked["EDA"]]) if "EDA" in picked else None,
            signals["TEMP"].z[picked["TEMP"]] if "TEMP" in picked else None,
            (signals["IBI"].recording.values[picked["IBI"]], signals["IBI"].z[picked["IBI"]])
            if "IBI" in picked else None)
    report = {"utterances": {role: {"of": int((table["role"] == role).sum()),
                                    **{s: int(features[(table["role"] == role).to_numpy(), 14 + k].sum())
                                       for k, s in enumerate(SIGNALS)}}
                             for role in sorted(set(table["role"]))}, "notes": notes}
    return features, report


def bio_cache_paths(out: Path, alignment: str) -> tuple[Path, Path]:
    """(features .npy, index .json) of the bio-signal features in a cache folder."""
    return Path(out) / "features" / f"bio_{alignment}.npy", Path(out) / "features" / f"bio_{alignment}.json"


def _row_keys(table: pd.DataFrame) -> list[str]:
    return [f"{role}|{seg}" for role, seg in zip(table["role"], table["Segment ID"])]


def build_bio_cache(out: Path, data_dir: Path, kind: str, table: pd.DataFrame, alignment: str = "clock",
                    may_write=None) -> dict | None:
    """Write the bio features of the annotation `table`'s rows into the cache folder `out` unless they are up to
    date (the bio files' fingerprint, the table's rows, the alignment) -> the report (rows with each signal per
    role, notes), or None for a corpus without bio folders. `may_write(what)` may refuse (read-only storage)."""
    files = bio_files(data_dir)
    if not files:
        return None
    npy_path, meta_path = bio_cache_paths(out, alignment)
    wanted = {"format": BIO_FORMAT, "alignment": alignment, "sources": fingerprint(data_dir, files),
              "rows": _row_keys(table)}
    meta = cached_meta(npy_path, meta_path, wanted)
    if meta is not None:
        print(f"{npy_path.name} (bio-signal features) is up to date")
        return meta["report"]
    if may_write is not None:
        may_write("bio-signal features")
    features, report = corpus_features(data_dir, kind, table, alignment)
    write_array_cache(npy_path, meta_path, features, {**wanted, "features": list(FEATURES), "report": report})
    return report


def load_bio(out: Path, alignment: str, table: pd.DataFrame) -> np.ndarray | None:
    """The cached bio features of `table`'s rows (roles and Segment IDs), (len(table), len(FEATURES)) float32; None
    where the cache folder has none (a corpus without bio folders)."""
    npy_path, meta_path = bio_cache_paths(out, alignment)
    if not meta_path.exists():
        return None
    position = {key: i for i, key in enumerate(json.loads(meta_path.read_text(encoding="utf-8"))["rows"])}
    features = np.load(npy_path)
    index = np.array([position.get(key, -1) for key in _row_keys(table)])
    return np.where(index[:, None] >= 0, features[np.maximum(index, 0)], 0).astype(np.float32)
