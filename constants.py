"""Fixed facts of the corpora (KEMDy19, KEMDy20, RAVDESS, TESS, EmoDB, manifest corpora): their classes, sessions and
splits, and the published feature settings, shared by every module."""
from dataclasses import dataclass

EMOTIONS = ["neutral", "happy", "surprise", "angry", "sad", "disgust", "fear"]
# What preprocessing records of a KEMDy corpus (other corpora: corpora.read_labelled): its classes, whether it has
# transcripts, the modalities a run uses by default, whether it has arousal/valence ratings, and what a session (the
# unit of the splits) is.
KEMDY_FACTS = {"classes": EMOTIONS, "text": True, "modalities": ["audio", "text"], "arousal_valence": True,
               "split_unit": "session (its two speakers speak in no other session)"}
# The corpus spells disgust as "disqust" in places; both mean the same class.
EMOTION_ALIASES = {"disqust": "disgust"}
NUM_RATERS = 10
NUM_SESSIONS = 20
RATING_RANGE = (1.0, 5.0)  # arousal/valence scale of every rater

# Published audio front end: 16 kHz, 10 s clips, log-mel spectrogram.
SAMPLE_RATE = 16000
MAX_SECONDS = 10.0
N_FFT = 2048
HOP_LENGTH = 512
N_MELS = 229
F_MIN = 30.0
F_MAX = 8000.0
LOG_OFFSET = 1e-6  # log(mel + offset): digital silence maps to log(1e-6) instead of -inf
MAX_FRAMES = int(MAX_SECONDS * SAMPLE_RATE) // HOP_LENGTH + 1  # 313 frames = 10 s (centred STFT)

TEXT_MAX_LENGTH = 64  # published KoBERT max sequence length
DEFAULT_TEXT_DIM = 768
DEFAULT_DATA_DIR = "data/KEMDy19"
DEFAULT_TEXT_ENCODER_REAL = "skt/kobert-base-v1"
DEFAULT_TEXT_ENCODER_DEMO = "tfidf"
DEMO_MARKER_FILE = "DEMO_CORPUS.txt"  # written by the demo generator so every tool can say "demo, not KEMDy19"
# Preprocessing's records in a corpus's cache folder: what the outputs were made from (and the corpus kind),
# and every repaired, dropped or remarked row.
MANIFEST, SUMMARY = "preprocess_manifest.json", "preprocess_summary.json"
WAVS = "wavs.json"  # Segment ID -> its wav, relative to the corpus folder
# What a manifest's rows may name (soundfile reads them all); every such file is in the up-to-date check.
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
BIO_ALIGNMENTS = ("clock", "ids")  # how KEMDy bio-signals are aligned to the utterances (biosignals.py)
CT2_WEIGHTS = "model.bin"  # the weights of a CTranslate2 / faster-whisper model folder

# KEMDy20's single-label utterances per class over the whole corpus (KEMDY20_FORMAT.md): non-actors speak mostly
# neutrally. The demo generator can draw its emotions with these shares (--class_shares kemdy20).
KEMDY20_CLASS_COUNTS = {"neutral": 11100, "happy": 1180, "surprise": 150, "angry": 145, "sad": 120, "disgust": 60,
                        "fear": 45}

# Published 5-fold session cross-validation.
CV_FOLDS = [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16], [17, 18, 19, 20]]


@dataclass(frozen=True)
class Protocol:
    """A corpus's sessions (the unit of its splits) and its published or speaker-independent splits."""
    name: str
    sessions: int
    test_split: tuple[int, ...]  # the default test sessions
    cv_folds: tuple[tuple[int, ...], ...]  # test sessions of each cross-validation fold
    listener: bool  # whether the listener's emotion is annotated too
    val_sessions: int = 2  # --val_split auto: this many sessions before the test sessions


CORPUS_CODES = {"kemdy19": 19, "kemdy20": 20}  # several corpora at once: session 3 of KEMDy19 is key 1903, "19_03"
KEMDY = tuple(CORPUS_CODES)
PROTOCOLS = {
    "kemdy19": Protocol("KEMDy19", NUM_SESSIONS, (13, 14, 15, 16), tuple(map(tuple, CV_FOLDS)), True),
    # KEMDy20: the 2022 contest's test sessions 33-40; 5 contiguous folds of 8 sessions (TensorMixer);
    # each row is the speaker's own emotion, there are no listener labels.
    "kemdy20": Protocol("KEMDy20", 40, tuple(range(33, 41)),
                        tuple(tuple(range(8 * k + 1, 8 * k + 9)) for k in range(5)), False),
    # Speaker-independent: sessions are speakers. RAVDESS: 4 folds of 6 actors (3 male, 3 female; validation: the 2
    # actors before the test fold, 1 of each). EmoDB: leave one speaker out. TESS has 2 speakers, so its sessions
    # are speaker x 5 word groups (corpora.py): leave one speaker out, validation a word group of the other.
    "ravdess": Protocol("RAVDESS", 24, tuple(range(19, 25)), tuple(tuple(range(6 * k + 1, 6 * k + 7))
                                                                    for k in range(4)), False),
    "tess": Protocol("TESS", 10, tuple(range(6, 11)), (tuple(range(1, 6)), tuple(range(6, 11))), False, 1),
    "emodb": Protocol("EmoDB", 10, (10,), tuple((k,) for k in range(1, 11)), False, 1),
}
CORPUS_NAMES = {**{kind: p.name for kind, p in PROTOCOLS.items()}, "csv": "manifest corpus"}


def manifest_protocol(sessions: int) -> Protocol:
    """A manifest corpus's splits: leave one session out for up to 12 sessions, else 5 contiguous folds; validation
    a tenth of the sessions (at least 1) before the test ones, none with 2 sessions (one trains, one tests)."""
    folds = ([(k,) for k in range(1, sessions + 1)] if sessions <= 12 else
             [tuple(range(sessions * k // 5 + 1, sessions * (k + 1) // 5 + 1)) for k in range(5)])
    return Protocol("manifest corpus", sessions, folds[-1], tuple(folds), False,
                    0 if sessions < 3 else max(1, sessions // 10))
