"""The test suite (a package, so tests/balancer never shadows the balancer package)."""
