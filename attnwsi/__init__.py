"""attnwsi: end-to-end grid-attention classification of whole-slide microscopy images."""

__version__ = "0.1.0"
