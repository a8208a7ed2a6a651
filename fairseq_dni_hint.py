"""Name the missing plugin when a fairseq tool meets a fairseq-dni checkpoint without it.

Installed with the package as ``fairseq_dni_hint.pth``, which imports this module in every
Python process of the environment; at start-up it only wraps ``sys.excepthook`` and imports
nothing else. When an uncaught exception ends a process that never imported ``fairseq_dni``,
the hook looks in the traceback for the checkpoint fairseq was loading when it failed (the
``path`` / ``filename`` argument of the functions in ``fairseq.checkpoint_utils``), so every way
of naming it is covered: ``--path CKPT``, ``--path=CKPT``, fairseq-generate's ensembles
``--path A:B``, ``--restore-file``, a Hydra override, ``from_pretrained`` in a script. It reads that file's
configuration with torch's safe loader and the plugin's own allow-list
(``fairseq_dni.checkpoint_safety``: fairseq's ``sgd`` optimizer, for one, stores its config as
an ``argparse.Namespace``) and, if the checkpoint was trained with this plugin, prints one line
after the usual traceback saying to add ``--user-dir fairseq_dni``. Without the plugin fairseq's
own error is misleading: ``KeyError: "'_name'"``, or torch's ``Unsupported global: GLOBAL
argparse.Namespace`` (which suggests ``weights_only=False``: not needed, and unsafe).
"""
import os
import sys


def failing_checkpoints(exc):
    """Checkpoint paths being loaded by ``fairseq.checkpoint_utils`` when ``exc`` was raised,
    innermost first (also through the exception's ``__cause__`` / ``__context__`` chain)."""
    paths, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        frames, tb = [], exc.__traceback__
        while tb is not None:
            frames.append(tb.tb_frame)
            tb = tb.tb_next
        for frame in reversed(frames):
            if frame.f_globals.get("__name__") != "fairseq.checkpoint_utils":
                continue
            for name in ("path", "filename"):
                value = frame.f_locals.get(name)
                if isinstance(value, str) and os.path.isfile(value) and value not in paths:
                    paths.append(value)
        exc = exc.__cause__ or exc.__context__
    return paths


def _name(node, key="_name"):
    """``node[key]`` for a dict (a dataclass config) or an attribute of an argparse.Namespace
    (the config of a component fairseq still registers without a dataclass, e.g. ``sgd``)."""
    if isinstance(node, dict):
        return node.get(key)
    return getattr(node, key, None)


def plugin_components(path):
    """``(task, arch)`` if the checkpoint at ``path`` was trained with fairseq-dni, else None.
    Read as the plugin reads it: torch's safe loader with the plugin's allow-list."""
    import torch

    import fairseq_dni.checkpoint_safety  # noqa: F401  (the allow-list fairseq's loader would get)

    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # tensors stay on disk
    cfg = state.get("cfg")
    if cfg:
        task, arch = _name(cfg.get("task")), _name(cfg.get("model"))
    else:  # a legacy checkpoint: one argparse.Namespace of flags
        task, arch = _name(state.get("args"), "task"), _name(state.get("args"), "arch")
    task, arch = str(task or ""), str(arch or "")
    if task.startswith("dni_") or arch.startswith("dni_"):
        return task, arch
    return None


def diagnose(exc):
    """The hint line for an exception that ends the process, or None."""
    if "fairseq_dni" in sys.modules:  # the plugin was loaded: not our case
        return None
    for path in failing_checkpoints(exc):
        found = plugin_components(path)
        if found:
            return (f"fairseq-dni: {path} was trained with the fairseq-dni plugin (task {found[0]}, "
                    f"arch {found[1]}); load the plugin with --user-dir fairseq_dni")
    return None


def _excepthook(exc_type, exc, tb, _previous=sys.excepthook):
    try:
        hint = diagnose(exc)
    except Exception:  # the hint must never hide the real error
        hint = None
    _previous(exc_type, exc, tb)
    if hint:
        print(hint, file=sys.stderr)


def install():
    if getattr(sys.excepthook, "__name__", "") != "_excepthook":
        sys.excepthook = _excepthook
