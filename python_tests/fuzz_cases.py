"""Random calls of ``match`` and ``classwise_max`` and their checks against the float64 oracle
(``test_fuzz.py`` runs them through every backend and walk).

A case draws shapes, k, metric, dtype, memory layouts, thread count, native call size and
features (Gaussian, six decades wide, clustered, small integers, duplicated rows, per-row
scales, NaN / inf entries, zero rows, ignored labels). A result must pass the oracle's
tie-aware check; where every score is exact in float32 (small integers, dot or l2) it must be
the oracle's own ranking, ties to the lowest index.
"""
import math

import torch

from oracle import dense_scores, oriented, rows_of

IGNORE = 255


def draw_case(seed, max_rows=300, max_refs=3000, max_k=1100, device="cpu", depths=None, ks=None, cosine_decades=60,
              other_dtypes=(torch.float16, torch.bfloat16)):
    """One random call on ``device``: a dict of match's arguments plus the CPU walk settings it
    runs under. ``depths`` and ``ks``: the D and k to draw from (fewer kernels to JIT), or any;
    ``other_dtypes``: those a fifth of the cases take instead of float32;
    ``cosine_decades``: the span of row scales under cosine (the fused kernels' q.r overflows
    float32 from features around 1e19, where the contract leaves their results undefined)."""
    gen = torch.Generator().manual_seed(seed)

    def uniform(low, high):
        return low + (high - low) * torch.rand((), generator=gen).item()

    def chance(p):
        return torch.rand((), generator=gen).item() < p

    def integer(low, high):  # inclusive
        return int(torch.randint(low, high + 1, (), generator=gen))

    def choice(options):
        return options[integer(0, len(options) - 1)]

    metric = choice(["cosine", "dot", "l2"])
    depth = choice(depths) if depths else integer(1, 140) if chance(0.7) else integer(1, 20)
    num_refs = integer(1, max_refs)
    num_rows = integer(1, max_rows)
    kind = choice(["gaussian", "wide", "clusters", "integers"])
    centers = torch.randn(integer(1, 6), depth, generator=gen)

    def features(count):
        if kind == "gaussian":
            values = torch.randn(count, depth, generator=gen)
        elif kind == "wide":
            decades = 6 * torch.rand(count, depth, generator=gen) - 3
            values = torch.randn(count, depth, generator=gen) * 10.0 ** decades
        elif kind == "clusters":
            values = centers[torch.randint(len(centers), (count,), generator=gen)]
            values = values + 0.05 * torch.randn(count, depth, generator=gen)
        else:
            return torch.randint(-3, 4, (count, depth), generator=gen).float()
        if chance(0.3):  # rows of very different norms; cosine's beyond float32's squares
            decades = cosine_decades if metric == "cosine" and chance(0.3) else 4
            values = values * 10.0 ** (decades * torch.rand(count, 1, generator=gen) - decades / 2)
        return values + (uniform(-50, 50) if chance(0.15) else 0.0)  # far from the origin (l2's shift)

    query, reference = features(num_rows), features(num_refs)
    if chance(0.3) and num_refs > 1:  # exact duplicates of earlier rows: ties
        later = torch.randint(1, num_refs, (max(1, num_refs // 5),), generator=gen).unique()  # repeats: any may win
        reference[later] = reference[(later * torch.rand(len(later), generator=gen)).long()]
    for values in (query, reference):
        if chance(0.2):
            values[torch.rand(len(values), generator=gen) < 0.05] = 0.0
        for special in (float("nan"), float("inf"), float("-inf")):
            if chance(0.12):
                rows = torch.rand(len(values), generator=gen) < 0.05
                values[rows, torch.randint(depth, (), generator=gen)] = special

    dtype = torch.float32 if chance(0.8) else choice(other_dtypes)
    case = {"metric": metric, "seed": seed, "kind": kind,
            "threads": integer(1, 3), "refs_per_call": integer(1, 1200), "ignore_index": None, "labels": None}
    if ks:
        case["k"] = min(num_refs, choice(ks))
    else:
        k_limit = min(num_refs, max_k, 70 if chance(0.85) else 1100)
        case["k"] = 1 if chance(0.4) else integer(1, k_limit)
    if chance(0.6):
        case["num_classes"] = integer(1, 5)
        labels = torch.randint(case["num_classes"], (num_refs,), generator=gen)
        case["num_classes"] += integer(0, 1)  # at times a class with no reference
        if chance(0.4):
            case["ignore_index"] = IGNORE
            labels[torch.rand(num_refs, generator=gen) < (1.0 if chance(0.1) else uniform(0, 0.5))] = IGNORE
        if chance(0.3):  # stored class by class, as ReferenceBank keeps a bank: the class ranges' path
            order = labels.argsort(stable=True)
            labels, reference = labels[order], reference[order]
        case["labels"] = labels
    case["query"] = layout_query(query.to(device, dtype), gen)
    reference = reference.to(device, dtype)
    case["reference"] = reference.T.contiguous().T if chance(0.2) else reference
    if case["labels"] is not None:
        case["labels"] = case["labels"].to(device)
    return case


def layout_query(rows, gen):
    """[N, D] rows as the caller may hold them: rows, strided rows, or [B, D, H, W] maps
    (contiguous, channels last, or a slice of a larger map)."""
    num_rows, depth = rows.shape
    layout = int(torch.randint(4, (), generator=gen))
    if layout == 0:
        return rows
    if layout == 1:
        return torch.stack([rows, torch.zeros_like(rows)], dim=2)[:, :, 0]  # strides (2 D, 2)
    maps = rows.T.reshape(1, depth, num_rows, 1)  # H = N, W = 1 keeps any N
    if layout == 2:
        return maps.contiguous(memory_format=torch.channels_last)
    return torch.cat([maps, torch.zeros_like(maps)], dim=3)[:, :, :, :1]


def oracle_scores(case):
    """Oriented float64 [N, M] scores (larger is better) with every score that cannot match
    (NaN, the worst one, ignored references) at -inf."""
    scores = oriented(dense_scores(case["query"], case["reference"], case["metric"]), case["metric"])
    scores = scores.masked_fill(scores.isnan(), -math.inf)
    if case["ignore_index"] is not None:
        scores[:, case["labels"].cpu() == IGNORE] = -math.inf
    return scores


def tolerance(case, exact):
    """[N, 1] per query row: 2x plain float32 torch's error on the row's scores both keep finite,
    plus 1e-5 of their scale (oracle.py's rule, per row: rows of very different scales would
    otherwise take the largest row's tolerance, under which any match of a small row passes);
    float64 inputs: 1e-9 of the scale."""
    scale = score_scale(case)
    if case["query"].dtype == torch.float64:  # the torch backend's own float64 walk
        return 1e-9 * scale
    plain = dense_scores(case["query"], case["reference"], case["metric"], torch.float32)  # on the inputs' device
    plain = oriented(plain.double().cpu(), case["metric"])
    finite = exact.isfinite() & plain.isfinite()
    return 2 * torch.where(finite, (plain - exact).abs(), 0.0).amax(dim=1, keepdim=True) + 1e-5 * scale


def score_scale(case):
    """[N, 1]: the size of a row's scores' rounding, whatever their values: 1 for cosine,
    |q| max|r| for dot, (|q| + max|r|)^2 for l2, over the finite rows."""
    if case["metric"] == "cosine":
        return torch.ones(rows_of(case["query"]).shape[0], 1, dtype=torch.float64)
    query, reference = rows_of(case["query"]).double().cpu(), case["reference"].double().cpu()
    query_norm = torch.where(query.isfinite(), query, 0.0).norm(dim=1, keepdim=True)
    reference_norm = torch.where(reference.isfinite(), reference, 0.0).norm(dim=1).max()
    return query_norm * reference_norm if case["metric"] == "dot" else (query_norm + reference_norm) ** 2


def gap(got, expected):
    """|got - expected|, 0 where both are the same infinity, inf where either is NaN."""
    return torch.where(got == expected, 0.0, (got - expected).abs()).nan_to_num(nan=math.inf)


def exact_in_float32(case):
    """Small integers under dot or l2 (near the origin): every float32 score is exact."""
    values = torch.cat([rows_of(case["query"]).float(), case["reference"].float()])
    return (case["kind"] == "integers" and case["metric"] != "cosine" and bool(values.isfinite().all())
            and float(values.abs().max()) <= 3)


def as_rows(tensor, case):
    """A result field as [N, k]."""
    if case["query"].dim() == 2:
        return tensor.reshape(tensor.shape[0], -1)
    return tensor.reshape(1, case["k"], -1)[0].T if case["k"] > 1 else tensor.reshape(-1, 1)


def check_match(result, case, exact, tol):
    """Tie-aware check of one result against the oracle; exact ranking where scores are exact."""
    index, score = as_rows(result.index.cpu(), case), as_rows(result.score.cpu(), case)
    k = case["k"]
    best = exact.topk(k, dim=1)
    filled = best.values > -math.inf  # slots something matchable fills
    assert torch.equal(index >= 0, filled), "rows fill exactly the slots their matchable references can"
    if exact_in_float32(case):
        ranking = exact.sort(dim=1, descending=True, stable=True)
        expected = torch.where(filled, ranking.indices[:, :k], -1)
        assert torch.equal(index, expected), "exact scores: the oracle's ranking, ties to the lowest index"
    at_index = exact.gather(1, index.clamp(min=0))
    off = gap(at_index, best.values) - tol
    assert bool((off[filled] <= 0).all()), f"a match is {off[filled].max():.3g} beyond its row's tolerance"
    returned = oriented(score.double(), case["metric"])
    off = gap(returned, best.values) - tol
    assert bool((off[filled] <= 0).all()), f"a returned score is {off[filled].max():.3g} beyond its row's tolerance"
    worst = -math.inf if case["metric"] != "l2" else math.inf
    assert bool((score[~filled] == worst).all()), "unfilled slots hold the worst score"
    kept = index.masked_fill(~filled, -1).sort(dim=1).values
    assert not bool(((kept[:, 1:] == kept[:, :-1]) & (kept[:, 1:] >= 0)).any()), "indices repeat within a row"
    if case["labels"] is not None:
        labels = case["labels"].cpu()
        assert torch.equal(as_rows(result.label.cpu(), case), torch.where(filled, labels[index.clamp(min=0)], -1))


def check_classwise(scores, case, exact, tol):
    """Each class's best against the oracle's (the worst score where a class has none)."""
    per_class = torch.full((exact.shape[0], case["num_classes"]), -math.inf, dtype=torch.float64)
    for label in range(case["num_classes"]):
        members = case["labels"].cpu() == label
        if members.any():
            per_class[:, label] = exact[:, members].amax(dim=1)
    got = oriented(as_rows(scores.cpu(), {**case, "k": case["num_classes"]}).double(), case["metric"])
    assert torch.equal(got == -math.inf, per_class == -math.inf), "classes with no match hold the worst score"
    off = gap(got, per_class) - tol
    assert bool((off <= 0).all()), f"a class maximum is {off.max():.3g} beyond its row's tolerance"


def describe(case):
    query, reference = case["query"], case["reference"]
    return (f"seed {case['seed']}: {case['kind']} {case['metric']} k={case['k']} query {tuple(query.shape)} "
            f"{query.dtype} reference {tuple(reference.shape)} threads {case['threads']} "
            f"refs/call {case['refs_per_call']} labels {case['labels'] is not None} ignore {case['ignore_index']}")
