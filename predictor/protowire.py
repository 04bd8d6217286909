"""Protocol buffers wire format, just what this project reads and writes by hand:
varints, fixed-size scalars and length-delimited fields.
https://protobuf.dev/programming-guides/encoding/

Used where importing a generated V2 message is not an option: kserve's and tritonclient's
copies of the V2 protos both declare `inference.*` and break each other in one process,
and the two disagree on some field numbers.
"""

from __future__ import annotations


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def _read_varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, position


def varints(data: bytes) -> list[int]:
    values, position = [], 0
    while position < len(data):
        value, position = _read_varint(data, position)
        values.append(value)
    return values


def entries(data: bytes) -> list[tuple[int, int, bytes | int]]:
    """(field number, wire type, value) of each field: an int for a varint, else the bytes
    (8 for fixed64, 4 for fixed32, the payload of a length-delimited field)."""
    found: list[tuple[int, int, bytes | int]] = []
    position = 0
    while position < len(data):
        key, position = _read_varint(data, position)
        number, wire_type = key >> 3, key & 7
        value: bytes | int
        if wire_type == 0:
            value, position = _read_varint(data, position)
        elif wire_type in (1, 5):
            size = 8 if wire_type == 1 else 4
            value, position = data[position : position + size], position + size
        elif wire_type == 2:
            length, position = _read_varint(data, position)
            value, position = data[position : position + length], position + length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")
        found.append((number, wire_type, value))
    return found


def fields(data: bytes) -> list[tuple[int, bytes]]:
    """(field number, bytes) of each length-delimited field."""
    return [
        (number, value)
        for number, wire_type, value in entries(data)
        if wire_type == 2 and isinstance(value, bytes)
    ]
