"""Fixed facts of KEMDy19 and KEMDy20 and the published feature settings (shared by every module)."""
from dataclasses import dataclass

EMOTIONS = ["neutral", "happy", "surprise", "angry", "sad", "disgust", "fear"]
EMOTION_INDEX = {name: i for i, name in enumerate(EMOTIONS)}
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

# Published 5-fold session cross-validation.
CV_FOLDS = [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16], [17, 18, 19, 20]]


@dataclass(frozen=True)
class Protocol:
    """A corpus's sessions and its published splits."""
    name: str
    sessions: int
    test_split: tuple[int, ...]  # the default test sessions
    cv_folds: tuple[tuple[int, ...], ...]  # test sessions of each cross-validation fold
    listener: bool  # whether the listener's emotion is annotated too


CORPUS_CODES = {"kemdy19": 19, "kemdy20": 20}  # several corpora at once: session 3 of KEMDy19 is key 1903, "19_03"
PROTOCOLS = {
    "kemdy19": Protocol("KEMDy19", NUM_SESSIONS, (13, 14, 15, 16), tuple(map(tuple, CV_FOLDS)), True),
    # KEMDy20: the 2022 contest's test sessions 33-40; 5 contiguous folds of 8 sessions (TensorMixer);
    # each row is the speaker's own emotion, there are no listener labels.
    "kemdy20": Protocol("KEMDy20", 40, tuple(range(33, 41)),
                        tuple(tuple(range(8 * k + 1, 8 * k + 9)) for k in range(5)), False),
}
