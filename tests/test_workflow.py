import json
import shutil

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

import predict
import report
from main import get_parser, run_cv, train
from preprocess import segment_path
from test_train import TINY

ONE_EPOCH = [a if a != "2" else "1" for a in TINY]  # TINY with --epochs 1


@pytest.fixture(scope="module")
def tiny_run(demo_dir, tmp_path_factory):
    save = tmp_path_factory.mktemp("exp")
    return train(get_parser().parse_args(["--data_dir", str(demo_dir), "--save_path", str(save)] + TINY))


def test_cross_validation_summary_and_resume(demo_dir, tmp_path):
    argv = ["--cv", "--data_dir", str(demo_dir), "--save_path", str(tmp_path)] + ONE_EPOCH
    cv_dir = run_cv(get_parser().parse_args(argv))
    folds = [json.loads((cv_dir / f"fold{k}" / "results.json").read_text())["test"] for k in range(1, 6)]
    assert [json.loads((cv_dir / f"fold{k}" / "args.json").read_text())["test_split"] for k in (1, 5)] == \
        ["1,2,3,4", "17,18,19,20"]
    summary = json.loads((cv_dir / "summary.json").read_text())
    for name in ("instance_f1", "macro_f1", "ccc_arousal", "ccc_valence"):
        values = [f[name] for f in folds]
        assert summary["mean"][name] == pytest.approx(np.mean(values))
        assert summary["std"][name] == pytest.approx(np.std(values, ddof=1))
    assert "macro_f1" in (cv_dir / "summary.md").read_text()

    # Interrupt: fold 3 stopped after its last checkpoint, fold 4 before its first, fold 5 never started.
    fold3 = json.loads((cv_dir / "fold3" / "results.json").read_text())["test"]
    (cv_dir / "fold3" / "results.json").unlink()
    for name in ("checkpoint.pth", "best.pth", "results.json"):
        (cv_dir / "fold4" / name).unlink()
    shutil.rmtree(cv_dir / "fold5")
    kept = {k: (cv_dir / f"fold{k}" / "results.json").stat().st_mtime_ns for k in (1, 2)}
    run_cv(get_parser().parse_args(["--resume", str(cv_dir)]))
    assert {k: (cv_dir / f"fold{k}" / "results.json").stat().st_mtime_ns for k in (1, 2)} == kept
    assert all((cv_dir / f"fold{k}" / "results.json").exists() for k in (3, 4, 5))
    assert json.loads((cv_dir / "fold3" / "results.json").read_text())["test"] == fold3  # continued, not redone
    assert len(list(cv_dir.glob("fold4_interrupted_*"))) == 1  # set aside, not deleted
    assert not list(cv_dir.glob("fold3_interrupted_*"))


def test_report_shows_the_differing_argument(demo_dir, tmp_path, capsys):
    runs = [train(get_parser().parse_args(["--data_dir", str(demo_dir), "--save_path", str(tmp_path),
                                           "--lam", lam] + ONE_EPOCH)) for lam in ("0.5", "0.9")]
    (tmp_path / "broken_run").mkdir()
    (tmp_path / "broken_run" / "args.json").write_text(json.dumps({"lam": 0.66}))
    table = report.report([str(tmp_path / "*")])
    assert "lam" in table.columns and "seed" not in table.columns and "epochs" not in table.columns
    by_run = table.set_index("run")
    for run in runs:
        test = json.loads((run / "results.json").read_text())["test"]
        args = json.loads((run / "args.json").read_text())
        assert by_run.loc[run.name, "lam"] == args["lam"]
        assert by_run.loc[run.name, "instance_f1"] == f"{test['instance_f1']:.3f}"
        assert by_run.loc[run.name, "ccc_valence"] == f"{test['ccc_valence']:.3f}"
    assert by_run.loc["broken_run", "status"] == "incomplete"
    markdown = report.main([str(tmp_path / "*")])
    assert markdown.splitlines()[0].startswith("| run | lam |") and "incomplete" in markdown


def test_predict_matches_evaluation_with_the_same_context(demo_dir, tiny_run, tmp_path):
    speaker = pd.read_csv(demo_dir / "df_speaker.csv", keep_default_na=False)
    dialogue = speaker[speaker["dialogue"] == "Sess14_script01"]  # a test-split dialogue, in time order
    folder = tmp_path / "dialogue"
    folder.mkdir()
    for i, seg in enumerate(dialogue["Segment ID"]):  # numbered so that sorted order is time order
        for suffix in (".wav", ".txt"):
            shutil.copy(segment_path(demo_dir, seg, suffix), folder / f"{i:03d}_{seg}{suffix}")
    table = predict.main(["--run", str(tiny_run), "--dialogue", str(folder), "--out", str(tmp_path / "p.json")])
    evaluated = pd.read_csv(tiny_run / "predictions.csv").set_index("Segment ID").loc[dialogue["Segment ID"]]
    emotions = ["neutral", "happy", "surprise", "angry", "sad", "disgust", "fear"]
    np.testing.assert_allclose(table[emotions].to_numpy(), evaluated[emotions].to_numpy(), atol=1e-5)
    np.testing.assert_allclose(table["arousal"], evaluated["arousal_pred"], atol=1e-4)
    assert len(json.loads((tmp_path / "p.json").read_text())) == len(dialogue)


def test_predict_any_rate_length_and_skips_corrupt_files(tiny_run, tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    t = np.arange(int(44100 * 1.5)) / 44100
    voice = 0.2 * np.sin(2 * np.pi * 220 * t) * np.sin(np.pi * t / 1.5)
    sf.write(folder / "a_stereo44k.wav", np.stack([voice, 0.5 * voice], axis=1), 44100)
    (folder / "a_stereo44k.txt").write_text("정말 기뻐요. 커피 한 잔 마실래?", encoding="utf-8")
    sf.write(folder / "b_short.wav", np.zeros(3200, np.float32), 16000)  # 0.2 s
    (folder / "c_corrupt.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    table = predict.main(["--run", str(tiny_run), "--input_dir", str(folder), "--out", str(tmp_path / "p.csv")])
    assert [p.split("/")[-1] for p in table["file"]] == ["a_stereo44k.wav", "b_short.wav"]
    assert "c_corrupt.wav: unreadable audio" in capsys.readouterr().out
    probs = table[["neutral", "happy", "surprise", "angry", "sad", "disgust", "fear"]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    assert table["arousal"].between(1, 5).all() and table["emotion"].notna().all()
    assert len(pd.read_csv(tmp_path / "p.csv")) == 2
    single = predict.main(["--run", str(tiny_run), "--wav", str(folder / "b_short.wav"), "--text", "무서워"])
    assert len(single) == 1
