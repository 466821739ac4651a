"""The model behind `llmtune serve`: a checkpoint (or hf:<folder>) loaded once, what it can
serve (completions, embeddings, classification), and the tokenizing around it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from llmtune import checkpoint
from llmtune.adapters import merge_lora
from llmtune.data.labelled import encode_texts, padded_batch
from llmtune.foreign import HF_PREFIX
from llmtune.loading import LoadedCheckpoint, load_checkpoint
from llmtune.models import Kind
from llmtune.models.pooling import pool_hidden
from llmtune.objectives.contrastive import embedding_pooling
from llmtune.objectives.sft import PromptedConfig


class RequestError(ValueError):
    """A request the model cannot answer as asked: a 400 with this one-line message."""


@dataclass
class Served:
    loaded: LoadedCheckpoint
    name: str  # what responses call the model

    @property
    def can_generate(self) -> bool:
        return self.loaded.model.kind == Kind.DECODER and "lm" in self.loaded.model.heads

    @property
    def can_embed(self) -> bool:
        """Encoders, and any model trained as a sentence encoder (contrastive)."""
        objective = self.loaded.meta.get("objective", "")
        return self.loaded.model.kind == Kind.ENCODER or objective == "contrastive"

    @property
    def can_classify(self) -> bool:
        return "seq_cls" in self.loaded.model.heads

    @property
    def context(self) -> int:
        return self.loaded.config.model.max_seq_len

    def endpoints(self) -> list[str]:
        routes = ["/health", "/v1/models"]
        if self.can_generate:
            routes += ["/v1/completions", "/v1/chat/completions"]
        if self.can_embed:
            routes.append("/v1/embeddings")
        if self.can_classify:
            routes.append("/v1/classify")
        return routes

    def prompt_ids(self, text: str) -> list[int]:
        """Token ids of a prompt; one that leaves no room in the context is refused."""
        ids = self.loaded.tokenizer.encode(text, add_special_tokens=False).ids
        if len(ids) >= self.context:
            raise RequestError(
                f"prompt is {len(ids)} tokens; this model reads at most {self.context} "
                f"(prompt and completion together): shorten it"
            )
        return ids

    def chat_prompt(self, messages: list[tuple[str, str]]) -> str:
        """A conversation as the model's prompt: an instruction-tuned checkpoint's template
        around the conversation, otherwise `role: content` lines and `assistant:`."""
        objective = self.loaded.config.objective
        template = objective.prompt_template if isinstance(objective, PromptedConfig) else ""
        if template and not any(role == "assistant" for role, _ in messages):
            # single turn: the system text (if any) then the user's, as one instruction
            return template.replace("{instruction}", "\n\n".join(c for _, c in messages))
        lines = [f"{role}: {content}" for role, content in messages]
        if template:
            return template.replace("{instruction}", "\n".join(lines))
        return "\n".join([*lines, "assistant:"])

    def decode(self, ids: list[int]) -> str:
        eos = self.loaded.info.eos_id
        return self.loaded.tokenizer.decode([t for t in ids if t != eos])

    def _batch(self, texts: list[str], pairs: list[str] | None) -> dict[str, torch.Tensor]:
        """Rows as fine-tuning encodes them ([CLS] a [SEP] b [SEP] for BERT); over-long refused."""
        encoded = encode_texts(self.loaded.tokenizer, texts, pairs, self.context)
        for i, full in sorted(encoded.overlong.items())[:1]:
            raise RequestError(
                f"input[{i}] is {full} tokens; this model reads at most {self.context}"
            )
        batch = padded_batch(encoded, self.loaded.info.pad_id)
        device = next(self.loaded.model.parameters()).device
        keep = (*self.loaded.model.input_names, "attention_mask")
        return {k: v.to(device) for k, v in batch.items() if k in keep}

    @torch.inference_mode()
    def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        """L2-normalised sentence embeddings (the checkpoint's pooling), and tokens read."""
        batch = self._batch(texts, None)
        mask = batch["attention_mask"]
        hidden = self.loaded.model.features(batch)
        pooled = pool_hidden(hidden, mask, embedding_pooling(self.loaded.config.objective))
        vectors = nn.functional.normalize(pooled.float(), dim=-1)
        return vectors.cpu().tolist(), int(mask.sum())

    @torch.inference_mode()
    def classify(self, texts: list[str], pairs: list[str] | None) -> list[dict]:
        """Each text's label and the probability of every label."""
        batch = self._batch(texts, pairs)
        mask = batch["attention_mask"]
        model = self.loaded.model
        hidden = model.features(batch)
        probs = model.heads["seq_cls"](model.pool(hidden, mask.sum(1) - 1)).float().softmax(-1)
        names = [str(x) for x in self.loaded.meta.get("labels") or range(probs.shape[-1])]
        out = []
        for row in probs.cpu().tolist():
            best = max(range(len(row)), key=row.__getitem__)
            out.append({"label": names[best], "scores": dict(zip(names, row))})
        return out


def load_served(ckpt: str, device: torch.device, name: str) -> Served:
    """Load a checkpoint for serving: LoRA merged, eval mode; a Hugging Face decoder folder
    gets its (tied) lm head, which `hf:` loading leaves out."""
    folder = Path(ckpt).expanduser()
    if (folder / "config.json").is_file() and not (folder / checkpoint.META).is_file():
        ckpt = f"{HF_PREFIX}{folder}"  # a Hugging Face folder (e.g. written by format=hf)
    loaded = load_checkpoint(ckpt, device)
    merge_lora(loaded.model)
    model = loaded.model.eval()
    if model.kind == Kind.DECODER and not model.heads and loaded.config.model.tie_embeddings:
        model.heads["lm"] = model.family.build_head("lm", loaded.config.model, model.backbone, 0)
    return Served(loaded, name or _default_name(loaded))


def _default_name(loaded: LoadedCheckpoint) -> str:
    """The run folder's name (runs/sentiment/checkpoints/step-..: sentiment)."""
    step = loaded.step_dir
    return step.parent.parent.name if step.parent.name == "checkpoints" else step.name
