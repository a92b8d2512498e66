"""Typed recipe schema.

Field names follow Megatron-LM's command-line arguments (``--seq-length`` becomes
``seq_length``) wherever Megatron has one, so that users can carry their habits over.
Every recipe YAML is merged onto these dataclasses by OmegaConf, which rejects unknown
keys and wrong types. Each int, float and str field declares the values it accepts
(``number``, ``one_of``, ``text``: see bounds.py; a new field needs one too); ``validate.py``
checks those, then the combinations of fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from megatron_ext.config.bounds import number, one_of, text, texts

# Generous sanity limits: far beyond any real run, small enough that no count overflows int64
# or allocates without bound before the first step.
MAX_TOKENS = 2**26          # a sequence (64M tokens)
MAX_ITERS = 10**9
MAX_HEADS = 4096

CP_COMM_TYPES = ("a2a", "all_gather", "p2p", "a2a+p2p")
FP8_FORMATS = (None, "e4m3", "hybrid")
FP8_RECIPES = ("delayed", "tensorwise")
DECAY_STYLES = ("constant", "linear", "cosine")
PACKINGS = ("long", "short", "sft")


@dataclass
class ModelConfig:
    """A Llama-family decoder (Llama-2, Llama-3, Llama-3.1, SmolLM2...)."""

    num_layers: int = number(32, ge=1, le=4096)
    hidden_size: int = number(4096, ge=1, le=2**17)
    ffn_hidden_size: int = number(14336, ge=1, le=2**20)
    num_attention_heads: int = number(32, ge=1, le=MAX_HEADS)
    # Grouped-query attention: number of key/value heads. Equal to num_attention_heads = MHA.
    num_query_groups: int = number(8, ge=1, le=MAX_HEADS)
    # Head dimension; hidden_size // num_attention_heads when left unset.
    kv_channels: Optional[int] = number(None, ge=1, le=MAX_HEADS)
    norm_epsilon: float = number(1.0e-5, gt=0, lt=1)
    # Tokenizer vocabulary. The embedding is padded up to a multiple of
    # make_vocab_size_divisible_by (Megatron pads to a multiple of that times TP; we pad
    # independently of TP so that a checkpoint keeps its shapes when TP changes).
    vocab_size: int = number(128256, ge=1, le=2**24)
    make_vocab_size_divisible_by: int = number(128, ge=1, le=2**16)
    untie_embeddings_and_output_weights: bool = True
    rotary_base: float = number(500000.0, gt=1)
    # Llama-3.1 "llama3" RoPE scaling. Megatron-Core fixes low/high frequency factors at
    # 1/4 and the original context at 8192, which is what Llama-3.1 uses.
    use_rope_scaling: bool = False
    rope_scaling_factor: float = number(8.0, ge=1)
    max_position_embeddings: int = number(8192, ge=1, le=MAX_TOKENS)
    init_method_std: float = number(0.02, gt=0, le=1)
    # Transformer Engine's fused RoPE kernel (GPU). Off: Megatron-Core's RoPE in PyTorch, the
    # only choice past the fused kernel's 32-bit offsets (validate.rope_fusion_tokens_limit).
    apply_rope_fusion: bool = True


@dataclass
class ParallelConfig:
    tensor_model_parallel_size: int = number(1, ge=1, le=1024)
    context_parallel_size: int = number(1, ge=1, le=4096)
    pipeline_model_parallel_size: int = number(
        1, ge=1, le=1, why="pipeline parallelism is not supported: long-context training here scales with "
                          "context and tensor parallelism")
    sequence_parallel: bool = True
    # a2a | all_gather | p2p | a2a+p2p. All match one GPU with document masking (p2p through
    # training.batch.padding_joins_documents, reports/cp_p2p.md); a2a needs heads divisible by CP.
    cp_comm_type: str = one_of("a2a", CP_COMM_TYPES)
    # For a2a+p2p: [a2a size, p2p size], product = context_parallel_size.
    hierarchical_context_parallel_sizes: Optional[List[int]] = number(None, ge=1, le=4096)
    use_distributed_optimizer: bool = True
    # Activation recompute: null | selective | full.
    recompute_granularity: Optional[str] = one_of(None, (None, "selective", "full"))
    # For full recompute: uniform | block.
    recompute_method: Optional[str] = one_of(None, (None, "uniform", "block"))
    recompute_num_layers: Optional[int] = number(None, ge=1, le=4096)
    # --- Memory/throughput knobs (tools/plan.py predicts them; recipes/hardware/ picks them) ---
    # Selective recompute: the submodules to recompute in every layer. mlp (the SwiGLU MLP and
    # its RMSNorm: most of a layer's activations, no attention recomputed), core_attn
    # (attention; TE's fused attention saves little there). null = Megatron's default, [core_attn].
    recompute_modules: Optional[List[str]] = text(None)  # names checked in validate.py
    # Selective recompute in the first N layers only; the others keep
    # their activations. null = every layer, as in Megatron-Core, whose recompute_modules apply
    # to all layers alike: this uses the memory that leaves free (reports/performance.md).
    selective_recompute_num_layers: Optional[int] = number(None, ge=1, le=4096)
    # Layer-level activation offloading through Transformer Engine: the activations of
    # cpu_offloading_num_layers layers wait in host memory between forward and backward.
    # Megatron-Core refuses it together with recompute.
    cpu_offloading: bool = False
    cpu_offloading_num_layers: int = number(0, ge=0, le=4096)
    # Fine-grained activation offloading: the inputs of these submodules of every layer wait
    # in host memory (qkv_linear, core_attn, attn_proj); composes with recompute.
    fine_grained_activation_offloading: bool = False
    offload_modules: List[str] = texts()  # names checked in validate.py
    # Data-parallel communication overlapped with compute (DistributedDataParallelConfig):
    # gradient reduce-scatter during backward; parameter all-gather during the next forward
    # (needs the distributed optimizer and overlap_grad_reduce).
    overlap_grad_reduce: bool = True
    overlap_param_gather: bool = False
    # Tensor-parallel communication overlapped with the GEMMs (Transformer Engine userbuffers,
    # bootstrapped over NCCL, no MPI). Needs TP > 1 with sequence parallelism and CP = 1.
    tp_comm_overlap: bool = False
    # A YAML file of TE userbuffer settings per GEMM (method, num_sm, ...; Megatron-LM's
    # --tp-comm-overlap-cfg), checked by config/userbuffers.py; null: TE's defaults.
    tp_comm_overlap_cfg: Optional[str] = text()


@dataclass
class PrecisionConfig:
    bf16: bool = True
    # null | e4m3 | hybrid. FP8 GEMMs through Transformer Engine.
    fp8: Optional[str] = one_of(None, FP8_FORMATS)
    # delayed | tensorwise
    fp8_recipe: str = one_of("delayed", FP8_RECIPES, why="mxfp8 needs Blackwell GPUs; blockwise is not validated here")
    fp8_amax_history_len: int = number(1024, ge=1, le=2**16)
    fp8_amax_compute_algo: str = one_of("max", ("max", "most_recent"))
    # FP8 attention (cuDNN fused attention). Hopper can train it only with delayed scaling
    # and never with packed THD batches: see validate.py.
    fp8_dot_product_attention: bool = False


@dataclass
class TrainConfig:
    seq_length: int = number(65536, ge=1, le=MAX_TOKENS)
    micro_batch_size: int = number(1, ge=1, le=2**16)
    global_batch_size: int = number(64, ge=1, le=2**24)
    train_iters: int = number(1000, ge=1, le=MAX_ITERS)
    # numpy's seeds are unsigned 32-bit.
    seed: int = number(1234, ge=0, le=2**32 - 1)
    # cuda: the real thing. cpu: Megatron-Core emulated on the CPU with gloo
    # (megatron_ext/cpu_emulation.py); for CI and laptops, never for speed.
    device: str = one_of("cuda", ("cuda", "cpu"))
    # Stop after this many iterations of *this* launch (for time-boxed jobs and tests),
    # saving a checkpoint first. null = run to train_iters.
    exit_after_iters: Optional[int] = number(None, ge=1, le=MAX_ITERS)
    # Document masking (Megatron-LM's --reset-attention-mask): attention and next-token
    # targets stay inside each document. false = Megatron's stock pretraining: plain causal
    # attention over the whole packed sequence (for baselines and ablations).
    reset_attention_mask: bool = True
    # Preflight: load and validate everything, build data and model on the meta device,
    # print what would run, and exit before the first GPU operation.
    preflight: bool = False


@dataclass
class OptimizerConfig:
    optimizer: str = one_of("adam", ("adam", "sgd"))
    lr: float = number(1.0e-5, gt=0)
    min_lr: float = number(1.0e-6, ge=0)
    weight_decay: float = number(0.1, ge=0)
    adam_beta1: float = number(0.9, ge=0, lt=1)
    adam_beta2: float = number(0.95, ge=0, lt=1)
    adam_eps: float = number(1.0e-8, gt=0, le=1)
    # 0 disables clipping.
    clip_grad: float = number(1.0, ge=0)
    # Keep this fraction of the fp32 master weights and Adam moments in host memory and step
    # them on the CPU (Megatron-Core's HybridDeviceOptimizer): frees up to 12 bytes/parameter
    # (sharded over DP x CP) for a slower optimizer step.
    optimizer_cpu_offload: bool = False
    optimizer_offload_fraction: float = number(1.0, gt=0, le=1)


@dataclass
class SchedulerConfig:
    # constant | linear | cosine
    lr_decay_style: str = one_of("cosine", DECAY_STYLES)
    # Either a fraction of lr_decay_iters or a number of iterations (not both).
    lr_warmup_fraction: Optional[float] = number(0.1, ge=0, lt=1)
    lr_warmup_iters: int = number(0, ge=0, le=MAX_ITERS)
    # The LR warmup starts from; at most optimizer.lr.
    lr_warmup_init: float = number(0.0, ge=0)
    # Defaults to train.train_iters.
    lr_decay_iters: Optional[int] = number(None, ge=1, le=MAX_ITERS)


@dataclass
class CheckpointConfig:
    # Directory to save to. Resuming reads from here too, unless `load` is set.
    save: Optional[str] = text(None)
    save_interval: Optional[int] = number(None, ge=1, le=MAX_ITERS)
    load: Optional[str] = text(None)
    # Initialize from this checkpoint when `load` holds none yet: weights always, iteration
    # and LR schedule reset (the ProLong stage-1 -> stage-2 handoff).
    pretrained_checkpoint: Optional[str] = text(None)
    # Also take the optimizer state (Adam moments) from pretrained_checkpoint.
    pretrained_load_optim: bool = False
    # Save and exit cleanly on SIGTERM / SIGUSR1 (Slurm's pre-timeout warning).
    exit_signal_handler: bool = True
    # Keep only the newest N complete checkpoints of this run (null = keep all). A save needs
    # room for N+1: the oldest is removed only after the new one is complete.
    keep_last: Optional[int] = number(None, ge=1, le=10**6)
    # Resume from this iteration of `load` (default `save`) instead of the one its tracker
    # names (Megatron-LM's --ckpt-step): to go back past a damaged checkpoint, or when the
    # tracker is lost. Start-up refuses to guess and names the newest complete checkpoint.
    ckpt_step: Optional[int] = number(None, ge=0, le=MAX_ITERS)
    # Record a CRC-32 of every checkpoint file at save and verify it before loading (~1 GB/s
    # per rank from disk, spread over the ranks). false skips both, for huge checkpoints on
    # slow file systems; sizes are still checked.
    verify_checksums: bool = True
    # Which saves hold the optimizer state in a form any layout can load (Megatron-LM's
    # --dist-ckpt-optim-fully-reshardable, here per save): `every`, `last` (only the save at
    # train.train_iters: the stage handoff) or `never`. Such a save gathers the optimizer state
    # of a whole data(+context)-parallel group on every rank of it (host memory: 12 bytes per
    # parameter of the rank's tensor-parallel shard, per rank; loading it costs the same) and is
    # slow (docs/slurm.md); the other saves (dp_reshardable) resume at any DP or CP size with the
    # same TP size, overlap_grad_reduce, precision.bf16 and train.device (recipe_changes.py).
    dist_ckpt_optim_fully_reshardable: str = one_of("last", ("every", "last", "never"))


@dataclass
class LoggingConfig:
    log_interval: int = number(1, ge=1, le=MAX_ITERS)
    # A path built from a null one (${checkpoint.save}/tensorboard with checkpoint.save=null)
    # is null too: no TensorBoard (loader.py).
    tensorboard_dir: Optional[str] = text(None)
    # Peak dense bf16 TFLOP/s of one GPU for MFU; null = look it up from the device name.
    peak_tflops: Optional[float] = number(None, gt=0)
    progress_bar: bool = True
    # Also append every logged step as one JSON line here (for plots and comparisons).
    metrics_jsonl: Optional[str] = text(None)


@dataclass
class SyntheticDataConfig:
    """Random documents with a configurable length distribution (tests, benchmarks)."""

    num_samples: int = number(100000, ge=1, le=2**40)
    # Draw tokens from the first N ids (null = the model's whole vocabulary). A small range
    # lets a tiny model visibly learn in a few hundred steps.
    vocab_size: Optional[int] = number(None, ge=1, le=2**24)
    # Fraction of samples that are one single document filling the whole sequence
    # (ProLong's long-domain chunks). The rest pack documents drawn from below.
    single_document_fraction: float = number(0.0, ge=0, le=1)
    # Short-document lengths: lognormal with this median (tokens) and sigma, clipped to
    # [doc_length_min, doc_length_max] (min <= median <= max).
    doc_length_median: int = number(1024, ge=1, le=MAX_TOKENS)
    doc_length_sigma: float = number(1.0, ge=0)
    doc_length_min: int = number(16, ge=1, le=MAX_TOKENS)
    doc_length_max: Optional[int] = number(None, ge=1, le=MAX_TOKENS)
    # Give each sample a domain id in [0, num_domains) to exercise per-domain logging.
    num_domains: int = number(1, ge=1, le=1024)
    # Learnable structure (each document repeats a random period) so that loss falls.
    period: int = number(16, ge=1, le=MAX_TOKENS)
    # SFT-like samples: each document alternates prompt and response spans and only
    # response tokens carry loss.
    response_only_loss: bool = False


@dataclass
class DomainConfig:
    """One domain of a stage's mixture (filled in by the data pipeline)."""

    name: str = text("???")
    # Megatron indexed dataset prefixes (path without .bin/.idx).
    paths: List[str] = texts()
    # Share of tokens (= share of samples, every sample has seq_length tokens).
    share: float = number(0.0, gt=0, le=1)
    # long: a sample is a chunk of one document; short: documents concatenated and cut;
    # sft: whole conversations packed, never split.
    packing: str = one_of("short", PACKINGS)
    # Passes over this domain's data the stage may make. A domain too small for its share
    # is refused unless this allows the upsampling (the startup report shows the epochs).
    max_epochs: float = number(1.0, gt=0)


@dataclass
class DataConfig:
    synthetic: Optional[SyntheticDataConfig] = None
    domains: List[DomainConfig] = field(default_factory=list)
    num_workers: int = number(2, ge=0, le=256)
    # Hash every dataset file at start-up against the sha256 recorded when it was prepared:
    # catches same-size corruption, which the always-on size checks cannot. Costs a full read of
    # the data on one rank per node (docs/data.md has the speed); run it once with train.preflight=true.
    verify_checksums: bool = False
    # Deal each global batch's samples to the data-parallel ranks so that their attention +
    # GEMM work is balanced (documents differ up to ~30x in cost). The batch holds the same
    # samples either way; the loss differs only by float rounding of the reduction order.
    balance_data_parallel: bool = True


@dataclass
class Recipe:
    name: str = text("unnamed")
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    data: DataConfig = field(default_factory=DataConfig)
