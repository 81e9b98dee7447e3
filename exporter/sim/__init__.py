"""Simulated hardware: a pynvml-compatible module and a fake neuron-monitor, driven by scenarios."""
