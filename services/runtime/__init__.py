"""The runtime every driftlm service shares: configuration, server bootstrap, errors, metrics,
logs and tensor encoding. Only services import it; it imports no service."""
