"""Scoring stage: Ray Data batch scoring of every user with ``models:/<name>@champion``.

Loads models by registry URI only and never imports ``training``. Not built yet ([5/6]).
"""
