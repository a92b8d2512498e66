#!/usr/bin/env python
"""GPU check of the HF <-> Megatron conversion with the Transformer Engine layer spec.

For the tiny reference configs (and SmolLM2-135M-Instruct when given): import the HF
checkpoint, load it into Megatron's GPTModel the way training does, and compare its logits
with transformers' on the same tokens in fp32 and bf16; then train a few steps from the
import, export (fp32 and bf16), and compare again.

    python tools/gpu/check_conversion.py --out docs/convert_gpu --work /tmp/convert_gpu --smollm2-gguf GGUF_DIR
    python tools/gpu/check_conversion.py --out docs/convert_gpu --work /tmp/convert_gpu --smollm2 SMOLLM2_HF_DIR

--smollm2-gguf: a directory with SmolLM2-135M-Instruct.Q4_1.gguf (de-quantized here by
tools/gpu/smollm2_to_hf.py; needs the gguf and accelerate packages). --smollm2: an HF directory
already made from it. Writes OUT/report.json and OUT/report.md (models, checkpoints and training
logs go to --work, default OUT/work); exit code 1 if a check fails.
TF32 is disabled (NVIDIA_TF32_OVERRIDE=0) so that fp32 means fp32 on both sides.
"""

from __future__ import annotations

import os

os.environ.setdefault("NVIDIA_TF32_OVERRIDE", "0")  # before CUDA initializes: strict fp32 in every library

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Dict, List, Optional, Tuple  # noqa: E402

import torch  # noqa: E402
import yaml  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from megatron_ext.config.schema import ModelConfig  # noqa: E402
from megatron_ext.convert import export_hf_checkpoint, import_hf_checkpoint  # noqa: E402
from megatron_ext.convert.dist_checkpoint_io import DistCheckpointReader  # noqa: E402
from megatron_ext.convert.megatron_to_hf import locate_checkpoint, model_config_from_checkpoint  # noqa: E402
from megatron_ext.convert.reference_models import TINY_CONFIGS, random_tokens, save_tiny_model  # noqa: E402
from megatron_ext.convert.verify import (  # noqa: E402
    compare_logits,
    finetune_overrides,
    hf_logits,
    inference_recipe,
    load_megatron,
    megatron_logits,
)
from megatron_ext.net import free_port  # noqa: E402

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Real text for SmolLM2, so that top-1 agreement is about actual predictions.
TEXT = ("The Transformer architecture replaced recurrence with attention. Each layer lets every token look at "
        "the tokens before it, weighs them by relevance, and mixes their representations. Long-context models "
        "extend the positional encoding so that attention still works on documents hundreds of thousands of "
        "tokens long, which requires both data with long-range structure and careful changes to the rotary "
        "position embedding base frequency. Evaluating such models means asking them to recall facts placed "
        "anywhere in a very long input, to answer questions about books, and to summarize long reports.")


def environment() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    for module in ("transformers", "transformer_engine", "megatron.core"):
        try:
            info[module] = __import__(module, fromlist=["__version__"]).__version__
        except Exception as e:  # report, do not fail: the checks below will say what is missing
            info[module] = f"unavailable ({e.__class__.__name__})"
    return info


def smollm2_hf(args, work: Path) -> Optional[Path]:
    if args.smollm2:
        return args.smollm2
    if not args.smollm2_gguf:
        return None
    out = work / "smollm2_hf"
    if not out.exists():
        subprocess.run([sys.executable, REPO / "tools/gpu/smollm2_to_hf.py", out, "--gguf-dir", args.smollm2_gguf],
                       check=True)
    return out


def tokens_for(name: str, hf_dir: Path, vocab_size: int) -> torch.Tensor:
    if name != "smollm2":
        return random_tokens(vocab_size, batch=2, seq=128)
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(hf_dir)(TEXT)["input_ids"][:96]
    return torch.tensor([ids])


def import_case(hf_dir: Path, out: Path) -> Tuple[Path, dict]:
    result = import_hf_checkpoint(hf_dir, out, overwrite=True, progress=False)
    return result.output, yaml.safe_load((result.output / "model.yaml").read_text())["model"]


def train_and_export(name: str, checkpoint: Path, model: dict, hf_dir: Path, work: Path, device: str,
                     steps: int) -> Tuple[Path, Dict[str, Path]]:
    """A few training steps of the tiny stage-1 recipe from the import; exports in fp32 and bf16."""
    save = work / f"{name}_trained"
    command = [sys.executable, "-m", "megatron_ext.train", "recipes/tiny/prolong_stage1.yaml",
               *finetune_overrides(model, checkpoint, save), f"train.train_iters={steps}", "train.seq_length=256",
               "train.global_batch_size=2", "checkpoint.save_interval=null", "data.num_workers=0",
               "data.synthetic.vocab_size=null", "logging.tensorboard_dir=null", "logging.progress_bar=false"]
    if device == "cpu":
        command += ["train.device=cpu", "precision.bf16=false"]
    log = work / f"{name}_train.log"
    with open(log, "w") as f:
        proc = subprocess.run(command, cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                              env={**os.environ, "MASTER_PORT": str(free_port())})
    if proc.returncode:
        raise RuntimeError(f"training failed (exit {proc.returncode}); see {log}:\n{log.read_text()[-3000:]}")
    exports = {precision: export_hf_checkpoint(save, work / f"{name}_trained_hf_{precision}", hf_dir, dtype=dtype,
                                               overwrite=True, progress=False).output
               for precision, dtype in PRECISIONS.items()}
    return locate_checkpoint(save), exports


def megatron_side(checkpoint: Path, model: ModelConfig, tokens: torch.Tensor, precision: str, device: str,
                  layout) -> Tuple[torch.Tensor, object]:
    from megatron_ext.training.distributed import initialize

    recipe = inference_recipe(model, checkpoint, tensor_parallel=1, world_size=1, device=device,
                              bf16=precision == "bf16", seq_length=tokens.shape[1])
    layout = layout or initialize(recipe)
    ddp_model, _ = load_megatron(recipe, layout, log=lambda *_: None)
    logits = megatron_logits(ddp_model.module, tokens.to(torch.device(device)), model.vocab_size,
                             use_te=device == "cuda").cpu()
    del ddp_model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return logits, layout


def passes(result, precision: str, args) -> bool:
    scale = max(1.0, result.max_abs_logit)
    if precision == "fp32":
        return result.max_abs_diff <= args.fp32_rel_tol * scale and result.top1_agreement >= args.fp32_top1
    return result.max_abs_diff <= args.bf16_rel_tol * scale and result.top1_agreement >= args.bf16_top1


class Checks:
    """Runs each comparison, records numbers or the error, never stops at the first failure."""

    def __init__(self, args, device: str):
        self.args, self.device, self.layout, self.rows = args, device, None, []

    def compare(self, model_name: str, stage: str, checkpoint: Path, model: ModelConfig, hf_dirs: Dict[str, Path],
                tokens: torch.Tensor) -> None:
        for precision in self.args.precisions:
            row = {"model": model_name, "stage": stage, "precision": precision, "tokens": list(tokens.shape)}
            try:
                megatron, self.layout = megatron_side(checkpoint, model, tokens, precision, self.device, self.layout)
                reference = hf_logits(hf_dirs[precision], tokens.to(torch.device(self.device)),
                                      PRECISIONS[precision]).cpu()
                result = compare_logits(reference, megatron)
                row.update(result.as_dict(), passed=passes(result, precision, self.args))
            except Exception:
                row.update(passed=False, error=traceback.format_exc(limit=6))
            print(json.dumps(row), flush=True)
            self.rows.append(row)

    def record_error(self, model_name: str, stage: str) -> None:
        row = {"model": model_name, "stage": stage, "passed": False, "error": traceback.format_exc(limit=6)}
        print(json.dumps(row), flush=True)
        self.rows.append(row)


def markdown(report: dict) -> str:
    lines = ["# HF <-> Megatron conversion: logits against transformers", "",
             f"Device: {report['environment'].get('device')}; " + ", ".join(
                 f"{k} {v}" for k, v in report["environment"].items() if k != "device"), "",
             "Megatron: GPTModel built and loaded like training (Transformer Engine spec on GPU), fed the same "
             "tokens as transformers' LlamaForCausalLM (eager attention). 'trained': after a few training steps "
             "from the import, against the exported HF checkpoint.", "",
             "| model | stage | precision | max abs diff | mean abs diff | max abs logit | top-1 agreement | pass |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['stage']} | {r.get('precision', '')} | error | | | | no |")
            continue
        lines.append(f"| {r['model']} | {r['stage']} | {r['precision']} | {r['max_abs_diff']:.3e} | "
                     f"{r['mean_abs_diff']:.3e} | {r['max_abs_logit']:.2f} | {r['top1_agreement']:.4f} | "
                     f"{'yes' if r['passed'] else 'NO'} |")
    lines += ["", f"Criteria: fp32 max abs diff <= {report['criteria']['fp32_rel_tol']} x max(1, max abs logit) "
                  f"and top-1 >= {report['criteria']['fp32_top1']}; bf16 <= {report['criteria']['bf16_rel_tol']} x "
                  f"and top-1 >= {report['criteria']['bf16_top1']}.", ""]
    errors = [r for r in report["rows"] if "error" in r]
    for r in errors:
        lines += [f"## Error: {r['model']} {r['stage']} {r.get('precision', '')}", "", "```", r["error"], "```", ""]
    return "\n".join(lines)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="directory for report.json and report.md")
    parser.add_argument("--work", type=Path, help="models, checkpoints, logs (default: OUT/work)")
    parser.add_argument("--smollm2", type=Path, help="HF directory of SmolLM2-135M-Instruct")
    parser.add_argument("--smollm2-gguf", type=Path, help="directory with SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--models", default=",".join([*TINY_CONFIGS, "smollm2"]),
                        help="comma-separated subset of the models to check")
    parser.add_argument("--train", default="llama3,smollm2", help="models to train a few steps, export and re-check")
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--precisions", default="fp32,bf16", type=lambda s: s.split(","))
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cpu: Megatron's local spec under CPU emulation (a smoke test of this script)")
    parser.add_argument("--fp32-rel-tol", type=float, default=1e-4)
    parser.add_argument("--fp32-top1", type=float, default=0.99)
    parser.add_argument("--bf16-rel-tol", type=float, default=0.1)
    parser.add_argument("--bf16-top1", type=float, default=0.9)
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible; use --device cpu for a smoke test")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    work = args.work or args.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    wanted = args.models.split(",")
    hf_models = {name: save_tiny_model(name, work / f"{name}_hf") for name in TINY_CONFIGS if name in wanted}
    smollm2 = smollm2_hf(args, work) if "smollm2" in wanted else None
    if smollm2:
        hf_models["smollm2"] = smollm2
    checks = Checks(args, args.device)

    trained = {}
    for name in args.train.split(","):
        if name not in hf_models:
            continue
        try:  # in subprocesses, before this process sets up its own distributed state
            checkpoint, model = import_case(hf_models[name], work / f"{name}_megatron")
            trained[name] = train_and_export(name, checkpoint, model, hf_models[name], work, args.device,
                                             args.train_steps)
        except Exception:
            checks.record_error(name, "train+export")

    for name, hf_dir in hf_models.items():
        try:
            checkpoint, model = import_case(hf_dir, work / f"{name}_megatron")
        except Exception:
            checks.record_error(name, "import")
            continue
        tokens = tokens_for(name, hf_dir, model["vocab_size"])
        checks.compare(name, "imported", checkpoint, ModelConfig(**model), {p: hf_dir for p in PRECISIONS}, tokens)
        if name in trained:
            checkpoint, exports = trained[name]
            stored = model_config_from_checkpoint(DistCheckpointReader(checkpoint).common_state(), checkpoint)
            checks.compare(name, "trained", checkpoint, stored, exports, tokens)

    report = {"environment": environment(), "seconds": round(time.time() - start, 1), "rows": checks.rows,
              "criteria": {k: getattr(args, k) for k in ("fp32_rel_tol", "fp32_top1", "bf16_rel_tol", "bf16_top1")},
              "all_passed": all(r["passed"] for r in checks.rows) and bool(checks.rows)}
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "report.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if report["all_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
