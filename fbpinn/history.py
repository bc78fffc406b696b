"""The training history: what a run records at each evaluation step, defined once.

The trainer fills it (:func:`empty`, :func:`record`), checkpoints store it in ``/history`` and
results files in ``/training``, both through :func:`write`, and the results reader checks it
against :func:`schema`.  One row per evaluation step (E rows):

- ``step``: the step after which the row was taken;
- ``loss``: the training loss of that step; ``loss_terms``: each term's part of it (E, T), the
  term names in the dataset's ``names`` attribute;
- ``rel_l2``: the relative L2 error of all fields on the test grid (NaN without a target);
  ``rel_l2_fields``: the error of each field (E, F), only for problems of several fields;
- ``time``: training seconds so far, across resumed segments; ``lr``: the learning rate;
  ``stage``: the index of the schedule stage.

Besides the rows, ``loss_per_step`` holds the loss of every step (S values).
"""

from __future__ import annotations

import numpy as np

# (name, dtype, dimensions): the rows recorded at every evaluation step, in this order.
FIELDS = (
    ("step", np.int64, ("E",)),
    ("loss", np.float64, ("E",)),
    ("loss_terms", np.float64, ("E", "T")),
    ("rel_l2", np.float64, ("E",)),
    ("time", np.float64, ("E",)),
    ("lr", np.float64, ("E",)),
    ("stage", np.int64, ("E",)),
)
PER_FIELD = ("rel_l2_fields", np.float64, ("E", "F"))  # recorded for problems of several fields only
PER_STEP = ("loss_per_step", np.float64, ("S",))
NAMED = {"loss_terms": "T", "rel_l2_fields": "F"}  # datasets whose columns are named in a "names" attribute
REQUIRED = ("step", "loss", "rel_l2")  # in every results file; the others are absent from the oldest ones


def empty(n_fields: int) -> dict:
    """A history with no rows, for a problem of ``n_fields`` fields."""
    return {name: [] for name, *_ in (*FIELDS, *([PER_FIELD] if n_fields > 1 else []))}


def record(history: dict, step: int, loss: float, terms, errors, time: float, lr: float, stage: int) -> None:
    """Append one row: ``terms`` the loss terms' values, ``errors`` the error of all fields
    then of each field (:meth:`fbpinn.trainer.Trainer.evaluate`)."""
    row = {"step": step, "loss": loss, "loss_terms": [float(v) for v in terms], "rel_l2": float(errors[0]),
           "time": time, "lr": lr, "stage": stage}
    for name, value in row.items():
        history[name].append(value)
    if PER_FIELD[0] in history:
        history[PER_FIELD[0]].append([float(e) for e in errors[1:]])


def copy(history: dict) -> dict:
    """A copy whose lists (and rows of lists) may be appended to independently."""
    return {k: [list(r) if isinstance(r, (list, tuple, np.ndarray)) else r for r in v] for k, v in history.items()}


def write(group, history: dict, loss_per_step, term_names, fields) -> None:
    """Write ``history`` and ``loss_per_step`` as datasets of the h5py ``group``; ``term_names``
    and ``fields`` name the columns of ``loss_terms`` and ``rel_l2_fields``."""
    n = len(history["step"])
    names = {"T": list(term_names), "F": list(fields)}
    for name, dtype, dims in (*FIELDS, PER_FIELD):
        if name == PER_FIELD[0] and name not in history:
            continue
        values = history.get(name, [0] * n if name == "stage" else None)  # histories without stages: one stage
        array = np.asarray(values, dtype=dtype)
        if len(dims) == 2:
            array = array.reshape(n, len(names[dims[1]]))
        group[name] = array
        if name in NAMED:
            group[name].attrs["names"] = ",".join(names[NAMED[name]])
    group[PER_STEP[0]] = np.asarray(loss_per_step, dtype=PER_STEP[1])


def read(arrays: dict) -> tuple[dict, list]:
    """``(history, loss_per_step)`` as lists from a mapping name -> array of what :func:`write` wrote."""
    history = {name: np.asarray(arrays[name]).tolist() for name, *_ in (*FIELDS, PER_FIELD) if name in arrays}
    return history, np.asarray(arrays[PER_STEP[0]]).tolist()


def schema(group: str) -> list:
    """The entries of a results file's reader schema (see :data:`fbpinn.io._SCHEMA`) for the history
    stored in ``group``."""
    kind = {np.int64: "int", np.float64: "real"}
    out = []
    for name, dtype, dims in (*FIELDS, PER_FIELD, PER_STEP):
        out.append((f"{group}/{name}", kind[dtype], dims, name in REQUIRED))
        if name in NAMED:
            out.append((f"{group}/{name}@names", "str", (), False))
    return out
