"""Scored GEMM tiles: the walk over reference blocks that the chunked torch backend's match
(``torch_backend``) and class-wise max (``torch_classwise``) share; each reduces the tiles its way.

A block of ``block_m`` references is prepared once (normalised for cosine, -|r|^2 bias for l2,
ignored rows at -inf), then scored against ``block_n`` query rows at a time by one BLAS GEMM into
a reused tile. Block sizes come from a tile memory budget, so extra memory is fixed whatever N and
M are; on the CPU the tile stays cache-sized.
"""
import torch

from .scoring import accumulation_dtype, normalized_rows, reference_stat

TILE_BYTES = {"cpu": 4 << 20, "cuda": 256 << 20}
BLOCK_M = {"cpu": 512, "cuda": 16384}


def prepare_block(reference, ignored, metric, operand_dtype, dtype):
    """One block of references as GEMM operand [block, D], plus what the scores
    need after the GEMM: a per-column bias (-|r|^2 for l2, -inf for ignored
    references) and, for cosine on half-precision operands, a per-column scale
    1/|r|; each None when not needed. Both are in the accumulation dtype."""
    exact = reference.to(dtype)
    bias = -exact.square().sum(dim=1) if metric == "l2" else None
    if ignored is not None:
        bias = exact.new_zeros(exact.shape[0]) if bias is None else bias
        bias = bias.masked_fill(ignored, float("-inf"))
    if operand_dtype != dtype:  # the half-precision references as given; normalising them would round
        scale = reference_stat(exact, metric) if metric == "cosine" else None
        return reference, bias, scale
    return normalized_rows(exact) if metric == "cosine" else exact, bias, None


def gemm_alpha(metric):
    """The GEMM's factor on q.r: l2 ranks by 2 q.r - |r|^2."""
    return 2.0 if metric == "l2" else 1.0


def score_tile(rows, block, bias, scale, metric, tile):
    """Oriented scores [rows, block] into ``tile``. Half-precision operands (GPUs
    only) keep tensor cores with a float32 result and take the bias afterwards,
    since the float32-output addmm wants a half-precision bias."""
    alpha = gemm_alpha(metric)
    if rows.dtype != tile.dtype:
        torch.mm(rows, block.T, out_dtype=tile.dtype, out=tile)
        if bias is not None:
            torch.add(bias[None, :], tile, alpha=alpha, out=tile)
    elif bias is None:
        torch.mm(rows, block.T, out=tile)
    else:
        torch.addmm(bias[None, :], rows, block.T, alpha=alpha, out=tile)
    if scale is not None:
        tile.mul_(scale)
    return tile


def drop_nan(scores):
    """NaN never wins: make it -inf, keep infinities as they are."""
    return scores.nan_to_num_(nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))


def query_rows(query):
    """[N, D] rows of [B, D, H, W] maps in the GEMM operand dtype: half-precision inputs on a
    GPU stay operands (tensor cores, float32 tiles); elsewhere they are upcast, once."""
    half_on_gpu = query.is_cuda and query.dtype in (torch.float16, torch.bfloat16)
    operand_dtype = query.dtype if half_on_gpu else accumulation_dtype(query.dtype)
    return query.permute(0, 2, 3, 1).reshape(-1, query.shape[1]).to(operand_dtype)


def block_sizes(rows, reference, tile_bytes=None, block_m=None):
    """(block_m, block_n): references per block and query rows per tile, from the tile budget."""
    device = rows.device.type if rows.device.type in TILE_BYTES else "cuda"
    block_m = min(reference.shape[0], block_m or BLOCK_M[device])
    block_n = max(1, (tile_bytes or TILE_BYTES[device]) // (block_m * accumulation_dtype(rows.dtype).itemsize))
    return block_m, block_n


def block_of(ignored, col0, block_m):
    """The [block_m] slice of ``ignored`` (an [M] bool mask, or None) for references from ``col0``."""
    return None if ignored is None else ignored[col0:col0 + block_m]


def _nonfinite_blocks(reference, block_m):
    """Indices of the reference blocks that may hold a NaN or infinity (one host read).

    A row sum is non-finite when the row holds a NaN or infinity (or overflows,
    which only costs that block the NaN pass), without an [M, D] temporary: summed in the
    bank's own dtype, as a dtype= argument casts the whole bank first (a float32 copy of a
    bfloat16 or float64 bank on every call).
    """
    bad_rows = (~torch.isfinite(reference.sum(dim=1))).nonzero()[:, 0]
    return set((bad_rows // block_m).tolist())


def scored_tiles(rows, reference, ignored, metric, block_m, block_n, nan_checked_later=False):
    """(row0, col0, tile [n, m]) for every ``block_n`` query rows of ``rows`` [N, D] (operand
    dtype) against every ``block_m`` references from ``col0``: oriented scores in the
    accumulation dtype, ignored references at -inf, NaN made -inf. The tile's memory is reused:
    it holds until the next one. ``nan_checked_later``: on the CPU, blocks without NaN or Inf
    skip the NaN pass (the caller checks row maxima for NaN; asking a GPU would synchronise)."""
    operand_dtype, dtype = rows.dtype, accumulation_dtype(rows.dtype)
    tile_buffer = torch.empty(min(block_n, rows.shape[0]) * block_m, device=rows.device, dtype=dtype)
    skip_nan_pass = nan_checked_later and not rows.is_cuda
    unclean_blocks = _nonfinite_blocks(reference, block_m) if skip_nan_pass else set()
    for col0 in range(0, reference.shape[0], block_m):
        block, bias, scale = prepare_block(reference[col0:col0 + block_m], block_of(ignored, col0, block_m),
                                           metric, operand_dtype, dtype)
        nan_pass = not skip_nan_pass or col0 // block_m in unclean_blocks
        for row0 in range(0, rows.shape[0], block_n):
            row_block = rows[row0:row0 + block_n]
            tile = tile_buffer[: row_block.shape[0] * block.shape[0]].view(row_block.shape[0], -1)
            score_tile(row_block, block, bias, scale, metric, tile)
            yield row0, col0, drop_nan(tile) if nan_pass else tile
