"""Shared ground for every stage: typed config, schemas, ids, workspace paths, atomic publishing.

This package imports no stage (``jobs``, ``training``, ``scoring``) and no CLI; a test enforces it.
"""
