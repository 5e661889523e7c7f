"""dogbreed: train, tune, profile and serve an image classifier on one machine."""

__version__ = "0.1.0"
