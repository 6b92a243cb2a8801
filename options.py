"""The flags of main.py (and the corpus and split flags that baseline.py and preprocess.py share): names, groups,
help, defaults, checks, recipes, and the frozen TrainSpec a run's training reads.

Nothing here imports torch, so that `-h` and a mistyped flag answer at once. The model flags' defaults are the
recommended recipe's and equal ModelConfig's (model.py; a test keeps the two equal); `ModelConfig.from_args` makes
a run's ModelConfig from its flags, `TrainSpec.from_args` its training settings, `protocol.resolve_data` its
DataSpec, each once.

A recipe (`--recipe NAME_OR_PATH`) is a YAML file of flag values, `recipes/<NAME>.yaml` or any path: its values
replace the defaults and the flags given on the command line replace its values; the run folder keeps a copy.
"""
import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from constants import BIO_ALIGNMENTS, CORPUS_NAMES, DEFAULT_DATA_DIR, DEFAULT_TEXT_DIM, MAX_SECONDS, SAMPLE_RATE
from errors import FlagError

# Flags that may be given with --resume (e.g. a lower --lr after a divergence, more --epochs).
RESUME_OVERRIDES = ("lr", "epochs", "num_workers", "device", "gpu_id", "amp")
RECIPES = Path(__file__).resolve().parent / "recipes"
RECIPE_COPY = "recipe.yaml"  # the recipe values a run used, in its run folder (`recipe_record`)
IMBALANCE = ("weight", "sampler", "logit_adjust", "crt", "val_bias")
LAYOUTS = ("a KEMDy19 or KEMDy20 folder, RAVDESS, TESS or EmoDB as published, or a folder with a manifest.csv "
           "(README, Your data)")


class Parser(argparse.ArgumentParser):
    """argparse whose error for a mistyped flag or value is one line, not that line under the whole usage (which
    `-h` prints)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def add_corpus_args(p: argparse.ArgumentParser) -> None:
    """What the corpus is and how it is preprocessed: the same names and meaning in main.py, baseline.py and
    preprocess.py."""
    a = p.add_argument_group("corpus").add_argument
    a("--data_dir", default=DEFAULT_DATA_DIR,
      help=f"the corpus: {LAYOUTS}; KEMDy19 and KEMDy20 together separated by a comma to train on their union "
           "(sessions then read 19_03, 20_03); if it is the default and empty, the synthetic demo corpus is made "
           "there (default: %(default)s)")
    a("--corpus", choices=["auto", *CORPUS_NAMES], default="auto",
      help="which corpus --data_dir holds (csv = a folder with a manifest.csv); auto = from its annotation file names "
           "or file layout (default: %(default)s)")
    a("--cache_dir", default=None, metavar="DIR",
      help="where preprocessing's derived files (tables, embeddings, feature caches) are: DIR/<corpus folder name> "
           "instead of the corpus folder, e.g. for a corpus on read-only storage (default: the corpus folder)")
    a("--text_encoder", default=None, help="sentence encoder for preprocessing: skt/kobert-base-v1 (default for "
                                           "KEMDy), a Hugging Face id or folder, or tfidf (default for the demo and "
                                           "the other corpora)")
    a("--speech_model", default=None, metavar="ID_OR_DIR",
      help="audio from this pretrained speech encoder's cached layer features instead of log-mel spectrograms: a "
           "Hugging Face id or folder of wav2vec2, HuBERT, WavLM, data2vec-audio, XLS-R or Whisper (openai/whisper-"
           "base...), or a CTranslate2 / faster-whisper folder (README: Whisper) (default: log-mel)")
    a("--speech_precision", choices=["float32", "int8"], default="float32",
      help="the --speech_model's extraction: float32, or int8 = its linear layers dynamically quantised (CPU; faster, "
           "features within a few percent) (default: %(default)s)")
    a("--whisper_input", choices=["clip", "30s"], default="clip",
      help="a Whisper --speech_model's input: clip = each clip at its own length, 30s = padded to 30 s as Whisper "
           "was trained (8x the time on RAVDESS's 3.7-s clips); its layers are pooled over the clip's frames "
           "either way (default: %(default)s)")
    a("--asr", default=None, metavar="MODEL",
      help="transcripts from speech for the utterances without one: a Whisper model for faster-whisper (a folder, "
           "README: Whisper; or a name it downloads), cached per corpus; the corpus's own transcripts win; none = "
           "the corpus's own alone (default: the ASR the corpus was last preprocessed with, if any)")
    a("--asr_language", default="auto",
      help="the language --asr transcribes, a code such as ko or en; auto = detected per utterance (default: "
           "%(default)s)")
    a("--asr_replace", action="store_true",
      help="--asr text for every utterance, also where the corpus has a transcript (its files are not changed): what "
           "ASR text does to a model, and the ASR's word error rate (default: off)")
    a("--text_dim", type=int, default=None,
      help=f"sentence embedding size (default: the --text_encoder's hidden size, from its config; {DEFAULT_TEXT_DIM} "
           "for tfidf and KoBERT)")
    a("--bio_alignment", choices=list(BIO_ALIGNMENTS), default="clock",
      help="KEMDy bio-signals: clock = the clock-consistent alignment (KEMDy19's shipped Segment IDs drift after its "
           "files' time gaps), ids = the rows carrying each Segment ID as shipped (default: %(default)s)")


def add_data_args(p: argparse.ArgumentParser) -> None:
    """The corpus flags, and what a run reads of it and how it is split: the same in main.py and baseline.py."""
    add_corpus_args(p)
    a = p.add_argument_group("data and splits").add_argument
    a("--save_path", default="exp", help="folder that holds the run folders (default: %(default)s)")
    a("--SorL", choices=["speaker", "listener"], default="speaker", help="whose emotion to predict (default: %(default)s)")
    a("--modalities", default=None, help="what the model (or baseline) sees, a comma list of audio, text and bio "
                                         "(KEMDy's wristband EDA, skin temperature and IBI), e.g. audio,text,bio "
                                         "(default: audio,text; audio for RAVDESS, TESS and EmoDB, whose text is a "
                                         "carrier sentence or absent)")
    a("--feature_norm", choices=["speaker", "training"], default="speaker",
      help="how acoustic inputs (log-mel bands, --speech_model layers, functionals) are standardised: speaker = "
           "z-scores with each speaker's own statistics, from all of that speaker's utterances, test speakers too "
           "(unlabelled; the field's speaker normalisation); training = the training sessions' statistics "
           "(default: %(default)s)")
    a("--functionals", default="egemaps,logmel", metavar="{egemaps,compare,logmel,none}",
      help="utterance functionals, a comma list: egemaps = openSMILE eGeMAPSv02 (88), compare = ComParE_2016 "
           "(6,373), logmel = mean and std of every log-mel band over the voiced frames; the network fuses them into "
           "every window step beside what it learns from the spectrogram, baseline.py reads them as its audio "
           "features; none = the spectrogram alone (default: %(default)s)")
    a("--label_map", default=None, metavar="LABEL:NEW,...",
      help="merge, rename or drop classes before training, e.g. calm:neutral (RAVDESS's 7-class protocol) or "
           "surprised: (drop); recorded in the run (default: the corpus's own classes)")
    a("--test_split", default=None, help="test sessions, e.g. [13,14,15,16] or 13,14,15,16, or names such as Actor_19 "
                                         "(default: the corpus's published test split: KEMDy19 13-16, KEMDy20 33-40)")
    a("--val_split", default="auto", help="validation sessions held out of training: a list, 'auto' (the sessions "
                                          "before the test split) or 'none' (published protocol: keep the last epoch) "
                                          "(default: %(default)s)")
    a("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    a("--seeds", default=None, help="several seeds, e.g. 0,1,2: one run folder each in one experiment folder with a "
                                    "mean +- std summary; combines with --cv (default: only --seed)")
    a("--cv", action="store_true", help="run the session cross-validation folds (one run folder each, with a summary)")
    a("--cv_folds", default=None, help="test sessions of each fold, folds separated by ';' (default: the corpus's "
                                       "published folds: KEMDy19 1-4;5-8;...;17-20, KEMDy20 1-8;...;33-40)")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    a = p.add_argument_group("model (defaults: the recommended recipe; the ModelConfig stored in every checkpoint)") \
        .add_argument
    a("--backbone", choices=["lstm", "gru"], default="lstm", help="recurrent backbone over the window (default: %(default)s)")
    a("--audio_dim", type=int, default=128,
      help="audio encoder output size; conv widths are dim/8..dim (default: %(default)s)")
    a("--audio_pool", choices=["bands", "mean"], default="bands",
      help="bands = mean and std over time per conv channel and frequency band; mean = average the frequency axis "
           "away, then mean and max over time (ablation) (default: %(default)s)")
    a("--hidden_size", type=int, default=128, help="recurrent hidden size (published: 512) (default: %(default)s)")
    a("--num_layers", type=int, default=2, help="recurrent layers (published: 4) (default: %(default)s)")
    a("--dropout", type=float, default=0.2,
      help="dropout in fusion, recurrent and arousal/valence layers (default: %(default)s)")
    a("--bidirectional", action="store_true", help="bidirectional recurrent backbone (default: off)")
    a("--speech_norm", choices=["feature", "layer"], default="feature",
      help="a --speech_model's layers on one scale: feature = as --feature_norm standardised them (speaker z-scores, "
           "or the training statistics), layer = each layer's vectors layer-normalised per utterance (default: "
           "%(default)s)")
    a("--fuse_logmel", action="store_true",
      help="with --speech_model: the log-mel CNN too, its features fused beside the speech model's layers at every "
           "window step (default: the speech model's layers in its place)")
    a("--functional_dropout", type=float, default=0.5,
      help="dropout on the standardised --functionals before their projection (default: %(default)s)")
    a("--no_cat", action="store_true", help="ablation: do not feed emotion probabilities to the arousal/valence trunk")
    a("--no_direct", action="store_true", help="ablation: the heads see only the last recurrent step, not also the "
                                               "target utterance's own features (the published model)")
    a("--freq_mask", type=int, default=20,
      help="SpecAugment: widest frequency mask in mel bands, 0 = off (default: %(default)s)")
    a("--time_mask", type=int, default=20,
      help="SpecAugment: widest time mask in frames, 0 = off (default: %(default)s)")


def _add_finetune_args(p: argparse.ArgumentParser) -> None:
    a = p.add_argument_group("fine-tuning pretrained encoders (GPU; README, Fine-tuning)").add_argument
    a("--finetune_speech", action="store_true",
      help="train the --speech_model's weights end to end: the waveforms of each window's target utterance go "
           "through it in the training step (default: frozen cached features)")
    a("--finetune_text", action="store_true",
      help="train the --text_encoder (a BERT, RoBERTa or ELECTRA id or folder; --text_dim its hidden size) end to "
           "end on the transcripts' token ids (default: frozen sentence embeddings)")
    a("--finetune_context", choices=["cache", "encoder"], default="cache",
      help="with --finetune_speech, a window's context utterances: cache = their frozen features (a step encodes "
           "only the batch's targets: 2.7x faster in benchmark.py), encoder = through the trained encoder too "
           "(default: %(default)s)")
    a("--text_pool", choices=["cls", "mean"], default="cls",
      help="with --finetune_text, the utterance vector: the first token's state, or the mean of the token states "
           "(default: %(default)s)")
    a("--encoder_lr", type=float, default=5e-5, help="learning rate of the fine-tuned encoders (--lr is the rest's) "
                                                      "(default: %(default)s)")
    a("--warmup_steps", type=int, default=500, help="the encoders' learning rate rises linearly over this many "
                                                    "optimizer steps (default: %(default)s)")
    a("--freeze_layers", type=int, default=0,
      help="the bottom N transformer layers of each fine-tuned encoder stay fixed (default: %(default)s)")
    a("--train_cnn", action="store_true", help="with --finetune_speech, train the convolutional feature encoder too "
                                               "(default: it stays fixed, as in wav2vec 2.0's fine-tuning)")
    a("--encoder_time_mask", type=float, default=0.05,
      help="with --finetune_speech, the encoder's own time masking in training: share of frames starting a masked "
           "span of its mask_time_length (wav2vec 2.0's mask_time_prob), 0 = off (default: %(default)s)")
    a("--max_seconds", type=float, default=MAX_SECONDS,
      help="with --finetune_speech, clips are cut to this long: a random stretch in training, the start in "
           "evaluation (default: %(default)s)")
    a("--grad_checkpointing", action="store_true",
      help="recompute the fine-tuned encoders' activations in the backward pass: less memory, more compute "
           "(default: off)")
    a("--accum_steps", type=int, default=1, help="batches per optimizer step (gradient accumulation) "
                                                  "(default: %(default)s)")


def _add_training_args(p: argparse.ArgumentParser) -> None:
    a = p.add_argument_group("training").add_argument
    a("--ws", type=int, default=8, help="window size: the utterance and ws-1 before it (default: %(default)s)")
    a("--batch_size", type=int, default=32, help="windows per batch (default: %(default)s)")
    a("--optim", choices=["sgd", "adam", "adamw", "adagrad"], default="adam",
      help="optimizer; adamw decouples --weight_decay from the gradient (default: %(default)s)")
    a("--loss", choices=["normal", "cbloss", "focal"], default="normal",
      help="normal = KLDiv + MSE; cbloss = class-balanced emotion term (Cui et al. 2019, --beta); focal = focal "
           "emotion term (Lin et al. 2017, --focal_gamma; with --imbalance weight: focal x class weights) "
           "(default: %(default)s)")
    a("--focal_gamma", type=float, default=2.0, help="--loss focal: the focusing exponent (default: %(default)s)")
    a("--imbalance", default="none", metavar="{none,weight,sampler,logit_adjust,crt,val_bias}",
      help="for skewed classes, one or several (comma list): weight = the emotion loss weighted by inverse class "
           "frequency; sampler = training windows drawn class-balanced; logit_adjust = the loss on logits + log prior "
           "(Menon et al. 2021; the balanced softmax of Ren et al. 2020); crt = after training, the emotion head "
           "trained again on class-balanced batches, the rest fixed (Kang et al. 2020); val_bias = after training, a "
           "per-class logit bias fitted on the validation sessions' macro-F1 (default: %(default)s)")
    a("--av_loss", choices=["mse", "ccc"], default="mse",
      help="arousal/valence loss: mse (published) or 1 - CCC over the batch (default: %(default)s)")
    a("--av_calibration", choices=["val", "none"], default="val",
      help="val = after training, scale and shift arousal/valence so that their mean and std on the validation "
           "sessions match the ratings' (AVEC-style post-processing; identity without validation sessions); "
           "none = raw outputs. With --av_loss ccc it changes little: that loss already matches the spread "
           "(default: %(default)s)")
    a("--lam", type=float, default=0.66, help="weight of the emotion loss; 1-lam goes to arousal+valence (default: %(default)s)")
    a("--beta", type=float, default=0.99, help="class-balanced loss beta (default: %(default)s)")
    a("--lr", type=float, default=1e-3, help="learning rate (default: %(default)s)")
    a("--lr_decay", type=float, default=0.98, help="learning rate multiplier applied after every epoch (default: %(default)s)")
    a("--weight_decay", type=float, default=0.0, help="L2 weight decay (default: %(default)s)")
    a("--epochs", type=int, default=30, help="training epochs (published: 100) (default: %(default)s)")
    a("--ema", type=float, default=0.8, help="validate, select and test an exponential moving average of the weights "
                                             "over epochs with this decay, e.g. 0.8; 0 = the raw weights (default: %(default)s)")
    a("--patience", type=int, default=10, help="early stopping: stop after this many epochs without a better "
                                              "validation score, 0 = never (default: %(default)s)")
    a("--amp", action="store_true", help="mixed precision on CUDA: bf16 where supported, else fp16 with a gradient "
                                        "scaler (default: float32; no effect on CPU)")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    a = p.add_argument_group("run control").add_argument
    a("--recipe", default=None, metavar="NAME_OR_PATH",
      help="flag values from a recipe file: recipes/NAME.yaml (published = the 2022 contest entry's configuration, "
           "recommended = the defaults) or a path; flags given here override it (default: none)")
    a("--plan_only", action="store_true", help="with --cv/--seeds: write the experiment folder and its plan, train "
                                              "nothing; then start one `--resume <folder>` job per GPU")
    a("--resume", default=None, metavar="RUN", help="continue an interrupted run (exp/<run>) from its last checkpoint, "
                                                    "or an interrupted experiment (--cv/--seeds folder); only " + " ".join(
                                                        f"--{k}" for k in RESUME_OVERRIDES) + " may be given with it")
    a("--test_only", nargs="?", const="", default=None, metavar="RUN",
      help="evaluate a saved run (a folder under --save_path, or a path) instead of training")
    a("--allow_corpus_change", action="store_true", help="--test_only on a corpus that differs from the one the run "
                                                         "was trained on: warn instead of refusing")
    a("--gpu_id", type=int, default=0, help="CUDA device index (default: %(default)s)")
    a("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto = CUDA when present (default: %(default)s)")
    a("--num_workers", type=int, default=0, help="DataLoader worker processes (default: %(default)s)")
    a("--test_path", default=None, metavar="RUN", help="deprecated: the same as --test_only RUN")
    a("--sr", type=int, default=None, help=f"deprecated: the audio is always resampled to {SAMPLE_RATE} Hz")


def get_parser(description: str | None = None) -> argparse.ArgumentParser:
    """main.py's flags, in groups (and `recipe_values`: the values of a --recipe, set by `parse_args`)."""
    p = Parser(description=description)
    p.set_defaults(recipe_values=None)
    add_data_args(p)
    _add_model_args(p)
    _add_training_args(p)
    _add_finetune_args(p)
    _add_run_args(p)
    return p


def recipe_path(name: str) -> Path:
    """A recipe's file: recipes/NAME.yaml, or NAME as a path; FlagError naming the recipes there are."""
    path = Path(name) if Path(name).suffix in (".yaml", ".yml") or Path(name).is_file() else RECIPES / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in RECIPES.glob("*.yaml")))
        raise FlagError(f"--recipe {name}: no such recipe file ({path}); the recipes here are {known}, or give a path")
    return path


def recipe_value(action: argparse.Action, value: object) -> object:
    """A recipe's YAML value as the flag of `action` takes it: a switch takes true or false; any other flag the text
    the command line would give it, converted and checked as argparse does (`epochs: 1.7` and `epochs: true` are
    refused as `--epochs 1.7` is). ValueError saying what was expected."""
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise ValueError(f"{value!r}: --{action.dest} is a switch: true or false")
        return value
    if value is None:
        raise ValueError("no value; give one, or delete the line to keep the default")
    if isinstance(value, (bool, list, dict)):
        raise ValueError(f"{value!r} is not a value of --{action.dest}; write it as on the command line")
    try:
        value = action.type(str(value)) if action.type is not None else str(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a valid value of --{action.dest}") from None
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"{value!r} is not one of {', '.join(map(str, action.choices))}")
    return value


def read_recipe(parser: argparse.ArgumentParser, name: str) -> dict:
    """The flag values of a recipe file, each checked as the flag itself would be (`recipe_value`); FlagError naming
    the recipe and the key for a key that is no flag of `parser` or a value it refuses."""
    import yaml  # only here: a run without a recipe never needs it

    path = recipe_path(name)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise FlagError(f"--recipe {path} is not a YAML file of flag values ({str(error).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise FlagError(f"--recipe {path} must hold `flag: value` lines (e.g. `epochs: 100`), not a {type(values).__name__}")
    actions = {a.dest: a for a in parser._actions}
    recipe = {}
    for key, value in values.items():
        action = actions.get(key)
        if action is None or key in ("recipe", "resume", "test_only", "test_path", "help"):
            raise FlagError(f"--recipe {path}: {key} is not a flag a recipe can set")
        try:
            recipe[key] = recipe_value(action, value)
        except ValueError as error:
            raise FlagError(f"--recipe {path}: {key}: {error}") from None
    return recipe


def parse_args(argv: list[str], description: str | None = None) -> argparse.Namespace:
    """main.py's flags, a --recipe's values under the flags given, checked (`check_args`). A recipe is read once,
    here: `args.recipe` becomes its absolute path and `args.recipe_values` its values, which the runs record
    (`recipe_record`) and an experiment's plan keeps, so that neither reads the file again."""
    parser = get_parser(description)
    args = parser.parse_args(argv)
    recipe = {}
    if args.recipe:
        path = recipe_path(args.recipe).resolve()
        recipe = read_recipe(parser, str(path))
        parser.set_defaults(**recipe)
        args = parser.parse_args(argv)
        args.recipe, args.recipe_values = str(path), recipe
    try:
        check_args(args)
    except FlagError as error:
        given = explicit_flags(argv)
        from_recipe = [k for k in error.flags if k in recipe and k not in given]
        if from_recipe:
            raise FlagError(f"--recipe {args.recipe}: {from_recipe[0]}: {recipe[from_recipe[0]]!r}: {error}") from None
        raise
    return args


def recipe_record(args: argparse.Namespace) -> str:
    """The run folder's recipe.yaml: the recipe's keys with the values the run used (a flag given beside the recipe
    wins; the recipe's own value is then in a comment), as read when the flags were parsed."""
    import yaml

    lines = [f"# --recipe {args.recipe}, as read when the run's flags were parsed; each value is the one the run used",
             "# (a flag given beside the recipe overrides it: the recipe's value follows in a comment)"]
    for key, value in args.recipe_values.items():
        used = vars(args)[key]
        line = yaml.safe_dump({key: used}, default_flow_style=True, width=1000).strip().strip("{}")
        lines.append(line + (f"  # recipe: {value!r}" if used != value else ""))
    return "\n".join(lines) + "\n"


def check_args(args: argparse.Namespace) -> None:
    """FlagError naming the first flag whose value cannot work, or two flags that conflict (its `flags`: the flags
    at fault, so that a recipe's value is named as the recipe's)."""
    checks = [(("ws",), args.ws >= 1, "--ws must be at least 1"),
              (("lam",), 0.0 <= args.lam <= 1.0, "--lam must be in [0, 1]"),
              (("beta",), 0.0 <= args.beta < 1.0, "--beta must be in [0, 1)"),
              (("focal_gamma",), args.focal_gamma >= 0, "--focal_gamma must be >= 0"),
              (("batch_size",), args.batch_size >= 1, "--batch_size must be >= 1"),
              (("epochs",), args.epochs >= 1, "--epochs must be >= 1"), (("lr",), args.lr > 0, "--lr must be > 0"),
              (("sr",), args.sr in (None, SAMPLE_RATE), f"--sr: the feature cache is computed at {SAMPLE_RATE} Hz"),
              (("audio_dim",), args.audio_dim % 8 == 0 and args.audio_dim >= 8, "--audio_dim must be a multiple of 8"),
              (("patience",), args.patience >= 0, "--patience must be >= 0"),
              (("ema",), 0.0 <= args.ema < 1.0, "--ema must be in [0, 1)"),
              (("num_layers",), args.num_layers >= 1, "--num_layers must be >= 1"),
              (("hidden_size",), args.hidden_size >= 2, "--hidden_size must be >= 2"),
              (("text_dim",), args.text_dim is None or args.text_dim >= 1, "--text_dim must be >= 1"),
              (("dropout",), 0.0 <= args.dropout < 1.0, "--dropout must be in [0, 1)"),
              (("functional_dropout",), 0.0 <= args.functional_dropout < 1.0, "--functional_dropout must be in [0, 1)"),
              (("num_workers",), args.num_workers >= 0, "--num_workers must be >= 0"),
              (("seed",), args.seed >= 0, "--seed must be >= 0"),
              (("freq_mask", "time_mask"), args.freq_mask >= 0 and args.time_mask >= 0,
               "--freq_mask and --time_mask must be >= 0"),
              (("plan_only",), not args.plan_only or args.cv or args.seeds,
               "--plan_only goes with --cv and/or --seeds"),
              (("encoder_lr",), args.encoder_lr > 0, "--encoder_lr must be > 0"),
              (("warmup_steps",), args.warmup_steps >= 0, "--warmup_steps must be >= 0"),
              (("freeze_layers",), args.freeze_layers >= 0, "--freeze_layers must be >= 0"),
              (("accum_steps",), args.accum_steps >= 1, "--accum_steps must be >= 1"),
              (("encoder_time_mask",), 0.0 <= args.encoder_time_mask < 1.0, "--encoder_time_mask must be in [0, 1)"),
              (("max_seconds",), args.max_seconds > 0, "--max_seconds must be > 0"),
              (("finetune_speech", "speech_model"), not args.finetune_speech or args.speech_model,
               "--finetune_speech needs --speech_model ID_OR_DIR"),
              (("fuse_logmel", "speech_model"), not args.fuse_logmel or args.speech_model,
               "--fuse_logmel fuses the log-mel CNN beside a --speech_model's layers; without one the CNN is the "
               "audio"),
              (("speech_precision", "speech_model"), args.speech_precision == "float32" or args.speech_model,
               "--speech_precision int8 quantises a --speech_model; without one the audio is log-mel spectrograms"),
              (("whisper_input", "speech_model"), args.whisper_input == "clip" or args.speech_model,
               "--whisper_input 30s is the input of a Whisper --speech_model; without one the audio is log-mel "
               "spectrograms")]
    for flags, ok, message in checks:
        if not ok:
            raise FlagError(message, flags)
    imbalance = parse_imbalance(args.imbalance)
    if args.loss == "cbloss" and "weight" in imbalance:
        raise FlagError("--loss cbloss and --imbalance weight both weight the emotion loss per class; choose one",
                        ("loss", "imbalance"))
    if args.val_split == "none":
        check_fitted(imbalance, (), args.val_split)
    if args.finetune_speech and args.feature_norm == "speaker":
        # The fine-tuned encoder reads raw waveforms, which a speaker's cached statistics do not reach: its live
        # rows would meet speaker z-scored context rows on another scale.
        raise FlagError("--finetune_speech reads raw waveforms, which --feature_norm speaker (the default) does not "
                        "standardise: add --feature_norm training", ("finetune_speech", "feature_norm"))


def check_fitted(imbalance: frozenset[str], val: tuple, val_split: str) -> None:
    """FlagError where --imbalance crt or val_bias, fitted on the validation sessions, meets none: --val_split none,
    or an automatic split that leaves none (a corpus of two speakers: one trains, one tests)."""
    fitted = sorted(imbalance & {"crt", "val_bias"})
    if fitted and not val:
        why = ("--val_split none leaves none" if val_split == "none" else
               f"--val_split {val_split} leaves none on this corpus (too few sessions: one trains, one tests)")
        raise FlagError(f"--imbalance {','.join(fitted)} is fitted on the validation sessions; {why}",
                        ("imbalance", "val_split"))


def parse_imbalance(text: str) -> frozenset[str]:
    """--imbalance 'sampler,val_bias' -> {"sampler", "val_bias"}; "none" -> {}; FlagError for anything else."""
    chosen = frozenset(p.strip() for p in text.split(",") if p.strip()) - {"none"}
    if chosen - set(IMBALANCE):
        raise FlagError(f"--imbalance {text}: choose from none, {', '.join(IMBALANCE)} (a comma list)")
    return chosen


@dataclass(frozen=True)
class TrainSpec:
    """How a run trains, made once from its checked flags (`from_args`): the engine reads this, never the flags.
    The model's shape is its ModelConfig, its data its DataSpec."""
    seed: int
    ws: int  # window: the target utterance and ws - 1 before it
    batch_size: int
    epochs: int
    patience: int  # early stopping after this many epochs without a better validation score; 0 = never
    optim: str
    lr: float
    lr_decay: float  # per epoch
    weight_decay: float
    lam: float  # the emotion loss's weight; 1 - lam goes to arousal + valence
    av_loss: str  # "mse" or "ccc"
    av_calibration: str  # "val" or "none"
    class_weights: str | None  # "cbloss" (Cui et al.'s, with `beta`), "inverse" (--imbalance weight) or None
    beta: float
    focal_gamma: float  # --loss focal; 0 = the plain emotion term
    sampler: bool  # training windows drawn class-balanced
    logit_adjust: bool
    crt: bool  # the emotion head trained again on class-balanced batches after training
    val_bias: bool  # a per-class logit bias fitted on the validation sessions
    ema: float  # decay of the weight average that is validated, selected and tested; 0 = the raw weights
    amp: bool
    accum_steps: int
    encoder_lr: float  # fine-tuned encoders
    warmup_steps: int
    grad_checkpointing: bool
    max_seconds: float
    num_workers: int

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "TrainSpec":
        imbalance = parse_imbalance(args.imbalance)
        weights = "cbloss" if args.loss == "cbloss" else "inverse" if "weight" in imbalance else None
        return cls(seed=args.seed, ws=args.ws, batch_size=args.batch_size, epochs=args.epochs, patience=args.patience,
                   optim=args.optim, lr=args.lr, lr_decay=args.lr_decay, weight_decay=args.weight_decay, lam=args.lam,
                   av_loss=args.av_loss, av_calibration=args.av_calibration, class_weights=weights, beta=args.beta,
                   focal_gamma=args.focal_gamma if args.loss == "focal" else 0.0,
                   sampler="sampler" in imbalance, logit_adjust="logit_adjust" in imbalance, crt="crt" in imbalance,
                   val_bias="val_bias" in imbalance, ema=args.ema, amp=args.amp, accum_steps=args.accum_steps,
                   encoder_lr=args.encoder_lr, warmup_steps=args.warmup_steps,
                   grad_checkpointing=args.grad_checkpointing, max_seconds=args.max_seconds,
                   num_workers=args.num_workers)


def parse_modalities(text: str | None, has_text: bool, default: tuple[str, ...] = ("audio", "text"),
                     has_bio: bool = False) -> tuple[str, ...]:
    """--modalities -> a tuple of audio, text, bio in that order (e.g. ("audio", "text")); FlagError for anything
    else, for text on a corpus without transcripts, or bio on one without bio-signals. Unset: the corpus's default
    (audio alone where its text is a carrier sentence or absent; bio never, until measured on real files)."""
    if text is None:
        return tuple(m for m in default if m != "text" or has_text)
    given = [p.strip() for p in text.split(",") if p.strip()]
    chosen = tuple(m for m in ("audio", "text", "bio") if m in given)
    if not chosen or len(chosen) != len(given):
        raise FlagError(f"--modalities '{text}' must be a comma list of audio, text and bio, e.g. audio,text")
    if "text" in chosen and not has_text:
        raise FlagError(f"--modalities {text}: the corpus has no transcripts; use --modalities audio")
    if "bio" in chosen and not has_bio:
        raise FlagError(f"--modalities {text}: the corpus has no bio-signals (KEMDy's EDA/, TEMP/, IBI/ folders)")
    return chosen


def modality_check(text: str | None) -> Callable[[dict], None]:
    """--modalities checked against a corpus's facts (preprocess's `check_facts`): FlagError as parse_modalities."""
    def check(facts: dict) -> None:
        parse_modalities(text, facts["text"], tuple(facts["modalities"]), facts["bio"])
    return check


# Flags whose default is not what runs did before the flag existed: a run saved without them gets these values
# (baseline.py's runs, saved with --audio_features, read its default functionals already, as they still do).
BEFORE_FLAGS = {"feature_norm": "training", "functionals": "none", "speech_norm": "layer"}


def run_arguments(saved: dict, overrides: dict | None = None,
                  defaults: argparse.Namespace | None = None) -> argparse.Namespace:
    """A saved run's (or experiment plan's) arguments under this version's flags: a flag added since it was saved
    gets the value that reproduces what runs did before it existed (its default, main.py's or those of
    `defaults`, or BEFORE_FLAGS'); then the `overrides` given."""
    defaults = defaults if defaults is not None else get_parser().parse_args([])
    before = {k: v for k, v in BEFORE_FLAGS.items() if not (k == "functionals" and "audio_features" in saved)}
    return argparse.Namespace(**{**vars(defaults), **before, **saved, **(overrides or {})})


def explicit_flags(argv: list[str]) -> dict:
    """The flags given on the command line (not defaults, not a recipe's), with their values."""
    parser = get_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS  # absent flags then stay out of the namespace
    flags = {action.dest for action in parser._actions}
    return {k: v for k, v in vars(parser.parse_args(argv)).items() if k in flags}
