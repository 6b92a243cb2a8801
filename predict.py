"""Predict emotion, arousal and valence for your own recordings with a trained run.

    python predict.py --run exp/<run> --wav a.wav [--text "..." | --txt a.txt]
    python predict.py --run exp/<run> --input_dir DIR        # every wav (+ same-stem .txt), each on its own
    python predict.py --run exp/<run> --dialogue DIR         # the files in sorted order form one dialogue
    ... [--out predictions.csv | predictions.json]

Audio of any sample rate, mono or stereo, any length (the first 10 s are used, as in evaluation).
Text goes through the run's own text encoder; no text means a zero embedding.
"""
import argparse
import json
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import torch

from constants import EMOTIONS
from dataset import assemble_batch, context_windows
from engine import MODEL_INPUTS
from main import load_trained_model
from preprocess import CorpusError, clean_transcript, decode_text, default_text_encoder, load_audio, log_mel
from text_encoder import embedding_paths, tfidf_embeddings, transformer_embeddings


def load_run(run_dir: Path, device: torch.device) -> tuple[torch.nn.Module, argparse.Namespace]:
    if not (run_dir / "best.pth").exists():
        raise SystemExit(f"error: {run_dir} has no best.pth (not a finished run folder)")
    model, args, _ = load_trained_model(run_dir / "best.pth", device)
    return model, args


def embed(texts: list[str], args: argparse.Namespace) -> np.ndarray:
    """The run's own sentence encoder: the fitted tf-idf of its corpus, or its transformer."""
    encoder = args.text_encoder or default_text_encoder(args.data_dir)
    if encoder == "tfidf":
        pipeline_path = embedding_paths(args.data_dir, args.text_dim)[2]
        if not pipeline_path.exists():
            raise SystemExit(f"error: the run's tf-idf encoder {pipeline_path} is missing; run preprocess.py again")
        return tfidf_embeddings(texts, joblib.load(pipeline_path), args.text_dim)
    return transformer_embeddings(texts, encoder)


def collect_inputs(args: argparse.Namespace) -> tuple[list[Path], list[str | None], bool]:
    """(wav paths, explicit texts or None to look for a same-stem .txt, whether they form a dialogue)."""
    if args.wav:
        text = args.text
        if args.txt:
            text = decode_text(Path(args.txt).read_bytes(), Path(args.txt))
        return [Path(args.wav)], [text], False
    folder = Path(args.input_dir or args.dialogue)
    wavs = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".wav")
    if not wavs:
        raise SystemExit(f"error: no .wav files in {folder}")
    return wavs, [None] * len(wavs), bool(args.dialogue)


@torch.inference_mode()
def predict(run_dir: Path, wavs: list[Path], texts: list[str | None], dialogue: bool,
            device: torch.device | None = None) -> pd.DataFrame:
    device = device or torch.device("cpu")
    model, run_args = load_run(run_dir, device)
    spectrograms, kept, kept_texts = [], [], []
    for wav, text in zip(wavs, texts):
        try:
            if text is None:
                txt = wav.with_suffix(".txt")
                text = decode_text(txt.read_bytes(), txt) if txt.exists() else ""
            spectrograms.append(log_mel(load_audio(wav)))
        except CorpusError as error:
            print(f"skipped: {error}")
            continue
        kept.append(wav)
        kept_texts.append(clean_transcript(text))
    if not kept:
        raise SystemExit("error: none of the input files could be read")
    lengths = np.array([len(s) for s in spectrograms])
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    if dialogue:  # windows over the files in order, exactly like training
        windows = context_windows(np.zeros(len(kept)), run_args.ws)
    else:  # each utterance alone: a window of padding and itself
        windows = np.full((len(kept), run_args.ws), -1)
        windows[:, -1] = np.arange(len(kept))
    batch = assemble_batch(np.concatenate(spectrograms), offsets, lengths, embed(kept_texts, run_args), windows)
    logits, av = model(*(batch[k].to(device) for k in MODEL_INPUTS))
    probs = torch.softmax(logits.float(), dim=1).cpu().numpy()
    table = pd.DataFrame({"file": [str(p) for p in kept]})
    for i, name in enumerate(EMOTIONS):
        table[name] = probs[:, i]
    table["emotion"] = [EMOTIONS[i] for i in probs.argmax(1)]
    table["arousal"], table["valence"] = av[:, 0].cpu().numpy(), av[:, 1].cpu().numpy()
    return table


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a run folder with best.pth (e.g. exp/<run>)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--wav", help="one audio file")
    source.add_argument("--input_dir", help="a folder of wavs (each with an optional same-stem .txt), each alone")
    source.add_argument("--dialogue", help="a folder of wavs (+ .txt) that form one dialogue, in sorted order")
    text = parser.add_mutually_exclusive_group()
    text.add_argument("--text", help="the transcript of --wav")
    text.add_argument("--txt", help="a .txt file with the transcript of --wav")
    parser.add_argument("--out", help="write the table to a .csv or .json file")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="(default: %(default)s)")
    args = parser.parse_args(argv)
    if (args.text or args.txt) and not args.wav:
        parser.error("--text/--txt go with --wav")
    wavs, texts, dialogue = collect_inputs(args)
    table = predict(Path(args.run), wavs, texts, dialogue, torch.device(args.device))
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    if args.out:
        out = Path(args.out)
        if out.suffix == ".json":
            out.write_text(json.dumps(table.to_dict(orient="records"), indent=1, ensure_ascii=False), encoding="utf-8")
        else:
            table.to_csv(out, index=False)
        print(f"written: {out}")
    return table


if __name__ == "__main__":
    main()
