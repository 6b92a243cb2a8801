"""Raw KEMDy19 / KEMDy20 folders -> one table of utterances in the shared schema, every glitch named.

Real corpora carry glitches no generator invents (a mistyped Segment ID, a wav without its transcript,
mixed encodings and line endings). The policy: a row is repaired when the corpus's own redundancy
proves the right value, else dropped and named; one row never stops a corpus. Only a file that is
not an annotation file at all (its header's column count) stops with a CorpusError.

Evidence that repairs a Segment ID that is malformed, repeated, of another session or without a wav:
- KEMDy19: the two files of a session (`_F_res`, `_M_res`) list the same segments with identical wav
  start/end times (measured on the real files), so such a row takes the ID of its sibling row (same
  start/end in the other file) when that ID is well-formed, has a wav and no other row of the file
  carries it. A real case: two rows of `Session03_F_res.csv` both read `Sess03_impro02_M001`; the
  sibling file and `Sess03_impro02_F001.wav` show the first is F001.
- KEMDy20: each wav lasts end - start (within 1 ms on the real files), so such a row takes the ID of
  the one wav of its dialogue that no row carries and whose length matches; an ID with another
  session's prefix (the Sess17 glitch of older copies) takes its file's session when that wav exists.
A row whose ID no evidence settles is dropped and named. Text is NFC-normalised and files are
matched by NFC names, so decomposed Hangul (macOS, some editors) reads the same as composed.
"""
import csv
import io
import os
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from constants import EMOTION_ALIASES, EMOTIONS, NUM_RATERS, RATING_RANGE
from errors import CorpusError

SEGMENT_IDS = {"kemdy19": re.compile(r"^Sess(\d{2})_((?:script|impro)\d{2})_([FM])(\d{3})$"),
               "kemdy20": re.compile(r"^Sess(\d{2})_(script\d{2})_(User\d{3}[FM])_(\d{3})$")}
ID_FORMS = {"kemdy19": "SessNN_{scriptNN|improNN}_{F|M}NNN", "kemdy20": "SessNN_scriptNN_UserNNN{F|M}_NNN"}
ANNOTATION_FILES = {"kemdy19": re.compile(r"^Session(\d{2})_([FM])_res\.csv$"),
                    "kemdy20": re.compile(r"^Sess(\d{2})_eval\.csv$")}
# Positional layout: (columns, column of the Segment ID, first of the 3 totals), two header rows before the data.
LAYOUTS = {"kemdy19": (13 + 3 * NUM_RATERS, 9, 10), "kemdy20": (7 + 3 * NUM_RATERS, 3, 4)}
LAYOUT_NAMES = {"kemdy19": f"KEMDy19: Numb, 4 start/end pairs, Segment ID, 3 totals, {NUM_RATERS} raters x 3",
                "kemdy20": f"KEMDy20: Numb, start, end, Segment ID, 3 totals, {NUM_RATERS} raters x 3"}
MARKER = re.compile(r"(?<![A-Za-z])[cnNulbo]/|[*+/]")
WAV_SECONDS_TOLERANCE = 0.01  # KEMDy20: a wav "lasts end - start" within this (1 ms on the real files)
TABLE_COLUMNS = (["start", "end", "Segment ID", "Emotion", "Valence", "Arousal"]
                 + [f"{k}.{i}" for k in ("Emotion", "Valence", "Arousal") for i in range(1, NUM_RATERS + 1)]
                 + ["speaker", "text", "role", "Session", "script", "sequence", "dialogue"])
DERIVED_COLUMNS = ("speaker", "text", "role", "Session", "script", "sequence", "dialogue")  # from the ID and file


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


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
    """NFC-normalise, strip the annotation markers (c/ n/ N/ u/ l/ b/ o/, *, +, bare /), collapse spaces.
    Every transcript passes here before a text encoder sees it: the same sentence typed in decomposed
    jamo (NFD) and in composed syllables (NFC) must get one embedding."""
    return " ".join(MARKER.sub(" ", nfc(text)).split())


def parse_emotions(cell: str) -> list[str]:
    """'neutral;happy' -> ['neutral', 'happy'] with the 'disqust' spelling mapped to 'disgust'."""
    labels = []
    for part in str(cell).split(";"):
        name = EMOTION_ALIASES.get(part.strip().lower(), part.strip().lower())
        if name not in EMOTIONS:
            raise CorpusError(f"unknown emotion '{part.strip()}' (expected one of {', '.join(EMOTIONS)})")
        labels.append(name)
    return labels


def _rating(cell: str, allow_blank: bool) -> float:
    if cell.strip() == "" and allow_blank:
        return float("nan")
    try:
        value = float(cell)
    except ValueError:
        value = float("nan")
    if not RATING_RANGE[0] <= value <= RATING_RANGE[1]:
        raise CorpusError(f"rating '{cell}' is not a number from {RATING_RANGE[0]:g} to {RATING_RANGE[1]:g}")
    return value


def _seconds(cell: str) -> float:
    """A wav start/end time in seconds; blank is NaN (such rows are dropped and named later)."""
    if cell.strip() == "":
        return float("nan")
    try:
        return float(cell)
    except ValueError:
        raise CorpusError(f"wav time '{cell}' is not a number of seconds") from None


@dataclass
class ReadReport:
    """What reading a corpus changed: rows dropped (reason -> names), IDs repaired (with their evidence),
    and rows kept with a remark (reason -> names), e.g. a segment without its transcript."""
    dropped: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    repaired: list[dict] = field(default_factory=list)
    kept: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))


class FileIndex:
    """Every file under `root` by its NFC-normalised path relative to `root` (symlinked folders followed,
    a link back to a folder already walked skipped), so lookups survive decomposed file names."""

    def __init__(self, root: Path):
        self.root, self.files, walked = Path(root), {}, set()
        for folder, subfolders, names in os.walk(self.root, followlinks=True):
            stat = os.stat(folder)
            if (stat.st_dev, stat.st_ino) in walked:
                subfolders[:] = []
                continue
            walked.add((stat.st_dev, stat.st_ino))
            subfolders.sort()
            for name in sorted(names):
                path = Path(folder) / name
                self.files[nfc(path.relative_to(self.root).as_posix())] = path

    def get(self, relative: str) -> Path | None:
        return self.files.get(nfc(relative))

    def with_suffixes(self, *suffixes: str) -> list[Path]:
        return [p for p in self.files.values() if p.suffix.lower() in suffixes]


def segment_relpath(seg_id: str, suffix: str) -> str:
    """A segment's file under wav/: KEMDy19 SessionNN/SessNN_scriptNN/<ID><suffix>; KEMDy20 SessionNN/<ID><suffix>."""
    kemdy19 = SEGMENT_IDS["kemdy19"].match(seg_id)
    if kemdy19:
        session, script = kemdy19.group(1, 2)
        return f"Session{session}/Sess{session}_{script}/{seg_id}{suffix}"
    return f"Session{seg_id[4:6]}/{seg_id}{suffix}"


def segment_path(data_dir: Path, seg_id: str, suffix: str) -> Path:
    """Where the corpus keeps a segment's file (see `segment_relpath`)."""
    return Path(data_dir) / "wav" / segment_relpath(seg_id, suffix)


def annotation_kind(path: Path) -> str | None:
    return next((kind for kind, pattern in ANNOTATION_FILES.items() if pattern.match(path.name)), None)


def _file_session(path: Path) -> int:
    return int(ANNOTATION_FILES[annotation_kind(path)].match(path.name).group(1))


def _rater_emotion(cell: str) -> str:
    return ";".join(parse_emotions(cell)) if cell.strip() else ""


def _labels(cells: list[str], first: int, name: str, report: ReadReport) -> dict:
    """Total emotion/valence/arousal at `first` (a bad one raises: the row is dropped), then the ten raters'
    triples (a bad rater cell is left blank, like a missing one, and named as `name`)."""
    record = {"Emotion": ";".join(parse_emotions(cells[first])), "Valence": _rating(cells[first + 1], False),
              "Arousal": _rating(cells[first + 2], False)}
    for rater in range(1, NUM_RATERS + 1):
        triple = cells[first + 3 * rater: first + 3 * rater + 3]
        for key, cell, parse, blank in zip(("Emotion", "Valence", "Arousal"), triple,
                                           (_rater_emotion, lambda c: _rating(c, True), lambda c: _rating(c, True)),
                                           ("", np.nan, np.nan)):
            try:
                record[f"{key}.{rater}"] = parse(cell)
            except CorpusError as error:
                record[f"{key}.{rater}"] = blank
                report.kept["rater cell left blank"].append(f"{name[:-1]}, rater {rater}: {error})")
    return record


def read_annotation_file(path: str | Path, report: ReadReport) -> pd.DataFrame:
    """One annotation file (KEMDy19's `SessionNN_{F|M}_res.csv` or KEMDy20's `SessNN_eval.csv`), read positionally
    after its two header rows -> its rows (file, line, Segment ID as written, start, end, totals, raters).
    Blank rows, rows of another width and rows whose totals cannot be read are dropped into `report`."""
    path = Path(path)
    kind = annotation_kind(path)
    if kind is None:
        raise CorpusError(f"{path}: annotation file name is not SessionNN_F_res.csv, SessionNN_M_res.csv (KEMDy19) "
                          "or SessNN_eval.csv (KEMDy20)")
    width, id_column, first_total = LAYOUTS[kind]
    # Universal newlines: CRLF (Session01 of the real corpus), LF, or a lone CR all end a line.
    try:
        rows = list(csv.reader(io.StringIO(decode_text(path.read_bytes(), path), newline=None)))
    except csv.Error as error:
        raise CorpusError(f"{path}: not a CSV file ({error})") from None
    if not rows or len(rows[0]) != width:
        raise CorpusError(f"{path}: {len(rows[0]) if rows else 0} columns, expected {width} ({LAYOUT_NAMES[kind]})")
    records = []
    for line, cells in enumerate(rows[2:], 3):  # 1-based line in the file, after the two header rows
        if not "".join(cells).strip():
            report.dropped["blank row"].append(f"{path.name} line {line}")
            continue
        if len(cells) > width and not "".join(cells[width:]).strip():
            cells = cells[:width]  # a trailing comma (blank cells past the last column) changes nothing
        seg_id = nfc(cells[id_column].strip()) if len(cells) > id_column else ""
        name = f"{seg_id or '?'} ({path.name} line {line})"
        try:
            if len(cells) != width:
                raise CorpusError(f"{len(cells)} columns, expected {width}")
            records.append({"file": path.name, "line": line, "Segment ID": seg_id, "start": _seconds(cells[1]),
                            "end": _seconds(cells[2]), **_labels(cells, first_total, name, report)})
        except CorpusError as error:
            report.dropped["unreadable row"].append(f"{name[:-1]}: {error})")
    columns = ["file", "line"] + [c for c in TABLE_COLUMNS if c not in DERIVED_COLUMNS]
    return pd.DataFrame.from_records(records, columns=columns)


def _problem(seg_id: str, kind: str, session: int, wavs: FileIndex) -> str | None:
    """What is wrong with a row's Segment ID on its own, or None."""
    parts = SEGMENT_IDS[kind].match(seg_id)
    if not parts:
        return "malformed Segment ID"
    if int(parts.group(1)) != session:
        return "Segment ID of another session"
    return None if wavs.get(segment_relpath(seg_id, ".wav")) else "no wav"


def _sibling_id(sibling: pd.DataFrame | None, start: float, end: float) -> tuple[str | None, str]:
    """KEMDy19: the ID of the one row of the other actor's file with the same wav start/end, and where it is."""
    if sibling is None:
        return None, ""
    same = sibling[np.isclose(sibling["start"], start, atol=1e-4) & np.isclose(sibling["end"], end, atol=1e-4)]
    if len(same) != 1:
        return None, ""
    row = same.iloc[0]
    return row["Segment ID"], f"{row['file']} line {row['line']} has the same wav start/end {start:g}-{end:g} s"


def _wav_seconds(path: Path) -> float:
    try:
        return sf.info(path).duration
    except (sf.LibsndfileError, RuntimeError):
        return float("nan")


def _length_match(seg_id: str, session: int, start: float, end: float, wavs: FileIndex,
                  carried: Counter) -> tuple[str | None, str]:
    """KEMDy20: the row's own ID if its wav lasts end - start, else the one wav of its dialogue that no row carries
    and that lasts end - start; an ID with another session's prefix first takes the file's session."""
    parts = SEGMENT_IDS["kemdy20"].match(seg_id)
    if not parts:
        return None, ""
    if int(parts.group(1)) != session:
        return (f"Sess{session:02d}{seg_id[6:]}",
                f"the file is Sess{session:02d}_eval.csv (prefix glitch of older copies)")
    lasts = end - start

    def fits(candidate: str) -> bool:
        path = wavs.get(segment_relpath(candidate, ".wav"))
        return path is not None and abs(_wav_seconds(path) - lasts) <= WAV_SECONDS_TOLERANCE

    if fits(seg_id):
        return seg_id, ""
    dialogue = f"Session{session:02d}/Sess{session:02d}_{parts.group(2)}_"
    free = [Path(rel).stem for rel in wavs.files if rel.startswith(dialogue) and rel.endswith(".wav")
            and not carried[Path(rel).stem] and SEGMENT_IDS["kemdy20"].match(Path(rel).stem)]
    matches = [c for c in free if fits(c)]
    if len(matches) != 1:
        return None, ""
    return matches[0], f"its wav is the only unannotated one of the dialogue lasting end - start = {lasts:.3f} s"


def _resolve_file(table: pd.DataFrame, kind: str, session: int, wavs: FileIndex, sibling: pd.DataFrame | None,
                  report: ReadReport) -> pd.DataFrame:
    """One file's rows with every Segment ID that is malformed, repeated, of another session or without a wav
    repaired where the evidence proves the right one (module docstring); rows still wrong are dropped and named."""
    ids = table["Segment ID"].tolist()
    carried = Counter(ids)
    proposals = {}
    for i, (seg_id, start, end) in enumerate(zip(ids, table["start"], table["end"])):
        problem = "repeated Segment ID" if carried[seg_id] > 1 else _problem(seg_id, kind, session, wavs)
        if problem is None:
            continue
        new, evidence = (_sibling_id(sibling, start, end) if kind == "kemdy19"
                         else _length_match(seg_id, session, start, end, wavs, carried))
        # The evidence's ID must be a valid one with a wav that no row of this file carries yet.
        if new is not None and new != seg_id and not carried[new] and _problem(new, kind, session, wavs) is None:
            proposals[i] = (new, problem, f"{evidence}; {segment_relpath(new, '.wav')} exists")
    claims = Counter(new for new, _, _ in proposals.values())
    for i, (new, problem, evidence) in proposals.items():
        if claims[new] == 1:  # two rows pointing at one wav: neither is proven
            report.repaired.append({"file": table["file"].iat[i], "line": int(table["line"].iat[i]), "old": ids[i],
                                    "new": new, "problem": problem, "evidence": evidence})
            ids[i] = new
    carried, keep = Counter(ids), []
    for seg_id, name, line in zip(ids, table["file"], table["line"]):
        problem = "repeated Segment ID" if carried[seg_id] > 1 else _problem(seg_id, kind, session, wavs)
        if problem == "no wav":  # named by ID, like every segment the corpus lacks a file of
            report.dropped[problem].append(seg_id)
        elif problem:
            report.dropped[problem].append(f"{seg_id} ({name} line {line})")
        keep.append(problem is None)
    return table.assign(**{"Segment ID": ids})[keep]


def _describe(table: pd.DataFrame, kind: str) -> pd.DataFrame:
    """The columns every corpus shares, from the Segment ID and the file: speaker, role (KEMDy19: `speaker` when
    the ID's gender is the file's actor, else `listener`; KEMDy20: always `speaker`), Session, script, sequence,
    dialogue."""
    parts = table["Segment ID"].str.extract(SEGMENT_IDS[kind])
    table = table.assign(speaker=parts[2], text="", Session=parts[0].astype(int), script=parts[1],
                         sequence=parts[3].astype(int), dialogue="Sess" + parts[0] + "_" + parts[1])
    if kind == "kemdy19":
        actor = table["file"].str.extract(ANNOTATION_FILES["kemdy19"])[1]
        return table.assign(role=np.where(table["speaker"] == actor, "speaker", "listener"))
    return table.assign(role="speaker")


def read_corpus(data_dir: Path, kind: str, files: list[Path],
                wavs: FileIndex) -> tuple[pd.DataFrame, dict[str, Path], ReadReport]:
    """Every annotation row of the corpus in the shared schema (TABLE_COLUMNS) with its cleaned transcript
    -> (table, Segment ID -> wav path, report). Kept rows have a wav and a start time; a segment without a
    (readable) transcript is kept with an empty one, as the published code gave it a zero embedding."""
    report = ReadReport()
    tables = {path: read_annotation_file(path, report) for path in files}
    resolved = []
    for path, table in tables.items():
        sibling = None
        if kind == "kemdy19":  # the other actor's file of the session
            actor = ANNOTATION_FILES[kind].match(path.name).group(2)
            sibling = tables.get(path.with_name(path.name.replace(f"_{actor}_", "_M_" if actor == "F" else "_F_")))
        resolved.append(_resolve_file(table, kind, _file_session(path), wavs, sibling, report))
    table = _describe(pd.concat(resolved, ignore_index=True), kind)
    # A row without a start time cannot be placed in its dialogue: sorting it anywhere would put the
    # wrong utterances in the context windows, so it is dropped and named.
    no_start = table["start"].isna()
    report.dropped["no start time"] += table.loc[no_start, "Segment ID"].tolist()
    table = table[~no_start].copy()
    texts = {}
    for seg_id in table["Segment ID"].unique():
        txt = wavs.get(segment_relpath(seg_id, ".txt"))
        if txt is None:
            report.kept["no txt (empty transcript)"].append(seg_id)
            continue
        try:
            texts[seg_id] = clean_transcript(decode_text(txt.read_bytes(), txt))
        except CorpusError:
            report.kept["unreadable txt (empty transcript)"].append(seg_id)
    table["text"] = table["Segment ID"].map(texts).fillna("")
    wav_paths = {seg_id: wavs.get(segment_relpath(seg_id, ".wav")) for seg_id in table["Segment ID"].unique()}
    mentioned = {nfc(segment_relpath(s, ".wav")) for t in tables.values() for s in t["Segment ID"]}
    mentioned |= {nfc(segment_relpath(r["new"], ".wav")) for r in report.repaired}
    report.kept["wav without annotation row (not used)"] += sorted(
        Path(rel).stem for rel in wavs.files if rel.lower().endswith(".wav") and rel not in mentioned)
    return table[TABLE_COLUMNS], wav_paths, report


def detect_corpus(data_dir: str | Path, corpus: str = "auto") -> str:
    """'kemdy19' or 'kemdy20' from the annotation file names; `corpus` (--corpus) overrides. A folder without
    annotation files is taken as KEMDy19 (where the demo corpus is made)."""
    found = sorted({annotation_kind(p) for p in (Path(data_dir) / "annotation").glob("*.csv")} - {None})
    if corpus != "auto":
        if found and corpus not in found:
            raise CorpusError(f"--corpus {corpus}, but {data_dir}/annotation holds {found[0].upper()} annotation files")
        return corpus
    if len(found) > 1:
        raise CorpusError(f"{data_dir}/annotation holds both KEMDy19 (SessionNN_F_res.csv) and KEMDy20 "
                          "(SessNN_eval.csv) annotation files; keep one corpus per folder")
    return found[0] if found else "kemdy19"


def annotation_files(data_dir: Path, kind: str) -> list[Path]:
    """The corpus's annotation files, or one line saying where the corpus goes and how to make the demo."""
    files = sorted(p for p in (data_dir / "annotation").glob("*.csv") if annotation_kind(p) == kind)
    if not files:
        raise CorpusError(f"no KEMDy19 or KEMDy20 corpus at {data_dir} (expected {data_dir}/annotation/"
                          f"SessionNN_F_res.csv or SessNN_eval.csv, and {data_dir}/wav/). Put the licensed corpus "
                          f"there, or make the demo corpus with `python preprocess.py --make_demo {data_dir}`")
    return files
