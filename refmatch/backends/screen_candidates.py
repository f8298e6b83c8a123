"""The candidates of the bfloat16 screen (``torch_screening``): collected per tile, rescored in float32.

Each query row keeps a floor: its k-th best screened score so far minus the
window 2E. A reference whose screened score falls below the floor cannot be
among the float32 top k, so it is never stored. Only rows whose tile maximum
reaches the floor take part in a tile. Rows whose candidates pile up are given
up and left to the float32 walk.
"""
import torch

from ..candidates import keep_best, pad_by_row
from .scoring import NORM_EPS, norms
from .screen_tiles import tile_candidates

# Candidates per row above which a row is left to the float32 walk: CROWD_LIMIT + CROWD_PER_K k.
# On random 128-d features a 512-wide tile gives top-8 rows 17 to 52 hits; clusters of
# near-duplicates (and a trained U-Net's features) over 100.
CROWD_LIMIT, CROWD_PER_K = 60, 4
GIVE_UP_FRACTION = 0.25  # of rows crowded, at which screening the rest would cost more than it saves
CHECK_EVERY = 4096  # references between checks of the candidates' rate
# Candidates per row and reference, per k + 1, above which the screen stops: MAX_HIT_RATE +
# SMALL_K_HIT_RATE / k (k = 1: 1.5e-3, k = 8: 0.71e-3; ``checkpoint``).
MAX_HIT_RATE, SMALL_K_HIT_RATE = 0.6e-3, 0.9e-3
# Candidates per row, per k + 1, in the first reference block, above which the screen stops there
# (``offer``), times sqrt(D / 128) above D = 128: the window grows with D against the spread of
# random features' scores. Measured at 256 (k = 1) and 512 (k = 8) references: random and loosely
# clustered features, where the screen pays, 1.1 to 2.1 at D = 128 (random: 2.5 at D = 256, 3.6
# at 512, 5.3 at 1024); tight clusters and a lung teacher's features 3.6 to 5.6 (such features were
# screened for up to 8192 references before giving up: on the teacher's 32768 x 23156 x 24
# pseudo-label call the screen took 1.35x the walk's time at k = 1).
FIRST_BLOCK_CANDIDATES, FIRST_BLOCK_DEPTH = 2.8, 128
# Rows of the first tile (torch_screening), and rows offered (or all of them) before the first
# block's count is trusted: a few crowded rows in a small tile are no reason to stop, and crowded
# features stop after one such tile (a lung teacher's 8192-row top-8: 0.87x the walk's speed with
# 8192-row tiles, 0.97x).
FIRST_BLOCK_ROWS = 2048
BUDGET_PER_ROW, MIN_BUDGET = 32, 1 << 16  # stored triples (per k) before the first compaction
STORED_LIMIT = 1 << 22  # triples (20 bytes each) one pass over the bank may hold: see rows_per_pass
# Bytes of each gathered operand rescored at once: small enough to stay in cache between the
# gather and the dot products (8192 x 65536 x 128, top-8's 229K pairs: 30.5 ms at 32 MiB, 10.7 ms at 4 MiB).
RESCORE_BYTES = 4 << 20


def crowd_limit(k):
    return CROWD_LIMIT + CROWD_PER_K * k


def rows_per_pass(k):
    """Query rows one screening pass takes, so that its stored triples stay within
    ``STORED_LIMIT``: a pass compacts at twice its live candidates (at most
    ``crowd_limit`` per row) or at its first budget, whichever is larger."""
    return max(1, STORED_LIMIT // max(BUDGET_PER_ROW * k, 2 * crowd_limit(k)))


class ScreenCandidates:
    """(row, column, screened score) triples above each row's floor, for the top ``k``."""

    def __init__(self, window, k=1, depth=FIRST_BLOCK_DEPTH, more_blocks=True, unbounded=None):
        """window: [N] float32, twice each row's error bound; depth: D; more_blocks: whether
        the bank takes more than one reference block (else a crowded first block is no reason
        to stop: its work is done); unbounded: [N] bool, rows the screen cannot bound (NaN or
        Inf in them), handed back unresolved from the start without counting as crowded."""
        num_rows = window.shape[0]
        self.window, self.k = window.float().contiguous(), k  # the C++ pass reads it by pointer
        self.first_block_limit = (FIRST_BLOCK_CANDIDATES * max(1.0, (depth / FIRST_BLOCK_DEPTH) ** 0.5)
                                  * (k + 1) if more_blocks else float("inf"))
        self.first_block = True  # until a block with references offered has ended
        # k screened scores per row (+inf: given up); float32 whatever the default dtype, as the C++ pass reads it
        self.top = torch.full((num_rows, k), float("-inf"), dtype=torch.float32)
        self.kth_bound = self.top[:, -1].clone()  # the floor's base: their minimum
        self.crowd_limit = crowd_limit(k)
        self.parts, self.rows_seen, self.offered, self.stored, self.given_up = [], 0, 0, 0, 0
        self.budget = max(BUDGET_PER_ROW * k * num_rows, MIN_BUDGET)  # raised to twice what compact keeps
        self.unresolved = torch.zeros(num_rows, dtype=torch.bool) if unbounded is None else unbounded.clone()
        self.unbounded = int(self.unresolved.sum())  # not crowded: left out of given_up
        self.kth_bound[self.unresolved] = self.top[self.unresolved] = float("inf")  # no candidates
        self.row_counts = torch.zeros(num_rows, dtype=torch.int64)  # stored triples per row, stale ones too
        self.last_check = None  # (candidates offered, references) at the last check

    def offer(self, tile, row0, col0, kept):
        """Take a bfloat16 tile [rows, columns] of rows from ``row0``, columns from
        ``col0`` (``kept``: their positions, or None). False: too many rows crowd, give up."""
        if not 0 <= row0 <= row0 + tile.shape[0] <= self.top.shape[0]:  # the C++ pass writes by pointer
            raise ValueError(f"tile rows {row0}..{row0 + tile.shape[0]} overrun the store's {self.top.shape[0]} rows")
        self.rows_seen = max(self.rows_seen, row0 + tile.shape[0])
        rows = slice(row0, row0 + tile.shape[0])
        found = tile_candidates(self, tile, rows)
        if found is None:
            return True
        hit_row, hit_col, hit_scores, all_near = found
        counts = torch.bincount(hit_row, minlength=tile.shape[0])
        if all_near:  # early tiles: rows crowded within one tile leave before storing
            crowded = counts > self.crowd_limit
            if bool(crowded.any()):
                self._give_up_rows(crowded.nonzero()[:, 0] + row0)
                if self.given_up > GIVE_UP_FRACTION * self.rows_seen:
                    return False
                keep = ~crowded[hit_row]
                hit_row, hit_col, hit_scores = hit_row[keep], hit_col[keep], hit_scores[keep]
                counts[crowded] = 0
        cols = hit_col if kept is None else kept[hit_col]
        self.parts.append((hit_row + row0, cols + col0, hit_scores))
        self.offered += hit_row.numel()
        self.stored += hit_row.numel()
        self.row_counts[rows] += counts
        if (self.first_block and self.rows_seen >= min(FIRST_BLOCK_ROWS, self.window.shape[0])
                and self.offered > self.first_block_limit * self.rows_seen):
            return False  # crowded from the start: the walk is faster
        # Compact when memory asks, or when enough rows may crowd to decide whether to give up.
        may_crowd = self.stored > GIVE_UP_FRACTION * self.rows_seen * self.crowd_limit
        if self.stored > self.budget or (
                may_crowd and int((self.row_counts > self.crowd_limit).sum()) > GIVE_UP_FRACTION * self.rows_seen):
            self.compact()
        return self.given_up <= GIVE_UP_FRACTION * self.rows_seen

    def checkpoint(self, references_done):
        """After each reference block: every ``CHECK_EVERY`` references, from the second
        check on, False when rows took more candidates per reference since the last check
        than (``MAX_HIT_RATE`` + ``SMALL_K_HIT_RATE`` / k)(k + 1). Screening on costs more
        than the walk then. Measured by hand in session 18 (not in a results file) at the
        second check, per k + 1, 8192 x 65536 x 128, 4 clusters with noise, each screened
        through against the walk: k = 1 at 0.85e-3 to 1.36e-3 1.6 to 2.1x faster with the
        C++ tile pass and 1.4 to 1.9x with the torch pass (a limit of 0.8e-3 gave those up:
        0.9x); k = 8 at 0.59e-3 to 0.68e-3 1.6 to 2.0x faster, at 0.82e-3 and 0.86e-3 1.26
        to 1.44x slower (its rows crowd late). (Features that crowd from the first block on
        leave earlier: ``offer``.)"""
        self.first_block = self.first_block and self.rows_seen == 0
        checked = 0 if self.last_check is None else self.last_check[1]
        if references_done // CHECK_EVERY == checked // CHECK_EVERY:
            return True
        previous, self.last_check = self.last_check, (self.offered, references_done)
        if previous is None:  # the first blocks take many candidates while the maxima settle
            return True
        references = references_done - previous[1]
        limit = (MAX_HIT_RATE + SMALL_K_HIT_RATE / self.k) * (self.k + 1)
        return self.offered - previous[0] <= limit * self.window.shape[0] * references

    def _give_up_rows(self, rows):
        self.unresolved[rows] = True
        self.given_up = int(self.unresolved.sum()) - self.unbounded
        self.kth_bound[rows] = float("inf")  # their floor: no more candidates
        self.top[rows] = float("inf")

    def compact(self):
        """Drop triples below their row's floor, give up rows with too many."""
        rows, cols, scores = (torch.cat(part) for part in zip(*self.parts))
        keep = scores >= (self.kth_bound - self.window)[rows]
        rows, cols, scores = rows[keep], cols[keep], scores[keep]
        self.row_counts = torch.bincount(rows, minlength=self.window.shape[0])
        crowded = self.row_counts > self.crowd_limit
        if bool(crowded.any()):
            self._give_up_rows(crowded)
            keep = ~crowded[rows]
            rows, cols, scores = rows[keep], cols[keep], scores[keep]
            self.row_counts[crowded] = 0
        self.parts, self.stored = [(rows, cols, scores)], rows.numel()
        self.budget = max(self.budget, 2 * self.stored)  # many live candidates: compact less often

    def rescore(self, query_rows, reference, metric):
        """Float32 top k of the surviving candidates: (score [N, k], index [N, k],
        unresolved [U] rows), best first, the lowest index on ties; rows given up,
        and slots beyond a row's candidates, hold -inf / -1."""
        num_rows = query_rows.shape[0]
        rows = cols = torch.zeros(0, dtype=torch.int64)
        if self.parts:
            self.compact()  # a row crowded since its first tiles leaves too, so the padding stays narrow
            rows, cols, _ = self.parts[0]
        exact = exact_scores(query_rows, reference, rows, cols, metric)
        # Row by row in ascending column order (as the tiles were offered), padded to one width.
        order = rows.sort(stable=True).indices
        rows, cols, exact = rows[order], cols[order], exact[order]
        counts = torch.bincount(rows, minlength=num_rows)
        width = max(int(counts.max()) if num_rows else 0, self.k)
        score, index = pad_by_row(rows, counts, width, exact, cols)
        best, best_index = keep_best(score, self.k, index)
        unresolved = self.unresolved.nonzero()[:, 0]
        best[unresolved], best_index[unresolved] = float("-inf"), -1
        return best, best_index.masked_fill_(best == float("-inf"), -1), unresolved


def exact_scores(query_rows, reference, rows, cols, metric):
    """Oriented float32 scores [P] of the pairs (query_rows[rows], reference[cols]),
    as the float32 walk defines them. The gathered rows go into two buffers reused
    chunk after chunk: fresh ones cost more in page faults than the gathers."""
    num_pairs, depth = rows.numel(), query_rows.shape[1]
    pairs_at_once = max(1, RESCORE_BYTES // (depth * query_rows.element_size()))
    chunk = min(num_pairs, pairs_at_once)
    query_buffer, reference_buffer = query_rows.new_empty(chunk, depth), reference.new_empty(chunk, depth)
    exact = query_rows.new_empty(num_pairs)
    for start in range(0, num_pairs, pairs_at_once):
        pair_rows, pair_cols = rows[start:start + pairs_at_once], cols[start:start + pairs_at_once]
        queries = torch.index_select(query_rows, 0, pair_rows, out=query_buffer[:pair_rows.numel()])
        references = torch.index_select(reference, 0, pair_cols, out=reference_buffer[:pair_cols.numel()])
        if metric == "cosine":  # as normalized_rows divides, in place
            references.div_(norms(references, dim=1).clamp_min(NORM_EPS)[:, None])
        dot = torch.einsum("pd,pd->p", queries, references)
        exact[start:start + pair_rows.numel()] = 2 * dot - references.square().sum(dim=1) if metric == "l2" else dot
    return exact
