"""lam * L_emotion + (1 - lam) * (L_arousal + L_valence); L_emotion is KLDiv to the raters' soft target (optionally
class-weighted, logit-adjusted or focal), L_arousal/L_valence are MSE (published) or 1 - CCC over the batch's rated
rows (a corpus or row without arousal/valence ratings has NaN targets, left out)."""
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


def ccc_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - concordance correlation over the batch (population moments, as metric.ccc)."""
    pred_mean, target_mean = pred.mean(), target.mean()
    covariance = ((pred - pred_mean) * (target - target_mean)).mean()
    denominator = pred.var(unbiased=False) + target.var(unbiased=False) + (pred_mean - target_mean) ** 2
    return 1 - 2 * covariance / (denominator + 1e-8)


def inverse_frequency_weights(counts: np.ndarray) -> torch.Tensor:
    """n / (classes * n_y) ("balanced" class weights, as scikit-learn's): 1 for every class of a balanced corpus.
    A class with no training sample is counted as one, so its weight stays finite."""
    counts = np.maximum(counts, 1)
    return torch.tensor(counts.sum() / (len(counts) * counts), dtype=torch.float32)


class EmotionLoss(nn.Module):
    def __init__(self, lam: float, class_weights: torch.Tensor | None = None, av_loss: str = "mse",
                 logit_adjustment: torch.Tensor | None = None, focal_gamma: float = 0.0):
        super().__init__()
        self.lam = lam
        # Focal loss (Lin et al., ICCV 2017): each class's term scaled by (1 - p)^gamma, so the many utterances the
        # model already gets right (on skewed data, mostly neutral ones) weigh less than the hard ones.
        self.focal_gamma = focal_gamma
        # Logit adjustment (Menon et al., ICLR 2021): training on logits + log(prior) makes the raw logits, used at
        # inference, fit a balanced prior: rare classes are predicted more often.
        self.register_buffer("logit_adjustment", logit_adjustment if logit_adjustment is not None else torch.zeros(0))
        # MSE pulls predictions towards the mean (it rewards shrinkage); 1 - CCC scores what the benchmark
        # scores: correlation, and matching mean and spread (the usual dimensional-emotion loss since AVEC).
        self.av_loss = {"mse": F.mse_loss, "ccc": ccc_loss}[av_loss]
        self.register_buffer("class_weights", class_weights if class_weights is not None else torch.ones(0))

    def forward(self, logits: torch.Tensor, av_pred: torch.Tensor, soft_target: torch.Tensor,
                av_target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        log_p = F.log_softmax(logits.float() + self.logit_adjustment if self.logit_adjustment.numel()
                              else logits.float(), dim=1)
        # KL(target || p) per class; with one-hot targets and class weights this is Cui's CB cross-entropy. The focal
        # factor scales the cross-entropy term alone (-t (1 - p)^gamma log p, Lin et al.): scaling the target's
        # entropy term too would give soft labels a gradient that does not come from fitting them.
        cross = -soft_target * log_p
        if self.focal_gamma:
            cross = cross * (1 - log_p.exp()) ** self.focal_gamma
        kl = torch.xlogy(soft_target, soft_target) + cross
        if self.class_weights.numel():
            kl = kl * self.class_weights
        emotion = kl.sum(1).mean()
        arousal, valence = (self._rated(av_pred[:, k].float(), av_target[:, k]) for k in (0, 1))
        total = self.lam * emotion + (1 - self.lam) * (arousal + valence)
        return total, {"emotion": emotion.item(), "arousal": arousal.item(), "valence": valence.item()}

    def _rated(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The arousal/valence loss over the rows that are rated (targets not NaN); 0 where none is."""
        rated = torch.isfinite(target)
        if bool(rated.all()):  # every row rated (KEMDy): no selection
            return self.av_loss(pred, target)
        return self.av_loss(pred[rated], target[rated]) if bool(rated.any()) else pred.sum() * 0.0
