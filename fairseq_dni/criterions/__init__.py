from fairseq_dni.criterions import dni_cross_entropy, lm_cross_entropy  # noqa: F401
