# shellcheck shell=bash
# NCCL / CUDA settings of every Slurm GPU job (sourced by slurm/launch.sh). A value already set,
# e.g. by the site env file, wins. Settings that depend on the cluster's network
# (NCCL_SOCKET_IFNAME, NCCL_IB_HCA, ...) belong in the site env file.
#
# Not here: CUDA_DEVICE_MAX_CONNECTIONS depends on the recipe and is set by the training entry
# point itself (megatron_ext/training/cuda_env.py), so that Slurm, torchrun and benchmark
# launches run with the same, measured settings. Nor TORCH_NCCL_AVOID_RECORD_STREAMS: PyTorch
# has made its behaviour the default and warns that the variable is deprecated (in NGC PyTorch
# 25.04 it changed point-to-point communication: Megatron-LM issue 1586, wrong losses).

# Long sequences allocate activations of many sizes: growable segments keep fragmentation down
# (training sets the same itself; evaluation and conversion jobs get it from here).
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}

# Warnings and errors only; INFO when debugging a hang or the topology.
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
# Timeouts. A collective that never completes (a rank died, a link failed) ends the job after
# the process group's timeout (30 min, megatron_ext/training/distributed.py; PyTorch's NCCL
# watchdog) instead of holding the allocation. InfiniBand: retry a lost packet for ~17 s
# (4.096 us x 2^22, 7 times) before failing the collective, rather than NCCL's default ~4 s
# (2^20), which congested large fabrics exceed.
export NCCL_IB_TIMEOUT=${NCCL_IB_TIMEOUT:-22}
export NCCL_IB_RETRY_CNT=${NCCL_IB_RETRY_CNT:-7}
