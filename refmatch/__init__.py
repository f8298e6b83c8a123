"""refmatch: fused similarity argmax for reference-guided pseudo-labels.

Every pixel of an unlabelled image takes the label of its most similar pixel in
a bank of labelled reference pixels (Seibold et al., AAAI 2022).
"""
from .backends import BackendStatus, backends
from .bank import ReferenceBank
from .feature_tap import FeatureTap
from .ops import MatchResult, classwise_max, match
from .pseudo_labels import PseudoLabeler, PseudoLabels
from .version import __version__
from .vote import Vote, vote

__all__ = ["BackendStatus", "FeatureTap", "MatchResult", "PseudoLabeler", "PseudoLabels", "ReferenceBank",
           "Vote", "backends", "classwise_max", "match", "vote",
           "__version__"]
