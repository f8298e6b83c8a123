"""refmatch: fused similarity argmax for reference-guided pseudo-labels.

Every pixel of an unlabelled image takes the label of its most similar pixel in
a bank of labelled reference pixels (Seibold et al., AAAI 2022).
"""
import torch as _torch

if not hasattr(_torch.library, "custom_op"):  # each backend call is one; they arrived in torch 2.4
    raise ImportError(f"refmatch needs torch >= 2.4 (torch.library.custom_op), found torch {_torch.__version__}")

from .backends import BackendStatus, backends  # noqa: E402
from .bank import ReferenceBank  # noqa: E402
from .feature_tap import FeatureTap  # noqa: E402
from .ops import MatchResult, classwise_max, match  # noqa: E402
from .pseudo_labels import PseudoLabeler, PseudoLabels  # noqa: E402
from .tokens import tokens_as_maps  # noqa: E402
from .version import __version__  # noqa: E402
from .vote import Vote, vote  # noqa: E402

__all__ = ["BackendStatus", "FeatureTap", "MatchResult", "PseudoLabeler", "PseudoLabels", "ReferenceBank",
           "Vote", "backends", "classwise_max", "match", "tokens_as_maps", "vote",
           "__version__"]
