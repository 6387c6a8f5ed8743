"""framesift core: plain-Python pipeline stages (no Airflow imports)."""

__version__ = "0.1.0"
