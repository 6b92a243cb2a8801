"""Raw KEMDy19 or KEMDy20 folder -> annotation tables, sentence embeddings and a log-mel spectrogram cache.

    python preprocess.py --make_demo data/KEMDy19        # synthetic corpus in the real layout
    python preprocess.py --data_dir data/KEMDy19 [--text_encoder NAME] [--speech_model ID_OR_DIR]

The corpus is recognised by its annotation files (KEMDy19: SessionNN_{F,M}_res.csv; KEMDy20:
SessNN_eval.csv; --corpus overrides), and both come out in one schema. Outputs go next to the
corpus (the published layout): annotation.csv, df_speaker.csv, df_listener.csv (KEMDy20: no rows), embedding_<dim>.npy (+ .json with ids), features/logmel.npy (+ .json). Every
output is written to a temporary name and renamed, and a second run reuses what is up to date.
"""
import argparse
import hashlib
import io
import json
import re
import time
from collections import defaultdict
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch
import torchaudio
from tqdm import tqdm

from constants import (DEFAULT_DATA_DIR, DEFAULT_TEXT_DIM, DEFAULT_TEXT_ENCODER_DEMO, DEFAULT_TEXT_ENCODER_REAL,
                       DEMO_MARKER_FILE, EMOTION_ALIASES, EMOTIONS, F_MAX, F_MIN, HOP_LENGTH, LOG_OFFSET, N_FFT,
                       N_MELS, NUM_RATERS, PROTOCOLS, RATING_RANGE, SAMPLE_RATE)
from speech_features import build_speech_cache
from text_encoder import embedding_paths, fit_tfidf, save_tfidf, tfidf_embeddings, transformer_embeddings
from utils import atomic_path, write_text

ANNOTATION_COLUMNS = 13 + 3 * NUM_RATERS  # Numb, 4x(start,end), Segment ID, 3 totals, 10 raters x 3
KEMDY20_COLUMNS = 7 + 3 * NUM_RATERS  # Numb, start, end, Segment ID, 3 totals, 10 raters x 3
SEGMENT_ID = re.compile(r"^Sess(\d{2})_((?:script|impro)\d{2})_([FM])(\d{3})$")
KEMDY20_SEGMENT_ID = re.compile(r"^Sess(\d{2})_(script\d{2})_(User\d{3}[FM])_(\d{3})$")
ANNOTATION_FILES = {"kemdy19": re.compile(r"^Session(\d{2})_([FM])_res\.csv$"),
                    "kemdy20": re.compile(r"^Sess(\d{2})_eval\.csv$")}
MARKER = re.compile(r"(?<![A-Za-z])[cnNulbo]/|[*+/]")
TABLE_COLUMNS = (["start", "end", "Segment ID", "Emotion", "Valence", "Arousal"]
                 + [f"{k}.{i}" for k in ("Emotion", "Valence", "Arousal") for i in range(1, NUM_RATERS + 1)]
                 + ["speaker", "text", "role", "Session", "script", "sequence", "dialogue"])


class CorpusError(ValueError):
    """Bad input in the corpus: the message names the file/row and what was expected."""


def is_demo_corpus(data_dir: str | Path) -> bool:
    return (Path(data_dir) / DEMO_MARKER_FILE).exists()


def decode_text(raw: bytes, path: Path) -> str:
    """UTF-8 (with or without BOM), UTF-16 with a BOM (Windows Notepad's "Unicode"), else cp949 (the
    sister corpus KEMDy20's encoding)."""
    encodings = ("utf-16",) if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else ("utf-8-sig", "cp949")
    for encoding in encodings:
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise CorpusError(f"{path}: text is neither UTF-8, UTF-16 nor cp949")


def clean_transcript(text: str) -> str:
    """Strip the annotation markers (c/ n/ N/ u/ l/ b/ o/, *, +, bare /) and collapse spaces."""
    return " ".join(MARKER.sub(" ", text).split())


def parse_emotions(cell: str, where: str) -> list[str]:
    """'neutral;happy' -> ['neutral', 'happy'] with the 'disqust' spelling mapped to 'disgust'."""
    labels = []
    for part in str(cell).split(";"):
        name = EMOTION_ALIASES.get(part.strip().lower(), part.strip().lower())
        if name not in EMOTIONS:
            raise CorpusError(f"{where}: unknown emotion '{part.strip()}' (expected one of {', '.join(EMOTIONS)})")
        labels.append(name)
    return labels


def _rating(cell: str, where: str, allow_blank: bool) -> float:
    if cell.strip() == "" and allow_blank:
        return float("nan")
    try:
        value = float(cell)
    except ValueError:
        value = float("nan")
    if not RATING_RANGE[0] <= value <= RATING_RANGE[1]:
        raise CorpusError(f"{where}: rating '{cell}' is not a number from {RATING_RANGE[0]:g} to {RATING_RANGE[1]:g}")
    return value


def _seconds(cell: str, where: str) -> float:
    """A wav start/end time in seconds; blank is NaN (such rows are dropped and named later)."""
    if cell.strip() == "":
        return float("nan")
    try:
        return float(cell)
    except ValueError:
        raise CorpusError(f"{where}: wav time '{cell}' is not a number of seconds") from None


def _read_rows(path: Path, columns: int, layout: str) -> tuple[pd.DataFrame, pd.Series]:
    """The data rows of an annotation file, read positionally after its two header rows (whose blank
    cells may be empty or a space), and which of them are blank."""
    raw = pd.read_csv(io.StringIO(decode_text(path.read_bytes(), path)), header=None, skiprows=2, dtype=str,
                      keep_default_na=False, skip_blank_lines=False)
    if raw.shape[1] != columns:
        raise CorpusError(f"{path}: {raw.shape[1]} columns, expected {columns} ({layout})")
    return raw, raw.apply(lambda r: "".join(r).strip() == "", axis=1)


def _labels(cells: pd.Series, first: int, where: str) -> dict:
    """Total emotion/valence/arousal at `first`, then the ten raters' triples."""
    record = {"Emotion": ";".join(parse_emotions(cells[first], where)),
              "Valence": _rating(cells[first + 1], where, allow_blank=False),
              "Arousal": _rating(cells[first + 2], where, allow_blank=False)}
    for rater in range(NUM_RATERS):
        emotion, valence, arousal = (cells[first + 3 + 3 * rater + k] for k in range(3))
        record[f"Emotion.{rater + 1}"] = ";".join(parse_emotions(emotion, where)) if emotion.strip() else ""
        record[f"Valence.{rater + 1}"] = _rating(valence, where, allow_blank=True)
        record[f"Arousal.{rater + 1}"] = _rating(arousal, where, allow_blank=True)
    return record


def read_annotation_file(path: str | Path) -> tuple[pd.DataFrame, list[str], list[str]]:
    """One annotation file, KEMDy19's `SessionNN_{F|M}_res.csv` or KEMDy20's `SessNN_eval.csv`
    -> (rows, names of the blank rows, Segment IDs whose session prefix was corrected)."""
    path = Path(path)
    if ANNOTATION_FILES["kemdy20"].match(path.name):
        return _read_kemdy20_file(path)
    match = ANNOTATION_FILES["kemdy19"].match(path.name)
    if not match:
        raise CorpusError(f"{path}: annotation file name is not SessionNN_F_res.csv, SessionNN_M_res.csv (KEMDy19) "
                          "or SessNN_eval.csv (KEMDy20)")
    actor = match.group(2)
    raw, blank = _read_rows(path, ANNOTATION_COLUMNS, f"KEMDy19: Numb, 4 start/end pairs, Segment ID, 3 totals, "
                                                      f"{NUM_RATERS} raters x 3")
    records, seen = [], {}
    for index, cells in raw[~blank].iterrows():
        line = index + 3  # 1-based line in the file, after the two header rows
        where = f"{path} line {line}"
        seg_id = cells[9].strip()
        parts = SEGMENT_ID.match(seg_id)
        if not parts:
            raise CorpusError(f"{where}: Segment ID '{seg_id}' is not SessNN_{{scriptNN|improNN}}_{{F|M}}NNN")
        if seg_id in seen:
            raise CorpusError(f"{where}: Segment ID {seg_id} repeats line {seen[seg_id]}")
        seen[seg_id] = line
        record = {"start": _seconds(cells[1], where), "end": _seconds(cells[2], where), "Segment ID": seg_id,
                  **_labels(cells, 10, where)}
        session, script, speaker, sequence = parts.groups()
        record.update(speaker=speaker, text="", role="speaker" if speaker == actor else "listener",
                      Session=int(session), script=script, sequence=int(sequence),
                      dialogue=f"Sess{session}_{script}")
        records.append(record)
    blank_lines = [f"{path.name} line {index + 3}" for index in np.flatnonzero(blank.to_numpy())]
    return pd.DataFrame.from_records(records, columns=TABLE_COLUMNS), blank_lines, []


def _read_kemdy20_file(path: Path) -> tuple[pd.DataFrame, list[str], list[str]]:
    """KEMDy20's `SessNN_eval.csv`: one file per session, every row the speaker's own emotion."""
    session = ANNOTATION_FILES["kemdy20"].match(path.name).group(1)
    raw, blank = _read_rows(path, KEMDY20_COLUMNS, f"KEMDy20: Numb, start, end, Segment ID, 3 totals, "
                                                   f"{NUM_RATERS} raters x 3")
    records, seen, renamed = [], {}, []
    for index, cells in raw[~blank].iterrows():
        line = index + 3
        where = f"{path} line {line}"
        seg_id = cells[3].strip()
        parts = KEMDY20_SEGMENT_ID.match(seg_id)
        if not parts:
            raise CorpusError(f"{where}: Segment ID '{seg_id}' is not SessNN_scriptNN_UserNNN{{F|M}}_NNN")
        if parts.group(1) != session:
            # Older copies: some IDs in Sess17_eval.csv carry another session's prefix while their files
            # are Sess17_...; the file name is right, so the prefix is rewritten (and named in the summary).
            renamed.append(f"{seg_id} -> Sess{session}{seg_id[6:]} ({path.name} line {line})")
            seg_id = f"Sess{session}{seg_id[6:]}"
        if seg_id in seen:
            raise CorpusError(f"{where}: Segment ID {seg_id} repeats line {seen[seg_id]}")
        seen[seg_id] = line
        _, script, speaker, sequence = parts.groups()
        records.append({"start": _seconds(cells[1], where), "end": _seconds(cells[2], where), "Segment ID": seg_id,
                        **_labels(cells, 4, where), "speaker": speaker, "text": "", "role": "speaker",
                        "Session": int(session), "script": script, "sequence": int(sequence),
                        "dialogue": f"Sess{session}_{script}"})
    blank_lines = [f"{path.name} line {index + 3}" for index in np.flatnonzero(blank.to_numpy())]
    return pd.DataFrame.from_records(records, columns=TABLE_COLUMNS), blank_lines, renamed


def segment_path(data_dir: Path, seg_id: str, suffix: str) -> Path:
    """KEMDy19: wav/SessionNN/SessNN_scriptNN/<ID><suffix>; KEMDy20: wav/SessionNN/<ID><suffix> (flat)."""
    kemdy19 = SEGMENT_ID.match(seg_id)
    if kemdy19:
        session, script = kemdy19.group(1, 2)
        return data_dir / "wav" / f"Session{session}" / f"Sess{session}_{script}" / f"{seg_id}{suffix}"
    return data_dir / "wav" / f"Session{seg_id[4:6]}" / f"{seg_id}{suffix}"


def detect_corpus(data_dir: str | Path, corpus: str = "auto") -> str:
    """'kemdy19' or 'kemdy20' from the annotation file names; `corpus` (--corpus) overrides. A folder without
    annotation files is taken as KEMDy19 (where the demo corpus is made)."""
    names = [p.name for p in (Path(data_dir) / "annotation").glob("*.csv")]
    found = [kind for kind, pattern in ANNOTATION_FILES.items() if any(pattern.match(n) for n in names)]
    if corpus != "auto":
        if found and corpus not in found:
            raise SystemExit(f"error: --corpus {corpus}, but {data_dir}/annotation holds {found[0].upper()} "
                             "annotation files")
        return corpus
    if len(found) > 1:
        raise SystemExit(f"error: {data_dir}/annotation holds both KEMDy19 (SessionNN_F_res.csv) and KEMDy20 "
                         "(SessNN_eval.csv) annotation files; keep one corpus per folder")
    return found[0] if found else "kemdy19"


def check_corpus(data_dir: Path, corpus: str = "auto") -> list[Path]:
    """The annotation files, or one line saying where the corpus goes and how to make the demo."""
    kind = detect_corpus(data_dir, corpus)
    files = sorted(p for p in (data_dir / "annotation").glob("*.csv") if ANNOTATION_FILES[kind].match(p.name))
    if not files:
        raise SystemExit(f"error: no KEMDy19 or KEMDy20 corpus at {data_dir} (expected {data_dir}/annotation/"
                         f"SessionNN_F_res.csv or SessNN_eval.csv, and {data_dir}/wav/). Put the licensed corpus "
                         f"there, or make the demo corpus with `python preprocess.py --make_demo {data_dir}`")
    return files


def fingerprint(paths: list[Path]) -> str:
    """Changes when any file is added, removed or modified (name, size, mtime)."""
    digest = hashlib.sha1()
    for p in sorted(paths):
        st = p.stat()
        digest.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def load_audio(path: Path) -> np.ndarray:
    """Mono float32 at 16 kHz; stereo is averaged, other rates resampled. Raises CorpusError if unusable."""
    try:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as error:
        raise CorpusError(f"{path}: unreadable audio ({error})") from None
    audio = audio.mean(axis=1)
    if audio.size == 0:
        raise CorpusError(f"{path}: audio has no samples")
    if not np.isfinite(audio).all():
        raise CorpusError(f"{path}: audio has NaN or infinite samples")
    if rate != SAMPLE_RATE:
        audio = torchaudio.functional.resample(torch.from_numpy(audio), rate, SAMPLE_RATE).numpy()
    return audio


@lru_cache(maxsize=1)
def _mel_transform() -> torchaudio.transforms.MelSpectrogram:
    return torchaudio.transforms.MelSpectrogram(sample_rate=SAMPLE_RATE, n_fft=N_FFT, hop_length=HOP_LENGTH,
                                                n_mels=N_MELS, f_min=F_MIN, f_max=F_MAX, power=2.0)


def log_mel(audio: np.ndarray) -> np.ndarray:
    """(frames, n_mels) float16 log-mel spectrogram with the published settings.

    A clip shorter than one FFT window is zero-padded to it: the centred STFT's reflect padding needs
    more than n_fft / 2 samples, and a click of a few ms still gets a valid (short) spectrogram.
    """
    if len(audio) < N_FFT:
        audio = np.pad(audio, (0, N_FFT - len(audio)))
    with torch.inference_mode():
        mel = _mel_transform()(torch.from_numpy(np.ascontiguousarray(audio)))
    return torch.log(mel + LOG_OFFSET).T.numpy().astype(np.float16)


def feature_settings() -> dict:
    return {"sample_rate": SAMPLE_RATE, "n_fft": N_FFT, "hop_length": HOP_LENGTH, "n_mels": N_MELS,
            "f_min": F_MIN, "f_max": F_MAX, "log_offset": LOG_OFFSET}


def save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def build_spectrogram_cache(data_dir: Path, seg_ids: list[str]) -> dict[str, str]:
    """Write features/logmel.npy: all utterances' frames concatenated, one memory-mappable array.

    Returns {Segment ID: reason} for the wavs that could not be used (skipped, not fatal).
    """
    out_dir = data_dir / "features"
    out_dir.mkdir(exist_ok=True)
    chunks, ids, failed = [], [], {}
    for seg_id in tqdm(seg_ids, desc="log-mel spectrograms", unit="utt"):
        try:
            audio = load_audio(segment_path(data_dir, seg_id, ".wav"))
        except CorpusError as error:
            failed[seg_id] = str(error)
            continue
        if len(audio) < N_FFT:
            print(f"note: {segment_path(data_dir, seg_id, '.wav')} has {len(audio)} samples, less than one "
                  f"{N_FFT}-sample FFT window: zero-padded to it")
        chunks.append(log_mel(audio))
        ids.append(seg_id)
    lengths = [len(c) for c in chunks]
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int).tolist() if lengths else []
    frames = np.concatenate(chunks) if chunks else np.zeros((0, N_MELS), np.float16)
    save_npy(out_dir / "logmel.npy", frames)
    write_text(out_dir / "logmel.json", json.dumps(
        {"settings": feature_settings(), "ids": ids, "offsets": offsets, "lengths": lengths, "failed": failed}))
    return failed


def build_tables(data_dir: Path, files: list[Path]) -> tuple[pd.DataFrame, dict[str, list[str]], list[str]]:
    """All rows of all annotation files with their cleaned transcripts, the dropped rows by reason
    (blank, no start time, no wav, no txt, unreadable txt), each named, and the kept rows whose
    Segment ID was corrected (KEMDy20's session-prefix glitch)."""
    tables, dropped, corrected = [], defaultdict(list), []
    for path in tqdm(files, desc="annotation files", unit="file"):
        table, blank_lines, renamed = read_annotation_file(path)
        dropped["blank row"] += blank_lines
        corrected += renamed
        tables.append(table)
    table = pd.concat(tables, ignore_index=True)
    # A row without a start time cannot be placed in its dialogue: sorting it anywhere would put the
    # wrong utterances in the context windows, so it is dropped and named.
    no_start = table["start"].isna()
    dropped["no start time"] += table.loc[no_start, "Segment ID"].tolist()
    table = table[~no_start]
    texts, missing = {}, {}
    for seg_id in tqdm(table["Segment ID"].unique(), desc="transcripts", unit="utt"):
        txt = segment_path(data_dir, seg_id, ".txt")
        if not segment_path(data_dir, seg_id, ".wav").exists():
            missing[seg_id] = "no wav"
        elif not txt.exists():
            missing[seg_id] = "no txt"
        else:
            try:
                texts[seg_id] = clean_transcript(decode_text(txt.read_bytes(), txt))
            except CorpusError as error:
                print(f"skipped: {error}")
                missing[seg_id] = "unreadable txt"
    unusable = table["Segment ID"].isin(missing)
    for seg_id in table.loc[unusable, "Segment ID"]:
        dropped[missing[seg_id]].append(seg_id)
    table = table[~unusable].copy()
    table["text"] = table["Segment ID"].map(texts)
    return table, dropped, corrected


def default_text_encoder(data_dir: str | Path) -> str:
    return DEFAULT_TEXT_ENCODER_DEMO if is_demo_corpus(data_dir) else DEFAULT_TEXT_ENCODER_REAL


def build_embeddings(data_dir: Path, table: pd.DataFrame, text_encoder: str, text_dim: int, seed: int) -> None:
    """embedding_<dim>.npy (+ .json): one sentence embedding per Segment ID."""
    npy_path, meta_path, tfidf_path = embedding_paths(data_dir, text_dim)
    texts_by_id = table.drop_duplicates("Segment ID").set_index("Segment ID")["text"]
    ids, texts = texts_by_id.index.tolist(), texts_by_id.fillna("").tolist()
    if text_encoder == "tfidf":
        pipeline = fit_tfidf(texts, text_dim, seed)
        vectors = tfidf_embeddings(texts, pipeline, text_dim)
        save_tfidf(pipeline, tfidf_path)
    else:
        vectors = transformer_embeddings(texts, text_encoder)
        if vectors.shape[1] != text_dim:
            raise SystemExit(f"error: --text_encoder {text_encoder} gives {vectors.shape[1]}-d embeddings, "
                             f"not --text_dim {text_dim}; pass --text_dim {vectors.shape[1]}")
    save_npy(npy_path, vectors)
    write_text(meta_path, json.dumps({"encoder": text_encoder, "dim": text_dim, "ids": ids}))


def preprocess(data_dir: str | Path = DEFAULT_DATA_DIR, text_encoder: str | None = None,
               text_dim: int = DEFAULT_TEXT_DIM, seed: int = 0, speech_model: str | None = None,
               corpus: str = "auto") -> dict:
    """Run every step that is not up to date; return the summary (corpus, rows per role, classes, drops)
    with the seconds taken by the steps that ran (`seconds`). With `speech_model`, also the cache of its
    pooled layer features (speech_features.py). `corpus` (kemdy19/kemdy20) overrides the detection."""
    data_dir = Path(data_dir)
    seconds = {}
    files = check_corpus(data_dir, corpus)
    kind = detect_corpus(data_dir, corpus)
    # --corpus can only confirm what the files say (a mismatch stops in detect_corpus).
    print(f"{data_dir}: {PROTOCOLS[kind].name} layout (from its annotation file names)")
    text_encoder = text_encoder or default_text_encoder(data_dir)
    wav_dir = data_dir / "wav"
    sources = fingerprint(files + list(wav_dir.rglob("*.wav")) + list(wav_dir.rglob("*.txt")))
    manifest_path = data_dir / "preprocess_manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.exists() else {}
    outputs = [data_dir / n for n in ("annotation.csv", "df_speaker.csv", "df_listener.csv",
                                      "features/logmel.npy", "features/logmel.json")]
    if (manifest.get("sources") == sources and manifest.get("features") == feature_settings()
            and manifest.get("summary", {}).get("corpus") == kind and all(p.exists() for p in outputs)):
        print(f"annotation tables and spectrogram cache in {data_dir} are up to date")
        table = None
    else:
        table, dropped, corrected = build_tables(data_dir, files)
        started = time.perf_counter()
        failed = build_spectrogram_cache(data_dir, sorted(table["Segment ID"].unique()))
        seconds["spectrograms"] = time.perf_counter() - started
        for reason in failed.values():
            print(f"skipped: {reason}")
        unusable = table["Segment ID"].isin(failed)
        dropped["unusable wav"] += table.loc[unusable, "Segment ID"].tolist()
        table = table[~unusable].sort_values(["Session", "dialogue", "start", "Segment ID"], kind="stable")
        for name, rows in (("annotation.csv", table), ("df_speaker.csv", table[table.role == "speaker"]),
                           ("df_listener.csv", table[table.role == "listener"])):
            write_text(data_dir / name, rows.to_csv(index=False))
        manifest = {"sources": sources, "features": feature_settings(),
                    "summary": summarize(table, dropped, corrected, kind)}
        write_text(manifest_path, json.dumps(manifest, indent=1))
    npy_path, meta_path, _ = embedding_paths(data_dir, text_dim)
    wanted = {"encoder": text_encoder, "sources": sources}
    if npy_path.exists() and not meta_path.exists():
        print(f"using {npy_path} as given (not made by this repo; e.g. the contest's KoBERT embeddings)")
    elif manifest.get("embedding", {}).get(str(text_dim)) == wanted and npy_path.exists():
        print(f"{npy_path.name} ({text_encoder}) is up to date")
    else:
        if table is None:
            table = pd.read_csv(data_dir / "annotation.csv", keep_default_na=False)
        started = time.perf_counter()
        build_embeddings(data_dir, table, text_encoder, text_dim, seed)
        seconds["embeddings"] = time.perf_counter() - started
        manifest.setdefault("embedding", {})[str(text_dim)] = wanted
        write_text(manifest_path, json.dumps(manifest, indent=1))
    if speech_model:
        if table is None:
            table = pd.read_csv(data_dir / "annotation.csv", keep_default_na=False)
        seg_ids = sorted(table["Segment ID"].unique())
        seconds["speech"] = build_speech_cache(data_dir, seg_ids, [segment_path(data_dir, s, ".wav") for s in seg_ids],
                                               speech_model, sources, load_audio)
    print_summary(manifest["summary"], data_dir)
    return {**manifest["summary"], "seconds": seconds}


def summarize(table: pd.DataFrame, dropped: dict[str, list[str]], corrected: list[str], kind: str) -> dict:
    summary = {"corpus": kind, "rows": len(table), "utterances": int(table["Segment ID"].nunique()),
               "corrected_ids": corrected,
               "dropped_rows": {k: len(v) for k, v in dropped.items() if v},
               "dropped": {k: sorted(set(v)) for k, v in dropped.items() if v}, "roles": {}}
    for role in ("speaker", "listener"):
        rows = table[table.role == role]
        tied = rows["Emotion"].str.contains(";")
        counts = rows.loc[~tied, "Emotion"].value_counts()
        summary["roles"][role] = {"rows": len(rows), "tied": int(tied.sum()),
                                  "classes": {e: int(counts.get(e, 0)) for e in EMOTIONS}}
    return summary


def print_summary(summary: dict, data_dir: Path) -> None:
    name = PROTOCOLS[summary.get("corpus", "kemdy19")].name
    demo = f" (synthetic demo corpus in the {name} layout, not {name})" if is_demo_corpus(data_dir) else f" ({name})"
    print(f"{data_dir}{demo}: {summary['rows']} rows, {summary['utterances']} utterances")
    for role, info in summary["roles"].items():
        if not info["rows"]:  # KEMDy20 annotates the speaker only
            continue
        classes = ", ".join(f"{e} {n}" for e, n in info["classes"].items())
        print(f"  {role:8s} {info['rows']} rows: {classes}, tied {info['tied']}")
    if not summary["dropped_rows"]:
        print("  dropped rows: none")
    for reason, count in summary["dropped_rows"].items():
        print(f"  dropped rows, {reason}: {count} ({', '.join(summary.get('dropped', {}).get(reason, []))})")
    if summary.get("corrected_ids"):
        print(f"  kept with the session prefix of their annotation file: {len(summary['corrected_ids'])} "
              f"({', '.join(summary['corrected_ids'])})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=DEFAULT_DATA_DIR, help="raw KEMDy19 or KEMDy20 folder (default: %(default)s)")
    parser.add_argument("--corpus", choices=["auto", *PROTOCOLS], default="auto",
                        help="which corpus layout --data_dir holds; auto = from the annotation file names "
                             "(default: %(default)s)")
    parser.add_argument("--layout", choices=list(PROTOCOLS), default="kemdy19",
                        help="--make_demo: the corpus layout to write (default: %(default)s)")
    parser.add_argument("--make_demo", metavar="DIR", help="write a synthetic demo corpus to DIR and exit")
    parser.add_argument("--text_encoder", default=None,
                        help=f"'{DEFAULT_TEXT_ENCODER_REAL}' (default for KEMDy19), another Hugging Face id or "
                             f"local folder, or 'tfidf' (offline; default for the demo corpus)")
    parser.add_argument("--text_dim", type=int, default=DEFAULT_TEXT_DIM, help="embedding size (default: %(default)s)")
    parser.add_argument("--speech_model", default=None, metavar="ID_OR_DIR",
                        help="also cache the pooled layer features of this pretrained speech encoder (a Hugging Face "
                             "id or local folder: wav2vec2, HuBERT, WavLM, data2vec-audio, XLS-R) (default: none)")
    parser.add_argument("--seed", type=int, default=0, help="demo corpus and tf-idf seed (default: %(default)s)")
    parser.add_argument("--sessions", type=int, default=None, help="demo: sessions (default: all of the layout's, "
                                                                   "20 or 40)")
    parser.add_argument("--scripts", type=int, default=1, help="demo: scripted dialogues per session (default: %(default)s)")
    parser.add_argument("--impros", type=int, default=1, help="demo: improvised dialogues per session (default: %(default)s)")
    parser.add_argument("--turns", type=int, default=20, help="demo: utterances per dialogue (default: %(default)s)")
    args = parser.parse_args()
    try:
        if args.make_demo:
            from demo_corpus import make_demo_corpus
            make_demo_corpus(args.make_demo, args.seed, args.sessions, args.scripts, args.impros, args.turns,
                             layout=args.layout)
            print(f"demo corpus written to {args.make_demo}; next: python preprocess.py --data_dir {args.make_demo}")
        else:
            preprocess(args.data_dir, args.text_encoder, args.text_dim, args.seed, args.speech_model, args.corpus)
    except CorpusError as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
