"""Keep fairseq checkpoints loadable under torch's safe (``weights_only``) unpickler.

torch >= 2.6 loads with ``weights_only=True`` by default: only tensors, plain
containers and allow-listed classes can be rebuilt, so a malicious checkpoint
cannot run code. fairseq's ``load_checkpoint_to_cpu`` relies on that default.
Checkpoints written by fairseq-fixed + this plugin hold only plain data, but two
harmless kinds of object are common in fairseq checkpoints from elsewhere and
would be refused: the legacy ``args`` ``argparse.Namespace`` (fairseq < 0.10
style checkpoints, also written by some forks) and numpy scalars / dtypes
(metrics and best-validation values logged from numpy). We allow-list exactly
those; we never switch the safe loader off (no ``weights_only=False``, no
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


SAFE_GLOBALS = [argparse.Namespace, *_numpy_globals()]

if hasattr(torch.serialization, "add_safe_globals"):
    torch.serialization.add_safe_globals(SAFE_GLOBALS)
