"""The training engine of main.py, experiments and benchmark.py: set-up, one epoch, evaluation, the epoch loop
(EMA, mixed precision, data parallel, early stopping, selection on validation), the arousal/valence calibration
and the test (the split of pytorch/examples imagenet's train/validate and ConvNeXt's engine.py; loops return
dicts of figures, one JSON line per epoch goes to log.jsonl).
"""
import argparse
import json
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader

from constants import KEMDY
from dataset import Corpus, live_inputs, make_loader
from errors import FlagError, TrainingError
from finetune import finetune_inputs, run_tokenizer, save_backbones
from loss import EmotionLoss, class_balanced_weights, inverse_frequency_weights
from metric import av_calibration, decision_bias, emotion_metrics, selection_score
from model import Backbones, EmotionModel, ModelConfig, model_inputs
from options import (RECIPE_COPY, TrainSpec, check_args, check_fitted, modality_check, parse_imbalance,
                     parse_modalities, recipe_record, run_arguments)
from protocol import DataSpec, prepare_data, resolve_data
from trained_run import (VAL_PREDICTIONS, Progress, ResumeState, check_corpus_unchanged, checkpoint_config, find_run,
                         load_checkpoint, load_trained_model, restore_training, resume_state, save_checkpoint,
                         save_corpus_record, write_predictions, write_run_args, write_test_outputs)
from utils import (amp_dtype, append_jsonl, atomic_torch_save, autocast, broadcast, check_save_path, init_distributed,
                   open_run_dir, plot_curves, progress_bar, restore_rng_states, set_seed, summary_table, write_text)

CRT_EPOCHS = 10  # --imbalance crt: epochs of the emotion head's re-training (Kang et al. train it for 10)


@dataclass
class Training:
    """The objects of one training run, made once by `setup`."""
    model: EmotionModel
    train_model: torch.nn.Module  # the model, or its DistributedDataParallel wrapper
    ema: AveragedModel | None  # weights averaged over epochs: what is validated, selected and tested
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None  # fp16 only
    step_schedule: bool  # the scheduler steps after every optimizer step (fine-tuning: warm-up), else every epoch
    loss_fn: EmotionLoss
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype, None = float32
    statistics: dict  # the raw features' training statistics (Corpus.training_statistics), kept in checkpoints
    rank: int = 0
    world_size: int = 1
    accum_steps: int = 1  # batches per optimizer step (gradient accumulation)

    @property
    def scored(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def parts(self) -> dict:
        return {"model": self.model, "ema": self.ema, "optimizer": self.optimizer, "scheduler": self.scheduler,
                "scaler": self.scaler}


def run_name(args: argparse.Namespace) -> str:
    return f"{args.backbone}_{args.SorL}_{args.optim}_{args.ws}"


def resolve_device(device: str, gpu_id: int) -> torch.device:
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise FlagError("--device cuda but no CUDA device is available")
        return torch.device(f"cuda:{gpu_id}")
    return torch.device("cpu")


def run_config(args: argparse.Namespace, corpus: Corpus) -> ModelConfig:
    """The ModelConfig of a new run: its flags, and what its corpus decides (classes after --label_map, the speech
    cache's shape, the modalities, the functionals' width, whether arousal/valence are rated)."""
    modalities = parse_modalities(args.modalities, corpus.has_text, corpus.modalities, corpus.bio is not None)
    functionals = corpus.functionals is not None and "audio" in modalities
    return ModelConfig.from_args({**vars(args), "text_dim": corpus.text.shape[1]}, corpus.speech_shape(),
                                 classes=tuple(corpus.classes),
                                 modalities=modalities, bio_dim=corpus.bio.shape[1] if "bio" in modalities else 0,
                                 functionals=corpus.functional_names if functionals else (),
                                 functional_dim=corpus.functionals.shape[1] if functionals else 0,
                                 arousal_valence=corpus.has_av)


def make_optimizer(params, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """`params`: the parameters, or parameter groups (a group's own "lr" overrides `lr`)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def encoder_parameters(model: EmotionModel) -> list[torch.nn.Parameter]:
    """The trainable parameters of the model's fine-tuned backbones (none without --finetune_*)."""
    encoders = [getattr(model, name) for name in ("waveform", "token_encoder") if hasattr(model, name)]
    return [p for encoder in encoders for p in encoder.parameters() if p.requires_grad]


def finetune_schedule(optimizer: torch.optim.Optimizer, spec: TrainSpec,
                      steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per optimizer step: --lr_decay once per epoch for both groups, and for the encoders' group a linear warm-up
    over the first --warmup_steps steps (their pretrained weights are not pulled about by the random heads'
    first gradients; the warm-up of wav2vec 2.0's and BERT's fine-tuning recipes)."""
    def decay(step: int) -> float:
        return spec.lr_decay ** (step // steps_per_epoch)

    def warm(step: int) -> float:
        return min(1.0, (step + 1) / max(1, spec.warmup_steps)) * decay(step)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, [decay, warm])


def seed_process(seed: int, offset: int) -> None:
    """Data parallel: each process its own dropout and SpecAugment draws (a fine-tuned speech encoder draws its
    time masks from numpy), `offset` apart."""
    torch.manual_seed(seed + offset)
    np.random.seed(seed + offset)


def setup(config: ModelConfig, spec: TrainSpec, corpus: Corpus, train_rows: np.ndarray,
          device: torch.device, rank: int = 0, world_size: int = 1, backbones: Backbones | None = None,
          steps_per_epoch: int = 1) -> Training:
    """Model (log-mel bands and functionals standardised with the training rows' statistics, or as the corpus's
    speaker z-scores already are; fine-tuned `backbones` with their learning rate --encoder_lr and warm-up over
    `steps_per_epoch`-step epochs), its DDP wrapper under torchrun, loss (class-balanced with --loss cbloss),
    optimizer, exponential learning-rate decay, EMA and fp16 scaler."""
    model = EmotionModel(config, backbones)
    statistics = corpus.training_statistics(train_rows)
    if corpus.feature_norm == "training":  # (speaker z-scores have mean 0 and std 1 over the training rows)
        if "audio" in config.modalities and not config.speech_layers:
            model.audio.mel_mean.copy_(torch.from_numpy(statistics["frames"][0][0]))
            model.audio.mel_std.copy_(torch.from_numpy(statistics["frames"][1][0]))
        if hasattr(model, "logmel"):
            model.logmel.mel_mean.copy_(torch.from_numpy(statistics["mel"][0][0]))
            model.logmel.mel_std.copy_(torch.from_numpy(statistics["mel"][1][0]))
        if "audio" in config.modalities and config.speech_layers and config.speech_norm == "feature":
            model.audio.row_mean.copy_(torch.from_numpy(statistics["frames"][0]))
            model.audio.row_std.copy_(torch.from_numpy(statistics["frames"][1]))
        if config.functional_dim:
            model.functional_mean.copy_(torch.from_numpy(statistics["functionals"][0]))
            model.functional_std.copy_(torch.from_numpy(statistics["functionals"][1]))
    encoder = encoder_parameters(model)
    if encoder and spec.grad_checkpointing:  # activations recomputed in the backward pass
        for backbone in (b for b in (backbones.speech, backbones.text) if b is not None):
            backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.to(device)
    train_model = model
    if world_size > 1:  # DDP gives every process rank 0's initial weights
        seed_process(spec.seed, rank)
        # A fine-tuned backbone may leave parameters without a gradient in a step (layer drop, no masked span).
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                              find_unused_parameters=bool(encoder))
    dtype = amp_dtype(device, spec.amp)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    counts = corpus.labels[train_rows].sum(0)
    class_weights, adjustment = None, None
    if spec.class_weights is not None:
        class_weights = (class_balanced_weights(counts, spec.beta) if spec.class_weights == "cbloss"
                         else inverse_frequency_weights(counts))
        print("class weights:", {c: round(w, 3) for c, w in zip(corpus.classes, class_weights.tolist())})
    if spec.logit_adjust:
        adjustment = torch.log(torch.from_numpy(np.maximum(counts, 1) / np.maximum(counts, 1).sum()).float())
    loss_fn = EmotionLoss(spec.lam, class_weights, spec.av_loss, adjustment, spec.focal_gamma).to(device)
    if encoder:
        taken = {id(p) for p in encoder}
        head = [p for p in model.parameters() if p.requires_grad and id(p) not in taken]
        optimizer = make_optimizer([{"params": head}, {"params": encoder, "lr": spec.encoder_lr}], spec.optim,
                                   spec.lr, spec.weight_decay)
        scheduler = finetune_schedule(optimizer, spec, steps_per_epoch)
    else:
        optimizer = make_optimizer(model.parameters(), spec.optim, spec.lr, spec.weight_decay)
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=spec.lr_decay)
    # Weights averaged over epochs (buffers included) smooth the epoch-to-epoch swings of a model trained on a
    # small corpus.
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(spec.ema), use_buffers=True) if spec.ema else None
    return Training(model, train_model, ema, optimizer, scheduler, scaler, bool(encoder), loss_fn, device, dtype,
                    statistics, rank, world_size, spec.accum_steps)


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def train_one_epoch(model: torch.nn.Module, loader: DataLoader, loss_fn: EmotionLoss,
                    optimizer: torch.optim.Optimizer, device: torch.device, epoch: int,
                    dtype: torch.dtype | None = None, scaler: torch.amp.GradScaler | None = None,
                    accum_steps: int = 1, scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> dict:
    """One pass over `loader` (autocast to `dtype` if given; `scaler` for fp16): one optimizer step per
    `accum_steps` batches (gradients accumulated; the epoch's last steps may take fewer), then `scheduler` steps
    if given (a per-step schedule)."""
    model.train()
    sums = {"loss": 0.0, "emotion": 0.0, "arousal": 0.0, "valence": 0.0}
    n, data_wait, start = 0, 0.0, time.perf_counter()
    fetch_start = time.perf_counter()
    for step, batch in enumerate(progress_bar(loader, desc=f"epoch {epoch} train", unit="batch", leave=False), 1):
        data_wait += time.perf_counter() - fetch_start
        batch = _to(batch, device)
        stepping = step % accum_steps == 0 or step == len(loader)
        # Under DDP, gradients are averaged across processes only on the batch that ends an accumulation.
        quiet = model.no_sync() if not stepping and isinstance(model, DistributedDataParallel) else nullcontext()
        with quiet:
            with autocast(device, dtype):
                logits, av = model(**model_inputs(batch))
            loss, parts = loss_fn(logits, av, batch["soft"], batch["arousal_valence"])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch}, batch {step}")
            # Each batch weighs 1 / (batches in its accumulation group; the epoch's last group may be shorter).
            group = min(accum_steps, len(loader) - (step - 1) // accum_steps * accum_steps)
            scaled = loss / group if group > 1 else loss
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        if stepping:
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if scheduler is not None:
                scheduler.step()
        size = len(logits)
        n += size
        sums["loss"] += loss.item() * size
        for key, value in parts.items():
            sums[key] += value * size
        fetch_start = time.perf_counter()
    seconds = time.perf_counter() - start
    return {**{f"train_{k}": v / n for k, v in sums.items()}, "train_seconds": seconds,
            "train_data_wait": data_wait / seconds}


@torch.inference_mode()
def evaluate(model: torch.nn.Module, loader: DataLoader, device: torch.device, desc: str = "eval",
             dtype: torch.dtype | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """Metrics over the whole split and the per-utterance outputs (rows, probabilities, arousal/valence)."""
    model.eval()
    outputs = {k: [] for k in ("rows", "probs", "av", "labels", "first_label", "av_true", "soft")}
    for batch in progress_bar(loader, desc=desc, unit="batch", leave=False):
        batch = _to(batch, device)
        with autocast(device, dtype):
            logits, av = model(**model_inputs(batch))
        outputs["rows"].append(batch["rows"])
        outputs["probs"].append(torch.softmax(logits.float(), dim=1))
        outputs["av"].append(av.float())
        outputs["labels"].append(batch["labels"])
        outputs["first_label"].append(batch["first_label"])
        outputs["av_true"].append(batch["arousal_valence"])
        outputs["soft"].append(batch["soft"])
    out = {k: torch.cat(v).cpu().numpy() for k, v in outputs.items()}
    metrics = emotion_metrics(out["probs"], out["av"], out["labels"], out["first_label"], out["av_true"],
                              loader.dataset.corpus.classes)
    return metrics, out


def calibrate_av(model: EmotionModel, outputs: dict[str, np.ndarray]) -> dict:
    """Fit the model's arousal/valence scale and shift on the validation sessions' raw `outputs` (`evaluate`'s, under
    the identity map) -> its record."""
    rated = np.isfinite(outputs["av_true"]).all(1)
    if not rated.any():  # a corpus without arousal/valence: nothing to fit
        return {}
    scale, shift = av_calibration(outputs["av_true"][rated], outputs["av"][rated])
    model.set_av_calibration(torch.from_numpy(scale).float(), torch.from_numpy(shift).float())
    return {"av_calibration": {name: {"scale": round(float(scale[k]), 4), "shift": round(float(shift[k]), 4)}
                               for k, name in enumerate(("arousal", "valence"))}}


def fit_decision_bias(model: EmotionModel, outputs: dict[str, np.ndarray]) -> dict:
    """--imbalance val_bias: the per-class logit bias that maximises the validation sessions' macro-F1 of `outputs`
    (`evaluate`'s, without a bias), kept in the model -> its record."""
    bias = decision_bias(np.log(np.maximum(outputs["probs"], 1e-12)), outputs["labels"], outputs["first_label"])
    model.logit_bias.copy_(torch.from_numpy(bias).float())
    return {"decision_bias": {name: float(b) for name, b in zip(model.config.classes, bias)}}


def _train_part(model: EmotionModel, part: torch.nn.Module, loader: DataLoader, val_loader: DataLoader,
                loss_fn: EmotionLoss, score: Callable[[dict], float], spec: TrainSpec, device: torch.device,
                dtype: torch.dtype | None, epochs: int, desc: str, reset: bool = False) -> tuple[int, float]:
    """`part` of the model trained alone on `loader` (the rest fixed and in evaluation mode: no dropout or
    SpecAugment), initialised again with `reset`, the epoch with the best validation `score` kept; the part as it
    was (epoch 0) is kept unless an epoch beats it -> (the epoch kept, its validation score)."""
    best, best_epoch = score(evaluate(model, val_loader, device, desc="val", dtype=dtype)[0]), 0
    kept = {k: v.clone() for k, v in part.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    for parameter in trainable:
        parameter.requires_grad_(False)
    torch.manual_seed(spec.seed)
    if reset:
        part.reset_parameters()
    for parameter in part.parameters():
        parameter.requires_grad_(True)
    optimizer = make_optimizer(part.parameters(), spec.optim, spec.lr, spec.weight_decay)
    for epoch in range(1, epochs + 1):
        loader.sampler.epoch = loader.dataset.epoch = epoch
        model.eval()
        for batch in progress_bar(loader, desc=f"{desc} {epoch}", unit="batch", leave=False):
            batch = _to(batch, device)
            with autocast(device, dtype):
                logits, av = model(**model_inputs(batch))
            loss, _ = loss_fn(logits, av, batch["soft"], batch["arousal_valence"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        value = score(evaluate(model, val_loader, device, desc="val", dtype=dtype)[0])
        if value > best:
            best, best_epoch, kept = value, epoch, {k: v.clone() for k, v in part.state_dict().items()}
    part.load_state_dict(kept)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for parameter in trainable:
        parameter.requires_grad_(True)
    return best_epoch, best


def retrain_classifier(model: EmotionModel, balanced: DataLoader, loader: DataLoader, val_loader: DataLoader,
                       spec: TrainSpec, device: torch.device, dtype: torch.dtype | None,
                       epochs: int = CRT_EPOCHS) -> dict:
    """--imbalance crt, classifier re-training (Kang et al., ICLR 2020, "Decoupling representation and classifier"):
    the representation learnt with the data's own class shares stays fixed, the emotion head is initialised again
    and trained on the emotion term alone on class-balanced batches (`balanced`), and the epoch with the best
    validation macro-F1 is kept, the head as trained if none beats it. Where the arousal/valence trunk reads the
    emotion probabilities (ModelConfig.emotion_concat) of a rated corpus, a new head changes what it reads: the
    trunk and the arousal/valence heads are then trained on the arousal/valence terms alone on the usual batches
    (`loader`), the best validation score kept -> the record of both."""
    head_epoch, head_score = _train_part(
        model, model.emotion_head, balanced, val_loader, EmotionLoss(1.0, focal_gamma=spec.focal_gamma).to(device),
        lambda m: m["macro_f1"], spec, device, dtype, epochs, "classifier re-training", reset=True)
    record = {"epochs": epochs, "best_epoch": head_epoch, "val_macro_f1": round(head_score, 4)}
    print(f"classifier re-trained on class-balanced batches: epoch {head_epoch} of {epochs} kept (0 = the head as "
          f"trained; validation macro-F1 {head_score:.3f})")
    if head_epoch and model.emotion_concat and loader.dataset.corpus.has_av:
        av_path = torch.nn.ModuleList([model.av_trunk, model.arousal_head, model.valence_head])
        av_epoch, av_score = _train_part(model, av_path, loader, val_loader,
                                         EmotionLoss(0.0, av_loss=spec.av_loss).to(device), selection_score, spec,
                                         device, dtype, epochs, "arousal/valence re-training")
        record.update(av_best_epoch=av_epoch, val_score=round(av_score, 4))
        print(f"arousal/valence trunk re-trained on the new head: epoch {av_epoch} of {epochs} kept "
              f"(validation score {av_score:.3f})")
    return {"classifier_retraining": record}


def calibrate(model: EmotionModel, val_loader: DataLoader, spec: TrainSpec, device: torch.device,
              dtype: torch.dtype | None) -> dict:
    """The post-training maps fitted on one pass over the validation sessions: arousal/valence (--av_calibration
    val) and the decision bias (--imbalance val_bias), both from the identity (so that fitting again, e.g. on a
    resumed run, gives the same) and kept in the model -> their record."""
    if spec.av_calibration != "val" and not spec.val_bias:
        return {}
    model.reset_av_calibration()
    model.logit_bias.zero_()
    _, outputs = evaluate(model, val_loader, device, desc="calibrate", dtype=dtype)
    return {**(calibrate_av(model, outputs) if spec.av_calibration == "val" else {}),
            **(fit_decision_bias(model, outputs) if spec.val_bias else {})}


def speech_record(model: EmotionModel, corpus: Corpus) -> dict:
    """For a --speech_model run: the encoder (id, revision) and the learned weight of each of its layers."""
    if not corpus.speech_shape()[0] or "audio" not in model.config.modalities:
        return {}
    return {"speech_model": corpus.audio_settings,
            "speech_layer_weights": [round(w, 4) for w in model.audio.layer_weights().tolist()]}


def _epoch(t: Training, loaders: dict, epoch: int, run_dir: Path, progress: Progress) -> tuple[dict, bool]:
    """Train one epoch, step the schedule and the EMA, validate (rank 0) -> (log record, whether it is the best
    so far). Under torchrun the other ranks learn rank 0's best epoch, which early stopping needs."""
    loaders["train"].sampler.epoch = loaders["train"].dataset.epoch = epoch
    record = {"epoch": epoch, "lr": t.optimizer.param_groups[0]["lr"]}
    if t.step_schedule:
        record["encoder_lr"] = t.optimizer.param_groups[1]["lr"]
    try:
        record.update(train_one_epoch(t.train_model, loaders["train"], t.loss_fn, t.optimizer, t.device, epoch,
                                      t.dtype, t.scaler, t.accum_steps, t.scheduler if t.step_schedule else None))
    except FloatingPointError as error:
        last = f"{run_dir / 'checkpoint.pth'} (epoch {epoch - 1})" if epoch > 1 else "none (first epoch)"
        lower = t.optimizer.param_groups[0]["lr"] / 10
        raise TrainingError(f"{error}. Last good checkpoint: {last}. Resume with a lower learning rate: "
                            f"python main.py --resume {run_dir} --lr {lower:g}") from None
    if not t.step_schedule:
        t.scheduler.step()
    if t.ema is not None:
        t.ema.update_parameters(t.model)
    if t.rank > 0:
        progress.best_epoch = broadcast(None, t.world_size)
        return record, False
    improved = loaders["val"] is None
    if loaders["val"] is not None:
        val_metrics, outputs = evaluate(t.scored, loaders["val"], t.device, desc=f"epoch {epoch} val", dtype=t.dtype)
        record.update({f"val_{k}": v for k, v in val_metrics.items() if not isinstance(v, (dict, list))})
        record["val_score"] = selection_score(val_metrics)
        # Ties of the score (a validation split the model soon gets all right: TESS's held-out words of the training
        # speaker, a skewed corpus's few minority utterances) go to the lower emotion cross-entropy, not to the
        # first epoch that reached it.
        log_p = np.log(np.maximum(outputs["probs"], 1e-12))
        record["val_emotion_nll"] = float(-(outputs["soft"] * log_p).sum(1).mean())
        improved = (record["val_score"], -record["val_emotion_nll"]) > (progress.best_score, -progress.best_nll)
    if improved:
        progress.best_score, progress.best_epoch = record.get("val_score", 0.0), epoch
        progress.best_nll = record.get("val_emotion_nll", float("inf"))
        progress.best_val = {k: v for k, v in record.items() if k.startswith("val_")}
    broadcast(progress.best_epoch, t.world_size)
    record["seconds"] = record["train_seconds"]
    return record, improved


def fit(t: Training, loaders: dict, run_dir: Path, progress: Progress, log: list[dict], epochs: int, patience: int,
        save: dict) -> Progress:
    """The epoch loop from `progress.epoch + 1`: early stopping on the validation score, one JSON line per epoch,
    `best.pth` when the score improves and `checkpoint.pth` after every epoch (rank 0; `save` holds what the
    checkpoints carry besides the training state). Ctrl-C prints the command that resumes the run."""
    epoch = progress.epoch + 1
    try:
        for epoch in range(progress.epoch + 1, epochs + 1):
            # Checked before the epoch, so that a run resumed after its early stop does not train on.
            if loaders["val"] is not None and patience and epoch - 1 - progress.best_epoch >= patience:
                print(f"early stop after epoch {epoch - 1}: no better validation score in {patience} epochs")
                break
            record, improved = _epoch(t, loaders, epoch, run_dir, progress)
            progress.epoch = epoch
            if t.rank > 0:
                continue
            append_jsonl(run_dir / "log.jsonl", record)
            log.append(record)
            if improved:
                save_checkpoint(run_dir / "best.pth", **{**t.parts(), "model": t.scored}, progress=progress, **save)
            save_checkpoint(run_dir / "checkpoint.pth", **t.parts(), progress=progress, **save)  # marks it done
            val_text = (f", val macro-F1 {record['val_macro_f1']:.3f} score {record['val_score']:.3f}"
                        if loaders["val"] is not None else "")
            print(f"epoch {epoch}: loss {record['train_loss']:.4f}{val_text}"
                  f"{' *' if improved and loaders['val'] is not None else ''}")
    except KeyboardInterrupt:
        done = f"epoch {epoch - 1} is the last saved" if epoch > 1 else "no epoch was finished"
        print(f"\ninterrupted during epoch {epoch} ({done}); continue with: python main.py --resume {run_dir}")
        raise
    return progress


def _resume(t: Training, run_dir: Path, checkpoint: dict | None, spec: TrainSpec,
            overrides: dict) -> tuple[Progress, list[dict]]:
    """The progress and log of an interrupted run, its training state loaded into `t` from its last `checkpoint`
    (same model, optimizer, scheduler, best-so-far and RNG states; None: stopped before the first); epochs logged
    after the last checkpoint are trained again."""
    progress = Progress()
    if checkpoint is not None:
        progress = restore_training(checkpoint, **t.parts())
        restore_rng_states(checkpoint["rng"])  # rank 0's states
        if t.world_size > 1:
            seed_process(spec.seed, t.rank + t.world_size * checkpoint["epoch"])
        if "lr" in overrides:  # e.g. after a divergence: continue with a lower learning rate
            factor = spec.lr / t.optimizer.param_groups[0]["lr"]
            t.optimizer.param_groups[0]["lr"] = spec.lr
            for group in t.optimizer.param_groups[1:]:  # the encoders' rate (fine-tuning) keeps its ratio to --lr
                group["lr"] *= factor
            if t.step_schedule:  # a per-step schedule recomputes the rates from its base rates
                t.scheduler.base_lrs = [lr * factor for lr in t.scheduler.base_lrs]
        print(f"resuming {run_dir} after epoch {progress.epoch} (best epoch so far {progress.best_epoch})")
    log_path, log = run_dir / "log.jsonl", []
    if log_path.exists() and t.rank == 0:
        log = [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines() if line.strip()]
        log = [r for r in log if r["epoch"] <= progress.epoch]
        write_text(log_path, "".join(json.dumps(r) + "\n" for r in log))
    return progress, log


def _finish(t: Training, loaders: dict, run_dir: Path, corpus: Corpus, data: DataSpec, spec: TrainSpec,
            progress: Progress, log: list[dict]) -> None:
    """Rank 0 after the last epoch: curves, the selected model calibrated on one pass over the validation sessions
    (arousal/valence, and the decision bias with --imbalance val_bias) and tested; results."""
    plot_curves(log, run_dir / "curves.png", progress.best_epoch)
    best = load_checkpoint(run_dir / "best.pth", t.device)
    t.model.load_state_dict(best["model"])
    calibration = {}
    if spec.crt and loaders["val"] is not None:
        balanced, usual = (make_loader(corpus, data.train, spec.ws, spec.batch_size, True, spec.seed, spec.num_workers,
                                       t.device.type == "cuda", class_balanced=weighted,
                                       live=loaders["train"].dataset.live) for weighted in (True, False))
        calibration.update(retrain_classifier(t.model, balanced, usual, loaders["val"], spec, t.device, t.dtype))
    if loaders["val"] is not None:
        calibration.update(calibrate(t.model, loaders["val"], spec, t.device, t.dtype))
    if calibration:
        atomic_torch_save({**best, "model": t.model.state_dict()}, run_dir / "best.pth")
    if loaders["val"] is not None:  # the selected, calibrated model's validation outputs: ensemble.py stacks them
        _, outputs = evaluate(t.model, loaders["val"], t.device, desc="val", dtype=t.dtype)
        write_predictions(run_dir / VAL_PREDICTIONS, corpus, outputs["rows"], outputs["probs"], outputs["av"])
    metrics, outputs = evaluate(t.model, loaders["test"], t.device, desc="test", dtype=t.dtype)
    shown = data.record(set(corpus.sessions.tolist()))
    write_test_outputs(run_dir, corpus, outputs["rows"], outputs["probs"], outputs["av"], metrics, "results.json",
                       {"model": "neural", "best_epoch": progress.best_epoch, "val": progress.best_val,
                        "sessions": shown, "split_unit": corpus.split_unit, "processes": t.world_size, **calibration,
                        **speech_record(t.model, corpus)})
    selected = "validation score" if loaders["val"] else "the last epoch: no validation sessions"
    print(f"best epoch {progress.best_epoch} (by {selected})")
    print(summary_table(metrics, f"test {shown['test']}"))
    print(f"results: {run_dir / 'results.json'}")


def train(args: argparse.Namespace, run_dir: Path | None = None, resume: ResumeState | None = None,
          overrides: dict | None = None) -> Path:
    """Train a new run from its checked flags `args` (in a new folder unless `run_dir` is given) or, given the
    `resume` state of the run in `run_dir` (trained_run.resume_state), continue it from its last checkpoint with
    the `overrides` given with --resume. Under torchrun (WORLD_SIZE > 1) one process per GPU (or CPU process with
    gloo) trains on its share of the batches, gradients averaged (DDP); rank 0 alone prepares the data, validates,
    tests and writes files."""
    spec = TrainSpec.from_args(args)
    device = resolve_device(args.device, args.gpu_id)
    rank, world_size, local_rank = init_distributed(device.type)
    if world_size > 1 and device.type == "cuda":
        device = torch.device(f"cuda:{local_rank}")
    set_seed(spec.seed)
    data = resolve_data(args)
    check_fitted(parse_imbalance(args.imbalance), data.val, args.val_split)
    if run_dir is None and rank == 0:
        check_save_path(args.save_path)  # before any data is prepared
    # Data first: bad data stops the start before a run folder exists, so none is left behind.
    broadcast(prepare_data(data, modality_check(args.modalities)) if rank == 0 else None, world_size)  # others wait
    corpus = data.corpus()
    data.check_split(corpus.sessions, corpus.first_label)
    checkpoint = resume.checkpoint if resume is not None else None
    config = (checkpoint_config(checkpoint, run_dir / "checkpoint.pth") if checkpoint is not None
              else run_config(args, corpus))  # a resumed run: its own model
    backbones, live = finetune_inputs(config, corpus, data.folders, data.speech_model, spec.max_seconds,
                                      None if checkpoint is None else run_dir)  # fine-tuned weights: the checkpoint's
    pin = device.type == "cuda"
    loaders = {"train": make_loader(corpus, data.train, spec.ws, spec.batch_size, True, spec.seed, spec.num_workers,
                                    pin, num_replicas=world_size, rank=rank, class_balanced=spec.sampler, live=live),
               "val": make_loader(corpus, data.val, spec.ws, spec.batch_size, False, spec.seed, spec.num_workers, pin,
                                  "--val_split", live=live) if data.val else None,
               "test": make_loader(corpus, data.test, spec.ws, spec.batch_size, False, spec.seed, spec.num_workers,
                                   pin, "--test_split", live=live)}
    run_dir = broadcast(open_run_dir(run_dir, args.save_path, run_name(args)) if rank == 0 else None, world_size)
    run_args = {**vars(args), **data.flags()}  # what the run records: the flags, the data ones resolved
    if resume is None and rank == 0:  # a resumed run keeps its args.json; checkpoints carry overrides
        write_run_args(run_dir, run_args)
        save_corpus_record(run_dir, corpus, data)
        if args.recipe_values:
            write_text(run_dir / RECIPE_COPY, recipe_record(args))
    if backbones is not None and checkpoint is None and rank == 0:  # (again for a run stopped before its first epoch)
        save_backbones(run_dir, backbones)
    print(f"run folder: {run_dir}\n{data.describe(set(corpus.sessions.tolist()), corpus.split_unit)}")
    if world_size > 1:
        print(f"data-parallel over {world_size} processes: {world_size} x {spec.batch_size} windows per step")
    t = setup(config, spec, corpus, np.flatnonzero(np.isin(corpus.sessions, data.train)), device, rank, world_size,
              backbones, -(-len(loaders["train"]) // spec.accum_steps))
    progress, log = (_resume(t, run_dir, checkpoint, spec, overrides or {}) if resume is not None
                     else (Progress(), []))
    save = {"config": config, "run_args": run_args, "features": corpus.audio_settings,
            "statistics": {k: [torch.from_numpy(v) for v in pair] for k, pair in t.statistics.items()}}
    fit(t, loaders, run_dir, progress, log, spec.epochs, spec.patience, save)
    if rank == 0:
        _finish(t, loaders, run_dir, corpus, data, spec, progress, log)
    return run_dir


def resume_run(run_dir: Path, overrides: dict) -> Path:
    """Continue an interrupted run with its saved arguments and the allowed `overrides` (its checkpoint read
    once); a finished run is left as it is."""
    state = resume_state(run_dir)
    if state is None:
        return run_dir
    args = run_arguments(state.args, {**overrides, "resume": str(run_dir)})
    check_args(args)
    return train(args, run_dir, state, overrides)


def evaluate_run(name: str, save_path: str, device: torch.device, allow_corpus_change: bool,
                 overrides: dict | None = None) -> dict:
    """--test_only: the saved run's test metrics on its corpus, as it is now (refused if it changed, unless
    `allow_corpus_change`); writes results_test_only.json (with the test sessions and corpus folders used),
    predictions_test_only.csv, confusion_test_only.png. `overrides`: --test_split (sessions the run neither trained
    nor validated on), --data_dir and --cache_dir (another copy of the corpus), as given."""
    run_dir = find_run(name, save_path)
    model, saved, checkpoint = load_trained_model(run_dir / "best.pth", device)
    trained = resolve_data(saved)
    args = argparse.Namespace(**{**vars(saved), **(overrides or {})})
    spec, data = TrainSpec.from_args(args), resolve_data(args)
    seen = sorted((set(trained.train) | set(trained.val)) & set(data.test))
    if seen:
        raise FlagError(f"--test_split {args.test_split}: {run_dir.name} was trained or validated on "
                        f"{data.format(tuple(seen))}; test it on sessions it never saw (it was tested on "
                        f"{trained.format(trained.test)})")
    missing = [folder for folder, kind in zip(data.folders, data.kinds)
               if not (folder / "annotation" if kind in KEMDY else folder).is_dir()]
    if missing:
        raise FlagError(f"the corpus of {run_dir.name} is not at {missing[0]} any more; --test_only needs it (give "
                        "its new place with --data_dir; predict.py needs only the run folder)")
    prepare_data(data)
    check_corpus_unchanged(run_dir, data, allow_corpus_change)
    corpus = data.corpus()
    live = live_inputs(model.config, corpus, data.folders, spec.max_seconds,
                       run_tokenizer(run_dir) if model.config.finetune_text else None)
    test_loader = make_loader(corpus, data.test, spec.ws, spec.batch_size, False, spec.seed, spec.num_workers,
                              device.type == "cuda", "--test_split", live=live)
    metrics, outputs = evaluate(model, test_loader, device, desc="test", dtype=amp_dtype(device, spec.amp))
    shown = data.record(set(corpus.sessions.tolist()))
    write_test_outputs(run_dir, corpus, outputs["rows"], outputs["probs"], outputs["av"], metrics,
                       "results_test_only.json", {"model": "neural", "best_epoch": checkpoint["best_epoch"],
                                                  "test_split": data.format(data.test),
                                                  "data_dir": data.flags()["data_dir"], "sessions": shown,
                                                  **speech_record(model, corpus)})
    print(summary_table(metrics, f"test {shown['test']} ({run_dir.name})"))
    print(f"results: {run_dir / 'results_test_only.json'}")
    return metrics
