"""cocotb test modules (benches) run by :func:`sim.runner.simulate`."""
