# shellcheck shell=bash
# NCCL settings of every Slurm launch (sourced by slurm/launch.sh). A value already set, e.g. by
# the site env file, wins. Settings that depend on the cluster's network (NCCL_SOCKET_IFNAME,
# NCCL_IB_HCA, ...) belong in the site env file.
#
# Not here: the allocator (PYTORCH_CUDA_ALLOC_CONF) and CUDA_DEVICE_MAX_CONNECTIONS depend on the
# recipe and are set by the training entry point itself (megatron_ext/training/cuda_env.py), so
# that Slurm, torchrun and benchmark launches run with the same, measured settings.
# TORCH_NCCL_AVOID_RECORD_STREAMS is not set either: PyTorch has made its behaviour the default
# and warns that the variable is deprecated (and in NGC PyTorch 25.04 it changed point-to-point
# communication, with wrong losses reported by Megatron-LM users).

# Warnings and errors only; INFO when debugging a hang or the topology.
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
# Timeouts. A collective that never completes (a rank died, a link failed) ends the job after
# the process group's timeout (30 min, megatron_ext/training/distributed.py; PyTorch's NCCL
# watchdog) instead of holding the allocation. InfiniBand: retry a lost packet for ~17 s
# (4.096 us x 2^22, 7 times) before failing the collective, rather than NCCL's default ~4 s
# (2^20), which congested large fabrics exceed.
export NCCL_IB_TIMEOUT=${NCCL_IB_TIMEOUT:-22}
export NCCL_IB_RETRY_CNT=${NCCL_IB_RETRY_CNT:-7}
