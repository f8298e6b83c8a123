"""Losses of the recipe: cross-entropy plus soft Dice on labelled images."""
import torch
import torch.nn.functional as F


def dice_loss(logits, masks, ignore_index=255, eps=1.0):
    """1 - mean soft Dice over all C classes (eps keeps a class absent from the batch near 1).
    logits [B, C, H, W], masks [B, H, W]."""
    num_classes = logits.shape[1]
    valid = (masks != ignore_index).unsqueeze(1).float()
    probabilities = logits.float().softmax(dim=1) * valid
    onehot = F.one_hot(masks.clamp(0, num_classes - 1), num_classes).permute(0, 3, 1, 2).float() * valid
    intersection = (probabilities * onehot).sum(dim=(0, 2, 3))
    total = probabilities.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    dice = (2 * intersection + eps) / (total + eps)
    return 1 - dice.mean()


def supervised_loss(logits, masks, ignore_index=255):
    """Cross-entropy + Dice, the loss on labelled images: logits [B, C, H, W], masks [B, H, W]
    int64 (``ignore_index`` where unlabelled); a 0-d float32 tensor."""
    return F.cross_entropy(logits.float(), masks, ignore_index=ignore_index) + dice_loss(logits, masks, ignore_index)


def pseudo_label_loss(logits, pseudo_labels, ignore_index=255):
    """Cross-entropy over kept pseudo-labelled pixels (0 when none is kept): logits
    [B, C, H, W], pseudo_labels [B, H, W] int64 (``ignore_index`` where not kept); 0-d float32."""
    kept = pseudo_labels != ignore_index
    if not bool(kept.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), pseudo_labels, ignore_index=ignore_index)


def rampup(step, rampup_steps):
    """Sigmoid-shaped ramp from 0 to 1 over ``rampup_steps`` (Laine and Aila)."""
    if rampup_steps <= 0:
        return 1.0
    phase = 1.0 - min(step, rampup_steps) / rampup_steps
    return float(torch.exp(torch.tensor(-5.0 * phase * phase)))
