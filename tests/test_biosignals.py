"""KEMDy bio-signals: the readers of both layouts and their alignment to the utterances (../shared/
KEMDY_BIOSIGNALS.md), the per-utterance features and masks, and --modalities audio,text,bio end to end."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest

import predict
from biosignals import FEATURES, kemdy19_rows, kemdy20_anchor, load_bio, read_kemdy19, read_kemdy20, window_rows
from conftest import TEXT_DIM
from demo_corpus import make_demo_corpus
from main import main
from preprocess import preprocess
from test_train import TINY

PRESENT = {s: FEATURES.index(f"{s}_present") for s in ("EDA", "TEMP", "IBI")}


def _k19_line(value: float, t: float, seg: str = "") -> str:
    return f"{value:.6f},{t},10:00:{t:06.3f}" + (f",{seg}" if seg else "")


def test_kemdy19_restart_gap_and_displaced_ids(tmp_path):
    # Recording 0: t = 0.25 .. 3.0 (rows 0-11), a forward gap of 7 samples, t = 5.0 .. 6.0 (rows 12-16);
    # recording 1: t = 0.25 .. 5.0 (rows 17-36). Virtual index: rows 0-11 -> 0-11, rows 12-16 -> 19-23 (the gap
    # keeps its place), recording 1 continues after round(4 * 6.0) = 24 samples: rows 17-36 -> 24-43.
    # Dialogue D1 (time 0 at virtual 0): S1 0.5-1.5 s, S2 4.0-5.0 s (virtual 16-19: only 19 was recorded).
    # Dialogue D2 (time 0 at virtual 28): S3 0.5-1.25 s (virtual 30-32 = rows 23-25). The shipped IDs were placed
    # by counting rows, so S2's sit on rows 16-19 and S3's on rows 30-32: 7 rows (the gap) late.
    ids = {r: "S1" for r in range(2, 6)} | {r: "S2" for r in range(16, 20)} | {r: "S3" for r in range(30, 33)}
    times = [0.25 * k for k in range(1, 13)] + [5.0 + 0.25 * k for k in range(5)] + [0.25 * k for k in range(1, 21)]
    values = [1 + 0.01 * r for r in range(len(times))]
    path = tmp_path / "Sess01F.csv"
    path.write_text("\r\n".join(_k19_line(v, t, ids.get(r, "")) for r, (v, t) in enumerate(zip(values, times)))
                    + "\r\n", encoding="ascii")  # CRLF, as some of the real files' neighbours
    recording = read_kemdy19(path)
    assert recording.restarts == [17] and recording.position[12] == 19 and recording.position[17] == 24
    segments = pd.DataFrame({"Segment ID": ["S1", "S2", "S3"], "dialogue": ["D1", "D1", "D2"],
                             "start": [0.5, 4.0, 0.5], "end": [1.5, 5.0, 1.25]})
    clock = kemdy19_rows(recording, segments)
    assert clock["S1"].tolist() == [2, 3, 4, 5]
    assert clock["S2"].tolist() == [12]  # the clock says: only the first sample after the gap lies in S2
    assert clock["S3"].tolist() == [23, 24, 25]
    assert recording.values[clock["S3"]].tolist() == pytest.approx([1.23, 1.24, 1.25])
    shipped = kemdy19_rows(recording, segments, "ids")
    assert shipped["S3"].tolist() == [30, 31, 32]  # as shipped: displaced by the gap


@pytest.fixture(scope="module")
def k19_bio(tmp_path_factory):
    """A KEMDy19-layout demo with impros (a recording restart), the session-2 gap and the cut session-1 F file."""
    data_dir = make_demo_corpus(tmp_path_factory.mktemp("bio19") / "KEMDy19", seed=3, n_sessions=4, n_scripts=1,
                                n_impros=1, n_turns=6)
    preprocess(data_dir, "tfidf", TEXT_DIM)
    return data_dir


def test_kemdy19_annotation_values_are_the_samples_the_reader_picks(k19_bio):
    exact = near = total = 0
    for session in (1, 2, 3):
        for actor in "FM":
            table = pd.read_csv(k19_bio / "annotation" / f"Session{session:02d}_{actor}_res.csv", skiprows=2,
                                header=None).dropna(subset=[9])
            segments = pd.DataFrame({"Segment ID": table[9], "start": table[1], "end": table[2],
                                     "dialogue": table[9].str.rsplit("_", n=1).str[0]})
            recording = read_kemdy19(k19_bio / "EDA" / f"Session{session:02d}" / "Original" /
                                     f"Sess{session:02d}{actor}.csv")
            assert len(recording.restarts) == 1
            rows = kemdy19_rows(recording, segments)
            for seg, written in zip(table[9], table[5].astype(float)):
                if not len(rows[seg]):
                    continue
                total += 1
                first = rows[seg][0]
                exact += recording.values[first] == pytest.approx(written)
                near += any(recording.values[max(0, first + k)] == pytest.approx(written) for k in range(-2, 3))
    # The anchor is the 5 % quantile of the labelled rows' offsets, which with a dialogue's few segments here sits a
    # fraction of a sample late, so a segment's first row may be one sample off (the real files: 2,683 of 3,002
    # exact, all within 2 samples).
    assert total > 40 and exact >= 2 / 3 * total and near == total


def test_kemdy20_anchor_reproduces_each_files_own_id_rows(tmp_path):
    data_dir = make_demo_corpus(tmp_path / "KEMDy20", seed=3, n_sessions=3, n_scripts=2, n_turns=6,
                                layout="kemdy20")
    table = pd.concat(pd.read_csv(p, skiprows=2, header=None) for p in (data_dir / "annotation").glob("*.csv"))
    spans = dict(zip(table[3], zip(table[1].astype(float), table[2].astype(float))))
    checked = 0
    for eda in sorted((data_dir / "EDA").rglob("*.csv")):
        anchor = kemdy20_anchor([read_kemdy20(data_dir / s / eda.parent.name / eda.name) for s in ("EDA", "TEMP")],
                                spans)
        for signal in ("EDA", "TEMP", "IBI"):
            recording = read_kemdy20(data_dir / signal / eda.parent.name / eda.name)
            if recording is None:  # the 0-byte IBI file
                continue
            for seg in set(recording.ids) - {""}:
                rows = window_rows(recording.position, anchor, *spans[seg])
                assert rows.tolist() == np.flatnonzero(recording.ids == seg).tolist(), (eda.name, signal, seg)
                checked += 1
    assert checked > 30


def test_zero_byte_ibi_and_missing_folder_give_masks_and_training_reads_bio(tmp_path, capsys):
    data_dir = make_demo_corpus(tmp_path / "KEMDy20", seed=3, n_sessions=40, n_scripts=1, n_turns=4,
                                layout="kemdy20")
    assert (data_dir / "IBI" / "Session01" / "Sess01_script01_User002M.csv").stat().st_size == 0
    shutil.rmtree(data_dir / "TEMP" / "Session05")  # a folder missing besides the last session's
    preprocess(data_dir, "tfidf", TEXT_DIM)
    out = capsys.readouterr().out
    assert "bio-signals (clock alignment): speaker" in out and "Sess01_script01_User002M.csv: no samples" in out
    table = pd.read_csv(data_dir / "df_speaker.csv", keep_default_na=False)
    bio = load_bio(data_dir, "clock", table)
    user002 = (table["speaker"] == "User002M").to_numpy()
    assert bio[user002, PRESENT["IBI"]].sum() == 0 and bio[user002, PRESENT["EDA"]].sum() > 0
    assert bio[(table["Session"] == 40).to_numpy()][:, [PRESENT["EDA"], PRESENT["TEMP"]]].sum() == 0
    session5 = (table["Session"] == 5).to_numpy()
    assert bio[session5, PRESENT["TEMP"]].sum() == 0 and bio[session5, PRESENT["EDA"]].sum() == session5.sum()
    assert len(bio) == len(table)  # no utterance dropped for want of bio data

    main(["--data_dir", str(data_dir), "--save_path", str(tmp_path / "exp"), "--modalities", "audio,text,bio"]
         + TINY)
    run = next((tmp_path / "exp").glob("lstm_*"))
    checkpoint_config = json.loads((run / "args.json").read_text())
    assert checkpoint_config["modalities"] == "audio,text,bio"
    main(["--test_only", str(run)])
    results, again = (json.loads((run / f).read_text())["test"] for f in ("results.json", "results_test_only.json"))
    assert again["macro_f1"] == pytest.approx(results["macro_f1"])
    wav = next((data_dir / "wav" / "Session33").glob("*.wav"))
    table = predict.main(["--run", str(run), "--wav", str(wav)])
    assert "none are given here (masked" in capsys.readouterr().out and len(table) == 1
