"""Sentence embeddings of the transcripts: KoBERT (published), any Hugging Face encoder, or offline TF-IDF.

A sentence embedding is the mean of the encoder's token states under the attention mask; an
empty transcript gets the zero vector, as in the published method.
"""
from __future__ import annotations

import json
import pickle
import zipfile
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import sentencepiece as spm
import torch

from constants import DEFAULT_TEXT_DIM, TEXT_MAX_LENGTH
from errors import CorpusError, FlagError
from utils import atomic_path, first_line, from_pretrained, progress_bar

if TYPE_CHECKING:  # scikit-learn takes about a second to import: only the TF-IDF paths load it
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import Pipeline

SPIECE_UNDERLINE = "\u2581"


class KoBertTokenizer:
    """The ids of `kobert_tokenizer.KoBERTTokenizer` (an XLNetTokenizer over KoBERT's spiece.model).

    That package is only distributed from git, so this reproduces its rules: XLNet's text
    preprocessing (collapse spaces, NFKD without combining marks, case kept), sentencepiece
    pieces with XLNet's split of "<digits>," pieces, and `[CLS] pieces [SEP]`.
    """

    def __init__(self, spiece_model: str | Path, max_length: int = TEXT_MAX_LENGTH):
        self.model_file = Path(spiece_model)
        self.sp = spm.SentencePieceProcessor(model_file=str(spiece_model))
        self.max_length = max_length
        self.cls_id, self.sep_id, self.pad_id = (self.sp.piece_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]"))

    @staticmethod
    def preprocess(text: str) -> str:
        text = " ".join(text.strip().split()).replace("``", '"').replace("''", '"')
        text = unicodedata.normalize("NFKD", text)
        return "".join(c for c in text if not unicodedata.combining(c))

    def pieces(self, text: str) -> list[str]:
        out = []
        for piece in self.sp.encode(self.preprocess(text), out_type=str):
            if len(piece) > 1 and piece[-1] == "," and piece[-2].isdigit():
                sub = self.sp.encode(piece[:-1].replace(SPIECE_UNDERLINE, ""), out_type=str)
                if piece[0] != SPIECE_UNDERLINE and sub[0][0] == SPIECE_UNDERLINE:
                    sub = sub[1:] if len(sub[0]) == 1 else [sub[0][1:]] + sub[1:]
                out.extend(sub + [piece[-1]])
            else:
                out.append(piece)
        return out

    def encode(self, text: str) -> list[int]:
        ids = [self.sp.piece_to_id(p) for p in self.pieces(text)][: self.max_length - 2]
        return [self.cls_id] + ids + [self.sep_id]

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        encoded = [self.encode(t) for t in texts]
        width = max(len(e) for e in encoded)
        input_ids = torch.full((len(texts), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(texts), width), dtype=torch.long)
        for i, ids in enumerate(encoded):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            attention_mask[i, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask,
                "token_type_ids": torch.zeros_like(input_ids)}


def _is_kobert(name: str) -> bool:
    """KoBERT: a hub id or folder named like it, or a local BERT folder that carries a sentencepiece
    model (BERTs otherwise ship a WordPiece vocab.txt). Its hub tokenizer config names an XLNet
    tokenizer, whose transformers conversion maps Korean to [UNK], so it must take this path."""
    folder = Path(name)
    if "kobert" in folder.name.lower():
        return True
    config = folder / "config.json"
    return (folder / "spiece.model").exists() and config.exists() and \
        json.loads(config.read_text(encoding="utf-8")).get("model_type") == "bert"


def _load_text_part(name: str, load):
    """`load(cache_only)` of a part (config, tokenizer, weights) of the text encoder `name`, or its one-line error."""
    return from_pretrained("text encoder", name, "--text_encoder", load, ", or use the offline --text_encoder tfidf")


def text_config(name: str):
    """The encoder's config alone (cheap): fails in seconds, with one line, if `name` cannot be loaded, so it is
    called before any heavy work."""
    from transformers import AutoConfig
    return _load_text_part(name, lambda local: AutoConfig.from_pretrained(name, local_files_only=local))


def text_dim_of(name: str | None) -> int:
    """The embedding size of the sentence encoder `name`: a Hugging Face encoder's hidden size (its config, read in
    seconds), DEFAULT_TEXT_DIM for tfidf and the default encoders (None)."""
    return DEFAULT_TEXT_DIM if name in (None, "tfidf") else text_config(name).hidden_size


def check_text_dim(name: str, text_dim: int) -> None:
    """FlagError, in seconds, when --text_dim is not the hidden size of the encoder `name` (which also loads)."""
    size = text_dim_of(name)
    if size != text_dim:
        raise FlagError(f"--text_dim {text_dim} is not the hidden size {size} of --text_encoder {name}; drop --text_dim "
                        f"(it is taken from the encoder) or pass --text_dim {size}")


def load_text_model(name: str, dtype: torch.dtype | None = None):
    """The encoder's network (weights in `dtype` if given, else as saved); one line if unavailable."""
    from transformers import AutoModel
    return _load_text_part(name, lambda local: AutoModel.from_pretrained(
        name, local_files_only=local, **({"dtype": dtype} if dtype is not None else {})))


def load_tokenizer(name: str):
    """The tokenizer of a Hugging Face id or local folder (KoBERT's through `KoBertTokenizer`); one clear error if
    unavailable."""
    from huggingface_hub import hf_hub_download
    from transformers import AutoTokenizer
    if _is_kobert(name):
        return _load_text_part(name, lambda local: KoBertTokenizer(
            Path(name) / "spiece.model" if Path(name).is_dir()
            else hf_hub_download(name, "spiece.model", local_files_only=local)))
    return _load_text_part(name, lambda local: AutoTokenizer.from_pretrained(name, local_files_only=local))


def tokenize(tokenizer, texts: list[str], max_length: int = TEXT_MAX_LENGTH) -> dict[str, torch.Tensor]:
    """{"input_ids", "attention_mask"} (N, longest up to `max_length`) of `texts`, padded."""
    if isinstance(tokenizer, KoBertTokenizer):
        batch = tokenizer(texts)
    else:
        tokenizer.padding_side = "right"  # the token cache keeps lengths: the tokens come first
        batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {k: batch[k] for k in ("input_ids", "attention_mask")}


def load_transformer(name: str, device: torch.device):
    """(tokenizer, model) for a Hugging Face id or a local folder; one clear error if unavailable."""
    return load_tokenizer(name), load_text_model(name).to(device).eval()


@torch.inference_mode()
def transformer_embeddings(texts: list[str], name: str, batch_size: int = 64,
                           device: torch.device | None = None) -> np.ndarray:
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer, model = load_transformer(name, device)
    hidden = model.config.hidden_size
    out = np.zeros((len(texts), hidden), dtype=np.float32)
    nonempty = [i for i, t in enumerate(texts) if t.strip()]
    for start in progress_bar(range(0, len(nonempty), batch_size), desc=f"embed {Path(name).name}", unit="batch"):
        rows = nonempty[start:start + batch_size]
        batch = {k: v.to(device) for k, v in tokenize(tokenizer, [texts[i] for i in rows]).items()}
        states = model(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).float()
        out[rows] = ((states * mask).sum(1) / mask.sum(1)).cpu().numpy()
    return out


def _tfidf_vectorizer(vocabulary: dict[str, int] | None = None) -> TfidfVectorizer:
    from sklearn.feature_extraction.text import TfidfVectorizer
    return TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3), sublinear_tf=True, vocabulary=vocabulary)


def fit_tfidf(texts: list[str], dim: int, seed: int = 0) -> Pipeline:
    """Character n-gram TF-IDF + truncated SVD: an offline encoder for the demo (no download)."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.pipeline import Pipeline
    vectorizer = _tfidf_vectorizer()
    features = vectorizer.fit_transform([t for t in texts if t.strip()])
    # SVD rank is bounded by the corpus; columns past it are zero-filled in tfidf_embeddings.
    rank = max(1, min(dim, features.shape[0] - 1, features.shape[1] - 1))
    return Pipeline([("tfidf", vectorizer), ("svd", TruncatedSVD(rank, random_state=seed))]).fit(
        [t for t in texts if t.strip()])


def tfidf_embeddings(texts: list[str], pipeline: Pipeline, dim: int) -> np.ndarray:
    out = np.zeros((len(texts), dim), dtype=np.float32)
    nonempty = [i for i, t in enumerate(texts) if t.strip()]
    if nonempty:
        reduced = pipeline.transform([texts[i] for i in nonempty])
        out[nonempty, : reduced.shape[1]] = reduced
    return out


def embedding_paths(folder: str | Path, dim: int) -> tuple[Path, Path, Path]:
    """(vectors .npy, metadata .json with ids and encoder, base name of the fitted TF-IDF: `save_tfidf`)."""
    base = Path(folder) / f"embedding_{dim}"
    return base.with_suffix(".npy"), base.with_suffix(".json"), base.with_suffix(".tfidf")


TFIDF_FORMAT = "tfidf-char_wb-1-3+svd/1"


def save_tfidf(pipeline: Pipeline, base: Path) -> None:
    """The fitted TF-IDF + SVD as data, not a pickle: `<base>.npz` (idf, SVD components) and `<base>.json`
    (the vocabulary), so that loading a file someone else wrote can never run code."""
    vectorizer, svd = pipeline.named_steps["tfidf"], pipeline.named_steps["svd"]
    with atomic_path(base.with_name(base.name + ".npz")) as tmp, open(tmp, "wb") as f:
        np.savez(f, idf=vectorizer.idf_, components=svd.components_)
    with atomic_path(base.with_name(base.name + ".json")) as tmp:
        tmp.write_text(json.dumps({"format": TFIDF_FORMAT, "vocabulary": {k: int(v) for k, v in
                                                                          vectorizer.vocabulary_.items()}},
                                  ensure_ascii=False), encoding="utf-8")


def load_tfidf(base: Path) -> Pipeline:
    """The pipeline `save_tfidf` wrote (arrays and a vocabulary only: no pickle is read); CorpusError, one line,
    for files that are damaged, of another format, or hold pickled objects."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.pipeline import Pipeline
    try:
        meta = json.loads(base.with_name(base.name + ".json").read_text(encoding="utf-8"))
        if meta.get("format") != TFIDF_FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {TFIDF_FORMAT!r}")
        with np.load(base.with_name(base.name + ".npz"), allow_pickle=False) as arrays:
            vectorizer = _tfidf_vectorizer(meta["vocabulary"])
            vectorizer.idf_ = arrays["idf"]
            svd = TruncatedSVD(len(arrays["components"]))
            svd.components_ = arrays["components"]
    except (OSError, ValueError, KeyError, AttributeError, zipfile.BadZipFile) as error:  # JSONDecodeError too
        raise CorpusError(f"{base}.npz/.json is not a TF-IDF pipeline saved by this repo ({first_line(error)})") \
            from None
    return Pipeline([("tfidf", vectorizer), ("svd", svd)])


def tfidf_exists(base: Path) -> bool:
    return all(base.with_name(base.name + suffix).exists() for suffix in (".npz", ".json"))


def load_embeddings(npy_path: str | Path) -> dict[str, np.ndarray]:
    """Segment ID -> embedding, from this repo's file or the contest's pickled dict {"<SegID>.txt": vec}."""
    npy_path = Path(npy_path)
    meta_path = npy_path.with_suffix(".json")
    if meta_path.exists():
        ids = json.loads(meta_path.read_text(encoding="utf-8"))["ids"]
        return dict(zip(ids, np.load(npy_path, mmap_mode="r")))
    try:
        # The contest file is a pickle: only load one you trust.
        contest = np.load(npy_path, allow_pickle=True).item()
    except (ValueError, pickle.UnpicklingError, AttributeError) as error:
        raise CorpusError(f"{npy_path} has no {meta_path.name} and is not the contest's "
                          f"pickled dict of embeddings ({error})") from None
    return {Path(k).stem: np.asarray(v, dtype=np.float32).reshape(-1) for k, v in contest.items()}
