"""Analysis scripts behind numbers in docs/ (run from the repository root: python -m scripts.X)."""
