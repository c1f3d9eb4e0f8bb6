"""citygate: an ingestion gateway for digital city management."""

__version__ = "0.1.0"
