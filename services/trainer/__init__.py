"""The trainer service: incremental MLM training across vocab versions, the loss-memory trigger,
the paper's sampling strategies, ONNX export and distillation."""
