"""Protocol buffers wire format, just what this project reads and writes by hand:
length-delimited fields (wire type 2) and varints (type 0), other wire types skipped.
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


def fields(data: bytes) -> list[tuple[int, bytes]]:
    """(field number, bytes) of each length-delimited field; other wire types skipped."""
    found, position = [], 0
    while position < len(data):
        key, position = _read_varint(data, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == 2:
            length, position = _read_varint(data, position)
            found.append((number, data[position : position + length]))
            position += length
        elif wire_type == 0:
            _, position = _read_varint(data, position)
        elif wire_type == 1:
            position += 8
        elif wire_type == 5:
            position += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")
    return found
