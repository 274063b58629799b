"""Deep metric learning for rare-event detection and few-shot classification in microscopy images."""

__version__ = "0.1.0"
