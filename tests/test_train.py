import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score

from conftest import TEXT_DIM
from dataset import context_windows, make_loader
from engine import calibrate, evaluate_run, train
from errors import FlagError
from loss import EmotionLoss, class_balanced_weights
from main import main
from options import TrainSpec, get_parser
from protocol import parse_sessions, resolve_data
from metric import av_calibration, ccc, emotion_metrics, instance_prf, resolve_ties
from model import EmotionModel, ModelConfig
from trained_run import load_trained_model
from utils import summary_table

# The band statistics alone as functionals: openSMILE's eGeMAPS (the default) costs seconds per corpus copy; the tests
# that read it use the shared demo corpus.
TINY = ["--text_dim", str(TEXT_DIM), "--hidden_size", "16", "--num_layers", "1", "--audio_dim", "16",
        "--batch_size", "16", "--functionals", "logmel", "--epochs", "2", "--ws", "4"]


def test_instance_prf_and_ties_by_hand():
    labels = np.array([[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]], dtype=float)
    probs = np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.2, 0.6, 0.1], [0.1, 0.5, 0.1, 0.3]])
    precision, recall, f1 = instance_prf(probs, labels)
    assert precision == pytest.approx(2 / 3) and recall == pytest.approx(2 / 4) and f1 == pytest.approx(4 / 7)
    np.testing.assert_array_equal(resolve_ties(probs.argmax(1), labels, np.array([0, 1, 3])), [0, 2, 3])


def test_instance_recall_is_the_published_per_utterance_mean():
    # Hits 1 (of 3 tied labels), 0 (of 1), 1 (of 1): the published get_recall averages per utterance,
    # (1/3 + 0 + 1) / 3 = 4/9; total hits / total labels would give 2/5.
    labels = np.array([[1, 1, 1, 0], [0, 0, 0, 1], [0, 1, 0, 0]], dtype=float)
    probs = np.array([[0.4, 0.3, 0.2, 0.1], [0.7, 0.1, 0.1, 0.1], [0.1, 0.6, 0.2, 0.1]])
    precision, recall, f1 = instance_prf(probs, labels)
    assert precision == pytest.approx(2 / 3)
    assert recall == pytest.approx(4 / 9)
    assert f1 == pytest.approx(2 * (2 / 3) * (4 / 9) / (2 / 3 + 4 / 9))


def test_metrics_agree_with_scikit_learn():
    rng = np.random.default_rng(0)
    n = 200
    probs = rng.dirichlet(np.ones(7), n)
    first = rng.integers(0, 7, n)
    labels = np.eye(7)[first]
    labels[:20, (first[:20] + 1) % 7] = 1  # some ties
    av_true, av_pred = rng.uniform(1, 5, (n, 2)), rng.uniform(1, 5, (n, 2))
    metrics = emotion_metrics(probs, av_pred, labels, first, av_true)
    pred = probs.argmax(1)
    true = np.where(labels[np.arange(n), pred] > 0, pred, first)
    assert metrics["macro_f1"] == pytest.approx(f1_score(true, pred, average="macro", labels=range(7)))
    assert metrics["weighted_f1"] == pytest.approx(f1_score(true, pred, average="weighted", labels=range(7)))
    assert metrics["accuracy"] == pytest.approx((true == pred).mean())
    assert np.sum(metrics["confusion"]) == n and np.trace(metrics["confusion"]) == (true == pred).sum()
    assert metrics["ccc_arousal"] == pytest.approx(ccc(av_true[:, 0], av_pred[:, 0]))
    # No fear (6) in the truth nor the predictions: macro-F1 averages the 6 other classes, not a 0 for fear.
    probs[:, 6] = 0
    first = np.where(first == 6, 0, first)
    labels = np.eye(7)[first]
    metrics = emotion_metrics(probs, av_pred, labels, first, av_true)
    assert metrics["macro_f1"] == pytest.approx(f1_score(first, probs.argmax(1), average="macro"))
    assert metrics["macro_f1"] > f1_score(first, probs.argmax(1), average="macro", labels=range(7), zero_division=0)
    # Such a class has no F1 at all (None in results.json, "–" in the printed table), not an F1 of 0.
    assert metrics["per_class"]["fear"] == {"precision": None, "recall": None, "f1": None, "support": 0}
    assert "| F1 fear | – (n=0) |" in summary_table(metrics, "test")
    assert metrics["per_class"]["neutral"]["f1"] == pytest.approx(f1_score(first, probs.argmax(1), labels=[0],
                                                                          average=None)[0])


def test_ccc_by_hand():
    assert ccc([1, 2, 3], [1, 2, 4]) == pytest.approx(6 / 7)
    assert ccc([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)
    assert ccc([3, 3, 3], [3, 3, 3]) == 0.0  # undefined -> 0, not NaN
    assert ccc([1, 2, 3], [2, 3, 4]) == pytest.approx(2 * (2 / 3) / (2 / 3 + 2 / 3 + 1))


def test_av_calibration_matches_mean_and_std_so_ccc_becomes_the_correlation():
    rng = np.random.default_rng(0)
    target = rng.uniform(1, 5, (300, 2))
    pred = 3 + 0.3 * (target - 3) + rng.normal(0, 0.2, (300, 2)) + 0.4  # shrunk and shifted, as MSE training leaves it
    pred[:, 1] = 2.0  # a constant output has no spread to match: left as it is
    scale, shift = av_calibration(target, pred)
    calibrated = pred * scale + shift
    assert calibrated[:, 0].mean() == pytest.approx(target[:, 0].mean())
    assert calibrated[:, 0].std() == pytest.approx(target[:, 0].std())
    assert ccc(target[:, 0], calibrated[:, 0]) == pytest.approx(np.corrcoef(target[:, 0], pred[:, 0])[0, 1])
    assert ccc(target[:, 0], calibrated[:, 0]) > ccc(target[:, 0], pred[:, 0]) + 0.2
    assert scale[1] == 1.0 and shift[1] == pytest.approx(target[:, 1].mean() - 2.0)


def test_class_balanced_weights_follow_the_formula():
    counts, beta = np.array([100, 10, 1, 0]), 0.9
    raw = (1 - beta) / (1 - beta ** np.maximum(counts, 1))
    np.testing.assert_allclose(class_balanced_weights(counts, beta).numpy(), raw / raw.sum() * 4, rtol=1e-6)
    assert class_balanced_weights(np.array([5, 5, 5]), 0.99).tolist() == pytest.approx([1, 1, 1])


def test_loss_parts_and_lam_weighting():
    torch.manual_seed(0)
    logits, av = torch.randn(5, 7), 1 + 4 * torch.rand(5, 2)
    soft = torch.softmax(torch.randn(5, 7), 1)
    av_true = 1 + 4 * torch.rand(5, 2)
    total, parts = EmotionLoss(0.66)(logits, av, soft, av_true)
    kl = F.kl_div(F.log_softmax(logits, 1), soft, reduction="batchmean")
    assert parts["emotion"] == pytest.approx(kl.item(), rel=1e-5)
    assert parts["arousal"] == pytest.approx(F.mse_loss(av[:, 0], av_true[:, 0]).item(), rel=1e-5)
    assert total.item() == pytest.approx(0.66 * parts["emotion"] + 0.34 * (parts["arousal"] + parts["valence"]), rel=1e-5)
    zero, _ = EmotionLoss(1.0)(torch.log(soft), av, soft, av_true)
    assert zero.item() == pytest.approx(0.0, abs=1e-6)  # the soft target itself: no emotion loss
    one_hot = torch.eye(7)[[0, 2, 2, 4, 6]]
    weights = torch.arange(1.0, 8.0)
    weighted, parts = EmotionLoss(1.0, weights)(logits, av, one_hot, av_true)
    ce = F.cross_entropy(logits, one_hot.argmax(1), reduction="none")
    assert weighted.item() == pytest.approx((ce * weights[one_hot.argmax(1)]).mean().item(), rel=1e-5)


def test_ccc_loss_is_one_minus_the_metric():
    torch.manual_seed(0)
    logits, soft = torch.randn(6, 7), torch.softmax(torch.randn(6, 7), 1)
    av_true, av = 1 + 4 * torch.rand(6, 2), 1 + 4 * torch.rand(6, 2)
    _, parts = EmotionLoss(0.5, av_loss="ccc")(logits, av, soft, av_true)
    assert parts["arousal"] == pytest.approx(1 - ccc(av_true[:, 0].numpy(), av[:, 0].numpy()), rel=1e-4)
    _, perfect = EmotionLoss(0.5, av_loss="ccc")(logits, av_true, soft, av_true)
    assert perfect["valence"] == pytest.approx(0.0, abs=1e-5)
    # A constant guess at the mean has MSE = the variance but CCC loss 1: CCC punishes shrinkage, MSE rewards it.
    constant = av_true.mean(0, keepdim=True).expand(6, 2)
    _, shrunk = EmotionLoss(0.5, av_loss="ccc")(logits, constant, soft, av_true)
    assert shrunk["arousal"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("ws", [1, 8])
@pytest.mark.parametrize("bidirectional,audio_pool,direct", [(False, "bands", True), (True, "mean", False)])
def test_model_shapes_and_ranges(ws, bidirectional, audio_pool, direct):
    torch.manual_seed(0)
    model = EmotionModel(ModelConfig(text_dim=12, audio_dim=16, hidden_size=8, num_layers=2, bidirectional=bidirectional,
                                     audio_pool=audio_pool, direct=direct, freq_mask=10, time_mask=10)).eval()
    lengths = torch.tensor([40, 313, 7])
    spec = torch.randn(int(lengths.sum()), 229)  # packed frames of the 3 clips
    slots = torch.full((1, ws), -1)
    slots[0, -min(ws, 3):] = torch.arange(3)[-min(ws, 3):]
    logits, av = model(spec, lengths, torch.randn(3, 12), slots)  # batch size 1
    assert logits.shape == (1, 7) and av.shape == (1, 2)
    assert ((av >= 1) & (av <= 5)).all()
    batch_logits, _ = model(spec, lengths, torch.randn(3, 12), slots.repeat(4, 1))
    assert batch_logits.shape == (4, 7)


@pytest.mark.parametrize("audio_pool", ["bands", "mean"])
def test_audio_encoding_does_not_depend_on_batch_padding(audio_pool):
    torch.manual_seed(0)
    encoder = EmotionModel(ModelConfig(text_dim=4, audio_dim=16, hidden_size=8, num_layers=1,
                                       audio_pool=audio_pool)).audio.eval()
    clip = torch.randn(50, 229)
    alone = encoder(clip, torch.tensor([50]))
    long_clip = torch.randn(300, 229)
    # One group (padded to 300 frames together) and, with a small budget, separate groups:
    together = encoder(torch.cat([long_clip, clip]), torch.tensor([300, 50]))
    separate = encoder(torch.cat([long_clip, clip]), torch.tensor([300, 50]), frame_budget=300)
    torch.testing.assert_close(alone[0], together[1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(together, separate, rtol=1e-4, atol=1e-5)


def test_band_pooling_keeps_where_the_energy_sits_in_the_spectrum():
    # The same pattern 128 mel bands higher (a multiple of the encoder's frequency stride of 16, away from
    # the edges): averaging the conv output over frequency cannot tell the two apart; band pooling must.
    low, high = torch.zeros(60, 229), torch.zeros(60, 229)
    pattern = torch.randn(60, 32)
    low[:, 32:64], high[:, 160:192] = pattern, pattern
    outputs = {}
    for pool in ("mean", "bands"):
        torch.manual_seed(0)
        encoder = EmotionModel(ModelConfig(text_dim=4, audio_dim=16, hidden_size=8, num_layers=1,
                                           audio_pool=pool)).audio.eval()
        outputs[pool] = encoder(torch.cat([low, high]), torch.tensor([60, 60]))
    torch.testing.assert_close(outputs["mean"][0], outputs["mean"][1], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(outputs["bands"][0], outputs["bands"][1], rtol=1e-3, atol=1e-4)


def test_specaugment_masks_only_in_training():
    torch.manual_seed(0)
    model = EmotionModel(ModelConfig(text_dim=4, audio_dim=16, hidden_size=8, num_layers=1, freq_mask=30, time_mask=20))
    spec, lengths = torch.randn(80, 229), torch.tensor([80])
    model.audio.eval()
    torch.testing.assert_close(model.audio(spec, lengths), model.audio(spec, lengths))
    model.audio.train()
    assert not torch.allclose(model.audio(spec, lengths), model.audio(spec, lengths))


def test_windows_at_dialogue_starts():
    windows = context_windows(np.array(["a", "a", "a", "b", "b"]), 3)
    np.testing.assert_array_equal(windows, [[-1, -1, 0], [-1, 0, 1], [0, 1, 2], [-1, -1, 3], [-1, 3, 4]])


def test_test_split_parsing_and_errors():
    assert parse_sessions("[13,14,15,16]", "--test_split", 20) == parse_sessions("13,14,15,16", "--test_split", 20) \
        == [13, 14, 15, 16]
    for bad, message in [("0,1", "from 1 to 20"), ("", "got none"), ("a,b", "not a list"), ("[21]", "got \\[21\\]")]:
        with pytest.raises(FlagError, match=f"--test_split .*{message}"):
            parse_sessions(bad, "--test_split", 20)


def test_train_then_test_only_round_trip_and_determinism(demo_dir, tmp_path):
    argv = ["--data_dir", str(demo_dir), "--save_path", str(tmp_path / "exp"), "--seed", "3"] + TINY
    run_dir = train(get_parser().parse_args(argv))
    for name in ("args.json", "log.jsonl", "checkpoint.pth", "best.pth", "results.json", "predictions.csv",
                 "confusion.png", "curves.png"):
        assert (run_dir / name).exists(), name
    results = json.loads((run_dir / "results.json").read_text())["test"]
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and "val_macro_f1" in log[0]
    checkpoint = torch.load(run_dir / "checkpoint.pth", weights_only=True)
    assert checkpoint["args"]["num_layers"] == 1 and checkpoint["epoch"] == 2
    # The validation-fitted arousal/valence map is in the saved model, so --test_only and predict.py apply it.
    calibration = json.loads((run_dir / "results.json").read_text())["av_calibration"]
    best = torch.load(run_dir / "best.pth", weights_only=True)["model"]
    for key, field in (("av_scale", "scale"), ("av_shift", "shift")):
        assert best[key].tolist() == pytest.approx([calibration[k][field] for k in ("arousal", "valence")], abs=1e-4)
    assert best["av_scale"].tolist() != [1.0, 1.0]
    # Fitting again (e.g. a resumed run that had not written results.json) starts from the identity map.
    model, saved, _ = load_trained_model(run_dir / "best.pth", torch.device("cpu"))
    spec = resolve_data(saved)
    corpus = spec.corpus()
    val_loader = make_loader(corpus, spec.val, saved.ws, saved.batch_size, False)
    assert calibrate(model, val_loader, TrainSpec.from_args(saved), torch.device("cpu"), None)["av_calibration"] \
        == calibration
    # A model saved before the calibration existed loads with the identity map.
    old = {k: v for k, v in best.items() if k not in ("av_scale", "av_shift")}
    model.load_state_dict(old)
    assert model.av_scale.tolist() == [1.0, 1.0] and model.av_shift.tolist() == [0.0, 0.0]

    metrics = evaluate_run(str(run_dir), "exp", torch.device("cpu"), allow_corpus_change=False)
    for key in ("instance_f1", "macro_f1", "weighted_f1", "accuracy", "ccc_arousal", "ccc_valence"):
        assert metrics[key] == pytest.approx(results[key], abs=1e-6), key
    assert metrics["confusion"] == results["confusion"]

    # Same seed on CPU -> identical test metrics; also with worker processes loading the batches.
    again = train(get_parser().parse_args(argv + ["--num_workers", "2"]))
    assert again != run_dir
    assert json.loads((again / "results.json").read_text())["test"] == results


def test_bad_test_path_and_split_messages(demo_dir, tmp_path):
    with pytest.raises(SystemExit, match="--test_only exp/typo: no such run folder$"):
        main(["--test_only", "exp/typo"])  # with the default --save_path exp: never "exp/exp/typo"
    with pytest.raises(SystemExit, match=f"--test_only typo: no such run folder \\(nor {tmp_path}/typo\\)"):
        main(["--test_only", "typo", "--save_path", str(tmp_path)])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="is not a finished run folder"):
        main(["--test_only", str(tmp_path / "empty"), "--save_path", str(tmp_path)])
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "args.json").write_text("{}")
    with pytest.raises(SystemExit, match="missing best.pth"):
        main(["--test_only", "--test_path", "half", "--save_path", str(tmp_path)])  # deprecated alias, still works
    with pytest.raises(SystemExit, match="--test_split '30' must name sessions from 1 to 20"):
        main(["--data_dir", str(demo_dir), "--test_split", "30"] + TINY)
    with pytest.raises(SystemExit, match="--lam must be in"):
        main(["--lam", "1.5"])


def test_imbalance_tools_by_hand():
    from dataset import ChunkBatchSampler
    from loss import inverse_frequency_weights
    from metric import decision_bias
    assert inverse_frequency_weights(np.array([90, 10, 0])).tolist() == pytest.approx([101 / 270, 101 / 30, 101 / 3])
    # A bias on the logits of the rare class turns predictions it barely loses into hits: macro-F1 rises.
    logits = np.log(np.array([[0.6, 0.4]] * 3 + [[0.9, 0.1]] * 7 + [[0.55, 0.45]] * 2))
    labels = np.eye(2)[[1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]]
    bias = decision_bias(logits, labels, labels.argmax(1))
    assert np.log(1.5) < bias[1] - bias[0] <= 0.5  # only the difference matters: the grid's smallest that helps
    assert ((logits + bias).argmax(1) == [1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1]).all()
    # Class-balanced sampling draws the rare class's windows about as often as the common one's.
    weights = 1.0 / np.bincount([0] * 90 + [1] * 10)[[0] * 90 + [1] * 10]
    drawn = np.concatenate(list(ChunkBatchSampler(100, 50, 1, True, weights=weights)))
    assert 0.35 < (drawn >= 90).mean() < 0.65 and len(drawn) == 100
    # Logit adjustment: the same logits cost a rare-class target more, so training pushes that class up.
    prior = torch.log(torch.tensor([0.9, 0.1]))
    plain, adjusted = EmotionLoss(1.0), EmotionLoss(1.0, logit_adjustment=prior)
    logits_t, target = torch.zeros(1, 2), torch.tensor([[0.0, 1.0]])
    av = torch.full((1, 2), 3.0)
    assert adjusted(logits_t, av, target, av)[0] > plain(logits_t, av, target, av)[0]


def test_text_only_and_audio_only_models(demo_dir, tmp_path):
    for modalities, absent in (("text", "audio."), ("audio", "text_norm.")):
        run = train(get_parser().parse_args(["--data_dir", str(demo_dir), "--save_path", str(tmp_path),
                                             "--modalities", modalities] + TINY[:-4] + ["--epochs", "1", "--ws", "2"]))
        state = torch.load(run / "best.pth", weights_only=True)
        assert state["model_config"]["modalities"] == (modalities,)
        assert not any(k.startswith(absent) for k in state["model"])  # the other encoder does not exist
        assert json.loads((run / "results.json").read_text())["test"]["ccc_arousal"] is not None
