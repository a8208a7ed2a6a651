from fairseq_dni.data.stream_windows import StreamWindows  # noqa: F401
