"""KEMDy20: its annotation files, encodings and glitches, detection, the published splits, and training."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest

import main as main_cli
from conftest import TEXT_DIM
import soundfile as sf

from constants import NUM_RATERS, SAMPLE_RATE, SUMMARY
from dataset import Corpus
from demo_corpus import make_demo_corpus
from errors import CorpusError
from preprocess import preprocess
from corpora import detect_corpus
from readers import FileIndex, ReadReport, read_annotation_file, read_corpus, segment_path
from test_bad_input import one_line_error_here
from test_train import TINY

HEADER = ("Numb,WAV, ,Segment ID,Total Evaluation, , ," + ",".join(f"Eval{i:02d}{'FM'[i % 2 == 0]}, , "
                                                                   for i in range(1, NUM_RATERS + 1)) + "\n"
          + " ,start,end, ,Emotion,Valence,Arousal" + ",Emotion,Valence,Arousal" * NUM_RATERS + "\n")


def kemdy20_row(numb: int, seg_id: str, total: str, rater_emotion: str = "neutral") -> str:
    return f"{numb},1.5,3.25,{seg_id},{total},3,3.4" + f",{rater_emotion},3,4" * NUM_RATERS + "\n"


@pytest.fixture(scope="module")
def kemdy20_demo(tmp_path_factory):
    """A small KEMDy20-layout demo corpus (40 sessions, one 4-turn dialogue each), preprocessed."""
    data_dir = make_demo_corpus(tmp_path_factory.mktemp("k20") / "KEMDy20", seed=2, n_scripts=1, n_turns=4,
                                layout="kemdy20")
    preprocess(data_dir, "tfidf", TEXT_DIM)
    return data_dir


def test_kemdy20_annotation_file(tmp_path):
    path = tmp_path / "annotation" / "Sess17_eval.csv"
    path.parent.mkdir()
    path.write_text(HEADER + kemdy20_row(1, "Sess17_script01_User033F_001", "happy;neutral;sad")
                    + kemdy20_row(2, "Sess07_script02_User034M_001", "disqust", "disgust")  # the glitch
                    + "," * 36 + "\n", encoding="ascii")
    for seg_id in ("Sess17_script01_User033F_001", "Sess17_script02_User034M_001"):
        segment_path(tmp_path, seg_id, ".wav").parent.mkdir(parents=True, exist_ok=True)
        sf.write(segment_path(tmp_path, seg_id, ".wav"), [0.0] * 1600, SAMPLE_RATE)
    table, _, report = read_corpus(tmp_path, "kemdy20", [path], FileIndex(tmp_path / "wav"))
    assert table["Segment ID"].tolist() == ["Sess17_script01_User033F_001", "Sess17_script02_User034M_001"]
    assert [(r["line"], r["old"], r["new"]) for r in report.repaired] == [
        (4, "Sess07_script02_User034M_001", "Sess17_script02_User034M_001")]
    assert report.dropped["blank row"] == ["Sess17_eval.csv line 5"]
    assert table["Emotion"].tolist() == ["happy;neutral;sad", "disgust"]  # ties kept whole; disqust read
    assert table.loc[1, "Emotion.1"] == "disgust" and table.loc[0, "Arousal"] == 3.4 and table.loc[0, "Valence"] == 3
    assert table["role"].tolist() == ["speaker", "speaker"] and table["Session"].tolist() == [17, 17]
    assert table["speaker"].tolist() == ["User033F", "User034M"]
    assert table["dialogue"].tolist() == ["Sess17_script01", "Sess17_script02"]
    assert segment_path(tmp_path, "Sess17_script02_User034M_001", ".wav") == \
        tmp_path / "wav" / "Session17" / "Sess17_script02_User034M_001.wav"  # flat: no per-script folder
    assert report.kept["no txt (empty transcript)"] == table["Segment ID"].tolist()  # kept, named
    path.write_text(",".join(HEADER.split("\n")[0].split(",")[:-1]) + "\n" + HEADER.split("\n")[1] + "\n")
    with pytest.raises(CorpusError, match="Sess17_eval.csv: 36 columns, expected 37"):
        read_annotation_file(path, ReadReport())


def test_kemdy20_demo_preprocessing_accounts_for_every_row(kemdy20_demo):
    summary = json.loads((kemdy20_demo / SUMMARY).read_text())
    assert summary["corpus"] == "kemdy20"
    written = sum(len(pd.read_csv(p, header=None, skiprows=2, dtype=str).dropna(how="all"))
                  for p in (kemdy20_demo / "annotation").glob("Sess*_eval.csv"))
    assert summary["rows"] + sum(n for reason, n in summary["dropped_rows"].items() if reason != "blank row") == \
        written
    assert summary["dropped"]["no wav"] and summary["kept"]["no txt (empty transcript)"]  # named, not silently lost
    speaker = pd.read_csv(kemdy20_demo / "df_speaker.csv", keep_default_na=False)
    assert len(pd.read_csv(kemdy20_demo / "df_listener.csv")) == 0
    prefixed = [r["new"] for r in summary["repaired"] if r["problem"] == "Segment ID of another session"]
    assert len(prefixed) == 3 and set(prefixed) <= set(speaker["Segment ID"])  # matched to their Sess17 wavs
    # The demo's repeated ID (session 8): the one unannotated wav of the dialogue whose length is end - start.
    [repeated] = [r for r in summary["repaired"] if r["problem"] == "repeated Segment ID"]
    rows = pd.read_csv(kemdy20_demo / "annotation" / "Sess08_eval.csv", header=None, skiprows=2, dtype=str)
    start, end = float(rows.iloc[0, 1]), float(rows.iloc[0, 2])
    assert (repeated["file"], repeated["line"], repeated["old"]) == ("Sess08_eval.csv", 3, rows.iloc[1, 3])
    assert abs(sf.info(segment_path(kemdy20_demo, repeated["new"], ".wav")).duration - (end - start)) < 1e-3
    assert speaker["Segment ID"].is_unique and repeated["new"] in set(speaker["Segment ID"])
    assert speaker["text"].str.contains("[가-힣]").mean() > 0.95  # cp949 transcripts decoded
    meta = json.loads((kemdy20_demo / "features" / "logmel.json").read_text())
    assert all(segment_path(kemdy20_demo, s, ".wav").exists() for s in meta["ids"])  # only wavs, no EDA/TEMP/IBI
    assert (kemdy20_demo / "EDA").is_dir() and len(meta["ids"]) == summary["utterances"]


def test_kemdy20_splits_training_and_errors(kemdy20_demo, tmp_path):
    main_cli.main(["--data_dir", str(kemdy20_demo), "--save_path", str(tmp_path)] + TINY)
    run = next(tmp_path.glob("lstm_*"))
    results = json.loads((run / "results.json").read_text())
    assert results["sessions"]["test"] == list(range(33, 41)) and results["sessions"]["val"] == [31, 32]
    assert json.loads((run / "args.json").read_text())["corpus"] == "kemdy20"
    main_cli.main(["--cv", "--seeds", "0", "--data_dir", str(kemdy20_demo), "--save_path", str(tmp_path / "cv"),
                   "--epochs", "1"] + TINY[:-4])
    runs = json.loads(next((tmp_path / "cv").glob("cv_*/runs.json")).read_text())["runs"]
    assert [r["test_split"] for r in runs] == [",".join(str(s) for s in range(8 * k + 1, 8 * k + 9))
                                               for k in range(5)]
    one_line_error_here(main_cli.main, ["--data_dir", str(kemdy20_demo), "--SorL", "listener"],
                        "KEMDy20", "annotates only the speaker")
    one_line_error_here(main_cli.main, ["--data_dir", str(kemdy20_demo), "--corpus", "kemdy19"],
                        "--corpus kemdy19", "KEMDY20")


def test_a_folder_with_both_layouts_is_refused(kemdy20_demo, raw_demo, tmp_path):
    mixed = shutil.copytree(kemdy20_demo / "annotation", tmp_path / "mixed" / "annotation")
    shutil.copy(next((raw_demo / "annotation").glob("Session01_F_res.csv")), mixed)
    with pytest.raises(CorpusError, match="both KEMDy19 .* and KEMDy20"):
        detect_corpus(tmp_path / "mixed")
    assert detect_corpus(raw_demo) == "kemdy19" and detect_corpus(kemdy20_demo) == "kemdy20"


def test_kemdy19_and_kemdy20_together(kemdy20_demo, demo_dir, tmp_path):
    both = f"{demo_dir},{kemdy20_demo}"
    main_cli.main(["--cv", "--data_dir", both, "--save_path", str(tmp_path), "--epochs", "1"] + TINY[:-4])
    cv_dir = next(tmp_path.glob("cv_*"))
    runs = json.loads((cv_dir / "runs.json").read_text())["runs"]
    # The published grouping: fold k = KEMDy19 sessions 4k+1..4k+4 with KEMDy20 sessions 8k+1..8k+8.
    assert [r["test_split"] for r in runs] == [
        ",".join([f"19_{s:02d}" for s in range(4 * k + 1, 4 * k + 5)] + [f"20_{s:02d}" for s in range(8 * k + 1, 8 * k + 9)])
        for k in range(5)]
    assert json.loads((cv_dir / "summary.json").read_text())["n_folds"] == 5
    fold2 = json.loads((cv_dir / "fold2" / "results.json").read_text())
    assert fold2["sessions"]["val"] == ["19_03", "19_04", "20_07", "20_08"]  # per corpus, before its test sessions
    predictions = pd.read_csv(cv_dir / "fold2" / "predictions.csv")
    assert predictions["Segment ID"].str.contains("_User").any() and (~predictions["Segment ID"].str.contains("_User")).any()

    corpus = Corpus(both, "speaker", TEXT_DIM)
    assert set(corpus.sessions // 100) == {19, 20} and len(corpus.table) == len(corpus.offsets) == len(corpus.text)
    assert all(d.startswith(("19_Sess", "20_Sess")) for d in corpus.dialogues)  # no window spans two corpora
    row = len(corpus.table) - 1  # the last utterance of KEMDy20: its frames are read from KEMDy20's cache
    alone = Corpus(kemdy20_demo, "speaker", TEXT_DIM)
    np.testing.assert_array_equal(corpus.frames[np.arange(corpus.offsets[row], corpus.offsets[row] + 3)],
                                  alone.frames[alone.offsets[-1]:alone.offsets[-1] + 3])
    with pytest.raises(SystemExit, match="like 19_13,20_33"):
        main_cli.main(["--data_dir", both, "--test_split", "13"] + TINY)
