"""TFRecord files and the protobuf wire format, read without tensorflow or generated classes.

    for index, data in tfrecords(f):     # data: the record's bytes, or Corrupt(field, reason)
        features = parse_example(data)   # tf.train.Example -> {name: [values]}

`proto_fields` walks any serialized message, so a format's own protos (android_env's
accessibility forest) are read field number by field number where they are used.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterator


@dataclass
class Corrupt:
    """A record the framing or its checksum rejects: which part, and why."""
    field: str
    reason: str


# TFRecord framing: uint64 length, uint32 masked CRC32C of the length, data, uint32 masked
# CRC32C of the data (tensorflow/core/lib/io/record_writer).

def _crc_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1   # Castagnoli, reflected
        table.append(c)
    return table


_TABLE = _crc_table()


def crc32c_py(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


try:   # the C implementation (pip install crc32c): this Python loop checks ~1 MB/s and
    # AndroidControl episodes carry megabytes of screenshots
    from crc32c import crc32c
except ImportError:
    crc32c = crc32c_py


def masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecords(f) -> Iterator[tuple[int, bytes | Corrupt]]:
    """(record index, data or Corrupt) of a TFRecord stream; framing that cannot be trusted
    (a bad length CRC, a cut) ends the file, a bad data CRC skips only that record."""
    index = 0
    while True:
        head = f.read(12)
        if not head:
            return
        if len(head) < 12:
            yield index, Corrupt("<framing>", f"file ends inside record {index}'s header")
            return
        length, length_crc = struct.unpack("<QI", head)
        if masked_crc(head[:8]) != length_crc:
            yield index, Corrupt("<framing>", "TFRecord length CRC32C mismatch: the framing is "
                                              "broken, the rest of the file is skipped")
            return
        data, data_crc = f.read(length), f.read(4)
        if len(data) < length or len(data_crc) < 4:
            yield index, Corrupt("<framing>",
                                 f"file ends inside record {index} ({len(data)} of {length} bytes)")
            return
        stored, computed = struct.unpack("<I", data_crc)[0], masked_crc(data)
        yield index, data if stored == computed else Corrupt(
            "<record>", f"TFRecord data CRC32C mismatch (stored {stored:#010x}, computed "
                        f"{computed:#010x}): the record is corrupt and skipped")
        index += 1


# Protobuf wire format: varint (0), 64-bit (1), length-delimited (2), 32-bit (5).

def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated or overlong varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def proto_fields(buf) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) of a serialized message; ValueError if malformed."""
    buf, pos = memoryview(buf), 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire in (1, 2, 5):
            size = 8 if wire == 1 else 4 if wire == 5 else None
            if size is None:
                size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise ValueError(f"field {num} runs past the end of the message")
            value = buf[pos:pos + size]
            value = int.from_bytes(value, "little") if wire != 2 else value
            pos += size
        else:
            raise ValueError(f"unsupported wire type {wire} (field {num})")
        yield num, wire, value


def signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def ints(wire: int, value) -> list[int]:
    """A repeated integer field's values, packed (wire type 2) or not."""
    if wire != 2:
        return [signed(value)]
    out, pos = [], 0
    while pos < len(value):
        v, pos = _varint(value, pos)
        out.append(signed(v))
    return out


# tf.train.Example (tensorflow/core/example/example.proto, feature.proto): Example.features = 1;
# Features.feature = 1 (map entry: key = 1, value = 2); Feature: bytes_list = 1,
# float_list = 2, int64_list = 3; each list's values = 1.
def parse_example(buf) -> dict[str, list]:
    features: dict[str, list] = {}
    for num, wire, value in proto_fields(buf):
        if num != 1 or wire != 2:
            continue
        for n2, w2, entry in proto_fields(value):
            if n2 != 1 or w2 != 2:
                continue
            key, values = "", []
            for n3, _, x in proto_fields(entry):
                if n3 == 1:
                    key = bytes(x).decode("utf-8")
                elif n3 == 2:
                    values = _feature(x)
            features[key] = values
    return features


def _feature(buf) -> list:
    out: list = []
    for kind, _, lst in proto_fields(buf):
        for n, wire, v in proto_fields(lst):
            if n != 1:
                continue
            if kind == 1:
                out.append(bytes(v))
            elif kind == 2:
                if wire not in (2, 5) or wire == 2 and len(v) % 4:
                    raise ValueError("float_list values are not 32-bit floats")
                raw = bytes(v) if wire == 2 else struct.pack("<I", v)
                out += [f for (f,) in struct.iter_unpack("<f", raw)]
            elif kind == 3:
                out += ints(wire, v)
    return out
