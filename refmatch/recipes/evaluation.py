"""Prediction and metrics of a trained model on a split."""
import json
import math

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..data.folder import IGNORE_LABEL
from ..metrics import segmentation_metrics
from ..vote import best_class
from .data_setup import dark_images, warn_if_dark
from .interrupts import worker_ignores_stops
from .progress import progress_bar


@torch.no_grad()
def _batched_logits(model, images, device, batch_size):
    """Logits [b, C, H, W] (float32, on the CPU) of ``images`` [n, 1, H, W], batch by batch."""
    was_training = model.training
    model.eval()
    try:
        for start in range(0, images.shape[0], batch_size):
            yield model(images[start:start + batch_size].to(device)).float().cpu()
    finally:
        model.train(was_training)


def predict(model, images, device, batch_size=16):
    """Argmax labels [n, H, W] (on the CPU) of ``images`` [n, 1, H, W]."""
    labels = [best_class(logits) for logits in _batched_logits(model, images, device, batch_size)]
    return torch.cat(labels) if labels else torch.zeros(0, *images.shape[2:], dtype=torch.long)


def evaluate(model, split, class_names, device, batch_size=16):
    """Dice, IoU and HD95 per class of ``model`` on ``split`` (a Split with masks, 255
    where a pixel is ignored), at the split's resolution: HD95 is in its pixels."""
    prediction = predict(model, split.images, device, batch_size)
    return segmentation_metrics(prediction, split.masks, len(class_names), class_names, ignore_index=IGNORE_LABEL)


def evaluate_at_file_size(model, dataset, class_names, device, batch_size=16, num_workers=0):
    """As ``evaluate``, but scored at each mask file's own size: ``dataset`` is a
    FolderDataset with ``resize_masks=False`` (images [1, h, w] at the model's size, masks
    [H_i, W_i] as stored). Class probabilities are resized bilinearly to each mask, then
    the argmax taken; HD95 is in the file's pixels, so it compares across training sizes.
    Files are read on ``num_workers`` processes, a batch at a time; labels are kept as uint8."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=list,
                        worker_init_fn=worker_ignores_stops)
    predictions, masks, dark = [], [], []
    bar = progress_bar(len(dataset), "evaluate", delay=2.0, lines=True)
    for items in loader:
        bar.update(len(items))
        images = torch.stack([item["image"] for item in items])
        dark += dark_images(images, [item["name"] for item in items])
        logits = torch.cat(list(_batched_logits(model, images, device, batch_size)))
        for item, item_logits in zip(items, logits):
            probabilities = F.interpolate(item_logits.softmax(dim=0)[None], size=item["mask"].shape,
                                          mode="bilinear", align_corners=False)
            predictions.append(probabilities[0].argmax(dim=0).to(torch.uint8))
            masks.append(item["mask"].to(torch.uint8))  # classes and IGNORE_LABEL (255) fit
    bar.close()
    warn_if_dark(dark, dataset.root / dataset.subfolder)
    return segmentation_metrics(predictions, masks, len(class_names), class_names, ignore_index=IGNORE_LABEL)


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
