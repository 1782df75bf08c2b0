"""JAX tier: npattn against jax/flax in float64 (jax_enable_x64); skipped when jax is absent."""
