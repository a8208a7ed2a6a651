"""Errors in what the user gave us (flags, data, schedules): one line, no traceback.

Importing the plugin wraps ``sys.excepthook`` so that an uncaught :class:`DNIUserError` prints
``fairseq-dni: error: <message>`` and nothing else (exit status 1); any other exception keeps
its traceback. Under ``fairseq-hydra-train``, Hydra catches the exception before the hook: as a
Hydra ``CompactHydraException`` it prints the message alone, after Hydra's own line
``Error executing job with overrides: [...]`` (exit status 1). Raised before anything is written,
so no checkpoint is overwritten.
"""
import sys

try:  # fairseq depends on hydra-core; the torch-only modules (dni.py, synthesizers) never import this one
    from hydra.errors import CompactHydraException
except ImportError:  # pragma: no cover
    CompactHydraException = Exception


class DNIUserError(ValueError, CompactHydraException):
    """Bad input: an impossible setting, data that does not fit, a wrong combination."""


class DNIDataNotFound(DNIUserError, FileNotFoundError):
    """A data directory, dictionary or split that is not there."""


def stock_model_on_our_task(exc) -> str:
    """The one-line explanation when a stock fairseq model's config reads a field of fairseq's
    ``language_modeling`` task that ``dni_language_modeling`` does not have (e.g. ``--arch
    transformer_lm``: ``task.max_target_positions``), else ''. fairseq resolves the whole config before
    any model is built, so our task's own refusal of stock models cannot run first."""
    text = str(exc)
    if type(exc).__name__ != "InterpolationKeyError" or "Interpolation key 'task." not in text:
        return ""
    key = text.split("Interpolation key '", 1)[1].split("'", 1)[0]
    owner = text.split("object_type=", 1)[1].split()[0] if "object_type=" in text else "the model's config"
    return (f"{owner} reads {key}, which --task dni_language_modeling does not have: that task trains fairseq-dni's "
            f"models (--arch dni_lstm_lm, dni_lstm_lm_small, ...); for a stock fairseq model use --task "
            f"language_modeling")


def _excepthook(exc_type, exc, tb, _previous=None):
    if isinstance(exc, DNIUserError):
        print(f"fairseq-dni: error: {exc}", file=sys.stderr)
        return
    line = stock_model_on_our_task(exc)
    if line:
        print(f"fairseq-dni: error: {line}", file=sys.stderr)
        return
    (_previous or sys.__excepthook__)(exc_type, exc, tb)


def install_excepthook():
    previous = sys.excepthook
    if getattr(previous, "__name__", "") == "_dni_user_error_hook":
        return

    def _dni_user_error_hook(exc_type, exc, tb):
        _excepthook(exc_type, exc, tb, previous)

    sys.excepthook = _dni_user_error_hook
