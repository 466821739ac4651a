"""Shipped Hydra configs (a package so that Hydra can find them inside the wheel)."""
