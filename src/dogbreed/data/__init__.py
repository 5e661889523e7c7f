"""Data sets: layout and checks, labels, loaders, download and synthetic data."""
