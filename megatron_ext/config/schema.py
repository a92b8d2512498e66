"""Typed recipe schema.

Field names follow Megatron-LM's command-line arguments (``--seq-length`` becomes
``seq_length``) wherever Megatron has one, so that users can carry their habits over.
Every recipe YAML is merged onto these dataclasses by OmegaConf, which rejects unknown
keys and wrong types; ``validate.py`` then checks values and their combinations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional


@dataclass
class ModelConfig:
    """A Llama-family decoder (Llama-2, Llama-3, Llama-3.1, SmolLM2...)."""

    num_layers: int = 32
    hidden_size: int = 4096
    ffn_hidden_size: int = 14336
    num_attention_heads: int = 32
    # Grouped-query attention: number of key/value heads. Equal to num_attention_heads = MHA.
    num_query_groups: int = 8
    # Head dimension; hidden_size // num_attention_heads when left unset.
    kv_channels: Optional[int] = None
    norm_epsilon: float = 1.0e-5
    # Tokenizer vocabulary. The embedding is padded up to a multiple of
    # make_vocab_size_divisible_by (Megatron pads to a multiple of that times TP; we pad
    # independently of TP so that a checkpoint keeps its shapes when TP changes).
    vocab_size: int = 128256
    make_vocab_size_divisible_by: int = 128
    untie_embeddings_and_output_weights: bool = True
    rotary_base: float = 500000.0
    # Llama-3.1 "llama3" RoPE scaling. Megatron-Core fixes low/high frequency factors at
    # 1/4 and the original context at 8192, which is what Llama-3.1 uses.
    use_rope_scaling: bool = False
    rope_scaling_factor: float = 8.0
    max_position_embeddings: int = 8192
    init_method_std: float = 0.02


@dataclass
class ParallelConfig:
    tensor_model_parallel_size: int = 1
    context_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    sequence_parallel: bool = True
    # a2a | all_gather | p2p | a2a+p2p. All match one GPU with document masking (p2p through
    # training.batch.padding_joins_documents, reports/cp_p2p.md); a2a needs heads divisible by CP.
    cp_comm_type: str = "a2a"
    # For a2a+p2p: [a2a size, p2p size], product = context_parallel_size.
    hierarchical_context_parallel_sizes: Optional[List[int]] = None
    use_distributed_optimizer: bool = True
    # Activation recompute: null | selective | full.
    recompute_granularity: Optional[str] = None
    # For full recompute: uniform | block.
    recompute_method: Optional[str] = None
    recompute_num_layers: Optional[int] = None
    # --- Memory/throughput knobs (tools/plan.py predicts them; recipes/hardware/ picks them) ---
    # Selective recompute: the submodules to recompute in every layer. mlp (the SwiGLU MLP and
    # its RMSNorm: most of a layer's activations, no attention recomputed), core_attn
    # (attention; TE's fused attention saves little there). null = Megatron's default, [core_attn].
    recompute_modules: Optional[List[str]] = None
    # Layer-level activation offloading through Transformer Engine: the activations of
    # cpu_offloading_num_layers layers wait in host memory between forward and backward.
    # Megatron-Core refuses it together with recompute.
    cpu_offloading: bool = False
    cpu_offloading_num_layers: int = 0
    # Fine-grained activation offloading: the inputs of these submodules of every layer wait
    # in host memory (qkv_linear, core_attn, attn_proj); composes with recompute.
    fine_grained_activation_offloading: bool = False
    offload_modules: List[str] = field(default_factory=list)
    # Data-parallel communication overlapped with compute (DistributedDataParallelConfig):
    # gradient reduce-scatter during backward; parameter all-gather during the next forward
    # (needs the distributed optimizer and overlap_grad_reduce).
    overlap_grad_reduce: bool = True
    overlap_param_gather: bool = False
    # Tensor-parallel communication overlapped with the GEMMs (Transformer Engine userbuffers,
    # bootstrapped over NCCL, no MPI). Needs TP > 1 with sequence parallelism and CP = 1.
    tp_comm_overlap: bool = False


@dataclass
class PrecisionConfig:
    bf16: bool = True
    # null | e4m3 | hybrid. FP8 GEMMs through Transformer Engine.
    fp8: Optional[str] = None
    # delayed | tensorwise
    fp8_recipe: str = "delayed"
    fp8_amax_history_len: int = 1024
    fp8_amax_compute_algo: str = "max"
    # FP8 attention (cuDNN fused attention). Hopper can train it only with delayed scaling
    # and never with packed THD batches: see validate.py.
    fp8_dot_product_attention: bool = False


@dataclass
class TrainConfig:
    seq_length: int = 65536
    micro_batch_size: int = 1
    global_batch_size: int = 64
    train_iters: int = 1000
    seed: int = 1234
    # cuda: the real thing. cpu: Megatron-Core emulated on the CPU with gloo
    # (megatron_ext/cpu_emulation.py); for CI and laptops, never for speed.
    device: str = "cuda"
    # Stop after this many iterations of *this* launch (for time-boxed jobs and tests),
    # saving a checkpoint first. null = run to train_iters.
    exit_after_iters: Optional[int] = None
    # Document masking (Megatron-LM's --reset-attention-mask): attention and next-token
    # targets stay inside each document. false = Megatron's stock pretraining: plain causal
    # attention over the whole packed sequence (for baselines and ablations).
    reset_attention_mask: bool = True
    # Preflight: load and validate everything, build data and model on the meta device,
    # print what would run, and exit before the first GPU operation.
    preflight: bool = False


@dataclass
class OptimizerConfig:
    optimizer: str = "adam"
    lr: float = 1.0e-5
    min_lr: float = 1.0e-6
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1.0e-8
    clip_grad: float = 1.0
    # Keep this fraction of the fp32 master weights and Adam moments in host memory and step
    # them on the CPU (Megatron-Core's HybridDeviceOptimizer): frees up to 12 bytes/parameter
    # (sharded over DP x CP) for a slower optimizer step.
    optimizer_cpu_offload: bool = False
    optimizer_offload_fraction: float = 1.0


@dataclass
class SchedulerConfig:
    # constant | linear | cosine
    lr_decay_style: str = "cosine"
    # Either a fraction of lr_decay_iters or a number of iterations (not both).
    lr_warmup_fraction: Optional[float] = 0.1
    lr_warmup_iters: int = 0
    lr_warmup_init: float = 0.0
    # Defaults to train.train_iters.
    lr_decay_iters: Optional[int] = None


@dataclass
class CheckpointConfig:
    # Directory to save to. Resuming reads from here too, unless `load` is set.
    save: Optional[str] = None
    save_interval: Optional[int] = None
    load: Optional[str] = None
    # Initialize from this checkpoint when `load` holds none yet: weights always, iteration
    # and LR schedule reset (the ProLong stage-1 -> stage-2 handoff).
    pretrained_checkpoint: Optional[str] = None
    # Also take the optimizer state (Adam moments) from pretrained_checkpoint.
    pretrained_load_optim: bool = False
    # Save and exit cleanly on SIGTERM / SIGUSR1 (Slurm's pre-timeout warning).
    exit_signal_handler: bool = True
    # Keep only the newest N complete checkpoints (null = keep all).
    keep_last: Optional[int] = None


@dataclass
class LoggingConfig:
    log_interval: int = 1
    tensorboard_dir: Optional[str] = None
    # Peak dense bf16 TFLOP/s of one GPU for MFU; null = look it up from the device name.
    peak_tflops: Optional[float] = None
    progress_bar: bool = True
    # Also append every logged step as one JSON line here (for plots and comparisons).
    metrics_jsonl: Optional[str] = None


@dataclass
class SyntheticDataConfig:
    """Random documents with a configurable length distribution (tests, benchmarks)."""

    num_samples: int = 100000
    # Draw tokens from the first N ids (null = the model's whole vocabulary). A small range
    # lets a tiny model visibly learn in a few hundred steps.
    vocab_size: Optional[int] = None
    # Fraction of samples that are one single document filling the whole sequence
    # (ProLong's long-domain chunks). The rest pack documents drawn from below.
    single_document_fraction: float = 0.0
    # Short-document lengths: lognormal with this median (tokens) and sigma, clipped.
    doc_length_median: int = 1024
    doc_length_sigma: float = 1.0
    doc_length_min: int = 16
    doc_length_max: Optional[int] = None
    # Give each sample a domain id in [0, num_domains) to exercise per-domain logging.
    num_domains: int = 1
    # Learnable structure (each document repeats a random period) so that loss falls.
    period: int = 16
    # SFT-like samples: each document alternates prompt and response spans and only
    # response tokens carry loss.
    response_only_loss: bool = False


@dataclass
class DomainConfig:
    """One domain of a stage's mixture (filled in by the data pipeline)."""

    name: str = "???"
    # Megatron indexed dataset prefixes (path without .bin/.idx).
    paths: List[str] = field(default_factory=list)
    # Share of tokens (= share of samples, every sample has seq_length tokens).
    share: float = 0.0
    # long: a sample is a chunk of one document; short: documents concatenated and cut;
    # sft: whole conversations packed, never split.
    packing: str = "short"
    # Passes over this domain's data the stage may make. A domain too small for its share
    # is refused unless this allows the upsampling (the startup report shows the epochs).
    max_epochs: float = 1.0


@dataclass
class DataConfig:
    synthetic: Optional[SyntheticDataConfig] = None
    domains: List[DomainConfig] = field(default_factory=list)
    num_workers: int = 2
    # Hash every dataset file at start-up against the sha256 recorded when it was prepared:
    # catches same-size corruption, which the always-on size checks cannot. Costs a full read of
    # the data on every rank (docs/data.md has the speed); run it once with train.preflight=true.
    verify_checksums: bool = False
    # Deal each global batch's samples to the data-parallel ranks so that their attention +
    # GEMM work is balanced (documents differ up to ~30x in cost). The batch holds the same
    # samples either way; the loss differs only by float rounding of the reduction order.
    balance_data_parallel: bool = True


@dataclass
class Recipe:
    name: str = "unnamed"
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    data: DataConfig = field(default_factory=DataConfig)
