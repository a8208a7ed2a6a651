"""fairseq-dni: LSTM language models trained with alternating synthetic and real gradients.

Load with ``--user-dir fairseq_dni`` (a path to this folder, or just ``fairseq_dni``
when the package is installed next to fairseq). Importing the package registers
its task, models, criterion, optimizer and scheduler with fairseq and makes fairseq
checkpoints loadable under torch's safe ``weights_only`` unpickler.

Without fairseq installed, the torch-only parts still import on their own:
``fairseq_dni.dni`` (the DNI maths), ``fairseq_dni.synthesizers``,
``fairseq_dni.carried_state``, ``fairseq_dni.data.stream_windows`` and ``fairseq_dni.modules``
(AWD-LSTM's regularisers).
"""
import importlib.util

__version__ = "0.1.0"

if importlib.util.find_spec("fairseq") is not None:
    from fairseq_dni import checkpoint_safety  # noqa: F401  (allow-list for torch.load)
    from fairseq_dni import criterions, models, optim, tasks  # noqa: F401  (registration)
    from fairseq_dni.errors import install_excepthook

    install_excepthook()  # our input errors: one line, no traceback
