"""Training stage: ID encoders (SASRec, BERT4Rec, GRU4Rec), the multimodal E4SRec model, DeepSpeed
training, full-ranking evaluation, MLflow tracking and the registry.

Modules, in the order data flows through them:
    data.py      sequences from the listens table; item content and user context through Feast
    models/      one recommender a file, all ``SequenceModel`` (base.py)
    trainer.py   the DeepSpeed loop: checkpoints, resume, early stopping
    metrics.py   full-ranking (and, behind a warning, sampled) metrics
    train.py     ``train(cfg)``: one tracked run, registered as ``@challenger``
    tracking.py  MLflow setup, params, plots, aliases;  pyfunc.py  the logged model
    ablation.py  ``encore bench table``;  standard.py  ``encore bench standard``
Writes only to MLflow (and its own checkpoints under ``<home>/outputs``).
"""
