"""GPU check: context and tensor parallelism give the single-GPU loss and gradients on the
same packed, document-masked batch.

    torchrun --nproc-per-node 2 tests/gpu/check_parallel_parity.py --out OUT --cp 2 --tp 2 [--docs 1000,3,...]

Every rank first computes the reference (CP=1, TP=1) loss and gradients itself. Then, for
each cp_comm_type, the same weights run with CP over all ranks (documents padded to 2 x CP
and split with TE's partitioned indices, gradients summed over the CP group as DDP does),
and with TP + sequence parallelism (weights resharded through a distributed checkpoint).
"""

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from omegaconf import OmegaConf

from megatron_ext.config.loader import compose
from megatron_ext.config.validate import cp_padding_multiple, sequence_multiple, uses_ring_attention
from megatron_ext.data.sample import PackedSample
from megatron_ext.model.linear_cross_entropy import gpt_output_processor
from megatron_ext.model.llama import build_gpt_model
from megatron_ext.training.batch import for_context_parallel_rank, pack_micro_batch
from megatron_ext.training.step import packed_seq_params

# Short and long documents, lengths not multiples of anything: CP must pad each of them.
# --docs replaces them, e.g. to tell apart which document lengths a comm type gets wrong.
DOCS = [1000, 3, 517, 2600, 77, 1999, 1, 1995]


def recipe_for(tp: int, cp: int, comm: str):
    overrides = [f"parallel.tensor_model_parallel_size={tp}", f"parallel.context_parallel_size={cp}",
                 f"parallel.cp_comm_type={comm}", "train.seq_length=8192", "model.max_position_embeddings=8192"]
    if comm == "a2a+p2p":
        overrides.append(f"parallel.hierarchical_context_parallel_sizes=[{cp // 2 if cp > 2 else 1},{2 if cp > 2 else cp}]")
    # Composed without validation: the check measures any layout it is given, also one that
    # validation would refuse.
    return OmegaConf.to_object(compose("recipes/tiny/prolong_stage1.yaml", overrides))


def setup(recipe):
    from megatron.core import parallel_state, tensor_parallel

    parallel_state.destroy_model_parallel()
    p = recipe.parallel
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=p.tensor_model_parallel_size, context_parallel_size=p.context_parallel_size,
        hierarchical_context_parallel_sizes=p.hierarchical_context_parallel_sizes)
    torch.manual_seed(1234)
    tensor_parallel.model_parallel_cuda_manual_seed(1234)
    return build_gpt_model(recipe).cuda()


def loss_and_grads(model, recipe, tokens, docs, ring_padding_apart=False):
    """Token-averaged loss and the gradients of this rank's parameters (summed over CP)."""
    from megatron.core import parallel_state

    mb = pack_micro_batch([PackedSample(tokens, np.array(docs))], cp_padding_multiple(recipe),
                          sequence_multiple(recipe)).to("cuda")
    ring = uses_ring_attention(recipe) and not ring_padding_apart
    cp = recipe.parallel.context_parallel_size
    mb = for_context_parallel_rank(mb, cp, parallel_state.get_context_parallel_rank(), ring)  # as training does
    per_token = model(mb.tokens, mb.position_ids, None, labels=mb.labels,
                      packed_seq_params=packed_seq_params(mb) if mb.is_thd else None,  # as training does
                      output_processor=gpt_output_processor)
    loss_sum = (per_token.float() * mb.loss_weight).sum()
    count = mb.loss_weight.sum()
    totals = torch.stack([loss_sum.detach(), count])
    if cp > 1:
        dist.all_reduce(totals, group=parallel_state.get_context_parallel_group())
    model.zero_grad()
    (loss_sum / totals[1]).backward()
    grads = {}
    for name, param in model.named_parameters():
        g = param.grad.float()
        if cp > 1:
            dist.all_reduce(g, group=parallel_state.get_context_parallel_group())
        if getattr(param, "sequence_parallel", False):
            # Norm weights see only this rank's sequence shard under sequence parallelism.
            dist.all_reduce(g, group=parallel_state.get_tensor_model_parallel_group())
        grads[name] = g
    return (totals[0] / totals[1]).item(), grads


def full_norm(param_name, grad, model):
    """Norm of the whole (unsharded) gradient tensor under TP."""
    from megatron.core import parallel_state

    param = dict(model.named_parameters())[param_name]
    sq = grad.pow(2).sum()
    if getattr(param, "tensor_model_parallel", False):
        dist.all_reduce(sq, group=parallel_state.get_tensor_model_parallel_group())
    return sq.sqrt().item()


def main(out: Path, cp: int, tp: int, comm_types: list, docs: list, ring_padding_apart: bool) -> None:
    rank = int(os.environ["RANK"])
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl")
    from megatron.core import dist_checkpointing

    base = recipe_for(1, 1, "p2p")
    tokens = np.random.default_rng(0).integers(0, 2048, sum(docs))
    ref_model = setup(base)
    ref_loss, ref_grads = loss_and_grads(ref_model, base, tokens, docs)
    # TE modules without FP8 state report their _extra_state as None.
    ref_state = {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in ref_model.state_dict().items()}
    ckpt = Path(tempfile.gettempdir()) / "parity_reference_checkpoint"
    if rank == 0:
        shutil.rmtree(ckpt, ignore_errors=True)
        ckpt.mkdir()
    dist.barrier()
    dist_checkpointing.save(ref_model.sharded_state_dict(), str(ckpt))  # to reshard into the TP model
    dist.barrier()
    results = {"reference_loss": ref_loss, "documents": docs, "ring_padding_apart": ring_padding_apart,
               "device": torch.cuda.get_device_name(), "world_size": dist.get_world_size(), "cp": {}, "tp": {}}

    for comm in comm_types:
        recipe = recipe_for(1, cp, comm)
        model = setup(recipe)
        model.load_state_dict(ref_state)
        loss, grads = loss_and_grads(model, recipe, tokens, docs, ring_padding_apart)
        rel = {n: ((grads[n] - ref_grads[n]).norm() / ref_grads[n].norm().clamp(min=1e-12)).item() for n in ref_grads}
        results["cp"][comm] = {"loss": loss, "loss_rel_diff": abs(loss - ref_loss) / ref_loss,
                               "grad_rel_l2_max": max(rel.values()), "grad_rel_l2_worst": max(rel, key=rel.get),
                               "grad_rel_l2_median": float(np.median(list(rel.values())))}
        del model

    if tp > 1:
        recipe = recipe_for(tp, 1, "p2p")
        model = setup(recipe)
        model.load_state_dict(dist_checkpointing.load(model.sharded_state_dict(), str(ckpt)))
        loss, grads = loss_and_grads(model, recipe, tokens, docs)
        rel = {n: abs(full_norm(n, grads[n], model) - ref_grads[n].norm().item()) / ref_grads[n].norm().item()
               for n in grads}
        results["tp"] = {"tp": tp, "sequence_parallel": True, "loss": loss,
                         "loss_rel_diff": abs(loss - ref_loss) / ref_loss,
                         "grad_norm_rel_diff_max": max(rel.values()), "grad_norm_rel_diff_worst": max(rel, key=rel.get)}

    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"parallel_parity_cp{cp}_tp{tp}.json").write_text(json.dumps(results, indent=2))
        print(json.dumps(results, indent=2))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cp", type=int, default=2)
    parser.add_argument("--tp", type=int, default=2)
    parser.add_argument("--comm-types", nargs="*", default=["p2p", "a2a", "all_gather", "a2a+p2p"])
    parser.add_argument("--docs", type=lambda s: [int(x) for x in s.split(",")], default=DOCS,
                        help="comma-separated document lengths of the packed sample (sum <= 8192)")
    parser.add_argument("--ring-padding-apart", action="store_true",
                        help="keep padding out of the documents under p2p, unlike training: reproduces TE's wrong gradients")
    args = parser.parse_args()
    if sum(args.docs) > 8192 or min(args.docs) < 1:
        parser.error(f"--docs: lengths must be >= 1 and sum to at most 8192 (the check's seq_length), got {args.docs}")
    main(args.out, args.cp, args.tp, args.comm_types, args.docs, args.ring_padding_apart)
