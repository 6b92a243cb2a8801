"""What the network needs to beat its linear baseline: speaker normalisation, functionals inside the model, ensembles
and the imbalance methods, each checked on values that could be wrong."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

import compare
import ensemble
import normalization
import predict
from conftest import TEXT_DIM
from dataset import Corpus, assemble_batch
from engine import train
from errors import RunFolderError
from loss import EmotionLoss
from metric import emotion_metrics, resampled_scores
from normalization import FrameNorm, group_index, speaker_keys, zscores
from options import get_parser
from readers import segment_path
from report import report
from test_train import TINY
from trained_run import VAL_PREDICTIONS

SMALL = TINY


def test_speaker_keys_and_z_scores_per_speaker(demo_dir, monkeypatch):
    # The test demo's speakers have 3 to 5 utterances: under a floor of 6 all are pooled, without one each is its own.
    monkeypatch.setattr(normalization, "MIN_SPEAKER_UTTERANCES", 6)
    pooled = Corpus([demo_dir], "speaker", TEXT_DIM, feature_norm="speaker", functionals=("logmel",))
    assert np.allclose(pooled.functionals.mean(0), 0, atol=1e-4) and len(pooled.frame_norm.mean) == 40
    assert np.allclose(pooled.frame_norm.mean, pooled.frame_norm.mean[:1])  # every speaker: all utterances
    monkeypatch.setattr(normalization, "MIN_SPEAKER_UTTERANCES", 1)
    corpus = Corpus([demo_dir], "speaker", TEXT_DIM, feature_norm="speaker", functionals=("logmel",))
    # KEMDy19's actors are F and M within a session: the key joins both (Sess01_F is not Sess02_F).
    assert set(corpus.speakers) == {f"Sess{s:02d}_{g}" for s in range(1, 21) for g in "FM"}
    assert list(speaker_keys(pd.DataFrame({"speaker": ["Actor_01"], "Session": [1]}), "ravdess")) == ["Actor_01"]
    groups = group_index(corpus.speakers)
    for g in np.unique(groups):
        rows = groups == g
        functionals = corpus.functionals[rows]
        assert np.allclose(functionals.mean(0), 0, atol=1e-4)
        varying = corpus.raw_functionals[rows].std(0) > 1e-3
        assert np.allclose(functionals.std(0)[varying], 1, atol=1e-3)
        # Every frame of the speaker's utterances, as batches get them: each mel band mean 0, std 1.
        utterances = np.flatnonzero(rows)
        assert (corpus.lengths[utterances] <= 313).all()  # (the demo's clips are under 10 s: no frame is cropped)
        batch = assemble_batch(corpus.frames, corpus.offsets, corpus.lengths, corpus.text, utterances[:, None],
                               norm=corpus.frame_norm)
        assert np.allclose(batch["spec"].numpy().mean(0), 0, atol=1e-3)
        assert np.allclose(batch["spec"].numpy().std(0), 1, atol=1e-3)
    raw = Corpus([demo_dir], "speaker", TEXT_DIM, functionals=("logmel",))
    assert raw.frame_norm is None and np.array_equal(raw.functionals, corpus.raw_functionals)


def test_frame_norm_of_layer_rows_and_nan_cells():
    frames = np.arange(24, dtype=np.float32).reshape(12, 2)  # 4 utterances of 3 layer rows each
    norm = FrameNorm.of(frames, np.array([0, 3, 6, 9]), np.array([3, 3, 3, 3]), np.array([0, 0, 1, 1]), 3)
    assert norm.mean.shape == (2, 3, 2) and norm.mean[0, 1].tolist() == [5.0, 6.0]  # rows 1 and 4 of speaker 0
    out = norm.apply(frames[3:6], np.array([1]), np.array([3]), np.array([0]))
    assert out[:, 0].tolist() == [1.0, 1.0, 1.0]  # (x - mean) / std, std 3 over the pair 3 apart
    x = np.array([[1.0, np.nan], [3.0, 2.0], [5.0, 4.0], [7.0, 7.0]])
    z = zscores(x, np.array([0, 0, 1, 1]))
    assert z[:, 0].tolist() == [-1.0, 1.0, -1.0, 1.0] and np.isnan(z[0, 1]) and z[1, 1] == 0.0  # one value: centred
    # A speaker of fewer utterances than asked for takes the statistics of all utterances pooled.
    pooled = zscores(x[:3, :1], np.array([0, 0, 1]), min_rows=2)
    assert pooled[:, 0].tolist() == [-1.0, 1.0, pytest.approx(np.sqrt(1.5))]  # speaker 1's 5: (5 - 3) / std(1, 3, 5)
    rare = FrameNorm.of(frames, np.array([0, 3, 6, 9]), np.array([3, 3, 3, 3]), np.array([0, 0, 0, 1]), 3,
                        min_utterances=2)
    assert np.array_equal(rare.mean[1], frames.reshape(4, 3, 2).mean(0))


def test_focal_loss_by_hand():
    logits, soft = torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    av = torch.full((1, 2), 3.0)
    p = torch.softmax(logits, 1)[0, 0]
    plain, _ = EmotionLoss(1.0)(logits, av, soft, av)
    focal, _ = EmotionLoss(1.0, focal_gamma=2.0)(logits, av, soft, av)
    assert plain.item() == pytest.approx(-torch.log(p).item())
    assert focal.item() == pytest.approx(-((1 - p) ** 2 * torch.log(p)).item())
    # Soft targets: the focal factor scales the cross-entropy terms, not the target's entropy (which has no p in it).
    soft = torch.tensor([[0.5, 0.5]])
    q = torch.softmax(logits, 1)[0]
    focal, _ = EmotionLoss(1.0, focal_gamma=2.0)(logits, av, soft, av)
    expected = (0.5 * torch.log(torch.tensor(0.5)) * 2 - (0.5 * (1 - q) ** 2 * torch.log(q)).sum()).item()
    assert focal.item() == pytest.approx(expected)


def test_functionals_in_the_model_and_classifier_retraining(demo_dir, tmp_path):
    argv = ["--data_dir", str(demo_dir), "--save_path", str(tmp_path), "--imbalance", "sampler"] + SMALL
    plain = train(get_parser().parse_args(argv))
    retrained = train(get_parser().parse_args(argv[:4] + ["--imbalance", "sampler,crt"] + SMALL))
    before, after = (torch.load(r / "best.pth", weights_only=True) for r in (plain, retrained))
    assert before["model_config"]["functionals"] == ("logmel",) and before["model_config"]["functional_dim"] == 458
    assert before["statistics"]["functionals"][0].shape == (458,)
    changed = {k for k in before["model"] if not torch.equal(before["model"][k], after["model"][k])}
    # Classifier re-training changes the emotion head unless no re-trained epoch beats it on validation and, since
    # the arousal/valence trunk reads its probabilities, then that trunk and its heads (and the maps fitted after
    # them on validation); the representation stays.
    record = json.loads((retrained / "results.json").read_text())["classifier_retraining"]
    head = {"emotion_head.weight", "emotion_head.bias"}
    av_path = {f"{name}.{p}" for name in ("av_trunk.0", "arousal_head", "valence_head") for p in ("weight", "bias")}
    assert record["epochs"] == 10 and (head <= changed if record["best_epoch"] else not head & changed)
    assert bool(av_path & changed) == bool(record.get("av_best_epoch"))
    assert changed <= head | av_path | {"av_scale", "av_shift"}
    val = pd.read_csv(plain / VAL_PREDICTIONS)
    assert len(val) and set(val.columns) >= {"Segment ID", "emotion", "neutral", "arousal_pred"}


def _member(folder, name: str, test: np.ndarray, val: np.ndarray, model: str = "neural"):
    """A finished run folder holding only what ensemble.py reads: two classes, three utterances per split."""
    run = folder / name
    run.mkdir(parents=True)
    (run / "args.json").write_text(json.dumps({"test_split": "1"}))
    (run / "results.json").write_text(json.dumps({"model": model, "test": {}}))
    for file, probs, labels in (("predictions.csv", test, ["a", "b", "a"]), (VAL_PREDICTIONS, val, ["a", "b", "b"])):
        pd.DataFrame({"Segment ID": ["u1", "u2", "u3"], "emotion": labels, "a": probs, "b": 1 - probs}).to_csv(
            run / file, index=False)
    return run


def test_ensembles_average_and_stack_on_validation_alone(tmp_path, capsys):
    good = _member(tmp_path / "runs", "good", np.array([0.9, 0.2, 0.8]), np.array([0.9, 0.2, 0.1]))
    bad = _member(tmp_path / "runs", "bad", np.array([0.9, 0.2, 0.8]), np.array([0.2, 0.9, 0.9]), "baseline")
    alone = ensemble.run_ensemble([str(good)], "average", str(tmp_path / "exp"))
    result = json.loads((alone / "fold1" / "results.json").read_text())
    # An ensemble of one member is the member: its probabilities, so its scores.
    assert pd.read_csv(alone / "fold1" / "predictions.csv")["a"].tolist() == [0.9, 0.2, 0.8]
    assert result["test"]["accuracy"] == 1.0 and result["members"][0]["weight"] == 1.0
    stacked = ensemble.run_ensemble([str(good), str(bad)], "stacking", str(tmp_path / "exp"))
    weights = [m["weight"] for m in json.loads((stacked / "members.json").read_text())["folds"][0]["members"]]
    assert weights == [1.0, 0.0]  # validation: the good member is right on all three, the bad one on none
    # The test rows never decide: a member that is perfect on test but wrong on validation gets no weight.
    pd.DataFrame({"Segment ID": ["u1", "u2", "u3"], "emotion": ["a", "b", "a"], "a": [1.0, 0.0, 1.0],
                  "b": [0.0, 1.0, 0.0]}).to_csv(bad / "predictions.csv", index=False)
    again = ensemble.run_ensemble([str(good), str(bad)], "stacking", str(tmp_path / "exp"))
    assert [m["weight"] for m in json.loads((again / "members.json").read_text())["folds"][0]["members"]] == weights
    averaged = ensemble.run_ensemble([str(good), str(bad)], "average", str(tmp_path / "exp"))
    assert pd.read_csv(averaged / "fold1" / "predictions_val.csv")["a"].tolist() == pytest.approx([0.55, 0.55, 0.5])
    relabelled = _member(tmp_path / "runs", "listener", np.array([0.9, 0.2, 0.8]), np.array([0.9, 0.2, 0.1]))
    table = pd.read_csv(relabelled / "predictions.csv")
    table.assign(emotion=["b", "b", "a"]).to_csv(relabelled / "predictions.csv", index=False)  # other labels
    with pytest.raises(RunFolderError, match="listener has other test utterances, classes or labels"):
        ensemble.run_ensemble([str(good), str(relabelled)], "average", str(tmp_path / "refused"))
    assert not (tmp_path / "refused").exists()  # refused before any folder
    table = report([str(good), str(stacked)])
    assert table.set_index("run").loc[stacked.name, "kind"] == "ensemble"
    assert table["kind"].tolist() == ["single", "ensemble"]  # single models first, never mixed


def test_resampled_scores_equal_emotion_metrics_row_by_row():
    rng = np.random.default_rng(0)
    labels = np.eye(4)[rng.integers(0, 3, 40)]  # class 3 never true: predicted, it enters macro-F1 alone
    labels[:6, 1] = 1  # ties: a prediction among the tied labels is right
    first = labels.argmax(1)
    pred = rng.integers(0, 4, (5, 40))
    scores = resampled_scores(pred, labels, first)
    for r in range(5):
        expected = emotion_metrics(np.eye(4)[pred[r]], np.full((40, 2), np.nan), labels, first,
                                   np.full((40, 2), np.nan), ("a", "b", "c", "d"))
        for metric in ("ua", "macro_f1", "accuracy"):
            assert scores[metric][r] == pytest.approx(expected[metric])


def _scored_run(folder, name: str, predicted: list[str], test_split: str = "1"):
    """A run folder with what compare.py reads: 12 test utterances, 8 of class a and 4 of class b."""
    run = folder / name
    run.mkdir(parents=True)
    (run / "args.json").write_text(json.dumps({"test_split": test_split}))
    (run / "results.json").write_text(json.dumps({"model": "neural", "test": {}}))
    is_a = np.array(predicted) == "a"
    pd.DataFrame({"Segment ID": [f"u{k:02d}" for k in range(12)], "emotion": ["a"] * 8 + ["b"] * 4,
                  "a": is_a * 0.8 + 0.1, "b": ~is_a * 0.8 + 0.1}).to_csv(run / "predictions.csv", index=False)
    return run


def test_compare_pairs_runs_by_fold_and_tests_the_difference(tmp_path, capsys):
    right = _scored_run(tmp_path, "right", ["a"] * 8 + ["b"] * 4)
    wrong = _scored_run(tmp_path, "wrong", ["b"] * 8 + ["a"] * 4)
    half = _scored_run(tmp_path, "half", ["a"] * 8 + ["a"] * 4)  # every b missed: UA 0.5
    result = compare.main([str(right), "--versus", str(wrong), "--resamples", "4000"])
    assert result["ua"]["difference"] == 1.0 and (result["ua"]["ahead"], result["ua"]["behind"]) == (1, 0)
    # Only the 2 of 4,096 swap patterns that swap all or none reach the observed difference: p near 1/2048.
    assert result["ua"]["p"] < 0.01
    same = compare.main([str(right), "--versus", str(right), "--resamples", "200"])
    assert same["macro_f1"]["difference"] == 0 and same["macro_f1"]["level"] == 1 and same["macro_f1"]["p"] == 1.0
    # Each run of A meets each run of B of its fold: two pairs, their mean difference.
    two = compare.main([str(right), str(half), "--versus", str(wrong), "--resamples", "200"])
    assert two["ua"]["a"] == 0.75 and two["ua"]["difference"] == pytest.approx((1.0 + 0.5) / 2 - 0.0)
    assert "2 pairs of runs on the same folds, test sessions" in capsys.readouterr().out
    # A seed that repeats another adds no evidence: the pairs of a fold share one swap pattern, so the p-value of
    # two identical runs against B is the p-value of one (independent swaps per pair made it shrink towards 0).
    some = _scored_run(tmp_path, "some", ["a"] * 8 + ["b", "b", "a", "a"])
    copy = shutil.copytree(some, tmp_path / "copy")
    alone_p = compare.main([str(some), "--versus", str(half), "--resamples", "2000"])["ua"]["p"]
    assert 0.2 < alone_p < 0.6  # 2 of 4 b utterances: within chance
    assert compare.main([str(some), str(copy), "--versus", str(half), "--resamples", "2000"])["ua"]["p"] == alone_p
    # --split val reads the validation predictions: here B's are A's, so nothing differs.
    for run in (right, wrong):
        shutil.copy(right / "predictions.csv", run / VAL_PREDICTIONS)
    assert compare.main([str(right), "--versus", str(wrong), "--split", "val"])["ua"]["difference"] == 0
    # An ensemble folder is model A or B as its runs are: its folds paired by their test sessions.
    alone = ensemble.run_ensemble([str(right)], "average", str(tmp_path / "exp"))
    assert compare.main([str(alone), "--versus", str(wrong), "--resamples", "200"])["ua"]["difference"] == 1.0
    with pytest.raises(RunFolderError, match="is a fold of an ensemble: give the folders of its members"):
        ensemble.run_ensemble([str(alone)], "average", str(tmp_path / "exp"))
    other = _scored_run(tmp_path, "other_fold", ["a"] * 12, test_split="2")
    with pytest.raises(SystemExit, match="other_fold was tested on 2, which no run of --versus was tested on"):
        compare.main([str(other), "--versus", str(wrong)])


def test_predict_standardises_a_speaker_with_its_own_recordings_as_evaluation_does(demo_dir, tmp_path, monkeypatch):
    # Windows of one utterance (ws 1): predict.py --input_dir of all of one test speaker's recordings sees what
    # evaluation saw, its speaker statistics included (the test demo's speakers have 3 to 5 utterances: the floor
    # at 2).
    monkeypatch.setattr(normalization, "MIN_SPEAKER_UTTERANCES", 2)
    run = train(get_parser().parse_args(["--data_dir", str(demo_dir), "--save_path", str(tmp_path), "--ws", "1"]
                                        + SMALL[:-4] + ["--functionals", "egemaps,logmel"]))
    table = pd.read_csv(demo_dir / "df_speaker.csv", keep_default_na=False)
    mine = table[(table["Session"] == 14) & (table["speaker"] == "F")]["Segment ID"]
    folder = tmp_path / "mine"
    folder.mkdir()
    for seg in mine:
        for suffix in (".wav", ".txt"):
            shutil.copy(segment_path(demo_dir, seg, suffix), folder / f"{seg}{suffix}")
    predicted = predict.predict(run, sorted(folder.glob("*.wav")), [None] * len(mine), dialogue=False)
    evaluated = pd.read_csv(run / "predictions.csv").set_index("Segment ID").loc[sorted(mine)]
    emotions = list(evaluated.columns[1:8])
    np.testing.assert_allclose(predicted[emotions].to_numpy(), evaluated[emotions].to_numpy(), atol=1e-5)
    assert predicted["note"].str.contains(f"the statistics of its speaker's {len(mine)} recordings").all()
    alone = predict.predict(run, sorted(folder.glob("*.wav"))[:1], [None], dialogue=False)
    assert alone["note"].tolist() == ["audio standardised with the run's training statistics (its speaker's "
                                      "recordings are fewer than 2)"]
