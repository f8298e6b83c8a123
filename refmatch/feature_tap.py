"""FeatureTap: multi-layer features of any nn.Module through forward hooks."""
import torch
import torch.nn.functional as F


def size_pair(size, name):
    """None, an int (a square) or an (H, W) pair of positive ints -> None or (H, W)."""
    if size is None:
        return None
    pair = (size, size) if isinstance(size, int) else size
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2
            and all(isinstance(side, int) and not isinstance(side, bool) and side > 0 for side in pair)):
        raise ValueError(f"{name} must be None, a positive int or an (H, W) pair of positive ints, got {size!r}")
    return tuple(pair)


class FeatureTap:
    """Captures named layers' outputs on every forward pass of ``model``.

    ``features()`` resizes each captured [B, D_i, h_i, w_i] map to a common size
    (the largest, or ``size``), L2-normalises it per layer over channels, scales it
    by its weight and concatenates: one [B, sum(D_i), h, w] map. The model itself
    is not changed; ``close()`` (or leaving the ``with`` block) removes the hooks.

    Example:
        >>> with FeatureTap(teacher, ["decoder.up2", "decoder.up1"]) as tap:
        ...     teacher(images)
        ...     features = tap.features()      # [B, D_up2 + D_up1, h, w]
    """

    def __init__(self, model, layers, size=None, weights=None):
        if isinstance(layers, str) or not layers:
            raise ValueError(f"layers must be a non-empty list of module names, got {layers!r}")
        modules = dict(model.named_modules())
        unknown = [name for name in layers if name not in modules]
        if unknown:
            valid = ", ".join(name for name in modules if name)
            raise ValueError(f"unknown layer(s) {unknown}; valid names: {valid}")
        self.layers = list(layers)
        self.weights = [1.0] * len(layers) if weights is None else list(weights)
        if len(self.weights) != len(self.layers):
            raise ValueError(f"weights must give one value per layer ({len(self.layers)}), got {len(self.weights)}")
        self.size = size_pair(size, "size")
        self._outputs = {}
        self._handles = [modules[name].register_forward_hook(self._keeper(name)) for name in self.layers]

    def _keeper(self, name):
        def keep(module, inputs, output):
            self._outputs[name] = output[0] if isinstance(output, (tuple, list)) else output
        return keep

    def features(self):
        """[B, sum(D_i), h, w] from the last forward pass."""
        missing = [name for name in self.layers if name not in self._outputs]
        if missing:
            raise RuntimeError(f"no output captured yet for {missing}: run a forward pass of the model first")
        maps = [self._outputs[name] for name in self.layers]
        for name, feature_map in zip(self.layers, maps):
            if feature_map.dim() != 4:
                raise ValueError(f"layer {name!r} gave shape {tuple(feature_map.shape)}; FeatureTap needs [B, D, h, w]")
        size = self.size or max((m.shape[-2:] for m in maps), key=lambda hw: hw[0] * hw[1])
        parts = []
        for feature_map, weight in zip(maps, self.weights):
            if tuple(feature_map.shape[-2:]) != tuple(size):
                feature_map = F.interpolate(feature_map, size=tuple(size), mode="bilinear", align_corners=False)
            parts.append(weight * F.normalize(feature_map, dim=1))
        return torch.cat(parts, dim=1)

    def close(self):
        """Remove the hooks and drop captured outputs."""
        for handle in self._handles:
            handle.remove()
        self._handles, self._outputs = [], {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
