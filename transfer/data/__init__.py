"""Data in: image folders and CSV tables, texts, the image preflight and
label checks."""
