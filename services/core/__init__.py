"""What several services mean by the same word, defined once and free of gRPC.

The vocabulary and its special tokens, the model repository's layout, the corpus reader, the
sampling strategy, curated data, pseudo-log-likelihood bookkeeping, file roots and artifacts, atomic
files and the errors a service reports. Every service may import it; it imports no service and no
gRPC (`runtime.errors` maps its errors to status codes).
"""
