#!/usr/bin/env python
"""Peak host memory of HF <-> Megatron conversion on a synthetic Llama-3-8B-shaped checkpoint (CPU only).

    python benchmarks/convert_memory.py --workdir /tmp/convert_bench --out runs/convert_memory_8b

1. writes a random bf16 HF checkpoint of the model's shape (~16 GB, 5 GB shards, streamed);
2. runs tools/convert_hf_to_megatron.py, then tools/convert_megatron_to_hf.py, each in its own
   process, and takes that process's peak resident set (``wait4`` rusage: ru_maxrss);
3. compares every exported tensor with the source, bit for bit;
4. writes OUT.json and OUT.md, and deletes the workdir (about 3x the model size) unless --keep.

A Python process that only imports the same modules is measured too, as the floor.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# torch and the converter load inside the functions that use them: --help answers at once.
from megatron_ext.config.schema import ModelConfig  # noqa: E402

GB = 10**9
IMPORTS_ONLY = "import torch, transformers, megatron.core, megatron_ext.convert.cli, megatron_ext.convert"


def llama3_8b(num_layers: int) -> ModelConfig:
    return ModelConfig(num_layers=num_layers)  # the schema's defaults are Llama-3-8B's shape


def write_synthetic_hf(directory: Path, model: ModelConfig) -> int:
    """Random bf16 weights of the model's shape plus config and a word-level tokenizer; returns bytes."""
    import torch

    from megatron_ext.convert.architecture import architecture_from_model_config
    from megatron_ext.convert.hf_config import hf_config_from_architecture
    from megatron_ext.convert.reference_models import save_word_level_tokenizer
    from megatron_ext.convert.safetensors_io import TensorSpec, write_sharded_safetensors
    from megatron_ext.convert.tensor_map import hf_tensor_shapes

    arch = architecture_from_model_config(model)
    directory.mkdir(parents=True)
    specs = [TensorSpec(name, shape, torch.bfloat16) for name, shape in hf_tensor_shapes(arch).items()]
    generator = torch.Generator().manual_seed(0)
    tensors = ((s.name, torch.randn(s.shape, generator=generator, dtype=torch.bfloat16)) for s in specs)
    write_sharded_safetensors(directory, specs, tensors, max_shard_bytes=5 * GB)
    config = hf_config_from_architecture(arch, torch.bfloat16, {"bos_token_id": 1, "eos_token_id": 2})
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    save_word_level_tokenizer(directory, arch.vocab_size)
    return sum(s.nbytes for s in specs)


def measure(command: list) -> dict:
    """Run ``command``; its wall time and peak RSS (GiB) from the kernel's rusage."""
    start = time.time()
    proc = subprocess.Popen(command, cwd=REPO)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(map(str, command))} failed with exit code {proc.returncode}")
    return {"seconds": round(time.time() - start, 1), "peak_rss_gib": round(usage.ru_maxrss * 1024 / 2**30, 2)}


def compare_all(source: Path, exported: Path) -> int:
    import torch

    from megatron_ext.convert.safetensors_io import SafetensorsReader

    a, b = SafetensorsReader(source), SafetensorsReader(exported)
    if sorted(a.tensors) != sorted(b.tensors):
        raise SystemExit("exported tensor names differ from the source")
    for name in a.tensors:
        if not torch.equal(a.read(name), b.read(name)):
            raise SystemExit(f"{name}: exported tensor differs from the source")
    return len(a.tensors)


def report_markdown(result: dict) -> str:
    rows = "\n".join(f"| {step} | {m['peak_rss_gib']} | {m['seconds']} |" for step, m in result["steps"].items())
    return (f"# Conversion memory: synthetic {result['shape']} ({result['model_gb']:.2f} GB bf16)\n\n"
            f"| step | peak RSS (GiB) | time (s) |\n|---|---|---|\n{rows}\n\n"
            f"Bit-exact round trip: {result['tensors_compared']} tensors. Host: {result['host']}.\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/convert_bench"))
    parser.add_argument("--out", type=Path, default=REPO / "runs/convert_memory_8b", help="OUT.json and OUT.md")
    parser.add_argument("--num-layers", type=int, default=32, help="fewer for a quick smoke run")
    parser.add_argument("--keep", action="store_true", help="keep the workdir (three copies of the model)")
    args = parser.parse_args()
    model = llama3_8b(args.num_layers)
    needed = 3.1 * (1.05e9 + args.num_layers * 0.437e9)  # bf16 bytes: embedding + head, per layer
    free = shutil.disk_usage(args.workdir.parent).free
    if free < needed:
        raise SystemExit(f"{args.workdir.parent} has {free / GB:.0f} GB free; this needs about {needed / GB:.0f} GB")
    if args.workdir.exists():
        raise SystemExit(f"{args.workdir} exists; remove it or choose another --workdir")
    hf, megatron, exported = args.workdir / "hf", args.workdir / "megatron", args.workdir / "exported"
    try:
        start = time.time()
        model_bytes = write_synthetic_hf(hf, model)
        print(f"wrote the synthetic checkpoint ({model_bytes / GB:.2f} GB) in {time.time() - start:.0f} s", flush=True)
        tools = REPO / "tools"
        steps = {
            "python + imports only": measure([sys.executable, "-c", IMPORTS_ONLY]),
            "import HF -> Megatron": measure([sys.executable, tools / "convert_hf_to_megatron.py", hf, megatron]),
            "export Megatron -> HF": measure([sys.executable, tools / "convert_megatron_to_hf.py", megatron, exported,
                                              "--tokenizer", hf, "--dtype", "bfloat16"]),
        }
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        result = {"shape": f"Llama-3-8B ({args.num_layers} layers)", "model_gb": model_bytes / GB, "steps": steps,
                  "tensors_compared": compare_all(hf, exported), "host": f"{os.cpu_count()} CPUs, {memory:.0f} GiB RAM"}
    finally:
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(report_markdown(result))
    print(report_markdown(result))


if __name__ == "__main__":
    main()
