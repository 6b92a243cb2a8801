"""Predict emotion, arousal and valence for your own recordings with a trained run.

    python predict.py --run exp/<run> --wav a.wav [--text "..." | --txt a.txt]
    python predict.py --run exp/<run> --input_dir DIR        # every wav (+ same-stem .txt), each on its own
    python predict.py --run exp/<run> --dialogue DIR         # the files, in name order, form one dialogue
    ... [--out predictions.csv | predictions.json]

Audio of any sample rate, mono or stereo, any length (the first 10 s are used, as in evaluation; a
--speech_model run encodes the whole clip with the run's speech model, as its preprocessing did; a
--finetune_speech run its first --max_seconds with the run's fine-tuned encoder, context utterances of a
--dialogue too, where training took their frozen features: an approximation).
Text goes through the run's own text encoder (saved in the run folder), NFC-normalised as in training;
no text means a zero embedding. A wav's transcript is the .txt of the same stem (names compared in NFC,
so a decomposed macOS name matches). The `note` column names silent clips, channels that cancel, and
wavs predicted without a transcript. Only the run folder is needed: no corpus, no network for a TF-IDF run.
"""
import argparse
import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from asr import ASR_OFF, Recognizer, parse_asr
from audio import log_mel, read_audio
from constants import N_FFT, SAMPLE_RATE
from dataset import Frames, assemble_batch, context_windows, crop, pad_waves
from ensemble import MEMBERS
from errors import CorpusError, FlagError, RunFolderError, load_json, one_line_errors
from finetune import run_tokenizer
from functionals import band_statistics, clip_opensmile
from model import model_inputs
import normalization
from normalization import FrameNorm, below_floor, speaker_frame_norm, speaker_zscores
from options import Parser
from readers import clean_transcript, decode_text, hidden, natural_key, nfc
from speech_features import LogMel, feature_source
from text_encoder import tokenize
from trained_run import check_finished, load_trained_model, run_recognizer, run_text_encoder, trained_on_demo
from utils import atomic_path, progress_bar


OUT_SUFFIXES = (".csv", ".json")  # what --out writes
RUN_RECORDS = ("args.json", "best.pth", "checkpoint.pth", "runs.json", MEMBERS)  # a folder holding one is a run's


def read_transcript(path: Path) -> str:
    if not path.exists():
        raise FlagError(f"--txt {path} does not exist")
    if not path.is_file():
        raise FlagError(f"--txt {path} is a folder, not a transcript file")
    return decode_text(path.read_bytes(), path)


def same_stem_transcript(wav: Path) -> Path | None:
    """The .txt beside `wav` with the same stem, the names compared in NFC (macOS writes them decomposed)."""
    stem = nfc(wav.stem)
    return next((p for p in wav.parent.iterdir() if p.suffix.lower() == ".txt" and nfc(p.stem) == stem), None)


def collect_inputs(args: argparse.Namespace) -> tuple[list[Path], list[str | None], bool]:
    """(wav paths, explicit texts or None to look for a same-stem .txt, whether they form a dialogue)."""
    if args.wav:
        if not Path(args.wav).is_file():
            raise FlagError(f"--wav {args.wav}: no such file")
        return [Path(args.wav)], [read_transcript(Path(args.txt)) if args.txt else args.text], False
    folder = Path(args.input_dir or args.dialogue)
    if not folder.is_dir():
        raise FlagError(f"{folder} is not a folder")
    skipped = [p.name for p in folder.iterdir() if hidden(p.name)]
    if skipped:
        print(f"skipped {len(skipped)} hidden files and macOS leftovers in {folder} ({', '.join(sorted(skipped)[:3])}"
              f"{', ...' if len(skipped) > 3 else ''})")
    wavs = sorted((p for p in folder.iterdir() if p.suffix.lower() == ".wav" and not hidden(p.name)),
                  key=lambda p: natural_key(p.name))
    if not wavs:
        raise CorpusError(f"no .wav files in {folder}")
    return wavs, [None] * len(wavs), bool(args.dialogue)


def audio_features(audios: list[np.ndarray], run_args: argparse.Namespace, trained_on: dict,
                   device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """The run's audio features of the clips (its feature source: log-mel, or its --speech_model as its cache was
    made), packed like the training cache -> (rows, rows per clip)."""
    source = feature_source(run_args.speech_model, run_args.speech_precision, run_args.whisper_input)
    if run_args.speech_model:
        revision = source.settings()["revision"]
        if revision != trained_on["revision"]:
            print(f"warning: --speech_model {run_args.speech_model} is now revision {revision}, the run was trained "
                  f"on features of revision {trained_on['revision']}")
    blocks = source.encode(audios, device)
    return np.concatenate(blocks), np.array([len(b) for b in blocks])


@dataclass
class Inputs:
    """The readable recordings of a call: their audio (16 kHz mono), file, transcript (None: none found) and what
    the user should know of each (silent, channels that cancel, an unreadable transcript)."""
    audios: list[np.ndarray]
    files: list[Path]
    texts: list[str | None]
    remarks: list[list[str]]


def read_inputs(wavs: list[Path], texts: list[str | None]) -> Inputs:
    """The readable wavs (`texts[i]` None: its same-stem .txt, if any); the unreadable ones are named and skipped."""
    inputs, skipped = Inputs([], [], [], []), []
    for wav, text in zip(wavs, texts):
        try:
            audio, remarks = read_audio(wav)
        except CorpusError as error:
            skipped.append(str(error))
            continue
        if text is None:
            txt = same_stem_transcript(wav)
            try:
                text = decode_text(txt.read_bytes(), txt) if txt else None
            except CorpusError as error:
                remarks.append(str(error))
        inputs.audios.append(audio)
        inputs.files.append(wav)
        inputs.texts.append(None if text is None else clean_transcript(text))
        inputs.remarks.append(remarks)
    for reason in skipped:
        print(f"skipped: {reason}")
    if not inputs.files:
        raise CorpusError("none of the input files could be read")
    return inputs


def transcribe_missing(inputs: Inputs, recognizer: Recognizer) -> None:
    """The recordings without a transcript get one from `recognizer` (--asr, or the run's own), noted in their
    remarks; the others keep theirs."""
    missing = [i for i, text in enumerate(inputs.texts) if text is None]
    if not missing:
        return
    with recognizer.open() as transcribe:
        for i in progress_bar(missing, desc="ASR", unit="file"):
            inputs.texts[i] = transcribe(inputs.audios[i])[0]
            inputs.remarks[i].append(f"transcript by ASR ({Path(recognizer.model).name})")


def run_functionals(names: tuple[str, ...], audios: list[np.ndarray]) -> np.ndarray:
    """(clips, F): the utterance functionals a run reads (functionals.py), computed as its corpus's were."""
    blocks = []
    for name in names:
        if name == "logmel":
            blocks.append(np.stack([band_statistics(log_mel(audio)) for audio in audios]))
        else:
            blocks.append(np.stack([clip_opensmile(audio, name) for audio in audios]))
    return np.concatenate(blocks, axis=1)


def speakers_of(files: list[Path], pattern: str | None) -> np.ndarray:
    """Each recording's speaker: the first group (or the whole match) of `pattern` (--speaker_pattern, a regular
    expression searched in the file name); without a pattern the recordings of one call are one speaker, "". A name
    the pattern does not match is a speaker of its own (named in its note)."""
    if pattern is None:
        return np.full(len(files), "", dtype=object)
    found = [re.search(pattern, f.name) for f in files]
    return np.array([(m.group(1) if m.groups() else m.group(0)) if m else f"{f.name} (no match)"
                     for m, f in zip(found, files)], dtype=object)


def standardization(feature_norm: str, frames: np.ndarray, offsets: np.ndarray, lengths: np.ndarray,
                    functionals: np.ndarray | None, statistics: dict | None, rows_per_clip: int,
                    speakers: np.ndarray | None) -> tuple[FrameNorm | None, np.ndarray | None, list[str]]:
    """How a run's inputs are standardised for new recordings -> (the frames' FrameNorm, the functionals, a note per
    recording). A run trained on speaker z-scores (--feature_norm speaker) standardises each recording with the
    statistics of its speaker's recordings given (`speakers`, see speakers_of), by training's rule
    (normalization.speaker_frame_norm): a speaker of fewer than MIN_SPEAKER_UTTERANCES recordings, and every
    recording with `speakers` None (--normalize_with training), takes the run's training statistics instead. A run
    trained on training statistics standardises in its model."""
    if feature_norm != "speaker":
        return None, functionals, [""] * len(offsets)
    alone = speakers is None
    speakers = np.arange(len(offsets)).astype(str) if alone else speakers
    pooled = below_floor(speakers)
    if pooled.any() and statistics is None:
        raise RunFolderError(f"the run holds no training statistics (it predates them): give "
                             f"{normalization.MIN_SPEAKER_UTTERANCES} or more recordings of each speaker, which are "
                             "standardised with their own")
    fallback = {k: tuple(v.numpy() for v in pair) for k, pair in statistics.items()} if statistics else {}
    norm = speaker_frame_norm(frames, offsets, lengths, speakers, rows_per_clip, fallback.get("frames"))
    if functionals is not None:
        functionals = speaker_zscores(functionals, speakers, fallback.get("functionals"))
    counts = dict(zip(*np.unique(speakers, return_counts=True)))
    notes = []
    for speaker, rare in zip(speakers, pooled):
        whose = "its speaker's" if speaker == "" else f"speaker {speaker}'s"
        notes.append("audio standardised with the run's training statistics (--normalize_with training)" if alone
                     else f"audio standardised with the run's training statistics ({whose} recordings are fewer than "
                          f"{normalization.MIN_SPEAKER_UTTERANCES})" if rare
                     else f"audio standardised with the statistics of {whose} {counts[speaker]} recordings"
                          + (" (all the files taken as one speaker; --speaker_pattern tells speakers apart)"
                             if speaker == "" else ""))
    return norm, functionals, notes


def run_outputs(run_dir: Path, inputs: Inputs, dialogue: bool, device: torch.device, trust_pickle: bool,
                speakers: np.ndarray | None, recognizer: Recognizer | None = None) -> tuple[
                    tuple[str, ...], np.ndarray, np.ndarray | None, list[int], list[list[str]]]:
    """One run's outputs for the recordings -> (its classes, probabilities (kept, classes), arousal/valence
    (kept, 2) or None, the indices of the recordings it could predict, the notes of each recording). `speakers`: each
    recording's speaker (speakers_of), None to standardise every recording with the run's training statistics; a
    run that reads text has the recordings without a transcript transcribed by `recognizer`, if given."""
    if not (run_dir / "best.pth").exists():
        raise RunFolderError(f"{run_dir} has no best.pth (not a finished run folder)")
    check_finished(run_dir)
    model, run_args, checkpoint = load_trained_model(run_dir / "best.pth", device)
    if trained_on_demo(run_dir):
        print(f"NOTE: {run_dir.name} was trained on the synthetic demo corpus: its predictions say nothing about "
              "real speech")
    config = model.config
    reads_text, reads_audio = "text" in config.modalities, "audio" in config.modalities
    if reads_text and recognizer is not None:
        transcribe_missing(inputs, recognizer)
    notes = [list(r) for r in inputs.remarks]
    kept = list(range(len(inputs.files)))
    if reads_text and not reads_audio:  # a text-only run has nothing to go on without a transcript
        kept = [i for i in kept if inputs.texts[i] is not None]
        for i in sorted(set(range(len(inputs.files))) - set(kept)):
            print(f"skipped: {inputs.files[i]}: no transcript, and {run_dir.name} reads text alone")
        if not kept:
            raise CorpusError(f"{run_dir.name} reads text alone and none of the recordings has a transcript (a "
                              "same-stem .txt, or --text/--txt)")
    elif reads_text:
        for i in kept:
            if inputs.texts[i] is None:
                notes[i].append("no transcript (audio alone)")
    audios = [inputs.audios[i] for i in kept]
    texts = [inputs.texts[i] or "" for i in kept]
    for i in kept:
        if len(inputs.audios[i]) < N_FFT and not run_args.speech_model:
            print(f"note: {inputs.files[i]} has {len(inputs.audios[i])} samples, less than one {N_FFT}-sample FFT "
                  "window: zero-padded")
    live = {}
    if config.finetune_speech:  # every clip through the run's fine-tuned encoder, in batches of 8
        clips = [crop(a, int(run_args.max_seconds * SAMPLE_RATE), None) for a in audios]
        frames = np.concatenate([model.waveform(*(v.to(device) for v in pad_waves(clips[k:k + 8]).values()))
                                 .flatten(2).flatten(0, 1).cpu().numpy() for k in range(0, len(clips), 8)])
        lengths = np.full(len(kept), config.speech_layers)
    else:
        frames, lengths = audio_features(audios, run_args, checkpoint["features"], device)
    if config.finetune_text:
        tokens = tokenize(run_tokenizer(run_dir), texts)
        live.update(tokens=tokens["input_ids"], token_mask=tokens["attention_mask"])
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    functionals = run_functionals(config.functionals, audios) if config.functional_dim else None
    if functionals is not None:
        for k in np.flatnonzero(~np.isfinite(functionals).all(1)):
            notes[kept[k]].append(f"functionals ({', '.join(config.functionals)}) not computable for a "
                                  f"{len(audios[k]) / SAMPLE_RATE:.2f}-s clip: the training mean stands in")
    statistics, speakers = checkpoint.get("statistics"), None if speakers is None else speakers[kept]
    norm, functionals, how = standardization(run_args.feature_norm, frames, offsets, lengths, functionals,
                                             statistics, max(config.speech_layers, 1), speakers)
    mel = None
    if config.fuse_logmel:  # the log-mel CNN's frames beside the speech model's rows, standardised alike
        blocks = LogMel().encode(audios)
        mel = Frames(np.concatenate(blocks), np.cumsum([0] + [len(b) for b in blocks[:-1]]),
                     np.array([len(b) for b in blocks]))
        mel.norm = standardization(run_args.feature_norm, mel.frames, mel.offsets, mel.lengths, None,
                                   statistics and {"frames": statistics["mel"]}, 1, speakers)[0]
    if reads_audio:
        for k, note in zip(kept, how):
            if note:
                notes[k].append(note)
    if dialogue:  # windows over the files in order, exactly like training
        windows = context_windows(np.zeros(len(kept)), run_args.ws)
    else:  # each utterance alone: a window of padding and itself
        windows = np.full((len(kept), run_args.ws), -1)
        windows[:, -1] = np.arange(len(kept))
    embeddings = (run_text_encoder(run_dir, config.text_dim, trust_pickle)(texts)
                  if reads_text and not config.finetune_text else np.zeros((len(kept), config.text_dim), np.float32))
    batch = {**assemble_batch(frames, offsets, lengths, embeddings, windows, norm=norm,
                              functionals=None if functionals is None else functionals.astype(np.float32), mel=mel),
             **live}
    if "bio" in config.modalities:  # new recordings come without wristband data: absent, as their masks say
        print("note: the run also reads bio-signals; none are given here (masked, as for utterances without them)")
        batch["bio"] = torch.zeros(len(kept), config.bio_dim)
    logits, av = model(**{k: v.to(device) for k, v in model_inputs(batch).items()})
    probs = torch.softmax(logits.float(), dim=1).cpu().numpy()
    return config.classes, probs, av.cpu().numpy() if config.arousal_valence else None, kept, notes


def ensemble_members(folder: Path) -> list[tuple[Path, float]]:
    """The runs predict.py combines: an ensemble folder's (ensemble.py) neural members, each fold's weights shared
    out over the folds; a run folder alone."""
    if not (folder / MEMBERS).exists():
        return [(folder, 1.0)]
    record = load_json(folder / MEMBERS)
    members = [(Path(m["run"]), m["weight"] / len(record["folds"])) for fold in record["folds"]
               for m in fold["members"] if m["model"] == "neural" and m["weight"] > 0]
    others = sum(m["model"] != "neural" for fold in record["folds"] for m in fold["members"])
    if others:
        print(f"note: {others} baseline member(s) of {folder.name} keep no model to predict with: the neural "
              "members are combined alone")
    if not members:
        raise RunFolderError(f"{folder} has no neural member with a saved model to predict with")
    return members


@torch.inference_mode()
def predict(run_dir: Path, wavs: list[Path], texts: list[str | None], dialogue: bool,
            device: torch.device | None = None, trust_pickle: bool = False,
            normalize_with: str = "files", speaker_pattern: str | None = None,
            recognizer: Recognizer | None = None, asr_off: bool = False) -> pd.DataFrame:
    """One row per readable wav (`texts[i]` None: its same-stem .txt, if any) the run (or the weighted members of
    an ensemble folder) can predict; the others are named and skipped. The `note` column names what the user
    should know of a row (silent, no transcript, the statistics its audio was standardised with and the speaker
    they took it as: `speaker_pattern`, see speakers_of...), `transcript` the text it read. Recordings without a
    transcript are transcribed by `recognizer` (--asr), else by the run's own --asr model where it is still there,
    when the run reads text; `asr_off` (--asr none): by neither."""
    device = device or torch.device("cpu")
    inputs = read_inputs(wavs, texts)
    members = ensemble_members(run_dir)
    recognizer = None if asr_off else recognizer or run_recognizer(members[0][0])
    speakers = speakers_of(inputs.files, speaker_pattern) if normalize_with == "files" else None
    outputs = [run_outputs(run, inputs, dialogue, device, trust_pickle, speakers, recognizer) for run, _ in members]
    classes, _, _, kept, _ = outputs[0]
    if any(o[0] != classes or o[3] != kept for o in outputs):
        raise RunFolderError(f"the members of {run_dir} differ in their classes or in what they can predict")
    weights = np.array([w for _, w in members]) / sum(w for _, w in members)
    probs = sum(w * o[1] for w, o in zip(weights, outputs))
    table = pd.DataFrame({"file": [str(inputs.files[i]) for i in kept]})
    for i, name in enumerate(classes):  # the corpus's own classes, as the run was trained
        table[name] = probs[:, i]
    table["emotion"] = [classes[i] for i in probs.argmax(1)]
    if outputs[0][2] is not None:
        av = sum(w * o[2] for w, o in zip(weights, outputs))
        table["arousal"], table["valence"] = av[:, 0], av[:, 1]
    table["transcript"] = [inputs.texts[i] or "" for i in kept]
    table["note"] = ["; ".join(dict.fromkeys(note for o in outputs for note in o[4][i])) for i in kept]  # all members'
    for row in table.itertuples():
        if row.note:
            print(f"note: {row.file}: {row.note}")
    return table


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = Parser(description=__doc__)
    parser.add_argument("--run", required=True, help="a run folder with best.pth (e.g. exp/<run>), or an ensemble "
                                                     "folder (ensemble.py: its neural members, weighted)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--wav", help="one audio file")
    source.add_argument("--input_dir", help="a folder of wavs (each with an optional same-stem .txt), each alone")
    source.add_argument("--dialogue", help="a folder of wavs (+ .txt) that form one dialogue, in file-name order with "
                                           "numbers compared as numbers (name them by time: 001_..., 002_...)")
    text = parser.add_mutually_exclusive_group()
    text.add_argument("--text", help="the transcript of --wav")
    text.add_argument("--txt", help="a .txt file with the transcript of --wav")
    parser.add_argument("--normalize_with", choices=["files", "training"], default="files",
                        help="a run trained on speaker z-scores (--feature_norm speaker): files = each speaker's "
                             "recordings of this call standardised with their own statistics (five or more, as in "
                             "training; fewer take the run's training statistics); training = every recording with "
                             "the run's training statistics (default: %(default)s)")
    parser.add_argument("--speaker_pattern", metavar="REGEX",
                        help="tells the speakers of the files apart: a regular expression searched in each file name, "
                             "its first group (or the match) the speaker, e.g. '^([^_]+)_' for alice_01.wav "
                             "(default: all the files of a call are one speaker)")
    parser.add_argument("--asr", metavar="MODEL",
                        help="transcribe the recordings without a transcript with this Whisper model (a faster-whisper "
                             "folder) for a run that reads text; none = never (the recordings without one are "
                             "predicted on audio alone) (default: the run's own --asr model, where it is still there; "
                             "else none)")
    parser.add_argument("--asr_language", default="auto", help="the language --asr transcribes, e.g. ko or en "
                                                               "(default: %(default)s: detected)")
    parser.add_argument("--out", help="write the table to a .csv or .json file")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="(default: %(default)s)")
    parser.add_argument("--trust_run", action="store_true",
                        help="a run saved by an earlier version keeps its TF-IDF as a pickle (text_encoder.joblib): "
                             "load it. A pickle can run any code: only for run folders whose author you trust")
    args = parser.parse_args(argv)
    if (args.text or args.txt) and not args.wav:
        parser.error("--text/--txt go with --wav")
    if args.speaker_pattern is not None:
        try:
            re.compile(args.speaker_pattern)
        except re.error as error:
            parser.error(f"--speaker_pattern {args.speaker_pattern!r} is not a regular expression ({error})")
    with one_line_errors():
        return run(args)


def is_predictions_table(path: Path) -> bool:
    """Whether `path` holds a table this program wrote (a CSV whose header runs from `file` to `note`, or a JSON list
    of such records): the only existing file --out may replace."""
    try:
        if path.suffix.lower() == ".json":
            records = json.loads(path.read_text(encoding="utf-8"))
            return isinstance(records, list) and bool(records) and all(
                isinstance(r, dict) and {"file", "note"} <= r.keys() for r in records)
        with open(path, encoding="utf-8", newline="") as f:
            header = next(csv.reader(f), [])
        return header[:1] == ["file"] and header[-1:] == ["note"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error):
        return False


def check_out(out: Path) -> None:
    """FlagError, before any work, for an --out that is not a .csv or .json file in an existing folder, that lies
    inside a run, experiment or ensemble folder (whose records it could replace), or that exists and is not a table
    this program wrote (a user's file is never replaced)."""
    if out.is_dir():
        raise FlagError(f"--out {out} is a folder; name a .csv or .json file")
    if out.suffix.lower() not in OUT_SUFFIXES:
        raise FlagError(f"--out {out}: name a .csv or .json file for the predictions table, not "
                        f"{'a ' + out.suffix + ' file' if out.suffix else 'a name without a suffix'}")
    if not out.parent.is_dir():
        raise FlagError(f"--out {out}: the folder {out.parent} does not exist")
    folder = next((f for f in out.resolve().parents if any((f / name).exists() for name in RUN_RECORDS)), None)
    if folder is not None:
        raise FlagError(f"--out {out} lies inside the run folder {folder}, whose records predict.py never writes "
                        "into: choose a path outside it")
    if out.exists() and not is_predictions_table(out):
        raise FlagError(f"--out {out} exists and is not a table predict.py wrote; it is never replaced: choose "
                        "another name")


def run(args: argparse.Namespace) -> pd.DataFrame:
    out = Path(args.out) if args.out else None
    if out is not None:
        check_out(out)
    wavs, texts, dialogue = collect_inputs(args)
    table = predict(Path(args.run), wavs, texts, dialogue, torch.device(args.device), args.trust_run,
                    args.normalize_with, args.speaker_pattern, parse_asr(args.asr, args.asr_language, False),
                    args.asr == ASR_OFF)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    if out is not None:
        with atomic_path(out) as tmp:
            if out.suffix.lower() == ".json":
                tmp.write_text(json.dumps(table.to_dict(orient="records"), indent=1, ensure_ascii=False),
                               encoding="utf-8")
            else:
                table.to_csv(tmp, index=False)
        print(f"written: {out}")
    return table


if __name__ == "__main__":
    main()
