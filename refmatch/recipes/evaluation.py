"""Prediction and metrics of a trained model on a split."""
import json
import math

import torch

from ..data.folder import IGNORE_LABEL
from ..metrics import segmentation_metrics


@torch.no_grad()
def predict(model, images, device, batch_size=16):
    """Argmax labels [n, H, W] (on the CPU) of ``images`` [n, 1, H, W]."""
    was_training = model.training
    model.eval()
    labels = [model(images[start:start + batch_size].to(device)).argmax(dim=1).cpu()
              for start in range(0, images.shape[0], batch_size)]
    model.train(was_training)
    return torch.cat(labels) if labels else torch.zeros(0, *images.shape[2:], dtype=torch.long)


def evaluate(model, split, class_names, device, batch_size=16):
    """Dice, IoU and HD95 per class of ``model`` on ``split`` (a Split with masks, 255
    where a pixel is ignored), at the split's resolution: HD95 is in its pixels."""
    prediction = predict(model, split.images, device, batch_size)
    return segmentation_metrics(prediction, split.masks, len(class_names), class_names, ignore_index=IGNORE_LABEL)


def metrics_json(metrics):
    """``metrics`` as indented JSON. An infinite HD95 (a class missing from the prediction
    or the truth) and an undefined (NaN) mean become null: JSON has no Infinity or NaN."""
    def finite(value):
        if isinstance(value, dict):
            return {key: finite(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(item) for item in value]
        return None if isinstance(value, float) and not math.isfinite(value) else value

    return json.dumps(finite(metrics), indent=2, allow_nan=False)
