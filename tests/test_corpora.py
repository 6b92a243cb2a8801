"""Corpora besides KEMDy, generated tiny in the layouts their publishers distribute (RAVDESS, TESS, EmoDB) and as a
manifest: detection, speakers, labels, sessions and splits, the corpus's own classes through training, testing and
prediction, corpora without ratings or transcripts, --modalities, --label_map and UA."""
import argparse
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

import predict
import preprocess as preprocess_module
from constants import SUMMARY
from corpora import detect_corpus
from demo_corpus import make_demo_corpus
from engine import train
from errors import FlagError
from main import main
from options import get_parser, modality_check
from preprocess import preprocess
from protocol import prepare_data, resolve_data
from test_bad_input import assert_one_line_error, one_line_error_here, run_cli

TINY = ["--text_dim", "8", "--hidden_size", "8", "--num_layers", "1", "--audio_dim", "8", "--batch_size", "16",
        "--functionals", "logmel", "--epochs", "1", "--ws", "1"]


def voice(path, pitch: float, rate: int = 16000, seconds: float = 0.4, seed: int = 0) -> None:
    """A short harmonic tone whose pitch stands for the class, with noise: enough to train on, not to learn much."""
    t = np.arange(int(rate * seconds)) / rate
    rng = np.random.default_rng(seed)
    audio = sum(np.sin(2 * np.pi * pitch * h * t) / h for h in (1, 2, 3)) * 0.1 + 0.01 * rng.standard_normal(len(t))
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio.astype(np.float32), rate)


def make_ravdess(root, actors: int = 24):
    """Audio_Speech_Actors_01-24/Actor_NN/03-01-EE-II-SS-RR-AA.wav at 48 kHz, plus a song file and a misfiled one."""
    for actor in range(1, actors + 1):
        for emotion in range(1, 9):
            name = f"03-01-{emotion:02d}-01-{1 + actor % 2:02d}-01-{actor:02d}.wav"
            voice(root / "Audio_Speech_Actors_01-24" / f"Actor_{actor:02d}" / name, 100 + 20 * emotion, 48000,
                  seed=actor * 10 + emotion)
    voice(root / "Audio_Speech_Actors_01-24" / "Actor_01" / "03-02-03-01-01-01-01.wav", 160)  # song, not speech
    voice(root / "Audio_Speech_Actors_01-24" / "Actor_02" / "03-01-04-02-01-02-03.wav", 180)  # actor 03 in Actor_02/
    return root


def make_tess(root, words: int = 10):
    """<speaker>_<emotion> folders (spelled as the real ones: OAF_Fear, YAF_pleasant_surprised...) of
    <speaker>_<word>_<emotion>.wav, and the real corpus's OA_bite_neutral.wav."""
    folders = {"OAF": {"neutral": "OAF_neutral", "fear": "OAF_Fear", "ps": "OAF_Pleasant_surprise", "sad": "OAF_Sad"},
               "YAF": {"neutral": "YAF_neutral", "fear": "YAF_fear", "ps": "YAF_pleasant_surprised", "sad": "YAF_sad"}}
    for speaker, emotions in folders.items():
        for k, (emotion, folder) in enumerate(emotions.items()):
            for w in range(words):
                prefix = "OA" if (speaker, emotion, w) == ("OAF", "neutral", 0) else speaker
                voice(root / "data" / folder / f"{prefix}_word{w}_{emotion}.wav", 120 + 40 * k, seed=w)
    return root


def make_emodb(root):
    """wav/SSTTTEV.wav for the 10 speakers, 7 emotions, 2 texts."""
    for s, speaker in enumerate(("03", "08", "09", "10", "11", "12", "13", "14", "15", "16")):
        for k, letter in enumerate("WLEAFTN"):
            for text in ("a01", "b02"):
                voice(root / "wav" / f"{speaker}{text}{letter}a.wav", 100 + 25 * k, seed=s * 7 + k)
    return root


def make_manifest(root):
    """manifest.csv over wavs in speaker folders: 6 speakers, dialogues with start times, some ratings, and a row of
    each kind of dirt (missing wav, no label, a rating that is not a number)."""
    rows = ["path,emotion,arousal,valence,speaker,dialogue,start,text"]
    for s in range(6):
        for k in range(8):
            label = ("calm", "joyful", "tense")[k % 3]
            voice(root / f"spk{s}" / f"utt{k}.wav", 120 + 50 * (k % 3), seed=s * 8 + k)
            rating = f"{2 + k % 3},{4 - k % 3}" if k % 2 == 0 else ","
            rows.append(f"spk{s}/utt{k}.wav,{label},{rating},spk{s},d{s}_{k // 4},{k % 4},utterance {k}")
    voice(root / "spk1" / "extra.wav", 150)
    voice(root / "spk2" / "extra.wav", 150)
    rows += ["spk0/missing.wav,calm,3,3,spk0,d0_0,9,gone", "spk1/extra.wav,,3,3,spk1,d1_0,8,no label",
             "spk2/extra.wav,calm,high,3,spk2,d2_0,8,bad rating"]
    (root / "manifest.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def ravdess(tmp_path_factory):
    return make_ravdess(tmp_path_factory.mktemp("ravdess") / "RAVDESS")


def test_ravdess_is_read_as_distributed(ravdess, tmp_path):
    assert detect_corpus(ravdess) == "ravdess"
    summary = preprocess(ravdess, "tfidf", 8)
    table = pd.read_csv(ravdess / "df_speaker.csv", keep_default_na=False)
    assert summary["roles"]["speaker"]["rows"] == 24 * 8 + 1 == len(table)
    assert summary["dropped"]["song (not speech)"] == [
        "Audio_Speech_Actors_01-24/Actor_01/03-02-03-01-01-01-01.wav"]
    assert summary["kept"]["actor in the name differs from its folder's (the name is used)"] == [
        "Audio_Speech_Actors_01-24/Actor_02/03-01-04-02-01-02-03.wav"]
    row = table.set_index("Segment ID").loc["03-01-05-01-02-01-07"]
    assert (row["Emotion"], row["speaker"], row["Session"], row["text"]) == (
        "angry", "Actor_07", 7, "Dogs are sitting by the door")
    facts = json.loads((ravdess / "preprocess_manifest.json").read_text())["facts"]
    assert facts["classes"] == ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
    assert not facts["arousal_valence"] and facts["text"]
    spec = resolve_data(get_parser().parse_args(["--data_dir", str(ravdess)]))
    assert spec.cv_folds == tuple(tuple(range(6 * k + 1, 6 * k + 7)) for k in range(4))  # 4 folds of 6 actors
    assert spec.test == tuple(range(19, 25)) and spec.val == (17, 18)  # validation actors never in training
    assert spec.record()["val"] == ["Actor_17", "Actor_18"] and not set(spec.val) & set(spec.train)


def test_ravdess_trains_with_its_classes_merged_by_label_map(ravdess, tmp_path):
    run = train(get_parser().parse_args(["--data_dir", str(ravdess), "--save_path", str(tmp_path),
                                         "--label_map", "calm:neutral"] + TINY))
    results = json.loads((run / "results.json").read_text())
    assert list(results["test"]["per_class"]) == ["neutral", "happy", "sad", "angry", "fearful", "disgust",
                                                  "surprised"]  # 7 classes: calm merged into neutral
    assert results["test"]["ccc_arousal"] is None and results["test"]["ua"] >= 0  # no ratings: no CCC, not 0
    assert json.loads((run / "args.json").read_text())["label_map"] == "calm:neutral"
    predictions = pd.read_csv(run / "predictions.csv")
    assert "calm" not in predictions.columns and "arousal_pred" not in predictions.columns
    wav = next(ravdess.glob("**/03-01-02-*.wav"))
    table = predict.predict(run, [wav], [None], dialogue=False)
    assert table["emotion"].iloc[0] in results["test"]["per_class"] and "arousal" not in table.columns


def test_tess_speakers_words_and_leave_one_speaker_out(tmp_path):
    tess = make_tess(tmp_path / "TESS")
    assert detect_corpus(tess) == "tess"
    summary = preprocess(tess, "tfidf", 8)
    table = pd.read_csv(tess / "df_speaker.csv", keep_default_na=False).set_index("Segment ID")
    assert len(table) == 2 * 4 * 10 and summary["kept"][
        "speaker in the name differs from its folder's (the folder is used)"] == ["data/OAF_neutral/OA_word0_neutral.wav"]
    assert table.loc["OAF_word0_neutral", "speaker"] == "OAF"
    assert table.loc["YAF_word3_pleasant_surprise", "Session"] == 7  # YAF's word group 2 of 5
    assert table.loc["OAF_word9_sad", "text"] == "Say the word word9"
    spec = resolve_data(get_parser().parse_args(["--data_dir", str(tess), "--cv"]))
    assert spec.cv_folds == (tuple(range(1, 6)), tuple(range(6, 11)))  # one speaker each
    assert spec.test == tuple(range(6, 11)) and spec.val == (5,) and spec.train == (1, 2, 3, 4)
    assert resolve_data(get_parser().parse_args(["--data_dir", str(tess), "--test_split", "OAF"])).test == (1, 2, 3, 4, 5)


def test_emodb_speakers_labels_and_no_text(tmp_path, monkeypatch):
    emodb = make_emodb(tmp_path / "EmoDB")
    assert detect_corpus(emodb) == "emodb"
    preprocess(emodb, "tfidf", 8)
    table = pd.read_csv(emodb / "df_speaker.csv", keep_default_na=False).set_index("Segment ID")
    assert (table.loc["16b02Fa", "Emotion"], table.loc["16b02Fa", "speaker"], table.loc["16b02Fa", "Session"]) == (
        "happiness", 16, 10)
    assert set(table["Emotion"]) == {"anger", "boredom", "disgust", "fear", "happiness", "sadness", "neutral"}
    spec = resolve_data(get_parser().parse_args(["--data_dir", str(emodb), "--test_split", "16"]))
    assert spec.test == (10,) and spec.val == (9,) and len(spec.cv_folds) == 10  # leave one speaker out, by name
    run = train(get_parser().parse_args(["--data_dir", str(emodb), "--save_path", str(tmp_path / "exp")] + TINY))
    config = json.loads((run / "results.json").read_text())
    assert config["sessions"]["test"] == ["16"] and torch_load_config(run)["modalities"] == ("audio",)
    # The run records its split by speaker name, which reads back to the same speaker (session 10 is speaker 16,
    # while speaker "10" is session 4).
    saved = json.loads((run / "args.json").read_text())
    assert saved["test_split"] == "16" and resolve_data(argparse.Namespace(**saved)).test == (10,)
    folds = resolve_data(get_parser().parse_args(["--data_dir", str(emodb), "--cv"]))
    assert [folds.format(f) for f in folds.cv_folds] == ["03", "08", "09", "10", "11", "12", "13", "14", "15", "16"]
    # Refused once the tables say the corpus has no transcripts, before the eGeMAPS extraction (minutes on a corpus).
    def extraction(*_):
        raise AssertionError("eGeMAPS extracted before --modalities was checked")
    monkeypatch.setattr(preprocess_module, "build_opensmile_cache", extraction)
    for experiment in ([], ["--cv"], ["--seeds", "0,1"]):
        one_line_error_here(main, ["--data_dir", str(emodb), "--modalities", "text", "--functionals", "egemaps",
                                   "--save_path", str(tmp_path / "refused")] + experiment,
                            "--modalities text: the corpus has no transcripts")
    assert not (tmp_path / "refused").exists()


def torch_load_config(run) -> dict:
    import torch
    return torch.load(run / "best.pth", weights_only=True)["model_config"]


def test_a_manifest_corpus_trains_tests_and_predicts_with_its_own_classes(tmp_path, capsys):
    corpus = make_manifest(tmp_path / "mine")
    assert detect_corpus(corpus) == "csv"
    summary = preprocess(corpus, "tfidf", 8)
    assert summary["dropped"] == {"no wav": ["spk0/missing (manifest.csv line 50)"],
                                  "no emotion label": ["spk1/extra (manifest.csv line 51)"],
                                  "rating not a number from 1 to 5, or start not a number": [
                                      "spk2/extra (manifest.csv line 52)"]}
    table = pd.read_csv(corpus / "df_speaker.csv", keep_default_na=False)
    assert list(table.loc[table["dialogue"] == "spk3/d3_1", "Segment ID"]) == [f"spk3/utt{k}" for k in range(4, 8)]
    exp = tmp_path / "exp"
    main(["--data_dir", str(corpus), "--save_path", str(exp), "--test_split", "spk5"] + TINY[:-2] + ["--ws", "2"])
    run = next(exp.iterdir())
    results = json.loads((run / "results.json").read_text())
    assert list(results["test"]["per_class"]) == ["calm", "joyful", "tense"] and results["sessions"]["test"] == ["spk5"]
    assert results["test"]["ccc_arousal"] is not None  # half the rows are rated: CCC over those
    main(["--test_only", str(run)])
    assert json.loads((run / "results_test_only.json").read_text())["test"] == results["test"]
    printed = predict.main(["--run", str(run), "--wav", str(corpus / "spk5" / "utt2.wav")])
    assert list(printed.columns[1:4]) == ["calm", "joyful", "tense"] and "arousal" in printed.columns
    assert json.loads((corpus / SUMMARY).read_text())["roles"]["speaker"]["classes"] == {"calm": 18, "joyful": 18,
                                                                                          "tense": 12}


def test_a_malformed_manifest_is_one_line(tmp_path):
    (tmp_path / "manifest.csv").write_text("file,label\na.wav,calm\n", encoding="utf-8")
    assert_one_line_error(run_cli("preprocess.py", ["--data_dir", str(tmp_path)]),
                          "manifest.csv: needs the columns path, emotion and speaker or session")


def test_manifest_splits_never_join_speakers(tmp_path):
    rows = ["path,emotion,speaker,dialogue,start"]
    for speaker in ("1", "2", "10"):  # numbers as names: natural order, and session 2 is speaker "2"
        for k in range(3):
            voice(tmp_path / f"s{speaker}" / f"{k}.wav", 150 + 30 * k, seed=k)
            rows.append(f"s{speaker}/{k}.wav,{'ab'[k % 2]},{speaker},d1,{k}")  # one dialogue name for everyone
    rows += ["s1/../s1/0.wav,a,1,d1,9", "../outside.wav,a,1,d1,9", "s2\\1.wav,b,2,d1,9"]
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    summary = preprocess(tmp_path, "tfidf", 8)
    assert summary["dropped"] == {"a second row for one wav": ["s1/0 (manifest.csv line 11: first at line 2)",
                                                               "s2/1 (manifest.csv line 13: first at line 6)"],
                                  "path outside the corpus folder": ["../outside.wav (manifest.csv line 12)"]}
    spec = resolve_data(get_parser().parse_args(["--data_dir", str(tmp_path)]))
    assert spec.names == ("1", "2", "10") and spec.test == (3,) and spec.val == (2,) and spec.train == (1,)
    table = pd.read_csv(tmp_path / "df_speaker.csv", keep_default_na=False, dtype=str)
    from dataset import context_windows
    windows = context_windows(table["dialogue"].to_numpy(), 3)
    for row, window in enumerate(windows):  # every window holds one speaker's utterances only
        assert set(table["speaker"].to_numpy()[window[window >= 0]]) == {table["speaker"][row]}
    two = tmp_path.parent / "two"
    (two / "x").mkdir(parents=True)
    voice(two / "x" / "a.wav", 150)
    voice(two / "x" / "b.wav", 200)
    (two / "manifest.csv").write_text("path,emotion,speaker\nx/a.wav,a,p\nx/b.wav,b,q\n", encoding="utf-8")
    spec = resolve_data(get_parser().parse_args(["--data_dir", str(two)]))
    assert (spec.train, spec.val, spec.test) == ((1,), (), (2,))  # two speakers: one trains, one tests


def test_label_map_errors_are_one_line(ravdess):
    for flags, message in [(["--label_map", "calm:neutral,calm:happy"], "maps one label twice"),
                           (["--label_map", "joy:neutral"], "joy is not a class of the corpus"),
                           (["--label_map", ",".join(f"{c}:" for c in ("neutral", "calm", "happy", "sad", "angry",
                                                                         "fearful", "disgust", "surprised"))],
                            "drops every class")]:
        one_line_error_here(main, ["--data_dir", str(ravdess)] + flags + TINY, message)


def test_modalities_are_checked_on_the_whole_union_before_its_features(tmp_path):
    # A KEMDy19 + KEMDy20 union trains on bio-signals when one of its corpora has them (dataset.Corpus zero-fills
    # and masks the other's rows): the early check asks the union, not each folder.
    with_bio = make_demo_corpus(tmp_path / "KEMDy19", seed=0, n_sessions=3, n_scripts=1, n_impros=0, n_turns=3)
    without = make_demo_corpus(tmp_path / "KEMDy20", seed=0, n_sessions=3, n_scripts=1, n_turns=3, layout="kemdy20")
    for name in ("EDA", "TEMP", "IBI"):
        shutil.rmtree(without / name, ignore_errors=True)
    spec = resolve_data(get_parser().parse_args(["--data_dir", f"{with_bio},{without}", "--functionals", "none"]))
    seen = []
    prepare_data(spec, lambda facts: seen.append(facts["bio"]) or modality_check("audio,bio")(facts))
    assert seen == [True, True]
    only = resolve_data(get_parser().parse_args(["--data_dir", str(without), "--functionals", "none"]))
    with pytest.raises(FlagError, match="the corpus has no bio-signals"):
        prepare_data(only, modality_check("audio,bio"))
