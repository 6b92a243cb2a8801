"""A raw corpus folder -> annotation tables, sentence embeddings and the audio feature caches a run reads.

    python preprocess.py --make_demo data/KEMDy19        # synthetic corpus in the KEMDy19 layout
    python preprocess.py --data_dir DIR [--text_encoder NAME] [--speech_model ID_OR_DIR] [--cache_dir DIR]

The corpus (KEMDy19, KEMDy20, RAVDESS, TESS, EmoDB or a folder with a manifest.csv; detected from its files,
--corpus overrides) is read by readers.py or corpora.py, glitches repaired or named, into one table schema.
Outputs go next to the corpus (the published layout), or with --cache_dir to DIR/<corpus folder name> (a read-only
corpus): annotation.csv, df_speaker.csv, df_listener.csv (speaker rows only outside KEMDy19), embedding_<dim>.npy
(+ .json with ids), features/logmel.npy (+ .json), features/speech_*.npy with --speech_model, features/bio_*.npy
for KEMDy's wristband files, preprocess_summary.json (every repaired, dropped or remarked row) and
preprocess_manifest.json (what the outputs were made from). Every output is written to a temporary name
and renamed, and a second run reuses what is up to date: the check follows symlinked folders and records
paths relative to the corpus, so a copied, moved or re-pathed corpus is not recomputed.
"""
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from asr import ASR_OFF, Recognizer, parse_asr, recorded_asr, transcribe_table
from audio import feature_settings, load_audio, log_mel, read_audio
from biosignals import SIGNALS, build_bio_cache
from constants import (AUDIO_SUFFIXES, CORPUS_NAMES, DEFAULT_DATA_DIR, DEFAULT_TEXT_DIM, DEFAULT_TEXT_ENCODER_DEMO,
                       DEFAULT_TEXT_ENCODER_REAL, DEMO_MARKER_FILE, KEMDY, KEMDY20_CLASS_COUNTS, KEMDY_FACTS, MANIFEST,
                       N_FFT, N_MELS, SUMMARY, WAVS)
from corpora import detect_corpus, read_any, source_files
from dataset import corpus_wavs
from errors import CorpusError, one_line_errors
from functionals import OPENSMILE_SETS, build_opensmile_cache
from options import Parser, add_corpus_args
from readers import FileIndex
from speech_features import FeatureSource, LogMel, PooledEncoder, build_speech_cache, feature_source
from text_encoder import check_text_dim, embedding_paths, fit_tfidf, save_tfidf, text_dim_of, tfidf_embeddings, \
    tfidf_exists, transformer_embeddings
from utils import cache_folder, fingerprint, progress_bar, read_json, write_array_cache, write_json, write_text


def is_demo_corpus(data_dir: str | Path) -> bool:
    return (Path(data_dir) / DEMO_MARKER_FILE).exists()


def build_spectrogram_cache(out: Path, wav_paths: dict[str, Path]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Write out/features/logmel.npy: all utterances' frames concatenated, one memory-mappable array.

    Returns ({Segment ID: reason} for the wavs that could not be used (skipped, not fatal), {note: Segment IDs}
    for the clips used with a note: silent, or channels that cancel).
    """
    (out / "features").mkdir(parents=True, exist_ok=True)
    chunks, ids, failed, notes = [], [], {}, {}
    for seg_id, path in progress_bar(sorted(wav_paths.items()), desc="log-mel spectrograms", unit="utt"):
        try:
            audio, remarks = read_audio(path)
        except CorpusError as error:
            failed[seg_id] = str(error)
            continue
        for remark in remarks:
            notes.setdefault(remark.split(":")[0], []).append(seg_id)
        if len(audio) < N_FFT:
            print(f"note: {path} has {len(audio)} samples, less than one {N_FFT}-sample FFT window: zero-padded to it")
        chunks.append(log_mel(audio))
        ids.append(seg_id)
    lengths = [len(c) for c in chunks]
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int).tolist() if lengths else []
    frames = np.concatenate(chunks) if chunks else np.zeros((0, N_MELS), np.float16)
    write_array_cache(out / "features" / "logmel.npy", out / "features" / "logmel.json", frames,
                      {"settings": feature_settings(), "ids": ids, "offsets": offsets, "lengths": lengths,
                       "failed": failed})
    return failed, notes


def default_text_encoder(data_dir: str | Path, kind: str) -> str:
    """KoBERT (published) for real KEMDy; the offline TF-IDF for the demo and for the other corpora (their text, if
    any, is a carrier sentence in another language)."""
    return DEFAULT_TEXT_ENCODER_REAL if kind in KEMDY and not is_demo_corpus(data_dir) else DEFAULT_TEXT_ENCODER_DEMO


def build_embeddings(out: Path, table: pd.DataFrame, text_encoder: str, text_dim: int, seed: int) -> None:
    """embedding_<dim>.npy (+ .json): one sentence embedding per Segment ID."""
    npy_path, meta_path, tfidf_path = embedding_paths(out, text_dim)
    texts_by_id = table.drop_duplicates("Segment ID").set_index("Segment ID")["text"]
    ids, texts = texts_by_id.index.tolist(), texts_by_id.fillna("").astype(str).tolist()
    if not any(t.strip() for t in texts):  # a corpus without transcripts (EmoDB): zero vectors, no encoder
        text_encoder, vectors = "none", np.zeros((len(texts), text_dim), np.float32)
    elif text_encoder == "tfidf":
        pipeline = fit_tfidf(texts, text_dim, seed)
        vectors = tfidf_embeddings(texts, pipeline, text_dim)
        save_tfidf(pipeline, tfidf_path)
    else:
        vectors = transformer_embeddings(texts, text_encoder)
    write_array_cache(npy_path, meta_path, vectors, {"encoder": text_encoder, "dim": text_dim, "ids": ids})


@contextmanager
def cache_lock(folder: Path) -> Iterator[bool]:
    """Hold `folder`'s preprocessing lock (one writer at a time: a second job waits, then finds the outputs up to
    date) -> True; False when the folder cannot be written (read-only storage), and then no lock is needed. The
    lock is on the folder itself: no lock file is ever left in a user's corpus folder."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        yield False
        return
    if not os.access(folder, os.W_OK):
        yield False
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield True
    finally:
        os.close(descriptor)  # (releases the lock)


def preprocess(data_dir: str | Path = DEFAULT_DATA_DIR, text_encoder: str | None = None,
               text_dim: int = DEFAULT_TEXT_DIM, seed: int = 0, speech: FeatureSource = LogMel(),
               corpus: str = "auto", cache_dir: str | Path | None = None, bio_alignment: str = "clock",
               functionals: tuple[str, ...] = (), check_facts: Callable[[dict], None] | None = None,
               asr: Recognizer | None = None, asr_replace: bool = False, asr_off: bool = False) -> dict:
    """Run every step that is not up to date; return the summary (corpus, rows per role, classes, repairs, drops)
    with the seconds taken by the steps that ran (`seconds`). With a pooled encoder as the `speech` source, also the
    cache of its layer features (speech_features.py; log-mel's is made with the tables). `corpus` (kemdy19/kemdy20)
    overrides the detection; `cache_dir` moves every derived file out of the corpus folder (`cache_folder`). A KEMDy
    corpus with bio-signal folders also gets its per-utterance bio features, aligned by `bio_alignment`
    (biosignals.py), and the openSMILE sets among `functionals` are cached (functionals.py). With `asr`, utterances
    without a transcript (every utterance with `asr_replace`) get one from that model (asr.py), and the sentence
    embeddings read them; the cache records it, and without `asr` the ASR it was last preprocessed with is kept
    (`asr_off`: none, the corpus's own transcripts). `check_facts` is called with the corpus's facts (classes, text,
    modalities, arousal_valence) once the tables are made, before the embeddings and features: a flag the corpus
    cannot serve is refused before the slow steps. Raises CorpusError (one line) on a corpus it cannot read, and
    when outputs must be rebuilt in a folder that cannot be written."""
    data_dir = Path(data_dir)
    out = cache_folder(data_dir, cache_dir)
    kind = detect_corpus(data_dir, corpus)  # --corpus can only confirm what the files say
    files, wavs = source_files(data_dir, kind)
    print(f"{data_dir}: {CORPUS_NAMES[kind]} layout" + (f"; derived files in {out}" if out != data_dir else ""))
    text_encoder = text_encoder or default_text_encoder(data_dir, kind)
    sources = fingerprint(data_dir, files + wavs.with_suffixes(*AUDIO_SUFFIXES, ".txt"))
    npy_path, meta_path, tfidf_base = embedding_paths(out, text_dim)
    wanted_embedding = {"encoder": text_encoder, "sources": sources}
    # Every model id is checked before any heavy work: a bad one fails in seconds, with one line.
    if isinstance(speech, PooledEncoder):
        speech.settings()
    if asr is None and not asr_off and recorded_asr(read_json(out / MANIFEST)):  # the corpus's ASR, as preprocessed
        asr, asr_replace = recorded_asr(read_json(out / MANIFEST))
    if asr is not None:
        wanted_embedding["asr"] = {**asr.settings(), "replace": asr_replace}
    embedded = read_json(out / MANIFEST).get("embedding", {}).get(str(text_dim))
    if text_encoder != "tfidf" and embedded != wanted_embedding:
        check_text_dim(text_encoder, text_dim)
    seconds = {}
    given_embedding = data_dir / npy_path.name  # the contest's embedding_768.npy, where it ships: the corpus folder
    with cache_lock(out) as writable:
        def may_write(what: str) -> None:
            if not writable:
                raise CorpusError(f"{out} cannot be written (read-only storage?) and its {what} are missing or out of "
                                  "date: " + ("pass --cache_dir DIR to write the derived files there instead"
                                              if cache_dir is None else "choose a --cache_dir that can be written"))
        manifest = read_json(out / MANIFEST)
        outputs = [out / n for n in ("annotation.csv", "df_speaker.csv", "df_listener.csv", SUMMARY, WAVS,
                                     "features/logmel.npy", "features/logmel.json")]
        table = None
        # (tables of versions that did not record the unit of their splits are made again: a manifest's sessions
        # were split as written, not by speaker)
        if (manifest.get("sources") == sources and manifest.get("features") == feature_settings()
                and manifest.get("corpus") == kind and "split_unit" in manifest.get("facts", {})
                and all(p.exists() for p in outputs)):
            print(f"annotation tables and spectrogram cache in {out} are up to date")
        else:
            may_write("annotation tables and spectrograms")
            theirs = [] if (out / MANIFEST).exists() else [p for p in outputs + [meta_path] if p.exists()]
            if theirs:  # derived files never replace a file this repo did not write
                raise CorpusError(f"{theirs[0]} was not written by this repo, and preprocessing would replace it: "
                                  "move it, or pass --cache_dir DIR to keep every derived file in DIR instead")
            if manifest.get("corpus_dir", str(data_dir.resolve())) != str(data_dir.resolve()):
                print(f"note: {out} held the derived files of {manifest['corpus_dir']}, which differ: they are "
                      f"rebuilt for {data_dir.resolve()}")
            table, summary, facts, seconds["spectrograms"] = build_tables(data_dir, out, kind, files, wavs)
            write_json(out / SUMMARY, summary)
            manifest = {"sources": sources, "features": feature_settings(), "corpus": kind,
                        "corpus_dir": str(data_dir.resolve()), "facts": facts}
            write_json(out / MANIFEST, manifest)
        if check_facts is not None:  # the facts as dataset.Corpus reads them: an old manifest's missing ones KEMDy's
            check_facts({**KEMDY_FACTS, **manifest.get("facts", {}), **({"text": True} if asr else {})})
        if asr is not None:
            table = pd.read_csv(out / "annotation.csv", keep_default_na=False) if table is None else table
            started = time.perf_counter()
            table, _ = transcribe_table(out, table, corpus_wavs(out, data_dir), asr, asr_replace, load_audio, may_write)
            seconds["asr"] = time.perf_counter() - started
        record = {"model": asr.model, "language": asr.language, "replace": asr_replace} if asr else None
        if manifest.get("asr") != record:  # what the runs that name no --asr read
            may_write("ASR record")
            manifest = {**{k: v for k, v in manifest.items() if k != "asr"}, **({"asr": record} if record else {})}
            write_json(out / MANIFEST, manifest)
        if out != data_dir and given_embedding.exists() and not npy_path.exists() and not meta_path.exists():
            may_write("sentence embeddings")
            npy_path.symlink_to(given_embedding.resolve())
        if npy_path.exists() and not meta_path.exists():
            print(f"using {npy_path} as given (not made by this repo; e.g. the contest's KoBERT embeddings)")
        elif (manifest.get("embedding", {}).get(str(text_dim)) == wanted_embedding and npy_path.exists()
              and (text_encoder != "tfidf" or tfidf_exists(tfidf_base) or read_json(meta_path)["encoder"] == "none")):
            print(f"{npy_path.name} ({text_encoder}) is up to date")
        else:
            may_write("sentence embeddings")
            table = pd.read_csv(out / "annotation.csv", keep_default_na=False) if table is None else table
            started = time.perf_counter()
            build_embeddings(out, table, text_encoder, text_dim, seed)
            seconds["embeddings"] = time.perf_counter() - started
            manifest.setdefault("embedding", {})[str(text_dim)] = wanted_embedding
            write_json(out / MANIFEST, manifest)
        if isinstance(speech, PooledEncoder):
            paths = corpus_wavs(out, data_dir)
            seg_ids = sorted(paths)
            seconds["speech"] = build_speech_cache(out, seg_ids, [paths[s] for s in seg_ids], speech, sources,
                                                   load_audio, may_write=may_write)
        for feature_set in (f for f in functionals if f in OPENSMILE_SETS):
            seconds[feature_set] = build_opensmile_cache(out, corpus_wavs(out, data_dir), sources, feature_set,
                                                         may_write)
        if kind in KEMDY:
            table = pd.read_csv(out / "annotation.csv", keep_default_na=False) if table is None else table
            started = time.perf_counter()
            bio = build_bio_cache(out, data_dir, kind, table, bio_alignment, may_write)
            if bio is not None:
                seconds["bio"] = time.perf_counter() - started
                print_bio_report(bio, bio_alignment)
    summary = read_json(out / SUMMARY)
    print_summary(summary, data_dir)
    return {**summary, "seconds": seconds}


def print_bio_report(report: dict, alignment: str) -> None:
    """How many utterances have each bio-signal, per role, and what could not be read or aligned."""
    counts = "; ".join(f"{role} {c['of']} rows: " + ", ".join(f"{s} {c[s]}" for s in SIGNALS)
                       for role, c in report["utterances"].items())
    print(f"bio-signals ({alignment} alignment): {counts}")
    for note in report["notes"]:
        print(f"  bio: {note}")


def build_tables(data_dir: Path, out: Path, kind: str, files: list[Path],
                 wavs: FileIndex) -> tuple[pd.DataFrame, dict, dict, float]:
    """Read the corpus, cache the spectrograms of its wavs and write the tables and wavs.json -> (table, summary,
    the corpus's facts: classes, session names, transcripts and arousal/valence or not, seconds spent on the
    spectrograms)."""
    table, wav_paths, report, facts = read_any(data_dir, kind, files, wavs)
    started = time.perf_counter()
    failed, notes = build_spectrogram_cache(out, wav_paths)
    spent = time.perf_counter() - started
    for reason in failed.values():
        print(f"skipped: {reason}")
    unusable = table["Segment ID"].isin(failed)
    report.dropped["unusable wav"] += table.loc[unusable, "Segment ID"].tolist()
    table = table[~unusable].sort_values(["Session", "dialogue", "start", "Segment ID"], kind="stable")
    for name, rows in (("annotation.csv", table), ("df_speaker.csv", table[table.role == "speaker"]),
                       ("df_listener.csv", table[table.role == "listener"])):
        write_text(out / name, rows.to_csv(index=False))
    write_json(out / WAVS, {s: os.path.relpath(wav_paths[s], data_dir) for s in sorted(table["Segment ID"].unique())})
    return table, summarize(table, report, notes, kind, facts["classes"]), facts, spent


def summarize(table: pd.DataFrame, report, audio_notes: dict[str, list[str]], kind: str, classes: list[str]) -> dict:
    """Rows per role and class; every repaired row (file, line, old -> new ID, evidence); every dropped row by
    reason; rows kept with a remark (no transcript, a rater cell left blank, an unannotated wav); noted audio."""
    summary = {"corpus": kind, "rows": len(table), "utterances": int(table["Segment ID"].nunique()),
               "repaired": report.repaired,
               "dropped_rows": {k: len(v) for k, v in report.dropped.items() if v},
               "dropped": {k: sorted(set(v)) for k, v in report.dropped.items() if v},
               "kept": {k: sorted(set(v)) for k, v in report.kept.items() if v},
               "files": {k: sorted(set(v)) for k, v in report.files.items() if v},
               "audio": {k: sorted(v) for k, v in audio_notes.items()}, "roles": {}}
    for role in ("speaker", "listener"):
        rows = table[table.role == role]
        tied = rows["Emotion"].str.contains(";")
        counts = rows.loc[~tied, "Emotion"].value_counts()
        summary["roles"][role] = {"rows": len(rows), "tied": int(tied.sum()),
                                  "classes": {e: int(counts.get(e, 0)) for e in classes}}
    return summary


def _listed(names: list[str], limit: int = 20) -> str:
    more = f" and {len(names) - limit} more (all in {SUMMARY})" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def print_summary(summary: dict, data_dir: Path) -> None:
    name = CORPUS_NAMES[summary.get("corpus", "kemdy19")]
    demo = f" (synthetic demo corpus in the {name} layout, not {name})" if is_demo_corpus(data_dir) else f" ({name})"
    print(f"{data_dir}{demo}: {summary['rows']} rows, {summary['utterances']} utterances")
    for role, info in summary["roles"].items():
        if not info["rows"]:  # KEMDy20 annotates the speaker only
            continue
        classes = ", ".join(f"{e} {n}" for e, n in info["classes"].items())
        print(f"  {role:8s} {info['rows']} rows: {classes}, tied {info['tied']}")
    for fix in summary["repaired"]:
        print(f"  repaired: {fix['file']} line {fix['line']}: {fix['old']} -> {fix['new']} ({fix['problem']}; "
              f"evidence: {fix['evidence']})")
    if not summary["dropped_rows"]:
        print("  dropped rows: none")
    for reason, count in summary["dropped_rows"].items():
        print(f"  dropped rows, {reason}: {count} ({_listed(summary['dropped'][reason])})")
    for reason, names in summary["kept"].items():
        print(f"  kept, {reason}: {len(names)} ({_listed(names)})")
    for reason, names in summary.get("files", {}).items():
        print(f"  files, {reason}: {len(names)} ({_listed(names)})")
    for note, names in summary["audio"].items():
        print(f"  audio {note}: {len(names)} ({_listed(names)})")


def main(argv: list[str] | None = None) -> None:
    parser = Parser(description=__doc__)
    add_corpus_args(parser)
    demo = parser.add_argument_group("the synthetic demo corpus (--make_demo)")
    demo.add_argument("--make_demo", metavar="DIR", help="write a synthetic demo corpus to DIR and exit")
    demo.add_argument("--layout", choices=list(KEMDY), default="kemdy19",
                      help="the corpus layout to write (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="demo corpus and tf-idf seed (default: %(default)s)")
    demo.add_argument("--sessions", type=int, default=None,
                      help="sessions (default: all of the layout's, 20 or 40)")
    demo.add_argument("--scripts", type=int, default=1, help="scripted dialogues per session (default: %(default)s)")
    demo.add_argument("--impros", type=int, default=1, help="improvised dialogues per session (default: %(default)s)")
    demo.add_argument("--turns", type=int, default=20, help="utterances per dialogue (default: %(default)s)")
    demo.add_argument("--class_shares", choices=["dialogue", "kemdy20"], default="dialogue",
                      help="emotions from sticky dialogue dynamics, or drawn with KEMDy20's real class shares (82%% "
                           "neutral; a skewed corpus) (default: %(default)s)")
    args = parser.parse_args(argv)
    with one_line_errors():
        if args.make_demo:
            from demo_corpus import make_demo_corpus
            make_demo_corpus(args.make_demo, args.seed, args.sessions, args.scripts, args.impros, args.turns,
                             layout=args.layout,
                             class_shares=KEMDY20_CLASS_COUNTS if args.class_shares == "kemdy20" else None)
            print(f"demo corpus written to {args.make_demo}; next: python preprocess.py --data_dir {args.make_demo}")
        else:
            text_dim = args.text_dim if args.text_dim is not None else text_dim_of(args.text_encoder)
            speech = feature_source(args.speech_model, args.speech_precision, args.whisper_input)
            preprocess(args.data_dir, args.text_encoder, text_dim, args.seed, speech, args.corpus, args.cache_dir,
                       args.bio_alignment, asr=parse_asr(args.asr, args.asr_language, args.asr_replace),
                       asr_replace=args.asr_replace, asr_off=args.asr == ASR_OFF)


if __name__ == "__main__":
    main()
