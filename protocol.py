"""The data of a run, resolved once from the flags into a frozen DataSpec: the corpus folders and their kinds,
their cache folders, the role, the encoders, and the train/validation/test session keys (each corpus's
published splits unless given). Everything downstream reads the DataSpec; the flags are never rewritten.

Several corpora (--data_dir A,B) are trained as their union: session 3 of KEMDy19 is key 1903, shown as
"19_03"; fold k of --cv tests fold k of every corpus (KEMDy20 8k+1..8k+8 with KEMDy19 4k+1..4k+4).
"""
import argparse
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asr import ASR_OFF, Recognizer, parse_asr
from biosignals import bio_files
from constants import CORPUS_CODES, CORPUS_NAMES, DEFAULT_DATA_DIR, KEMDY, PROTOCOLS, Protocol, manifest_protocol
from corpora import detect_corpus, manifest_sessions, session_names
from errors import FlagError
from functionals import parse_functionals
from preprocess import is_demo_corpus, preprocess
from speech_features import FeatureSource, feature_source, model_identity
from text_encoder import text_dim_of
from utils import cache_folder, split_data_dir


@dataclass(frozen=True)
class DataSpec:
    folders: tuple[Path, ...]  # corpus folders, absolute
    kinds: tuple[str, ...]  # one per folder: "kemdy19", "kemdy20", "ravdess", "tess", "emodb" or "csv" (a manifest)
    cache_dir: Path | None  # --cache_dir, absolute (None: each corpus folder holds its derived files)
    role: str  # whose emotion: "speaker" or "listener"
    text_encoder: str | None  # None: the corpus's default (preprocess.default_text_encoder)
    text_dim: int
    speech: FeatureSource  # the audio's feature source: log-mel, or a --speech_model (a local folder made absolute)
    groups: tuple[tuple[int, ...], ...]  # the session keys of each corpus
    train: tuple[int, ...]
    val: tuple[int, ...]
    test: tuple[int, ...]
    cv_folds: tuple[tuple[int, ...], ...]  # the test sessions of each cross-validation fold
    names: tuple[str, ...] = ()  # one corpus with named sessions (speakers): the name of session k is names[k - 1]
    label_map: tuple[tuple[str, str], ...] = ()  # --label_map: (label, what it becomes; "" = dropped)
    bio_alignment: str = "clock"  # --bio_alignment: how KEMDy bio-signals are aligned to the utterances
    feature_norm: str = "training"  # --feature_norm: acoustic inputs standardised per speaker, or with training stats
    functionals: tuple[str, ...] = ()  # --functionals: the utterance functionals a run reads (functionals.py)
    fuse_logmel: bool = False  # --fuse_logmel: the log-mel frames too, beside a speech model's rows
    asr: Recognizer | None = None  # --asr: transcripts from speech where the corpus has none (asr.py)
    asr_replace: bool = False  # --asr_replace: ASR transcripts for every utterance
    asr_off: bool = False  # --asr none: the corpus's own transcripts alone (else the ASR it was preprocessed with)

    def corpus(self):
        """The dataset.Corpus of these corpora, caches and settings (preprocessed: `prepare_data`)."""
        from dataset import Corpus
        return Corpus(self.caches, self.role, self.text_dim, self.speech, self.label_map, self.bio_alignment,
                      self.feature_norm, self.functionals, self.fuse_logmel)

    @property
    def speech_model(self) -> str | None:
        """--speech_model, resolved (None: log-mel)."""
        return self.speech.name

    @property
    def caches(self) -> list[Path]:
        """Each corpus's cache folder (preprocess.py's outputs)."""
        return [cache_folder(folder, self.cache_dir) for folder in self.folders]

    def flags(self) -> dict:
        """The resolved values of the data flags, as a run records them (args.json, checkpoints): running again
        with them resolves to this same DataSpec from any directory."""
        return {"data_dir": ",".join(map(str, self.folders)),
                "cache_dir": str(self.cache_dir) if self.cache_dir else None,
                "corpus": self.kinds[0] if len(self.kinds) == 1 else "auto", "speech_model": self.speech_model,
                "text_dim": self.text_dim,
                "test_split": self.format(self.test), "cv_folds": ";".join(map(self.format, self.cv_folds))}

    def label(self, key: int) -> int | str:
        """A session as shown: its name (a speaker) where the corpus names them, else its number."""
        return self.names[key - 1] if self.names else session_label(key)

    def format(self, keys: tuple[int, ...]) -> str:
        """Sessions as a flag value that reads back to the same sessions: names where the corpus has them (EmoDB's
        speaker "10" is session 4; session 10 is speaker "16")."""
        return ",".join(str(self.label(k)) for k in keys)

    def record(self, present: set[int] | None = None) -> dict[str, list]:
        """The sessions as results.json and the console show them: those `present` in the corpus (its kept rows),
        where given."""
        return {name: [self.label(k) for k in keys if present is None or k in present] for name, keys in
                (("train", self.train), ("val", self.val), ("test", self.test))}

    def describe(self, present: set[int], unit: str) -> str:
        """The split as the console shows it: the sessions `present` in the corpus (`record`), and what a session is
        (the corpus's `split_unit`)."""
        shown = self.record(present)
        return (f"sessions (the unit of the splits: {unit}): train {shown['train']}, val {shown['val'] or 'none'}, "
                f"test {shown['test']}")

    def check_split(self, sessions: np.ndarray, labels: np.ndarray) -> None:
        """FlagError, one line naming the flag, for a split that cannot work on a corpus whose rows have these
        `sessions` and first `labels`: test or validation sessions without an utterance, training sessions without
        one or with a single class. Run by main.py and baseline.py alike, before any run folder is made."""
        present = set(sessions.tolist())
        for flag, what, keys in (("--test_split", "test", self.test), ("--val_split", "validation", self.val),
                                 ("--test_split/--val_split", "training", self.train)):
            if (keys or what != "validation") and not present & set(keys):
                raise FlagError(f"{flag}: the {what} sessions ({self.format(keys) or 'none'}) have no utterances in "
                                f"the corpus, whose sessions are {self.format(tuple(sorted(present)))}")
        classes = np.unique(labels[np.isin(sessions, self.train)])
        if len(classes) < 2:
            raise FlagError(f"--test_split/--val_split: the training sessions ({self.format(self.train)}) hold one "
                            "class alone; an emotion classifier needs two or more")


def session_label(key: int) -> int | str:
    """A session as shown: its number in one corpus, `19_03` for session 3 of KEMDy19 among several."""
    return f"{key // 100}_{key % 100:02d}" if key >= 100 else key


def _named(item: str, names: tuple[str, ...]) -> list[int]:
    """The sessions an item names: a session name, or a prefix of names before "_" (TESS's `OAF` = `OAF_words1..5`)."""
    if item in names:
        return [names.index(item) + 1]
    return [k + 1 for k, name in enumerate(names) if name.startswith(item + "_")]


def parse_sessions(text: str, flag: str, n_sessions: int, names: tuple[str, ...] = ()) -> list[int]:
    """'[13,14,15,16]' or '13,14,15,16' -> [13, 14, 15, 16]. Where the corpus names its sessions (speakers), an item
    is a name first (EmoDB's `16`, RAVDESS's `Actor_19`, TESS's `OAF`), else a session number. Anything else raises
    FlagError naming `flag`."""
    items = [s for s in re.split(r"[\s,]+", text.strip().strip("[]")) if s]
    try:
        sessions = [k for s in items for k in (_named(s, names) or [int(s)])]
    except ValueError:
        raise FlagError(f"{flag} '{text}' is not a list of session numbers like 13,14,15,16"
                        + (f" or names like {names[0]}" if names else "")) from None
    bad = [s for s in sessions if not 1 <= s <= n_sessions]
    if not sessions or bad:
        raise FlagError(f"{flag} '{text}' must name sessions from 1 to {n_sessions}"
                        + (f" (got {bad})" if bad else " (got none)"))
    return sorted(set(sessions))


def parse_split(text: str, flag: str, groups: tuple[tuple[int, ...], ...], names: tuple[str, ...] = ()) -> tuple[int, ...]:
    """Session keys from a list like 13,14 (one corpus; or its session names) or 19_13,20_33 (several); FlagError
    otherwise."""
    if len(groups) == 1:
        return tuple(parse_sessions(text, flag, len(groups[0]), names))
    known = {str(session_label(k)): k for group in groups for k in group}
    items = [s for s in re.split(r"[\s,]+", text.strip().strip("[]")) if s]
    bad = [s for s in items if s not in known]
    if not items or bad:
        raise FlagError(f"{flag} '{text}' must name sessions of the corpora, like 19_13,20_33 (got {bad or 'none'})")
    return tuple(sorted({known[s] for s in items}))


def _corpus_kinds(folders: list[Path], forced: str, data_dir: str) -> tuple[str, ...]:
    if len(folders) > 1 and forced != "auto":
        raise FlagError("--corpus names the corpus of one folder; with several in --data_dir each is recognised "
                        "from its annotation files")
    kinds = tuple(detect_corpus(folder, forced) for folder in folders)
    if len(set(kinds)) < len(kinds):
        raise FlagError(f"--data_dir {data_dir}: two folders of the same corpus; give each corpus once")
    if len(kinds) > 1 and set(kinds) - set(KEMDY):
        raise FlagError(f"--data_dir {data_dir}: only KEMDy19 and KEMDy20 train as a union (one label set); give "
                        f"{CORPUS_NAMES[next(k for k in kinds if k not in KEMDY)]} alone")
    return kinds


def corpus_protocol(kind: str, folder: Path) -> tuple[Protocol, tuple[str, ...]]:
    """The corpus's sessions and splits, and its session names (none for KEMDy: sessions are numbered)."""
    if kind == "csv":
        names = tuple(manifest_sessions(folder))
        if not names:
            raise FlagError(f"{folder}/manifest.csv names no usable speaker or session (no row has a wav and a label; "
                            "python preprocess.py names each row's problem)")
        if len(names) < 2:
            raise FlagError(f"{folder}/manifest.csv: its speakers form 1 group ({names[0]}) once the speakers of a "
                            "shared session are kept together; a speaker-independent split needs at least two")
        return manifest_protocol(len(names)), names
    return PROTOCOLS[kind], tuple(session_names(kind))


def _validation(val_split: str, groups: tuple[tuple[int, ...], ...], test: tuple[int, ...], count: int,
                names: tuple[str, ...]) -> tuple[int, ...]:
    """--val_split: none, a list, or auto = in each corpus the `count` sessions just before its test sessions
    (wrapping around)."""
    if val_split == "none":
        return ()
    if val_split != "auto":
        return parse_split(val_split, "--val_split", groups, names)
    val = []
    for group in groups:
        tested = [k for k in group if k in test]
        if tested:
            first = group.index(tested[0])
            before = [group[(first - 1 - k) % len(group)] for k in range(len(group))]
            val += [k for k in before if k not in test][:count]
    return tuple(sorted(val))


def parse_label_map(text: str | None) -> tuple[tuple[str, str], ...]:
    """--label_map 'calm:neutral,surprised:' -> (("calm", "neutral"), ("surprised", "")): merge or rename a class,
    or (empty target) drop its utterances."""
    if not text:
        return ()
    pairs = [item.split(":") for item in text.split(",") if item.strip()]
    if any(len(pair) != 2 or not pair[0].strip() or ";" in pair[1] for pair in pairs):
        raise FlagError(f"--label_map '{text}' is not a list like calm:neutral,surprised: (label:new label, or "
                        "label: to drop it)")
    pairs = [(old.strip().lower(), new.strip().lower()) for old, new in pairs]
    if len({old for old, _ in pairs}) < len(pairs):
        raise FlagError(f"--label_map '{text}' maps one label twice")
    return tuple(pairs)


def resolve_data(args: argparse.Namespace) -> DataSpec:
    """The DataSpec of the data and split flags (--data_dir, --cache_dir, --corpus, --SorL, --test_split,
    --val_split, --cv_folds, --text_encoder, --text_dim, --speech_model with --speech_precision and --whisper_input,
    --label_map, --bio_alignment, --feature_norm, --functionals). Reads only annotation file names (and, without
    --text_dim, a transformer --text_encoder's config for its width; a hub id's --speech_model its config, for its
    kind); a listener run on a corpus without listener labels stops here, before any work."""
    folders = split_data_dir(args.data_dir)
    kinds = _corpus_kinds(folders, args.corpus, args.data_dir)
    protocols, names = zip(*(corpus_protocol(kind, folder) for kind, folder in zip(kinds, folders)))
    names = names[0] if len(kinds) == 1 else ()
    unlabelled = [p.name for p in protocols if not p.listener]
    if args.SorL == "listener" and unlabelled:
        raise FlagError(f"--SorL listener: {unlabelled[0]} ({args.data_dir}) annotates only the speaker's emotion; "
                        "use --SorL speaker")
    bases = [100 * CORPUS_CODES[kind] if len(kinds) > 1 else 0 for kind in kinds]
    groups = tuple(tuple(base + s for s in range(1, p.sessions + 1)) for p, base in zip(protocols, bases))
    published = [tuple(base + s for p, base in zip(protocols, bases) for s in p.cv_folds[k])
                 for k in range(len(protocols[0].cv_folds))]
    test = (parse_split(args.test_split, "--test_split", groups, names) if args.test_split is not None
            else tuple(base + s for p, base in zip(protocols, bases) for s in p.test_split))
    cv_folds = (tuple(parse_split(f, "--cv_folds", groups, names) for f in args.cv_folds.split(";"))
                if args.cv_folds is not None else tuple(published))
    val = _validation(args.val_split, groups, test, protocols[0].val_sessions, names)
    if set(val) & set(test):
        raise FlagError(f"--val_split {args.val_split} overlaps --test_split {args.test_split}")
    caches = [cache_folder(folder, args.cache_dir) for folder in folders]
    if len(set(caches)) < len(caches):
        raise FlagError(f"--data_dir {args.data_dir} with --cache_dir {args.cache_dir}: two corpus folders have the "
                        "same name, so their derived files would share one cache folder; rename one of them")
    speech_model = model_identity(args.speech_model) if args.speech_model else None  # usable from anywhere
    return DataSpec(folders=tuple(folder.resolve() for folder in folders), kinds=kinds,
                    cache_dir=Path(args.cache_dir).resolve() if args.cache_dir else None, role=args.SorL,
                    text_encoder=args.text_encoder,
                    text_dim=args.text_dim if args.text_dim is not None else text_dim_of(args.text_encoder),
                    speech=feature_source(speech_model, args.speech_precision, args.whisper_input), groups=groups,
                    train=tuple(k for group in groups for k in group if k not in test and k not in val),
                    val=val, test=test, cv_folds=cv_folds, names=names,
                    label_map=parse_label_map(args.label_map), bio_alignment=args.bio_alignment,
                    feature_norm=args.feature_norm, functionals=parse_functionals(args.functionals),
                    fuse_logmel=bool(vars(args).get("fuse_logmel")),
                    asr=parse_asr(args.asr, args.asr_language, args.asr_replace), asr_replace=args.asr_replace,
                    asr_off=args.asr == ASR_OFF)


def prepare_data(spec: DataSpec, check_facts: Callable[[dict], None] | None = None) -> None:
    """Make the demo corpus if the default folder is empty, then preprocess every corpus folder (a no-op when up
    to date; `check_facts` sees each corpus's facts before its slow steps, see preprocess, and "bio": whether any
    corpus of the spec has bio-signal folders). Jobs that share a corpus (folds spread over GPUs) take turns
    (preprocess's lock)."""
    for folder in spec.folders:
        if not (folder / "annotation").exists() and folder == Path(DEFAULT_DATA_DIR).resolve():
            from demo_corpus import make_demo_corpus
            print(f"No KEMDy19 corpus in {DEFAULT_DATA_DIR}: making the synthetic DEMO corpus there. Results on it "
                  "say nothing about KEMDy19; put the licensed corpus in its place for real numbers.")
            make_demo_corpus(folder, seed=0)
    # Found once for all folders: a union has bio-signals if one of its corpora has (dataset.Corpus zero-fills and
    # masks the other's rows).
    bio = check_facts is not None and any(kind in KEMDY and bio_files(folder)
                                          for folder, kind in zip(spec.folders, spec.kinds))
    for folder, kind in zip(spec.folders, spec.kinds):
        preprocess(folder, spec.text_encoder, spec.text_dim, speech=spec.speech, corpus=kind,
                   cache_dir=spec.cache_dir, bio_alignment=spec.bio_alignment, functionals=spec.functionals,
                   asr=spec.asr, asr_replace=spec.asr_replace, asr_off=spec.asr_off,
                   check_facts=None if check_facts is None else lambda facts: check_facts({**facts, "bio": bio}))
        if is_demo_corpus(folder):
            print(f"NOTE: {folder} is the synthetic demo corpus, not {CORPUS_NAMES[kind]}.")
