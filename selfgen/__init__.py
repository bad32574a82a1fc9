"""selfgen: grow instruction-tuning data with the Self-Instruct loop."""

__version__ = "0.1.0"
