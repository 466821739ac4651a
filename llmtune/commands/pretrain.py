"""`llmtune pretrain` (placeholder while the parts land)."""
from pathlib import Path
from llmtune.config.schema import RunConfig
def run(config: RunConfig, run_dir: Path) -> None:
    print(config, run_dir)
