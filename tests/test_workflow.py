import json
import shutil

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

import baseline
import main as main_cli
import predict
import report
from conftest import TEXT_DIM
from constants import EMOTIONS
from engine import train
from options import get_parser
from readers import segment_path
from test_train import TINY

ONE_EPOCH = [a if a != "2" else "1" for a in TINY]  # TINY with --epochs 1


@pytest.fixture(scope="module")
def tiny_run(demo_dir, tmp_path_factory):
    save = tmp_path_factory.mktemp("exp")
    return train(get_parser().parse_args(["--data_dir", str(demo_dir), "--save_path", str(save), "--feature_norm",
                                          "training"] + TINY))


def only_folder(parent, pattern):
    found = list(parent.glob(pattern))
    assert len(found) == 1, found
    return found[0]


def test_cross_validation_summary_and_resume(demo_dir, tmp_path):
    main_cli.main(["--cv", "--data_dir", str(demo_dir), "--save_path", str(tmp_path)] + ONE_EPOCH)
    cv_dir = only_folder(tmp_path, "cv_*")
    folds = [json.loads((cv_dir / f"fold{k}" / "results.json").read_text())["test"] for k in range(1, 6)]
    assert [json.loads((cv_dir / f"fold{k}" / "args.json").read_text())["test_split"] for k in (1, 5)] == \
        ["1,2,3,4", "17,18,19,20"]
    summary = json.loads((cv_dir / "summary.json").read_text())
    assert (summary["n_runs"], summary["n_folds"], summary["n_seeds"]) == (5, 5, 1)
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
    main_cli.main(["--resume", str(cv_dir)])
    assert {k: (cv_dir / f"fold{k}" / "results.json").stat().st_mtime_ns for k in (1, 2)} == kept
    assert all((cv_dir / f"fold{k}" / "results.json").exists() for k in (3, 4, 5))
    assert json.loads((cv_dir / "fold3" / "results.json").read_text())["test"] == fold3  # continued, not redone
    assert len(list(cv_dir.glob("fold4_interrupted_*"))) == 1  # set aside, not deleted
    assert not list(cv_dir.glob("fold3_interrupted_*"))


def test_seeds_times_folds_with_one_summary(demo_dir, tmp_path):
    folds = "1,2,3,4;13,14,15,16"
    main_cli.main(["--cv", "--cv_folds", folds, "--seeds", "4,5", "--data_dir", str(demo_dir),
                   "--save_path", str(tmp_path)] + ONE_EPOCH)
    folder = only_folder(tmp_path, "cv_*")
    names = ["seed4_fold1", "seed4_fold2", "seed5_fold1", "seed5_fold2"]
    runs = {n: json.loads((folder / n / "args.json").read_text()) for n in names}
    assert [(a["seed"], a["test_split"]) for a in runs.values()] == \
        [(4, "1,2,3,4"), (4, "13,14,15,16"), (5, "1,2,3,4"), (5, "13,14,15,16")]
    tests = [json.loads((folder / n / "results.json").read_text())["test"] for n in names]
    assert tests[0] != tests[2]  # another seed is another model
    summary = json.loads((folder / "summary.json").read_text())
    assert (summary["n_runs"], summary["n_seeds"], summary["n_folds"]) == (4, 2, 2)
    assert summary["mean"]["macro_f1"] == pytest.approx(np.mean([t["macro_f1"] for t in tests]))
    assert summary["std"]["ccc_valence"] == pytest.approx(np.std([t["ccc_valence"] for t in tests], ddof=1))
    row = report.report([str(folder)]).iloc[0]
    assert row["runs"] == "2 seeds x 2 folds" and row["model"] == "neural" and row["kind"] == "single"
    assert row["macro_f1"] == f"{summary['mean']['macro_f1']:.3f} ± {summary['std']['macro_f1']:.3f}"


def test_baseline_writes_the_schema_of_the_model(demo_dir, tiny_run, tmp_path):
    run = baseline.train(baseline.get_parser().parse_args(
        ["--data_dir", str(demo_dir), "--save_path", str(tmp_path), "--text_dim", str(TEXT_DIM)]))
    ours, theirs = (json.loads((d / "results.json").read_text()) for d in (run, tiny_run))
    assert ours["model"] == "baseline" and theirs["model"] == "neural"
    assert ours["test"].keys() == theirs["test"].keys()
    assert ours["test"]["per_class"].keys() == theirs["test"]["per_class"].keys()
    assert set(ours["sessions"]) == set(theirs["sessions"]) == {"train", "val", "test"}
    ours_csv, theirs_csv = pd.read_csv(run / "predictions.csv"), pd.read_csv(tiny_run / "predictions.csv")
    assert list(ours_csv.columns) == list(theirs_csv.columns)
    assert sorted(ours_csv["Segment ID"]) == sorted(theirs_csv["Segment ID"])  # the same test utterances
    np.testing.assert_allclose(ours_csv[EMOTIONS].sum(1), 1.0, rtol=1e-6)
    assert ours_csv["arousal_pred"].between(1, 5).all()
    # The network's functionals (eGeMAPSv02's 88 and 2 x 229 band statistics); the eGeMAPS cache is written once.
    assert ours["audio_features"] == ["egemaps", "logmel"] and ours["features"]["functionals"] == 88 + 2 * 229
    assert (demo_dir / "features" / "opensmile_eGeMAPSv02.npy").exists()
    table = report.report([str(run), str(tiny_run)]).set_index("run")
    assert table.loc[run.name, "model"] == "baseline" and table.loc[tiny_run.name, "model"] == "neural"
    assert table.loc[run.name, "macro_f1"] == f"{ours['test']['macro_f1']:.3f}"


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
    assert by_run.loc["broken_run", "runs"] == "incomplete"
    markdown = report.main([str(tmp_path / "*")])
    assert markdown.splitlines()[0].startswith("| run | model | lam |") and "incomplete" in markdown


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
