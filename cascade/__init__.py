"""Core library of the two-stage knee X-ray cascade: stage specs, preprocessing, models, the gate, metrics.

Nothing here imports Streamlit; the dashboard and the CLIs are thin layers over this package and ``engines``.
"""

from cascade.errors import CascadeError, CheckpointError, ConfigError, ImageReadError

__all__ = ["CascadeError", "CheckpointError", "ConfigError", "ImageReadError"]
