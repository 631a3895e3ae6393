"""The Feast repository (definitions) and its Python API (store.py)."""
