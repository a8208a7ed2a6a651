"""Errors in what the user gave us (flags, data, schedules): one line, no traceback.

Importing the plugin wraps ``sys.excepthook`` so that an uncaught :class:`DNIUserError` prints
``fairseq-dni: error: <message>`` and nothing else (exit status 1); any other exception keeps
its traceback. Raised before anything is written, so no checkpoint is overwritten.
"""
import sys


class DNIUserError(ValueError):
    """Bad input: an impossible setting, data that does not fit, a wrong combination."""


class DNIDataNotFound(DNIUserError, FileNotFoundError):
    """A data directory, dictionary or split that is not there."""


def _excepthook(exc_type, exc, tb, _previous=None):
    if isinstance(exc, DNIUserError):
        print(f"fairseq-dni: error: {exc}", file=sys.stderr)
        return
    (_previous or sys.__excepthook__)(exc_type, exc, tb)


def install_excepthook():
    previous = sys.excepthook
    if getattr(previous, "__name__", "") == "_dni_user_error_hook":
        return

    def _dni_user_error_hook(exc_type, exc, tb):
        _excepthook(exc_type, exc, tb, previous)

    sys.excepthook = _dni_user_error_hook
