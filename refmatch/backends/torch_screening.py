"""The bfloat16 screen of the CPU's fused float32 walk: where it applies, and each row's window.

Algorithm (csrc/cpu_topk_isa.cpp does the work): the walk scores every step of
references first from bfloat16 copies of both sides (vdpbf16ps, float32 sums: twice
the float32 FMA rate on AVX512_BF16 cores). Each screened score s~ is within a proven
bound E of the walk's own float32 score s, per query row, so a vector of references
none of whose s~ beats the row's k-th best minus E cannot enter its top k; the others
are scored again in float32 by the walk's own operations. Results are the walk's, to
the bit. Rows the bound cannot cover walk unscreened, and so do row tiles whose
screened vectors keep failing to enter (clustered features, near-duplicates).

Bound (u = 2^-8 for bfloat16, gamma_K = K 2^-24 / (1 - K 2^-24) for float32
accumulation over K terms): rounding q and r costs (2u + u^2) |q_i r_i| per term,
accumulation gamma_K on each side, in all E <= ((1 + u)^3 (1 + gamma_K) - 1) sum |q_i r_i|
<= c |q| R, R the largest reference norm (the third u is slack for the walk's own
float32 rounding); l2 scores 2 q.r - |r|^2 with the walk's float32 |r|^2 on both sides,
so its window is twice the bound of q.r - |r|^2 / 2. Absolute terms cover subnormals,
which bfloat16 conversion and vdpbf16ps flush to zero.

Limits: k <= ``MAX_K``, D <= ``MAX_DEPTH``; query rows whose bound is not finite or
reaches 2^90, or whose norm reaches 2^127 (NaN or Inf in them, an entry that bfloat16
rounds to inf), walk unscreened, and all rows do where such a reference (under dot and
l2) is matchable; references holding NaN never match (in either scoring).
"""
import torch

from . import cpu_topk
from .settings import setting

BF16_UNIT = 2.0 ** -8
BF16_SAFE_NORM = 2.0 ** 127  # rows below it have no entry that rounds to inf in bfloat16
MIN_WORK = 1 << 30  # N M D from which the screen paid on 2 Zen 4 cores (k = 1 and 8; session 34)
MAX_K = 64  # 8192 x 65536 x 128 dot, against the walk: k = 1 1.9x, 16 1.4x, 64 1.1x as fast (session 34)
MAX_DEPTH = 1 << 12  # keeps the float32 norms' relative error D 2^-24 well below 1


def screen_switched_off():
    """``REFMATCH_BF16_SCREEN=0``: the bfloat16 screen of float32 calls stays off where it would pay ("1", the
    default, keeps it; any other value is a ValueError, not a silent "on")."""
    return setting("REFMATCH_BF16_SCREEN", ("1", "0")) == "0"


def screen_status():
    """What ``refmatch info`` says of the screen here; a setting that float32 calls refuse is named."""
    if not cpu_topk.screen_available():
        return "no bfloat16 screen (it needs refmatch._C's fused walk at AVX-512 width on a CPU with AVX512_BF16)"
    try:
        switched_off = screen_switched_off()
    except ValueError as error:
        return f"float32 calls raise: {error}"
    if switched_off:
        return "the bfloat16 screen of float32 calls is off (REFMATCH_BF16_SCREEN=0)"
    return f"the fused walk screens in bfloat16 for float32 k<={MAX_K} from N*M*D = 2^{MIN_WORK.bit_length() - 1}"


def screening_applies(rows, reference, k, screen=None):
    """Whether the fused walk screens. Never where it cannot (not the fused float32 walk at AVX-512
    width with AVX512_BF16, k > ``MAX_K``, D > ``MAX_DEPTH``); otherwise ``screen`` when given,
    else where it pays: N M D >= ``MIN_WORK`` and ``REFMATCH_BF16_SCREEN`` not 0."""
    possible = (k <= MAX_K and rows.shape[1] <= MAX_DEPTH and reference.shape[0] > 0
                and cpu_topk.applies(rows, reference, k) and cpu_topk.screen_available())
    if not possible or screen is not None:
        return possible and bool(screen)
    return not screen_switched_off() and rows.shape[0] * reference.shape[0] * rows.shape[1] >= MIN_WORK


def screen_error(query_norm, reference_norm_max, metric, depth):
    """Bound E [N] (float64) on |screened - float32 score| per query row, for q.r (dot, cosine)
    or q.r - |r|^2 / 2 (l2; its exact |r|^2 / 2 term adds (c - 2u) R^2 / 2 of slack)."""
    terms = depth + 2 * (metric == "l2")
    gamma = terms * 2.0 ** -24 / (1 - terms * 2.0 ** -24)
    relative = (1 + BF16_UNIT) ** 3 * (1 + gamma) - 1
    magnitude = query_norm * reference_norm_max
    error = relative * magnitude
    if metric == "l2":
        error = error + (relative - 2 * BF16_UNIT) * reference_norm_max ** 2 / 2
        magnitude = magnitude + reference_norm_max ** 2 / 2
    subnormal = (terms + 1) * 2.0 ** -124 * (1 + query_norm + reference_norm_max)
    return error + 2.0 ** -20 * magnitude + subnormal  # 2^-20: threshold arithmetic


def screen_window(rows, reference, ignored, metric):
    """The fused walk's window [N] (float32) per query row: a bound on |screened - float32
    score| of its scores alpha q.r + bias (``screen_error``, doubled for l2's alpha = 2);
    +inf for rows it cannot bound, and for every row where a matchable reference holds Inf
    or an entry bfloat16 rounds to inf (dot, l2).

    Args:
        rows: [N, D] float32 query rows as the walk scores them.
        reference: [M, D] float32, as given (cosine: the walk normalises it, R = 1).
        ignored: [M] bool or None; metric: "cosine", "dot" or "l2".
    """
    depth = rows.shape[1]
    if metric == "cosine":  # normalised rows: 1 up to float32 rounding
        reference_norm_max = 1 + depth * 2.0 ** -23
    else:
        norms = _norm_upper_bounds(reference)
        matchable = ~norms.isnan() if ignored is None else ~norms.isnan() & ~ignored  # NaN never matches
        reference_norm_max = float(norms[matchable].max()) if bool(matchable.any()) else 0.0
    query_norm = _norm_upper_bounds(rows)
    error = screen_error(query_norm, reference_norm_max, metric, depth) * (2 if metric == "l2" else 1)
    bounded = (torch.isfinite(error) & (error < 2.0 ** 90) & (query_norm < BF16_SAFE_NORM)
               & (metric == "cosine" or reference_norm_max < BF16_SAFE_NORM))
    return torch.where(bounded, error, float("inf")).float()


def _norm_upper_bounds(rows):
    """[R] float64 upper bounds on the Euclidean norms of float32 rows [R, D], raised past their
    rounding (D 2^-23). One float32 pass; rows whose float32 norm leaves [2^-60, 2^60], where
    squares of their entries may underflow (the bound would shrink to nothing) or overflow,
    again in float64 (NaN for rows holding NaN, inf for Inf)."""
    norm = torch.linalg.vector_norm(rows, dim=1).double()
    outside = ~((norm >= 2.0 ** -60) & (norm <= 2.0 ** 60))
    if bool(outside.any()):
        norm[outside] = torch.linalg.vector_norm(rows[outside].double(), dim=1)
    return norm * (1 + rows.shape[1] * 2.0 ** -23)
