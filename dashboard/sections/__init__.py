"""Streamlit sections several pages place with one call each: calibration and metadata."""
