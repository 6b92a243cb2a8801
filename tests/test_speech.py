"""Pretrained speech encoders (--speech_model) on tiny randomly initialised models saved with
save_pretrained: extraction and its cache, resume after an interruption, training, --test_only,
predict.py from another directory, the baseline, and a fast one-line error for a missing id."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

import baseline
import main as main_cli
import predict
import speech_features
from conftest import TEXT_DIM
from audio import load_audio
from preprocess import preprocess
from readers import segment_path
from speech_features import encode_clips, feature_source, load_speech_model
from test_bad_input import assert_one_line_error, run_cli
from test_train import TINY

TINY_LAYERS = 2
CPU = torch.device("cpu")


def save_tiny(folder, family: str):
    """A randomly initialised model of `family` with its feature extractor, as a hub folder would hold it."""
    from transformers import (HubertConfig, HubertModel, Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model,
                              WavLMConfig, WavLMModel)
    torch.manual_seed(0)  # the same weights whichever tests ran before (tolerances below depend on them)
    shape = dict(hidden_size=32, num_hidden_layers=TINY_LAYERS, num_attention_heads=2, intermediate_size=64,
                 conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, vocab_size=10)
    if family == "wav2vec2":  # group-norm CNN: the extractor gives no attention mask (like wav2vec2-base)
        model = Wav2Vec2Model(Wav2Vec2Config(**shape))
        extractor = Wav2Vec2FeatureExtractor(return_attention_mask=False)
    else:  # layer-norm CNN with attention masks (like WavLM/HuBERT large)
        model = (WavLMModel(WavLMConfig(**shape, feat_extract_norm="layer")) if family == "wavlm"
                 else HubertModel(HubertConfig(**shape)))
        extractor = Wav2Vec2FeatureExtractor(return_attention_mask=True)
    model.save_pretrained(folder)
    extractor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_wav2vec2(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("w2v") / "tiny-wav2vec2", "wav2vec2")


@pytest.fixture(scope="module")
def tiny_wavlm(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("wavlm") / "tiny-wavlm", "wavlm")


@pytest.fixture(scope="module")
def speech_corpus(raw_demo, tmp_path_factory, tiny_wavlm):
    """The demo corpus preprocessed with tf-idf text and the tiny WavLM's features."""
    data_dir = tmp_path_factory.mktemp("speech") / "KEMDy19"
    shutil.copytree(raw_demo, data_dir)
    preprocess(data_dir, "tfidf", TEXT_DIM, speech=feature_source(str(tiny_wavlm)))
    return data_dir


def test_cache_layout_and_values(speech_corpus, tiny_wavlm):
    npy_path, meta_path = feature_source(str(tiny_wavlm)).paths(speech_corpus)
    meta = json.loads(meta_path.read_text())
    rows = np.load(npy_path)
    layers = TINY_LAYERS + 1  # the CNN output and every transformer layer
    assert meta["settings"]["layers"] == layers and meta["settings"]["model_type"] == "wavlm"
    # The settings of the caches made before --speech_precision existed: they stay up to date; int8 is recorded.
    assert set(meta["settings"]) == {"speech_model", "revision", "model_type", "layers", "dim", "pool",
                                     "chunk_seconds", "sample_rate"}
    assert feature_source(str(tiny_wavlm), precision="int8").settings()["precision"] == "int8"
    assert rows.shape == (len(meta["ids"]) * layers, 2 * 32) and rows.dtype == np.float16
    assert meta["offsets"][:3] == [0, layers, 2 * layers] and set(meta["lengths"]) == {layers}
    # A cached utterance equals the same clip encoded on its own (what predict.py does), to float16 precision.
    extractor, model = load_speech_model(str(tiny_wavlm), CPU)
    k = len(meta["ids"]) // 2
    alone = encode_clips([load_audio(segment_path(speech_corpus, meta["ids"][k], ".wav"))], extractor, model, CPU)
    np.testing.assert_allclose(rows[k * layers:(k + 1) * layers], alone[0], rtol=2e-2, atol=2e-2)
    assert (alone[0, :, 32:] > 0).all()  # the std half is a spread, not a copy of the mean


def test_long_clip_is_encoded_in_pieces(tiny_wav2vec2, monkeypatch):
    extractor, model = load_speech_model(str(tiny_wav2vec2), CPU)
    clip = np.random.default_rng(0).standard_normal(16000 * 3).astype(np.float32)
    whole = encode_clips([clip], extractor, model, CPU)
    monkeypatch.setattr(speech_features, "CHUNK_SECONDS", 1.0)
    seen = []
    original = model.forward
    monkeypatch.setattr(model, "forward", lambda **kw: seen.append(kw["input_values"].shape) or original(**kw))
    pieces = encode_clips([clip], extractor, model, CPU)
    assert [s[-1] for s in seen] == [16000] and seen[0][0] == 3  # three 1 s pieces, never the 3 s clip
    assert pieces.shape == whole.shape
    # The statistics of the pieces together approximate those of the whole (context differs at the cuts).
    np.testing.assert_allclose(pieces[0, 0, :32], whole[0, 0, :32], atol=0.05)


def test_interrupted_extraction_resumes_without_redoing(raw_demo, tmp_path, tiny_wav2vec2, monkeypatch):
    data_dir = shutil.copytree(raw_demo, tmp_path / "KEMDy19")
    name = str(tiny_wav2vec2)
    monkeypatch.setattr(speech_features, "BATCH_SECONDS", 20.0)  # several batches on the small corpus
    encoded, original = [], speech_features.encode_clips

    def interrupted_after_two_batches(audios, *rest):
        if len(encoded) == 2:
            raise KeyboardInterrupt
        encoded.append(len(audios))
        return original(audios, *rest)

    monkeypatch.setattr(speech_features, "encode_clips", interrupted_after_two_batches)
    with pytest.raises(KeyboardInterrupt):
        preprocess(data_dir, "tfidf", TEXT_DIM, speech=feature_source(name))
    npy_path, meta_path = feature_source(name).paths(data_dir)
    progress = json.loads(npy_path.with_name(npy_path.name + ".progress.json").read_text())
    assert progress["done"] == sum(encoded) and not npy_path.exists() and not meta_path.exists()
    total = len(progress["plan"]["ids"])

    first_part, encoded[:] = sum(encoded), []
    monkeypatch.setattr(speech_features, "encode_clips", lambda audios, *rest: encoded.append(len(audios))
                        or original(audios, *rest))
    preprocess(data_dir, "tfidf", TEXT_DIM, speech=feature_source(name))
    assert sum(encoded) == total - first_part  # the done part was not encoded again
    resumed = np.load(npy_path)
    encoded[:] = []
    preprocess(data_dir, "tfidf", TEXT_DIM, speech=feature_source(name))
    assert encoded == []  # up to date: nothing to do

    fresh = shutil.copytree(raw_demo, tmp_path / "fresh" / "KEMDy19")
    preprocess(fresh, "tfidf", TEXT_DIM, speech=feature_source(name))
    np.testing.assert_array_equal(resumed, np.load(feature_source(name).paths(fresh)[0]))


def test_train_test_only_predict_and_baseline(speech_corpus, tiny_wavlm, tmp_path):
    name = str(tiny_wavlm)
    main_cli.main(["--data_dir", str(speech_corpus), "--save_path", str(tmp_path), "--speech_model", name] + TINY)
    run = next(tmp_path.glob("lstm_*"))
    results = json.loads((run / "results.json").read_text())
    assert json.loads((run / "args.json").read_text())["speech_model"] == name
    assert results["speech_model"]["speech_model"] == name and results["speech_model"]["layers"] == TINY_LAYERS + 1
    weights = results["speech_layer_weights"]
    assert len(weights) == TINY_LAYERS + 1 and sum(weights) == pytest.approx(1, abs=1e-3)
    main_cli.main(["--test_only", str(run)])
    assert json.loads((run / "results_test_only.json").read_text())["test"]["macro_f1"] == \
        pytest.approx(results["test"]["macro_f1"])

    other_dir = tmp_path / "elsewhere"
    other_dir.mkdir()
    wav = sorted((speech_corpus / "wav" / "Session13").rglob("*.wav"))[0]
    cwd = os.getcwd()
    os.chdir(other_dir)
    try:
        table = predict.main(["--run", str(run), "--wav", str(wav), "--text", "안녕하세요"])
    finally:
        os.chdir(cwd)
    assert len(table) == 1 and table[["neutral", "happy", "surprise", "angry", "sad", "disgust", "fear"]].sum(
        axis=1).iloc[0] == pytest.approx(1, abs=1e-5)

    baseline.main(["--data_dir", str(speech_corpus), "--save_path", str(tmp_path / "bl"), "--speech_model", name,
                   "--text_dim", str(TEXT_DIM)])
    features = json.loads(next((tmp_path / "bl").glob("baseline_*/results.json")).read_text())["features"]
    assert features == {"speech": 64, "text": TEXT_DIM}


def test_missing_speech_model_fails_before_any_work_with_one_line(corpus_copy):
    result = run_cli("preprocess.py", ["--data_dir", str(corpus_copy), "--text_encoder", "tfidf",
                                       "--speech_model", "no-such/speech-model"], env={"HF_HUB_OFFLINE": "1"})
    assert_one_line_error(result, "cannot load speech model 'no-such/speech-model'", "--speech_model DIR")
    assert not (corpus_copy / "features").exists()  # checked before a single spectrogram
