from fairseq_dni.models import dni_lstm_lm  # noqa: F401
