"""Throughput, CPU, rate-limit and memory benchmarks of the Peak → Braze pipeline."""
