"""Keep fairseq checkpoints loadable under torch's safe (``weights_only``) unpickler.

torch >= 2.6 loads with ``weights_only=True`` by default: only tensors, plain
containers and allow-listed classes can be rebuilt, so a malicious checkpoint
cannot run code. fairseq's ``load_checkpoint_to_cpu`` relies on that default.
Checkpoints written by fairseq-fixed + this plugin hold only plain data, but two
harmless kinds of object are common in fairseq checkpoints from elsewhere and
would be refused: the legacy ``args`` ``argparse.Namespace`` (fairseq < 0.10
style checkpoints, also written by some forks) and numpy scalars / dtypes
(metrics and best-validation values logged from numpy). We allow-list exactly
those, plus the plain-data classes of omegaconf's DictConfig: fairseq's multi-GPU resume loads
the checkpoint on rank 0 and sends it to the other ranks with torch.save/torch.load, cfg
included as a DictConfig and tensors replaced by fairseq's ``_TensorPlaceholder``, which the
safe loader would refuse (every rank but 0 then dies).
We never switch the safe loader off (no ``weights_only=False``, no
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``), so every other global is still refused.
"""
import argparse

import numpy as np
import torch


def _numpy_globals():
    found = []
    try:  # numpy >= 1.25 / 2.x location; the pickles name numpy.core.multiarray.scalar
        from numpy._core.multiarray import scalar
    except ImportError:  # pragma: no cover - older numpy
        from numpy.core.multiarray import scalar
    found.append(scalar)
    found.append(np.dtype)
    # numpy >= 1.25 pickles dtypes through their concrete dtype classes
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        for name in ("Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType", "BoolDType"):
            if hasattr(dtypes, name):
                found.append(getattr(dtypes, name))
    return found


def _omegaconf_globals():
    import collections
    import typing

    from omegaconf import base, dictconfig, listconfig, nodes

    node_types = [getattr(nodes, name) for name in (
        "AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "EnumNode", "BytesNode", "PathNode")
        if hasattr(nodes, name)]
    return [dictconfig.DictConfig, listconfig.ListConfig, base.ContainerMetadata, base.Metadata, *node_types,
            typing.Any, collections.defaultdict, dict, list, int]


def _fairseq_globals():
    # the stand-in fairseq's broadcast_object leaves where tensors travel separately
    from fairseq.distributed.utils import _TensorPlaceholder

    return [_TensorPlaceholder]


SAFE_GLOBALS = [argparse.Namespace, *_numpy_globals(), *_omegaconf_globals(), *_fairseq_globals()]

if hasattr(torch.serialization, "add_safe_globals"):
    torch.serialization.add_safe_globals(SAFE_GLOBALS)
