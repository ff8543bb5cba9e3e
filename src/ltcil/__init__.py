"""ltcil: class-incremental learning under long-tailed data."""

__version__ = "0.1.0"
