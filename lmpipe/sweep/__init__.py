"""Sweeps and recipes: grids, their points as DVC experiments, the Prefect sweep flow."""
