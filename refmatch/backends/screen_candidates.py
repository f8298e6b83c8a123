"""The candidates of the bfloat16 screen (``torch_screening``): collected per tile, rescored in float32.

Each query row keeps a floor: its best screened score so far minus the window
2E, raised with every tile's row maximum. A reference whose screened score
falls below the floor cannot be the float32 best, so it is never stored. Rows
whose candidates pile up are given up and left to the float32 walk.

Only k = 1: for top-8 the same scheme (a floor under each row's 8th best
screened score) kept about 42 candidates per row and measured no faster than
the float32 walk's running top-k (2 Zen 4 cores, 8192 x 65536 x 128).
"""
import torch
import torch.nn.functional as F

from .scoring import NORM_EPS

CROWD_LIMIT = 64  # candidates per row at which a row is left to the float32 walk
GIVE_UP_FRACTION = 0.25  # of rows crowded, at which screening the rest would cost more than it saves
CHECK_EVERY = 16  # reference blocks between checks of the candidates' rate
MAX_HIT_RATE = 0.5  # candidates per row and reference block above which the screen stops
BUDGET_PER_ROW, MIN_BUDGET = 32, 1 << 16  # stored triples before a compaction
RESCORE_PAIRS = 1 << 16  # candidate pairs rescored at once (D floats each)


def row_max_bf16(tile):
    """Row maxima of a finite bfloat16 tile, read as int16 (a fast integer reduction).

    Non-negative bfloat16 values order as their bits; a row whose largest bit
    pattern is negative holds only negative values, whose maximum has the smallest.
    """
    bits = tile.view(torch.int16)
    top = bits.amax(dim=1)
    negative = top < 0
    if bool(negative.any()):
        top = torch.where(negative, bits.amin(dim=1), top)
    return top.view(torch.bfloat16).float()


class ScreenCandidates:
    """(row, column, screened score) triples above each row's floor."""

    def __init__(self, window):
        num_rows = window.shape[0]
        self.window = window
        self.best = torch.full((num_rows,), float("-inf"))  # screened; +inf for rows given up
        self.parts, self.rows_seen, self.offered = [], 0, 0
        self.budget = max(BUDGET_PER_ROW * num_rows, MIN_BUDGET)
        self.unresolved = torch.zeros(num_rows, dtype=torch.bool)
        self.row_counts = torch.zeros(num_rows, dtype=torch.int64)  # stored triples per row, stale ones too
        self.last_check = None  # candidates offered up to the last checkpoint

    def offer(self, tile, row0, col0, kept):
        """Take a bfloat16 tile [rows, columns] of rows from ``row0``, columns from
        ``col0`` (``kept``: their positions, or None). False: too many rows crowd, give up."""
        rows = slice(row0, row0 + tile.shape[0])
        self.rows_seen = max(self.rows_seen, rows.stop)
        tile_max = row_max_bf16(tile)
        torch.maximum(self.best[rows], tile_max, out=self.best[rows])
        floor = self.best[rows] - self.window[rows]
        near = (tile_max >= floor).nonzero()[:, 0]
        if near.numel() == 0:
            return True
        if 4 * near.numel() > tile.shape[0]:  # converting the whole tile beats gathering its rows
            near, near_scores = torch.arange(tile.shape[0]), tile.float()
        else:
            near_scores = tile[near].float()
        hits = near_scores >= floor[near, None]
        if near.numel() == tile.shape[0]:  # early tiles: rows crowded within one tile leave before storing
            crowded = hits.sum(dim=1) > CROWD_LIMIT
            if bool(crowded.any()):
                self._give_up_rows(crowded.nonzero()[:, 0] + row0)
                if int(self.unresolved.sum()) > GIVE_UP_FRACTION * self.rows_seen:
                    return False
                hits[crowded] = False
        hit_row, hit_col = hits.nonzero().unbind(1)
        cols = hit_col if kept is None else kept[hit_col]
        self.parts.append((near[hit_row] + row0, cols + col0, near_scores[hit_row, hit_col]))
        self.offered += hit_row.numel()
        self.row_counts[near + row0] += torch.bincount(hit_row, minlength=near.numel())
        # Compact when memory asks, or when enough rows look crowded to decide whether to give up.
        looks_crowded = int((self.row_counts > CROWD_LIMIT).sum()) > GIVE_UP_FRACTION * self.rows_seen
        if int(self.row_counts.sum()) > self.budget or looks_crowded:
            self.compact()
        return int(self.unresolved.sum()) <= GIVE_UP_FRACTION * self.rows_seen

    def checkpoint(self, blocks_done):
        """After a reference block: every ``CHECK_EVERY`` blocks, from the second check
        on, False when rows took more than ``MAX_HIT_RATE`` candidates per block since the
        last check. Handling candidates then costs more than the bfloat16 GEMM saves
        (measured: 0.9 per block on 4 clusters in l2, 0.97 s screened against the
        walk's 0.81 s; random and clustered cosine features: 0.1 to 0.3)."""
        if blocks_done % CHECK_EVERY:
            return True
        previous, self.last_check = self.last_check, self.offered
        if previous is None:  # the first blocks take many candidates while the maxima settle
            return True
        return (self.offered - previous) / (self.window.shape[0] * CHECK_EVERY) <= MAX_HIT_RATE

    def _give_up_rows(self, rows):
        self.unresolved[rows] = True
        self.best[rows] = float("inf")  # their floor: no more candidates

    def compact(self, give_up_crowded=True):
        """Drop triples below their row's floor, give up rows with too many."""
        rows, cols, scores = (torch.cat(part) for part in zip(*self.parts))
        keep = scores >= (self.best - self.window)[rows]
        rows, cols, scores = rows[keep], cols[keep], scores[keep]
        self.row_counts = torch.bincount(rows, minlength=self.window.shape[0])
        if give_up_crowded:
            crowded = self.row_counts > CROWD_LIMIT
            if bool(crowded.any()):
                self._give_up_rows(crowded)
                keep = ~crowded[rows]
                rows, cols, scores = rows[keep], cols[keep], scores[keep]
                self.row_counts[crowded] = 0
        self.parts = [(rows, cols, scores)]

    def rescore(self, query_rows, reference, metric):
        """Float32 best of the surviving candidates: (score [N, 1], index [N, 1],
        unresolved [U] rows, which hold -inf / -1), the lowest index on ties."""
        num_rows = query_rows.shape[0]
        best = torch.full((num_rows,), float("-inf"))
        best_index = torch.full((num_rows,), -1, dtype=torch.int64)
        if self.parts:
            self.compact(give_up_crowded=False)
            rows, cols, _ = self.parts[0]
            exact = torch.cat([exact_scores(query_rows[r], reference[c], metric)
                               for r, c in zip(rows.split(RESCORE_PAIRS), cols.split(RESCORE_PAIRS))]
                              + [query_rows.new_empty(0)])
            best.scatter_reduce_(0, rows, exact, "amax")
            winner = exact == best[rows]
            best_index.fill_(reference.shape[0]).scatter_reduce_(0, rows[winner], cols[winner], "amin")
            best_index[best_index == reference.shape[0]] = -1
        unresolved = self.unresolved.nonzero()[:, 0]
        best[unresolved], best_index[unresolved] = float("-inf"), -1
        return best[:, None], best_index[:, None], unresolved


def exact_scores(query_rows, reference_rows, metric):
    """Oriented float32 scores of paired rows [P, D] x [P, D] -> [P], as the float32 walk defines them."""
    if metric == "cosine":
        reference_rows = F.normalize(reference_rows, dim=1, eps=NORM_EPS)
    dot = (query_rows * reference_rows).sum(dim=1)
    return 2 * dot - reference_rows.square().sum(dim=1) if metric == "l2" else dot
