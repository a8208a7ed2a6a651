"""Name the missing plugin when a fairseq tool meets a fairseq-dni checkpoint without it.

Installed with the package as ``fairseq_dni_hint.pth``, which imports this module in every
Python process of the environment; it only wraps ``sys.excepthook`` and imports nothing else.
When an uncaught exception ends a process that never imported ``fairseq_dni`` and whose
command line has ``--path CHECKPOINT``, it reads that checkpoint's configuration (with torch's
safe loader) and, if the checkpoint was trained with this plugin, prints one line saying to
add ``--user-dir fairseq_dni``, before the usual traceback (fairseq's own error there is a
misleading ``KeyError: "'_name'"``).
"""
import os
import sys


def diagnose(argv=None):
    """The hint line for this command line, or None."""
    argv = sys.argv if argv is None else argv
    if "fairseq_dni" in sys.modules or "--path" not in argv[:-1]:
        return None
    path = argv[argv.index("--path") + 1].split(os.pathsep)[0]
    if not os.path.isfile(path):
        return None
    import torch

    cfg = torch.load(path, map_location="cpu", weights_only=True).get("cfg") or {}
    task = (cfg.get("task") or {}).get("_name", "")
    arch = (cfg.get("model") or {}).get("_name", "")
    if str(task).startswith("dni_") or str(arch).startswith("dni_"):
        return (f"fairseq-dni: {path} was trained with the fairseq-dni plugin (task {task}, arch {arch}); "
                f"load the plugin with --user-dir fairseq_dni")
    return None


def _excepthook(exc_type, exc, tb, _previous=sys.excepthook):
    try:
        hint = diagnose()
    except Exception:  # the hint must never hide the real error
        hint = None
    if hint:
        print(hint, file=sys.stderr)
    _previous(exc_type, exc, tb)


def install():
    if getattr(sys.excepthook, "__name__", "") != "_excepthook":
        sys.excepthook = _excepthook
