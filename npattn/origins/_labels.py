"""Class-label checks shared by the origins family's losses (RA-CNN, RAM)."""
from __future__ import annotations

import numpy as np

import autograd as ag


def check_labels(mechanism: str, labels, *, batch: int, classes: int):
    """Integer class ids (N,) in [0, classes) as a backend array.

    A negative id would index from the end and an id >= classes would raise deep inside NumPy, so both are
    a ValueError naming the mechanism and the range; a non-integer dtype is a TypeError.
    """
    data = labels.data if isinstance(labels, ag.Tensor) else labels
    if not hasattr(data, "dtype") or np.dtype(data.dtype).kind not in "iu":
        received = getattr(data, "dtype", type(data).__name__)
        raise TypeError(f"{mechanism}: labels must be integer class ids of shape ({batch},), got {received}")
    if tuple(data.shape) != (batch,):
        raise ValueError(f"{mechanism}: labels must have shape ({batch},) (one class id per sample), "
                         f"got {tuple(data.shape)}")
    if data.size:
        low, high = int(ag.xp.min(data)), int(ag.xp.max(data))
        if low < 0 or high >= classes:
            raise ValueError(f"{mechanism}: labels must be class ids in [0, {classes}) ({classes} classes), "
                             f"got values from {low} to {high}")
    return data
