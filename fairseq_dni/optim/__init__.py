from fairseq_dni.optim import alternating  # noqa: F401
from fairseq_dni.optim.lr_scheduler import cosine_alternating  # noqa: F401
