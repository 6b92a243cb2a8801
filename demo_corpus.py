"""Generator of a small synthetic corpus in the exact on-disk layout of KEMDy19 (or KEMDy20).

KEMDy19 and KEMDy20 need a licence from ETRI, so tests and the default run use this instead. The emotion
is learnable from both modalities but not trivially: audio carries it through prosody (pitch
level/range, energy, speaking rate, voice quality) over speaker-specific voices; the transcript
through emotion words mixed into neutral sentences; ten simulated raters disagree. It also
carries the dirt of the real corpus (markers, a blank row, a missing cell, a missing wav, an
empty transcript, the "disqust" spelling, a cp949 transcript, a row carrying its neighbour's Segment
ID). The KEMDy20 layout (`layout="kemdy20"`) has one annotation file per session with only the
speaker's labels, flat wav folders, cp949 transcripts, blank header cells of one space, a missing
transcript, bio-signal folders, the session-17 glitch (IDs in Sess17_eval.csv with another
session's prefix) and a row carrying its neighbour's Segment ID.
"""
import csv
import shutil
from datetime import datetime, timedelta, timezone
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from constants import DEMO_MARKER_FILE, EMOTIONS, NUM_RATERS, PROTOCOLS, SAMPLE_RATE
from errors import CorpusError
from utils import progress_bar


@dataclass(frozen=True)
class Prosody:
    pitch: float  # f0 multiplier over the speaker's base
    pitch_range: float  # relative f0 excursion within a syllable
    energy: float  # amplitude multiplier
    rate: float  # syllables per second
    breath: float  # share of aspiration noise
    tilt: float  # harmonic roll-off exponent: low = bright/tense, high = dark/soft
    jitter: float  # slow random f0 wobble (tremor, creak)
    rise: float  # f0 slope over the utterance (surprise rises, disgust falls)


PROSODY = {
    "neutral": Prosody(1.00, 0.10, 1.00, 4.2, 0.05, 1.6, 0.01, -0.05),
    "happy": Prosody(1.18, 0.30, 1.30, 4.8, 0.04, 1.2, 0.01, 0.05),
    "surprise": Prosody(1.32, 0.40, 1.25, 4.0, 0.06, 1.3, 0.02, 0.35),
    "angry": Prosody(1.10, 0.22, 1.90, 5.2, 0.02, 0.8, 0.02, -0.10),
    "sad": Prosody(0.88, 0.05, 0.55, 2.9, 0.25, 2.2, 0.02, -0.15),
    "disgust": Prosody(0.93, 0.18, 0.90, 3.3, 0.10, 1.8, 0.06, -0.25),
    "fear": Prosody(1.25, 0.15, 0.75, 5.4, 0.20, 1.5, 0.08, 0.10),
}
# Centres on the 1-5 scale (arousal, valence): the ratings correlate with the emotion.
AROUSAL_VALENCE = {
    "neutral": (2.8, 3.0), "happy": (3.7, 4.3), "surprise": (4.0, 3.4), "angry": (4.3, 1.7),
    "sad": (2.0, 1.8), "disgust": (3.2, 1.6), "fear": (3.8, 1.9),
}
# Raters confuse emotions of similar arousal more often than others.
CONFUSABLE = {
    "happy": ["surprise"], "surprise": ["happy", "fear"], "angry": ["disgust"], "sad": ["fear"],
    "disgust": ["angry", "sad"], "fear": ["surprise", "sad"], "neutral": ["sad", "happy"],
}
NEUTRAL_SENTENCES = [
    "오늘 회의는 세 시에 시작해요.", "그 책은 책상 위에 있어.", "내일 아침에 다시 전화할게.",
    "버스가 조금 늦게 온대.", "점심은 김밥으로 먹었어.", "창문 좀 닫아 줄래?",
    "주말에 시장에 가 보려고.", "서류는 이메일로 보냈어요.", "지하철 이 호선을 타면 돼.",
    "그 사람은 서울에서 일해.", "우산은 현관 옆에 뒀어.", "다음 주에 이사를 한다고 했지.",
    "커피 한 잔 마실래?", "숙제는 다 끝냈어.", "은행은 아홉 시에 문을 열어.",
    "동생이 학교에서 돌아왔어.", "냉장고에 우유가 있어.", "이 길로 쭉 가면 역이 나와.",
    "저녁에는 비가 온대요.", "그 영화는 두 시간짜리야.", "회사까지 삼십 분 걸려.",
    "편지는 어제 도착했어.", "가방을 의자 위에 놓았어.", "오후에 친구를 만나기로 했어.",
]
EMOTION_PHRASES = {
    "happy": ["정말 기뻐요", "너무 좋다", "신난다", "행복해", "최고야", "진짜 고마워"],
    "surprise": ["어머 깜짝이야", "진짜야?", "세상에", "정말 놀랐어", "말도 안 돼", "이게 웬일이야"],
    "angry": ["화가 나", "짜증나 죽겠어", "그만 좀 해", "어이가 없네", "열받아", "왜 자꾸 그래"],
    "sad": ["너무 슬퍼", "눈물이 나", "속상해", "외로워", "우울해", "마음이 아파"],
    "disgust": ["역겨워", "더러워", "징그러워", "토할 것 같아", "보기 싫어", "끔찍해"],
    "fear": ["무서워", "겁이 나", "떨려", "불안해", "소름 돋아", "어떡해"],
}
DIRT = {2: "long", 3: "empty", 4: "nowav", 5: "cp949", 6: "notxt"}
MARKERS = ["c/", "n/", "N/", "u/", "l/", "b/", "o/"]
ANNOTATION_GROUPS = ["Numb", "Wav", "", "ECG", "", "E4-EDA", "", "E4-TEMP", "", "Segment ID",
                     "Total Evaluation", "", ""]
ANNOTATION_SUBHEADERS = ["", "start", "end", "start", "end", "start", "end", "start", "end", "",
                         "Emotion", "Valence", "Arousal"]
# KEMDy20: blank header cells hold one space, and the wav group is spelled WAV.
KEMDY20_GROUPS = ["Numb", "WAV", " ", "Segment ID", "Total Evaluation", " ", " "]
KEMDY20_SUBHEADERS = [" ", "start", "end", " ", "Emotion", "Valence", "Arousal"]
BIO_SIGNALS = ("EDA", "TEMP", "IBI")  # the Empatica E4 folders (KEMDy19: EDA and TEMP)
GLITCH_SESSION, GLITCH_PREFIX = 17, "Sess07"  # KEMDy20: some IDs in Sess17_eval.csv read Sess07_...
# As in the real Session03_F_res.csv: one file's first row carries the ID of the row after it (KEMDy19: the F file
# only, so the M file's same row proves the right ID; KEMDy20: the wav lengths prove it).
ID_GLITCH_SESSION = 8


def _drawn_states(rng: np.random.Generator, n_turns: int, shares: dict[str, float]) -> dict[str, list[str]]:
    """Each actor's emotion at every turn drawn independently with the given class shares (a skewed corpus)."""
    p = np.array([shares[e] for e in EMOTIONS]) / sum(shares.values())
    return {actor: [str(e) for e in rng.choice(EMOTIONS, size=n_turns, p=p)] for actor in ("F", "M")}


def _dialogue_states(rng: np.random.Generator, n_turns: int) -> dict[str, list[str]]:
    """Each actor's emotion at every turn: sticky, drawn towards the scene's theme and each other."""
    theme = rng.choice(EMOTIONS[1:])
    states = {"F": ["neutral"], "M": ["neutral"]}
    for _ in range(n_turns - 1):
        for actor, other in (("F", "M"), ("M", "F")):
            u = rng.random()
            if u < 0.55:
                nxt = states[actor][-1]
            elif u < 0.70:
                nxt = states[other][-1]  # emotional contagion: the listener follows the speaker
            elif u < 0.85:
                nxt = "neutral"
            elif u < 0.95:
                nxt = theme
            else:
                nxt = rng.choice(EMOTIONS)
            states[actor].append(str(nxt))
    return states


def _transcript(rng: np.random.Generator, emotion: str) -> str:
    sentence = str(rng.choice(NEUTRAL_SENTENCES))
    if emotion != "neutral" and rng.random() < 0.55:
        sentence = f"{rng.choice(EMOTION_PHRASES[emotion])}. {sentence}"
    elif emotion == "neutral" and rng.random() < 0.08:  # misleading word: text alone is not enough
        sentence = f"{rng.choice(EMOTION_PHRASES[str(rng.choice(EMOTIONS[1:]))])}. {sentence}"
    if rng.random() < 0.2:
        sentence = f"{rng.choice(MARKERS)} 어 {sentence}"
    if rng.random() < 0.1:
        sentence = sentence.replace(" ", "* ", 1) + "+"
    if rng.random() < 0.05:
        sentence = sentence.replace(" ", " / ", 1)
    return sentence


def _synthesize(rng: np.random.Generator, voice: dict, prosody: Prosody, strength: float,
                n_syllables: int) -> np.ndarray:
    """A voiced harmonic signal with syllable envelopes; `strength` blends neutral and `prosody`."""
    neutral = PROSODY["neutral"]
    p = {k: (1 - strength) * getattr(neutral, k) + strength * getattr(prosody, k)
         for k in Prosody.__dataclass_fields__}
    rate = p["rate"] * voice["rate"] * rng.uniform(0.9, 1.1)
    duration = n_syllables / rate + 0.15
    n = int(duration * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    syllable_phase = t * rate
    slow_noise = np.interp(t, np.linspace(0, duration, 32), rng.standard_normal(32))
    f0 = (voice["f0"] * p["pitch"] * rng.uniform(0.95, 1.05)
          * (1 + p["pitch_range"] * np.sin(np.pi * (syllable_phase % 1.0)))
          * (1 + p["rise"] * t / duration) * (1 + p["jitter"] * slow_noise))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    harmonics = np.arange(1, 25)[:, None]
    freqs = harmonics * f0[None, :]
    formants = sum(np.exp(-0.5 * ((freqs - fc) / 250.0) ** 2) for fc in voice["formants"])
    amplitude = harmonics.astype(float) ** -p["tilt"] * (0.3 + formants) * (freqs < 7500)
    voiced = (amplitude * np.sin(harmonics * phase[None, :])).sum(axis=0)
    envelope = np.sin(np.pi * (syllable_phase % 1.0)) ** 2 * np.clip(rate * (duration - 0.15 - t) * 4, 0, 1)
    stress = np.repeat(rng.uniform(0.7, 1.2, n_syllables + 1), int(np.ceil(n / (n_syllables + 1))))[:n]
    breath = p["breath"] * rng.standard_normal(n) * 2.0
    signal = (voiced * (1 - p["breath"]) + breath) * envelope * stress
    signal *= 0.05 * p["energy"] * voice["gain"] / (np.std(signal) + 1e-8)
    signal += 0.002 * rng.standard_normal(n)  # room noise
    return np.clip(signal, -1.0, 1.0).astype(np.float32)


def _spell(emotion: str, rng: np.random.Generator) -> str:
    return "disqust" if emotion == "disgust" and rng.random() < 0.3 else emotion


def _ratings(rng: np.random.Generator, emotion: str, strength: float) -> tuple[list, str, float, float]:
    """Ten raters' (emotion, valence, arousal) and the totals: majority (ties `;`) and means."""
    agree = 0.45 + 0.45 * strength
    arousal_c, valence_c = (np.array(AROUSAL_VALENCE["neutral"]) + strength
                            * (np.array(AROUSAL_VALENCE[emotion]) - np.array(AROUSAL_VALENCE["neutral"])))
    arousal_c += rng.normal(0, 0.2)
    valence_c += rng.normal(0, 0.2)
    raters = []
    for _ in range(NUM_RATERS):
        u = rng.random()
        if u < agree:
            label = emotion
        elif u < agree + (1 - agree) * 0.5:
            label = str(rng.choice(CONFUSABLE[emotion]))
        else:
            label = "neutral" if emotion != "neutral" else str(rng.choice(EMOTIONS))
        valence = int(np.clip(np.rint(valence_c + rng.normal(0, 0.6)), 1, 5))
        arousal = int(np.clip(np.rint(arousal_c + rng.normal(0, 0.6)), 1, 5))
        raters.append([label, valence, arousal])
    labels = [r[0] for r in raters]
    counts = {e: labels.count(e) for e in dict.fromkeys(labels)}
    top = max(counts.values())
    total = ";".join(_spell(e, rng) for e, c in counts.items() if c == top)
    valence_mean = round(float(np.mean([r[1] for r in raters])), 1)
    arousal_mean = round(float(np.mean([r[2] for r in raters])), 1)
    return [[_spell(r[0], rng), r[1], r[2]] for r in raters], total, valence_mean, arousal_mean


def check_demo_target(root: Path) -> None:
    """Refuse (one line, nothing touched) a folder that holds anything but an earlier demo corpus."""
    if root.exists() and not root.is_dir():
        raise CorpusError(f"cannot write the demo corpus to {root}: it is a file")
    found = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir()) if root.is_dir() else []
    if found and not (root / DEMO_MARKER_FILE).exists():
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise CorpusError(f"refusing to write the demo corpus into {root}: it already holds {shown} "
                          f"(not a demo corpus: no {DEMO_MARKER_FILE}); choose an empty or new folder")


def make_demo_corpus(root: str | Path, seed: int = 0, n_sessions: int | None = None, n_scripts: int = 1,
                     n_impros: int = 1, n_turns: int = 20, layout: str = "kemdy19",
                     class_shares: dict[str, float] | None = None) -> Path:
    """Write a demo corpus under `root` (raw KEMDy19 layout, or KEMDy20's) and return its path. `root` must be
    missing, empty, or an earlier demo corpus (its marker file), so that no file of the user's is overwritten.
    KEMDy20 has scripted dialogues only: `n_impros` is ignored there. `class_shares` (class -> share) draws every
    utterance's emotion with those shares instead of the sticky dialogue dynamics (a skewed corpus)."""
    root = Path(root)
    kemdy20 = layout == "kemdy20"
    n_sessions = n_sessions or PROTOCOLS[layout].sessions
    check_demo_target(root)
    for generated in ("annotation", "wav", *BIO_SIGNALS):  # an earlier demo's files: none may mix into this one
        shutil.rmtree(root / generated, ignore_errors=True)
    (root / "annotation").mkdir(parents=True)
    # Written first, so that an interrupted generation can be run again into the same folder.
    name = PROTOCOLS[layout].name
    (root / DEMO_MARKER_FILE).write_text(
        f"Synthetic demo corpus in the {name} layout (seed {seed}); not {name}.\n", encoding="utf-8")
    rng = np.random.default_rng(seed)
    session_seeds = rng.integers(0, 2**31, size=n_sessions)
    for s in progress_bar(range(1, n_sessions + 1), desc="demo corpus", unit="session"):
        srng = np.random.default_rng(session_seeds[s - 1])
        voices = {
            "F": {"f0": srng.uniform(180, 250), "formants": srng.uniform([600, 1600, 2700], [900, 2300, 3200]),
                  "rate": srng.uniform(0.85, 1.15), "gain": srng.uniform(0.7, 1.4)},
            "M": {"f0": srng.uniform(95, 145), "formants": srng.uniform([450, 1200, 2400], [750, 1900, 2900]),
                  "rate": srng.uniform(0.85, 1.15), "gain": srng.uniform(0.7, 1.4)},
        }
        users = {"F": f"User{2 * s - 1:03d}F", "M": f"User{2 * s:03d}M"}  # KEMDy20: session n holds users 2n-1, 2n
        rows = {"F": [], "M": [], "speaker": []}
        dialogues = [f"script{i:02d}" for i in range(1, n_scripts + 1)] + \
                    ([] if kemdy20 else [f"impro{i:02d}" for i in range(1, n_impros + 1)])
        for script in dialogues:
            dialogue = f"Sess{s:02d}_{script}"
            wav_dir = root / "wav" / f"Session{s:02d}" / ("" if kemdy20 else dialogue)
            wav_dir.mkdir(parents=True, exist_ok=True)
            states = _drawn_states(srng, n_turns, class_shares) if class_shares else _dialogue_states(srng, n_turns)
            clock = srng.uniform(1, 5)
            sequence = {"F": 0, "M": 0}
            speaker = str(srng.choice(["F", "M"]))
            for turn in range(n_turns):
                if srng.random() < 0.85:  # mostly alternating turns
                    speaker = "M" if speaker == "F" else "F"
                sequence[speaker] += 1
                seg_id = (f"{dialogue}_{users[speaker]}_{sequence[speaker]:03d}" if kemdy20
                          else f"{dialogue}_{speaker}{sequence[speaker]:03d}")
                emotion = states[speaker][turn]
                strength = srng.uniform(0.35, 1.0) if emotion != "neutral" else 1.0
                # One instance of each kind of dirt, on the first segment of sessions 2-6.
                dirt = DIRT.get(s) if turn == 0 and script == dialogues[0] else None
                text = _transcript(srng, emotion)
                if dirt == "long":  # a long clip (9.8 s with the default seed; tests cover clips past the 10 s crop)
                    text = " ".join([text] + list(srng.choice(NEUTRAL_SENTENCES, 4)))
                elif dirt == "empty":  # a transcript of markers only
                    text = "b/ n/ *"
                n_syllables = int(np.clip(sum("가" <= ch <= "힣" for ch in text) * 0.6, 2, 60))
                audio = _synthesize(srng, voices[speaker], PROSODY[emotion], strength, n_syllables)
                duration = len(audio) / SAMPLE_RATE
                if dirt != "nowav":
                    sf.write(wav_dir / f"{seg_id}.wav", audio, SAMPLE_RATE, subtype="PCM_16")
                encoding = "cp949" if dirt == "cp949" or kemdy20 else "utf-8"
                if dirt != "notxt" or not kemdy20:  # (KEMDy19's demo has no missing transcript)
                    (wav_dir / f"{seg_id}.txt").write_bytes((text + "\n").encode(encoding))
                start, end = clock, clock + duration
                clock = end + srng.uniform(0.2, 1.5)
                for actor in ("F", "M"):  # each actor's file labels that actor (speaking or listening)
                    actor_emotion = states[actor][turn]
                    actor_strength = strength if actor == speaker else srng.uniform(0.35, 1.0)
                    raters, total, valence, arousal = _ratings(srng, actor_emotion, actor_strength)
                    labels = [seg_id, total, valence, arousal] + [v for r in raters for v in r]
                    rows[actor].append([round(start, 4), round(end, 4)] * 4 + labels)
                    if actor == speaker:
                        rows["speaker"].append([round(start, 4), round(end, 4)] + labels)
        if s < n_sessions:  # the last session has no bio folders, as the real corpora's Session04
            bio_rng = np.random.default_rng([seed, s, 4])  # its own stream: the audio and labels stay as they were
            (_write_kemdy20_bio if kemdy20 else _write_kemdy19_bio)(root, s, rows, users, bio_rng)
        if kemdy20:
            _write_kemdy20_session(root, s, rows["speaker"])
            continue
        for actor in ("F", "M"):
            table = [[i + 1] + r for i, r in enumerate(rows[actor])]
            if s == ID_GLITCH_SESSION and actor == "F" and len(table) > 1:
                table[0][9] = table[1][9]
            if s == 1 and actor == "F" and len(table) > 5:
                table[3][13 + 3 * 6 + 1] = ""  # a missing rater cell
                table.insert(5, [""] * len(table[0]))  # a blank row
            header1 = ANNOTATION_GROUPS + [x for i in range(1, NUM_RATERS + 1) for x in (f"Eval{i:02d}", "", "")]
            header2 = ANNOTATION_SUBHEADERS + ["Emotion", "Valence", "Arousal"] * NUM_RATERS
            with open(root / "annotation" / f"Session{s:02d}_{actor}_res.csv", "w", newline="",
                      encoding="utf-8") as f:
                csv.writer(f).writerows([header1, header2] + table)
    return root


def _write_kemdy20_session(root: Path, session: int, rows: list[list]) -> None:
    """SessNN_eval.csv (37 columns: Numb, start, end, Segment ID, totals, 10 raters)."""
    table = [[i + 1] + r for i, r in enumerate(rows)]
    if session == GLITCH_SESSION:
        for row in table[:3]:
            row[3] = GLITCH_PREFIX + row[3][6:]
    if session == ID_GLITCH_SESSION and len(table) > 1:
        table[0][3] = table[1][3]
    if session == 1 and len(table) > 5:
        table[3][7 + 3 * 6 + 1] = ""  # a missing rater cell
        table.insert(5, [""] * len(table[0]))  # a blank row
    header1 = KEMDY20_GROUPS + [x for i in range(1, NUM_RATERS + 1) for x in (f"Eval{i:02d}{'FM'[i % 2 == 0]}", " ", " ")]
    header2 = KEMDY20_SUBHEADERS + ["Emotion", "Valence", "Arousal"] * NUM_RATERS
    with open(root / "annotation" / f"Sess{session:02d}_eval.csv", "w", newline="", encoding="ascii",
              errors="replace") as f:
        csv.writer(f).writerows([header1, header2] + table)


# Bio-signals in both real layouts (../shared/KEMDY_BIOSIGNALS.md), with the real files' glitches: KEMDy19 files
# join two recordings and have a forward gap after which the Segment IDs (placed by counting rows) are displaced,
# and one file is cut short; KEMDy20 has one 0-byte IBI file and one EDA file cut short. The wearer's arousal
# drives skin-conductance responses, temperature and heart rate, so the modality carries some signal.
BIO_GAP_SESSION, BIO_GAP_SECONDS = 2, 30.0
BIO_CUT_SESSION = 1
RATE = 4


def _bio_trace(rng: np.random.Generator, n: int, segments: list[tuple[float, float, float]], base: float,
               signal: str) -> np.ndarray:
    """n samples at 4 Hz of EDA (µS) or TEMP (°C) over a timeline where `segments` (start s, end s, arousal 1-5)
    are the wearer's turns."""
    t = np.arange(n) / RATE
    drift = np.cumsum(rng.normal(0, 0.01 if signal == "EDA" else 0.002, n))
    trace = base + drift
    for start, end, arousal in segments:
        inside = (t >= start) & (t < end)
        if signal == "EDA":
            for peak in rng.uniform(start, end, rng.poisson(max(0.0, arousal - 2.0) * 1.2)):
                after = np.clip(t - peak, 0, None)
                trace += 0.15 * arousal * (1 - np.exp(-after / 0.8)) * np.exp(-after / 4.0) * (t > peak)
            trace[inside] += 0.08 * (arousal - 3)
        else:
            trace[inside] -= 0.06 * (arousal - 3)
    trace = np.maximum(trace, 0.01) if signal == "EDA" else trace
    return np.round(trace, 6 if signal == "EDA" else 2)


def _clock(seconds: float) -> str:
    return f"{int(seconds // 3600):02d}:{int(seconds % 3600 // 60):02d}:{seconds % 60:06.3f}"


def _write_kemdy19_bio(root: Path, session: int, rows: dict, users: dict, rng: np.random.Generator) -> None:
    """EDA|TEMP/SessionNN/Original/SessNN{F,M}.csv: `value,t,clock[,SegmentID]`, no header. Recording 0 holds the
    scripts, recording 1 the improvisations (`t` restarts); a dialogue's time 0 is at virtual sample A of the file.
    In session BIO_GAP_SESSION the clock jumps forward in the middle of the first dialogue; in BIO_CUT_SESSION the
    F file ends partway through its last dialogue. Both files carry both speakers' IDs on rows counted from A, so
    displaced after the gap (section 3b). The annotation's EDA/TEMP start/end cells get the wearer's value at the
    first sample at or after each segment's start and end (3c; NaN past the file's end), ECG a smooth trace."""
    turns = {}  # dialogue -> [(index in rows[actor], start, end)]: both actors' rows hold the same segments
    for k, row in enumerate(rows["F"]):
        turns.setdefault(row[8].rsplit("_", 1)[0], []).append((k, row[0], row[1]))
    recordings = [r for r in ([d for d in turns if "_script" in d], [d for d in turns if "_impro" in d]) if r]
    for actor in ("F", "M"):
        arousal = [row[11] for row in rows[actor]]
        ecg = np.cumsum(rng.normal(0, 0.05, len(rows[actor]) + 1))
        base = {"EDA": rng.uniform(0.5, 4.0), "TEMP": rng.uniform(31.5, 34.5)}
        clock, virtual, physical = 10 * 3600 + rng.uniform(0, 1800), 0, 0
        lines = {"EDA": [], "TEMP": []}
        for r, dialogues in enumerate(recordings):
            anchors, offset = {}, rng.uniform(20, 60)
            for d in dialogues:
                anchors[d] = int(round(RATE * offset))
                offset += turns[d][-1][2] + rng.uniform(20, 60)
            n = int(RATE * offset)
            kept = np.arange(n)
            if session == BIO_GAP_SESSION and r == 0:  # a forward gap in the middle of the first dialogue
                first = turns[dialogues[0]]
                gap_start = anchors[dialogues[0]] + int(RATE * first[len(first) // 2][1])
                gap_end = min(gap_start + int(RATE * BIO_GAP_SECONDS), n - 8)  # recording goes on after it
                kept = kept[(kept < gap_start) | (kept >= gap_end)]
            if session == BIO_CUT_SESSION and actor == "F" and r == len(recordings) - 1:
                kept = kept[:int(len(kept) * 0.8)]
            # The IDs go on the rows whose count from the file's start is the segment's virtual index: counting
            # rows skips the samples missing in a gap, so after one they land later on the clock (3b).
            ids = {virtual + row: rows[actor][k][8] for d in dialogues for k, ws, we in turns[d]
                   for row in range(int(np.ceil(anchors[d] + RATE * ws)), int(np.ceil(anchors[d] + RATE * we)))}
            segments = [(anchors[d] / RATE + ws, anchors[d] / RATE + we, arousal[k])
                        for d in dialogues for k, ws, we in turns[d]]
            traces = {}
            for signal in ("EDA", "TEMP"):
                traces[signal] = _bio_trace(rng, n, segments, base[signal], signal)
                if signal == "EDA":
                    traces[signal][0] = 0.0  # the E4 writes 0 first
                decimals = 6 if signal == "EDA" else 2
                lines[signal] += [f"{traces[signal][i]:.{decimals}f},{(i + 1) / RATE},{_clock(clock + (i + 1) / RATE)}"
                                  + (f",{ids[physical + p]}" if physical + p in ids else "")
                                  for p, i in enumerate(kept)]
            for d in dialogues:  # the annotation's cells: the first kept sample at or after each time
                for k, ws, we in turns[d]:
                    cells = []
                    for signal in ("EDA", "TEMP"):
                        for time in (ws, we):
                            at = np.searchsorted(kept, int(np.ceil(anchors[d] + RATE * time)))
                            cells.append(round(float(traces[signal][kept[at]]), 6) if at < len(kept) else "NaN")
                    rows[actor][k][2:8] = [round(float(ecg[k]), 6), round(float(ecg[k + 1]), 6)] + cells
            clock += n / RATE + rng.uniform(1800, 7200)  # the break between the two recordings
            virtual, physical = virtual + n, physical + len(kept)
        for signal, text in lines.items():
            folder = root / signal / f"Session{session:02d}" / "Original"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"Sess{session:02d}{actor}.csv").write_text("\n".join(text) + "\n", encoding="ascii")


def _k20_datetime(unix: float) -> str:
    """`YYYY-MMDD-HHMM-SS-mmm` in local time (UTC+9), as KEMDy20 writes it."""
    local = datetime.fromtimestamp(unix, tz=timezone(timedelta(hours=9)))
    return local.strftime("%Y-%m%d-%H%M-%S-") + f"{local.microsecond // 1000:03d}"


def _write_kemdy20_bio(root: Path, session: int, rows: dict, users: dict, rng: np.random.Generator) -> None:
    """EDA|TEMP|IBI/SessionNN/SessNN_scriptNN_UserNNNX.csv per dialogue and wearer: EDA/TEMP with the unix start
    and a rate line, then `value,datetime[,SegmentID]` at 4 Hz; IBI `t,ibi,datetime[,SegmentID]`. Each file starts
    12-230 s before the dialogue and carries only its wearer's IDs; the two wearers' clocks differ by about 240 s.
    Session 1: one 0-byte IBI file and one EDA file cut before its dialogue ends."""
    dialogues = {}
    for row in rows["speaker"]:
        dialogues.setdefault(row[2].rsplit("_", 2)[0], []).append(row)
    for dialogue, turns in dialogues.items():
        for actor, user in users.items():
            own = [(r[0], r[1], r[5], r[2]) for r in turns if f"_{user}_" in r[2]]
            lead = rng.uniform(12.5, 230.0)
            unix = 1597976852.0 + 86400 * session + (240.0 if actor == "M" else 0.0) + rng.uniform(0, 600)
            anchor = unix + lead
            duration = lead + turns[-1][1] + rng.uniform(10, 60)
            n = int(RATE * duration)
            segments = [(lead + ws, lead + we, arousal) for ws, we, arousal, _ in own]
            for signal in ("EDA", "TEMP", "IBI"):
                folder = root / signal / f"Session{session:02d}"
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / f"{dialogue}_{user}.csv"
                if signal == "IBI":
                    if session == BIO_CUT_SESSION and actor == "M" and dialogue.endswith("script01"):
                        path.write_bytes(b"")  # as Sess01_script05_User002M.csv of the real corpus
                        continue
                    beats, t = [], rng.uniform(10, 30)
                    while t < duration:
                        arousal = next((a for s0, s1, a in segments if s0 <= t < s1), 3.0)
                        ibi = round(float(np.clip(rng.normal(0.8 - 0.05 * (arousal - 3), 0.03), 0.45, 1.1)) * 64) / 64
                        t += ibi
                        if rng.random() > 0.1:  # dropped beats
                            seg = next((f",{sid}" for (ws, we, _, sid) in own if anchor + ws <= unix + t < anchor + we), "")
                            beats.append(f"{t:.6f},{ibi:.6f},{_k20_datetime(unix + t)}{seg}")
                    path.write_text("\n".join([f"{unix:.6f},IBI,{_k20_datetime(unix)}"] + beats) + "\n",
                                    encoding="ascii")
                    continue
                trace = _bio_trace(rng, n, segments, rng.uniform(0.5, 6.0) if signal == "EDA" else
                                   rng.uniform(32.0, 35.5), signal)
                trace[0] = 0.0 if signal == "EDA" else trace[0]
                if signal == "EDA" and session == BIO_CUT_SESSION and actor == "F":
                    trace = trace[:int(RATE * (lead + turns[-1][0]))]  # cut before the dialogue's last turn
                lines = [f"{unix:.6f},{_k20_datetime(unix)}", "4.000000,hz"]
                for i, value in enumerate(trace):
                    time = unix + i / RATE
                    seg = next((f",{sid}" for (ws, we, _, sid) in own if anchor + ws <= time < anchor + we), "")
                    lines.append(f"{value:.{6 if signal == 'EDA' else 2}f},{_k20_datetime(time)}{seg}")
                path.write_text("\n".join(lines) + "\n", encoding="ascii")
