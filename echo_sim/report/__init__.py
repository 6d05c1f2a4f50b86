"""Figures and the notebooks' tables."""
