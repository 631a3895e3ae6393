"""Batch jobs that write the lake and the Feast sources (PySpark; Ray for content embeddings)."""
