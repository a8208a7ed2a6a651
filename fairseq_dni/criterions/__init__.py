from fairseq_dni.criterions import dni_cross_entropy  # noqa: F401
