"""Transcripts from speech (--asr), on a tiny Whisper the tests build (a byte-level tokenizer, a random model whose
decoder always says "a", converted by ctranslate2's own converter): utterances without a transcript get one, cached
with the model and decoding settings and never made twice; the corpus's own transcripts win and its files are never
changed; runs record which texts came from ASR; predict.py transcribes bare wavs for a run that reads text."""
import json
import os
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import asr
import main as main_cli
import preprocess as preprocess_cli
import predict
from errors import PretrainedError
from preprocess import preprocess
from test_bad_input import one_line_error_here
from test_corpora import voice

SAID = "a" * 224  # what the tiny model says of any clip: its decoder's one token, until the 224-token limit


def save_tiny_asr(folder):
    """A random Whisper whose decoder's last layer norm always points at the token "a", with a byte-level tokenizer
    holding Whisper's special tokens, converted to CTranslate2 (the form faster-whisper reads)."""
    from ctranslate2.converters import TransformersConverter
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration
    tokenizer = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))},
                                     merges=[]))
    tokenizer.pre_tokenizer, tokenizer.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tokenizer.add_special_tokens(["<|endoftext|>", "<|startoftranscript|>", "<|translate|>", "<|transcribe|>",
                                  "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
                                 + [f"<|{k * 0.02:.2f}|>" for k in range(1501)])
    end = tokenizer.token_to_id("<|endoftext|>")
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(WhisperConfig(
        vocab_size=tokenizer.get_vocab_size(), d_model=16, encoder_layers=2, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        pad_token_id=end, bos_token_id=end, eos_token_id=end,
        decoder_start_token_id=tokenizer.token_to_id("<|startoftranscript|>")))
    decoder = model.model.decoder
    with torch.no_grad():  # a constant last state, pointing at "a": the decoder says "a" whatever it hears
        decoder.layer_norm.weight.zero_()
        decoder.layer_norm.bias.copy_(10 * decoder.embed_tokens.weight[tokenizer.token_to_id("a")])
    hf = folder.parent / f"{folder.name}-hf"
    model.save_pretrained(hf)
    WhisperFeatureExtractor().save_pretrained(hf)
    tokenizer.save(str(hf / "tokenizer.json"))
    TransformersConverter(str(hf), copy_files=["tokenizer.json"]).convert(str(folder), quantization="float32")
    return folder


@pytest.fixture(scope="module")
def tiny_asr(tmp_path_factory):
    return str(save_tiny_asr(tmp_path_factory.mktemp("asr") / "tiny-whisper"))


def manifest_corpus(root, texts: bool = True):
    """4 speakers x 3 utterances; with `texts`, each speaker's first two utterances have a .txt of their own and the
    third none."""
    rows = ["path,emotion,speaker"]
    for s in range(4):
        for k in range(3):
            voice(root / f"s{s}" / f"{k}.wav", 140 + 60 * k, seed=3 * s + k)
            if texts and k < 2:
                (root / f"s{s}" / f"{k}.txt").write_text(f"my own words {s} {k}", encoding="utf-8")
            rows.append(f"s{s}/{k}.wav,{'abc'[k]},s{s}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


def emodb_corpus(root):
    """EmoDB's layout (wav/SSTTTEV.wav), which ships no transcripts: 4 speakers x 3 emotions."""
    for s, speaker in enumerate(("03", "08", "09", "10")):
        for k, letter in enumerate("WAN"):
            voice(root / "wav" / f"{speaker}a01{letter}a.wav", 140 + 60 * k, seed=3 * s + k)
    return root


def snapshot(folder) -> dict:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_only_utterances_without_a_transcript_are_transcribed_once_and_the_corpus_s_own_win(tiny_asr, tmp_path,
                                                                                            capsys):
    root = manifest_corpus(tmp_path / "corpus")
    own = snapshot(root)
    recognizer = asr.Recognizer(tiny_asr)
    preprocess(root, "tfidf", 8, cache_dir=tmp_path / "cache", asr=recognizer)
    table = pd.read_csv(tmp_path / "cache" / "corpus" / "annotation.csv", keep_default_na=False).set_index("Segment ID")
    cache = json.loads(asr.cache_path(tmp_path / "cache" / "corpus", recognizer).read_text())
    assert sorted(cache["utterances"]) == [f"s{s}/2" for s in range(4)]  # the third of each: no text, no .txt
    assert {e["text"] for e in cache["utterances"].values()} == {SAID}
    assert cache["settings"]["beam_size"] == 5 and cache["settings"]["revision"].startswith("files:")
    assert table.loc["s1/0", "text"] == "my own words 1 0" and table.loc["s1/1", "text"] == "my own words 1 1"
    assert "4 utterances transcribed" in capsys.readouterr().out
    assert snapshot(root) == own  # the corpus's files, untouched
    # Up to date: nothing transcribed again, the model named through a link or a relative path included; a changed
    # wav alone is.
    (tmp_path / "link").symlink_to(tiny_asr)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(asr.Recognizer, "open", lambda *a: pytest.fail("transcribed again"))
        for name in (tiny_asr, str(tmp_path / "link"), os.path.relpath(tiny_asr)):
            preprocess(root, "tfidf", 8, cache_dir=tmp_path / "cache", asr=asr.parse_asr(name, "auto", False))
    os.utime(root / "s2" / "2.wav", ns=(1, 1))
    preprocess(root, "tfidf", 8, cache_dir=tmp_path / "cache", asr=recognizer)
    assert "1 utterances transcribed" in capsys.readouterr().out
    # --asr_replace: ASR text everywhere, scored against the corpus's own (every word substituted or missing).
    preprocess(root, "tfidf", 8, cache_dir=tmp_path / "cache", asr=recognizer, asr_replace=True)
    assert "ASR word error rate against the corpus's own transcripts: 1.000 (8 utterances)" in capsys.readouterr().out
    assert snapshot(root) == own


def test_word_error_rate_by_hand():
    # "the" for "a": one substitution in six words; case and punctuation are not errors.
    assert asr.word_error_rate(["Kids are talking by the door"], ["kids are talking by a door."]) == pytest.approx(
        1 / 6)
    assert asr.word_error_rate(["say the word bath", "a b"], ["say the word", "a b c"]) == pytest.approx(2 / 6)


def test_emodb_trains_on_asr_text_the_run_records_it_and_predict_transcribes_bare_wavs(tiny_asr, tmp_path):
    root = emodb_corpus(tmp_path / "EmoDB")  # the README's command: preprocess.py --asr, then audio,text
    argv = ["--data_dir", str(root), "--save_path", str(tmp_path / "exp"), "--modalities", "audio,text",
            "--text_dim", "8", "--hidden_size", "8", "--num_layers", "1", "--audio_dim", "8", "--epochs", "1",
            "--functionals", "logmel", "--ws", "1", "--test_split", "10"]
    one_line_error_here(main_cli.main, argv, "--modalities audio,text: the corpus has no transcripts")
    preprocess_cli.main(["--data_dir", str(root), "--asr", tiny_asr])  # then runs read its transcripts
    one_line_error_here(main_cli.main, argv + ["--asr", "none"], "the corpus has no transcripts")
    main_cli.main(argv)
    run = next((tmp_path / "exp").iterdir())
    record = json.loads((run / "corpus.json").read_text())["asr"]
    assert record["model"] == tiny_asr and len(record["utterances"]) == 12 and not record["replace"]
    wavs = tmp_path / "new"
    wavs.mkdir()
    voice(wavs / "x.wav", 200)
    table = predict.main(["--run", str(run), "--input_dir", str(wavs)])  # the run's own ASR model, still there
    assert table["transcript"].tolist() == [SAID] and "transcript by ASR (tiny-whisper)" in table["note"][0]
    off = predict.main(["--run", str(run), "--input_dir", str(wavs), "--asr", "none"])  # never transcribes
    assert off["transcript"].tolist() == [""] and "no transcript (audio alone)" in off["note"][0]
    (wavs / "x.txt").write_text("", encoding="utf-8")  # an empty transcript of the user's: kept, not transcribed
    silent = predict.main(["--run", str(run), "--input_dir", str(wavs)])
    assert silent["transcript"].tolist() == [""]
    classes = list(table.columns[1:table.columns.get_loc("emotion")])
    assert not np.allclose(table[classes].to_numpy(), silent[classes].to_numpy())  # the text branch read it


def test_an_asr_process_that_ends_is_one_line(tiny_asr):
    with asr.Recognizer(tiny_asr).open() as transcribe:
        assert transcribe(np.zeros(1600, np.float32)) == (SAID, "en")
        for task in Path("/proc/self/task").iterdir():  # this process's children: the ASR process
            for pid in (task / "children").read_text().split():
                os.kill(int(pid), signal.SIGKILL)
        with pytest.raises(PretrainedError, match="the ASR process ended"):
            transcribe(np.zeros(1600, np.float32))


def test_a_folder_that_is_not_a_whisper_model_is_one_line(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(PretrainedError, match="is not a faster-whisper model folder"):
        asr.Recognizer(str(plain)).settings()
    (plain / "model.bin").write_bytes(b"\0" * 32)
    with pytest.raises(PretrainedError, match="cannot transcribe with it"):
        with asr.Recognizer(str(plain)).open() as transcribe:
            transcribe(np.zeros(16000, np.float32))
    root = manifest_corpus(tmp_path / "corpus")
    one_line_error_here(main_cli.main, ["--data_dir", str(root), "--asr_replace"], "--asr_replace and --asr_language "
                                                                                   "go with --asr MODEL")
