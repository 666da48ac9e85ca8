"""Benchmarks of PD-DDPM sampling and training (run as ``python -m benchmarks.<name>``; see README.md)."""
