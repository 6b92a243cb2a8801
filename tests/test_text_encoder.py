import json

import numpy as np
import pandas as pd
import pytest
import sentencepiece as spm
import torch

from dataset import Corpus
from errors import PretrainedError
from preprocess import preprocess
from text_encoder import KoBertTokenizer, load_embeddings, transformer_embeddings


@pytest.fixture(scope="module")
def spiece(demo_dir, tmp_path_factory):
    """A sentencepiece model with KoBERT's special ids ([UNK]=0, [PAD]=1, [CLS]=2, [SEP]=3, [MASK]=4),
    trained on the demo transcripts."""
    texts = [t for t in pd.read_csv(demo_dir / "df_speaker.csv", keep_default_na=False)["text"] if t]
    prefix = tmp_path_factory.mktemp("sp") / "spiece"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts + ["1,000원 12,5 3,"]), model_prefix=str(prefix), vocab_size=250,
        unk_piece="[UNK]", pad_id=1, pad_piece="[PAD]", bos_id=-1, eos_id=-1, hard_vocab_limit=False,
        user_defined_symbols=["[CLS]", "[SEP]", "[MASK]"], character_coverage=1.0, minloglevel=2)
    return prefix.with_suffix(".model")


def test_tokenizer_ids_match_kobert_rules(spiece):
    sp = spm.SentencePieceProcessor(model_file=str(spiece))
    tokenizer = KoBertTokenizer(spiece)
    assert (tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id) == (2, 3, 1)
    text = "창문 좀   닫아 줄래?"
    assert tokenizer.encode(text) == [2] + sp.encode("창문 좀 닫아 줄래?") + [3]
    # XLNet's rule: a "<digits>," piece is split into the digits' pieces and a separate ",".
    pieces = tokenizer.pieces("12,5")
    assert "," in pieces and not any(p.endswith(",") and len(p) > 1 for p in pieces)
    assert "".join(pieces).replace("\u2581", "") == "12,5"
    long_ids = tokenizer.encode("오늘 회의는 세 시에 시작해요. " * 40)
    assert len(long_ids) == 64 and long_ids[0] == 2 and long_ids[-1] == 3
    batch = tokenizer(["네", text])
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["attention_mask"][0].sum() == len(tokenizer.encode("네"))
    assert (batch["input_ids"][0][batch["attention_mask"][0] == 0] == 1).all()  # [PAD]


def test_tiny_local_kobert_through_the_real_loading_path(spiece, tmp_path):
    from transformers import BertConfig, BertModel
    folder = tmp_path / "tiny-kobert"  # a folder named like KoBERT takes the KoBERT tokenizer path
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=260, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(folder)
    (folder / "spiece.model").write_bytes(spiece.read_bytes())
    texts = ["창문 좀 닫아 줄래?", "", "무서워. 지하철 이 호선을 타면 돼."]
    vectors = transformer_embeddings(texts, str(folder), batch_size=2, device=torch.device("cpu"))
    assert vectors.shape == (3, 32)
    assert np.all(vectors[1] == 0) and np.abs(vectors[0]).sum() > 0  # empty transcript -> zero vector
    # Masked mean of the token states, computed independently:
    model = BertModel.from_pretrained(folder).eval()
    ids = torch.tensor([KoBertTokenizer(spiece).encode(texts[2])])
    with torch.no_grad():
        expected = model(input_ids=ids).last_hidden_state.mean(1)[0].numpy()
    np.testing.assert_allclose(vectors[2], expected, rtol=1e-4, atol=1e-5)
    # A KoBERT download saved under any name (a BERT config with a spiece.model) takes the same path.
    renamed = folder.rename(tmp_path / "encoder")
    np.testing.assert_allclose(transformer_embeddings(texts, str(renamed), device=torch.device("cpu")), vectors,
                               rtol=1e-5, atol=1e-6)


def test_unavailable_model_gives_one_clear_error(tmp_path):
    with pytest.raises(PretrainedError, match="cannot load text encoder .*--text_encoder tfidf"):
        transformer_embeddings(["네"], str(tmp_path / "no-such-model"))


def test_contest_embedding_file_is_read(demo_dir, tmp_path):
    speaker = pd.read_csv(demo_dir / "df_speaker.csv", keep_default_na=False)
    ids = speaker["Segment ID"].tolist()
    contest = {f"{seg}.txt": np.full(768, i, dtype=np.float32) for i, seg in enumerate(ids)}
    np.save(tmp_path / "embedding_768.npy", contest, allow_pickle=True)
    loaded = load_embeddings(tmp_path / "embedding_768.npy")
    assert set(loaded) == set(ids) and loaded[ids[3]][0] == 3
    # And a run over a corpus whose embedding_768.npy is the contest's file uses it as given.
    data_dir = tmp_path / "corpus"
    data_dir.mkdir()
    for item in demo_dir.iterdir():
        (data_dir / item.name).symlink_to(item)
    (data_dir / "embedding_768.npy").unlink(missing_ok=True)
    np.save(data_dir / "embedding_768.npy", contest, allow_pickle=True)
    (data_dir / "preprocess_manifest.json").unlink()
    (data_dir / "preprocess_manifest.json").write_text((demo_dir / "preprocess_manifest.json").read_text())
    preprocess(data_dir, "tfidf", 768)
    corpus = Corpus(data_dir, "speaker", 768)
    assert corpus.text[5, 0] == ids.index(corpus.table["Segment ID"][5])
    # With --cache_dir the contest's file stays where it ships, in the corpus folder, and is used from there.
    preprocess(data_dir, "tfidf", 768, cache_dir=tmp_path / "cache")
    cached = Corpus(tmp_path / "cache" / "corpus", "speaker", 768)
    np.testing.assert_array_equal(cached.text, corpus.text)


def test_tfidf_embeddings_are_saved_with_their_ids(demo_dir):
    meta = json.loads((demo_dir / "embedding_16.json").read_text())
    vectors = np.load(demo_dir / "embedding_16.npy")
    assert meta["encoder"] == "tfidf" and len(meta["ids"]) == len(vectors) and vectors.shape[1] == 16
    assert np.abs(vectors).sum(1).min() == 0  # the markers-only transcript
    assert (np.abs(vectors).sum(1) > 0).mean() > 0.95
