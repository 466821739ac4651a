"""`llmtune report`: run folders read back, matplotlib figures, and the HTML page."""
