"""repalign: measure how neural representations align."""

__version__ = "0.1.0"
