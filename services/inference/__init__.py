"""The inference service: exported ONNX models of a Triton-layout model repository, served with
ONNX Runtime (no torch) over driftlm's text API and the Open Inference Protocol."""
