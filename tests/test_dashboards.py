"""fairseq's own --tensorboard-logdir carries the DNI diagnostics: no logging code of ours.

A short alternating run writes TensorBoard event files (through tensorboardX, which fairseq falls back
to when the ``tensorboard`` package is absent); read back with a TFRecord reader written here and
tensorboardX's protobuf classes, they hold ``loss``, ``ppl``, ``lr``, ``dni_cos`` and ``dni_synthetic``
per update, equal to the json log's records; the log has no "install tensorboard(X)" line.
"""
import struct

import pytest

from helpers import fairseq, train_args, train_inner

PERIOD, UPDATES = 10, 20
ALTERNATING = ["--criterion", "dni_cross_entropy", "--optimizer", "alternating", "--base-optimizer", "adam",
               "--dni-lr", "0.003", "--lr-scheduler", "cosine_alternating", "--lr-period-updates", str(PERIOD),
               "--max-update", str(UPDATES)]


def read_events(path):
    """The Event records of one TFRecord file (8-byte length, 4-byte length CRC, data, 4-byte data CRC)."""
    from tensorboardX.proto import event_pb2

    data, events, at = path.read_bytes(), [], 0
    while at < len(data):
        (length,) = struct.unpack("<Q", data[at:at + 8])
        event = event_pb2.Event()
        event.ParseFromString(data[at + 12:at + 12 + length])
        events.append(event)
        at += 12 + length + 4
    return events


def scalars(folder):
    """{tag: {step: value}} of every event file in ``folder``."""
    out = {}
    for path in folder.glob("events.out.tfevents.*"):
        for event in read_events(path):
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    out.setdefault(value.tag, {})[event.step] = value.simple_value
    return out


def test_tensorboard_logdir_holds_the_dni_curves(tiny_data, tmp_path):
    pytest.importorskip("tensorboardX")
    out = fairseq("fairseq-train", *train_args(tiny_data, tmp_path / "ckpt", *ALTERNATING,
                                               "--tensorboard-logdir", tmp_path / "tb"))
    assert "install tensorboard" not in out.lower() and "tensorboard not found" not in out
    logged = {int(r["num_updates"]): r for r in train_inner(out)}
    assert sorted(logged) == list(range(1, UPDATES + 1))
    curves = scalars(tmp_path / "tb" / "train_inner")
    for tag in ("loss", "ppl", "lr", "dni_cos", "dni_synthetic"):
        assert set(curves[tag]) <= set(logged), tag
        for step, value in curves[tag].items():
            # the json log prints 6 significant digits ("{:g}"), the event file a float32
            assert value == pytest.approx(float(logged[step][tag]), rel=1e-5), (tag, step)
    assert sorted(curves["loss"]) == list(range(1, UPDATES + 1))
    # cycle 1 synthetic, cycle 2 real: the mode is a curve
    assert [curves["dni_synthetic"][s] for s in range(1, UPDATES + 1)] == [1.0] * PERIOD + [0.0] * PERIOD
    valid = scalars(tmp_path / "tb" / "valid")
    assert {"loss", "ppl"} <= set(valid)
