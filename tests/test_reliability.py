import json
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

import engine
from conftest import ROOT
from demo_corpus import make_demo_corpus
from engine import train
from main import main
from options import get_parser
from preprocess import preprocess
from test_train import TINY
from errors import StorageError
from utils import atomic_path, atomic_torch_save

METRICS = ("instance_f1", "macro_f1", "weighted_f1", "accuracy", "ccc_arousal", "ccc_valence")


def _test_metrics(run_dir) -> dict:
    test = json.loads((run_dir / "results.json").read_text())["test"]
    return {k: test[k] for k in METRICS} | {"confusion": test["confusion"]}


def _cli(argv: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "main.py")] + argv, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, **kwargs)


def test_sigkill_mid_training_then_resume_equals_uninterrupted(demo_dir, tmp_path):
    argv = ["--data_dir", str(demo_dir)] + TINY[:-4] + ["--ws", "4", "--epochs", "4"]
    killed_save = tmp_path / "killed"
    process = _cli(argv + ["--save_path", str(killed_save)])
    deadline = time.time() + 120
    while time.time() < deadline:
        logs = list(killed_save.glob("*/log.jsonl"))
        if logs and logs[0].read_text().count("\n") >= 2:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    run_dir = logs[0].parent
    epochs_done = torch.load(run_dir / "checkpoint.pth", weights_only=True)["epoch"]
    assert not (run_dir / "results.json").exists() and 1 <= epochs_done < 4, "the run was not killed mid-training"
    assert subprocess.run([sys.executable, str(ROOT / "main.py"), "--resume", str(run_dir)], cwd=ROOT,
                          capture_output=True).returncode == 0
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4]  # appended, no epoch twice

    straight = _cli(argv + ["--save_path", str(tmp_path / "straight")])
    assert straight.wait() == 0
    assert _test_metrics(run_dir) == _test_metrics(next((tmp_path / "straight").iterdir()))


def test_resume_of_a_finished_run_does_nothing_and_flags_are_checked(demo_dir, tmp_path, capsys):
    run_dir = train(get_parser().parse_args(["--data_dir", str(demo_dir), "--save_path", str(tmp_path)] + TINY))
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    main(["--resume", str(run_dir)])
    assert "nothing to resume" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == before
    with pytest.raises(SystemExit, match="only --lr --epochs .* may be given with it, not --lam"):
        main(["--resume", str(run_dir), "--lam", "0.5"])
    with pytest.raises(SystemExit, match="is not a run folder"):
        main(["--resume", str(tmp_path)])


def test_divergence_stops_with_epoch_batch_and_how_to_resume(demo_dir, tmp_path, monkeypatch):
    real, poison = engine.train_one_epoch, {2}

    def poisoned(model, loader, loss_fn, optimizer, device, epoch, *precision):
        if epoch in poison:  # the third batch of a poisoned epoch gives a NaN loss
            calls, real_loss = [], loss_fn

            def nan_loss(*args):
                total, parts = real_loss(*args)
                calls.append(1)
                return (total * float("nan"), parts) if len(calls) == 3 else (total, parts)
            loss_fn = nan_loss
        return real(model, loader, loss_fn, optimizer, device, epoch, *precision)

    monkeypatch.setattr(engine, "train_one_epoch", poisoned)
    argv = ["--data_dir", str(demo_dir), "--save_path", str(tmp_path)] + TINY[:-4] + ["--ws", "4", "--epochs", "3"]
    with pytest.raises(SystemExit) as error:
        main(argv)
    message = str(error.value)
    assert "loss is nan at epoch 2, batch 3" in message and "checkpoint.pth (epoch 1)" in message
    run_dir = next(tmp_path.iterdir())
    assert f"python main.py --resume {run_dir} --lr 9.8e-05" in message  # a tenth of epoch 2's lr (0.001 x 0.98)
    assert torch.load(run_dir / "checkpoint.pth", weights_only=True)["epoch"] == 1  # the last good one, loadable

    poison.clear()
    poison.add(3)  # resumed with the lower lr, then stopped again in epoch 3
    with pytest.raises(SystemExit, match="at epoch 3, batch 3"):
        main(["--resume", str(run_dir), "--lr", "9.8e-05"])
    poison.clear()
    main(["--resume", str(run_dir)])  # the lower lr holds without repeating --lr
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    assert log[1]["lr"] == pytest.approx(9.8e-5) and log[2]["lr"] == pytest.approx(9.8e-5 * 0.98)
    assert (run_dir / "results.json").exists()


def test_atomic_writes_keep_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth"
    atomic_torch_save({"epoch": 1}, path)

    def crash(obj, f):
        open(f, "wb").write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(StorageError, match="disk full while writing .*checkpoint.pth; the previous checkpoint.pth"):
        atomic_torch_save({"epoch": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    with atomic_path(tmp_path / "results.json") as tmp:
        tmp.write_text("{}")
    assert (tmp_path / "results.json").read_text() == "{}"


def test_unwritable_run_folder_fails_before_training(demo_dir, tmp_path):
    (tmp_path / "a_file").write_text("")
    for save_path in (tmp_path / "a_file", tmp_path / "a_file" / "exp"):
        with pytest.raises(SystemExit, match="--save_path .*a_file"):
            main(["--data_dir", str(demo_dir), "--save_path", str(save_path)] + TINY)


@pytest.mark.parametrize("flag, value, message", [
    ("--ws", "0", "--ws must be at least 1"), ("--lam", "1.5", "--lam must be in"),
    ("--beta", "1", "--beta must be in"), ("--batch_size", "0", "--batch_size must be >= 1")])
def test_bad_flags(flag, value, message):
    with pytest.raises(SystemExit, match=message):
        main([flag, value])


def test_test_path_from_an_incompatible_version(demo_dir, tmp_path):
    run_dir = train(get_parser().parse_args(["--data_dir", str(demo_dir), "--save_path", str(tmp_path)] + TINY))
    checkpoint = torch.load(run_dir / "best.pth", weights_only=True)
    del checkpoint["model_config"], checkpoint["args"]["num_layers"]  # as saved by the published code
    torch.save(checkpoint, run_dir / "best.pth")
    with pytest.raises(SystemExit, match="lacks the model arguments \\['num_layers'\\]; .*incompatible version"):
        main(["--test_only", str(run_dir)])


def test_split_session_without_data(tmp_path):
    data_dir = make_demo_corpus(tmp_path / "KEMDy19", seed=2, n_sessions=16, n_scripts=1, n_impros=0, n_turns=4)
    preprocess(data_dir, "tfidf", 16)
    with pytest.raises(SystemExit, match=r"--test_split: the test sessions \(17,18\) have no utterances"):
        main(["--data_dir", str(data_dir), "--save_path", str(tmp_path / "exp"), "--test_split", "17,18"] + TINY)


def test_bad_audio_and_transcripts_are_handled(corpus_copy, capsys):
    wavs = sorted(corpus_copy.glob("wav/Session0[6-9]/*/*.wav"))
    ids = [w.stem for w in wavs]
    raw = wavs[0].read_bytes()
    wavs[0].write_bytes(raw[: len(raw) // 2])  # cut short mid-data: read up to where it ends
    wavs[1].write_bytes(raw[:30])  # cut inside its header: unreadable
    sf.write(wavs[2], np.zeros(0, np.float32), 16000)  # no samples
    sf.write(wavs[3], np.array([0.1, np.nan, 0.2] * 1000, np.float32), 16000, subtype="FLOAT")
    sf.write(wavs[4], 0.01 * np.random.default_rng(0).standard_normal(16000 * 600).astype(np.float32), 16000)
    sf.write(wavs[5], np.zeros(8000, np.float32), 8000)  # 1 s at 8 kHz
    sf.write(wavs[6], np.zeros((48000, 2), np.float32), 48000)  # 1 s, 48 kHz stereo
    wavs[7].with_suffix(".txt").write_bytes(b"\x80\xff\xfa\xfb\x80\x81")  # neither UTF-8, UTF-16 nor cp949
    wavs[8].with_suffix(".txt").write_text("c/ * + n/", encoding="utf-8")  # markers only

    summary = preprocess(corpus_copy, "tfidf", 16)
    out = capsys.readouterr().out
    assert summary["dropped_rows"]["unusable wav"] == 6  # three segments, once per role
    assert summary["kept"]["unreadable txt (empty transcript)"] == [ids[7]]  # its audio and labels are real
    assert summary["audio"]["silent (no sample above -60 dBFS)"] == [ids[5], ids[6]]
    for seg, reason in [(ids[1], "unreadable audio"), (ids[2], "audio has no samples"),
                        (ids[3], "audio has NaN or infinite samples")]:
        assert f"{seg}" in out and reason in out, (seg, reason)
    meta = json.loads((corpus_copy / "features" / "logmel.json").read_text())
    length = dict(zip(meta["ids"], meta["lengths"]))
    assert length[ids[4]] == 600 * 16000 // 512 + 1  # the 10-minute clip, whole (training crops 10 s)
    assert length[ids[5]] == length[ids[6]] == 16000 // 512 + 1  # resampled to 16 kHz, stereo mixed down
    assert 0 < length[ids[0]] < 2 * (len(raw) // 4) // 512
    speaker = pd.read_csv(corpus_copy / "df_speaker.csv", keep_default_na=False).set_index("Segment ID")
    assert speaker.loc[ids[8], "text"] == "" and speaker.loc[ids[7], "text"] == ""
