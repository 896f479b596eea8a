"""agelens: apparent age and gender of every face in photos, fast on a plain CPU."""

__version__ = "0.1.0"
