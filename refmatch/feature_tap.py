"""FeatureTap: multi-layer features of any nn.Module through forward hooks."""
import warnings
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .arguments import describe
from .choices import listing
from .sizes import Sides, given_size, linear_mode, sides, spatial_size


def _naming_hint(unknown, modules):
    """Why ``unknown`` layer names may miss ``modules`` (a model's named_modules()): the
    model wraps the one they name, or they are not strings."""
    if not all(isinstance(name, str) for name in unknown):
        return f"; layer names are strings ({[str(name) for name in unknown]})"
    if "_orig_mod" in modules and not any(name.startswith("_orig_mod") for name in unknown):
        return "; a torch.compile'd model: tap the module it compiled (model._orig_mod)"
    if all(f"module.{name}" in modules for name in unknown):
        return ("; a wrapped model (DistributedDataParallel, DataParallel, AveragedModel) names them "
                f"{[f'module.{name}' for name in unknown]}, or tap model.module")
    return ""


def _element(name, output, key):
    """``output[key]``, the element ``select`` names of layer ``name``'s output (a tuple, list or
    dict: indexing a tensor would take one sample of the batch)."""
    if isinstance(output, dict) and key in output:
        return output[key]
    if isinstance(output, (tuple, list)) and isinstance(key, int) and -len(output) <= key < len(output):
        return output[key]
    held = (f"keys {list(output)}" if isinstance(output, dict) else f"a {type(output).__name__} of "
            f"{len(output)}" if isinstance(output, (tuple, list)) else describe(output))
    raise ValueError(f"select={{{name!r}: {key!r}}}, but layer {name!r} returned {held}")


def _in_backward():
    """Whether autograd is running a backward pass (torch's graph-task id is -1 outside one);
    False while torch.compile traces, where that query would break the graph."""
    if torch.compiler.is_compiling():
        return False
    graph_task = getattr(torch._C, "_current_graph_task_id", None)
    return graph_task is not None and graph_task() != -1


# Dynamo does not guard on module hooks (skip_nnmodule_hook_guards): code compiled before a
# tap's hooks existed runs without them.
COMPILED_HINT = ("; or the model was torch.compile'd and ran before this tap was made, and its compiled code "
                 "runs without the tap's hooks: make the FeatureTap before the first compiled call, or call "
                 "torch._dynamo.reset() after making it")


class FeatureTap:
    """Captures named layers' outputs on every forward pass of ``model``.

    ``features()`` resizes each captured [B, D_i, h_i, w_i] map to a common size
    (the largest, or ``size``), L2-normalises it per layer over channels (unless
    ``normalize=False``), scales it by its weight and concatenates: one
    [B, sum(D_i), h, w] map; a 3-D model's [B, D_i, z_i, h_i, w_i] volumes likewise
    (trilinear) to [B, sum(D_i), z, h, w]. The model itself is not changed; ``close()``
    (or leaving the ``with`` block) removes the hooks.
    A ``copy.deepcopy`` of the model (an EMA teacher, say) carries the hooks, which
    do nothing there: tap the copy with its own FeatureTap (``features()`` warns where
    such a copy ran after the tapped model's last pass). ``nn.DataParallel`` over
    several GPUs is refused (its replicas see chunks); DDP is fine. An output changed in place
    after capture (by an ``inplace=True`` activation, say) is refused by ``features()``, as is
    a layer that the model's last forward pass did not run (a train-only auxiliary head, say),
    whose older output would not belong to this batch, and a mix of layers from the model's pass
    and from a call outside it (a submodule, or a method such as ``model.embed``, called on its
    own). Under ``torch.inference_mode``, whose tensors carry no version counter, the tap keeps a
    copy of each output instead. A layer that returns a tuple or list is tapped at its first
    element (``features()`` warns once where it held more), or at the index or key ``select``
    names (a dict output needs one); one called twice in a pass gives its last call's output;
    backward's recompute of a checkpointed model leaves the captures alone. Traced by
    ``torch.compile``, the hooks cannot tell that recompute from a call of a compiled block on
    its own after the pass: neither replaces the pass's capture of a layer, and the in-place
    check is left out.

    Args:
        model: the ``nn.Module`` to tap.
        layers: names of its submodules (as ``model.named_modules()`` gives them).
        size: (h, w), (z, h, w) for volumes, or an int for every side; None: the largest
            captured map's size.
        weights: one float per layer (1.0 each by default), applied after normalising.
        normalize: False keeps each layer's magnitudes (for an "l2" or "dot" bank that
            should see them; normalised layers make l2 a function of cosine).
        select: {layer name: index or key} of the element to tap where a layer returns a
            tuple, list or dict (``{"decoder.up1": "features"}``).
        to_maps: {layer name: function} that turns a layer's (selected) output into [B, D, h, w]
            maps first: ``lambda x: refmatch.tokens_as_maps(x, grid=(h, w))`` for a transformer
            block's [B, T, D] tokens,
            ``lambda x: x.permute(0, 3, 1, 2)`` for a channels-last [B, h, w, D] stage (Swin,
            ConvNeXt blocks), which would otherwise pass as maps of the wrong axes.

    Example:
        >>> with FeatureTap(teacher, ["decoder.up2", "decoder.up1"]) as tap:
        ...     teacher(images)
        ...     features = tap.features()      # [B, D_up2 + D_up1, h, w]
    """

    def __init__(self, model: nn.Module, layers: Union[list[str], tuple[str, ...]], size: Optional[Sides] = None,
                 weights: Optional[Sequence[float]] = None, normalize: bool = True,
                 select: Optional[Mapping[str, Union[int, str]]] = None,
                 to_maps: Optional[Mapping[str, Callable[[Any], torch.Tensor]]] = None):
        if isinstance(layers, str) or not isinstance(layers, (list, tuple)) or not layers:
            raise ValueError(f"layers must be a non-empty list of module names, got {layers!r}")
        self.select, self.to_maps = dict(select or {}), dict(to_maps or {})
        for option, named in (("select", self.select), ("to_maps", self.to_maps)):
            if not set(named) <= set(layers):
                raise ValueError(f"{option} names layers that are not tapped: {sorted(set(named) - set(layers))} "
                                 f"(layers: {list(layers)})")
        if not all(callable(function) for function in self.to_maps.values()):
            raise TypeError("to_maps takes a function per layer (lambda x: refmatch.tokens_as_maps(x, grid=(h, w)), "
                            "say)")
        modules = dict(model.named_modules())
        unknown = [name for name in layers if name not in modules]
        if unknown:
            raise ValueError(f"unknown layer(s) {unknown}{_naming_hint(unknown, modules)}; valid names: "
                             f"{listing([name for name in modules if name], shown=40)}")
        self.layers = list(layers)
        self.weights = [1.0] * len(layers) if weights is None else list(weights)
        if len(self.weights) != len(self.layers):
            raise ValueError(f"weights must give one value per layer ({len(self.layers)}), got {len(self.weights)}")
        self.size, self.normalize = spatial_size(size, "size"), bool(normalize)
        self._outputs = {}  # name -> (output, its version counter when captured or None, in the model's pass)
        self._in_pass = False  # between the model's forward pre-hook and its forward hook
        self._replicas = False
        self._copy_ran = False  # a deepcopy of the model (an EMA teacher?) ran after its last pass
        self._passes = 0  # the model's forward passes since the tap was made
        self._compiled = "_orig_mod" in modules  # a torch.compile'd model (OptimizedModule)
        self._unselected = {}  # layer -> elements of the tuple it returned, of which the tap took the first
        self._tapped = {name: modules[name] for name in self.layers}
        self._handles = [model.register_forward_pre_hook(self._new_pass(model))]
        self._handles += [modules[name].register_forward_hook(self._keeper(name)) for name in self.layers]
        # Last: a tap of the model itself ("") captures within the pass. always_call covers an
        # Exception; a KeyboardInterrupt mid-pass leaves _in_pass set until the next pass.
        self._handles.append(model.register_forward_hook(self._end_pass(model), always_call=True))

    def _new_pass(self, model):
        def forget(module, inputs):
            # Not a deepcopy of the model, which carries this hook, nor the recompute of a model
            # under activation checkpointing, which backward runs and may stop part way.
            if module is model and not _in_backward():
                self._outputs = {}
                self._passes += 1
                self._copy_ran, self._in_pass = False, True
        return forget

    def _end_pass(self, model):
        def end(module, inputs, output):
            if module is model and not _in_backward():
                self._in_pass = False
        return end

    def _keeper(self, name):
        def keep(module, inputs, output):
            if module is not self._tapped.get(name):  # a deepcopy of the model carries the hook, as do
                replica = getattr(module, "_is_replica", False)  # nn.DataParallel's replicas
                self._replicas |= replica
                self._copy_ran |= not replica
                return
            if _in_backward():  # a checkpointed model's recompute: the forward pass's outputs stand
                return
            # Traced by torch.compile, the eager-only checks (backward, inference, version counter)
            # broke the graph in every tapped layer (and Inductor failed on the pieces under autocast).
            compiling = torch.compiler.is_compiling()
            if compiling and not self._in_pass and self._outputs.get(name, (0, 0, False))[2]:
                return  # compiled code asks no _in_backward: a capture of the pass stands against one outside it
            if name in self.select:
                output = _element(name, output, self.select[name])
            elif isinstance(output, (tuple, list)) and output:
                if len(output) > 1:
                    self._unselected.setdefault(name, len(output))
                output = output[0]
            if not compiling and isinstance(output, torch.Tensor) and output.is_inference():
                output = output.clone()  # no version counter to check: a copy no later in-place op reaches
            tracked = not compiling and isinstance(output, torch.Tensor) and not output.is_inference()
            self._outputs[name] = (output, output._version if tracked else None, self._in_pass)
        return keep

    def features(self) -> torch.Tensor:
        """[B, sum(D_i), h, w] (or [B, sum(D_i), z, h, w]) from the last forward pass."""
        if not self._handles:
            raise RuntimeError("this FeatureTap is closed: make a new one to tap the model again")
        missing = [name for name in self.layers if name not in self._outputs]
        if missing and self._replicas:
            raise RuntimeError("the tapped layers ran as nn.DataParallel replicas, each on a chunk of the batch: "
                               "FeatureTap takes one model per process (DistributedDataParallel)")
        if missing and self._passes:
            raise RuntimeError(f"the model's last forward pass did not run {missing} (a layer used only in some "
                               f"passes?): tap layers that every pass runs{COMPILED_HINT if self._compiled else ''}")
        if missing and self._copy_ran:
            raise RuntimeError(f"no output captured for {missing}: only a copy of the tapped model (copy.deepcopy: "
                               "an EMA teacher?) has run, and its hooks capture nothing; run the tapped model, or "
                               "tap the copy with its own FeatureTap")
        if missing:
            raise RuntimeError(f"no output captured yet for {missing}: run a forward pass of the model first"
                               f"{COMPILED_HINT}")
        outside = [name for name in self.layers if not self._outputs[name][2]]
        if outside and len(outside) < len(self.layers):
            raise RuntimeError(f"{outside} ran outside the model's forward (a submodule or a method such as "
                               "model.embed called on its own) after the model's last pass, which gave the other "
                               "layers: their outputs belong to different batches; tap layers that one call runs")
        if self._copy_ran:
            warnings.warn("a copy of the tapped model (copy.deepcopy: an EMA teacher?) ran after the model's last "
                          "pass; its hooks capture nothing, so these features are the tapped model's own: tap the "
                          "copy with its own FeatureTap for its features", stacklevel=2)
        for name in [name for name in self._unselected if self._unselected[name]]:
            warnings.warn(f"layer {name!r} returned {self._unselected[name]} elements; the tap takes the first: "
                          f"select={{{name!r}: i}} takes another (warned once)", stacklevel=2)
            self._unselected[name] = 0
        maps = []
        for name in self.layers:
            feature_map, version = self._outputs[name][:2]
            if version is not None and feature_map._version != version:
                raise RuntimeError(f"layer {name!r}'s output was changed in place after the tap took it (an "
                                   "inplace=True activation or a += after it?): tap the layer that follows instead")
            if name in self.to_maps:
                feature_map = self.to_maps[name](feature_map)
            if not isinstance(feature_map, torch.Tensor) or feature_map.dim() not in (4, 5) or \
                    (maps and feature_map.dim() != maps[0].dim()):
                keys = (f" (keys {list(feature_map)}): select={{{name!r}: key}} picks one"
                        if isinstance(feature_map, dict) else
                        f" of {len(feature_map)} elements: tap the submodule that returns the tensor you want"
                        if isinstance(feature_map, (list, tuple)) else
                        " from its to_maps function" if name in self.to_maps else
                        f" (transformer tokens [B, T, D]?): to_maps={{{name!r}: lambda x: "
                        "refmatch.tokens_as_maps(x, grid=(h, w))}"
                        if isinstance(feature_map, torch.Tensor) and feature_map.dim() == 3 else "")
                raise ValueError(f"layer {name!r} gave {describe(feature_map)}{keys}; FeatureTap needs [B, D, h, w] "
                                 "maps or [B, D, z, h, w] volumes from every layer alike")
            maps.append(feature_map)
        dims = maps[0].dim() - 2
        largest = max((tuple(m.shape[2:]) for m in maps), key=lambda shape: torch.Size(shape).numel())
        size = sides(self.size, dims, "size") if self.size else largest
        parts = []
        for feature_map, weight in zip(maps, self.weights):
            if tuple(feature_map.shape[2:]) != size:
                feature_map = F.interpolate(feature_map, size=size, mode=linear_mode(dims), align_corners=False)
            parts.append(weight * (F.normalize(feature_map, dim=1) if self.normalize else feature_map))
        return torch.cat(parts, dim=1)

    def __repr__(self):
        weights = "" if all(weight == 1.0 for weight in self.weights) else f", weights={self.weights}"
        select = f", select={self.select}" if self.select else ""
        select += f", to_maps={{{', '.join(map(repr, self.to_maps))}: ...}}" if self.to_maps else ""
        state = "" if self._handles else ", closed"
        return (f"FeatureTap(layers={self.layers}, size={given_size(self.size)}, normalize={self.normalize}"
                f"{weights}{select}{state})")

    def close(self):
        """Remove the hooks and drop captured outputs."""
        for handle in self._handles:
            handle.remove()
        self._handles, self._outputs, self._tapped = [], {}, {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
