"""`llmtune prune`: importance of blocks and MLP neurons measured on data, and the surgery
that leaves a smaller normal model."""
