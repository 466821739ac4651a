"""Evaluation: scoring checkpoints on held-out data (language models, tasks, preference
pairs, embeddings, zero/few-shot likelihood) and the reports `llmtune evaluate` writes."""
