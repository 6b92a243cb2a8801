"""One training epoch and one evaluation pass; each returns a dict of figures."""
import time

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from loss import EmotionLoss
from metric import emotion_metrics
from utils import autocast

MODEL_INPUTS = ("spec", "spec_lengths", "text", "slots")


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def train_one_epoch(model: torch.nn.Module, loader: DataLoader, loss_fn: EmotionLoss,
                    optimizer: torch.optim.Optimizer, device: torch.device, epoch: int,
                    dtype: torch.dtype | None = None, scaler: torch.amp.GradScaler | None = None) -> dict:
    """One pass over `loader` (autocast to `dtype` if given; `scaler` for fp16)."""
    model.train()
    sums = {"loss": 0.0, "emotion": 0.0, "arousal": 0.0, "valence": 0.0}
    n, data_wait, start = 0, 0.0, time.perf_counter()
    fetch_start = time.perf_counter()
    for step, batch in enumerate(tqdm(loader, desc=f"epoch {epoch} train", unit="batch", leave=False), 1):
        data_wait += time.perf_counter() - fetch_start
        batch = _to(batch, device)
        with autocast(device, dtype):
            logits, av = model(*(batch[k] for k in MODEL_INPUTS))
        loss, parts = loss_fn(logits, av, batch["soft"], batch["arousal_valence"])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch}, batch {step}")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
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
    outputs = {k: [] for k in ("rows", "probs", "av", "labels", "first_label", "av_true")}
    for batch in tqdm(loader, desc=desc, unit="batch", leave=False):
        batch = _to(batch, device)
        with autocast(device, dtype):
            logits, av = model(*(batch[k] for k in MODEL_INPUTS))
        outputs["rows"].append(batch["rows"])
        outputs["probs"].append(torch.softmax(logits.float(), dim=1))
        outputs["av"].append(av.float())
        outputs["labels"].append(batch["labels"])
        outputs["first_label"].append(batch["first_label"])
        outputs["av_true"].append(batch["arousal_valence"])
    out = {k: torch.cat(v).cpu().numpy() for k, v in outputs.items()}
    metrics = emotion_metrics(out["probs"], out["av"], out["labels"], out["first_label"], out["av_true"])
    return metrics, out
