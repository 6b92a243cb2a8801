"""End-to-end fine-tuning of pretrained encoders (--finetune_speech, --finetune_text) on tiny randomly initialised
wav2vec2, BERT, RoBERTa (with a BERT tokenizer, as klue/roberta) and ELECTRA models saved with save_pretrained:
what trains and what stays fixed, exact resume after an interruption mid-epoch, --test_only and predict.py from
the run folder alone, torchrun with 2 gloo processes, and a fast one-line error for an id that cannot be loaded."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import engine
import predict
from conftest import ROOT
from main import main
from preprocess import preprocess
from speech_features import feature_source
from readers import decode_text, segment_path
from test_bad_input import assert_one_line_error, run_cli
from test_speech import save_tiny

EMOTIONS = ["neutral", "happy", "surprise", "angry", "sad", "disgust", "fear"]
TEXT_SIZES = {"bert": 32, "roberta": 24, "electra": 40}  # hidden sizes: each its own --text_dim embedding cache
SMALL = ["--hidden_size", "16", "--num_layers", "1", "--audio_dim", "16", "--batch_size", "16", "--ws", "3",
         "--epochs", "2", "--warmup_steps", "3", "--freeze_layers", "1", "--feature_norm", "training",
         "--functionals", "none"]  # (a dialogue's two speakers predicted as in evaluation: see test_recipe.py)


def save_tiny_text(folder, family: str, vocab_file) -> str:
    from transformers import (BertConfig, BertModel, BertTokenizerFast, ElectraConfig, ElectraModel, RobertaConfig,
                              RobertaModel)
    size = TEXT_SIZES[family]
    shape = dict(vocab_size=sum(1 for _ in open(vocab_file, encoding="utf-8")), hidden_size=size,
                 num_hidden_layers=2, num_attention_heads=2, intermediate_size=2 * size, max_position_embeddings=80)
    model = {"bert": lambda: BertModel(BertConfig(**shape)),
             "roberta": lambda: RobertaModel(RobertaConfig(**shape, pad_token_id=0)),
             "electra": lambda: ElectraModel(ElectraConfig(**shape, embedding_size=size))}[family]()
    model.save_pretrained(folder)
    BertTokenizerFast(str(vocab_file)).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tiny(raw_demo, tmp_path_factory):
    """Tiny encoders and the demo corpus preprocessed with the wav2vec2's cache and each text encoder's embeddings."""
    root = tmp_path_factory.mktemp("finetune")
    chars = sorted({c for p in raw_demo.rglob("*.txt") for c in decode_text(p.read_bytes(), p) if not c.isspace()})
    (root / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars) + "\n",
                                    encoding="utf-8")
    models = {family: save_tiny_text(root / f"tiny-{family}", family, root / "vocab.txt") for family in TEXT_SIZES}
    models["speech"] = str(save_tiny(root / "tiny-wav2vec2", "wav2vec2"))
    data_dir = root / "KEMDy19"
    shutil.copytree(raw_demo, data_dir)
    for family in ("roberta", "electra"):
        preprocess(data_dir, models[family], TEXT_SIZES[family])
    preprocess(data_dir, models["bert"], TEXT_SIZES["bert"], speech=feature_source(models["speech"]))
    return {"data_dir": data_dir, **models}


def _argv(tiny, save, family="bert", speech=True) -> list[str]:
    return ["--data_dir", str(tiny["data_dir"]), "--save_path", str(save), "--text_encoder", tiny[family],
            "--text_dim", str(TEXT_SIZES[family]), "--speech_model", tiny["speech"], "--finetune_text"] + \
        (["--finetune_speech"] if speech else []) + SMALL


def _weights(run_dir, prefix: str) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / "best.pth", weights_only=True)["model"]
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _assert_trained_and_frozen(run_dir, pretrained_dir, prefix: str, frozen: tuple[str, ...], trained: str):
    from transformers import AutoModel
    before = AutoModel.from_pretrained(pretrained_dir).state_dict()
    after = _weights(run_dir, prefix)
    for name, value in after.items():
        if name in before and name.startswith(frozen):
            assert torch.equal(value, before[name]), f"{name} is frozen but changed"
    changed = [n for n, v in after.items() if n.startswith(trained) and not torch.equal(v, before[n])]
    assert changed, f"no weight of {trained} was trained"


def test_finetune_both_encoders_trains_the_unfrozen_layers_and_reproduces(tiny, tmp_path):
    main(_argv(tiny, tmp_path) + ["--finetune_context", "encoder"])
    run = next(tmp_path.glob("lstm_*"))
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert log[1]["train_loss"] < log[0]["train_loss"]
    assert log[0]["encoder_lr"] < 5e-5 and log[1]["lr"] == pytest.approx(1e-3 * 0.98)  # warm-up; per-epoch decay
    # --freeze_layers 1: the CNN, layer 0 (and the text embeddings, BERT's unused pooler) fixed; layer 1 trained.
    _assert_trained_and_frozen(run, tiny["speech"], "waveform.backbone.",
                               ("feature_extractor.", "encoder.layers.0."), "encoder.layers.1.")
    _assert_trained_and_frozen(run, tiny["bert"], "token_encoder.backbone.",
                               ("embeddings.", "encoder.layer.0.", "pooler."), "encoder.layer.1.")
    assert (run / "speech_backbone" / "preprocessor_config.json").exists()
    assert (run / "text_backbone" / "tokenizer.json").exists()
    assert not list(run.glob("*_backbone/*.safetensors"))  # the weights are in best.pth alone

    moved = shutil.move(str(run), tmp_path / "elsewhere" / run.name)  # the run folder is self-contained
    main(["--test_only", str(moved)])
    results, again = (json.loads((moved / f).read_text())["test"] for f in ("results.json", "results_test_only.json"))
    for name in ("macro_f1", "instance_f1", "ccc_arousal", "ccc_valence"):
        assert again[name] == pytest.approx(results[name], abs=1e-6), name

    speaker = pd.read_csv(tiny["data_dir"] / "df_speaker.csv", keep_default_na=False)
    dialogue = speaker[speaker["dialogue"] == "Sess14_script01"]
    folder = tmp_path / "dialogue"
    folder.mkdir()
    for i, seg in enumerate(dialogue["Segment ID"]):
        for suffix in (".wav", ".txt"):
            shutil.copy(segment_path(tiny["data_dir"], seg, suffix), folder / f"{i:03d}_{seg}{suffix}")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        table = predict.main(["--run", str(moved), "--dialogue", "."])
    finally:
        os.chdir(cwd)
    evaluated = pd.read_csv(moved / "predictions.csv").set_index("Segment ID").loc[dialogue["Segment ID"]]
    np.testing.assert_allclose(table[EMOTIONS].to_numpy(), evaluated[EMOTIONS].to_numpy(), atol=1e-5)
    np.testing.assert_allclose(table["valence"], evaluated["valence_pred"], atol=1e-4)


@pytest.mark.parametrize("family", ["roberta", "electra"])
def test_finetune_text_families(tiny, tmp_path, family):
    main(_argv(tiny, tmp_path, family, speech=False) + ["--text_pool", "mean", "--grad_checkpointing"])
    run = next(tmp_path.glob("lstm_*"))
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert log[1]["train_loss"] < log[0]["train_loss"]
    _assert_trained_and_frozen(run, tiny[family], "token_encoder.backbone.", ("embeddings.", "encoder.layer.0."),
                               "encoder.layer.1.")
    assert not any(k.startswith("waveform.") for k in _weights(run, ""))  # speech stays the frozen cache


def test_interrupted_mid_epoch_then_resumed_equals_uninterrupted(tiny, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    main(_argv(tiny, straight))
    calls = {"n": 0}
    real = engine.model_inputs

    def interrupt_in_epoch_two(batch: dict) -> dict:
        calls["n"] += 1
        if calls["n"] == 11:  # epoch 1: 7 training batches and 1 validation batch; then 2 batches into epoch 2
            raise KeyboardInterrupt
        return real(batch)
    monkeypatch.setattr(engine, "model_inputs", interrupt_in_epoch_two)
    with pytest.raises(SystemExit):
        main(_argv(tiny, tmp_path / "killed"))
    monkeypatch.setattr(engine, "model_inputs", real)
    run = next((tmp_path / "killed").glob("lstm_*"))
    assert torch.load(run / "checkpoint.pth", weights_only=True)["epoch"] == 1 and not (run / "results.json").exists()
    main(["--resume", str(run)])
    expected = next(straight.glob("lstm_*"))
    assert json.loads((run / "results.json").read_text())["test"] == \
        json.loads((expected / "results.json").read_text())["test"]
    resumed, uninterrupted = _weights(run, "waveform."), _weights(expected, "waveform.")
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)


def test_torchrun_two_gloo_processes_finetune_speech(tiny, tmp_path):
    argv = ["--data_dir", str(tiny["data_dir"]), "--save_path", str(tmp_path), "--text_encoder", tiny["bert"],
            "--text_dim", "32", "--speech_model", tiny["speech"], "--finetune_speech", "--device", "cpu"] + SMALL
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(ROOT / "main.py")] + argv, cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run = next(tmp_path.glob("lstm_*"))
    assert json.loads((run / "results.json").read_text())["processes"] == 2
    assert [json.loads(line)["epoch"] for line in (run / "log.jsonl").read_text().splitlines()] == [1, 2]


def test_unloadable_encoder_id_fails_fast_with_one_line(tiny, tmp_path):
    result = run_cli("main.py", ["--data_dir", str(tiny["data_dir"]), "--save_path", str(tmp_path),
                                 "--text_encoder", "no-such/text-encoder", "--text_dim", "32", "--finetune_text"],
                     env={"HF_HUB_OFFLINE": "1"})
    assert_one_line_error(result, "cannot load text encoder 'no-such/text-encoder'", "--text_encoder DIR")
    assert not list(tmp_path.iterdir())  # no run folder left behind


def test_waveform_encoder_freezes_what_lies_below_and_loads_fp16_weights_as_fp32(tmp_path):
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor
    from finetune import pretrained_backbones
    from model import WaveformEncoder
    folder = tmp_path / "tiny-hubert-fp16"  # saved in half precision, without time masking (no mask embedding)
    HubertModel(HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                             mask_time_prob=0.0)).half().save_pretrained(folder)
    Wav2Vec2FeatureExtractor(return_attention_mask=False).save_pretrained(folder)
    backbones = pretrained_backbones(str(folder), None)
    assert {p.dtype for p in backbones.speech.parameters()} == {torch.float32}
    encoder = WaveformEncoder(backbones.speech, backbones.masked, backbones.normalize, freeze_layers=1,
                              time_mask=0.5).train()
    waves = torch.randn(3, 16000)
    encoder(waves, torch.tensor([16000, 12000, 8000])).sum().backward()
    trained = {n for n, p in encoder.backbone.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert trained and all(n.startswith("encoder.layers.1.") for n in trained), sorted(trained)
    assert encoder.backbone.masked_spec_embed.shape == (32,)
