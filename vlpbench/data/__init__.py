"""Datasets: the embedded generated dataset and loaders for ALBEF-style JSON annotations."""
