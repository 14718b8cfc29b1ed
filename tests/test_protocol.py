"""zakid_hw.protocol: byte layout round trips, malformed answers, and the Driver over fake links."""

import numpy as np
import pytest

from zakid_hw import protocol as P
from zakid_hw.errors import ZakidError


def test_info_round_trip():
    assert P.encode_info_request() == b"I"
    data = P.encode_info_response(784, 10, 0xDEADBEEF)
    assert data == b"I" + bytes([0x10, 0x03, 0x0A, 0x00, 0xEF, 0xBE, 0xAD, 0xDE])
    assert P.decode_info(data) == P.DeviceInfo(in_len=784, out_len=10, signature=0xDEADBEEF)


@pytest.mark.parametrize("data, match", [
    (b"", "no answer"),
    (b"?", "did not recognise"),
    (b"I\x01\x00", "expected 9 bytes"),
    (b"X" + bytes(8), "starts with b'X'"),
    (b"I" + bytes(9), "expected 9 bytes"),
])
def test_decode_info_malformed(data, match):
    with pytest.raises(ZakidError, match=match):
        P.decode_info(data)


def test_decode_info_rejects_non_bytes():
    with pytest.raises(ZakidError):
        P.decode_info("I" + "\0" * 8)


def test_run_request_bytes():
    codes = np.array([[-128, -1], [0, 127]], dtype=np.int8)
    assert P.encode_run_request(codes, np.int8) == b"R\x80\xff\x00\x7f"
    assert P.encode_run_request([0, 255, 7], "uint8", in_len=3) == b"R\x00\xff\x07"
    assert P.decode_run_request(b"R\x80\xff\x00\x7f", 4, np.int8).tolist() == [-128, -1, 0, 127]


@pytest.mark.parametrize("codes, dtype, match", [
    ([128], np.int8, "outside the int8 range"),
    ([-1], np.uint8, "outside the uint8 range"),
    ([0.5], np.int8, "integers"),
    ([1, 2], np.int16, "int8 or uint8"),
])
def test_run_request_rejects_bad_codes(codes, dtype, match):
    with pytest.raises(ZakidError, match=match):
        P.encode_run_request(codes, dtype)


def test_run_request_checks_length():
    with pytest.raises(ZakidError, match="takes 3 input codes, got 2"):
        P.encode_run_request([1, 2], np.int8, in_len=3)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_run_response_round_trip(dtype):
    info = np.iinfo(dtype)
    codes = np.array([info.min, info.max, 0, 1, 2], dtype=np.int64)
    data = P.encode_run_response(codes, 123456789, dtype)
    assert len(data) == P.run_response_len(5)
    out, cycles = P.decode_run_response(data, 5, dtype)
    assert out.dtype == np.int64 and out.tolist() == codes.tolist() and cycles == 123456789


@pytest.mark.parametrize("data, match", [
    (b"", "no answer"),
    (b"?", "did not recognise"),
    (b"R\x01\x02", "expected 7 bytes"),
    (b"R" + bytes(7), "expected 7 bytes"),
    (b"I" + bytes(6), "starts with b'I'"),
])
def test_decode_run_response_malformed(data, match):
    with pytest.raises(ZakidError, match=match):
        P.decode_run_response(data, 2, np.int8)


class FakeDevice:
    """A Link that behaves like the RTL: out[i] = in[i] + 1 (int8 wrap), cycles = 42."""

    def __init__(self, in_len=5, out_len=3, signature=7, answer=True):
        self.in_len, self.out_len, self.signature, self.answer = in_len, out_len, signature, answer
        self.pending = b""
        self.writes = []

    def write(self, data):
        self.writes.append(bytes(data))
        if not self.answer:
            return
        if data[:1] == P.CMD_INFO:
            self.pending += P.encode_info_response(self.in_len, self.out_len, self.signature)
        elif data[:1] == P.CMD_RUN:
            codes = P.decode_run_request(data, self.in_len, np.int8)
            out = (codes[: self.out_len] + 1 + 128) % 256 - 128
            self.pending += P.encode_run_response(out, 42, np.int8)
        else:
            self.pending += P.RESP_UNKNOWN

    def read(self, n, timeout):
        out, self.pending = self.pending[:n], self.pending[n:]
        return out


def test_driver_info_and_infer():
    dev = FakeDevice()
    drv = P.Driver(dev)
    out, cycles = drv.infer(np.array([1, -2, 127, 4, 5], dtype=np.int8))
    assert dev.writes[0] == b"I"  # info is read first
    assert out.tolist() == [2, -1, -128] and cycles == 42
    assert drv.info() == P.DeviceInfo(5, 3, 7)
    with pytest.raises(ZakidError, match="takes 5 input codes"):
        drv.infer([1, 2, 3])


def test_driver_reports_silent_device():
    with pytest.raises(ZakidError, match="no answer"):
        P.Driver(FakeDevice(answer=False), timeout=0.01).info()


def test_serial_link_loopback():
    pytest.importorskip("serial")
    with P.SerialLink("loop://", baudrate=115200) as link:
        link.write(b"hello")
        assert link.read(5, timeout=1.0) == b"hello"
        assert link.read(1, timeout=0.05) == b""


def test_serial_link_bad_port():
    pytest.importorskip("serial")
    with pytest.raises(ZakidError, match="cannot open serial port"):
        P.SerialLink("/dev/does-not-exist-zakid")
