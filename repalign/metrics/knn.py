"""Mutual k-nearest-neighbour alignment and CKNNA (Huh et al. 2024, the platonic representation hypothesis).

Both metrics look only at each sample's ``k`` nearest neighbours: rows are
L2-normalised, similarity is the inner product (cosine), and a row is never its
own neighbour. Neighbours are found by blocks of rows, so memory stays
``O(n * (chunk_size + k))``: ``n = 100,000`` works on a GPU without an ``n x n``
matrix. After the top-k pass everything works on the sparse ``(n, k)``
neighbour lists (edges numbered ``i * n + j`` and found by binary search).

Ties: when several candidates share the k-th largest similarity, the ones with
the lowest row index are taken, so the neighbour sets do not depend on the
device, the chunk size or the top-k kernel's tie order.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from repalign._numerics import check_pair, check_rows
from repalign.metrics._kernels import unbiased_hsic_from_parts
from repalign.metrics._registry import register_metric

_BLOCK_BYTES = 64 * 1024**2  # default size of one (chunk, n) block of similarities


@dataclass(frozen=True)
class KnnState:
    """One layer reduced to its k-nearest-neighbour graph.

    ``indices[i]`` are the ``k`` neighbours of row ``i`` in ascending order
    (never ``i`` itself), ``similarities[i]`` the cosine similarities to them.
    ``keys`` numbers the edges ``i -> j`` as ``i * n + j``; row-major order
    with sorted rows makes it sorted, so edges are looked up by binary search.
    ``self_hsic`` is the kNN-masked unbiased HSIC of the layer with itself
    (CKNNA only).
    """

    indices: torch.Tensor  # (n, k) int64, each row ascending
    similarities: torch.Tensor  # (n, k) compute dtype
    keys: torch.Tensor  # (n * k,) int64, ascending
    self_hsic: torch.Tensor | None = None
    # made on first use by bootstrap subsampling: a deeper neighbour list (see _knn_resample)
    cache: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def n(self) -> int:
        return int(self.indices.shape[0])

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])


def _check_k(k: int, n: int, *, minimum: int = 1) -> None:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int (number of neighbours), got {type(k).__name__}")
    if k < minimum:
        raise ValueError(f"k must be at least {minimum}, got k={k}")
    if k >= n:
        raise ValueError(
            f"k={k} must be smaller than the number of samples n={n}: each sample has only "
            f"n-1={n - 1} neighbours besides itself; pass a smaller k (e.g. k={max(minimum, min(10, n - 1))})"
        )


def _resolve_chunk(chunk_size: int | None, n: int, itemsize: int) -> int:
    if chunk_size is None:
        return max(1, min(n, _BLOCK_BYTES // (n * itemsize)))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(
            f"chunk_size must be a positive int (rows per block) or None, got {chunk_size!r}"
        )
    return min(chunk_size, n)


def _normalise_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows divided by their L2 norm; no epsilon, so an all-zero row is an error."""
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    zero = (norms == 0).squeeze(1)
    if bool(zero.any()):
        rows = zero.nonzero().squeeze(1)[:5].tolist()
        raise ValueError(
            f"{int(zero.sum())} sample(s) have an all-zero feature vector (rows {rows}...); "
            "their cosine neighbours are undefined. Drop those samples first"
        )
    return x / norms


def _lowest_index_ties(
    block: torch.Tensor, top_values: torch.Tensor, top_indices: torch.Tensor
) -> torch.Tensor:
    """Re-pick the neighbours of rows whose k-th similarity is tied, lowest index first.

    Every candidate strictly above the k-th value is a neighbour whatever the
    tie order; only the candidates equal to it compete for the last places.
    """
    k = top_indices.shape[1]
    threshold = top_values[:, -1:]
    tied = (block >= threshold).sum(dim=1) > k
    if not bool(tied.any()):
        return top_indices
    sub, thr = block[tied], threshold[tied]
    above = sub > thr
    equal = sub == thr
    free = k - above.sum(dim=1, keepdim=True)
    chosen = above | (equal & (equal.cumsum(dim=1) <= free))
    top_indices = top_indices.clone()
    top_indices[tied] = chosen.nonzero()[:, 1].reshape(-1, k)
    return top_indices


def knn_graph(x: torch.Tensor, k: int, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` most similar other rows of each row of ``x`` (rows already unit-norm).

    Returns ``(indices, similarities)``, both ``(n, k)``, each row's indices
    ascending; computes the ``(n, n)`` similarity matrix ``chunk_size`` rows at
    a time.
    """
    n = x.shape[0]
    indices = torch.empty(n, k, dtype=torch.long, device=x.device)
    similarities = x.new_empty(n, k)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        block = x[start:stop] @ x.T  # (c, n)
        rows = torch.arange(stop - start, device=x.device)
        # a sample is excluded from its own neighbours by its index: -inf cannot tie any similarity
        block[rows, rows + start] = float("-inf")
        values, idx = torch.topk(block, k, dim=1, sorted=False)
        idx = _lowest_index_ties(block, values, idx).sort(dim=1).values
        indices[start:stop] = idx
        similarities[start:stop] = block.gather(1, idx)
    return indices, similarities


def _knn_prepare(x: torch.Tensor, *, k: int = 10, chunk_size: int | None = None) -> KnnState:
    """Per-layer work for mutual k-NN: unit-norm rows and their k-NN lists."""
    n = x.shape[0]
    _check_k(k, n)
    chunk = _resolve_chunk(chunk_size, n, x.element_size())
    indices, similarities = knn_graph(_normalise_rows(x), k, chunk)
    rows = torch.arange(n, device=x.device)[:, None]
    return KnnState(
        indices=indices, similarities=similarities, keys=(rows * n + indices).reshape(-1)
    )


def _knn_permute(state: KnnState, perm: torch.Tensor) -> KnnState:
    """The graph of ``x[perm]`` relabelled from this one: row ``i`` is old row ``perm[i]``,
    its neighbours renamed by the inverse permutation and re-sorted. O(n k log k) instead
    of a new O(n² d) search. Equal to preparing ``x[perm]`` except where similarities tie
    at the k-th neighbour: ties then stay broken by the original row order."""
    n = state.n
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(n, device=perm.device)
    indices, order = inverse[state.indices[perm]].sort(dim=1)
    similarities = state.similarities[perm].gather(1, order)
    rows = torch.arange(n, device=perm.device)[:, None]
    keys = (rows * n + indices).reshape(-1)
    return KnnState(indices, similarities, keys, self_hsic=state.self_hsic)


def _deep_neighbours(
    state: KnnState, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unit-norm rows and each row's ``4k + 16`` nearest others, most similar first (ties:
    lowest index first), computed once per prepared layer and kept in ``state.cache``."""
    if "deep" not in state.cache:
        xn = _normalise_rows(x)
        depth = min(xn.shape[0] - 1, 4 * state.k + 16)
        chunk = _resolve_chunk(None, xn.shape[0], xn.element_size())
        idx, sim = knn_graph(xn, depth, chunk)  # ascending index, ties to the lowest
        order = sim.argsort(dim=1, descending=True, stable=True)  # then by similarity
        indices, values = idx.gather(1, order), sim.gather(1, order)
        state.cache["deep"] = (indices, values, xn)
    return state.cache["deep"]


def _knn_resample(state: KnnState, x: torch.Tensor, idx: torch.Tensor) -> KnnState | None:
    """The graph of the subsample ``x[idx]`` (distinct rows) from a deeper neighbour list.

    Row ``i``'s ``k`` nearest neighbours within the subsample are the first ``k`` of its
    full list that were drawn: a subsample of half the rows keeps about half of the
    ``4k + 16`` listed, and the rare row left with fewer than ``k`` is searched exactly.
    O(m·k) per subsample instead of O(m² d). Equal to preparing ``x[idx]`` except where
    similarities tie at the k-th neighbour (ties stay broken by the original row order).
    ``None`` when ``idx`` repeats a row (not a subsample).
    """
    m, k = idx.numel(), state.k
    if k >= m or torch.unique(idx).numel() != m:
        return None
    deep, deep_sim, xn = _deep_neighbours(state, x)
    label = torch.full((state.n,), -1, dtype=torch.long, device=idx.device)
    label[idx] = torch.arange(m, device=idx.device)
    candidates, sims = label[deep[idx]], deep_sim[idx]  # (m, depth): new labels or -1
    drawn = candidates >= 0
    take = drawn & (drawn.cumsum(dim=1) <= k)
    found = take.sum(dim=1) == k
    indices = torch.empty(m, k, dtype=torch.long, device=idx.device)
    similarities = sims.new_empty(m, k)
    indices[found] = candidates[found][take[found]].reshape(-1, k)
    similarities[found] = sims[found][take[found]].reshape(-1, k)
    short = (~found).nonzero().squeeze(1)
    if short.numel():  # too few of the listed neighbours drawn: search these rows exactly
        sub = xn[idx]
        block = sub[short] @ sub.T
        block[torch.arange(short.numel(), device=idx.device), short] = float("-inf")
        values, top = torch.topk(block, k, dim=1, sorted=False)
        top = _lowest_index_ties(block, values, top)
        indices[short], similarities[short] = top, block.gather(1, top)
    order = indices.argsort(dim=1)
    indices, similarities = indices.gather(1, order), similarities.gather(1, order)
    rows = torch.arange(m, device=idx.device)[:, None]
    sub_state = KnnState(indices, similarities, (rows * m + indices).reshape(-1))
    if state.self_hsic is None:
        return sub_state
    self_hsic = _masked_hsic(sub_state, sub_state)  # CKNNA
    if not bool(self_hsic > 0):
        raise ValueError("the subsample's kNN-masked self-HSIC is not positive")
    return replace(sub_state, self_hsic=self_hsic)


def _check_compatible(a: KnnState, b: KnnState) -> None:
    if a.indices.shape != b.indices.shape:
        raise ValueError(
            f"k-NN states differ in shape {tuple(a.indices.shape)} vs {tuple(b.indices.shape)}; "
            "prepare both layers with the same n and k"
        )


def _find(keys: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of ``queries`` in the sorted ``keys`` and whether each is there."""
    pos = torch.searchsorted(keys, queries).clamp_(max=keys.numel() - 1)
    return pos, keys[pos] == queries


def _knn_combine(
    a: KnnState, b: KnnState, *, k: int = 10, chunk_size: int | None = None
) -> torch.Tensor:
    """Mean over rows of ``|N_a(i) ∩ N_b(i)| / k``: the edges the two graphs share."""
    _check_compatible(a, b)
    _, shared = _find(b.keys, a.keys)
    return shared.sum().to(a.similarities.dtype) / (a.n * a.k)


@register_metric(
    bounds=(0.0, 1.0),
    invariances=("orthogonal", "isotropic_scaling", "permutation"),
    reference="Huh et al. 2024, The Platonic Representation Hypothesis, ICML (mutual k-NN)",
    prepare=_knn_prepare,
    combine=_knn_combine,
    permute=_knn_permute,
    resample=_knn_resample,
    min_rows=3,
    duplicates_ok=False,
)
def mutual_knn(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    k: int = 10,
    chunk_size: int | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Mutual k-nearest-neighbour alignment of Huh et al. 2024.

    ``(1/n) Σ_i |N_x(i) ∩ N_y(i)| / k`` where ``N_x(i)`` are the ``k`` rows of
    ``x`` with the largest cosine similarity to row ``i`` (rows L2-normalised,
    ``i`` itself excluded by index, ties to the lowest index). 1 when both
    representations have the same neighbourhoods; about ``k/(n-1)`` by chance.

    ``chunk_size`` is the number of rows per block of the similarity matrix
    (default: blocks of about 64 MB); memory is ``O(n * (chunk_size + k))``.
    Needs ``k < n``; all-zero rows and constant inputs are errors.
    """
    x, y = check_pair(x, y, dtype=dtype, min_rows=3, why="mutual k-NN needs k < n neighbours")
    return _knn_combine(
        _knn_prepare(x, k=k, chunk_size=chunk_size),
        _knn_prepare(y, k=k, chunk_size=chunk_size),
        k=k,
        chunk_size=chunk_size,
    )


# CKNNA: the unbiased HSIC (Song et al. 2012, eq. 5) of kernels masked to shared neighbours.


def _masked_hsic(a: KnnState, b: KnnState) -> torch.Tensor:
    """Unbiased HSIC of ``M∘K`` and ``M∘L``, ``M_ij = [j ∈ N_a(i) ∩ N_b(i)]``, from neighbour lists.

    With ``A = M∘K``, ``B = M∘L`` (zero diagonals, not symmetric in general):
    ``[Σ_ij A_ij B_ji + ΣA ΣB / ((n-1)(n-2)) - 2 Σ(AB) / (n-2)] / (n(n-3))``,
    the formula of Huh et al.'s ``hsic_unbiased``; ``Σ(AB) = Σ_il A_il rowsum(B)_l``.
    Every term is a sum over the at most ``n k`` edges of ``M``, found by
    binary search among the sorted edge keys: ``O(n k)`` memory.
    """
    n = a.n
    pos, on_mask = _find(b.keys, a.keys)  # a's edges that b has too: the edges of M
    a_vals = torch.where(on_mask, a.similarities.reshape(-1), 0)  # A on a's edge list
    b_vals = torch.where(on_mask, b.similarities.reshape(-1)[pos], 0)  # B on a's edge list
    b_rows = b_vals.reshape(n, -1).sum(dim=1)  # rowsum(B)
    cross = (a_vals * b_rows[a.indices.reshape(-1)]).sum()  # Σ(AB)
    # Σ_ij A_ij B_ji: look up the reverse edge j -> i among a's edges, keep it if it is in M
    rows = torch.arange(n, device=a.keys.device).repeat_interleave(a.k)
    back, found = _find(a.keys, a.indices.reshape(-1) * n + rows)
    trace = (a_vals * torch.where(found, b_vals[back], 0)).sum()
    return unbiased_hsic_from_parts(trace, a_vals.sum(), b_vals.sum(), cross, n)


def _cknna_prepare(x: torch.Tensor, *, k: int = 10, chunk_size: int | None = None) -> KnnState:
    """Per-layer work for CKNNA: the k-NN graph and the layer's masked self-HSIC."""
    check_rows(x.shape[0], 4, "the unbiased HSIC of Song et al. 2012 divides by n(n-3)")
    _check_k(k, x.shape[0], minimum=2)
    state = _knn_prepare(x, k=k, chunk_size=chunk_size)
    self_hsic = _masked_hsic(state, state)
    if not bool(self_hsic > 0):
        raise ValueError(
            f"the kNN-masked unbiased HSIC of a layer with itself is {float(self_hsic):.3g} <= 0, "
            "so CKNNA is undefined; the layer's neighbourhoods carry no centred similarity "
            "structure at this k. Use more samples or a larger k"
        )
    return replace(state, self_hsic=self_hsic)


def _cknna_combine(
    a: KnnState, b: KnnState, *, k: int = 10, chunk_size: int | None = None
) -> torch.Tensor:
    """HSIC_M(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), ``M`` the shared neighbours (no epsilon)."""
    _check_compatible(a, b)
    return _masked_hsic(a, b) / torch.sqrt(a.self_hsic * b.self_hsic)


@register_metric(
    bounds=(-1.0, 1.0),  # the usual range, not a theorem: see the docstring
    symmetric=False,
    invariances=("orthogonal", "isotropic_scaling", "permutation"),
    reference="Huh et al. 2024, The Platonic Representation Hypothesis, ICML (CKNNA)",
    prepare=_cknna_prepare,
    combine=_cknna_combine,
    permute=_knn_permute,
    resample=_knn_resample,
    min_rows=4,
    duplicates_ok=False,
)
def cknna(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    k: int = 10,
    chunk_size: int | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Centered kernel nearest-neighbour alignment (CKNNA) of Huh et al. 2024.

    With ``K``, ``L`` the cosine kernels of ``x`` and ``y`` (rows L2-normalised)
    and ``N_x(i)``, ``N_y(i)`` the k nearest other rows as in :func:`mutual_knn`:

    ``CKNNA = HSIC_u(M∘K, M∘L) / sqrt(HSIC_u(M_x∘K, M_x∘K) HSIC_u(M_y∘L, M_y∘L))``

    where ``M_ij = [j ∈ N_x(i)] [j ∈ N_y(i)]`` (the neighbours both share),
    ``M_x``, ``M_y`` each kernel's own kNN mask, and ``HSIC_u`` the unbiased
    estimator of Song et al. 2012 (eq. 5) applied as Huh et al.'s code does to
    these non-symmetric masked kernels, with the trace term
    ``Σ_ij (M∘K)_ij (M∘L)_ji``. Masks are not symmetric, so neither is CKNNA
    in general: ``cknna(x, y)`` and ``cknna(y, x)`` can differ slightly.

    Range: 1 for identical neighbourhoods, near 0 for unrelated ones. [-1, 1]
    is the registered range but not a hard bound: the cross term uses the
    shared mask and the self terms each layer's own, so there is no
    Cauchy-Schwarz, and with few samples or 1-D features the ratio of unbiased
    estimates can leave it (measured: 1.0017 at n=39, k=7, d=1; beyond 1.5 for
    n < 12 with k close to n).

    Needs ``2 <= k < n`` and ``n >= 4``; raises where a self-HSIC is not
    positive (no epsilon). Memory ``O(n * (chunk_size + k))``, as for mutual k-NN.
    """
    x, y = check_pair(
        x, y, dtype=dtype, min_rows=4, why="the unbiased HSIC of Song et al. 2012 divides by n(n-3)"
    )
    return _cknna_combine(
        _cknna_prepare(x, k=k, chunk_size=chunk_size),
        _cknna_prepare(y, k=k, chunk_size=chunk_size),
        k=k,
        chunk_size=chunk_size,
    )
