"""Encore: feature-store-backed batch scoring of music listening logs."""

__version__ = "0.1.0"
