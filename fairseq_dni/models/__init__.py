from fairseq_dni.models import dni_lstm_lm, dni_qrnn_lm  # noqa: F401
