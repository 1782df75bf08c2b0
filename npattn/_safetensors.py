"""The safetensors container, written and read without the ``safetensors`` package.

The format (https://github.com/huggingface/safetensors) is::

    8 bytes      N, the header length: unsigned 64-bit little-endian
    N bytes      the header: a UTF-8 JSON object
                   {"__metadata__": {"key": "string value", ...},            (optional; string values only)
                    "<tensor name>": {"dtype": "F64", "shape": [2, 3], "data_offsets": [begin, end]}, ...}
                 padded with spaces to a multiple of 8 bytes (so the buffer starts aligned)
    the buffer   every tensor's elements, C order, little-endian, at [begin, end) relative to the buffer's start

The offsets of all tensors tile the buffer exactly: sorted, each begins where the previous one ends, the first
at 0, the last ends at the end of the file, and ``end - begin`` is the element count times the dtype's size.
:func:`read` checks every one of these rules (a :class:`FormatError` naming the rule and the tensor otherwise),
as the reference implementation does, so a file that passes here loads there and vice versa.
"""
from __future__ import annotations

import json
import math
import struct

import numpy as np

#: safetensors dtype strings NumPy can hold (BF16 and the F8 types have no NumPy dtype).
DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
          "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?"}
_NAMES = {np.dtype(v).newbyteorder("="): k for k, v in DTYPES.items()}
#: the reference implementation refuses larger headers.
MAX_HEADER = 100_000_000
_TENSOR_FIELDS = {"dtype", "shape", "data_offsets"}


class FormatError(ValueError):
    """A file that is not a valid safetensors file; the message says which rule it breaks."""


def dtype_name(dtype) -> str:
    """The safetensors dtype string of a NumPy dtype (``float64`` -> ``"F64"``)."""
    try:
        return _NAMES[np.dtype(dtype).newbyteorder("=")]
    except KeyError:
        raise TypeError(f"safetensors holds no dtype {np.dtype(dtype)}; use one of {sorted(_NAMES, key=str)}") from None


def dumps(tensors: dict, metadata: dict | None = None) -> bytes:
    """The bytes of a safetensors file holding ``tensors`` (name -> array) and string ``metadata``.

    Tensors are laid out by decreasing element size (stable), so each starts aligned to its size.
    """
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"safetensors metadata maps strings to strings; got {key!r}: {type(value).__name__}")
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    arrays = {name: np.asarray(value) for name, value in tensors.items()}
    order = sorted(arrays, key=lambda name: -arrays[name].dtype.itemsize)  # stable: equal sizes keep their order
    chunks, offset = [], 0
    for name in order:
        if name == "__metadata__" or not isinstance(name, str):
            raise ValueError(f"safetensors tensor names are strings other than '__metadata__', got {name!r}")
        array = arrays[name]
        data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": dtype_name(array.dtype), "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def _unique_object(pairs):
    keys = [k for k, _ in pairs]
    duplicated = sorted({k for k in keys if keys.count(k) > 1})
    if duplicated:
        raise FormatError(f"the header names {duplicated} more than once")
    return dict(pairs)


def _non_negative_ints(value, length: int | None = None) -> bool:
    return (isinstance(value, list) and (length is None or len(value) == length)
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value))


def _header(data: bytes) -> tuple[dict, int]:
    """(the parsed header, where the buffer starts)."""
    if len(data) < 8:
        raise FormatError(f"{len(data)} bytes: too short for the 8-byte header length")
    (length,) = struct.unpack("<Q", data[:8])
    if length > MAX_HEADER:
        raise FormatError(f"header length {length} is over the format's limit of {MAX_HEADER} bytes")
    if 8 + length > len(data):
        raise FormatError(f"header length {length} runs past the end of the file ({len(data) - 8} bytes follow it)")
    try:
        text = data[8:8 + length].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f"the header is not UTF-8 ({exc})") from None
    if not text.startswith("{"):
        raise FormatError("the header does not start with '{' (not a safetensors file?)")
    try:
        header = json.loads(text, object_pairs_hook=_unique_object)
    except json.JSONDecodeError as exc:
        raise FormatError(f"the header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise FormatError("the header is not a JSON object")
    return header, 8 + length


def _tensor_info(name: str, info) -> tuple[np.dtype, tuple, int, int]:
    if not isinstance(info, dict) or set(info) != _TENSOR_FIELDS:
        fields = sorted(info) if isinstance(info, dict) else type(info).__name__
        raise FormatError(f"tensor {name!r}: an entry has exactly the fields {sorted(_TENSOR_FIELDS)}, got {fields}")
    dtype = info["dtype"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise FormatError(f"tensor {name!r}: dtype {dtype!r} is not one of {sorted(DTYPES)}")
    if not _non_negative_ints(info["shape"]):
        raise FormatError(f"tensor {name!r}: shape {info['shape']!r} is not a list of non-negative integers")
    offsets = info["data_offsets"]
    if not _non_negative_ints(offsets, 2) or offsets[0] > offsets[1]:
        raise FormatError(f"tensor {name!r}: data_offsets {offsets!r} are not [begin, end] with 0 <= begin <= end")
    np_dtype = np.dtype(DTYPES[dtype])
    needed = math.prod(info["shape"]) * np_dtype.itemsize
    if offsets[1] - offsets[0] != needed:
        raise FormatError(f"tensor {name!r}: data_offsets {offsets} hold {offsets[1] - offsets[0]} bytes, but "
                          f"{dtype} of shape {info['shape']} needs {needed}")
    return np_dtype, tuple(info["shape"]), offsets[0], offsets[1]


def loads(data: bytes) -> tuple[dict, dict]:
    """(tensors, metadata) of the bytes of a safetensors file; :class:`FormatError` for any broken rule.

    Arrays come back in native byte order, as copies (they do not keep ``data`` alive).
    """
    header, start = _header(data)
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise FormatError("__metadata__ must be a JSON object of string values")
    buffer_size = len(data) - start
    infos = {name: _tensor_info(name, info) for name, info in header.items()}
    for name, (_, _, _, end) in infos.items():
        if end > buffer_size:
            raise FormatError(f"truncated: tensor {name!r} ends at byte {end} of the buffer, which holds "
                              f"{buffer_size} bytes")
    position, previous = 0, None
    for name, (_, _, begin, end) in sorted(infos.items(), key=lambda item: (item[1][2], item[1][3])):
        if begin < position:
            raise FormatError(f"overlapping offsets: tensor {name!r} begins at byte {begin}, inside {previous!r} "
                              f"(which ends at {position})")
        if begin > position:
            raise FormatError(f"a gap of {begin - position} bytes before tensor {name!r} (offsets must tile the "
                              "buffer)")
        position, previous = end, name
    if position != buffer_size:
        raise FormatError(f"{buffer_size - position} bytes after the last tensor (offsets must tile the buffer)")
    tensors = {}
    for name, (dtype, shape, begin, end) in infos.items():
        native = dtype.newbyteorder("=")
        if begin == end:  # no elements (frombuffer refuses an offset at the very end)
            tensors[name] = np.empty(shape, native)
            continue
        flat = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=start + begin)
        tensors[name] = flat.astype(native, copy=True).reshape(shape)
    return tensors, dict(metadata)
