"""lam * L_emotion + (1 - lam) * (MSE_arousal + MSE_valence); L_emotion is KLDiv to the raters' soft target."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def class_balanced_weights(counts: np.ndarray, beta: float) -> torch.Tensor:
    """Cui et al. (CVPR 2019): (1 - beta) / (1 - beta^n_y), normalised to sum to the number of classes.

    A class with no training sample is counted as one, so its weight stays finite.
    """
    effective = (1.0 - np.power(beta, np.maximum(counts, 1))) / (1.0 - beta)
    weights = 1.0 / effective
    return torch.tensor(weights / weights.sum() * len(counts), dtype=torch.float32)


class EmotionLoss(nn.Module):
    def __init__(self, lam: float, class_weights: torch.Tensor | None = None):
        super().__init__()
        self.lam = lam
        self.register_buffer("class_weights", class_weights if class_weights is not None else torch.ones(0))

    def forward(self, logits: torch.Tensor, av_pred: torch.Tensor, soft_target: torch.Tensor,
                av_target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        log_p = F.log_softmax(logits.float(), dim=1)
        # KL(target || p) per class; with one-hot targets and class weights this is Cui's CB cross-entropy.
        kl = torch.xlogy(soft_target, soft_target) - soft_target * log_p
        if self.class_weights.numel():
            kl = kl * self.class_weights
        emotion = kl.sum(1).mean()
        arousal = F.mse_loss(av_pred[:, 0].float(), av_target[:, 0])
        valence = F.mse_loss(av_pred[:, 1].float(), av_target[:, 1])
        total = self.lam * emotion + (1 - self.lam) * (arousal + valence)
        return total, {"emotion": emotion.item(), "arousal": arousal.item(), "valence": valence.item()}
