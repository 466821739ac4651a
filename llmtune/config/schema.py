"""Typed, frozen run configuration: the only shape a composed Hydra config may take.

Every section is a dataclass; `config/build.py` turns a composed DictConfig into a
`RunConfig`, refusing unknown keys and invalid values before anything is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelConfig:
    """Architecture. `family` picks the wiring (bert: post-LN encoder, gpt: pre-LN decoder)."""

    family: str = "gpt"  # "bert" | "gpt"
    vocab_size: int = 0  # 0 = take it from the tokenizer
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 2
    d_ff: int = 512
    max_seq_len: int = 128  # training/eval sequence length; must fit in n_positions
    n_positions: int = 512  # size of the learned position table
    dropout: float = 0.1  # hidden and embedding dropout
    attn_dropout: float = 0.1
    layer_norm_eps: float = 1e-12  # BERT uses 1e-12, GPT-2 uses 1e-5
    type_vocab_size: int = 2  # BERT token types; ignored by gpt
    tie_embeddings: bool = True


@dataclass(frozen=True)
class TokenizerConfig:
    """How the run gets its tokenizer: trained on the run's corpus, or loaded from a file."""

    kind: str = "auto"  # auto (wordpiece for bert, bpe for gpt) | wordpiece | bpe | file
    vocab_size: int = 8000
    min_frequency: int = 2
    lowercase: bool = True  # wordpiece only; byte-level BPE is always case-preserving
    path: str = ""  # kind=file: a tokenizer.json or a Hugging Face tokenizer folder
    train_docs: int = 0  # train on at most this many documents (0 = all)


@dataclass(frozen=True)
class DataConfig:
    """Where text comes from and how it is cleaned and split."""

    source: str = "builtin"  # builtin | files | hub
    train: str = ""  # files: path or glob
    validation: str = ""  # files: path or glob; empty = carve validation_fraction out of train
    test: str = ""
    text_column: str = "text"
    # labelled data (finetune and evaluate): which column holds what
    text_pair_column: str = ""  # seq_cls on pairs: the second text
    label_column: str = "label"  # seq_cls / zero-shot labels; absent in a file = predict only
    tokens_column: str = "tokens"  # token_cls: a list of words
    tags_column: str = "tags"  # token_cls: a list of tags, one per word
    instruction_column: str = "instruction"  # sft
    response_column: str = "response"  # sft
    # reward / dpo: (prompt, chosen, rejected) columns, or pairs built from sft data:
    # columns | other_response (another row's response is rejected) | shuffled_response
    prompt_column: str = "prompt"
    chosen_column: str = "chosen"
    rejected_column: str = "rejected"
    preference_pairs: str = "columns"
    negative_column: str = ""  # contrastive triplets: a hard negative per row (optional)
    name: str = ""  # hub: dataset name
    config: str = ""  # hub: dataset config
    split: str = "train"  # hub: split used for training
    validation_fraction: float = 0.05
    min_chars: int = 1  # drop documents shorter than this after stripping
    dedupe: bool = False  # drop exact duplicate documents
    max_docs: int = 0  # 0 = all
    # labelled rows longer than model.max_seq_len: truncate (counted) | drop (counted) | error
    overlong: str = "truncate"
    cache_dir: str = ""  # empty = $LLMTUNE_CACHE or ~/.cache/llmtune
    num_proc: int = 1
    # labelled data: batch rows of similar length together (less padding, same epoch coverage)
    group_by_length: bool = True


@dataclass(frozen=True)
class ObjectiveConfig:
    """Training objective, chosen by registered name. Fields unused by a name are ignored."""

    name: str = "auto"  # auto (the family's native objective) | mlm | clm | mlm_nsp
    mask_prob: float = 0.15
    mask_token_frac: float = 0.8  # of chosen positions: replaced by [MASK]
    random_token_frac: float = 0.1  # replaced by a random token; the rest stay unchanged
    nsp_prob: float = 0.5  # mlm_nsp: share of pairs whose B segment is random
    separate_documents: bool = True  # clm: packed documents never attend to each other
    class_weights: str = "none"  # seq_cls/token_cls: none | balanced (inverse label frequency)
    # sft: the prompt before each response; {instruction} is filled from data.instruction_column
    prompt_template: str = "### Instruction:\n{instruction}\n\n### Response:\n"
    # dpo: strength of the implicit KL to the reference; loss: dpo (sigmoid) | ipo
    beta: float = 0.1
    loss: str = "dpo"
    # ppo: reward checkpoint, KL penalty per token, GAE, clipping, rollout sampling
    reward_model: str = ""
    kl_coef: float = 0.05
    gamma: float = 1.0
    lam: float = 0.95
    clip_range: float = 0.2
    value_clip: float = 0.2
    value_coef: float = 0.5
    ppo_epochs: int = 2  # optimizer steps on each rollout before sampling a new one
    max_new_tokens: int = 24
    sample_temperature: float = 1.0  # ppo rollouts (1 = the policy's own distribution)
    # contrastive: InfoNCE over cosine similarities / temperature, in-batch negatives
    temperature: float = 0.05
    pooling: str = "mean"  # cls (bert's first token) | mean (over real tokens)
    # auto (pair if data.text_pair_column, else dropout) | dropout (two dropout views of a
    # text, unsupervised) | pair (data.text_pair_column) | label (same data.label_column)
    positives: str = "auto"


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adamw"
    lr: float = 5e-4
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    schedule: str = "cosine"  # cosine | linear | constant
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1  # cosine/linear decay to lr * min_lr_ratio
    grad_clip: float = 1.0  # max global grad norm; 0 disables


@dataclass(frozen=True)
class HardwareConfig:
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    threads: int = 0  # CPU threads for torch; 0 = all cores
    compile: bool = False  # torch.compile the backbone and heads (first steps compile)
    # recompute each block's activations in backward: ~1/3 more compute, far less memory
    activation_checkpointing: bool = False
    num_workers: int = 0  # unused: batches are slices of in-memory tensors (data/loader.py)
    world_size: int = 1  # set by the launcher; used to check batch divisibility
    strategy: str = "none"  # none | ddp | fsdp (used when more than one process runs)
    nproc: int = 1  # local worker processes llmtune starts itself (or use torchrun)
    timeout: str = "5m"  # collective timeout: a dead or stuck rank ends the job after this


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int = 100
    max_tokens: int = 0  # 0 = no limit
    max_time: str = ""  # e.g. "90s", "10m", "2h"; empty = no limit
    global_batch_size: int = 16
    micro_batch_size: int = 16
    eval_every: int = 50
    eval_batches: int = 20  # validation micro-batches per evaluation (0 = whole split)
    save_every: int = 100
    log_every: int = 10
    # the `best` checkpoint: val_loss, val_accuracy, val_f1_macro, val_entity_f1 (token_cls),
    # ... (loss/perplexity: lower is better, anything else: higher); judged at saved steps
    best_metric: str = "val_loss"
    on_nonfinite: str = "stop"  # NaN/inf loss or gradients: stop | skip (the step, counted)
    patience: int = 0  # stop after this many evaluations without a better best_metric; 0 = off


@dataclass(frozen=True)
class CheckpointConfig:
    resume: str = "auto"  # auto | never | <path to a step folder>
    keep_last: int = 3
    fallback: bool = False  # auto resume: use the newest intact checkpoint if `latest` is damaged


@dataclass(frozen=True)
class EvaluateConfig:
    """`llmtune evaluate`: batching, sampling for generation, zero/few-shot label scoring."""

    batch_size: int = 16
    max_examples: int = 0  # evaluate at most this many test examples (0 = all)
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy decoding; > 0 samples from softmax(logits / T)
    top_k: int = 0  # sample among the k likeliest tokens only (0 = all)
    top_p: float = 1.0  # sample from the smallest set holding this much probability (1 = all)
    stop_at_eos: bool = True
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
    """How finetune adapts the weights: full | freeze | lora | prefix | prompt."""

    name: str = "full"
    freeze_layers: int = -1  # freeze: embeddings + this many bottom blocks; -1 = all but heads
    rank: int = 8  # lora
    alpha: float = 16.0  # lora: the update is scaled by alpha / rank
    dropout: float = 0.0  # lora: dropout on the adapter's input
    targets: tuple[str, ...] = ("qkv", "proj")  # lora: Linear names (qkv, proj, fc, attn.proj)
    n_tokens: int = 16  # prefix: key/value positions per layer; prompt: soft prompt length
    prompt_encoder: str = "none"  # prompt: none | mlp | lstm (P-tuning's reparametrisation)
    encoder_hidden: int = 0  # prompt encoder / prefix MLP width; 0 = model width


@dataclass(frozen=True)
class ExportConfig:
    """`llmtune export`: replacing an output folder and how strictly exports are verified."""

    overwrite: bool = False  # replace a non-empty `out` folder, once the new export verifies
    atol: float = 1e-4  # largest |logit difference| an export may show against llmtune's model
    max_metric_drop: float = 0.02  # int8: relative worsening of the data.test metric allowed
    latency_runs: int = 10  # int8: timed batches per model (median reported)


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
    command: str = "pretrain"
    seed: int = 0
    verbose: bool = False  # show third-party log lines and warnings on the console too
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    ckpt: str = ""  # evaluate: a step folder or a run directory (its best, else latest)
    prompts: tuple[str, ...] = ()  # evaluate: prompts to complete, or files of one per line
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    init_from: str = ""  # finetune: a checkpoint (step folder or run dir) or hf:<folder>
    method: MethodConfig = field(default_factory=MethodConfig)
    format: str = ""  # export: hf | onnx | torchscript | pt2 | int8
    out: str = ""  # export: the folder to write
    export: ExportConfig = field(default_factory=ExportConfig)
    tasks: dict[str, TaskConfig] = field(default_factory=dict)  # objective=multitask
    runs: tuple[str, ...] = ()  # report: run and sweep directories (positional arguments)
