"""Every user mistake on the command line ends in one ``error:`` paragraph and exit status 2, names the
culprit, shows no traceback and leaves no output behind.

The CLI runs in a subprocess (``python -m zakid_hw.cli``) in a scratch folder; every case fails before
synthesis or simulation. The last test checks, in-process, that a build failing after its temporary folder
exists removes it (it runs the built-in RTL check, whose Verilator model is cached).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelzoo import IR_VERSION, float_mlp, quantize_model
from zakid_hw.errors import ZakidError

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits"
FLOAT_MODEL = DIGITS / "digits_mlp.onnx"
INT8_MODEL = DIGITS / "digits_mlp_int8.onnx"


def snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def cli_error(cwd: Path, *args, rc: int = 2) -> str:
    """Run the CLI in ``cwd``; check it fails cleanly and wrote nothing; return stderr."""
    before = snapshot(cwd)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-m", "zakid_hw.cli", *map(str, args)], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=120)
    what = f"zakid-hw {' '.join(map(str, args))}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    assert p.returncode == rc, what
    assert p.stderr.startswith("error:"), what
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout, what
    after = snapshot(cwd)
    assert after == before, f"left behind: {sorted(after - before)}\n{what}"
    assert not list(cwd.rglob(".*.tmp-*")), what
    return p.stderr


def save(model: onnx.ModelProto, path: Path) -> Path:
    model.ir_version = IR_VERSION
    onnx.save(model, str(path))
    return path


def bad_op_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(8, 16)).astype(np.float32), "w")
    nodes = [helper.make_node("Gemm", ["x", "w"], ["h"], name="fc0", transB=1),
             helper.make_node("Sigmoid", ["h"], ["s"], name="squash_sig"),
             helper.make_node("Tanh", ["s"], ["y"], name="squash_tanh")]
    g = helper.make_graph(nodes, "bad_ops", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = IR_VERSION
    return m


def with_input_shape(shape) -> onnx.ModelProto:
    """The digits float model with its input shape replaced (None: no shape at all)."""
    m = onnx.load(str(FLOAT_MODEL))
    x = m.graph.input[0]
    new = helper.make_tensor_value_info(x.name, TensorProto.FLOAT, shape)
    x.CopyFrom(new)
    return m


@pytest.fixture
def work(tmp_path):
    """A scratch folder holding the inputs of every case."""
    (tmp_path / "garbage.onnx").write_bytes(np.random.default_rng(1).bytes(4096))
    data = INT8_MODEL.read_bytes()
    (tmp_path / "truncated.onnx").write_bytes(data[: len(data) // 2])
    save(bad_op_model(), tmp_path / "badops.onnx")
    save(with_input_shape(["N", 64]), tmp_path / "dynamic.onnx")
    save(with_input_shape(None), tmp_path / "noshape.onnx")
    np.save(tmp_path / "calib_bad.npy", np.zeros((10, 63), np.float32))
    np.save(tmp_path / "calib.npy", np.load(DIGITS / "calib.npy")[:20])
    np.save(tmp_path / "x_bad.npy", np.zeros((5, 63), np.float32))
    np.save(tmp_path / "x.npy", np.load(DIGITS / "digits_x.npy")[:3])
    return tmp_path


# ---------------------------------------------------------------------------------------------------------
# unreadable files


@pytest.mark.parametrize("cmd", ["build", "sim"])
def test_not_onnx_truncated_missing(work, cmd):
    extra = ["--input", "x.npy", "--output", "y.npy"] if cmd == "sim" else ["--out", "o"]
    err = cli_error(work, cmd, "garbage.onnx", *extra)
    assert "garbage.onnx" in err
    err = cli_error(work, cmd, "truncated.onnx", *extra)
    assert "truncated.onnx" in err and "truncated" in err.split("truncated.onnx", 1)[1]
    err = cli_error(work, cmd, "missing.onnx", *extra)
    assert "missing.onnx" in err and "does not exist" in err


def test_default_out_folder_not_created(work):
    """Without --out, the build/ folder must not appear either."""
    err = cli_error(work, "build", "garbage.onnx")
    assert "garbage.onnx" in err
    assert not (work / "build").exists()


# ---------------------------------------------------------------------------------------------------------
# unsupported models


@pytest.mark.parametrize("cmd", ["build", "sim"])
def test_unsupported_ops_all_listed(work, cmd):
    extra = ["--input", "x.npy"] if cmd == "sim" else []
    err = cli_error(work, cmd, "badops.onnx", "--calibration", "calib.npy", *extra)
    for s in ("squash_sig", "Sigmoid", "squash_tanh", "Tanh"):
        assert s in err, err


def test_dynamic_input_shape(work):
    err = cli_error(work, "build", "dynamic.onnx", "--calibration", "calib.npy")
    assert "'x'" in err and "'N'" in err and "dynamic" in err


def test_missing_input_shape(work):
    err = cli_error(work, "build", "noshape.onnx", "--calibration", "calib.npy")
    assert "'x'" in err and "no shape" in err


@pytest.mark.parametrize("cmd", ["build", "sim"])
def test_float_model_without_calibration(work, cmd):
    extra = ["--input", "x.npy"] if cmd == "sim" else []
    err = cli_error(work, cmd, FLOAT_MODEL, *extra)
    assert "digits_mlp.onnx" in err and "float model" in err and "calibration" in err


def test_calibration_wrong_shape(work):
    err = cli_error(work, "build", FLOAT_MODEL, "--calibration", "calib_bad.npy")
    assert "(10, 63)" in err and "64" in err, err


def test_calibration_file_missing_or_bad(work):
    err = cli_error(work, "build", FLOAT_MODEL, "--calibration", "nope.npy")
    assert "nope.npy" in err and "does not exist" in err
    err = cli_error(work, "build", FLOAT_MODEL, "--calibration", "garbage.onnx")
    assert "garbage.onnx" in err


@pytest.fixture(scope="module")
def big_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("big")
    calib = np.random.default_rng(0).normal(size=(8, 784)).astype(np.float32)
    return Path(quantize_model(float_mlp((784, 512, 256, 10)), calib, "qoperator", "int8", tmpdir=d,
                               name="mlp_784_512_256_10"))


@pytest.mark.parametrize("target", [["--device", "hx1k", "--board", "icestick"], ["--device", "up5k"]])
def test_model_too_big(work, big_model, target):
    err = cli_error(work, "build", big_model, "--out", "o", *target)
    part = "iCE40HX1K" if "hx1k" in target else "iCE40UP5K"
    assert "does not fit" in err and part in err, err
    assert "KB" in err and ("block RAMs" in err or "SPRAM blocks" in err), err
    if "hx1k" in target:
        assert "has 16 (" in err, err
    else:  # on the UP5K the weights move to SPRAM, which is too small for them too
        assert "SPRAM blocks" in err and "has 4" in err, err


def test_too_big_even_with_one_lane(work):
    """On the icestick's HX1K not even a one-lane design of the digits MLP fits: the error says so instead
    of suggesting fewer lanes; asking for more lanes still gets that hint."""
    err = cli_error(work, "build", INT8_MODEL, "--out", "o", "--device", "hx1k")
    assert "1 of its 1 MAC lanes" in err and "choose a larger device" in err and "fewer --lanes" not in err, err
    err = cli_error(work, "build", INT8_MODEL, "--out", "o", "--device", "hx1k", "--lanes", "4")
    assert "4 of its 4 MAC lanes" in err and "use fewer --lanes" in err, err


def test_external_data_outside_folder(work):
    (work / "m").mkdir()
    m = onnx.load(str(INT8_MODEL))
    onnx.save(m, str(work / "m" / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    (work / "secret.bin").write_bytes((work / "m" / "weights.bin").read_bytes())
    m = onnx.load(str(work / "m" / "ext.onnx"), load_external_data=False)
    names = []
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../secret.bin"
                names.append(t.name)
    assert names
    onnx.save(m, str(work / "m" / "ext.onnx"))
    err = cli_error(work, "build", "m/ext.onnx")
    assert "../secret.bin" in err and "outside" in err and any(repr(n) in err for n in names), err
    err = cli_error(work, "sim", "m/ext.onnx", "--input", "x.npy")
    assert "../secret.bin" in err


# ---------------------------------------------------------------------------------------------------------
# options


@pytest.mark.parametrize("cmd", ["build", "sim"])
@pytest.mark.parametrize("opt,value,known", [
    ("--fpga", "xilinx", ["ice40"]),
    ("--device", "up9k", ["up5k", "hx8k", "hx1k"]),
    ("--board", "nosuchboard", ["icebreaker", "ice40-hx8k-b-evn", "icestick"]),
])
def test_unknown_names(work, cmd, opt, value, known):
    extra = ["--input", "x.npy"] if cmd == "sim" else []
    err = cli_error(work, cmd, INT8_MODEL, opt, value, *extra)
    assert value in err and all(k in err for k in known), err


def test_board_device_mismatch(work):
    err = cli_error(work, "build", INT8_MODEL, "--board", "icestick", "--device", "up5k")
    assert "icestick" in err and "up5k" in err and "icebreaker" in err


def test_bad_lanes(work):
    err = cli_error(work, "build", INT8_MODEL, "--lanes", "0")
    assert "--lanes" in err and "0" in err


@pytest.mark.parametrize("baud", ["0", "-5"])
def test_bad_baud(work, baud):
    err = cli_error(work, "build", INT8_MODEL, "--baud", baud, "--out", "o")
    assert "--baud" in err and baud in err


def test_bad_clock(work):
    err = cli_error(work, "build", INT8_MODEL, "--clock", "1000")
    assert "1000 MHz" in err and "16-275 MHz" in err


# ---------------------------------------------------------------------------------------------------------
# sim and run inputs


def test_sim_input_wrong_shape(work):
    err = cli_error(work, "sim", INT8_MODEL, "--input", "x_bad.npy", "--output", "y.npy")
    assert "'x'" in err and "(5, 63)" in err and "(1, 64)" in err, err


def test_sim_input_missing(work):
    err = cli_error(work, "sim", INT8_MODEL, "--input", "nope.npy", "--output", "y.npy")
    assert "nope.npy" in err and "does not exist" in err


def test_run_not_a_build_folder(work):
    (work / "notbuild").mkdir()
    err = cli_error(work, "run", "notbuild", "--port", "/dev/null", "--input", "x.npy", "--output", "y.npy")
    assert "notbuild" in err and "not a build folder" in err
    err = cli_error(work, "run", "nosuchdir", "--port", "/dev/null", "--input", "x.npy")
    assert "nosuchdir" in err and "not a build folder" in err


@pytest.mark.parametrize("content", ["garbage", "{}", "[1, 2]"])
def test_run_bad_report(work, content):
    (work / "b").mkdir()
    (work / "b" / "report.json").write_text(content)
    err = cli_error(work, "run", "b", "--port", "/dev/null", "--input", "x.npy", "--output", "y.npy")
    assert "report.json" in err and "zakid-hw build" in err


# ---------------------------------------------------------------------------------------------------------
# a build failing late leaves nothing


def test_late_failure_leaves_nothing(tmp_path, monkeypatch):
    import zakid_hw.build as build_mod
    from zakid_hw.compiler import compile_model

    c = compile_model(INT8_MODEL)
    seen = {}

    def fail(top, board, out, **kw):
        seen["out"] = Path(out)
        for obj in (top, getattr(top, "clock", None)):  # never elaborated: no "created but never used"
            if obj is not None:
                obj._MustUse__used = True
        assert Path(out).parent.is_dir()  # the temporary folder exists at this point
        raise ZakidError("nextpnr failed on purpose")

    monkeypatch.setattr(build_mod, "build_bitstreams", fail)
    out = tmp_path / "builds" / "digits"
    with pytest.raises(ZakidError, match="on purpose"):
        build_mod.build(c, out, log=lambda *a: None)
    assert "out" in seen and ".digits.tmp-" in str(seen["out"])
    assert not out.exists()
    assert list((tmp_path / "builds").iterdir()) == []
