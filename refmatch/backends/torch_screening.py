"""Exact float32 top k on CPUs with native bfloat16 GEMMs: screen in bfloat16, rescore in float32.

Algorithm: a bfloat16 GEMM (float32 accumulation, about twice the float32
rate on AVX512-BF16 and AMX cores) gives every screened score s~ with a proven
error bound |s~ - s| <= E per query row. A reference can only be among the
float32 top k if s~ >= (k-th best s~) - 2E, so only those candidates (about 4
per row on random 128-d features at k = 1, 28 at k = 8) are kept while the bank
streams by (``screen_candidates``), and rescored with float32 dot products at
the end. The result is what the float32 walk returns, up to float32 rounding,
never the bfloat16 ranking.

Bound (u = 2^-8 for bfloat16, gamma_K = K 2^-24 / (1 - K 2^-24) for float32
accumulation over K terms): rounding q and r costs (2u + u^2) |q_i r_i| per
term, accumulation gamma_K, the bfloat16 output u, in all
E <= ((1 + u)^3 (1 + gamma_K) - 1) sum |q_i r_i| <= c |q| R, R the largest
reference norm; l2 screens q.r - |r|^2 / 2 with |r|^2 as two more columns (a
bfloat16 head and tail), so its bound gains (c - 2u) R^2 / 2. An absolute term
covers flushed subnormals.

Limits: k <= ``MAX_K``; query rows whose bound E is not finite or reaches 2^90,
or whose norm reaches 2^127 (NaN or Inf in them, an entry that bfloat16 rounds
to inf; no overflow anywhere) go to the walk alone, and such a reference (under
dot and l2) sends them all; references holding NaN never
match, so they are skipped like ignored ones. Rows whose candidates pile up
(tight clusters, near-duplicate references) are handed back unresolved for the
float32 walk. The screen stops and hands back every row once a quarter of them
crowd, when the first reference block brings too many candidates (a trained
U-Net's features: ``screen_candidates.FIRST_BLOCK_CANDIDATES``), or when
candidates keep arriving faster than a k-dependent rate per row and reference
(``ScreenCandidates.checkpoint``, every 4096 references); the later passes of rows then walk
without screening.
"""
import functools

import torch

from .scoring import normalized_rows, squared_norms
from .screen_candidates import FIRST_BLOCK_ROWS, ScreenCandidates, rows_per_pass
from .settings import setting

BF16_UNIT = 2.0 ** -8
BF16_SAFE_NORM = 2.0 ** 127  # rows below it have no entry that rounds to inf in bfloat16
# Narrow reference blocks, many rows: measured fastest on 2 Zen 4 cores; top k, whose tiles
# cost more fixed work each, takes them TOPK_WIDER times as wide (8192 x 65536 x 128: 6 % faster).
BLOCK_M, TILE_BYTES, TOPK_WIDER = 256, 4 << 20, 2
MIN_WORK = 1 << 34  # N M D below which it did not pay: the main job's 2^32.6 calls ran 25-45 % slower
MAX_K = 16  # 8192 x 65536 x 128: k = 16 0.8x the walk's time, k = 64 1.3x
MAX_DEPTH = 1 << 12  # keeps the float32 norms' relative error D 2^-24 well below 1


@functools.cache
def native_bf16():
    """True where oneDNN runs bfloat16 GEMMs natively (AVX512-BF16, AMX): twice the float32 rate."""
    try:
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without the query
        return False


def screen_switched_off():
    """``REFMATCH_BF16_SCREEN=0``: the float32 screen stays off where it would pay ("1", the
    default, keeps it; any other value is a ValueError, not a silent "on")."""
    return setting("REFMATCH_BF16_SCREEN", ("1", "0")) == "0"


def screen_status():
    """What ``refmatch info`` says of the screen here; a setting that float32 calls refuse is named."""
    from .screen_tiles import tile_pass_name

    if not native_bf16():
        return "no native bfloat16 on this CPU, so no float32 screen"
    try:
        switched_off = screen_switched_off()
    except ValueError as error:
        return f"float32 calls raise: {error}"
    if switched_off:
        return "the float32 screen is off (REFMATCH_BF16_SCREEN=0)"
    return (f"exact bfloat16 screen for float32 k<={MAX_K} from N*M*D = 2^{MIN_WORK.bit_length() - 1} on this CPU, "
            f"its tile pass in {tile_pass_name()}")


def screening_applies(rows, reference, k, screen=None):
    """Whether to screen. Never where it is not implemented (k > ``MAX_K``, not float32 on the CPU,
    empty inputs, D > ``MAX_DEPTH``); otherwise ``screen`` when given, else where it pays:
    native bfloat16, N M D >= ``MIN_WORK``, and ``REFMATCH_BF16_SCREEN`` not 0."""
    possible = (k <= MAX_K and rows.device.type == reference.device.type == "cpu"
                and rows.dtype == reference.dtype == torch.float32
                and rows.shape[0] > 0 and reference.shape[0] > 0 and rows.shape[1] <= MAX_DEPTH)
    if not possible or screen is not None:
        return possible and bool(screen)
    return (not screen_switched_off() and native_bf16()
            and rows.shape[0] * reference.shape[0] * rows.shape[1] >= MIN_WORK)


def screen_error(query_norm, reference_norm_max, metric, depth):
    """Bound E [N] (float64) on |screened - float32-defined score| per query row.

    l2's |r|^2 / 2 enters as two exact products (-1/2 times a bfloat16 head and
    tail of |r|^2), whose sum is off by at most u^2 |r|^2 / 2: 2u less than the
    relative factor of the D products, which round both operands."""
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


def _reference_block(block, ignored, metric):
    """(float32 block as the plain walk scores it, its kept columns or None)."""
    kept = None
    if ignored is not None and bool(ignored.any()):
        kept = (~ignored).nonzero()[:, 0]
        block = block[kept]
    return (normalized_rows(block) if metric == "cosine" else block), kept


def _screen_query(rows, metric):
    """bfloat16 GEMM operand of query rows; l2 screens q.r - |r|^2 / 2, so -1/2 joins as two columns."""
    if metric != "l2":
        return rows.bfloat16()
    return torch.cat([rows, rows.new_full((rows.shape[0], 2), -0.5)], dim=1).bfloat16()


def _screen_operand(exact, metric):
    """bfloat16 GEMM operand of references; l2 appends |r|^2 as a bfloat16 head and tail
    (head + tail = |r|^2 to 16 bits: one bfloat16 column would cost l2 a 25 % wider window)."""
    if metric != "l2":
        return exact.bfloat16()
    norm_sq = exact.square().sum(dim=1, keepdim=True)
    head = norm_sq.bfloat16()
    return torch.cat([exact.bfloat16(), head, (norm_sq - head.float()).bfloat16()], dim=1)


def match_screened(rows, reference, ignored, metric, k=1, block_m=None, tile_bytes=None):
    """Exact float32 top k through a bfloat16 screen.

    Args:
        rows: [N, D] float32 query rows (CPU).
        reference: [M, D] float32.
        ignored: [M] bool or None.
        metric: "cosine", "dot" or "l2".
        k: matches per row, 1 <= k <= ``MAX_K``.
        block_m, tile_bytes: overrides of the screened tile (tests): references
            per tile, and bytes of the bfloat16 tile, which set its query rows.
    Returns:
        (oriented score [N, k] float32, index [N, k] int64, best first;
        unresolved [U] row indices): unresolved rows (and rows whose inputs the
        screen cannot bound) hold -inf / -1 and are left to the float32 walk.
    """
    depth = rows.shape[1]
    reference_norm_sq = _squared_norms_float64(reference)
    # NaN never matches, nor under cosine does a row holding Inf (it normalises to NaN): such
    # rows are as good as ignored. (Under dot and l2 an Inf row makes the bound infinite: the walk.)
    never = ~reference_norm_sq.isfinite() if metric == "cosine" else reference_norm_sq.isnan()
    if bool(never.any()):
        ignored = never if ignored is None else ignored | never
    matchable = reference_norm_sq if ignored is None else reference_norm_sq[~ignored]
    if metric == "cosine":  # normalised rows: 1 up to float32 rounding
        largest_norm_sq = matchable.new_ones(())
    else:
        largest_norm_sq = matchable.max() if matchable.numel() else matchable.new_zeros(())
    reference_norm_max = float(_norm_upper_bound(largest_norm_sq, depth))
    if metric != "cosine" and not reference_norm_max < BF16_SAFE_NORM:  # (cosine screens normalised rows)
        return _unscreened(rows.shape[0], k)
    wider = 1 if k == 1 else TOPK_WIDER
    block_m = min(reference.shape[0], block_m or BLOCK_M * wider)
    block_n = max(1, (tile_bytes or TILE_BYTES * wider) // (2 * block_m))
    passes, start, crowded = [], 0, False
    for part in rows.split(rows_per_pass(k)):  # bounds the candidates' memory whatever N is
        if crowded:  # the features crowded the last pass: the next would waste its first block alike
            score, index, unresolved = _unscreened(part.shape[0], k)
        else:
            score, index, unresolved, crowded = _screen_pass(part, reference, ignored, metric, k,
                                                             reference_norm_max, block_m, block_n)
        passes.append((score, index, unresolved + start))
        start += part.shape[0]
    return tuple(torch.cat(results) for results in zip(*passes))


def _screen_pass(rows, reference, ignored, metric, k, reference_norm_max, block_m, block_n):
    """``match_screened`` for one pass of query rows (``rows_per_pass``), over the whole bank:
    (score, index, unresolved, whether it stopped because the features crowd). Rows whose
    bound is not finite or reaches 2^90, or whose norm reaches ``BF16_SAFE_NORM``, are handed
    back unscreened."""
    num_rows, depth = rows.shape
    query_norm = _norm_upper_bound(_squared_norms_float64(rows), depth)
    error = screen_error(query_norm, reference_norm_max, metric, depth)
    # A float32 entry above bfloat16's largest (3.39e38) rounds to inf in the operand: no bound holds.
    bounded = torch.isfinite(error) & (error < 2.0 ** 90) & (query_norm < BF16_SAFE_NORM)
    if not bool(bounded.any()):
        return *_unscreened(num_rows, k), False
    candidates = ScreenCandidates(torch.where(bounded, 2 * error, 0).float(), k, depth,
                                  more_blocks=reference.shape[0] > block_m, unbounded=~bounded)
    # No NaN or Inf in the tiles; a copy only where some row needs it.
    screened_rows = _screen_query(rows if bool(bounded.all()) else rows.masked_fill(~bounded[:, None], 0), metric)
    tile_buffer = torch.empty(min(block_n, num_rows) * block_m, dtype=torch.bfloat16)
    for col0 in range(0, reference.shape[0], block_m):
        exact, kept = _reference_block(reference[col0:col0 + block_m],
                                       None if ignored is None else ignored[col0:col0 + block_m], metric)
        operand = _screen_operand(exact, metric)
        # The first block's first tile takes FIRST_BLOCK_ROWS rows: crowded features stop there.
        first = min(block_n, FIRST_BLOCK_ROWS) if candidates.first_block else block_n
        for row0 in [0, *range(first, num_rows, block_n)] if exact.shape[0] else ():
            row_block = screened_rows[row0:row0 + (first if row0 == 0 else block_n)]
            tile = tile_buffer[: row_block.shape[0] * operand.shape[0]].view(row_block.shape[0], -1)
            if not candidates.offer(torch.mm(row_block, operand.T, out=tile), row0, col0, kept):
                return *_unscreened(num_rows, k), True  # clustered features: the walk is faster for all rows
        if not candidates.checkpoint(col0 + block_m):
            return *_unscreened(num_rows, k), True
    return *candidates.rescore(rows, reference, metric), False


def _squared_norms_float64(rows):
    """[R] sums of squares of float32 rows, summed in float64: a float32 sum underflows to 0
    for entries below about 2^-75, and the error bound built on it would shrink to nothing."""
    return squared_norms(rows, dim=1, max_elements=1 << 20, dtype=torch.float64)


def _norm_upper_bound(norm_sq, depth):
    """Norms from float64 sums of ``depth`` squares, raised past their rounding (a float32-rounding
    allowance, far above float64's D 2^-53)."""
    return norm_sq.sqrt() * (1 + depth * 2.0 ** -23)


def _unscreened(num_rows, k):
    return (torch.full((num_rows, k), float("-inf"), dtype=torch.float32),
            torch.full((num_rows, k), -1, dtype=torch.int64), torch.arange(num_rows))
