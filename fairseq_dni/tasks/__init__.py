from fairseq_dni.tasks import dni_language_modeling  # noqa: F401
