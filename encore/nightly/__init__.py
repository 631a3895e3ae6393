"""The nightly orchestration (pipeline.py) and its run report (report.py): above every stage."""
