"""The network: audio (a log-mel CNN, a frozen speech model's layers with SUPERB layer weights, or a fine-tuned
speech encoder) + text (sentence embeddings or a fine-tuned text encoder) + bio-signal fusion over a dialogue window,
a recurrent backbone, emotion and arousal/valence heads. It imports only torch: the data, the pretrained weights
(finetune.py) and training (engine.py) live elsewhere.

Differs from the published model where it was wrong: one audio encoder is shared by all window
steps (the published CNN mixed the window's utterances across channels, so step i was not
utterance i), and padded steps get a zero vector plus a mask bit. Its shape is a ModelConfig (like
nanoGPT's GPTConfig): made once from the flags, stored in every checkpoint, the only thing a saved
model is rebuilt from.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchaudio

from constants import DEFAULT_TEXT_DIM, EMOTIONS, N_MELS


MODEL_INPUTS = ("spec", "spec_lengths", "text", "slots")  # the batch entries EmotionModel.forward takes, in order
LIVE_INPUTS = ("waves", "wave_lengths", "wave_slots", "tokens", "token_mask")  # those of fine-tuned encoders
BIO_WIDTH = 16  # the bio-signal features' projection, fused with the audio and text features


def model_inputs(batch: dict) -> dict:
    """The entries of a batch that EmotionModel.forward takes, by name."""
    return {k: batch[k] for k in MODEL_INPUTS + LIVE_INPUTS + ("bio", "functionals", "mel", "mel_lengths")
            if k in batch}


def _time_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]


def _mean_std_over_time(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(U, D, T) with frames past `lengths` ignored -> (U, 2D): mean and standard deviation over time."""
    mask = _time_mask(lengths, x.shape[-1])[:, None, :]
    count = lengths[:, None].to(x.dtype)
    mean = (x * mask).sum(-1) / count
    spread = ((((x - mean[..., None]) * mask) ** 2).sum(-1) / count + 1e-5).sqrt()
    return torch.cat([mean, spread], dim=1)


class AudioEncoder(nn.Module):
    """Log-mel (U, T, mels) -> (U, dim): SpecAugment (training), strided conv blocks, pooling over the
    valid frames (per frequency band by default, see `pool`), dropout and a projection.

    Padded frames are zeroed after every block, so an utterance's encoding does not depend on
    how long the other clips of its batch are (in eval mode).
    """

    def __init__(self, dim: int, n_mels: int = N_MELS, pool: str = "bands", freq_mask: int = 0, time_mask: int = 0,
                 dropout: float = 0.0):
        super().__init__()
        self.register_buffer("mel_mean", torch.zeros(n_mels))
        self.register_buffer("mel_std", torch.ones(n_mels))
        widths = [1] + [dim // 8, dim // 4, dim // 2, dim]
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                          nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))
            for c_in, c_out in zip(widths[:-1], widths[1:]))
        self.pool = pool
        bands = n_mels
        for _ in self.blocks:
            bands = (bands - 1) // 2 + 1
        # "bands": mean and std over time of every (channel, frequency band), so where the energy sits in
        # the spectrum (pitch, formants, tilt) survives pooling; "mean": the frequency axis is averaged
        # away first, then mean and max over time (the earlier encoder, kept as an ablation).
        self.proj = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * dim * (bands if pool == "bands" else 1), dim))
        # SpecAugment (Park et al., 2019), training only: one frequency and one time mask per clip.
        self.augment = nn.Sequential(*(
            [torchaudio.transforms.FrequencyMasking(freq_mask, iid_masks=True)] if freq_mask else []) + (
            [torchaudio.transforms.TimeMasking(time_mask, iid_masks=True)] if time_mask else []))

    def forward(self, spec: torch.Tensor, lengths: torch.Tensor, frame_budget: int = 8192) -> torch.Tensor:
        """Packed frames (sum of lengths, mels) of U clips -> (U, dim).

        Clips are encoded in groups of similar length, each padded only to its own longest clip:
        one 10 s clip would otherwise pad a batch of 2 s clips to 10 s. A group holds at most
        `frame_budget` padded frames, which bounds compute and activation memory.
        """
        sizes = lengths.tolist()  # grouping is decided on the host: one device sync, not one per clip
        order = sorted(range(len(sizes)), key=sizes.__getitem__)
        groups, first = [], 0
        for end in range(1, len(order) + 1):
            if end == len(order) or (end - first + 1) * sizes[order[end]] > frame_budget:
                groups.append(order[first:end])
                first = end
        starts = torch.cumsum(lengths, 0) - lengths
        encoded = []
        for group in groups:
            members = torch.tensor(group, device=spec.device)
            steps = torch.arange(sizes[group[-1]], device=spec.device)  # the group's longest clip
            index = (starts[members, None] + steps[None, :]).clamp(max=len(spec) - 1)
            encoded.append(self._encode(spec[index], lengths[members]))
        # The groups are consecutive slices of `order`: undo that sort to return clips in input order.
        return torch.cat(encoded)[torch.argsort(torch.tensor(order, device=spec.device))]

    def _encode(self, spec: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = _time_mask(lengths, spec.shape[1])
        x = ((spec - self.mel_mean) / self.mel_std) * mask[..., None]
        x = x.transpose(1, 2).unsqueeze(1)  # (U, 1, mels, T)
        if self.training and len(self.augment):
            x = self.augment(x)  # masks fill with 0, the normalised mean
        for block in self.blocks:
            x = block(x)
            lengths = (lengths - 1) // 2 + 1
            x = x * _time_mask(lengths, x.shape[-1])[:, None, None, :]
        if self.pool == "bands":
            pooled = _mean_std_over_time(x.flatten(1, 2), lengths)  # over (channel, band) rows: (U, 2 * C * bands)
        else:
            x = x.mean(dim=2)  # over frequency: (U, C, T')
            mask = _time_mask(lengths, x.shape[-1])[:, None, :]
            mean = (x * mask).sum(-1) / lengths[:, None].to(x.dtype)
            pooled = torch.cat([mean, x.masked_fill(~mask, float("-inf")).amax(-1)], dim=1)
        return self.proj(pooled)


class SpeechEncoder(nn.Module):
    """Pooled layers of a frozen pretrained speech model -> (U, dim), the SUPERB way: every layer on one scale, then a
    learnable softmax-weighted sum over layers (which layer carries emotion differs between models and is learned,
    not guessed), dropout and a projection. `norm` puts the layers on one scale: "feature" standardises every row
    with the buffers `row_mean`/`row_std` (the training statistics with --feature_norm training; identity for
    speaker z-scores, which are standard already), "layer" layer-normalises each layer's mean and std vectors per
    utterance (which also takes out how far the utterance lies from its speaker's mean as a whole).

    Input: U utterances' L rows each, packed like log-mel frames (spec (U * L, 2 * D), lengths all L);
    a row is [mean | std] over time of one layer's hidden states.
    """

    def __init__(self, layers: int, speech_dim: int, dim: int, dropout: float = 0.0, norm: str = "feature"):
        super().__init__()
        self.layers, self.speech_dim, self.norm = layers, speech_dim, norm
        self.register_buffer("row_mean", torch.zeros(layers, 2 * speech_dim))
        self.register_buffer("row_std", torch.ones(layers, 2 * speech_dim))
        self.layer_logits = nn.Parameter(torch.zeros(layers))
        self.proj = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * speech_dim, dim))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        # Runs saved before the row statistics existed layer-normalised their rows: identity buffers.
        state_dict.setdefault(prefix + "row_mean", torch.zeros_like(self.row_mean))
        state_dict.setdefault(prefix + "row_std", torch.ones_like(self.row_std))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def layer_weights(self) -> torch.Tensor:
        return torch.softmax(self.layer_logits, dim=0)

    def forward(self, spec: torch.Tensor, lengths: torch.Tensor, live: torch.Tensor | None = None) -> torch.Tensor:
        """-> (U + W, dim): the U cached utterances, then the W rows `live` (W, L, 2, D) computed in the step by a
        fine-tuned encoder (WaveformEncoder), if given."""
        x = spec.view(len(lengths), self.layers, 2 * self.speech_dim)
        if live is not None:
            x = torch.cat([x, live.to(x.dtype).flatten(2)])
        x = ((x - self.row_mean) / self.row_std).view(len(x), self.layers, 2, self.speech_dim)
        if self.norm == "layer":  # each layer's mean and std vectors on one scale
            x = F.layer_norm(x, (self.speech_dim,))
        x = torch.einsum("l,ulsd->usd", self.layer_weights(), x)
        return self.proj(x.flatten(1))


def transformer_layers(backbone: nn.Module) -> nn.ModuleList:
    """The stack of transformer layers of a speech (`encoder.layers`) or text (`encoder.layer`) backbone."""
    encoder = backbone.encoder
    return encoder.layers if hasattr(encoder, "layers") else encoder.layer


def _freeze(module: nn.Module) -> None:
    for parameter in module.parameters():
        parameter.requires_grad_(False)


class WaveformEncoder(nn.Module):
    """Waveforms (U, T) at 16 kHz and their lengths (U,) -> (U, L, 2, D): per layer (the CNN output and every
    transformer layer), the mean and standard deviation over the clip's frames of the hidden states.

    `masked`: give the backbone an attention mask (models with a layer-norm CNN; a group-norm CNN, as wav2vec2-base,
    is given none, as its feature extractor says, and sees a training batch's zero padding, as in its own
    fine-tuning recipe). `freeze_cnn` keeps the convolutional feature encoder fixed, the usual practice since
    wav2vec 2.0's fine-tuning (its weights carry little an utterance label can improve and its activations take
    most of the memory); the bottom `freeze_layers` transformer layers stay fixed too, with what lies below them.
    `time_mask`: the backbone's own SpecAugment-like masking of its CNN features in training (`mask_time_prob`
    of its config, spans of `mask_time_length` frames), 0 = off. Layer drop is turned off: the layer weights
    read every layer's states.
    """

    def __init__(self, backbone: nn.Module, masked: bool, normalize: bool, freeze_cnn: bool = True,
                 freeze_layers: int = 0, time_mask: float = 0.0):
        super().__init__()
        self.backbone, self.masked, self.normalize = backbone, masked, normalize
        backbone.config.mask_time_prob, backbone.config.mask_feature_prob = time_mask, 0.0
        backbone.config.apply_spec_augment = time_mask > 0
        backbone.config.layerdrop = 0.0  # a dropped layer would leave its hidden states out of the output
        if time_mask > 0 and getattr(backbone, "masked_spec_embed", None) is None:
            # A config saved without masking has no mask embedding: add one, initialised as the model does.
            backbone.masked_spec_embed = nn.Parameter(torch.empty(backbone.config.hidden_size).uniform_())
        if freeze_cnn:
            backbone.feature_extractor._freeze_parameters()  # (HuBERT has no freeze_feature_encoder())
        if freeze_layers:  # what lies below the first trained layer: projection, position embedding, mask vector
            below = [backbone.feature_projection, backbone.encoder.pos_conv_embed]
            if not getattr(backbone.config, "do_stable_layer_norm", False):  # post-norm models normalise first
                below.append(backbone.encoder.layer_norm)
            for module in below:
                _freeze(module)
            if getattr(backbone, "masked_spec_embed", None) is not None:
                backbone.masked_spec_embed.requires_grad_(False)
        for layer in list(transformer_layers(backbone))[:freeze_layers]:
            _freeze(layer)

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if not self.masked and not self.training and len(waves) > 1:
            # Without an attention mask the padding is input: in evaluation each clip goes alone, so that its
            # features do not depend on the clips that share its batch (and predict.py gives the same).
            return torch.cat([self(waves[i:i + 1, :int(n)], lengths[i:i + 1]) for i, n in enumerate(lengths)])
        valid = (torch.arange(waves.shape[1], device=waves.device)[None, :] < lengths[:, None]).to(waves.dtype)
        if self.normalize:  # zero mean, unit variance over each clip's own samples (Wav2Vec2FeatureExtractor)
            count = lengths[:, None].to(waves.dtype)
            mean = (waves * valid).sum(1, keepdim=True) / count
            var = (((waves - mean) * valid) ** 2).sum(1, keepdim=True) / count
            waves = (waves - mean) / torch.sqrt(var + 1e-7) * valid
        mask = valid.long() if self.masked else None
        hidden = self.backbone(waves, attention_mask=mask, output_hidden_states=True).hidden_states
        states = torch.stack(hidden, 1).float()  # statistics in float32 under autocast too
        frames = self.backbone._get_feat_extract_output_lengths(lengths)
        keep = (torch.arange(states.shape[2], device=waves.device)[None, :] < frames[:, None])
        keep = keep[:, None, :, None].to(states.dtype)
        count = frames.to(states.dtype)[:, None, None]
        mean = (states * keep).sum(2) / count
        std = torch.sqrt(((states - mean[:, :, None]) ** 2 * keep).sum(2) / count + 1e-8)
        return torch.stack([mean, std], 2)  # (U, L, 2, D)


class TokenEncoder(nn.Module):
    """Token ids (U, N) and their attention mask -> (U, H): the first token's state (`pool="cls"`) or the mean of
    the token states under the mask (`"mean"`). The bottom `freeze_layers` layers (and the embeddings with them)
    stay fixed."""

    def __init__(self, backbone: nn.Module, pool: str = "cls", freeze_layers: int = 0):
        super().__init__()
        self.backbone, self.pool = backbone, pool
        if getattr(backbone, "pooler", None) is not None:  # BERT's pooler is not read: keep it out of training
            _freeze(backbone.pooler)
        if freeze_layers:
            _freeze(backbone.embeddings)
        for layer in list(transformer_layers(backbone))[:freeze_layers]:
            _freeze(layer)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        states = self.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        if self.pool == "cls":
            return states[:, 0]
        weights = mask[..., None].to(states.dtype)
        return (states * weights).sum(1) / weights.sum(1).clamp(min=1)


@dataclass
class Backbones:
    """The pretrained networks a fine-tuning run trains (finetune.py loads them): a speech backbone with its feature
    extractor and what that says (`masked`: it takes an attention mask; `normalize`: clips are standardised), a
    text backbone with its tokenizer."""
    speech: nn.Module | None = None
    masked: bool = False
    normalize: bool = True
    extractor: object = None
    text: nn.Module | None = None
    tokenizer: object = None


def _identity_av_map() -> dict[str, torch.Tensor]:
    return {"av_scale": torch.ones(2), "av_shift": torch.zeros(2)}


@dataclass(frozen=True)
class ModelConfig:
    """The model's shape and its training-time augmentation. The defaults are the recipe's (the CLI takes
    them from here); the published model is hidden_size=512, num_layers=4, audio_dim=256, audio_pool="mean",
    direct=False, freq_mask=0, time_mask=0 (`$PUBLISHED` in docs/reproducing.md)."""
    text_dim: int = DEFAULT_TEXT_DIM  # sentence embedding size
    audio_dim: int = 128  # audio encoder output; conv widths are audio_dim/8 .. audio_dim
    hidden_size: int = 128  # fusion and recurrent width
    num_layers: int = 2  # recurrent layers
    bidirectional: bool = False
    backbone: str = "lstm"  # or "gru"
    emotion_concat: bool = True  # the arousal/valence trunk also sees the emotion probabilities
    dropout: float = 0.2
    audio_pool: str = "bands"  # or "mean" (the frequency axis averaged away; ablation)
    direct: bool = True  # the heads also see the target utterance's own fused features
    freq_mask: int = 20  # SpecAugment: widest frequency mask in mel bands, 0 = off
    time_mask: int = 20  # SpecAugment: widest time mask in frames, 0 = off
    speech_layers: int = 0  # > 0: a speech model's pooled layers (L rows of width 2 * speech_dim), not log-mel
    speech_dim: int = 0
    fuse_logmel: bool = False  # with speech_layers: the log-mel CNN too, its features beside the speech model's
    speech_norm: str = "feature"  # the speech layers' scale: as --feature_norm standardised them, or "layer" norm
    classes: tuple[str, ...] = tuple(EMOTIONS)  # the corpus's emotion classes (KEMDy's seven by default)
    modalities: tuple[str, ...] = ("audio", "text")  # what the fusion sees: audio, text, bio (KEMDy wearables)
    bio_dim: int = 0  # bio-signal features per utterance (biosignals.FEATURES), with "bio" in modalities
    functionals: tuple[str, ...] = ()  # utterance functionals fused beside the audio features (functionals.py)
    functional_dim: int = 0  # their width; 0 = none (or no audio in modalities)
    functional_dropout: float = 0.5  # dropout on the standardised functionals, before their projection
    arousal_valence: bool = True  # whether the corpus rates arousal/valence (else those heads are not trained)
    # Pretrained encoders trained end to end (finetune.py); their backbones are given to EmotionModel.
    finetune_speech: bool = False  # waveforms through the speech backbone in the step (needs speech_layers > 0)
    finetune_text: bool = False  # token ids through the text backbone in the step (text_dim = its hidden size)
    finetune_context: str = "cache"  # a window's context utterances: frozen cache rows, or "encoder"
    text_pool: str = "cls"  # the text backbone's utterance vector: first token's state, or "mean" of the tokens
    freeze_cnn: bool = True  # the speech backbone's convolutional feature encoder stays fixed
    freeze_layers: int = 0  # the bottom transformer layers of each fine-tuned backbone that stay fixed
    encoder_time_mask: float = 0.05  # the speech backbone's own time masking in training (mask_time_prob)

    @classmethod
    def from_args(cls, args: dict, speech_shape: tuple[int, int] | None = None, **corpus) -> "ModelConfig":
        """The config of a run's arguments (main.py's flags, as a dict). Arguments a run saved by an earlier
        version lacks take the values of that version: no SpecAugment, no speech model, KEMDy's classes.
        `speech_shape` is the (layers, width) of the --speech_model cache (default: what `args` recorded);
        `corpus` gives what the corpus decides: classes, modalities, arousal_valence."""
        layers, width = speech_shape or (args.get("speech_layers", 0), args.get("speech_dim", 0))
        return cls(text_dim=args["text_dim"], audio_dim=args["audio_dim"], hidden_size=args["hidden_size"],
                   num_layers=args["num_layers"], bidirectional=args["bidirectional"], backbone=args["backbone"],
                   emotion_concat=not args["no_cat"], dropout=args["dropout"], audio_pool=args["audio_pool"],
                   direct=not args["no_direct"], freq_mask=args.get("freq_mask", 0),
                   time_mask=args.get("time_mask", 0), speech_layers=layers, speech_dim=width,
                   fuse_logmel=bool(layers) and args.get("fuse_logmel", False),
                   speech_norm=args.get("speech_norm", "layer"),
                   finetune_speech=args.get("finetune_speech", False), finetune_text=args.get("finetune_text", False),
                   finetune_context=args.get("finetune_context", "cache"), text_pool=args.get("text_pool", "cls"),
                   freeze_cnn=not args.get("train_cnn", False), freeze_layers=args.get("freeze_layers", 0),
                   encoder_time_mask=args.get("encoder_time_mask", 0.05),
                   functional_dropout=args.get("functional_dropout", 0.5), **corpus)


class EmotionModel(nn.Module):
    """The model of a ModelConfig; a fine-tuning config (finetune_speech / finetune_text) also takes the pretrained
    `backbones` it trains (finetune.pretrained_backbones, or finetune.run_backbones for a saved run)."""

    def __init__(self, config: ModelConfig = ModelConfig(), backbones: Backbones | None = None):
        super().__init__()
        c = self.config = config
        if c.finetune_speech:
            self.waveform = WaveformEncoder(backbones.speech, backbones.masked, backbones.normalize, c.freeze_cnn,
                                            c.freeze_layers, c.encoder_time_mask)
        if c.finetune_text:
            self.token_encoder = TokenEncoder(backbones.text, c.text_pool, c.freeze_layers)
        # Log-mel spectrograms through the CNN, or with speech_layers > 0 a speech model's pooled layers.
        if "audio" in c.modalities:
            self.audio = (SpeechEncoder(c.speech_layers, c.speech_dim, c.audio_dim, c.dropout, c.speech_norm)
                          if c.speech_layers
                          else AudioEncoder(c.audio_dim, pool=c.audio_pool, freq_mask=c.freq_mask,
                                            time_mask=c.time_mask, dropout=c.dropout))
        if "audio" in c.modalities and c.fuse_logmel:  # the log-mel CNN beside a speech model's layers
            self.logmel = AudioEncoder(c.audio_dim, pool=c.audio_pool, freq_mask=c.freq_mask, time_mask=c.time_mask,
                                       dropout=c.dropout)
        if "text" in c.modalities:
            self.text_norm = nn.LayerNorm(c.text_dim)
        if "bio" in c.modalities:  # z-scored statistics, counts and presence masks: one linear layer
            self.bio = nn.Sequential(nn.Linear(c.bio_dim, BIO_WIDTH), nn.ReLU(inplace=True))
        if c.functional_dim:
            # Utterance functionals (eGeMAPS, band statistics: what the linear baseline reads), standardised with the
            # buffers (training statistics; identity for speaker z-scores), then a heavy input dropout: with a
            # few hundred training utterances per class the projection would otherwise memorise speakers.
            self.register_buffer("functional_mean", torch.zeros(c.functional_dim))
            self.register_buffer("functional_std", torch.ones(c.functional_dim))
            self.functional = nn.Sequential(nn.Dropout(c.functional_dropout), nn.Linear(c.functional_dim, c.audio_dim),
                                            nn.ReLU(inplace=True))
        width = (c.audio_dim if "audio" in c.modalities else 0) + (c.text_dim if "text" in c.modalities else 0) + (
            BIO_WIDTH if "bio" in c.modalities else 0) + (c.audio_dim if c.functional_dim else 0) + (
            c.audio_dim if hasattr(self, "logmel") else 0)
        self.fuse = nn.Sequential(nn.Linear(width, c.hidden_size), nn.ReLU(inplace=True), nn.Dropout(c.dropout))
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[c.backbone]
        self.rnn = rnn(c.hidden_size + 1, c.hidden_size, num_layers=c.num_layers, batch_first=True,
                       bidirectional=c.bidirectional, dropout=c.dropout if c.num_layers > 1 else 0.0)
        # The direct path: the heads also see the target utterance's own fused features, not only what
        # of it survives the recurrent steps (the context says how to read the target; it does not replace it).
        self.direct = c.direct
        out_dim = c.hidden_size * (2 if c.bidirectional else 1) + (c.hidden_size if c.direct else 0)
        self.emotion_head = nn.Linear(out_dim, len(c.classes))
        self.emotion_concat = c.emotion_concat
        trunk_in = out_dim + (len(c.classes) if c.emotion_concat else 0)
        self.av_trunk = nn.Sequential(nn.Linear(trunk_in, c.hidden_size // 2), nn.ReLU(inplace=True),
                                      nn.Dropout(c.dropout))
        self.arousal_head = nn.Linear(c.hidden_size // 2, 1)
        self.valence_head = nn.Linear(c.hidden_size // 2, 1)
        # An affine map of (arousal, valence) fitted on the validation sessions after training (identity
        # until then): MSE training shrinks predictions towards the mean, which CCC penalises.
        for name, value in _identity_av_map().items():
            self.register_buffer(name, value)
        # A per-class bias added to the emotion logits, fitted on the validation sessions (--imbalance val_bias);
        # zero until then.
        self.register_buffer("logit_bias", torch.zeros(len(c.classes)))

    def set_av_calibration(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        self.av_scale.copy_(scale)
        self.av_shift.copy_(shift)

    def reset_av_calibration(self) -> None:
        for name, value in _identity_av_map().items():
            getattr(self, name).copy_(value)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        # Runs saved before the calibration existed load with the identity map (their raw outputs).
        for name, value in {**_identity_av_map(), "logit_bias": torch.zeros(len(self.config.classes))}.items():
            state_dict.setdefault(prefix + name, value)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _live_slots(self, slots: torch.Tensor, wave_slots: torch.Tensor, n_cached: int) -> torch.Tensor:
        """`slots` pointing at the live rows (after the `n_cached` cached ones) of the utterances `wave_slots`: the
        targets' with finetune_context "cache" (every target has one), every step's with "encoder"."""
        live_row = torch.full((n_cached,), -1, dtype=slots.dtype, device=slots.device)
        live_row[wave_slots] = n_cached + torch.arange(len(wave_slots), device=slots.device)
        if self.config.finetune_context == "encoder":
            return torch.where(slots >= 0, live_row[slots.clamp(min=0)], slots)
        return torch.cat([slots[:, :-1], live_row[slots[:, -1:]]], dim=1)

    def forward(self, spec: torch.Tensor, spec_lengths: torch.Tensor, text: torch.Tensor, slots: torch.Tensor,
                waves: torch.Tensor | None = None, wave_lengths: torch.Tensor | None = None,
                wave_slots: torch.Tensor | None = None, tokens: torch.Tensor | None = None,
                token_mask: torch.Tensor | None = None, bio: torch.Tensor | None = None,
                functionals: torch.Tensor | None = None, mel: torch.Tensor | None = None,
                mel_lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """spec: packed frames of the batch's distinct utterances (see AudioEncoder), text: their
        embeddings; slots (B, ws): index into them, -1 = padding. The last slot is the target.
        Fine-tuned encoders also read waves (W, T) at 16 kHz with their lengths (W,) for the utterances
        `wave_slots` (W,), and the token ids (U, N) of every utterance with their mask (dataset.LiveInputs).
        bio (U, bio_dim): the utterances' bio-signal features (zeros and 0 masks where absent); functionals
        (U, functional_dim): their utterance functionals (NaN where openSMILE failed: the mean); mel, mel_lengths:
        their log-mel frames, packed like `spec` (the log-mel CNN beside a speech model's layers, fuse_logmel).

        Returns emotion logits (B, classes) and arousal/valence (B, 2) in [1, 5].
        """
        c, parts = self.config, []
        # Fine-tuned speech: the utterances `wave_slots` get a second, live row after the U cached ones; the
        # targets (finetune_context "cache") or all steps ("encoder") read it. Without waves (predict.py puts the
        # fine-tuned encoder's features in `spec`) the cached rows are all there is.
        live = self.waveform(waves, wave_lengths) if c.finetune_speech and waves is not None else None
        if "audio" in c.modalities:
            parts.append(self.audio(spec, spec_lengths, live) if live is not None else self.audio(spec, spec_lengths))
        if hasattr(self, "logmel"):
            cnn = self.logmel(mel, mel_lengths)
            parts.append(torch.cat([cnn, cnn[wave_slots]]) if live is not None else cnn)
        if "text" in c.modalities:
            text = self.text_norm(self.token_encoder(tokens, token_mask) if c.finetune_text else text)
            parts.append(torch.cat([text, text[wave_slots]]) if live is not None else text)
        if "bio" in c.modalities:
            parts.append(self.bio(torch.cat([bio, bio[wave_slots]]) if live is not None else bio))
        if c.functional_dim:
            standard = torch.nan_to_num((functionals - self.functional_mean) / self.functional_std)
            parts.append(self.functional(torch.cat([standard, standard[wave_slots]]) if live is not None
                                         else standard))
        if live is not None:
            slots = self._live_slots(slots, wave_slots, len(spec_lengths))
        steps = self.fuse(torch.cat(parts, dim=1))
        valid = (slots >= 0).unsqueeze(-1).to(steps.dtype)
        # Gather each utterance's step features into its windows (B, ws, hidden) as a product with a
        # one-hot selector: its backward is a matmul, deterministic on CPU, where the backward of
        # steps[slots] accumulates from several threads in a varying order. Padding rows select nothing.
        selector = F.one_hot(slots.clamp(min=0), len(steps)).to(steps.dtype) * valid
        window = selector @ steps
        out, _ = self.rnn(torch.cat([window, valid], dim=-1))
        features = torch.cat([out[:, -1], window[:, -1]], dim=1) if self.direct else out[:, -1]
        logits = self.emotion_head(features)
        trunk_in = torch.cat([features, F.softmax(logits, dim=1)], dim=1) if self.emotion_concat else features
        trunk = self.av_trunk(trunk_in)
        av = torch.cat([self.arousal_head(trunk), self.valence_head(trunk)], dim=1)
        return logits + self.logit_bias, ((1 + 4 * torch.sigmoid(av)) * self.av_scale + self.av_shift).clamp(1, 5)
