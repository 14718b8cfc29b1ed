"""RTL simulation support: the cocotb + Verilator runner, UART bus models and cocotb benches.

* :mod:`sim.runner` -- :func:`sim.runner.simulate` converts an Amaranth component to Verilog, compiles it with
  Verilator (cached by a hash of the Verilog) and runs a cocotb test module against it; parameters go in and
  results come back as JSON. Benches use :func:`sim.runner.bench_params` and :func:`sim.runner.bench_result`.
* :mod:`sim.uart_model` -- cocotb helpers that bit-bang a UART pin and decode one (for the host link).
* ``sim/benches/`` -- the cocotb test modules.
"""
