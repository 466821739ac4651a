"""Preference data for reward models and DPO: (prompt, chosen, rejected) rows read from columns
or built from instruction/response data, encoded as paired chosen/rejected token rows."""

from __future__ import annotations

import random

import datasets
import torch
from tokenizers import Tokenizer

from llmtune.config.schema import DataConfig, TokenizerConfig
from llmtune.data.chat import encode_chat, exchange, specials
from llmtune.data.labelled import (
    IGNORE,
    ROW_COLUMN,
    Encoded,
    encode_texts,
    instruction_rows,
    load_labelled,
    no_target,
    pad_rows,
    token_ids,
)
from llmtune.errors import DataError

PAIR_MODES = ("columns", "other_response", "shuffled_response")
REJECTED = "rejected_"  # prefix of the rejected sequence's tensors in a pair batch


def preference_columns(d: DataConfig) -> list[str]:
    """The data columns a preference run reads (built pairs start from sft columns)."""
    if d.preference_pairs == "columns":
        return [d.prompt_column, d.chosen_column, d.rejected_column]
    return [d.instruction_column, d.response_column]


def load_preferences(d: DataConfig, seed: int) -> dict[str, datasets.Dataset]:
    """Train/validation splits with columns prompt, chosen, rejected (see `build_pairs`)."""
    raw = load_labelled(d, preference_columns(d), seed)
    return {
        split: datasets.Dataset.from_dict(as_pairs(ds, d, seed, split)) for split, ds in raw.items()
    }


def as_pairs(ds: datasets.Dataset, d: DataConfig, seed: int, split: str) -> dict[str, list[str]]:
    """A split (read with `preference_columns`) as prompt/chosen/rejected lists."""
    if d.preference_pairs == "columns":
        rows = {
            "prompt": [str(x) for x in ds[d.prompt_column]],
            "chosen": [str(x) for x in ds[d.chosen_column]],
            "rejected": [str(x) for x in ds[d.rejected_column]],
        }
        if ROW_COLUMN in ds.column_names:  # file row numbers, for data.overlong=error messages
            rows[ROW_COLUMN] = list(ds[ROW_COLUMN])
        return rows
    rows = build_pairs(
        ds[d.instruction_column], ds[d.response_column], d.preference_pairs, f"{seed}:{split}"
    )
    if not rows["prompt"]:
        raise DataError(
            f"data.{split}: data.preference_pairs={d.preference_pairs} built no pair (every "
            "response is the same or a single word); use other_response or more varied data"
        )
    return rows


def build_pairs(
    instructions: list, responses: list, mode: str, seed: int | str
) -> dict[str, list[str]]:
    """Pairs from instruction data without human rankings, deterministic for a seed.

    The true response is always chosen. `other_response`: the rejected one is another row's
    response (to a different instruction): fluent but off-topic. `shuffled_response`: the
    true response with its words shuffled: on-topic but not fluent. Rows where no distinct
    rejected text exists are skipped.
    """
    rng = random.Random(seed)
    texts = [str(r) for r in responses]
    asks = [str(i) for i in instructions]
    order = list(range(len(texts)))
    rng.shuffle(order)
    out: dict[str, list[str]] = {"prompt": [], "chosen": [], "rejected": []}
    for pos, i in enumerate(order):
        if mode == "other_response":
            rejected = _other_response(asks, texts, order, pos)
        else:
            words = texts[i].split()
            rng.shuffle(words)
            rejected = " ".join(words)
        if rejected is None or rejected.split() == texts[i].split():
            continue
        out["prompt"].append(asks[i])
        out["chosen"].append(texts[i])
        out["rejected"].append(rejected)
    return out


def _other_response(asks: list[str], texts: list[str], order: list[int], pos: int) -> str | None:
    """The response of the next row in the shuffled order whose instruction and response
    both differ from row order[pos] (a shifted permutation never pairs a row with itself)."""
    i = order[pos]
    for step in range(1, len(order)):
        j = order[(pos + step) % len(order)]
        if asks[j] != asks[i] and texts[j] != texts[i]:
            return texts[j]
    return None


def encode_pairs(tok: Tokenizer, segments: bool, rows: dict, eos_id: int, max_len: int) -> Encoded:
    """Chosen and rejected token rows of each pair (`rows`: prompt, chosen, rejected).

    `segments` (an encoder): text pairs [CLS] prompt [SEP] response [SEP]. Otherwise (a
    decoder, prompts already templated) prompt + response rows whose response tokens are the
    targets; a pair whose prompt fills the window is dropped."""
    if segments:
        chosen = encode_texts(tok, rows["prompt"], rows["chosen"], max_len)
        rejected = encode_texts(tok, rows["prompt"], rows["rejected"], max_len)
        out = dict(chosen.rows)
        out.update({REJECTED + k: v for k, v in rejected.rows.items()})
        overlong = {**chosen.overlong}
        for i, n in rejected.overlong.items():
            overlong[i] = max(n, overlong.get(i, 0))
        return Encoded(out, overlong)
    out: dict[str, list] = {k: [] for k in ("input_ids", "labels")}
    out.update({REJECTED + k: [] for k in ("input_ids", "labels")})
    overlong, dropped = {}, 0
    prompts = token_ids(tok, rows["prompt"])  # encoded once for both responses
    pairs = zip(
        instruction_rows(prompts, token_ids(tok, rows["chosen"]), eos_id, max_len),
        instruction_rows(prompts, token_ids(tok, rows["rejected"]), eos_id, max_len),
    )
    for i, ((c_ids, c_labels, c_len), (r_ids, r_labels, r_len)) in enumerate(pairs):
        if max(c_len, r_len) > max_len:  # split position -> full length (data.overlong)
            overlong[i] = max(c_len, r_len)
        if no_target(c_labels) or no_target(r_labels):
            dropped += 1
            continue
        for prefix, ids, labels in (("", c_ids, c_labels), (REJECTED, r_ids, r_labels)):
            out[prefix + "input_ids"].append(ids)
            out[prefix + "labels"].append(labels)
    return Encoded(out, overlong, dropped)


def encode_chat_pairs(tok: Tokenizer, chat: TokenizerConfig, rows: dict, max_len: int) -> Encoded:
    """Chosen and rejected rows of each pair (`rows`: raw prompt, chosen, rejected) laid out by
    a chat model's template, as sft lays out an instruction/response row: the prompt as a user
    turn, the response as the assistant's, whose tokens (closing markup included) are the
    targets. A pair with either response cut away entirely by max_len is dropped."""
    encoded = {}
    for prefix, column in (("", "chosen"), (REJECTED, "rejected")):
        conversations = [exchange(p, r) for p, r in zip(rows["prompt"], rows[column])]
        encoded[prefix] = encode_chat(
            tok, chat.chat_template, conversations, specials(chat), max_len
        )
    out: dict[str, list] = {p + k: [] for p in encoded for k in ("input_ids", "labels")}
    overlong, dropped = {}, 0
    for i in range(len(rows["prompt"])):
        lengths = [long.get(i, 0) for _, _, long in encoded.values()]
        if max(lengths):  # split position -> full length (data.overlong)
            overlong[i] = max(lengths)
        if any(no_target(targets[i]) for _, targets, _ in encoded.values()):
            dropped += 1
            continue
        for prefix, (ids, targets, _) in encoded.items():
            out[prefix + "input_ids"].append(ids[i])
            out[prefix + "labels"].append(targets[i])
    return Encoded(out, overlong, dropped)


def pair_batch(encoded: Encoded, pad_id: int) -> dict[str, torch.Tensor]:
    """Tensors of encoded pairs, chosen and rejected padded to one width (with masks)."""
    rows = encoded.rows
    width = max(
        (len(r) for k, r_list in rows.items() if "input_ids" in k for r in r_list), default=1
    )
    out = {}
    for prefix in ("", REJECTED):
        ids = rows[prefix + "input_ids"]
        out[prefix + "input_ids"] = pad_rows(ids, width, pad_id)
        out[prefix + "attention_mask"] = pad_rows([[1] * len(r) for r in ids], width, 0)
        if prefix + "labels" in rows:
            out[prefix + "labels"] = pad_rows(rows[prefix + "labels"], width, IGNORE)
        if prefix + "token_type_ids" in rows:
            out[prefix + "token_type_ids"] = pad_rows(rows[prefix + "token_type_ids"], width, 0)
    return out
