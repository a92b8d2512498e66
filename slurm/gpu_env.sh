# shellcheck shell=bash
# NCCL / CUDA / Transformer Engine settings of every launch: the one place for them (sourced
# by slurm/launch.sh). A value already set, e.g. by the site env file, wins. Settings that
# depend on the cluster's network (NCCL_SOCKET_IFNAME, NCCL_IB_HCA, ...) belong in the site env file.

# Megatron-Core: with tensor/sequence parallelism, the communication kernels must be issued in
# order on one hardware queue to overlap with the GEMMs.
export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}
# Free the memory of NCCL's inputs when the collective ends instead of through record_stream.
export TORCH_NCCL_AVOID_RECORD_STREAMS=${TORCH_NCCL_AVOID_RECORD_STREAMS:-1}
# Long sequences allocate activations of many sizes: growable segments keep fragmentation down.
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
