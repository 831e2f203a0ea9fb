"""Safe reader for Perceiver AR's `checkpoint.dill` (google-research/perceiver-ar).

The experiment saves `dill.dump({'global_step', 'params', 'state',
'opt_state'})`. `params` is `{module: {name: numpy array}}`; `opt_state`
holds optax's state namedtuples, which dill stores *by value* through
`dill._dill._create_namedtuple(name, fields, module)`. This reader knows
only numpy's array reconstruction (shared with `deepmind_checkpoint`) and
that namedtuple factory, replaced by a plain `collections.namedtuple`; any
other global is refused by name before it runs. Neither dill, optax, Haiku
nor JAX is needed.
"""

import collections
import keyword
import os

from perceiver_keras.utils.deepmind_checkpoint import _ALLOWED
from perceiver_keras.utils.deepmind_checkpoint import UnsafeCheckpointError
from perceiver_keras.utils.deepmind_checkpoint import _CheckpointUnpickler
from perceiver_keras.utils.deepmind_checkpoint import _flatten
from perceiver_keras.utils.deepmind_checkpoint import _unpickle

__all__ = ["load_perceiver_ar_checkpoint"]


def _is_name(value):
    return (isinstance(value, str) and value.isidentifier()
            and not keyword.iskeyword(value))


def _create_namedtuple(name, fieldnames, modulename, defaults=None):
    # dill's by-value namedtuple: a class with these fields, nothing more.
    if not _is_name(name) or not isinstance(modulename, str):
        raise UnsafeCheckpointError(
            f"namedtuple expects an identifier and a module name, got "
            f"{name!r}, {modulename!r}"
        )
    if not isinstance(fieldnames, (tuple, list)) or not all(
        _is_name(f) for f in fieldnames
    ):
        raise UnsafeCheckpointError(
            f"namedtuple {name} expects identifier field names, got "
            f"{fieldnames!r}"
        )
    if defaults is not None and not isinstance(defaults, tuple):
        raise UnsafeCheckpointError(
            f"namedtuple {name} defaults must be a tuple, got "
            f"{type(defaults).__name__}"
        )
    return collections.namedtuple(
        name, fieldnames, defaults=defaults, module=modulename
    )


_AR_ALLOWED = dict(_ALLOWED)
_AR_ALLOWED[("dill._dill", "_create_namedtuple")] = _create_namedtuple


class _DillUnpickler(_CheckpointUnpickler):
    allowed = _AR_ALLOWED
    holds = (
        "a Perceiver AR checkpoint holds only numpy arrays, plain containers "
        "and dill's by-value namedtuples"
    )


def load_perceiver_ar_checkpoint(path):
    """Read `checkpoint.dill` without running code from it.

    Returns:
        `(params, global_step)`: `params` maps `"<haiku module>/<name>"` to
        numpy arrays. The optimizer state is read (and checked to be plain
        data) but not returned.

    Raises:
        FileNotFoundError, UnsafeCheckpointError (a global outside the
        allow-list), pickle.UnpicklingError (not a readable pickle),
        ValueError (not the experiment's checkpoint layout).
    """
    path = os.fspath(path)
    tree = _unpickle(path, _DillUnpickler, "Perceiver AR checkpoint")
    if not isinstance(tree, dict) or "params" not in tree:
        found = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
        raise ValueError(
            f"{path}: expected a dict with 'params' (and 'global_step', "
            f"'state', 'opt_state'), found {found}"
        )
    params = _flatten(tree["params"], path, "params")
    return params, tree.get("global_step")
