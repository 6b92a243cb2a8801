"""Folders as users have them and a fresh clone as a newcomer meets it (issue 26): macOS leftovers, manifests that
lie, files the user owns, the baseline's validation, audio extracted from videos, text-only prediction, messages
that name the row, and reports. One test per kind; every folder is generated here."""
import argparse
import json
import os
import shutil
import unicodedata
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

import baseline
import predict
import report
from corpora import detect_corpus
from errors import CorpusError, FlagError
from main import main
from options import get_parser
from preprocess import preprocess
from protocol import resolve_data
from test_bad_input import one_line_error_here
from test_corpora import make_ravdess, make_tess, voice
from test_train import TINY
from text_encoder import check_text_dim, text_dim_of


def snapshot(folder) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def mac_copy(folder):
    """The folder as a Mac leaves it: a `._` twin beside every file, .DS_Store files and a __MACOSX tree."""
    for path in [p for p in folder.rglob("*") if p.is_file()]:
        (path.parent / f"._{path.name}").write_bytes(b"\x00\x05\x16\x07 resource fork")
        (path.parent / ".DS_Store").write_bytes(b"Bud1")
        twin = folder / "__MACOSX" / path.relative_to(folder)
        twin.parent.mkdir(parents=True, exist_ok=True)
        (twin.parent / f"._{path.name}").write_bytes(b"\x00\x05\x16\x07")
    return folder


def test_1_mac_leftovers_and_upper_case_extensions(tmp_path, capsys):
    clean = make_ravdess(tmp_path / "clean", actors=4)
    copied = mac_copy(shutil.copytree(clean, tmp_path / "mac"))
    upper = next(copied.rglob("03-01-05-*.wav"))
    upper.rename(upper.with_suffix(".WAV"))
    assert detect_corpus(copied) == "ravdess"
    summary = preprocess(copied, "tfidf", 8)
    assert summary["rows"] == preprocess(clean, "tfidf", 8)["rows"] == 4 * 8 + 1  # the .WAV read, no twin
    skipped = summary["files"]["hidden files and macOS leftovers (._ twins, .DS_Store, __MACOSX), skipped"]
    assert "__MACOSX/" in skipped and len([s for s in skipped if s.endswith(".DS_Store")]) == 4  # one per actor
    # TESS's word groups (its sessions) stay as they are: a `._` twin is not a word.
    tess = make_tess(tmp_path / "tess")
    mac = mac_copy(shutil.copytree(tess, tmp_path / "tess_mac"))
    preprocess(tess, "tfidf", 8, corpus="tess")
    preprocess(mac, "tfidf", 8, corpus="tess")
    columns = ["Segment ID", "Emotion", "speaker", "Session"]
    pd.testing.assert_frame_equal(pd.read_csv(tess / "df_speaker.csv")[columns],
                                  pd.read_csv(mac / "df_speaker.csv")[columns])
    wavs = predict.collect_inputs(argparse.Namespace(wav=None, input_dir=str(upper.parent), dialogue=None))[0]
    assert wavs and not any(w.name.startswith("._") for w in wavs) and any(w.suffix == ".WAV" for w in wavs)
    hidden = len(list(upper.parent.glob("._*"))) + 1  # and .DS_Store
    assert f"skipped {hidden} hidden files and macOS leftovers" in capsys.readouterr().out


def _manifest(root, rows: list[str]):
    for row in rows[1:]:
        path = row.split(",")[0]
        if path and not os.path.isabs(path) and not (root / path).exists():
            voice(root / path, 150 + 10 * len(path), seed=len(path))
    (root / "manifest.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


def test_2_a_row_with_more_cells_than_its_header_is_dropped_and_named(tmp_path):
    rows = ["path,emotion,speaker,text"] + [f"s{s}/{k}.wav,{'ab'[k % 2]},s{s},fine" for s in (1, 2) for k in range(3)]
    rows.append("s3/0.wav,a,s3,hello, said s1")  # an unquoted comma: the cells would shift
    voice(tmp_path / "s3" / "0.wav", 200)
    summary = preprocess(_manifest(tmp_path, rows), "tfidf", 8)
    assert summary["dropped"] == {"a cell count other than the header's (an unquoted comma in a cell?)":
                                  ["s3/0 (manifest.csv line 8: 5 cells, the header 4)"]}
    assert set(pd.read_csv(tmp_path / "df_speaker.csv")["speaker"]) == {"s1", "s2"}


def test_a_transcript_beside_a_dotted_file_name(tmp_path):
    rows = ["path,emotion,speaker"] + [f"s{s}/take.v{k}.wav,{'ab'[k % 2]},s{s}" for s in (1, 2) for k in range(2)]
    root = _manifest(tmp_path, rows)
    (root / "s1" / "take.v1.txt").write_text("the second take", encoding="utf-8")
    (root / "s1" / "take.txt").write_text("another file's transcript", encoding="utf-8")
    preprocess(root, "tfidf", 8)
    table = pd.read_csv(root / "df_speaker.csv", keep_default_na=False).set_index("Segment ID")
    assert table.loc["s1/take.v1", "text"] == "the second take" and table.loc["s1/take.v0", "text"] == ""


def test_3_absolute_paths_with_a_relative_data_dir(tmp_path, monkeypatch):
    root = tmp_path / "corpus"
    rows = ["path,emotion,speaker"] + [f"{root}/s{s}/{k}.wav,{'ab'[k % 2]},s{s}" for s in (1, 2, 3) for k in range(2)]
    for s in (1, 2, 3):
        for k in range(2):
            voice(root / f"s{s}" / f"{k}.wav", 150 + 40 * k, seed=s)
    _manifest(root, rows)
    monkeypatch.chdir(tmp_path)
    summary = preprocess("corpus", "tfidf", 8)
    assert summary["rows"] == 6 and not summary["dropped"]
    assert preprocess(str(root), "tfidf", 8)["rows"] == 6  # and up to date under either spelling


def test_4_files_the_user_owns_are_never_replaced(tmp_path):
    rows = ["path,emotion,speaker"] + [f"s{s}/{k}.wav,{'ab'[k % 2]},s{s}" for s in (1, 2) for k in range(2)]
    root = _manifest(tmp_path / "mine", rows)
    (root / "annotation.csv").write_text("my own notes\n", encoding="utf-8")
    (root / "features").mkdir()
    (root / "features" / "logmel.json").write_text("{}", encoding="utf-8")
    before = snapshot(root)
    with pytest.raises(CorpusError, match="annotation.csv was not written by this repo.*--cache_dir"):
        preprocess(root, "tfidf", 8)
    assert snapshot(root) == before  # nothing written, no lock file either
    preprocess(root, "tfidf", 8, cache_dir=tmp_path / "cache")
    assert snapshot(root) == before and (tmp_path / "cache" / "mine" / "annotation.csv").exists()


def test_5_other_audio_formats_are_watched_and_names_match_in_nfc(tmp_path):
    name = unicodedata.normalize("NFD", "기쁨")  # a decomposed name on disk, as macOS writes it
    rows = ["path,emotion,speaker", f"{unicodedata.normalize('NFC', name)}/a.flac,a,p", "p2/b.flac,b,q", "p3/c.flac,a,r"]
    for folder, pitch in ((name, 150), ("p2", 200), ("p3", 250)):
        t = np.arange(6400) / 16000
        (tmp_path / folder).mkdir()
        sf.write(tmp_path / folder / f"{'abc'[pitch // 50 - 3]}.flac", (0.1 * np.sin(2 * np.pi * pitch * t)), 16000)
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    first = preprocess(tmp_path, "tfidf", 8)
    assert first["rows"] == 3 and not first["dropped"]  # the NFC row finds the NFD folder
    frames = np.load(tmp_path / "features" / "logmel.npy")
    sf.write(tmp_path / "p2" / "b.flac", np.zeros(6400), 16000)  # a changed .flac: its spectrogram is made again
    assert "spectrograms" in preprocess(tmp_path, "tfidf", 8)["seconds"]
    assert not np.array_equal(np.load(tmp_path / "features" / "logmel.npy"), frames)


def test_6_both_clis_check_a_split_the_same_way_before_any_folder(tmp_path):
    corpus = make_ravdess(tmp_path / "RAVDESS", actors=16)  # no actors 17/18: the default validation is empty
    save, fast = tmp_path / "exp", ["--functionals", "logmel"]
    for cli in (main, baseline.main):
        one_line_error_here(cli, ["--data_dir", str(corpus), "--save_path", str(save), "--test_split", "1,2,3,4,5,6"]
                            + fast,
                            "--val_split: the validation sessions (Actor_23,Actor_24) have no utterances")
        one_line_error_here(cli, ["--data_dir", str(corpus), "--save_path", str(save), "--cv"] + fast,
                            "--val_split: the validation sessions")
    rows = ["path,emotion,speaker"] + [f"s{s}/{k}.wav,{'a' if s < 3 else 'ab'[k % 2]},s{s}" for s in (1, 2, 3, 4)
                                       for k in range(2)]
    one = _manifest(tmp_path / "one", rows)  # training speakers s1, s2 hold class a alone
    for cli in (main, baseline.main):
        one_line_error_here(cli, ["--data_dir", str(one), "--save_path", str(save), "--test_split", "s4",
                                  "--val_split", "s3"] + fast, "the training sessions (s1,s2) hold one class alone")
    assert not save.exists()  # no run or experiment folder left behind


def test_7_ravdess_audio_from_the_video_files_is_not_counted_twice(tmp_path):
    corpus = make_ravdess(tmp_path / "RAVDESS", actors=2)
    for modality in ("01", "02"):
        shutil.copy(next(corpus.rglob("03-01-01-*-01.wav")), corpus / f"{modality}-01-01-01-01-01-01.wav")
    summary = preprocess(corpus, "tfidf", 8)
    assert summary["rows"] == 2 * 8 + 1 and sorted(summary["dropped"]["not the audio-only modality (03): audio "
                                                                  "extracted from a video file"]) == [
        "01-01-01-01-01-01-01.wav", "02-01-01-01-01-01-01.wav"]


def test_8_a_text_only_run_does_not_predict_recordings_without_transcripts(demo_dir, tmp_path):
    from engine import train
    run = train(get_parser().parse_args(["--data_dir", str(demo_dir), "--save_path", str(tmp_path),
                                         "--modalities", "text"] + TINY))
    voice(tmp_path / "in" / "a.wav", 150)
    sf.write(tmp_path / "in" / "b.wav", np.zeros(16000, np.float32), 16000)
    (tmp_path / "in" / "b.txt").write_text("정말 기뻐요", encoding="utf-8")
    table = predict.main(["--run", str(run), "--input_dir", str(tmp_path / "in")])
    assert [f.split("/")[-1] for f in table["file"]] == ["b.wav"]  # a.wav: skipped and named
    assert table["note"].tolist() == ["silent (no sample above -60 dBFS)"]  # b's note, not a's
    one_line_error_here(predict.main, ["--run", str(run), "--wav", str(tmp_path / "in" / "a.wav")],
                        "reads text alone and none of the recordings has a transcript")


def test_9_messages_name_rows_and_sessions_come_from_kept_rows(tmp_path):
    rows = ["path,emotion,speaker"] + [f"{k}.wav,{'ab'[k % 2]},s{k % 3}" for k in range(6)]
    for k in range(6):  # bare file names whose wavs sit in subfolders
        voice(tmp_path / "bare" / f"s{k % 3}" / f"{k}.wav", 150)
    (tmp_path / "bare" / "manifest.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(FlagError, match="names no usable speaker or session"):
        resolve_data(get_parser().parse_args(["--data_dir", str(tmp_path / "bare")]))
    with pytest.raises(CorpusError, match=r"no usable manifest corpus recording: no wav: 6 \(0 \(manifest.csv line 2\)"):
        preprocess(tmp_path / "bare", "tfidf", 8)
    ravdess = make_ravdess(tmp_path / "RAVDESS", actors=24)
    shutil.rmtree(next(ravdess.rglob("Actor_20")))
    spec = resolve_data(get_parser().parse_args(["--data_dir", str(ravdess), "--test_split", "19,20,21",
                                                 "--text_dim", "8"]))
    preprocess(ravdess, "tfidf", 8)
    corpus = replace(spec, functionals=()).corpus()
    assert spec.record(set(corpus.sessions.tolist()))["test"] == ["Actor_19", "Actor_21"]


def test_10_missing_manifests_and_folders_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    one_line_error_here(main, ["--data_dir", str(tmp_path / "empty"), "--corpus", "csv"],
                        "has no manifest.csv (--corpus csv reads")
    one_line_error_here(baseline.main, ["--data_dir", str(tmp_path / "empty"), "--corpus", "ravdess"],
                        "no usable RAVDESS recording: no such files (Actor_NN/03-01-EE-II-SS-RR-AA.wav)")
    one_line_error_here(main, ["--data_dir", str(tmp_path / "nowhere")], "nowhere does not exist: it reads KEMDy19")


def test_12_help_is_in_groups(capsys):
    with pytest.raises(SystemExit):
        main(["-h"])
    out = capsys.readouterr().out
    for group in ("corpus:", "data and splits:", "model (defaults", "training:", "fine-tuning pretrained", "run control:"):
        assert group in out


def test_13_text_dim_comes_from_the_encoder(tmp_path):
    from transformers import BertConfig, BertModel
    BertModel(BertConfig(vocab_size=50, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(tmp_path / "tiny-bert")
    assert text_dim_of(str(tmp_path / "tiny-bert")) == 24 and text_dim_of("tfidf") == text_dim_of(None) == 768
    with pytest.raises(FlagError, match="--text_dim 32 is not the hidden size 24 .*drop --text_dim"):
        check_text_dim(str(tmp_path / "tiny-bert"), 32)
    corpus = make_ravdess(tmp_path / "RAVDESS", actors=4)
    spec = resolve_data(get_parser().parse_args(["--data_dir", str(corpus), "--text_encoder", str(tmp_path / "tiny-bert"),
                                                 "--test_split", "4", "--val_split", "3"]))
    assert spec.text_dim == 24 and spec.flags()["text_dim"] == 24


def test_14_reports_say_runs_and_folds_in_words(demo_dir, tmp_path):
    from engine import train
    run = train(get_parser().parse_args(["--data_dir", str(demo_dir), "--save_path", str(tmp_path)] + TINY))
    experiment = tmp_path / "cv"
    experiment.mkdir()
    shutil.copytree(run, experiment / "fold1")
    (experiment / "runs.json").write_text(json.dumps({"args": {}, "runs": [{"name": "fold1", "seed": 0,
                                                                           "test_split": "13"}]}))
    from experiment import summarize_runs
    (experiment / "summary.json").write_text(json.dumps(summarize_runs(experiment, [{"name": "fold1", "seed": 0,
                                                                                     "test_split": "13"}])))
    table = report.report([str(experiment)]).set_index("run")
    assert table.loc["cv", "runs"] == "1 seed x 1 fold" and "±" not in table.loc["cv", "ua"]
    assert not (demo_dir / ".preprocess.lock").exists()
