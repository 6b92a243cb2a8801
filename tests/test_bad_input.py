"""Bad input and self-contained runs: nothing the user had is overwritten, one bad file never stops a
run, a run folder evaluates and predicts from anywhere, and every error is one line without a traceback."""
import argparse
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

import predict
from conftest import ROOT, TEXT_DIM
from constants import EMOTIONS
from demo_corpus import make_demo_corpus
from engine import train
from errors import CorpusError, PretrainedError
from main import main
from options import BEFORE_FLAGS, get_parser
from preprocess import preprocess
from readers import segment_path
from test_train import TINY

ONE_EPOCH = [a if a != "2" else "1" for a in TINY]
BEFORE_FLAG_VALUES = [item for flag, value in BEFORE_FLAGS.items() for item in (f"--{flag}", value)]


def run_cli(script: str, argv: list[str], cwd=ROOT, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script)] + argv, cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    for fragment in fragments:
        assert fragment in last, (fragment, last)


def one_line_error_here(cli, argv: list[str], *fragments: str) -> None:
    """`cli(argv)` (a CLI's main) in this process, as `assert_one_line_error` checks it in a subprocess, without
    the seconds an interpreter start costs: it stops with one `error: ...` line holding every fragment; any
    other exception (a traceback) fails the test."""
    with pytest.raises(SystemExit) as stop:
        cli(argv)
    message = str(stop.value)
    assert message.startswith("error: ") and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def snapshot(folder) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def moved_run(demo_dir, tmp_path_factory):
    """A finished tiny run, trained from another working directory with a relative --data_dir."""
    base = tmp_path_factory.mktemp("moved")
    os.symlink(demo_dir.parent, base / "corpora")
    cwd = os.getcwd()
    os.chdir(base)
    try:
        run_dir = train(get_parser().parse_args(["--data_dir", f"corpora/{demo_dir.name}",
                                                 "--save_path", str(base / "exp")] + TINY))
    finally:
        os.chdir(cwd)
    return run_dir


def test_demo_generator_refuses_a_folder_with_user_files(tmp_path, monkeypatch):
    user = tmp_path / "data" / "KEMDy19"
    (user / "wav" / "Session01").mkdir(parents=True)
    sf.write(user / "wav" / "Session01" / "mine.wav", np.zeros(1600, np.float32), 16000)
    (user / "notes.txt").write_text("my notes", encoding="utf-8")
    before = snapshot(user)
    with pytest.raises(CorpusError, match=r"refusing to write the demo corpus into .*KEMDy19: it already holds "
                                         r"notes.txt, wav/"):
        make_demo_corpus(user, seed=0, n_sessions=2, n_turns=3)
    assert snapshot(user) == before
    # The quick start (default --data_dir, no annotation/) refuses the same way, and leaves no run folder.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="refusing to write the demo corpus"):
        main(["--save_path", str(tmp_path / "exp")] + ONE_EPOCH)
    assert snapshot(user) == before and not (tmp_path / "exp").exists()
    # An earlier demo corpus (its marker file) is replaced whole: no file of the old one is left to mix in.
    demo = make_demo_corpus(tmp_path / "demo", seed=0, n_sessions=3, n_scripts=1, n_impros=0, n_turns=3)
    make_demo_corpus(demo, seed=0, n_sessions=2, n_scripts=1, n_impros=0, n_turns=3)
    assert sorted(p.name for p in (demo / "wav").iterdir()) == ["Session01", "Session02"]
    assert len(list((demo / "annotation").iterdir())) == 4


def test_a_500_sample_wav_preprocesses_and_trains(corpus_copy, tmp_path, capsys):
    wav = sorted(corpus_copy.glob("wav/Session03/*/*.wav"))[1]
    sf.write(wav, 0.1 * np.random.default_rng(0).standard_normal(500).astype(np.float32), 16000)
    summary = preprocess(corpus_copy, "tfidf", TEXT_DIM)
    assert f"{wav} has 500 samples" in capsys.readouterr().out
    meta = json.loads((corpus_copy / "features" / "logmel.json").read_text())
    assert dict(zip(meta["ids"], meta["lengths"]))[wav.stem] == 2048 // 512 + 1  # one padded FFT window
    assert "unusable wav" not in summary["dropped_rows"]
    run = train(get_parser().parse_args(["--data_dir", str(corpus_copy), "--save_path", str(tmp_path)] + ONE_EPOCH))
    assert (run / "results.json").exists()


def test_rows_without_start_time_or_with_a_bad_one_are_named(corpus_copy, capsys):
    path = corpus_copy / "annotation" / "Session07_M_res.csv"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    cells, bad = lines[4].split(","), lines[5].split(",")
    cells[1], bad[1] = "", "1:234"  # an empty wav start; one that is not a number
    lines[4], lines[5] = ",".join(cells), ",".join(bad)
    path.write_text("".join(lines), encoding="utf-8")
    summary = preprocess(corpus_copy, "tfidf", TEXT_DIM)
    assert summary["dropped"]["no start time"] == [cells[9]]
    assert summary["dropped"]["unreadable row"] == [
        f"{bad[9]} (Session07_M_res.csv line 6: wav time '1:234' is not a number of seconds)"]
    assert f"no start time: 1 ({cells[9]})" in capsys.readouterr().out
    dropped_role = "speaker" if cells[9][-4] == "M" else "listener"  # the M file labels the male actor
    for role in ("speaker", "listener"):  # every dialogue in time order: the windows hold the right context
        table = pd.read_csv(corpus_copy / f"df_{role}.csv", keep_default_na=False)
        assert table.groupby("dialogue")["start"].apply(lambda s: s.is_monotonic_increasing).all()
        assert (cells[9] in table["Segment ID"].tolist()) == (role != dropped_role)


def test_two_preprocessings_at_once_do_not_collide(corpus_copy):
    argv = [sys.executable, str(ROOT / "preprocess.py"), "--data_dir", str(corpus_copy), "--text_encoder", "tfidf",
            "--text_dim", str(TEXT_DIM)]
    processes = [subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    for process in processes:
        assert process.wait(timeout=300) == 0, process.stderr.read()
    assert not list(corpus_copy.rglob("*.tmp"))
    meta = json.loads((corpus_copy / "features" / "logmel.json").read_text())
    assert np.load(corpus_copy / "features" / "logmel.npy").shape[0] == sum(meta["lengths"])


def test_predict_needs_only_the_moved_run_folder(moved_run, demo_dir, tmp_path):
    moved = shutil.copytree(moved_run, tmp_path / "elsewhere")
    wavs = tmp_path / "mine"
    wavs.mkdir()
    seg = pd.read_csv(demo_dir / "df_speaker.csv", keep_default_na=False)["Segment ID"].iloc[0]
    for suffix in (".wav", ".txt"):
        shutil.copy(segment_path(demo_dir, seg, suffix), wavs / f"a{suffix}")
    (wavs / "b.txt").write_text("정말 기뻐요", encoding="utf-16")  # Windows "Unicode" transcript
    shutil.copy(segment_path(demo_dir, seg, ".wav"), wavs / "b.wav")
    sf.write(wavs / "c_short.wav", np.zeros(128, np.int16), 16000, subtype="PCM_16")  # a 300-byte wav
    assert (wavs / "c_short.wav").stat().st_size == 300
    (wavs / "d_bad.wav").write_bytes(b"RIFF not really a wav")
    hidden, away = demo_dir.with_name("hidden_corpus"), moved_run.with_name("away")
    demo_dir.rename(hidden)  # no corpus anywhere the run could look, and nothing left where it was trained
    moved_run.rename(away)
    try:
        result = run_cli("predict.py", ["--run", str(moved), "--input_dir", str(wavs), "--out",
                                        str(tmp_path / "p.csv")], cwd=tmp_path, env={"HF_HUB_OFFLINE": "1"})
    finally:
        hidden.rename(demo_dir)
        away.rename(moved_run)
    assert result.returncode == 0, result.stderr
    assert "d_bad.wav: unreadable audio" in result.stdout and "c_short.wav has 128 samples" in result.stdout
    assert "trained on the synthetic demo corpus" in result.stdout
    table = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert [f.split("/")[-1] for f in table["file"]] == ["a.wav", "b.wav", "c_short.wav"]
    # too few to be a speaker's own
    given = "audio standardised with the run's training statistics (its speaker's recordings are fewer than 5)"
    assert table["note"].tolist() == [given, given, "silent (no sample above -60 dBFS); no transcript (audio alone); "
                                                    + given]
    np.testing.assert_allclose(table[EMOTIONS].sum(1), 1.0, rtol=1e-5)
    assert table.loc[0, EMOTIONS].tolist() != table.loc[1, EMOTIONS].tolist()  # b's UTF-16 text was read


def test_test_only_from_another_directory_and_a_changed_corpus(moved_run, demo_dir, tmp_path, monkeypatch):
    results = json.loads((moved_run / "results.json").read_text())["test"]
    monkeypatch.chdir(tmp_path)  # the relative --data_dir of training means nothing here
    assert main(["--test_only", str(moved_run)]) is None
    again = json.loads((moved_run / "results_test_only.json").read_text())["test"]
    assert again["macro_f1"] == pytest.approx(results["macro_f1"]) and not (tmp_path / "data").exists()

    table = pd.read_csv(demo_dir / "df_speaker.csv", keep_default_na=False)
    txt = segment_path(demo_dir, table["Segment ID"].iloc[0], ".txt")
    original = txt.read_bytes()
    txt.write_text("완전히 다른 문장이에요", encoding="utf-8")
    try:
        result = run_cli("main.py", ["--test_only", str(moved_run)], cwd=tmp_path)
        assert_one_line_error(result, "has changed since", "--allow_corpus_change")
        allowed = run_cli("main.py", ["--test_only", str(moved_run), "--allow_corpus_change"], cwd=tmp_path)
        assert allowed.returncode == 0 and "warning: the corpus" in allowed.stdout
    finally:
        txt.write_bytes(original)
        preprocess(demo_dir, "tfidf", TEXT_DIM)


def test_missing_model_id_fails_before_any_work_offline(corpus_copy, monkeypatch):
    from text_encoder import load_transformer
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedError, match="cannot load text encoder 'no-such/model' .*--text_encoder DIR"):
        load_transformer("no-such/model", "cpu")
    result = run_cli("preprocess.py", ["--data_dir", str(corpus_copy), "--text_encoder", "no-such/model"],
                     env={"HF_HUB_OFFLINE": "1"})
    assert_one_line_error(result, "cannot load text encoder 'no-such/model'", "--text_encoder tfidf")
    assert not (corpus_copy / "features").exists()  # checked before a single spectrogram


def test_unfinished_runs_and_damaged_files(demo_dir, tmp_path):
    run = train(get_parser().parse_args(["--data_dir", str(demo_dir), "--save_path", str(tmp_path)] + ONE_EPOCH))
    (run / "best.pth").write_bytes((run / "best.pth").read_bytes()[:1000])
    assert_one_line_error(run_cli("main.py", ["--test_only", str(run)]), "best.pth is damaged")
    (run / "results.json").unlink()
    (run / "results_test_only.json").write_text("{}")
    one_line_error_here(main, ["--test_only", str(run)], "did not finish training", f"python main.py --resume {run}")
    (run / "checkpoint.pth").write_bytes(b"PK\x03\x04 truncated")
    one_line_error_here(main, ["--resume", str(run)], "checkpoint.pth is damaged")
    assert not (run / "results_test_only.json").exists()  # stale: removed when the run is resumed

    other = train(get_parser().parse_args(["--data_dir", str(demo_dir), "--save_path", str(tmp_path)] + ONE_EPOCH))
    (other / "results.json").write_text('{"test": {"macro_f1": 0.5')
    printed = run_cli("report.py", [str(other), str(run)])
    assert printed.returncode == 0 and "Traceback" not in printed.stderr
    assert "results.json is damaged" in printed.stderr and "| damaged |" in printed.stdout


def test_ctrl_c_prints_the_resume_command(demo_dir, tmp_path):
    process = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "--data_dir", str(demo_dir), "--save_path",
                                str(tmp_path)] + TINY[:-4] + ["--ws", "4", "--epochs", "500", "--patience", "0"],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               # A shell's background job inherits SIGINT ignored (CI may run so); a terminal's
                               # Ctrl-C reaches a process with the default disposition, as restored here.
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob("*/checkpoint.pth")):
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    run = next(tmp_path.iterdir())
    assert process.returncode == 130 and "Traceback" not in err
    assert f"continue with: python main.py --resume {run}" in out


@pytest.mark.parametrize("flag, value", [("--num_layers", "0"), ("--hidden_size", "0"), ("--dropout", "1.5"),
                                         ("--num_workers", "-1"), ("--seed", "-1"), ("--text_dim", "0"),
                                         ("--speech_precision", "int8"), ("--whisper_input", "30s")])
def test_bad_model_flags_are_one_line_and_leave_no_folder(flag, value, tmp_path):
    one_line_error_here(main, [flag, value, "--save_path", str(tmp_path / "exp")], flag)
    assert not (tmp_path / "exp").exists()


def test_bad_data_leaves_no_run_folder(demo_dir, tmp_path):
    sparse = make_demo_corpus(tmp_path / "sparse", seed=2, n_sessions=12, n_scripts=1, n_impros=0, n_turns=4)
    result = run_cli("main.py", ["--data_dir", str(sparse), "--save_path", str(tmp_path / "exp"),
                                 "--text_encoder", "tfidf"] + ONE_EPOCH)
    assert_one_line_error(result, "--test_split: the test sessions (13,14,15,16) have no utterances")
    assert not (tmp_path / "exp").exists() or not list((tmp_path / "exp").iterdir())


def test_predict_input_errors_are_one_line(moved_run, tmp_path):
    wav = next(iter(sorted(moved_run.parent.parent.glob("corpora/*/wav/*/*/*.wav"))))
    assert_one_line_error(run_cli("predict.py", ["--run", str(moved_run)]),
                          "one of the arguments --wav --input_dir --dialogue is required")
    for argv, message in [  # the same path to the one-line error, in this process (each CLI start costs seconds)
            (["--wav", str(wav), "--txt", str(tmp_path / "missing.txt")],
             f"error: --txt {tmp_path / 'missing.txt'} does not exist"),
            (["--wav", str(wav), "--out", str(tmp_path / "no" / "p.csv")],
             f"error: --out {tmp_path / 'no' / 'p.csv'}: the folder {tmp_path / 'no'} does not exist"),
            (["--wav", str(tmp_path / "missing.wav")], f"error: --wav {tmp_path / 'missing.wav'}: no such file"),
            (["--wav", str(wav), "--txt", str(tmp_path)], f"error: --txt {tmp_path} is a folder, not a transcript file"),
            (["--wav", str(wav), "--out", str(tmp_path)], f"error: --out {tmp_path} is a folder; name a .csv or .json file")]:
        with pytest.raises(SystemExit) as stop:
            predict.main(["--run", str(moved_run)] + argv)
        assert str(stop.value) == message
    assert not list(tmp_path.parent.glob(f".{tmp_path.name}.*.tmp"))  # no temporary file left behind


def test_composed_and_decomposed_hangul_predict_alike(moved_run, demo_dir, tmp_path):
    wav = segment_path(demo_dir, pd.read_csv(demo_dir / "df_speaker.csv")["Segment ID"].iloc[0], ".wav")
    text = "정말 기뻐요. 오늘 회의는 세 시에 시작해요."
    composed = predict.predict(moved_run, [wav], [text], dialogue=False)
    decomposed = predict.predict(moved_run, [wav], [unicodedata.normalize("NFD", text)], dialogue=False)
    scores = EMOTIONS + ["arousal", "valence"]
    pd.testing.assert_frame_equal(composed[scores], decomposed[scores])
    assert composed[scores].values.tolist() != predict.predict(moved_run, [wav], [""], False)[scores].values.tolist()
    # A decomposed wav name (macOS) beside a composed txt name: the transcript is found and used.
    folder = tmp_path / "mine"
    folder.mkdir()
    shutil.copy(wav, folder / (unicodedata.normalize("NFD", "기쁜 말") + ".wav"))
    (folder / "기쁜 말.txt").write_text(text, encoding="utf-8")
    by_name = predict.predict(moved_run, list(folder.glob("*.wav")), [None], dialogue=False)
    pd.testing.assert_frame_equal(by_name[scores], composed[scores])
    assert by_name["note"].tolist() == ["audio standardised with the run's training statistics (its speaker's "
                                        "recordings are fewer than 5)"]


def test_dialogue_files_are_ordered_by_name_with_numbers_as_numbers(tmp_path):
    for name in ["utt10.wav", "utt2.wav", "utt1.WAV", "intro.wav", "._utt3.wav", "notes.txt"]:
        (tmp_path / name).write_bytes(b"")
    args = argparse.Namespace(wav=None, input_dir=None, dialogue=str(tmp_path))
    wavs, texts, dialogue = predict.collect_inputs(args)
    # plain sorting would put utt10 before utt2; the AppleDouble twin is no recording
    assert [p.name for p in wavs] == ["intro.wav", "utt1.WAV", "utt2.wav", "utt10.wav"] and dialogue


def run_on_read_only(folder: Path, script: str, argv: list[str]) -> subprocess.CompletedProcess:
    """`script` run with `folder` on read-only storage: a read-only bind mount in a private mount namespace (root
    ignores file modes), or, for other users, the folder's write permission removed."""
    if os.geteuid() != 0:
        subprocess.run(["chmod", "-R", "a-w", str(folder)], check=True)
        try:
            return run_cli(script, argv)
        finally:
            subprocess.run(["chmod", "-R", "u+w", str(folder)], check=True)
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("root without user namespaces: no way to make a folder read-only here")
    return subprocess.run(["unshare", "-rm", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"', str(folder),
                           sys.executable, str(ROOT / script)] + argv,
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_a_read_only_corpus_trains_with_cache_dir_and_is_one_line_without(raw_demo, demo_dir, tmp_path):
    corpus = shutil.copytree(raw_demo, tmp_path / "shared" / "KEMDy19")
    before = snapshot(corpus)
    flags = ["--text_encoder", "tfidf", "--text_dim", str(TEXT_DIM)]
    refused = run_on_read_only(corpus, "preprocess.py", ["--data_dir", str(corpus)] + flags)
    assert_one_line_error(refused, f"{corpus} cannot be written", "pass --cache_dir DIR")
    cache, exp = tmp_path / "cache", tmp_path / "exp"
    trained = run_on_read_only(corpus, "main.py", ["--data_dir", str(corpus), "--cache_dir", str(cache),
                                                   "--save_path", str(exp), "--text_encoder", "tfidf"] + ONE_EPOCH)
    assert trained.returncode == 0, trained.stderr
    run = next(exp.iterdir())
    assert json.loads((run / "corpus.json").read_text())["cache_dir"] == str(cache.resolve())
    assert (cache / "KEMDy19" / "df_speaker.csv").exists() and snapshot(corpus) == before  # nothing written there
    tested = run_on_read_only(corpus, "main.py", ["--test_only", str(run)])  # the run knows where its caches are
    assert tested.returncode == 0, tested.stderr
    assert json.loads((run / "results_test_only.json").read_text())["test"] == \
        json.loads((run / "results.json").read_text())["test"]
    # A corpus preprocessed before it went read-only is used as it is: nothing needs writing, not even a lock.
    ready = shutil.copytree(demo_dir, tmp_path / "ready" / "KEMDy19")
    up_to_date = run_on_read_only(ready, "preprocess.py", ["--data_dir", str(ready)] + flags)
    assert up_to_date.returncode == 0 and "up to date" in up_to_date.stdout, up_to_date.stderr


def test_caches_follow_the_corpus_not_its_path(demo_dir, raw_demo, tmp_path, monkeypatch, capsys):
    copy = tmp_path / "copied" / "KEMDy19"
    copy.parent.mkdir()
    subprocess.run(["cp", "-a", str(demo_dir), str(copy)], check=True)
    derived = {p: p.stat().st_mtime_ns for p in copy.rglob("*") if p.is_file() and "wav" not in p.parts
               and "annotation" not in p.parts}
    monkeypatch.chdir(tmp_path)
    for path in (copy, Path("copied/KEMDy19")):  # moved, copied, named by another (relative) path
        preprocess(path, "tfidf", TEXT_DIM)
        assert "annotation tables and spectrogram cache in" in capsys.readouterr().out
        assert {p: p.stat().st_mtime_ns for p in derived} == derived  # nothing recomputed, nothing rewritten
    # A session folder that is a symlink to elsewhere: an edit behind the link is seen.
    linked = shutil.copytree(raw_demo, tmp_path / "linked" / "KEMDy19", symlinks=True)
    elsewhere = shutil.move(linked / "wav" / "Session05", tmp_path / "Session05")
    (linked / "wav" / "Session05").symlink_to(elsewhere, target_is_directory=True)
    preprocess(linked, "tfidf", TEXT_DIM)
    txt = sorted(Path(elsewhere).glob("*/*.txt"))[0]
    txt.write_text("완전히 다른 문장이에요", encoding="utf-8")
    preprocess(linked, "tfidf", TEXT_DIM)
    speaker = pd.read_csv(linked / "df_speaker.csv", keep_default_na=False).set_index("Segment ID")
    assert speaker.loc[txt.stem, "text"] == "완전히 다른 문장이에요"


def as_saved_before_model_config(run_dir: Path) -> Path:
    """The run folder as the code before the ModelConfig and the pickle-free TF-IDF wrote it (its format checked
    against a run made by that code): no "model_config" in the checkpoints, the pipeline pickled by joblib."""
    import joblib
    from text_encoder import load_tfidf
    for name in ("best.pth", "checkpoint.pth"):
        checkpoint = torch.load(run_dir / name, weights_only=True)
        del checkpoint["model_config"], checkpoint["statistics"]
        for flag in (*BEFORE_FLAGS, "functional_dropout", "focal_gamma", "recipe"):  # flags added since
            del checkpoint["args"][flag]
        torch.save(checkpoint, run_dir / name)
    joblib.dump(load_tfidf(run_dir / "text_encoder"), run_dir / "text_encoder.joblib")
    for suffix in (".npz", ".json"):
        (run_dir / f"text_encoder{suffix}").unlink()
    return run_dir


def test_a_run_saved_before_the_model_config_tests_resumes_and_predicts(demo_dir, tmp_path):
    wav = segment_path(demo_dir, pd.read_csv(demo_dir / "df_speaker.csv")["Segment ID"].iloc[0], ".wav")
    trained = train(get_parser().parse_args(["--data_dir", str(demo_dir), "--save_path", str(tmp_path / "exp")]
                                            + TINY + BEFORE_FLAG_VALUES))  # what runs of that code could be
    expected = predict.predict(trained, [wav], [None], dialogue=False)
    old = as_saved_before_model_config(Path(shutil.copytree(trained, tmp_path / "old")))
    assert main(["--test_only", str(old)]) is None
    assert json.loads((old / "results_test_only.json").read_text())["test"] == \
        json.loads((old / "results.json").read_text())["test"]
    with pytest.raises(SystemExit, match="^error: .*text_encoder.joblib is a pickle .*--trust_run"):
        predict.main(["--run", str(old), "--wav", str(wav)])
    pd.testing.assert_frame_equal(predict.predict(old, [wav], [None], dialogue=False, trust_pickle=True), expected)
    (old / "results.json").unlink()  # as if interrupted after its last epoch: resuming finishes it the same way
    main(["--resume", str(old)])
    assert json.loads((old / "results.json").read_text())["test"] == \
        json.loads((trained / "results.json").read_text())["test"]


def test_a_planted_pickle_in_a_run_folder_is_never_loaded(moved_run, tmp_path):
    marker = tmp_path / "the pickle ran"

    class Payload:
        def __reduce__(self):
            return open, (str(marker), "w")  # unpickling it would create the marker
    shared = Path(shutil.copytree(moved_run, tmp_path / "shared"))
    (shared / "text_encoder.joblib").write_bytes(pickle.dumps(Payload()))
    wav = next(iter(sorted(moved_run.parent.parent.glob("corpora/*/wav/*/*/*.wav"))))
    assert len(predict.main(["--run", str(shared), "--wav", str(wav)])) == 1  # it reads its .npz only
    (shared / "text_encoder.npz").write_bytes(pickle.dumps(Payload()))  # planted where new runs keep the pipeline
    with pytest.raises(SystemExit, match="^error: .*text_encoder.npz/.json is not a TF-IDF pipeline saved by this"):
        predict.main(["--run", str(shared), "--wav", str(wav)])
    for suffix in (".npz", ".json"):
        (shared / f"text_encoder{suffix}").unlink()
    with pytest.raises(SystemExit, match="^error: .*text_encoder.joblib is a pickle .*--trust_run"):
        predict.main(["--run", str(shared), "--wav", str(wav)])
    assert not marker.exists()
