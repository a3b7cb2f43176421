"""The compare service: distillation fidelity beside accuracy and calibration, per held-out slice,
with bootstrap intervals and a promotion gate, over models served by the inference service."""
