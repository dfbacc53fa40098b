"""Utilities shared by every week: device choice, timing, results files, plots, the report."""
