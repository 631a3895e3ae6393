"""Training stage: ID encoders (SASRec, BERT4Rec, GRU4Rec), the multimodal E4SRec model, DeepSpeed
training, full-ranking evaluation, MLflow tracking and registry-facing promotion.

Reads training examples from the Feast ``training`` feature service; writes only to MLflow.
Not built yet: see the issue tracker ([4/6]).
"""
