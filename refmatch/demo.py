"""Embedded demo: pseudo-labels from a bank of synthetic labelled feature maps.

Synthetic "images" are label maps of random overlapping discs. Each class has
several appearances (modes), as tissue does; a pixel's feature lies near the
prototype of its class's mode in that image, with per-image drift and pixel noise,
as a segmentation network's decoder features would. Multi-modal classes are where
matching single reference pixels beats one mean per class. A few labelled images fill the
reference bank; every pixel of the unlabelled images takes the label of its most
similar reference pixel. Prints pseudo-label accuracy next to the
nearest-class-mean baseline, and the matching throughput.
"""
import argparse
import os
import time

import torch
import torch.nn.functional as F

from .choices import at_least, is_cpu_or_cuda
from .ops import match


def synthetic_batch(num_images, num_classes, dim, size, generator, modes=3):
    """(features [B, D, size, size], labels [B, size, size]) of disc phantoms."""
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    labels = torch.zeros(num_images, size, size, dtype=torch.long)
    for image in range(num_images):
        for cls in range(1, num_classes):
            cy, cx = torch.randint(size // 5, 4 * size // 5, (2,), generator=generator)
            radius = size * (0.12 + 0.15 * torch.rand((), generator=generator))
            labels[image][(ys - cy) ** 2 + (xs - cx) ** 2 < radius ** 2] = cls
    prototypes = torch.randn(num_classes, modes, dim, generator=generator)
    mode = torch.randint(0, modes, (num_images, num_classes), generator=generator)
    images = torch.arange(num_images)[:, None, None]
    drift = 0.5 * torch.randn(num_images, num_classes, dim, generator=generator)
    per_pixel = prototypes[labels, mode[images, labels]] + drift[images, labels]
    noise = 1.5 * torch.randn(num_images, size, size, dim, generator=generator)
    return (per_pixel + noise).permute(0, 3, 1, 2).contiguous(), labels


def run(num_labeled=4, num_unlabeled=16, num_classes=4, dim=64, size=64, seed=0, backend="auto",
        device="cpu"):
    """Build the bank, pseudo-label the rest; returns a dict of the printed figures."""
    generator = torch.Generator().manual_seed(seed)
    features, labels = synthetic_batch(num_labeled + num_unlabeled, num_classes, dim, size, generator)
    features, labels = features.to(device), labels.to(device)
    bank = features[:num_labeled].permute(0, 2, 3, 1).reshape(-1, dim)
    bank_labels = labels[:num_labeled].reshape(-1)
    query, truth = features[num_labeled:], labels[num_labeled:]

    match(query[:1], bank, bank_labels, backend=backend)  # warm-up
    start = time.perf_counter()
    result = match(query, bank, bank_labels, metric="cosine", backend=backend)
    if device != "cpu":
        torch.cuda.synchronize(device)  # the match's device: cuda:1 is not the current one
    seconds = time.perf_counter() - start

    means = torch.stack([F.normalize(bank[bank_labels == c].mean(0), dim=0) for c in range(num_classes)])
    similarity = torch.einsum("bdhw,cd->bchw", F.normalize(query, dim=1), means)
    # A class no labelled pixel shows has a NaN mean, which argmax would pick everywhere: it gets no vote.
    baseline = similarity.nan_to_num(nan=float("-inf")).argmax(1)
    pairs = query.shape[0] * size * size * bank.shape[0]
    return {
        "bank_pixels": bank.shape[0],
        "query_pixels": query.shape[0] * size * size,
        "accuracy": (result.label == truth).float().mean().item(),
        "class_mean_accuracy": (baseline == truth).float().mean().item(),
        "seconds": seconds,
        "pairs_per_second": pairs / seconds,
        "tflops": 2 * pairs * dim / seconds / 1e12,
    }


def _device(text):
    if not is_cpu_or_cuda(text):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    return text


def main(argv=None):
    """``refmatch demo``: pseudo-labels of synthetic feature maps from a bank of labelled ones."""
    parser = argparse.ArgumentParser(prog="refmatch demo", description=__doc__.splitlines()[0])
    parser.add_argument("--labeled", type=at_least(1), default=4, help="labelled images in the bank (default 4)")
    parser.add_argument("--unlabeled", type=at_least(1), default=16, help="images to pseudo-label (default 16)")
    parser.add_argument("--classes", type=at_least(1), default=4, help="classes (default 4)")
    parser.add_argument("--dim", type=at_least(1), default=64, help="feature channels D (default 64)")
    parser.add_argument("--size", type=at_least(2), default=64, help="image side in pixels (>= 2; default 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic features (default 0)")
    parser.add_argument("--backend", default="auto", help="match backend: auto, torch, triton or cuda (default auto)")
    parser.add_argument("--device", type=_device, default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu, cuda or cuda:N (default: cuda where torch sees a GPU, else cpu)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}, but torch {torch.__version__} sees no CUDA device: use --device cpu")
    _check_fits(args.labeled + args.unlabeled, args.dim, args.size)
    figures = run(args.labeled, args.unlabeled, args.classes, args.dim, args.size, args.seed,
                  args.backend, args.device)
    print(f"reference bank: {figures['bank_pixels']:,} pixels from {args.labeled} labelled images")
    print(f"pseudo-labelled: {figures['query_pixels']:,} pixels of {args.unlabeled} unlabelled images")
    print(f"pseudo-label accuracy      {100 * figures['accuracy']:.2f} %")
    print(f"nearest class mean (base)  {100 * figures['class_mean_accuracy']:.2f} %")
    print(f"matching: {figures['seconds'] * 1e3:.1f} ms, {figures['pairs_per_second'] / 1e9:.2f} G pairs/s, "
          f"{figures['tflops']:.3f} TFLOP/s on {args.device}")
    return figures


def _check_fits(images, dim, size):
    """ValueError where the synthetic features (float32, a few copies while they are made) would not
    fit in this machine's memory (an allocation error of 10 TB ended in a traceback)."""
    needed = 3 * images * dim * size * size * 4
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
    if memory and needed > memory:
        raise ValueError(f"--labeled, --unlabeled, --dim and --size make about {needed / 2**30:,.0f} GiB of "
                         f"synthetic features, more than this machine's {memory / 2**30:,.0f} GiB: ask for fewer")


if __name__ == "__main__":
    main()
