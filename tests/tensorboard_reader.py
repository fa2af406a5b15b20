"""Read scalar summaries back from TensorBoard event files (independently of the writer)."""

import pathlib
import struct

from tensorboardX.proto import event_pb2


def scalars(logdir) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value), ...]} from every events file under ``logdir`` (TFRecord framing)."""
  out: dict[str, list[tuple[int, float]]] = {}
  for path in sorted(pathlib.Path(logdir).glob("events.out.tfevents.*")):
    raw = path.read_bytes()
    pos = 0
    while pos < len(raw):
      (length,) = struct.unpack("<Q", raw[pos:pos + 8])
      record = raw[pos + 12:pos + 12 + length]   # skip length + its crc; data; then data crc
      pos += 12 + length + 4
      event = event_pb2.Event.FromString(record)
      for value in event.summary.value:
        out.setdefault(value.tag, []).append((event.step, value.simple_value))
  return out
