"""Case-level failure detection: the area under the risk-coverage curve (AURC).

A case score ranks cases from most to least trusted; a user who keeps the ``k`` most trusted cases of ``n``
(coverage ``k / n``) bears their mean risk (here ``1 - Dice``). AURC averages that selective risk over the
coverages ``1 / n, ..., 1``: lower is better, and a score that ranks cases in the order of their true risk
reaches the minimum for those risks. This is the case-level measure of Jaeger et al. (ICLR 2023) and of the
nnU-Net failure-detection benchmark of Zenk et al. (MedIA 2025).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def aurc(uncertainty: Sequence[float], risk: Sequence[float]) -> float:
    """AURC of cases ranked by ``uncertainty`` (ascending: most trusted first) against their ``risk``.

    Ties in ``uncertainty`` are broken by the mean risk of the tied cases (each tied case counts with the group's
    mean), so the result does not depend on the input order. Pairs with a non-finite value are dropped; NaN when
    none is left.
    """
    u, r = np.asarray(uncertainty, dtype=np.float64), np.asarray(risk, dtype=np.float64)
    if u.shape != r.shape:
        raise ValueError(f"uncertainty and risk need the same length, got {u.shape} and {r.shape}")
    keep = np.isfinite(u) & np.isfinite(r)
    u, r = u[keep], r[keep]
    if u.size == 0:
        return float("nan")
    values, group = np.unique(u, return_inverse=True)
    tied_mean = (np.bincount(group, weights=r) / np.bincount(group))[group]
    order = np.argsort(u, kind="stable")
    selective_risk = np.cumsum(tied_mean[order]) / np.arange(1, u.size + 1)
    return float(selective_risk.mean())
