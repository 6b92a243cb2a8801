"""Throughput and memory of every stage, on a demo corpus of a given size; figures per utterance
so they scale to KEMDy19 (~10,280 utterances per role).

    python benchmark.py                  # ~2,000 utterances (a few minutes on 2 CPU cores)
    python benchmark.py --quick          # a smoke-sized run (under 2 minutes)

Prints a table and writes benchmark.json. Targets (2 CPU cores): data path >= 100x the published
per-sample loader; waiting for data <= 5% of a training step; KEMDy19's spectrogram cache in
under 5 minutes; peak training memory at KEMDy19's size under 4 GB. Pretrained speech encoders:
extraction throughput of a randomly initialised base-size wav2vec2 (random weights cost the same
compute), and its peak memory on one long clip, which chunking keeps independent of the length; Whisper's
(base-size, or a real model with --whisper DIR) in clips per second and times real time, on one thread and on all,
float32 and int8, at each clip's own length and padded to 30 s.
Fine-tuning (--finetune_speech / --finetune_text): a training step of base-size wav2vec2 and BERT
(both context modes for speech; on CUDA fp32 vs mixed precision, with and without gradient
checkpointing), with the extrapolated time of a KEMDy19 and a KEMDy20 epoch.
"""
import runtime  # noqa: F401  (process settings that must precede `import torch`)

import argparse
import json
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path
from queue import SimpleQueue

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import DataLoader, Dataset

from audio import load_audio, log_mel
from constants import HOP_LENGTH, MAX_FRAMES, N_MELS, SAMPLE_RATE
from dataset import Corpus, make_loader
from demo_corpus import make_demo_corpus
from engine import evaluate, run_config, setup, train, train_one_epoch
from errors import KemdyError, one_line_errors
from finetune import pretrained_backbones
from model import EmotionModel, ModelConfig
from options import TrainSpec, get_parser, parse_args
from predict import predict
from preprocess import preprocess
from protocol import resolve_data
from readers import segment_path
from speech_features import build_speech_cache, feature_source
from utils import amp_dtype, autocast, cache_folder, fingerprint

KEMDY19_UTTERANCES = 10280  # per role
KEMDY19_TRAIN_WINDOWS = KEMDY19_UTTERANCES * 14 // 20  # default split: 14 training sessions of 20
KEMDY20_TRAIN_WINDOWS = 13462 * 30 // 40  # 13,462 utterances; default split: 30 training sessions of 40


class PublishedStyleWindows(Dataset):
    """The reference: what the published loader did per sample, every epoch (read the window's
    `ws` wavs, crop/pad each to 10 s, compute its log-mel spectrogram)."""

    def __init__(self, corpus: Corpus, windows: np.ndarray, data_dir: Path):
        self.corpus, self.windows, self.data_dir = corpus, windows, data_dir

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        specs = []
        for row in self.windows[i]:
            if row < 0:
                specs.append(np.zeros((MAX_FRAMES, N_MELS), np.float32))
                continue
            audio = load_audio(segment_path(self.data_dir, self.corpus.table["Segment ID"][row], ".wav"))
            target = MAX_FRAMES * HOP_LENGTH - HOP_LENGTH
            start = np.random.randint(0, max(1, len(audio) - target + 1))
            audio = np.pad(audio[start:start + target], (0, max(0, target - len(audio))))
            specs.append(log_mel(audio).astype(np.float32))
        return torch.from_numpy(np.stack(specs)), torch.from_numpy(self.corpus.text[np.maximum(self.windows[i], 0)])


def _windows_per_second(loader, limit_batches: int) -> float:
    windows, start = 0, time.perf_counter()
    for k, batch in enumerate(loader):
        windows += len(batch["slots"]) if isinstance(batch, dict) else len(batch[0])
        if k + 1 >= limit_batches:
            break
    return windows / (time.perf_counter() - start)


def _train_child(data_dir: str, model_flags: list[str], argv: list[str], max_windows: int, device: str,
                 queue) -> None:
    """Training of one model in a fresh process, so its peak memory is its own."""
    args = parse_args(argv + ["--data_dir", data_dir] + model_flags)
    dev, spec, data = torch.device(device), TrainSpec.from_args(args), resolve_data(args)
    corpus = data.corpus()
    pin = dev.type == "cuda"
    loader = make_loader(corpus, data.train, spec.ws, spec.batch_size, True, spec.seed, spec.num_workers, pin)
    loader.dataset.windows = loader.dataset.windows[:max_windows]
    loader.sampler.n = len(loader.dataset.windows)
    # The training objects exactly as main.py makes them (engine.setup): model, loss, optimizer, EMA, scaler.
    t = setup(run_config(args, corpus), spec, corpus, np.flatnonzero(np.isin(corpus.sessions, data.train)), dev)
    train_one_epoch(t.model, loader, t.loss_fn, t.optimizer, dev, 0, t.dtype, t.scaler)  # warm-up: allocator
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    stats = train_one_epoch(t.model, loader, t.loss_fn, t.optimizer, dev, 1, t.dtype, t.scaler)
    eval_loader = make_loader(corpus, data.test, spec.ws, spec.batch_size, False, spec.seed, spec.num_workers, pin)
    start = time.perf_counter()
    evaluate(t.model, eval_loader, dev, dtype=t.dtype)
    eval_rate = len(eval_loader.dataset) / (time.perf_counter() - start)
    result = {"windows_per_s": len(loader.dataset) / stats["train_seconds"],
              "step_ms": 1000 * stats["train_seconds"] / len(loader), "data_wait_share": stats["train_data_wait"],
              "eval_windows_per_s": eval_rate, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}
    if dev.type == "cuda":
        result["peak_gpu_gb"] = torch.cuda.max_memory_allocated(dev) / 1e9
    queue.put(result)


def in_child(target, *args, fresh: bool = True) -> dict:
    """target(*args, queue) in a spawned process, so that its peak memory is its own -> what it put. With
    fresh=False (--quick, a smoke test) in this process: no interpreter start-up, and the peak-memory figures
    are this process's so far."""
    if not fresh:
        queue = SimpleQueue()
        target(*args, queue)
        return queue.get()
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=target, args=(*args, queue))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise KemdyError(f"benchmark step {target.__name__} failed (exit code {child.exitcode}); see above")
    return queue.get()


def save_random_speech_model(folder: Path, size: str) -> Path:
    """A randomly initialised wav2vec2 of the base size (95M parameters, like wav2vec2-base, HuBERT-base,
    WavLM-base+) or a tiny one for smoke runs, saved as a hub folder would hold it."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model
    shape = {} if size == "base" else dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                           intermediate_size=64, conv_dim=(32,) * 7)
    torch.manual_seed(0)
    Wav2Vec2Model(Wav2Vec2Config(**shape)).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(return_attention_mask=False).save_pretrained(folder)
    return folder


def _extract_child(model_dir: str, data_dir: str, cache: str, seg_ids: list[str], device: str, queue) -> None:
    """Speech feature extraction of `seg_ids` in a fresh process, timed from the model being loaded to the cache
    being written."""
    wavs = [segment_path(Path(data_dir), s, ".wav") for s in seg_ids]
    seconds = build_speech_cache(Path(cache), seg_ids, wavs, feature_source(model_dir),
                                 fingerprint(Path(data_dir), wavs), load_audio, torch.device(device))
    queue.put({"utt_per_s": len(seg_ids) / seconds, "real_time": sum(sf.info(w).duration for w in wavs) / seconds,
               "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6})


def _clip_child(model_dir: str, clip_seconds: list[float], device: str, queue) -> None:
    """The peak memory after encoding one clip of each length in turn, in a fresh process."""
    encode = feature_source(model_dir).encoder(torch.device(device))
    peaks = []
    for seconds in clip_seconds:
        clip = np.random.default_rng(0).standard_normal(int(seconds * SAMPLE_RATE)).astype(np.float32) * 0.1
        encode([clip])
        peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6)
    queue.put(peaks)


def save_random_whisper(folder: Path, size: str) -> Path:
    """A randomly initialised Whisper of the base size (its encoder: 6 layers of width 512, as openai/whisper-base)
    or a tiny one for smoke runs, saved as the hub holds it: its extraction costs what the real weights cost."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration
    shape = dict(d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8, decoder_attention_heads=8,
                 encoder_ffn_dim=2048, decoder_ffn_dim=2048) if size == "base" else dict(
        d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64)
    torch.manual_seed(0)
    WhisperForConditionalGeneration(WhisperConfig(**shape)).save_pretrained(folder)
    WhisperFeatureExtractor().save_pretrained(folder)
    return folder


def _whisper_child(model_dir: str, wavs: list[str], precision: str, window: str, threads: int, queue) -> None:
    """Whisper's pooled layers of the clips `wavs` on the CPU with `threads` threads, in a fresh process: clips per
    second and times real time, timed after the model is loaded and a first clip is encoded."""
    torch.set_num_threads(threads)
    encode = feature_source(model_dir, precision, window).encoder(torch.device("cpu"))
    audios = [load_audio(Path(w)) for w in wavs]
    encode(audios[:1])
    start = time.perf_counter()
    encode(audios)
    seconds = time.perf_counter() - start
    queue.put({"clips_per_s": len(audios) / seconds, "real_time": sum(map(len, audios)) / SAMPLE_RATE / seconds})


def whisper_figures(args: argparse.Namespace, work: Path, wavs: list[Path]) -> dict:
    """Whisper extraction throughput (clips per second, times real time) of --whisper (a real model) or a random
    base-size one, on one thread and on all, float32 and int8, each clip at its own length; float32 padded to 30 s on
    all threads too."""
    model_dir = args.whisper or str(save_random_whisper(work / f"whisper-{args.speech_size}", args.speech_size))
    every = torch.get_num_threads()
    cases = [(precision, "clip", threads) for precision in ("float32", "int8") for threads in sorted({1, every})]
    figures = {}
    for precision, window, threads in cases + [("float32", "30s", every)]:
        result = in_child(_whisper_child, model_dir, [str(w) for w in wavs], precision, window, threads,
                          fresh=not args.quick)
        name = f"whisper_{precision}_{window}_{threads}thread"
        figures[f"{name}_clips_per_s"], figures[f"{name}_real_time"] = result["clips_per_s"], result["real_time"]
    return figures


def save_random_text_model(folder: Path, size: str) -> Path:
    """A randomly initialised BERT of the base size (110M parameters, like klue/roberta-base, KoELECTRA-base, KoBERT)
    or a tiny one for smoke runs (fine-tuning steps are timed on random token ids: no tokenizer)."""
    from transformers import BertConfig, BertModel
    shape = {} if size == "base" else dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                           intermediate_size=64)
    torch.manual_seed(0)
    BertModel(BertConfig(**shape)).save_pretrained(folder)
    return folder


def _finetune_steps(encoder: str, model_dir: str, context: str, batch: int, ws: int, clip_seconds: float,
                    amp: bool, checkpointing: bool, steps: int, dev: torch.device) -> dict:
    """Fine-tuning steps (forward, backward, AdamW step) of the model with the `encoder` ("speech" or "text") trained,
    on random inputs shaped like a batch of `batch` windows of `ws` consecutive utterances (`batch + ws - 1`
    distinct ones: clips of `clip_seconds`, 32 tokens) -> step time, samples/s, peak memory so far."""
    backbones = pretrained_backbones(model_dir if encoder == "speech" else None,
                                     model_dir if encoder == "text" else None)
    net = backbones.speech or backbones.text
    layers, dim = net.config.num_hidden_layers + 1, net.config.hidden_size
    config = ModelConfig(text_dim=dim, speech_layers=layers, speech_dim=dim, finetune_speech=encoder == "speech",
                         finetune_text=encoder == "text", finetune_context=context)
    if checkpointing:
        net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = EmotionModel(config, backbones).to(dev).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    rng = torch.Generator().manual_seed(0)
    n_utts = batch + ws - 1
    inputs = {"spec": torch.randn(n_utts * layers, 2 * dim, generator=rng),
              "spec_lengths": torch.full((n_utts,), layers), "text": torch.randn(n_utts, dim, generator=rng),
              "slots": torch.arange(batch)[:, None] + torch.arange(ws)[None, :]}
    if encoder == "speech":
        live = torch.arange(n_utts) if context == "encoder" else torch.arange(ws - 1, n_utts)
        inputs.update(waves=0.1 * torch.randn(len(live), int(clip_seconds * SAMPLE_RATE), generator=rng),
                      wave_lengths=torch.full((len(live),), int(clip_seconds * SAMPLE_RATE)), wave_slots=live)
    else:
        inputs.update(tokens=torch.randint(5, net.config.vocab_size, (n_utts, 32), generator=rng),
                      token_mask=torch.ones(n_utts, 32, dtype=torch.long))
    inputs = {k: v.to(dev) for k, v in inputs.items()}
    dtype = amp_dtype(dev, amp)
    seconds = []
    for step in range(steps + 1):  # the first step warms the allocator up: not timed
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        start = time.perf_counter()
        with autocast(dev, dtype):
            logits, av = model(**inputs)
        (logits.float().logsumexp(1).mean() + av.float().mean()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        if step:
            seconds.append(time.perf_counter() - start)
    step_s = float(np.mean(seconds))
    result = {"step_s": step_s, "samples_per_s": batch / step_s,
              "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}
    if dev.type == "cuda":
        result["peak_gpu_gb"] = torch.cuda.max_memory_allocated(dev) / 1e9
    return result


def _finetune_child(tasks: list[tuple], device: str, queue) -> None:
    """`_finetune_steps` of each task, in one fresh process (its peak memory is the largest so far)."""
    queue.put([_finetune_steps(*task, torch.device(device)) for task in tasks])


def finetune_figures(args: argparse.Namespace, work: Path) -> dict:
    """Per fine-tuned encoder (random base-size configs: the cost of real weights), and for speech per context
    mode: a training step's time, samples (windows) per second, peak memory, and the extrapolated hours of one
    KEMDy19 and one KEMDy20 epoch; on CUDA also under bf16/fp16 autocast and with gradient checkpointing."""
    models = {"speech": save_random_speech_model(work / f"ft-wav2vec2-{args.speech_size}", args.speech_size),
              "text": save_random_text_model(work / f"ft-bert-{args.speech_size}", args.speech_size)}
    variants = [("", False, False)] + ([("_amp", True, False), ("_ckpt", False, True), ("_amp_ckpt", True, True)]
                                       if args.device == "cuda" else [])
    tasks = {f"finetune_{name}{suffix}": (encoder, str(models[encoder]), context, args.finetune_batch, args.ws,
                                          args.finetune_clip_seconds, amp, checkpointing, args.finetune_steps)
             for name, encoder, context in (("speech_cache", "speech", "cache"),
                                            ("speech_encoder", "speech", "encoder"), ("text", "text", "cache"))
             for suffix, amp, checkpointing in variants}
    # A process per task, so that each peak memory is its own; --quick runs them all in this one (a smoke test).
    groups = [list(tasks)] if args.quick else [[key] for key in tasks]
    figures = {}
    for group in groups:
        results = in_child(_finetune_child, [tasks[k] for k in group], args.device, fresh=not args.quick)
        for key, result in zip(group, results):
            figures.update({f"{key}_{k}": v for k, v in result.items()})
            figures[f"{key}_kemdy19_epoch_hours"] = KEMDY19_TRAIN_WINDOWS / result["samples_per_s"] / 3600
            figures[f"{key}_kemdy20_epoch_hours"] = KEMDY20_TRAIN_WINDOWS / result["samples_per_s"] / 3600
    return figures


def run(args: argparse.Namespace, work: Path) -> dict:
    turns = max(4, int(np.ceil(args.utterances / 40)))
    # Named so that its caches never take the place of a real corpus's in a shared --cache_dir.
    data_dir = make_demo_corpus(work / "kemdy_benchmark_demo", seed=0, n_sessions=20, n_scripts=1, n_impros=1,
                                n_turns=turns)
    summary = preprocess(data_dir, "tfidf", args.text_dim, cache_dir=args.cache_dir, functionals=("egemaps",))
    cache = cache_folder(data_dir, args.cache_dir)
    n_utts = summary["utterances"]
    meta = json.loads((cache / "features" / "logmel.json").read_text())
    hours = sum(meta["lengths"]) * HOP_LENGTH / SAMPLE_RATE / 3600
    cache_bytes = (cache / "features" / "logmel.npy").stat().st_size
    spec_rate = n_utts / summary["seconds"]["spectrograms"]
    figures = {
        "utterances": n_utts, "audio_hours": hours,
        "spectrogram_utt_per_s": spec_rate, "tfidf_utt_per_s": n_utts / summary["seconds"]["embeddings"],
        "egemaps_utt_per_s": n_utts / summary["seconds"]["egemaps"],
        "cache_mb_per_audio_hour": cache_bytes / 1e6 / hours,
        "kemdy19_spectrogram_minutes": KEMDY19_UTTERANCES / spec_rate / 60,
    }

    common = ["--text_dim", str(args.text_dim), "--batch_size", str(args.batch_size), "--ws", str(args.ws),
              "--num_workers", str(args.num_workers), "--device", args.device] + (
                  ["--cache_dir", args.cache_dir] if args.cache_dir else [])
    parsed = get_parser().parse_args(common + ["--data_dir", str(data_dir)])
    spec = resolve_data(parsed)
    corpus = spec.corpus()
    loader = make_loader(corpus, spec.train, args.ws, args.batch_size, True, num_workers=args.num_workers,
                         pin_memory=args.device == "cuda")
    figures["loader_windows_per_s"] = _windows_per_second(loader, limit_batches=10**9)
    reference = DataLoader(PublishedStyleWindows(corpus, loader.dataset.windows, data_dir),
                           batch_size=args.batch_size, shuffle=True, num_workers=args.num_workers)
    figures["reference_windows_per_s"] = _windows_per_second(reference, limit_batches=args.reference_batches)
    figures["loader_speedup"] = figures["loader_windows_per_s"] / figures["reference_windows_per_s"]

    # The published model (recipes/published.yaml) and the recommended recipe (the defaults), both at the benchmark's
    # batch size.
    models = {"published": ["--recipe", "published"], "recipe": []}
    if args.device == "cuda":  # fp32 vs mixed precision
        models.update({f"{name}_amp": flags + ["--amp"] for name, flags in models.items()})
    for name, model_flags in models.items():
        result = in_child(_train_child, str(data_dir), model_flags, common, args.train_windows, args.device,
                          fresh=not args.quick)
        figures[f"{name}_train_windows_per_s"] = result["windows_per_s"]
        figures[f"{name}_seconds_per_epoch_kemdy19"] = KEMDY19_TRAIN_WINDOWS / result["windows_per_s"]
        figures[f"{name}_data_wait_share"] = result["data_wait_share"]
        figures[f"{name}_eval_windows_per_s"] = result["eval_windows_per_s"]
        figures[f"{name}_peak_rss_gb"] = result["peak_rss_gb"]
        figures[f"{name}_step_ms"] = result["step_ms"]
        if "peak_gpu_gb" in result:
            figures[f"{name}_peak_gpu_gb"] = result["peak_gpu_gb"]
        # The memory-mapped cache is the only part that grows with the corpus: at worst all of it is resident.
        figures[f"{name}_peak_rss_gb_kemdy19"] = result["peak_rss_gb"] + (
            cache_bytes / n_utts * max(0, KEMDY19_UTTERANCES - n_utts)) / 1e9

    run_dir = train(parse_args(common + ["--data_dir", str(data_dir), "--save_path", str(work / "exp"),
                                                      "--epochs", "1", "--hidden_size", "32", "--num_layers", "1",
                                                      "--audio_dim", "32"]))
    wavs = [segment_path(data_dir, seg, ".wav") for seg in corpus.table["Segment ID"][:args.predict_files]]
    start = time.perf_counter()
    predict(run_dir, wavs[:1], [None], dialogue=False)
    figures["predict_single_file_s"] = time.perf_counter() - start
    start = time.perf_counter()
    predict(run_dir, wavs, [None] * len(wavs), dialogue=False)
    figures["predict_s_per_utterance"] = (time.perf_counter() - start) / len(wavs)

    model_dir = save_random_speech_model(work / f"wav2vec2-{args.speech_size}", args.speech_size)
    extraction = in_child(_extract_child, str(model_dir), str(data_dir), str(cache),
                          corpus.table["Segment ID"][:args.speech_utterances].tolist(), args.device, fresh=not args.quick)
    figures["speech_extract_utt_per_s"] = extraction["utt_per_s"]
    figures["speech_extract_real_time"] = extraction["real_time"]
    figures["speech_extract_peak_rss_gb"] = extraction["peak_rss_gb"]
    figures["speech_kemdy19_extract_minutes"] = KEMDY19_UTTERANCES / extraction["utt_per_s"] / 60
    config = json.loads((model_dir / "config.json").read_text())
    row_bytes = (config["num_hidden_layers"] + 1) * 2 * config["hidden_size"] * 2  # float16 mean and std per layer
    figures["speech_cache_mb_per_10k_utterances"] = row_bytes * 10_000 / 1e6
    # Chunking bounds memory: a 120 s clip needs what a 20 s piece needs. A process per length, so that each peak
    # is its own; --quick encodes them all in this one (a smoke test).
    lengths = [10.0, 30.0, 120.0]
    for group in ([lengths] if args.quick else [[seconds] for seconds in lengths]):
        peaks = in_child(_clip_child, str(model_dir), group, args.device, fresh=not args.quick)
        for seconds, peak in zip(group, peaks):
            figures[f"speech_peak_rss_gb_{seconds:.0f}s_clip"] = peak
    figures.update(whisper_figures(args, work, [segment_path(data_dir, seg, ".wav") for seg in
                                                 corpus.table["Segment ID"][:args.whisper_utterances]]))
    figures.update(finetune_figures(args, work))
    return figures


QUICK = {"utterances": 160, "train_windows": 32, "reference_batches": 1, "predict_files": 4, "speech_size": "tiny",
         "speech_utterances": 10, "finetune_steps": 1, "whisper_utterances": 2}
TARGETS = {"loader_speedup": (">=", 100), "published_data_wait_share": ("<=", 0.05),
           "recipe_data_wait_share": ("<=", 0.05), "kemdy19_spectrogram_minutes": ("<", 5),
           "published_peak_rss_gb_kemdy19": ("<", 4), "recipe_peak_rss_gb_kemdy19": ("<", 4)}


def main_cli(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=2000, help="demo corpus size (default: %(default)s)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="(default: %(default)s)")
    parser.add_argument("--batch_size", type=int, default=64, help="(default: %(default)s, published)")
    parser.add_argument("--ws", type=int, default=8, help="(default: %(default)s, published)")
    parser.add_argument("--text_dim", type=int, default=768, help="(default: %(default)s)")
    parser.add_argument("--num_workers", type=int, default=0, help="DataLoader workers (default: %(default)s)")
    parser.add_argument("--train_windows", type=int, default=512,
                        help="training windows timed per model size (default: %(default)s)")
    parser.add_argument("--reference_batches", type=int, default=2,
                        help="batches timed for the slow reference loader (default: %(default)s)")
    parser.add_argument("--predict_files", type=int, default=20, help="(default: %(default)s)")
    parser.add_argument("--speech_size", choices=["base", "tiny"], default="base",
                        help="random wav2vec2 timed for speech feature extraction (default: %(default)s)")
    parser.add_argument("--speech_utterances", type=int, default=200,
                        help="utterances timed for speech feature extraction (default: %(default)s)")
    parser.add_argument("--whisper", default=None, metavar="DIR",
                        help="a Whisper model (README: Whisper) to time instead of a random one of the same size "
                             "(default: a random whisper-base, or tiny with --quick)")
    parser.add_argument("--whisper_utterances", type=int, default=40,
                        help="utterances timed for Whisper extraction, per setting (default: %(default)s)")
    parser.add_argument("--finetune_batch", type=int, default=4,
                        help="windows per fine-tuning step timed (default: %(default)s, a CPU-sized batch)")
    parser.add_argument("--finetune_clip_seconds", type=float, default=5.0,
                        help="length of every clip of a timed fine-tuning step (default: %(default)s)")
    parser.add_argument("--finetune_steps", type=int, default=2,
                        help="fine-tuning steps timed after a warm-up step (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="smoke size: 160 utterances, few windows, a tiny "
                                                             "speech model")
    parser.add_argument("--cache_dir", default=None, metavar="DIR",
                        help="put the demo corpus's derived files (spectrogram and feature caches) in DIR/<name> "
                             "instead of beside it, e.g. to time a disk (default: beside it, in a temporary folder)")
    parser.add_argument("--out", default="benchmark.json", help="(default: %(default)s)")
    args = parser.parse_args(argv)
    if args.quick:  # a new namespace with the smoke sizes, not the parsed one rewritten
        args = argparse.Namespace(**{**vars(args), **QUICK})
    with tempfile.TemporaryDirectory(prefix="kemdy_bench_") as work, one_line_errors():
        figures = run(args, Path(work))
    figures["config"] = {k: v for k, v in vars(args).items() if k != "out"}
    figures["torch_threads"] = torch.get_num_threads()
    figures["device_name"] = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    Path(args.out).write_text(json.dumps(figures, indent=2))
    print("\n| figure | value | target |\n| --- | --- | --- |")
    for key, value in figures.items():
        if isinstance(value, float):
            target = TARGETS.get(key)
            verdict = ""
            if target:
                met = {">=": value >= target[1], "<=": value <= target[1], "<": value < target[1]}[target[0]]
                verdict = f"{target[0]} {target[1]} {'met' if met else 'MISSED'}"
            print(f"| {key} | {value:.4g} | {verdict} |")
    print(f"written: {args.out}")
    return figures


if __name__ == "__main__":
    main_cli()
