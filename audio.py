"""Audio primitives shared by preprocessing, the baseline, fine-tuning and predict.py: reading any clip as mono
16 kHz float32 (channels that cancel, silence and odd rates handled and noted) and the published log-mel front end."""
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

from constants import F_MAX, F_MIN, HOP_LENGTH, LOG_OFFSET, N_FFT, N_MELS, SAMPLE_RATE
from errors import CorpusError

SILENCE_PEAK = 10 ** (-60 / 20)  # no sample above -60 dBFS: no speech (a 16-bit file's floor is -96 dBFS)
# Averaging the channels keeps under a quarter (-6 dB) of their mean energy: they cancel (one is the other
# inverted, a common wiring fault), and the average would silence the speech.
CANCEL_RATIO = 0.25


def read_audio(path: Path) -> tuple[np.ndarray, list[str]]:
    """(mono float32 at 16 kHz, notes for the user). Channels are averaged, unless they cancel (then the loudest
    is used); other rates are resampled; a silent clip is noted. Raises CorpusError if unusable."""
    path = Path(path)
    if not path.exists():
        raise CorpusError(f"{path}: no such file")
    try:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as error:
        raise CorpusError(f"{path}: unreadable audio ({error})") from None
    if audio.size == 0:
        raise CorpusError(f"{path}: audio has no samples")
    if not np.isfinite(audio).all():
        raise CorpusError(f"{path}: audio has NaN or infinite samples")
    notes, mono = [], audio.mean(axis=1)
    energy = np.square(audio, dtype=np.float64).mean(axis=0)
    if audio.shape[1] > 1 and np.square(mono, dtype=np.float64).mean() < CANCEL_RATIO * energy.mean():
        mono = audio[:, int(energy.argmax())]
        notes.append(f"channels cancel when averaged: channel {int(energy.argmax()) + 1} of {audio.shape[1]} used")
    if np.abs(mono).max() < SILENCE_PEAK:
        notes.append("silent (no sample above -60 dBFS)")
    if rate != SAMPLE_RATE:
        # Polyphase resampling costs (reduced target rate) x (reduced source rate) weights: nothing for 48, 44.1,
        # 22.05 or 8 kHz, but 8000 x 12227 for TESS's 24,414 Hz (400 MB, seconds per clip). Such a rate goes
        # through the nearest fraction with a denominator up to 1000 (a time stretch under 0.01 %).
        ratio = Fraction(SAMPLE_RATE, rate).limit_denominator(1000)
        mono = torchaudio.functional.resample(torch.from_numpy(np.ascontiguousarray(mono)), ratio.denominator,
                                              ratio.numerator).numpy()
    return mono, notes


def load_audio(path: Path) -> np.ndarray:
    """Mono float32 at 16 kHz (see `read_audio`); raises CorpusError if unusable."""
    return read_audio(path)[0]


@lru_cache(maxsize=1)
def _mel_transform() -> torchaudio.transforms.MelSpectrogram:
    return torchaudio.transforms.MelSpectrogram(sample_rate=SAMPLE_RATE, n_fft=N_FFT, hop_length=HOP_LENGTH,
                                                n_mels=N_MELS, f_min=F_MIN, f_max=F_MAX, power=2.0)


def log_mel(audio: np.ndarray) -> np.ndarray:
    """(frames, n_mels) float16 log-mel spectrogram with the published settings.

    A clip shorter than one FFT window is zero-padded to it: the centred STFT's reflect padding needs
    more than n_fft / 2 samples, and a click of a few ms still gets a valid (short) spectrogram.
    """
    if len(audio) < N_FFT:
        audio = np.pad(audio, (0, N_FFT - len(audio)))
    with torch.inference_mode():
        mel = _mel_transform()(torch.from_numpy(np.ascontiguousarray(audio)))
    return torch.log(mel + LOG_OFFSET).T.numpy().astype(np.float16)


def feature_settings() -> dict:
    return {"sample_rate": SAMPLE_RATE, "n_fft": N_FFT, "hop_length": HOP_LENGTH, "n_mels": N_MELS,
            "f_min": F_MIN, "f_max": F_MAX, "log_offset": LOG_OFFSET}
