"""Canonical correlation analysis and its SVCCA / PWCCA variants.

All three reduce each layer to an orthonormal basis of its centered column
space; the canonical correlations of a pair are the singular values of
``Qxᵀ Qy`` (Björck & Golub 1973), i.e. the cosines of the principal angles
between the two subspaces.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from repalign._numerics import center, check_pair
from repalign.metrics._registry import register_metric


@dataclass
class CCAState:
    """A layer's centered features, an orthonormal basis of their span, and its rank."""

    xc: torch.Tensor  # (n, d) centered
    q: torch.Tensor  # (n, r) orthonormal basis of the column space (or of the SVCCA-kept part)

    @property
    def rank(self) -> int:
        return int(self.q.shape[1])

    @property
    def units(self) -> int:
        return int(self.xc.shape[1])


def rounding_floor(x: torch.Tensor) -> torch.Tensor:
    """The size of ``x``'s own rounding: ``eps · ‖x‖_F``, with the eps of the precision its
    values carry (float32's when every value is a float32 number, as the rows of a feature
    file are, even after conversion to float64). Singular directions of the centered rows
    below it are rounding noise, not structure."""
    eps = torch.finfo(x.dtype).eps
    if x.dtype == torch.float64 and all(  # by row blocks: no full-size temporary copy
        torch.equal(block.float().double(), block) for block in x.split(8192)
    ):
        eps = torch.finfo(torch.float32).eps
    return eps * torch.linalg.norm(x)


def _orthonormal_basis(
    xc: torch.Tensor, floor: torch.Tensor | float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left singular vectors and singular values of ``xc`` above the rank tolerance:
    NumPy's (``s_max · max(n, d) · eps``) or ``floor``, whichever is larger."""
    u, s, _ = torch.linalg.svd(xc, full_matrices=False)
    tol = torch.maximum(
        s.max() * max(xc.shape) * torch.finfo(xc.dtype).eps,
        torch.as_tensor(floor, dtype=s.dtype, device=s.device),
    )
    r = int((s > tol).sum())
    return u[:, :r], s[:r]


def _cca_prepare(x: torch.Tensor) -> CCAState:
    xc = center(x)
    q, _ = _orthonormal_basis(xc, rounding_floor(x))
    return CCAState(xc, q)


def _cca_permute(state: CCAState, perm: torch.Tensor) -> CCAState:
    """The state of ``x[perm]``: reordering rows reorders the rows of the basis too."""
    return CCAState(state.xc[perm], state.q[perm])


def _basis_permute(state: CCAState, perm: torch.Tensor) -> CCAState:
    """:func:`_cca_permute` for metrics that read only the basis (cca, svcca): the centered
    rows, an n x d copy per draw, are kept in their order (only their width is read)."""
    return CCAState(state.xc, state.q[perm])


def _canonical(a: CCAState, b: CCAState) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Canonical correlations (descending, min(ra, rb) of them) and the rotations U, V."""
    m = a.q.T @ b.q
    u, rho, vh = torch.linalg.svd(m, full_matrices=False)
    # cosines of principal angles: exactly <= 1, rounding can exceed it by an ulp
    return rho.clamp(max=1.0), u, vh.T


def _cca_combine(a: CCAState, b: CCAState, **_: object) -> torch.Tensor:
    rho, _, _ = _canonical(a, b)
    return rho.mean()


@register_metric(
    bounds=(0.0, 1.0),
    invariances=("orthogonal", "isotropic_scaling", "translation", "invertible_linear"),
    reference="Hotelling 1936, Relations between two sets of variates, Biometrika",
    prepare=_cca_prepare,
    combine=_cca_combine,
    permute=_basis_permute,
)
def cca(x: torch.Tensor, y: torch.Tensor, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    r"""Mean canonical correlation of centered ``x (n, d1)`` and ``y (n, d2)``.

    .. math:: \bar\rho = \frac{1}{r}\sum_{i=1}^{r} \sigma_i(Q_x^\top Q_y),\quad r = \min(\mathrm{rank}\,x, \mathrm{rank}\,y)

    with Q_x, Q_y orthonormal bases (rank-revealing SVD) of the centered inputs.
    The rank tolerance is NumPy's (``s_max · max(n, d) · eps``) or the rows' own
    rounding level (:func:`rounding_floor`: ``eps · ‖x‖_F`` with float32's eps when
    the values are float32 numbers, as a feature file's are), whichever is larger:
    a low-rank layer stored in float32 is scored on its real directions, not on its
    rounding noise as well. Invariant to any invertible linear map of either input.
    When rank x + rank y >= n - 1 the canonical correlations are trivially 1:
    use more samples than dimensions, or :func:`svcca`.

    Reference: Hotelling (1936); Raghu et al. (2017) for its use on networks.
    """
    x, y = check_pair(x, y, dtype=dtype, min_rows=2)
    return _cca_combine(_cca_prepare(x), _cca_prepare(y))


def _check_keep(keep: float | int) -> None:
    if isinstance(keep, bool) or not isinstance(keep, (int, float)):
        raise TypeError(f"keep must be a float in (0, 1] or a positive int, got {keep!r}")
    if isinstance(keep, float) and not 0.0 < keep <= 1.0:
        raise ValueError(f"keep as a float is a fraction of variance in (0, 1], got {keep}")
    if isinstance(keep, int) and keep < 1:
        raise ValueError(f"keep as an int is a number of SVD directions >= 1, got {keep}")


def _svcca_prepare(x: torch.Tensor, *, keep: float | int = 0.99) -> CCAState:
    _check_keep(keep)
    xc = center(x)
    q, s = _orthonormal_basis(xc, rounding_floor(x))
    if isinstance(keep, float):
        explained = torch.cumsum(s * s, 0) / (s * s).sum()
        # the smallest count whose explained variance reaches `keep` (rounding-tolerant)
        count = int((explained < keep - 1e-12).sum()) + 1
    else:
        if keep > q.shape[1]:
            raise ValueError(
                f"keep={keep} SVD directions asked for, but the layer has rank {q.shape[1]} "
                f"(shape {tuple(x.shape)}); use keep <= {q.shape[1]} or a variance fraction"
            )
        count = keep
    return CCAState(xc, q[:, : min(count, q.shape[1])])


@register_metric(
    bounds=(0.0, 1.0),
    invariances=("orthogonal", "isotropic_scaling", "translation"),
    reference="Raghu et al. 2017, SVCCA: Singular Vector Canonical Correlation Analysis, NeurIPS",
    prepare=_svcca_prepare,
    combine=_cca_combine,
    permute=_basis_permute,
    # duplicated rows shrink the spread of singular values, so `keep` selects other directions
    duplicates_ok=False,
)
def svcca(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    keep: float | int = 0.99,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    r"""SVCCA: CCA between the top singular directions of each centered input.

    Each side keeps its top-k left singular vectors: with ``keep`` a float,
    the smallest k whose explained variance Σ_{i<=k} s_i² / Σ s_i² reaches
    ``keep``; with ``keep`` an int, exactly k. The score is the mean canonical
    correlation (see :func:`cca`) of the kept subspaces.

    Reference: Raghu, Gilmer, Yosinski, Sohl-Dickstein (2017), NeurIPS.
    """
    _check_keep(keep)
    x, y = check_pair(x, y, dtype=dtype, min_rows=2)
    return _cca_combine(_svcca_prepare(x, keep=keep), _svcca_prepare(y, keep=keep))


def _pwcca_combine(a: CCAState, b: CCAState, **_: object) -> torch.Tensor:
    rho, u, v = _canonical(a, b)
    # canonical variates (unit norm, n x r) of the side with fewer units (x on a tie)
    side, rot = (a, u) if a.units <= b.units else (b, v)
    h = side.q @ rot
    alpha = (h.T @ side.xc).abs().sum(dim=1)
    return (alpha * rho).sum() / alpha.sum()


@register_metric(
    bounds=(0.0, 1.0),
    invariances=("isotropic_scaling", "translation", "permutation"),
    reference="Morcos, Raghu, Bengio 2018, Insights on representational similarity in neural networks with canonical correlation, NeurIPS",
    prepare=_cca_prepare,
    combine=_pwcca_combine,
    permute=_cca_permute,
    symmetric=False,
)
def pwcca(x: torch.Tensor, y: torch.Tensor, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    r"""Projection-weighted CCA (Morcos et al. 2018).

    .. math:: \mathrm{PWCCA} = \frac{\sum_i \alpha_i \rho_i}{\sum_i \alpha_i},\qquad
              \alpha_i = \sum_j |\langle h_i, u_j\rangle|

    on the side with fewer units (x on a tie): ``h_i`` its unit-norm canonical
    variates, ``u_j`` its centered units (columns). Weights favour the
    canonical directions that account for more of that side's units.
    Not symmetric when the widths differ.

    Reference: Morcos, Raghu, Bengio (2018), NeurIPS.
    """
    x, y = check_pair(x, y, dtype=dtype, min_rows=2)
    return _pwcca_combine(_cca_prepare(x), _cca_prepare(y))
