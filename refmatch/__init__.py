"""refmatch: fused similarity argmax for reference-guided pseudo-labels.

Every pixel of an unlabelled image takes the label of its most similar pixel in
a bank of labelled reference pixels (Seibold et al., AAAI 2022).
"""
from .backends import BackendStatus, backends
from .ops import MatchResult, match
from .version import __version__

__all__ = ["BackendStatus", "MatchResult", "backends", "match", "__version__"]
