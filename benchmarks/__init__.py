"""Benchmarks of dann_jax: step time (vs a hand-written JAX step and PyTorch), time to accuracy."""
