"""Typed, frozen run configuration: the only shape a composed Hydra config may take.

Every section is a dataclass; a choice section's class is its choice's (model.family,
objective.name, method.name, data.source: see config/choices.py). `config/build.py` turns a
composed config into a `RunConfig`, refusing unknown keys and invalid values. Each field's
comment is its `--help` line (config/help.py), and its default equals the shipped YAML's
(tests/unit/config/test_defaults.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

from llmtune.config.deploy import PruneConfig, ServeConfig, positive
from llmtune.errors import ConfigError

# Field metadata of keys the builder fills in: never given in YAML or on the command line.
BUILT = {"set_by": "build"}


@dataclass(frozen=True)
class ModelConfig:
    """Keys every model family has. Each family (models/<family>.py) subclasses this with its
    own keys; `model.family` picks the class, and a key of another family is refused."""

    family: str = ""  # registered family name (models/registry.py): bert, gpt, ...
    vocab_size: int = 0  # 0 = take it from the tokenizer
    d_model: int = 128  # width of the residual stream
    n_layers: int = 2  # transformer blocks
    n_heads: int = 2  # attention heads per block
    d_ff: int = 512  # hidden width of each block's MLP
    max_seq_len: int = 128  # training/eval sequence length
    dropout: float = 0.1  # hidden and embedding dropout
    attn_dropout: float = 0.1  # dropout on attention probabilities
    tie_embeddings: bool = True  # the output projection shares the token embedding table

    @property
    def max_positions(self) -> int:
        """The longest sequence the architecture takes (a learned position table's size)."""
        return self.max_seq_len

    @property
    def kv_heads(self) -> int:
        """Key/value heads per block (fewer than n_heads under grouped-query attention)."""
        return self.n_heads

    @property
    def head_size(self) -> int:
        """Width of one attention head."""
        return self.d_model // self.n_heads

    def check(self) -> None:
        """Raise ConfigError naming the first invalid key (families add their own checks)."""
        for key in ("d_model", "n_layers", "n_heads", "d_ff", "max_seq_len"):
            positive(f"model.{key}", getattr(self, key))
        if self.vocab_size < 0:
            raise ConfigError(f"model.vocab_size={self.vocab_size}: must be >= 0 (0 = tokenizer's)")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"model.n_heads={self.n_heads} does not divide model.d_model={self.d_model}"
            )
        if self.max_seq_len > self.max_positions:
            raise ConfigError(
                f"model.max_seq_len={self.max_seq_len} exceeds the position table "
                f"({self.max_positions} positions)"
            )
        for key in ("dropout", "attn_dropout"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"model.{key}={getattr(self, key)}: must be in [0, 1)")


@dataclass(frozen=True)
class FinetuneModel:
    """finetune's model section: the architecture comes from init_from. These keys adjust the
    loaded model; any other model key given must equal the checkpoint's (checked once read)."""

    max_seq_len: int = 0  # 0 = the checkpoint's own length (shortened so a soft prompt fits)
    dropout: float = 0.1  # hidden and embedding dropout while fine-tuning
    attn_dropout: float = 0.1  # dropout on attention probabilities while fine-tuning
    # every other model.<key>=<value> given, as (key, value) pairs: must match the checkpoint
    expected: tuple[tuple[str, object], ...] = field(default=(), metadata=BUILT)


@dataclass(frozen=True)
class TokenizerConfig:
    """How the run gets its tokenizer: trained on the run's corpus, or loaded from a file."""

    kind: str = "auto"  # auto (the model family's) | wordpiece | bpe | file
    vocab_size: int = 8000  # size of a tokenizer trained on the run's corpus
    min_frequency: int = 2  # a trained tokenizer's pieces occur at least this often
    lowercase: bool = True  # wordpiece only; byte-level BPE is always case-preserving
    path: str = ""  # kind=file: a tokenizer.json or a Hugging Face tokenizer folder
    # train on an evenly spaced sample of this many documents (0 = all; streams: the first)
    train_docs: int = 0
    # a pretrained chat model's (filled from init_from's tokenizer_config.json or GGUF):
    chat_template: str = ""  # Jinja chat template; sft lays rows out with it, evaluate prompts too
    bos_token: str = ""  # the begin-of-text token the chat template reads
    eos_token: str = ""  # the chat template's end-of-turn token: generation stops there


@dataclass(frozen=True)
class MixSourceConfig:
    """One corpus of data=mix: where its text comes from and its share of the training rows;
    cleaning (min_chars, dedupe, ...) follows data.*."""

    weight: float = 1.0  # relative share of training rows (normalised over the mix)
    source: str = "files"  # files | hub | builtin
    train: str = ""  # files: path or glob
    validation: str = ""  # files: path or glob; empty = carve data.validation_fraction
    name: str = ""  # hub: dataset name
    config: str = ""  # hub: dataset config
    split: str = "train"  # hub: split
    text_column: str = ""  # empty = data.text_column


@dataclass(frozen=True)
class DataConfig:
    """Where text comes from and how it is cleaned and split; `data.source` picks the class
    (this one: builtin, the Python documentation shipped with CPython)."""

    source: str = "builtin"  # builtin | files | hub | mix
    train: str = ""  # files: path or glob of the training split
    validation: str = ""  # files: path or glob; empty = carve validation_fraction out of train
    test: str = ""  # files: path or glob of held-out data (evaluate, export's int8 metric)
    validation_fraction: float = 0.05  # share of train held out when data.validation is empty
    min_chars: int = 20  # drop documents shorter than this after stripping
    dedupe: bool = False  # drop exact duplicate documents
    max_docs: int = 0  # keep at most this many documents (0 = all)
    cache_dir: str = ""  # empty = $LLMTUNE_CACHE or ~/.cache/llmtune
    store_dir: str = ""  # prepared token stores (llmtune prepare); empty = <cache_dir>/stores
    num_proc: int = 1  # processes tokenizing a corpus (1: one, with the tokenizer's threads)
    # labelled data: batch rows of similar length together (less padding, same epoch coverage)
    group_by_length: bool = True

    # What the data path asks of every source; only hub streams (HubData.streaming) and only
    # mix holds several corpora (MixData.mix): for the others these are constants, not keys.
    streaming = False
    mix = MappingProxyType({})


@dataclass(frozen=True)
class FilesData(DataConfig):
    """Local .txt/.json/.jsonl/.csv/.parquet files: plain text, or labelled columns."""

    source: str = "files"  # builtin | files | hub | mix
    min_chars: int = 1  # drop documents shorter than this after stripping
    text_column: str = "text"  # the text of .json/.jsonl/.csv/.parquet rows
    text_pair_column: str = ""  # seq_cls on pairs (and contrastive positives): the second text
    label_column: str = "label"  # seq_cls / zero-shot labels; absent in a file = predict only
    tokens_column: str = "tokens"  # token_cls: a list of words
    tags_column: str = "tags"  # token_cls: a list of tags, one per word
    instruction_column: str = "instruction"  # sft, ppo: the instruction
    response_column: str = "response"  # sft: the response to learn
    # sft: a column of conversations (lists of {role, content}) laid out by the model's chat
    # template, trained on the assistant turns; empty = instruction/response columns
    messages_column: str = ""
    prompt_column: str = "prompt"  # reward / dpo pairs: the prompt
    chosen_column: str = "chosen"  # reward / dpo pairs: the preferred response
    rejected_column: str = "rejected"  # reward / dpo pairs: the other response
    # reward / dpo: columns (prompt, chosen, rejected) | other_response (another row's response
    # is rejected) | shuffled_response, the last two built from sft data
    preference_pairs: str = "columns"
    negative_column: str = ""  # contrastive triplets: a hard negative per row (optional)
    # labelled rows longer than model.max_seq_len: truncate (counted) | drop (counted) | error
    overlong: str = "truncate"
    # sft: several short examples share a row of model.max_seq_len, each attending only to
    # itself from position 0 (fewer rows and less padding, the same loss per target token)
    packing: bool = False


@dataclass(frozen=True)
class HubData(DataConfig):
    """A Hugging Face Hub dataset (needs network, or the datasets cache)."""

    source: str = "hub"  # builtin | files | hub | mix
    min_chars: int = 1  # drop documents shorter than this after stripping
    name: str = ""  # the dataset's name on the Hub
    config: str = ""  # the dataset's config (subset)
    split: str = "train"  # the split used for training
    text_column: str = "text"  # the column holding the text
    streaming: bool = False  # true: streams a Hub dataset, tokenized as training reads it


@dataclass(frozen=True)
class MixData(DataConfig):
    """Several corpora drawn by weight: data.mix={<name>:{train:<path>,weight:<w>},...}."""

    source: str = "mix"  # builtin | files | hub | mix
    min_chars: int = 1  # drop documents shorter than this after stripping
    text_column: str = "text"  # the text column of a corpus that names none
    mix: dict[str, MixSourceConfig] = field(default_factory=dict)  # name -> corpus


DATA_SOURCES: dict[str, type[DataConfig]] = {
    "builtin": DataConfig,
    "files": FilesData,
    "hub": HubData,
    "mix": MixData,
}


@dataclass(frozen=True)
class ObjectiveConfig:
    """Keys every objective has; each objective (objectives/<name>.py) subclasses this with its
    own keys; `objective.name` picks the class, and another objective's key is refused."""

    name: str = "auto"  # registered objective name; auto = the model family's native one


@dataclass(frozen=True)
class OptimConfig:
    """AdamW and its learning-rate schedule."""

    name: str = "adamw"  # the optimizer (adamw: no decay on biases, norms and embeddings)
    lr: float = 5e-4  # peak learning rate
    weight_decay: float = 0.01  # decoupled weight decay of matrices
    beta1: float = 0.9  # AdamW's first-moment decay
    beta2: float = 0.999  # AdamW's second-moment decay
    eps: float = 1e-8  # AdamW's denominator epsilon
    schedule: str = "cosine"  # cosine | linear | constant (after warmup)
    warmup_steps: int = 10  # linear warmup from 0 to lr
    min_lr_ratio: float = 0.1  # cosine/linear decay to lr * min_lr_ratio
    grad_clip: float = 1.0  # max global grad norm; 0 disables


@dataclass(frozen=True)
class HardwareConfig:
    """Device, precision, threads and the processes of a run."""

    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    threads: int = 0  # CPU threads for torch; 0 = all cores
    compile: bool = False  # torch.compile the backbone and heads (first steps compile)
    # recompute each block's activations in backward: ~1/3 more compute, far less memory
    activation_checkpointing: bool = False
    num_workers: int = 0  # loader processes reading batches ahead of the step (0: in-process)
    world_size: int = 1  # set by the launcher; used to check batch divisibility
    strategy: str = "none"  # none | ddp | fsdp (used when more than one process runs)
    nproc: int = 1  # local worker processes llmtune starts itself (or use torchrun)
    timeout: str = "5m"  # collective timeout: a dead or stuck rank ends the job after this


@dataclass(frozen=True)
class TrainConfig:
    """How long to train, the batch layout, and when to log, evaluate and save."""

    max_steps: int = 200  # optimizer steps
    max_tokens: int = 0  # stop after this many input tokens (0 = no limit)
    max_time: str = ""  # e.g. "90s", "10m", "2h"; empty = no limit
    global_batch_size: int = 16  # rows per optimizer step, over all processes
    micro_batch_size: int = 16  # rows per forward; the rest is gradient accumulation
    eval_every: int = 50  # steps between validations
    eval_batches: int = 20  # validation micro-batches per evaluation (0 = whole split)
    save_every: int = 100  # steps between checkpoints
    log_every: int = 10  # steps between train records
    # the `best` checkpoint: val_loss, val_accuracy, val_f1_macro, val_entity_f1 (token_cls),
    # ... (loss/perplexity: lower is better, anything else: higher); judged at saved steps
    best_metric: str = "val_loss"
    on_nonfinite: str = "stop"  # NaN/inf loss or gradients: stop | skip (the step, counted)
    patience: int = 0  # stop after this many evaluations without a better best_metric; 0 = off
    # stop after this many passes over the training rows (0 = off), resolved into steps
    # before training; a train.max_steps also given (not the command's default) wins if smaller
    max_epochs: int = 0


@dataclass(frozen=True)
class CheckpointConfig:
    """Resuming and keeping checkpoints of the run directory."""

    resume: str = "auto"  # auto | never | <path to a step folder>
    keep_last: int = 3  # older step folders kept (latest and best are never deleted)
    fallback: bool = False  # auto resume: use the newest intact checkpoint if `latest` is damaged
    overwrite: bool = False  # resume=never into a folder holding checkpoints: move them aside


@dataclass(frozen=True)
class ScoringConfig:
    """How held-out data is batched when a checkpoint is scored (export: int8's metric)."""

    batch_size: int = 16  # rows per forward
    max_examples: int = 0  # score at most this many test examples (0 = all)


@dataclass(frozen=True)
class EvaluateConfig(ScoringConfig):
    """`llmtune evaluate`: batching, sampling for generation, zero/few-shot label scoring."""

    max_new_tokens: int = 64  # generation: new tokens per prompt, at most
    temperature: float = 0.0  # 0 = greedy decoding; > 0 samples from softmax(logits / T)
    top_k: int = 0  # sample among the k likeliest tokens only (0 = all)
    top_p: float = 1.0  # sample from the smallest set holding this much probability (1 = all)
    stop_at_eos: bool = True  # generation ends at the end-of-text token
    num_beams: int = 1  # > 1: beam search (encoder-decoders; temperature 0)
    length_penalty: float = 1.0  # beam scores are sum log p / length**length_penalty
    # sft checkpoints: also generate answers to data.test and score them against its
    # responses (exact match, ROUGE, BLEU, chrF); seq2seq checkpoints always do
    generative_metrics: bool = False
    # zero/few-shot classification with a decoder: score " <word>" after the filled template
    label_words: tuple[str, ...] = ()  # one word (or phrase) per label
    label_names: tuple[str, ...] = ()  # the data's label per word; empty = the words themselves
    template: str = "{text}\nAnswer:"  # {text} (and {text_pair}) are filled from the data
    few_shot: int = 0  # labelled examples from data.train put before each prompt
    # embedding quality (kNN / linear probe on data.test labels); contrastive runs always
    embeddings: bool = False
    pooling: str = ""  # embeddings: cls | mean; empty = the checkpoint's objective.pooling
    knn_k: int = 1  # embeddings: neighbours voting in the leave-one-out kNN accuracy


@dataclass(frozen=True)
class MethodConfig:
    """Keys every fine-tuning method has; each method (adapters/<method>.py) subclasses this
    with its own keys (this one: full, which trains every weight)."""

    name: str = "full"  # full | freeze | lora | prefix | prompt

    @property
    def positions(self) -> int:
        """Positions of the model's table the method takes before the real tokens."""
        return 0

    def check(self) -> None:
        """Raise ConfigError naming the first invalid key (methods add their own checks)."""


@dataclass(frozen=True)
class ExportConfig:
    """`llmtune export`: replacing an output folder and how strictly exports are verified."""

    overwrite: bool = False  # replace a non-empty `out` folder, once the new export verifies
    atol: float = 1e-4  # largest |logit difference| an export may show against llmtune's model
    # int8, int8wo, int4wo: relative worsening of the data.test metric allowed
    max_metric_drop: float = 0.02
    latency_runs: int = 10  # int8, int8wo, int4wo: timed batches per model (median reported)
    gguf_type: str = "f16"  # gguf: the tensor type of the file's matrices, f16 | f32


@dataclass(frozen=True)
class TaskConfig:
    """One task of objective=multitask: an objective, its loss weight and (optionally) data."""

    objective: str = ""  # registered objective name; empty = the task's key (tasks.mlm: mlm)
    weight: float = 1.0  # multiplies the task's mean loss in the training loss
    train: str = ""  # this task's files; empty = data.train
    validation: str = ""  # empty = data.validation, or a share carved out of this task's train
    text_column: str = ""  # empty = data.text_column
    label_column: str = ""  # empty = data.label_column
    max_docs: int = 0  # 0 = data.max_docs


@dataclass(frozen=True)
class RunConfig:
    """A run: each command composes the sections it uses (see its configs/<command>.yaml)."""

    command: str = "pretrain"  # the subcommand (set by its primary config)
    seed: int = 0  # seeds data order, masks, dropout and initialisation
    verbose: bool = False  # show third-party log lines and warnings on the console too
    # finetune: FinetuneModel until the checkpoint's own config replaces it
    model: ModelConfig | FinetuneModel = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    # evaluate, export, prune, serve: a step folder or a run directory (its best, else latest)
    ckpt: str = ""
    prompts: tuple[str, ...] = ()  # evaluate: prompts to complete, or files of one per line
    # export: a ScoringConfig (int8 scores data.test)
    evaluate: EvaluateConfig | ScoringConfig = field(default_factory=EvaluateConfig)
    init_from: str = ""  # finetune: a checkpoint (step folder or run dir) or hf:<folder>
    method: MethodConfig = field(default_factory=MethodConfig)
    format: str = ""  # export: hf | gguf | onnx | torchscript | pt2 | int8 | int8wo | int4wo
    out: str = ""  # export, prune: the folder to write
    export: ExportConfig = field(default_factory=ExportConfig)
    tasks: dict[str, TaskConfig] = field(default_factory=dict)  # objective=multitask
    serve: ServeConfig = field(default_factory=ServeConfig)  # serve: the HTTP server
    prune: PruneConfig = field(default_factory=PruneConfig)  # prune: what to remove
    runs: tuple[str, ...] = ()  # report: run and sweep directories (positional arguments)


# Sections whose class depends on the command (the others' is RunConfig's annotation).
COMMAND_CLASSES: dict[str, dict[str, type]] = {
    "finetune": {"model": FinetuneModel},
    "export": {"evaluate": ScoringConfig},
    "prune": {"evaluate": ScoringConfig},
}
