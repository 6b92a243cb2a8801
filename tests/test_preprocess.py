import json
import math
import os
import unicodedata

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from constants import MAX_FRAMES, N_MELS, NUM_RATERS, SAMPLE_RATE, SUMMARY
from errors import CorpusError, FlagError
from audio import load_audio, log_mel, read_audio
from preprocess import preprocess
from readers import (FileIndex, ReadReport, clean_transcript, decode_text, read_annotation_file, read_corpus,
                     segment_path)

HEADER = ("Numb,Wav,,ECG,,E4-EDA,,E4-TEMP,,Segment ID,Total Evaluation,,," + ",,,".join(
    f"Eval{i:02d}" for i in range(1, NUM_RATERS + 1)) + ",,\n"
    ",start,end,start,end,start,end,start,end,,Emotion,Valence,Arousal," + ",".join(
    ["Emotion,Valence,Arousal"] * NUM_RATERS) + "\n")


def row(numb: int, seg_id: str, total: str, raters: list[tuple[str, str, str]], start: float = 1.0,
        end: float = 2.5) -> str:
    cells = [str(numb)] + [str(start), str(end)] * 4 + [seg_id, total, "3.2", "2.9"] + [v for r in raters for v in r]
    return ",".join(cells) + "\n"


def write_annotation(path, body: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + body, encoding="utf-8")
    return path


def small_corpus(root, files: dict[str, str], seg_ids: list[str]):
    """A KEMDy19-layout folder with the given annotation files and a short wav + txt for each of `seg_ids`."""
    for name, body in files.items():
        write_annotation(root / "annotation" / name, body)
    for seg_id in seg_ids:
        segment_path(root, seg_id, ".wav").parent.mkdir(parents=True, exist_ok=True)
        sf.write(segment_path(root, seg_id, ".wav"), np.zeros(1600, np.float32), SAMPLE_RATE)
        segment_path(root, seg_id, ".txt").write_text("네", encoding="utf-8")
    return root


def read_small(root):
    files = sorted((root / "annotation").glob("*.csv"))
    return read_corpus(root, "kemdy19", files, FileIndex(root / "wav"))


RATERS = [("neutral", "3", "3")] * 8 + [("happy", "4", "4"), ("happy", "4", "5")]


def test_positional_reading_roles_ties_spelling_blank_and_missing_cells(tmp_path):
    raters = list(RATERS)
    raters[2] = ("disqust", "2", "3")
    raters[5] = ("neutral", "", "3")  # missing valence cell
    body = (row(1, "Sess01_script01_F001", "neutral;happy", raters)
            + "," * 42 + "\n"  # blank row
            + row(2, "Sess01_script01_M001", "disqust", RATERS, 2.5, 4.0))
    root = small_corpus(tmp_path, {"Session01_F_res.csv": body}, ["Sess01_script01_F001", "Sess01_script01_M001"])
    table, wavs, report = read_small(root)
    assert report.dropped["blank row"] == ["Session01_F_res.csv line 4"]
    assert table["Segment ID"].tolist() == ["Sess01_script01_F001", "Sess01_script01_M001"]
    assert table["role"].tolist() == ["speaker", "listener"]  # F file: F speaks, then listens to M
    assert table["speaker"].tolist() == ["F", "M"]
    assert table["Emotion"].tolist() == ["neutral;happy", "disgust"]
    assert table.loc[0, "Emotion.3"] == "disgust"
    assert math.isnan(table.loc[0, "Valence.6"]) and table.loc[0, "Arousal.6"] == 3.0
    assert table.loc[0, "Valence"] == 3.2 and table.loc[0, "Arousal"] == 2.9
    assert table.loc[1, "dialogue"] == "Sess01_script01" and table.loc[1, "Session"] == 1
    assert table.loc[1, "sequence"] == 1 and table.loc[1, "script"] == "script01"
    assert table["text"].tolist() == ["네", "네"] and wavs["Sess01_script01_M001"].name == "Sess01_script01_M001.wav"


@pytest.mark.parametrize("body, reason, message", [
    (row(1, "Sess01_script01_F001", "joy", RATERS), "unreadable row", "line 3: unknown emotion 'joy'"),
    (row(1, "Sess01_script01_F001", "neutral", RATERS).replace(",3.2,", ",6,", 1), "unreadable row",
     "line 3: rating '6'"),
    (row(1, "Sess01_script01_F001", "neutral", RATERS).replace(",1.0,", ",1:234,", 1), "unreadable row",
     "line 3: wav time '1:234' is not a number of seconds"),
    (row(1, "Sess01_script01_F001", "neutral", RATERS[:9]), "unreadable row", "line 3: 40 columns, expected 43"),
    (row(1, "Sess01_script01_F001", "neutral", RATERS + [("neutral", "3", "3")]), "unreadable row",
     "line 3: 46 columns, expected 43"),
    (row(1, "Sess01_scene01_F001", "neutral", RATERS), "malformed Segment ID", "Sess01_scene01_F001"),
    (row(1, "Sess02_script01_F001", "neutral", RATERS), "Segment ID of another session", "Sess02_script01_F001"),
], ids=["label", "rating-6", "time", "missing-columns", "extra-columns", "segment-id", "other-session"])
def test_a_bad_row_is_dropped_and_named_never_fatal(tmp_path, body, reason, message):
    good = row(2, "Sess01_script01_M001", "neutral", RATERS, 2.5, 4.0)
    root = small_corpus(tmp_path, {"Session01_F_res.csv": body + good},
                        ["Sess01_script01_F001", "Sess01_script01_M001", "Sess02_script01_F001"])
    table, _, report = read_small(root)
    assert table["Segment ID"].tolist() == ["Sess01_script01_M001"]  # the good row is read
    assert len(report.dropped[reason]) == 1 and message in report.dropped[reason][0], report.dropped
    assert "Session01_F_res.csv line 3" in report.dropped[reason][0]


def test_a_bad_rater_cell_is_left_blank_and_named(tmp_path):
    raters = list(RATERS)
    raters[3] = ("joy", "9", "3")
    root = small_corpus(tmp_path, {"Session01_F_res.csv": row(1, "Sess01_script01_F001", "neutral", raters)},
                        ["Sess01_script01_F001"])
    table, _, report = read_small(root)
    assert table.loc[0, "Emotion.4"] == "" and math.isnan(table.loc[0, "Valence.4"])
    assert table.loc[0, "Arousal.4"] == 3.0 and table.loc[0, "Emotion.3"] == "neutral"  # the rest is kept
    assert report.kept["rater cell left blank"] == [
        "Sess01_script01_F001 (Session01_F_res.csv line 3, rater 4: unknown emotion 'joy' (expected one of "
        "neutral, happy, surprise, angry, sad, disgust, fear))",
        "Sess01_script01_F001 (Session01_F_res.csv line 3, rater 4: rating '9' is not a number from 1 to 5)"]


def test_a_file_that_is_not_an_annotation_file_is_one_line(tmp_path):
    path = tmp_path / "Session01_F_res.csv"
    path.write_text("a,b,c\n1,2,3\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="Session01_F_res.csv: 3 columns, expected 43"):
        read_annotation_file(path, ReadReport())


def test_transcript_cleaning():
    assert clean_transcript("c/ 어 n/ 그게* 말이야+ / 정말?") == "어 그게 말이야 정말?"
    assert clean_transcript("b/ n/ *") == ""
    assert clean_transcript("N/u/l/o/ 네") == "네"
    decomposed = unicodedata.normalize("NFD", "정말 기뻐요")  # as macOS and some editors write it
    assert decomposed != "정말 기뻐요" and clean_transcript(decomposed) == "정말 기뻐요"


def test_cp949_fallback(tmp_path):
    text = "무서워. 창문 좀 닫아 줄래?"
    assert decode_text(text.encode("cp949"), tmp_path / "x.txt") == text
    assert decode_text("\ufeff".encode() + text.encode("utf-8"), tmp_path / "x.txt") == text
    with pytest.raises(CorpusError, match="x.txt: text is neither UTF-8, UTF-16 nor cp949"):
        decode_text(b"\xff\xfe\xfa\xfb\x80", tmp_path / "x.txt")


def test_demo_corpus_is_deterministic_for_a_seed(tmp_path):
    from demo_corpus import make_demo_corpus
    a, b, c = (make_demo_corpus(tmp_path / name, seed=seed, n_sessions=2, n_scripts=1, n_impros=0, n_turns=3)
               for name, seed in (("a", 7), ("b", 7), ("c", 8)))
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert (a / "annotation/Session01_F_res.csv").read_bytes() != (c / "annotation/Session01_F_res.csv").read_bytes()


def test_demo_outputs_and_roles(demo_dir):
    speaker = pd.read_csv(demo_dir / "df_speaker.csv", keep_default_na=False)
    listener = pd.read_csv(demo_dir / "df_listener.csv", keep_default_na=False)
    annotation = pd.read_csv(demo_dir / "annotation.csv", keep_default_na=False)
    assert len(annotation) == len(speaker) + len(listener)
    # Each segment once per role; the speaker row labels the speaking actor.
    assert speaker["Segment ID"].is_unique and listener["Segment ID"].is_unique
    assert set(speaker["Segment ID"]) == set(listener["Segment ID"])
    assert (speaker["Segment ID"].str[-4] == speaker["speaker"]).all()
    meta = json.loads((demo_dir / "features" / "logmel.json").read_text())
    frames = np.load(demo_dir / "features" / "logmel.npy", mmap_mode="r")
    assert frames.shape == (sum(meta["lengths"]), N_MELS) and frames.dtype == np.float16
    assert set(meta["ids"]) == set(speaker["Segment ID"])
    summary = json.loads((demo_dir / SUMMARY).read_text())
    assert summary["dropped_rows"] == {"blank row": 1, "no wav": 2}  # the demo's segment without wav, both roles
    empty = speaker.loc[speaker["Segment ID"].str.startswith("Sess03_script01"), "text"].iloc[0]
    assert empty == ""  # markers-only transcript: kept, empty


def _data_rows(path) -> list[list[str]]:
    return [line.split(",") for line in path.read_text(encoding="utf-8").splitlines()[2:]]


def test_a_mistyped_segment_id_is_repaired_from_the_sibling_file(demo_dir, raw_demo):
    """The real glitch of Session03_F_res.csv, which the demo repeats in session 8: the F file's first row carries
    the ID of the row after it; the M file's row with the same start/end, and the wav, give the right one."""
    female, male = (_data_rows(raw_demo / "annotation" / f"Session08_{a}_res.csv") for a in "FM")
    assert female[0][9] == female[1][9] != male[0][9]  # the glitch as written
    repaired = json.loads((demo_dir / SUMMARY).read_text())["repaired"]
    assert repaired == [{"file": "Session08_F_res.csv", "line": 3, "old": female[0][9], "new": male[0][9],
                         "problem": "repeated Segment ID",
                         "evidence": f"Session08_M_res.csv line 3 has the same wav start/end "
                                     f"{float(male[0][1]):g}-{float(male[0][2]):g} s; Session08/Sess08_script01/"
                                     f"{male[0][9]}.wav exists"}]
    table = pd.read_csv(demo_dir / "annotation.csv", keep_default_na=False)
    # The repaired row keeps its own labels: the F actor's labels of that segment, not the next one's.
    role = "speaker" if male[0][9][-4] == "F" else "listener"
    row = table[(table["Segment ID"] == male[0][9]) & (table["role"] == role)].iloc[0]
    assert (row["Emotion"], row["Valence"], row["Arousal"]) == (female[0][10].replace("disqust", "disgust"),
                                                                float(female[0][11]), float(female[0][12]))
    assert table["Segment ID"].value_counts().max() == 2  # every segment once per role


def test_a_repeated_id_without_evidence_is_dropped_and_named(corpus_copy):
    for actor in "FM":  # the same glitch in both files: nothing settles which row is which
        path = corpus_copy / "annotation" / f"Session09_{actor}_res.csv"
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        first, second = lines[2].split(","), lines[3].split(",")
        lost, first[9] = first[9], second[9]
        lines[2] = ",".join(first)
        path.write_text("".join(lines), encoding="utf-8")
    summary = preprocess(corpus_copy, "tfidf", 16)
    assert summary["dropped"]["repeated Segment ID"] == sorted(
        f"{second[9]} (Session09_{a}_res.csv line {n})" for a in "FM" for n in (3, 4))
    assert summary["kept"]["wav without annotation row (not used)"] == [lost]
    table = pd.read_csv(corpus_copy / "annotation.csv", keep_default_na=False)
    assert not {second[9], lost} & set(table["Segment ID"])


def test_second_run_recomputes_nothing(demo_dir, capsys):
    outputs = [demo_dir / n for n in ("annotation.csv", "features/logmel.npy", "embedding_16.npy")]
    before = [p.stat().st_mtime_ns for p in outputs]
    preprocess(demo_dir, "tfidf", 16)
    assert [p.stat().st_mtime_ns for p in outputs] == before
    assert "up to date" in capsys.readouterr().out


def test_missing_corpus_says_where_and_how(tmp_path):
    # Every layout the product reads is named, with the README section that shows them, and the demo's command.
    with pytest.raises(CorpusError, match="nothing does not exist: it reads KEMDy19 or KEMDy20 .*RAVDESS .*TESS .*"
                                          "EmoDB .*manifest.csv \\(README, Your data\\).*--make_demo"):
        preprocess(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="empty holds no corpus this repo reads: it reads KEMDy19"):
        preprocess(tmp_path / "empty")


def test_missing_txt_is_kept_and_a_corrupt_wav_skipped_and_named(corpus_copy, capsys):
    seg_txt = "Sess06_script01_F001" if segment_path(corpus_copy, "Sess06_script01_F001", ".txt").exists() \
        else "Sess06_script01_M001"
    segment_path(corpus_copy, seg_txt, ".txt").unlink()
    corrupt = "Sess07_script01_F001" if segment_path(corpus_copy, "Sess07_script01_F001", ".wav").exists() \
        else "Sess07_script01_M001"
    segment_path(corpus_copy, corrupt, ".wav").write_bytes(b"RIFF\x00\x00not a wav at all")
    summary = preprocess(corpus_copy, "tfidf", 16)
    assert summary["kept"]["no txt (empty transcript)"] == [seg_txt]
    assert summary["dropped_rows"]["unusable wav"] == 2
    out = capsys.readouterr().out
    assert f"{corrupt}.wav: unreadable audio" in out and f"kept, no txt (empty transcript): 1 ({seg_txt})" in out
    speaker = pd.read_csv(corpus_copy / "df_speaker.csv", keep_default_na=False).set_index("Segment ID")
    assert speaker.loc[seg_txt, "text"] == "" and corrupt not in speaker.index  # the wav and labels are real


def test_a_file_with_another_layout_fails_without_destroying_outputs(corpus_copy):
    preprocess(corpus_copy, "tfidf", 16)
    before = (corpus_copy / "annotation.csv").read_bytes()
    path = corpus_copy / "annotation" / "Session02_M_res.csv"
    path.write_text("Numb,Wav,Segment ID\n,start,\n1,2,Sess02_script01_F001\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="Session02_M_res.csv: 3 columns, expected 43"):
        preprocess(corpus_copy, "tfidf", 16)
    assert (corpus_copy / "annotation.csv").read_bytes() == before


def test_stereo_and_other_rates_are_mixed_down_and_resampled(tmp_path):
    t = np.arange(44100) / 44100
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    sf.write(tmp_path / "stereo.wav", np.stack([tone, tone], axis=1), 44100)
    audio = load_audio(tmp_path / "stereo.wav")
    assert audio.ndim == 1 and abs(len(audio) - SAMPLE_RATE) <= 1
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * SAMPLE_RATE / len(audio) - 440) < 2  # same pitch after resampling
    assert log_mel(audio).shape == (len(audio) // 512 + 1, N_MELS)
    assert log_mel(np.zeros(SAMPLE_RATE * 10, np.float32)).shape[0] == MAX_FRAMES


def test_cancelling_channels_and_silence_are_named(corpus_copy):
    voice = load_audio(sorted(corpus_copy.glob("wav/Session05/*/*.wav"))[0])
    flipped, silent = sorted(corpus_copy.glob("wav/Session06/*/*.wav"))[:2]
    sf.write(flipped, np.stack([voice, -voice], axis=1), SAMPLE_RATE, subtype="FLOAT")  # right = left inverted
    sf.write(silent, np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE)
    audio, notes = read_audio(flipped)
    np.testing.assert_array_equal(audio, voice)  # the channel kept, not their silent average
    assert notes == ["channels cancel when averaged: channel 1 of 2 used"]
    summary = preprocess(corpus_copy, "tfidf", 16)
    assert summary["audio"] == {"channels cancel when averaged": [flipped.stem],
                                "silent (no sample above -60 dBFS)": [silent.stem]}
    meta = json.loads((corpus_copy / "features" / "logmel.json").read_text())
    k = meta["ids"].index(flipped.stem)
    frames = np.load(corpus_copy / "features" / "logmel.npy")[meta["offsets"][k]:][:meta["lengths"][k]]
    np.testing.assert_array_equal(frames, log_mel(voice))


def _set_cells(path, line: int, cells: dict[int, bytes]) -> list[str]:
    """Set cells (index -> raw bytes) of a 1-based line of an annotation file -> the line's cells before."""
    lines = path.read_bytes().split(b"\n")
    before = lines[line - 1].rstrip(b"\r").split(b",")
    after = list(before)
    for index, value in cells.items():
        after[index] = value
    lines[line - 1] = b",".join(after)
    path.write_bytes(b"\n".join(lines))
    return [c.decode() for c in before]


def test_real_world_dirt_is_named_and_never_stops_the_corpus(corpus_copy):
    ann, wav = corpus_copy / "annotation", corpus_copy / "wav"
    os.symlink("Session03", wav / "Sess03")  # a second name for a session folder
    os.symlink(wav / "nowhere", wav / "Session04" / "gone.wav")  # a link to nothing
    (wav / "Session05" / os.fsdecode(b"\xff\xfe.wav")).write_bytes(b"")  # a file name that is not UTF-8
    _set_cells(ann / "Session10_F_res.csv", 4, {0: b'"'})  # a stray quote opens the line
    bad_byte = _set_cells(ann / "Session11_F_res.csv", 4, {10: b"neutr\xffl"})  # not UTF-8 nor cp949
    endless = _set_cells(ann / "Session12_M_res.csv", 3, {1: b"inf"})
    # The demo's session-8 glitch (two F-file rows carry one ID) with the first row's own wav gone: nothing proves
    # that row's ID, but the sibling file confirms the second row's, which keeps it.
    repeated = _set_cells(ann / "Session08_F_res.csv", 4, {})[9]
    segment_path(corpus_copy, _set_cells(ann / "Session08_M_res.csv", 3, {})[9], ".wav").unlink()
    first, second = (_set_cells(ann / "Session13_F_res.csv", n, {}) for n in (3, 4))
    _set_cells(ann / "Session13_F_res.csv", 3, {9: second[9].encode()})  # two valid IDs swapped in one file only
    _set_cells(ann / "Session13_F_res.csv", 4, {9: first[9].encode()})
    summary = preprocess(corpus_copy, "tfidf", 16)
    json.dumps(summary)  # the summary can be written whatever the file names
    table = pd.read_csv(corpus_copy / "annotation.csv", keep_default_na=False)
    assert (table["Session"] == 3).sum() == 2 * 8  # every session-3 row, found under its real folder name
    assert summary["kept"]["wav without annotation row (not used)"] == ["\ufffd\ufffd"]
    assert summary["files"]["link to nothing under wav/"] == ["Session04/gone.wav"]
    assert summary["dropped"]["unreadable row"] == sorted([  # the lines after the stray quote read as usual
        "? (Session10_F_res.csv line 4: 1 columns, expected 43)",  # its cells are one quoted field
        f"{bad_byte[9]} (Session11_F_res.csv line 4: unknown emotion 'neutr\ufffdl' (expected one of neutral, happy, "
        "surprise, angry, sad, disgust, fear))",
        f"{endless[9]} (Session12_M_res.csv line 3: wav time 'inf' is not a number of seconds)"])
    assert summary["dropped"]["repeated Segment ID"] == [f"{repeated} (Session08_F_res.csv line 3)"]
    assert (table["Segment ID"] == repeated).sum() == 2  # the confirmed carrier kept: both roles
    assert summary["kept"]["Segment ID differs between the two actors' files"] == sorted([
        f"{second[9]} (Session13_F_res.csv line 3) / {first[9]} (Session13_M_res.csv line 3)",
        f"{first[9]} (Session13_F_res.csv line 4) / {second[9]} (Session13_M_res.csv line 4)"])


def test_a_corpus_without_a_usable_row_is_one_line(tmp_path):
    root = small_corpus(tmp_path, {"Session01_F_res.csv": "", "Session01_M_res.csv": ",,\n"}, [])
    with pytest.raises(CorpusError, match="no usable row in its 2 annotation files"):
        read_small(root)


def test_two_corpora_of_one_name_cannot_share_a_cache_dir(tmp_path):
    from options import get_parser
    from protocol import resolve_data
    for parent, name in (("a", "Session01_F_res.csv"), ("b", "Sess01_eval.csv")):
        (tmp_path / parent / "corpus" / "annotation").mkdir(parents=True)
        (tmp_path / parent / "corpus" / "annotation" / name).write_text("")
    both = f"{tmp_path}/a/corpus,{tmp_path}/b/corpus"
    assert len(resolve_data(get_parser().parse_args(["--data_dir", both])).caches) == 2  # each its own folder
    with pytest.raises(FlagError, match="two corpus folders have the same name"):
        resolve_data(get_parser().parse_args(["--data_dir", both, "--cache_dir", str(tmp_path / "cache")]))
