"""The host-link protocol between a computer and a zakid-hw accelerator, over a UART (8N1).

Byte-level protocol (all multi-byte integers little-endian):

======================  =====================================================================================
host sends              device answers
======================  =====================================================================================
``I``                   ``I`` + in_len (u16) + out_len (u16) + signature (u32)          -- 9 bytes
``R`` + in_len codes    ``R`` + out_len codes + cycles (u32)                            -- out_len + 5 bytes
anything else           ``?``                                                           -- 1 byte
======================  =====================================================================================

A code is one byte: an int8 value in two's complement or a uint8 value, as the model's quantized input and
output tensors are typed. ``cycles`` is the number of clock cycles the accelerator core took for the
inference (start to done). ``signature`` identifies the compiled model, so a host can check that the board
runs the bitstream it expects.

This module is the only place that knows the byte layout: the RTL bench (``sim/benches/host_link_bench.py``)
and the real :class:`Driver` both use the ``encode_*`` / ``decode_*`` functions below. :class:`SerialLink`
carries the bytes over a serial port (pyserial, imported only when a port is opened).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol as _TypingProtocol

import numpy as np

from zakid_hw.errors import ZakidError

__all__ = [
    "CMD_INFO",
    "CMD_RUN",
    "RESP_UNKNOWN",
    "INFO_RESPONSE_LEN",
    "MAX_LEN",
    "DeviceInfo",
    "encode_info_request",
    "encode_info_response",
    "decode_info",
    "encode_run_request",
    "decode_run_request",
    "encode_run_response",
    "decode_run_response",
    "run_response_len",
    "Link",
    "SerialLink",
    "Driver",
]

CMD_INFO = b"I"
CMD_RUN = b"R"
RESP_UNKNOWN = b"?"
#: Length of the answer to ``I``.
INFO_RESPONSE_LEN = 9
#: Largest in_len / out_len (they travel as u16).
MAX_LEN = 0xFFFF

_CODE_DTYPES = {"int8": np.dtype(np.int8), "uint8": np.dtype(np.uint8)}


@dataclass(frozen=True)
class DeviceInfo:
    """What a device reports for ``I``."""

    in_len: int  #: number of input codes an ``R`` request carries
    out_len: int  #: number of output codes an ``R`` answer carries
    signature: int  #: 32-bit identifier of the compiled model


def _code_dtype(dtype) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.name not in _CODE_DTYPES:
        raise ZakidError(f"host link codes must be int8 or uint8, not {dtype!r}")
    return dt


def _as_bytes(data, what: str) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ZakidError(f"{what}: expected bytes from the device, got {type(data).__name__}")
    return bytes(data)


def _describe_short(data: bytes, expected: int, what: str) -> str:
    if not data:
        return f"{what}: no answer from the device (expected {expected} bytes); is the board programmed and the port right?"
    if data[:1] == RESP_UNKNOWN:
        return f"{what}: the device answered {RESP_UNKNOWN!r} (it did not recognise the command)"
    return f"{what}: expected {expected} bytes from the device, got {len(data)}: {data[:16].hex(' ')}"


# ---- I ----------------------------------------------------------------------------------------------------


def encode_info_request() -> bytes:
    """The bytes a host sends to ask for the device info."""
    return CMD_INFO


def encode_info_response(in_len: int, out_len: int, signature: int) -> bytes:
    """The device's answer to ``I`` (used by tests and models of the device)."""
    for name, v in (("in_len", in_len), ("out_len", out_len)):
        if not 0 <= int(v) <= MAX_LEN:
            raise ZakidError(f"{name}={v} does not fit the host link's u16 length field (max {MAX_LEN})")
    if not 0 <= int(signature) <= 0xFFFFFFFF:
        raise ZakidError(f"signature {signature} does not fit 32 bits")
    return (CMD_INFO + int(in_len).to_bytes(2, "little") + int(out_len).to_bytes(2, "little")
            + int(signature).to_bytes(4, "little"))


def decode_info(data) -> DeviceInfo:
    """Parse the device's answer to ``I``; raises :class:`ZakidError` if it is malformed."""
    data = _as_bytes(data, "device info")
    if len(data) != INFO_RESPONSE_LEN or data[:1] != CMD_INFO:
        if len(data) == INFO_RESPONSE_LEN:
            raise ZakidError(
                f"device info: the answer starts with {data[:1]!r}, expected {CMD_INFO!r}: {data.hex(' ')}")
        raise ZakidError(_describe_short(data, INFO_RESPONSE_LEN, "device info"))
    return DeviceInfo(
        in_len=int.from_bytes(data[1:3], "little"),
        out_len=int.from_bytes(data[3:5], "little"),
        signature=int.from_bytes(data[5:9], "little"),
    )


# ---- R ----------------------------------------------------------------------------------------------------


def _codes_to_bytes(codes, dtype, what: str) -> bytes:
    dt = _code_dtype(dtype)
    arr = np.asarray(codes)
    if arr.dtype.kind not in "iub":
        raise ZakidError(f"{what}: codes must be integers, got an array of {arr.dtype}")
    flat = arr.reshape(-1).astype(np.int64)
    info = np.iinfo(dt)
    if flat.size and (flat.min() < info.min or flat.max() > info.max):
        bad = flat[(flat < info.min) | (flat > info.max)][0]
        raise ZakidError(f"{what}: code {int(bad)} is outside the {dt.name} range [{info.min}, {info.max}]")
    return flat.astype(dt).tobytes()


def encode_run_request(codes, dtype, in_len: int | None = None) -> bytes:
    """The bytes a host sends to run one inference on ``codes`` (flattened in C order).

    :param dtype: ``np.int8`` or ``np.uint8`` (the model's quantized input type).
    :param in_len: if given, the number of codes the device expects (checked).
    """
    arr = np.asarray(codes)
    if in_len is not None and arr.size != in_len:
        raise ZakidError(f"run request: the device takes {in_len} input codes, got {arr.size}")
    if arr.size > MAX_LEN:
        raise ZakidError(f"run request: {arr.size} codes exceed the host link's limit of {MAX_LEN}")
    return CMD_RUN + _codes_to_bytes(arr, dtype, "run request")


def decode_run_request(data, in_len: int, dtype) -> np.ndarray:
    """Parse a run request (the device's view; used by models of the device). Returns int64 codes."""
    data = _as_bytes(data, "run request")
    if len(data) != 1 + in_len or data[:1] != CMD_RUN:
        raise ZakidError(f"run request: expected {CMD_RUN!r} + {in_len} codes, got {len(data)} bytes")
    return np.frombuffer(data[1:], dtype=_code_dtype(dtype)).astype(np.int64)


def run_response_len(out_len: int) -> int:
    """Length of the device's answer to ``R``."""
    return 1 + int(out_len) + 4


def encode_run_response(codes, cycles: int, dtype) -> bytes:
    """The device's answer to ``R`` (used by tests and models of the device)."""
    if not 0 <= int(cycles) <= 0xFFFFFFFF:
        raise ZakidError(f"cycles {cycles} does not fit 32 bits")
    return CMD_RUN + _codes_to_bytes(codes, dtype, "run response") + int(cycles).to_bytes(4, "little")


def decode_run_response(data, out_len: int, dtype) -> tuple[np.ndarray, int]:
    """Parse the device's answer to ``R``: ``(codes as an int64 array of out_len, cycles)``.

    Raises :class:`ZakidError` if the answer is short, long, or does not start with ``R``.
    """
    data = _as_bytes(data, "run response")
    dt = _code_dtype(dtype)
    n = run_response_len(out_len)
    if len(data) != n or data[:1] != CMD_RUN:
        if len(data) == n:
            raise ZakidError(
                f"run response: the answer starts with {data[:1]!r}, expected {CMD_RUN!r}: {data[:16].hex(' ')}")
        raise ZakidError(_describe_short(data, n, "run response"))
    codes = np.frombuffer(data[1:1 + out_len], dtype=dt).astype(np.int64)
    cycles = int.from_bytes(data[1 + out_len:], "little")
    return codes, cycles


# ---- links and the driver -------------------------------------------------------------------------------


class Link(_TypingProtocol):
    """A byte pipe to a device."""

    def write(self, data: bytes) -> None: ...

    def read(self, n: int, timeout: float) -> bytes:
        """Up to ``n`` bytes; fewer only if ``timeout`` seconds passed first."""
        ...


class SerialLink:
    """A :class:`Link` over a serial port (e.g. ``/dev/ttyUSB1`` for the iCEBreaker's FTDI, 8N1).

    ``baudrate`` must match the bitstream's UART divisor (clock / divisor).
    """

    def __init__(self, port: str, baudrate: int = 115200):
        try:
            import serial  # pyserial
        except ImportError as e:
            raise ZakidError("talking to a board needs pyserial: pip install pyserial") from e
        try:
            # serial_for_url also takes pyserial URLs such as "loop://" (handy for tests)
            self._port = serial.serial_for_url(port, baudrate=baudrate, bytesize=8, parity="N", stopbits=1,
                                               timeout=0.1)
        except (serial.SerialException, OSError, ValueError) as e:
            raise ZakidError(f"cannot open serial port {port!r}: {e}") from e
        self._port.reset_input_buffer()

    def write(self, data: bytes) -> None:
        self._port.write(bytes(data))
        self._port.flush()

    def read(self, n: int, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        buf = bytearray()
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._port.timeout = min(left, 0.5)
            buf += self._port.read(n - len(buf))
        return bytes(buf)

    def reset_input(self) -> None:
        """Drop bytes received but not read (e.g. the tail of an answer from an earlier, aborted request)."""
        self._port.reset_input_buffer()

    def close(self) -> None:
        self._port.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Driver:
    """Runs inferences on a device over a :class:`Link`, using only the encode/decode functions above.

    :param in_dtype, out_dtype: the quantized input / output code types (``np.int8`` or ``np.uint8``).
    :param timeout: seconds to wait for a complete answer.
    """

    def __init__(self, link: Link, *, in_dtype=np.int8, out_dtype=np.int8, timeout: float = 5.0):
        self.link = link
        self.in_dtype = _code_dtype(in_dtype)
        self.out_dtype = _code_dtype(out_dtype)
        self.timeout = timeout
        self._info: DeviceInfo | None = None

    def _request(self, data: bytes, answer_len: int) -> bytes:
        reset = getattr(self.link, "reset_input", None)
        if reset is not None:
            reset()
        self.link.write(data)
        return self.link.read(answer_len, self.timeout)

    def info(self) -> DeviceInfo:
        """Ask the device for its input/output lengths and model signature."""
        self._info = decode_info(self._request(encode_info_request(), INFO_RESPONSE_LEN))
        return self._info

    def infer(self, codes) -> tuple[np.ndarray, int]:
        """Run one inference: ``(output codes as int64, core cycles)``. Asks for the device info first if
        it has not been read yet."""
        info = self._info or self.info()
        request = encode_run_request(codes, self.in_dtype, in_len=info.in_len)
        answer = self._request(request, run_response_len(info.out_len))
        return decode_run_response(answer, info.out_len, self.out_dtype)
