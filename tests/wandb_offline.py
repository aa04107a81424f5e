"""Reads an offline W&B run back: the .wandb file is a LevelDB-style log of protobuf records."""

import struct
from pathlib import Path

BLOCK = 32768
HEADER = 7  # magic ":W&B" + version, then blocks of records


def wandb_records(run_dir: Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = Path(run_dir).glob("wandb/offline-run-*/run-*.wandb")
    raw = path.read_bytes()
    assert raw[:4] == b":W&B", path
    pos, pending, out = HEADER, b"", []
    while pos + 7 <= len(raw):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        data = raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:  # full
            out.append(data)
        elif kind == 2:  # first
            pending = data
        elif kind == 3:  # middle
            pending += data
        elif kind == 4:  # last
            out.append(pending + data)
    records = []
    for data in out:
        rec = pb.Record()
        rec.ParseFromString(data)
        records.append(rec)
    return records


def history(records) -> list[dict]:
    return [{i.key or "/".join(i.nested_key): i.value_json for i in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"]
