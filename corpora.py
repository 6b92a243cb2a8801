"""Labelled speech besides KEMDy: a manifest of any recordings, and RAVDESS, TESS and EmoDB in the layouts
their publishers distribute -> the table every corpus shares (readers.TABLE_COLUMNS), each with its own labels.

- `manifest.csv` at the corpus root (`--corpus csv`): one row per utterance with the columns `path` (wav,
  relative to the root) and `emotion`, and optionally `arousal`, `valence` (1-5), `speaker`, `session` (the unit
  of the splits; default: the speaker), `dialogue` and `start` (dialogue order for context windows; without them
  each utterance is its own dialogue) and `text` (else a same-stem .txt, if any).
- RAVDESS speech (Livingstone & Russo 2018): `Actor_NN/03-01-EE-II-SS-RR-AA.wav` (modality, vocal channel,
  emotion, intensity, statement, repetition, actor); 24 actors, 8 emotions; the two statements are the text.
- TESS (Dupuis & Pichora-Fuller 2010): speaker folders `OAF_<emotion>`/`YAF_<emotion>` holding
  `<speaker>_<word>_<emotion>.wav`; 2 speakers x 200 words x 7 emotions; the text is "Say the word <word>".
- EmoDB (Burkhardt et al. 2005): `wav/SSTTTEV.wav` (speaker, text code, emotion letter, version); 10 speakers,
  7 emotions; no transcripts here (the text modality is off).

Sessions (the unit of the splits) are speakers, except TESS: with two speakers, each speaker's 200 words are cut
into 5 groups (sessions 1-5: OAF, 6-10: YAF), so that validation can hold out words of the training speaker.
Every row is kept or dropped and named, as for KEMDy (readers.py's policy).
"""
import csv
import io
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import pandas as pd

from constants import CORPUS_NAMES, KEMDY, KEMDY_FACTS
from errors import CorpusError
from readers import (TABLE_COLUMNS, FileIndex, ReadReport, annotation_files, annotation_kind, clean_transcript,
                     decode_text, hidden, natural_key, nfc, parse_rating, printable, read_corpus)

MANIFEST_FILE = "manifest.csv"
RAVDESS_EMOTIONS = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "angry", "06": "fearful",
                    "07": "disgust", "08": "surprised"}
RAVDESS_STATEMENTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
RAVDESS_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")
TESS_EMOTIONS = {"neutral": "neutral", "happy": "happy", "sad": "sad", "angry": "angry", "fear": "fear",
                 "disgust": "disgust", "ps": "pleasant_surprise"}
TESS_SPEAKERS = ("OAF", "YAF")  # older and younger talker; the real corpus names one file OA_bite_neutral.wav
TESS_WORD_GROUPS = 5
EMODB_EMOTIONS = {"W": "anger", "L": "boredom", "E": "disgust", "A": "fear", "F": "happiness", "T": "sadness",
                  "N": "neutral"}
EMODB_SPEAKERS = ("03", "08", "09", "10", "11", "12", "13", "14", "15", "16")
EMODB_NAME = re.compile(r"^(\d\d)([ab]\d\d)([WLEAFTN])([a-z])$")
# The classes of each corpus, in the order its publisher lists them.
LAYOUTS_HELP = {"csv": "a manifest.csv at the folder's root", "ravdess": "Actor_NN/03-01-EE-II-SS-RR-AA.wav",
                "tess": "OAF_<emotion>/, YAF_<emotion>/ folders of <speaker>_<word>_<emotion>.wav",
                "emodb": "wav/SSTTTEV.wav"}  # what --corpus expects; the README's Your data shows every layout
# What a session (the unit of the splits) is: a manifest's is its speaker where it names them (split_units), else its
# session; KEMDy's is a recording session of two actors (constants.KEMDY_FACTS).
SPLIT_UNITS = {"ravdess": "speaker", "emodb": "speaker", "tess": "speaker (validation: a word group of the training "
                                                                  "speaker)"}
CLASSES = {"ravdess": list(RAVDESS_EMOTIONS.values()), "tess": list(TESS_EMOTIONS.values()),
           "emodb": [EMODB_EMOTIONS[k] for k in "NWLEAFT"]}


def detect_layout(data_dir: Path) -> str | None:
    """'csv', 'ravdess', 'tess' or 'emodb' from what the folder holds, or None."""
    if (data_dir / MANIFEST_FILE).is_file():
        return "csv"
    stems = [Path(name).stem for name in islice(_wav_names(data_dir), 200)] if data_dir.is_dir() else []
    if stems and sum(bool(RAVDESS_NAME.match(s)) for s in stems) > len(stems) / 2:
        return "ravdess"
    if stems and sum(s.split("_")[-1].lower() in TESS_EMOTIONS and s[:2] in ("OA", "YA") for s in stems) > len(stems) / 2:
        return "tess"
    if stems and sum(bool(EMODB_NAME.match(s)) for s in stems) > len(stems) / 2:
        return "emodb"
    return None


def _wav_names(data_dir: Path) -> Iterator[str]:
    """The names of the .wav files under `data_dir` (any case: .WAV too), hidden files and macOS leftovers left out,
    found lazily (layout detection reads the first 200)."""
    for folder, subfolders, names in os.walk(data_dir, followlinks=True):
        subfolders[:] = sorted(d for d in subfolders if not hidden(d))
        yield from (n for n in sorted(names) if n.lower().endswith(".wav") and not hidden(n))


def _table(records: list[dict]) -> pd.DataFrame:
    """Records with some of TABLE_COLUMNS -> all of them (raters blank, ratings NaN where absent)."""
    table = pd.DataFrame.from_records(records)
    for column in TABLE_COLUMNS:
        if column not in table:
            table[column] = np.nan if column.startswith(("Valence", "Arousal")) else ""
    return table[TABLE_COLUMNS]


def _utterance(seg_id: str, emotion: str, speaker: str, session: int, text: str, script: str = "",
               sequence: int = 0, dialogue: str | None = None, start: float = 0.0,
               valence: float = np.nan, arousal: float = np.nan) -> dict:
    return {"start": start, "end": np.nan, "Segment ID": seg_id, "Emotion": emotion, "Valence": valence,
            "Arousal": arousal, "speaker": speaker, "text": text, "role": "speaker", "Session": session,
            "script": script, "sequence": sequence, "dialogue": dialogue or seg_id}


def _wav_files(wavs: FileIndex) -> Iterator[tuple[str, Path]]:
    """(path relative to the corpus, path) of every .wav of the index, in the order of the relative paths."""
    return ((rel, path) for rel, path in sorted(wavs.files.items()) if rel.lower().endswith(".wav"))


def read_ravdess(data_dir: Path, wavs: FileIndex, report: ReadReport) -> tuple[list[dict], dict[str, Path]]:
    records, paths = [], {}
    for rel, path in _wav_files(wavs):
        parts = RAVDESS_NAME.match(path.stem)
        if not parts:
            report.dropped["not a RAVDESS file name"].append(printable(rel))
            continue
        modality, channel, emotion, intensity, statement, repetition, actor = parts.groups()
        if channel != "01":
            report.dropped["song (not speech)"].append(rel)
            continue
        if modality != "03":  # 01 audio-visual, 02 video-only: the same recordings as the audio-only 03 files
            report.dropped["not the audio-only modality (03): audio extracted from a video file"].append(rel)
            continue
        if emotion not in RAVDESS_EMOTIONS or statement not in RAVDESS_STATEMENTS or not 1 <= int(actor) <= 24:
            report.dropped["unknown emotion, statement or actor code"].append(rel)
            continue
        folder = re.search(r"Actor_(\d\d)", rel)
        if folder and folder.group(1) != actor:
            report.kept["actor in the name differs from its folder's (the name is used)"].append(rel)
        if path.stem in paths:
            report.dropped["a second copy of one file name"].append(rel)
            continue
        paths[path.stem] = path
        records.append(_utterance(path.stem, RAVDESS_EMOTIONS[emotion], f"Actor_{actor}", int(actor),
                                  RAVDESS_STATEMENTS[statement], f"statement{statement}_intensity{intensity}",
                                  int(repetition)))
    return records, paths


def read_tess(data_dir: Path, wavs: FileIndex, report: ReadReport) -> tuple[list[dict], dict[str, Path]]:
    found = []
    for rel, path in _wav_files(wavs):
        name = path.stem.split("_")
        speaker = next((s for s in TESS_SPEAKERS if Path(rel).parent.name.upper().startswith(s)), None)
        emotion = TESS_EMOTIONS.get(name[-1].lower()) if len(name) >= 3 else None
        if speaker is None or emotion is None:
            report.dropped["not a TESS file (speaker folder, <speaker>_<word>_<emotion>.wav)"].append(printable(rel))
            continue
        if name[0].upper() != speaker:  # e.g. the real OA_bite_neutral.wav in OAF_neutral/
            report.kept["speaker in the name differs from its folder's (the folder is used)"].append(rel)
        found.append((speaker, "_".join(name[1:-1]).lower(), emotion, path))
    words = sorted({word for _, word, _, _ in found})
    group = {word: k * TESS_WORD_GROUPS // max(len(words), 1) for k, word in enumerate(words)}
    records, paths = [], {}
    for speaker, word, emotion, path in found:
        seg_id = f"{speaker}_{word}_{emotion}"
        if seg_id in paths:
            report.dropped["a second copy of one utterance"].append(str(path.relative_to(data_dir)))
            continue
        paths[seg_id] = path
        session = TESS_SPEAKERS.index(speaker) * TESS_WORD_GROUPS + group[word] + 1
        records.append(_utterance(seg_id, emotion, speaker, session, f"Say the word {word}", word))
    return records, paths


def read_emodb(data_dir: Path, wavs: FileIndex, report: ReadReport) -> tuple[list[dict], dict[str, Path]]:
    records, paths = [], {}
    for rel, path in _wav_files(wavs):
        parts = EMODB_NAME.match(path.stem)
        if not parts or parts.group(1) not in EMODB_SPEAKERS:
            report.dropped["not an EmoDB file name (SSTTTEV.wav)"].append(printable(rel))
            continue
        speaker, text_code, emotion, version = parts.groups()
        if path.stem in paths:
            report.dropped["a second copy of one file name"].append(rel)
            continue
        paths[path.stem] = path
        records.append(_utterance(path.stem, EMODB_EMOTIONS[emotion], speaker, EMODB_SPEAKERS.index(speaker) + 1,
                                  "", text_code, ord(version) - ord("a")))
    return records, paths


@dataclass
class ManifestRow:
    """One data row of manifest.csv: its line (the last, for a quoted cell spanning lines), its cells by lower-cased
    column, its wav (found through the corpus's file index, names compared in NFC) and Segment ID (the wav's path
    relative to the folder, without suffix), its session and speaker (each defaults to the other), and why it cannot
    be used (None: it can)."""
    line: int
    cells: dict[str, str]
    wav: Path | None
    seg_id: str
    session: str
    speaker: str
    problem: str | None
    detail: str = ""  # what the problem was in this row, beside the reason shared by rows


def _relative_wav(data_dir: Path, cell: str) -> str | None:
    """A path cell (relative to the corpus folder or absolute, either slash) as a path relative to the folder, or
    None when it leaves the folder. Both sides are compared as spelled and, failing that, resolved: a path inside the
    folder is inside however it is spelled, and a symlinked audio folder inside it stays inside."""
    folder = os.path.abspath(data_dir)
    wav = os.path.normpath(os.path.join(folder, cell.replace("\\", "/")))
    for inside, path in ((folder, wav), (os.path.realpath(folder), os.path.realpath(wav))):
        if Path(path).is_relative_to(inside):
            return Path(os.path.relpath(path, inside)).as_posix()
    return None


def manifest_rows(data_dir: Path, wavs: FileIndex) -> list[ManifestRow]:
    """manifest.csv's data rows, each with its wav looked up in `wavs` and the first reason it cannot be used
    (a cell count other than the header's: an unquoted comma that would shift the cells; a path outside the folder;
    no such wav; no label; no speaker or session; a second row for one wav; a rating not from 1 to 5). CorpusError
    if the file lacks `path`, `emotion`, or both `speaker` and `session`."""
    path = data_dir / MANIFEST_FILE
    if not path.is_file():
        raise CorpusError(f"{data_dir} has no {MANIFEST_FILE} (--corpus csv reads a folder whose manifest.csv names "
                          "one recording per row: README, Your data)")
    reader = csv.reader(io.StringIO(decode_text(path.read_bytes(), path, lenient=True), newline=""))
    header = [c.strip().lower() for c in next(reader, [])]
    if not {"path", "emotion"} <= set(header) or not {"speaker", "session"} & set(header):
        raise CorpusError(f"{path}: needs the columns path, emotion and speaker or session (has "
                          f"{', '.join(sorted(c for c in header if c)) or 'none'})")
    rows, seen = [], {}
    for cells in reader:
        if not any(cell.strip() for cell in cells):
            continue
        row = {k: v.strip() for k, v in zip(header, cells) if k}
        relative = _relative_wav(data_dir, row["path"]) if row.get("path") else None
        wav = wavs.get(relative) if relative else None
        session = row.get("session") or row.get("speaker", "")
        speaker = row.get("speaker") or session
        problem = ("a cell count other than the header's (an unquoted comma in a cell?)" if len(cells) != len(header)
                   else "path outside the corpus folder" if row["path"] and relative is None else
                   "no wav" if wav is None else "no emotion label" if not row["emotion"] else
                   "no speaker or session" if not session else "a second row for one wav" if wav in seen else None)
        detail = (f"{len(cells)} cells, the header {len(header)}" if len(cells) != len(header) else
                  f"first at line {seen[wav]}" if problem == "a second row for one wav" else "")
        if problem is None:
            try:
                for k in ("valence", "arousal"):
                    if row.get(k):
                        parse_rating(row[k])
                float(row.get("start") or 0)
            except ValueError:
                problem = "rating not a number from 1 to 5, or start not a number"
        if problem is None:
            seen[wav] = reader.line_num
        seg_id = nfc(Path(relative).with_suffix("").as_posix()) if relative else row.get("path") or "?"
        rows.append(ManifestRow(reader.line_num, row, wav, seg_id, session, speaker, problem, detail))
    return rows


def split_units(rows: list[ManifestRow]) -> dict[str, str]:
    """Session -> the unit of the splits it belongs to, for the usable rows: where the manifest names speakers, a
    group of speakers linked by shared sessions (a speaker's sessions all go to one side of every split, and so do
    the speakers of a shared session: `alice+bob`), named by its speakers; else the session itself."""
    usable = [row for row in rows if row.problem is None]
    if not any("speaker" in row.cells for row in usable):
        return {row.session: row.session for row in usable}
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def root(node: tuple[str, str]) -> tuple[str, str]:
        while parent.setdefault(node, node) != node:
            node = parent[node]
        return node
    for row in usable:  # union-find over speakers and sessions
        parent[root(("speaker", row.speaker))] = root(("session", row.session))
    speakers: dict[tuple[str, str], set[str]] = {}
    for row in usable:
        speakers.setdefault(root(("session", row.session)), set()).add(row.speaker)
    return {row.session: "+".join(sorted(speakers[root(("session", row.session))], key=natural_key))
            for row in usable}


def _units_of(rows: list[ManifestRow]) -> list[str]:
    return sorted(set(split_units(rows).values()), key=natural_key)


def manifest_sessions(data_dir: Path) -> list[str]:
    """The names of the manifest's units of the splits (`split_units`: its speakers, or groups of speakers that share
    a session; its sessions where it names no speaker), in natural order: session k is the k-th."""
    return _units_of(manifest_rows(data_dir, FileIndex(data_dir)))


def read_manifest(data_dir: Path, wavs: FileIndex, report: ReadReport) -> tuple[list[dict], dict[str, Path]]:
    rows = manifest_rows(data_dir, wavs)
    unit_of = split_units(rows)
    units = _units_of(rows)
    for unit in units:
        sessions = sorted({s for s, u in unit_of.items() if u == unit}, key=natural_key)
        if len(sessions) > 1:  # kept on one side of every split
            report.kept["sessions of one speaker (or of speakers who share one) split as one unit"].append(
                f"{unit}: {', '.join(sessions)}")
    records, paths = [], {}
    for row in rows:
        cells, where = row.cells, f"{MANIFEST_FILE} line {row.line}"
        if row.problem:
            report.dropped[row.problem].append(f"{row.seg_id} ({where}{': ' + row.detail if row.detail else ''})")
            continue
        text = cells.get("text", "")
        txt = wavs.get(row.seg_id + ".txt")  # (the id is the wav's path without its suffix: "take.v2" stays whole)
        if "text" not in cells and txt is not None:
            try:
                text = decode_text(txt.read_bytes(), txt)
            except CorpusError:
                report.kept["unreadable txt (empty transcript)"].append(row.seg_id)
        paths[row.seg_id] = row.wav
        emotion = ";".join(nfc(part.strip().lower()) for part in cells["emotion"].split(";"))
        ratings = {k: parse_rating(cells[k]) if cells.get(k) else np.nan for k in ("valence", "arousal")}
        # A dialogue is named within its session: context windows never join two sessions' utterances.
        dialogue = f"{row.session}/{cells['dialogue']}" if cells.get("dialogue") else None
        records.append(_utterance(row.seg_id, emotion, row.speaker, units.index(unit_of[row.session]) + 1,
                                  clean_transcript(text), dialogue=dialogue,
                                  start=float(cells["start"]) if cells.get("start") else float(row.line),
                                  sequence=row.line, valence=ratings["valence"], arousal=ratings["arousal"]))
    return records, paths


def _names_speakers(data_dir: Path) -> bool:
    """Whether manifest.csv has a `speaker` column (its header alone is read)."""
    with open(data_dir / MANIFEST_FILE, "rb") as f:
        header = decode_text(f.readline(), data_dir / MANIFEST_FILE, lenient=True)
    return "speaker" in (c.strip().lower() for c in next(csv.reader([header]), []))


def session_names(kind: str) -> list[str]:
    """The names of RAVDESS's, TESS's and EmoDB's sessions (session k is the k-th); none for KEMDy (numbered)."""
    return {"ravdess": [f"Actor_{a:02d}" for a in range(1, 25)],
            "tess": [f"{s}_words{g + 1}" for s in TESS_SPEAKERS for g in range(TESS_WORD_GROUPS)],
            "emodb": list(EMODB_SPEAKERS)}.get(kind, [])


READERS = {"csv": read_manifest, "ravdess": read_ravdess, "tess": read_tess, "emodb": read_emodb}


def read_labelled(data_dir: Path, kind: str, wavs: FileIndex) -> tuple[pd.DataFrame, dict[str, Path], ReadReport, dict]:
    """A RAVDESS, TESS, EmoDB or manifest corpus -> (table, Segment ID -> wav, report, corpus facts: its classes,
    session names, whether it has transcripts and arousal/valence)."""
    report = ReadReport()
    records, paths = READERS[kind](data_dir, wavs, report)
    if not records:
        reasons = "; ".join(f"{reason}: {len(names)} ({names[0]}{', ...' if len(names) > 1 else ''})"
                            for reason, names in report.dropped.items())
        raise CorpusError(f"{data_dir}: no usable {CORPUS_NAMES[kind]} recording"
                          + (f": {reasons}" if reasons else f": no such files ({LAYOUTS_HELP[kind]})"))
    table = _table(records)
    found = sorted({label for cell in table["Emotion"] for label in cell.split(";")})
    classes = [c for c in CLASSES[kind] if c in found] if kind in CLASSES else found
    # RAVDESS's and TESS's transcripts are carrier sentences, the same for every emotion: audio alone by default.
    facts = {"classes": classes, "text": bool((table["text"] != "").any()),
             "modalities": ["audio"] if kind in ("ravdess", "tess", "emodb") else ["audio", "text"],
             "arousal_valence": bool(table[["Arousal", "Valence"]].notna().to_numpy().any()),
             "split_unit": SPLIT_UNITS.get(kind) or ("speaker" if _names_speakers(data_dir) else "session")}
    return table, paths, report, facts


def detect_corpus(data_dir: str | Path, corpus: str = "auto") -> str:
    """The corpus kind of a folder: KEMDy19/KEMDy20 by their annotation file names, else a manifest, RAVDESS, TESS
    or EmoDB by what the folder holds; `corpus` (--corpus) overrides what the files leave open. A folder with
    none of them is taken as KEMDy19 (where the demo corpus is made)."""
    data_dir = Path(data_dir)
    found = sorted({annotation_kind(p) for p in (data_dir / "annotation").glob("*.csv")} - {None})
    layout = None if found else detect_layout(data_dir)
    if corpus != "auto":
        if found and corpus not in found:
            raise CorpusError(f"--corpus {corpus}, but {data_dir}/annotation holds {found[0].upper()} annotation files")
        if layout and corpus in KEMDY:
            raise CorpusError(f"--corpus {corpus}, but {data_dir} holds no KEMDy annotation/ folder (it looks like "
                              f"{layout})")
        return corpus
    if len(found) > 1:
        raise CorpusError(f"{data_dir}/annotation holds both KEMDy19 (SessionNN_F_res.csv) and KEMDy20 "
                          "(SessNN_eval.csv) annotation files; keep one corpus per folder")
    return found[0] if found else layout or "kemdy19"


def source_files(data_dir: Path, kind: str) -> tuple[list[Path], FileIndex]:
    """(the files that define the table: annotation files or manifest.csv, the index of the audio and transcripts)."""
    if kind in KEMDY:
        return annotation_files(data_dir, kind), FileIndex(data_dir / "wav")
    return ([data_dir / MANIFEST_FILE] if kind == "csv" else []), FileIndex(data_dir)


def read_any(data_dir: Path, kind: str, files: list[Path],
             wavs: FileIndex) -> tuple[pd.DataFrame, dict[str, Path], ReadReport, dict]:
    """Any corpus -> (table in the shared schema, Segment ID -> wav, report, facts: classes, session names, whether
    it has transcripts and arousal/valence)."""
    if kind in KEMDY:
        table, paths, report = read_corpus(data_dir, kind, files, wavs)
        facts = dict(KEMDY_FACTS)
    else:
        table, paths, report, facts = read_labelled(data_dir, kind, wavs)
    if wavs.skipped:
        report.files["hidden files and macOS leftovers (._ twins, .DS_Store, __MACOSX), skipped"] += wavs.skipped
    return table, paths, report, facts
