"""`python -m llmtune` runs the same CLI as the `llmtune` console script."""

from llmtune.cli import main

if __name__ == "__main__":
    main()
