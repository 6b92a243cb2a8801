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
A repeated ID keeps the one row the evidence confirms; a row whose ID no evidence settles is dropped and
named, and a KEMDy19 row whose ID differs from its sibling row's is named (kept). Text is NFC-normalised
and files are matched by NFC names, so decomposed Hangul (macOS, some editors) reads the same as composed.
"""
import csv
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


def natural_key(name: str) -> list:
    """Names in natural order, numbers compared as numbers: spk2 before spk10, utt2 before utt10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def decode_text(raw: bytes, path: Path, lenient: bool = False) -> str:
    """UTF-8 (with or without BOM), UTF-16 with a BOM (Windows Notepad's "Unicode"), else cp949 (the
    sister corpus KEMDy20's encoding); else CorpusError, or with `lenient` UTF-8 with U+FFFD for the bad
    bytes (an annotation file: the row holding them is then dropped and named, not the whole file)."""
    encodings = ("utf-16",) if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else ("utf-8-sig", "cp949")
    for encoding in encodings:
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    if lenient:
        return raw.decode("utf-8-sig", errors="replace")
    raise CorpusError(f"{path}: text is neither UTF-8, UTF-16 nor cp949")


def printable(name: str) -> str:
    """A file name as text that can be printed and written to JSON (undecodable bytes become U+FFFD)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


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


def parse_rating(cell: str, allow_blank: bool = False) -> float:
    """A rating cell -> its value on the 1-5 scale (blank: NaN where `allow_blank`); CorpusError (a ValueError)
    for anything else."""
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
    """A wav start/end time in seconds (finite, >= 0); blank is NaN (such rows are dropped and named later)."""
    if cell.strip() == "":
        return float("nan")
    try:
        value = float(cell)
    except ValueError:
        value = float("nan")
    if not 0 <= value < float("inf"):
        raise CorpusError(f"wav time '{cell}' is not a number of seconds")
    return value


@dataclass
class ReadReport:
    """What reading a corpus changed: rows dropped (reason -> names), IDs repaired (with their evidence),
    rows kept with a remark (reason -> names), e.g. a segment without its transcript, and annotation files
    with a remark (reason -> file names), e.g. one without data rows."""
    dropped: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    repaired: list[dict] = field(default_factory=list)
    kept: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    files: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))


def hidden(name: str) -> bool:
    """A file or folder that holds no recording: hidden (`.DS_Store`, macOS's `._<name>` resource-fork twin of every
    file copied from a Mac) or macOS's `__MACOSX` folder of a zip."""
    return name.startswith(".") or name == "__MACOSX"


class FileIndex:
    """Every file under `root` by its NFC-normalised path relative to `root`, so lookups survive decomposed
    file names. Symlinked folders are followed (a folder with two names is indexed under both); a link back
    to a folder above it (a loop) is skipped, and a link to nothing is listed in `dangling`. Hidden files and
    folders and macOS leftovers (`hidden`) are left out and listed in `skipped`."""

    def __init__(self, root: Path):
        self.root, self.files, self.dangling, self.skipped = Path(root), {}, [], []
        for folder, subfolders, names in os.walk(self.root, followlinks=True):
            real = os.path.realpath(folder)
            self.skipped += [printable(nfc((Path(folder) / d).relative_to(self.root).as_posix())) + "/"
                             for d in subfolders if hidden(d)]
            subfolders[:] = sorted(d for d in subfolders if not hidden(d) and
                                   not _above(os.path.realpath(os.path.join(folder, d)), real))
            for name in sorted(names):
                path = Path(folder) / name
                if hidden(name):
                    self.skipped.append(printable(nfc(path.relative_to(self.root).as_posix())))
                    continue
                relative = nfc(path.relative_to(self.root).as_posix())
                if path.exists():
                    self.files[relative] = path
                else:
                    self.dangling.append(printable(relative))

    def get(self, relative: str) -> Path | None:
        return self.files.get(nfc(relative))

    def with_suffixes(self, *suffixes: str) -> list[Path]:
        return [p for p in self.files.values() if p.suffix.lower() in suffixes]


def _above(candidate: str, real: str) -> bool:
    """Whether the real folder `candidate` is `real` or one of its parents (following it would loop)."""
    return real == candidate or real.startswith(candidate.rstrip(os.sep) + os.sep)


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
    record = {"Emotion": ";".join(parse_emotions(cells[first])), "Valence": parse_rating(cells[first + 1]),
              "Arousal": parse_rating(cells[first + 2])}
    for rater in range(1, NUM_RATERS + 1):
        triple = cells[first + 3 * rater: first + 3 * rater + 3]
        for key, cell, parse, blank in zip(("Emotion", "Valence", "Arousal"), triple,
                                           (_rater_emotion, lambda c: parse_rating(c, True), lambda c: parse_rating(c, True)),
                                           ("", np.nan, np.nan)):
            try:
                record[f"{key}.{rater}"] = parse(cell)
            except CorpusError as error:
                record[f"{key}.{rater}"] = blank
                report.kept["rater cell left blank"].append(f"{name[:-1]}, rater {rater}: {error})")
    return record


def _csv_rows(text: str) -> list[list[str] | None]:
    """The cells of each physical line (any line ending), each line parsed alone: a stray quote damages its own
    line only. None for a line the csv module refuses (a NUL byte)."""
    rows = []
    for line in text.splitlines():
        try:
            rows.append(next(csv.reader([line]), []))
        except csv.Error:
            rows.append(None)
    return rows


def read_annotation_file(path: str | Path, report: ReadReport) -> pd.DataFrame:
    """One annotation file (KEMDy19's `SessionNN_{F|M}_res.csv` or KEMDy20's `SessNN_eval.csv`), read positionally
    after its header rows -> its rows (file, line, Segment ID as written, start, end, totals, raters).
    Blank rows, rows of another width and rows whose totals cannot be read are dropped into `report`."""
    path = Path(path)
    kind = annotation_kind(path)
    if kind is None:
        raise CorpusError(f"{path}: annotation file name is not SessionNN_F_res.csv, SessionNN_M_res.csv (KEMDy19) "
                          "or SessNN_eval.csv (KEMDy20)")
    width, id_column, first_total = LAYOUTS[kind]
    rows = _csv_rows(decode_text(path.read_bytes(), path, lenient=True))
    if not rows or rows[0] is None or len(rows[0]) != width:
        found = len(rows[0]) if rows and rows[0] is not None else 0
        raise CorpusError(f"{path}: {found} columns, expected {width} ({LAYOUT_NAMES[kind]})")
    # Two header rows; the second has "start" under the wav group. Without it the data start on line 2.
    first = 2 if len(rows) > 1 and rows[1] and len(rows[1]) > 1 and rows[1][1].strip().lower() == "start" else 1
    if first == 1:
        report.files["one header row"].append(path.name)
    records = []
    for line, cells in enumerate(rows[first:], first + 1):  # 1-based line numbers of the file
        if cells is not None and not "".join(cells).strip():
            report.dropped["blank row"].append(f"{path.name} line {line}")
            continue
        cells = cells or []
        if len(cells) > width and not "".join(cells[width:]).strip():
            cells = cells[:width]  # a trailing comma (blank cells past the last column) changes nothing
        seg_id = nfc(cells[id_column].strip()) if len(cells) > id_column else ""
        name = f"{seg_id or '?'} ({path.name} line {line})"
        try:
            if len(cells) != width:
                raise CorpusError(f"{len(cells)} columns, expected {width}")
            start, end = _seconds(cells[1]), _seconds(cells[2])
            if end < start:
                raise CorpusError(f"wav end {cells[2]} s is before its start {cells[1]} s")
            records.append({"file": path.name, "line": line, "Segment ID": seg_id, "start": start, "end": end,
                            **_labels(cells, first_total, name, report)})
        except CorpusError as error:
            report.dropped["unreadable row"].append(f"{name[:-1]}: {error})")
    if not records:
        report.files["no usable data rows"].append(path.name)
    columns = ["file", "line"] + [c for c in TABLE_COLUMNS if c not in DERIVED_COLUMNS]
    return pd.DataFrame.from_records(records, columns=columns).astype({"line": int, "start": float, "end": float})


def _problem(seg_id: str, kind: str, session: int, wavs: FileIndex, carried: Counter) -> str | None:
    """What is wrong with a row's Segment ID (`carried`: how many rows of its file carry each ID), or None."""
    parts = SEGMENT_IDS[kind].match(seg_id)
    if not parts:
        return "malformed Segment ID"
    if int(parts.group(1)) != session:
        return "Segment ID of another session"
    if carried[seg_id] > 1:
        return "repeated Segment ID"
    return None if wavs.get(segment_relpath(seg_id, ".wav")) else "no wav"


class SiblingRows:
    """KEMDy19: the rows of the other actor's file of the session, by wav start/end (the same in both files)."""

    def __init__(self, sibling: pd.DataFrame | None):
        self.rows = defaultdict(list)
        for seg_id, name, line, start, end in ([] if sibling is None else sibling[
                ["Segment ID", "file", "line", "start", "end"]].itertuples(index=False)):
            self.rows[(round(start, 3), round(end, 3))].append((seg_id, name, line))

    def id_at(self, start: float, end: float) -> tuple[str | None, str]:
        """The ID of the one row with this start/end, and where it is; (None, "") if there is not exactly one."""
        same = self.rows.get((round(start, 3), round(end, 3)), [])
        if len(same) != 1:
            return None, ""
        seg_id, name, line = same[0]
        return seg_id, f"{name} line {line} has the same wav start/end {start:g}-{end:g} s"


def _wav_seconds(path: Path) -> float:
    try:
        return sf.info(path).duration
    except (sf.LibsndfileError, RuntimeError):
        return float("nan")


class WavLengths:
    """KEMDy20: the wavs of one session by dialogue, and which of them last a given end - start."""

    def __init__(self, wavs: FileIndex, session: int):
        self.wavs, self.session, self.by_dialogue = wavs, session, defaultdict(list)
        for rel in wavs.files:
            parts = SEGMENT_IDS["kemdy20"].match(Path(rel).stem)
            if rel.startswith(f"Session{session:02d}/") and rel.endswith(".wav") and parts:
                self.by_dialogue[parts.group(2)].append(Path(rel).stem)

    def fits(self, seg_id: str, lasts: float) -> bool:
        path = self.wavs.get(segment_relpath(seg_id, ".wav"))
        return path is not None and abs(_wav_seconds(path) - lasts) <= WAV_SECONDS_TOLERANCE

    def id_for(self, seg_id: str, start: float, end: float, carried: Counter) -> tuple[str | None, str]:
        """The row's own ID if its wav lasts end - start, else the one wav of its dialogue that no row carries and
        that lasts end - start; an ID with another session's prefix first takes the file's session."""
        parts = SEGMENT_IDS["kemdy20"].match(seg_id)
        if not parts:
            return None, ""
        if int(parts.group(1)) != self.session:
            return (f"Sess{self.session:02d}{seg_id[6:]}",
                    f"the file is Sess{self.session:02d}_eval.csv (prefix glitch of older copies)")
        if self.fits(seg_id, end - start):
            return seg_id, ""
        matches = [c for c in self.by_dialogue[parts.group(2)] if not carried[c] and self.fits(c, end - start)]
        if len(matches) != 1:
            return None, ""
        return matches[0], f"its wav is the only unannotated one of the dialogue lasting end - start = {end - start:.3f} s"


def _resolve_file(table: pd.DataFrame, kind: str, session: int, wavs: FileIndex, sibling: pd.DataFrame | None,
                  report: ReadReport) -> pd.DataFrame:
    """One file's rows with every Segment ID that is malformed, repeated, of another session or without a wav
    repaired where the evidence proves the right one (module docstring); rows still wrong are dropped and named.
    Of the rows carrying one ID, the one the evidence confirms keeps it."""
    siblings, lengths = (SiblingRows(sibling), None) if kind == "kemdy19" else (None, WavLengths(wavs, session))
    ids = table["Segment ID"].tolist()
    carried, proposals, confirmed = Counter(ids), {}, set()
    for i, (seg_id, start, end) in enumerate(zip(ids, table["start"], table["end"])):
        problem = _problem(seg_id, kind, session, wavs, carried)
        if problem is None:
            continue
        new, evidence = siblings.id_at(start, end) if siblings else lengths.id_for(seg_id, start, end, carried)
        if new == seg_id:
            confirmed.add(i)
        # The evidence's ID must be a valid one with a wav that no row of this file carries yet.
        elif new is not None and not carried[new] and _problem(new, kind, session, wavs, carried) is None:
            proposals[i] = (new, problem, f"{evidence}; {segment_relpath(new, '.wav')} exists")
    claims = Counter(new for new, _, _ in proposals.values())
    for i, (new, problem, evidence) in proposals.items():
        if claims[new] == 1:  # two rows pointing at one wav: neither is proven
            report.repaired.append({"file": table["file"].iat[i], "line": int(table["line"].iat[i]), "old": ids[i],
                                    "new": new, "problem": problem, "evidence": evidence})
            ids[i] = new
    carried, keep = Counter(ids), np.zeros(len(ids), dtype=bool)
    sole = Counter(ids[i] for i in confirmed)  # a repeated ID with one confirmed carrier keeps that one
    for i, (seg_id, name, line) in enumerate(zip(ids, table["file"], table["line"])):
        problem = _problem(seg_id, kind, session, wavs, carried)
        if problem == "repeated Segment ID" and i in confirmed and sole[seg_id] == 1:
            problem = _problem(seg_id, kind, session, wavs, Counter())
        if problem == "no wav":  # named by ID, like every segment the corpus lacks a file of
            report.dropped[problem].append(seg_id)
        elif problem:
            report.dropped[problem].append(f"{seg_id} ({name} line {line})")
        keep[i] = problem is None
    return table.assign(**{"Segment ID": ids})[keep]


def _name_disagreements(table: pd.DataFrame, report: ReadReport) -> None:
    """KEMDy19, after the repairs: each segment whose two files (same session, same wav start/end) carry two
    different valid IDs. Nothing proves which one is right, so both rows are kept, and the pair is named."""
    keyed = table.assign(session=table["file"].str[7:9], actor=table["file"].str[10], start3=table["start"].round(3),
                         end3=table["end"].round(3)).dropna(subset=["start3", "end3"])
    pairs = keyed[keyed.actor == "F"].merge(keyed[keyed.actor == "M"], on=["session", "start3", "end3"])
    differ = pairs[pairs["Segment ID_x"] != pairs["Segment ID_y"]]
    for id_f, file_f, line_f, id_m, file_m, line_m in differ[
            ["Segment ID_x", "file_x", "line_x", "Segment ID_y", "file_y", "line_y"]].itertuples(index=False):
        report.kept["Segment ID differs between the two actors' files"].append(
            f"{id_f} ({file_f} line {line_f}) / {id_m} ({file_m} line {line_m})")


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
            other = path.with_name(path.name.replace(f"_{actor}_", "_M_" if actor == "F" else "_F_"))
            if other not in tables:
                report.files["without the other actor's file (no sibling evidence)"].append(path.name)
            sibling = tables.get(other)
        resolved.append(_resolve_file(table, kind, _file_session(path), wavs, sibling, report))
    if kind == "kemdy19":
        _name_disagreements(pd.concat(resolved, ignore_index=True), report)
    table = pd.concat(resolved, ignore_index=True)
    # A row without a start time cannot be placed in its dialogue: sorting it anywhere would put the
    # wrong utterances in the context windows, so it is dropped and named.
    no_start = table["start"].isna()
    report.dropped["no start time"] += table.loc[no_start, "Segment ID"].tolist()
    table = table[~no_start]
    if table.empty:
        raise CorpusError(f"{data_dir}: no usable row in its {len(files)} annotation files (every row is blank, "
                          "unreadable, or without a wav)")
    table = _describe(table, kind)
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
    # A wav no row names (compared by real path: a folder reachable by two names is one folder).
    named = {s for t in tables.values() for s in t["Segment ID"]} | {r["new"] for r in report.repaired}
    used = {os.path.realpath(p) for s in named if (p := wavs.get(segment_relpath(s, ".wav")))}
    unused = {os.path.realpath(p): printable(p.stem) for rel, p in wavs.files.items() if rel.lower().endswith(".wav")}
    report.kept["wav without annotation row (not used)"] += sorted(
        stem for real, stem in unused.items() if real not in used)
    report.files["link to nothing under wav/"] += wavs.dangling
    return table[TABLE_COLUMNS], wav_paths, report


def annotation_files(data_dir: Path, kind: str) -> list[Path]:
    """The corpus's annotation files, or one line saying where the corpus goes and how to make the demo."""
    files = sorted(p for p in (data_dir / "annotation").glob("*.csv") if annotation_kind(p) == kind)
    if not files:
        where = "does not exist" if not data_dir.exists() else "holds no corpus this repo reads"
        raise CorpusError(f"{data_dir} {where}: it reads KEMDy19 or KEMDy20 (annotation/SessionNN_F_res.csv or "
                          "SessNN_eval.csv and wav/), RAVDESS (Actor_NN/03-01-*.wav), TESS (OAF_*/, YAF_*/ folders), "
                          "EmoDB (wav/SSTTTEV.wav) or a folder with a manifest.csv (README, Your data); or make the demo "
                          f"corpus with `python preprocess.py --make_demo {data_dir}`")
    return files
