import json
import math

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from constants import MAX_FRAMES, N_MELS, NUM_RATERS, SAMPLE_RATE
from preprocess import (CorpusError, clean_transcript, decode_text, load_audio, log_mel, preprocess,
                        read_annotation_file, segment_path)

HEADER = ("Numb,Wav,,ECG,,E4-EDA,,E4-TEMP,,Segment ID,Total Evaluation,,," + ",,,".join(
    f"Eval{i:02d}" for i in range(1, NUM_RATERS + 1)) + ",,\n"
    ",start,end,start,end,start,end,start,end,,Emotion,Valence,Arousal," + ",".join(
    ["Emotion,Valence,Arousal"] * NUM_RATERS) + "\n")


def row(numb: int, seg_id: str, total: str, raters: list[tuple[str, str, str]]) -> str:
    cells = [str(numb)] + ["1.0", "2.5"] * 4 + [seg_id, total, "3.2", "2.9"] + [v for r in raters for v in r]
    return ",".join(cells) + "\n"


def write_annotation(path, body: str):
    path.write_text(HEADER + body, encoding="utf-8")
    return path


RATERS = [("neutral", "3", "3")] * 8 + [("happy", "4", "4"), ("happy", "4", "5")]


def test_positional_reading_roles_ties_spelling_blank_and_missing_cells(tmp_path):
    raters = list(RATERS)
    raters[2] = ("disqust", "2", "3")
    raters[5] = ("neutral", "", "3")  # missing valence cell
    body = (row(1, "Sess01_script01_F001", "neutral;happy", raters)
            + "," * 42 + "\n"  # blank row
            + row(2, "Sess01_script01_M001", "disqust", RATERS))
    table, blank, _ = read_annotation_file(write_annotation(tmp_path / "Session01_F_res.csv", body))
    assert blank == ["Session01_F_res.csv line 4"]
    assert table["Segment ID"].tolist() == ["Sess01_script01_F001", "Sess01_script01_M001"]
    assert table["role"].tolist() == ["speaker", "listener"]  # F file: F speaks, then listens to M
    assert table["speaker"].tolist() == ["F", "M"]
    assert table["Emotion"].tolist() == ["neutral;happy", "disgust"]
    assert table.loc[0, "Emotion.3"] == "disgust"
    assert math.isnan(table.loc[0, "Valence.6"]) and table.loc[0, "Arousal.6"] == 3.0
    assert table.loc[0, "Valence"] == 3.2 and table.loc[0, "Arousal"] == 2.9
    assert table.loc[1, "dialogue"] == "Sess01_script01" and table.loc[1, "Session"] == 1
    assert table.loc[1, "sequence"] == 1 and table.loc[1, "script"] == "script01"


@pytest.mark.parametrize("body, message", [
    (row(1, "Sess01_script01_F001", "joy", RATERS), "line 3: unknown emotion 'joy'"),
    (row(1, "Sess01_script01_F001", "neutral", [("neutral", "6", "3")] * 10), "line 3: rating '6'"),
    (row(1, "Sess01_script01_F001", "neutral", [("neutral", "0", "3")] * 10), "line 3: rating '0'"),
    (row(1, "Sess01_script01_F001", "neutral", [("neutral", "abc", "3")] * 10), "line 3: rating 'abc'"),
    (row(1, "Sess01_script01_F001", "neutral", RATERS) + row(2, "Sess01_script01_F001", "neutral", RATERS),
     "line 4: Segment ID Sess01_script01_F001 repeats line 3"),
    (row(1, "Sess01_script01_F001", "neutral", RATERS[:9]), "40 columns, expected 43"),
    (row(1, "Sess01_script01_F001", "neutral", RATERS + [("neutral", "3", "3")]), "46 columns, expected 43"),
    (row(1, "Sess01_scene01_F001", "neutral", RATERS), "Segment ID 'Sess01_scene01_F001' is not"),
], ids=["label", "rating-6", "rating-0", "rating-text", "duplicate", "missing-columns", "extra-columns", "segment-id"])
def test_bad_annotation_rows_name_file_and_line(tmp_path, body, message):
    path = write_annotation(tmp_path / "Session01_F_res.csv", body)
    with pytest.raises(CorpusError, match="Session01_F_res.csv") as error:
        read_annotation_file(path)
    assert message in str(error.value)


def test_transcript_cleaning():
    assert clean_transcript("c/ 어 n/ 그게* 말이야+ / 정말?") == "어 그게 말이야 정말?"
    assert clean_transcript("b/ n/ *") == ""
    assert clean_transcript("N/u/l/o/ 네") == "네"


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
    manifest = json.loads((demo_dir / "preprocess_manifest.json").read_text())
    assert manifest["summary"]["dropped_rows"]["no wav"] == 2  # the demo's segment without wav, both roles
    assert manifest["summary"]["dropped_rows"]["blank row"] == 1
    empty = speaker.loc[speaker["Segment ID"].str.startswith("Sess03_script01"), "text"].iloc[0]
    assert empty == ""  # markers-only transcript: kept, empty


def test_second_run_recomputes_nothing(demo_dir, capsys):
    outputs = [demo_dir / n for n in ("annotation.csv", "features/logmel.npy", "embedding_16.npy")]
    before = [p.stat().st_mtime_ns for p in outputs]
    preprocess(demo_dir, "tfidf", 16)
    assert [p.stat().st_mtime_ns for p in outputs] == before
    assert "up to date" in capsys.readouterr().out


def test_missing_corpus_says_where_and_how(tmp_path):
    with pytest.raises(SystemExit, match="no KEMDy19 or KEMDy20 corpus at .*--make_demo"):
        preprocess(tmp_path / "nothing")


def test_missing_txt_and_corrupt_wav_are_skipped_and_counted(corpus_copy, capsys):
    seg_txt = "Sess06_script01_F001" if (corpus_copy / "wav/Session06/Sess06_script01/Sess06_script01_F001.txt").exists() \
        else "Sess06_script01_M001"
    segment_path(corpus_copy, seg_txt, ".txt").unlink()
    corrupt = "Sess07_script01_F001" if segment_path(corpus_copy, "Sess07_script01_F001", ".wav").exists() \
        else "Sess07_script01_M001"
    segment_path(corpus_copy, corrupt, ".wav").write_bytes(b"RIFF\x00\x00not a wav at all")
    summary = preprocess(corpus_copy, "tfidf", 16)
    assert summary["dropped_rows"]["no txt"] == 2
    assert summary["dropped_rows"]["unusable wav"] == 2
    assert f"{corrupt}.wav: unreadable audio" in capsys.readouterr().out
    speaker = pd.read_csv(corpus_copy / "df_speaker.csv")
    assert seg_txt not in set(speaker["Segment ID"]) and corrupt not in set(speaker["Segment ID"])


def test_unknown_label_fails_without_destroying_outputs(corpus_copy):
    preprocess(corpus_copy, "tfidf", 16)
    before = (corpus_copy / "annotation.csv").read_bytes()
    path = corpus_copy / "annotation" / "Session02_M_res.csv"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    cells = lines[3].split(",")
    cells[10] = "joy"
    lines[3] = ",".join(cells)
    path.write_text("".join(lines), encoding="utf-8")
    with pytest.raises(CorpusError, match="Session02_M_res.csv line 4: unknown emotion 'joy'"):
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
