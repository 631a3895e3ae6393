"""Scoring stage: Ray Data batch scoring of every user with ``models:/<name>@champion``.

Loads models by registry URI only and never imports ``training``. Entry point: :func:`scoring.batch.score`.
"""
