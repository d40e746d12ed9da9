"""Streamlit dashboard for the knee X-ray cascade: ``streamlit run dashboard/Home.py``."""
