"""hearts-harness: train, judge and gate a QLoRA model that puts one heart between every word."""

__version__ = "0.1.0"
