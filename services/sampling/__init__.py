"""The sampling service: the paper's effective-sampling weights and weighted draws over gRPC."""
