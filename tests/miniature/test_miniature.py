"""The miniature ProLong pipeline (tools/miniature/) on a tiny corpus and model, on the CPU.

The real run needs a GPU host (reports/miniature.md); this keeps its configuration, data
building and every step of tools/miniature/run.py from breaking silently.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools" / "miniature"))
sys.path.insert(0, str(REPO / "tests" / "eval"))

import corpus  # noqa: E402

RUNS = ("main", "theta_unchanged", "long_only", "no_doc_masking", "main_32k")
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
WORDS = ("alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega river mountain forest city "
         "garden window letter number market winter summer silver golden quiet sudden").split()
# Tiny-model overrides: the recipes' structure (domains, shares, theta, masking) on a 2-layer model.
TINY = ["train.device=cpu", "precision.bf16=false", "train.seq_length=256", "train.global_batch_size=2",
        "train.train_iters=2", "checkpoint.save_interval=1", "data.num_workers=0", "model.num_layers=2",
        "model.hidden_size=64", "model.ffn_hidden_size=128", "model.num_attention_heads=4", "model.num_query_groups=2",
        "model.kv_channels=16", "model.vocab_size=1024", "model.max_position_embeddings=2048",
        "scheduler.lr_warmup_fraction=0.0"]


def _b64(n: int) -> str:
    digits = ""
    while True:
        digits = ALPHABET[n % 64] + digits
        n //= 64
        if not n:
            return digits


def _prose(seed: int, words: int) -> str:
    return " ".join(WORDS[(seed * 7 + i * i) % len(WORDS)] for i in range(words)) + "."


def write_dictd(directory: Path, name: str, entries: dict) -> None:
    data, index = b"", [f"00databaseshort\t{_b64(0)}\t{_b64(1)}"]
    for head, text in entries.items():
        raw = f"{head}\n{text}\n".encode()
        index.append(f"{head}\t{_b64(len(data))}\t{_b64(len(raw))}")
        data += raw
    index.append(f"{head}-alias\t{_b64(len(data) - len(raw))}\t{_b64(len(raw))}")  # a second headword, one entry
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.dict.dz").write_bytes(gzip.compress(data))
    (directory / f"{name}.index").write_text("\n".join(index) + "\n")


def fake_debian(root: Path) -> Path:
    dictd = root / "usr/share/dictd"
    write_dictd(dictd, "gcide", {f"word{i}": _prose(i, 400) for i in range(12)})
    for name in ("foldoc", "jargon", "vera", "devil"):
        write_dictd(dictd, name, {f"{name}{i}": _prose(i + 3, 60) for i in range(8)})
    pod = root / "usr/share/perl/5.36.0/pod"
    pod.mkdir(parents=True)
    for i in range(3):
        (pod / f"perl{i}.pod").write_text("=head1 NAME\n\n" + _prose(i, 120))
    git = root / "usr/share/doc/git-doc"
    git.mkdir(parents=True)
    (git / "git-log.txt").write_text(_prose(5, 150))
    fortunes = root / "usr/share/games/fortunes"
    fortunes.mkdir(parents=True)
    (fortunes / "wisdom").write_text("\n%\n".join(_prose(i, 30) for i in range(10)))
    (fortunes / "wisdom.dat").write_bytes(b"\0binary index")
    return root


def fake_python(root: Path) -> tuple[Path, Path]:
    stdlib, site = root / "stdlib", root / "site-packages"
    for package, text in (("tomllib", _prose(1, 400)), ("json", "HAYSTACK TEXT")):  # json's docstrings: haystack
        (stdlib / package).mkdir(parents=True)
        (stdlib / package / "__init__.py").write_text(f'"""{text}"""\n')
    (stdlib / "pydoc_data").mkdir()
    (stdlib / "pydoc_data" / "topics.py").write_text('topics = {"x": "HAYSTACK TEXT"}\n')
    (stdlib / "argparse.py").write_text('"""HAYSTACK TEXT"""\n')
    (stdlib / "colorsys.py").write_text(f'"""{_prose(2, 400)}"""\n')
    for package in ("numpy", "othertool"):
        sub = site / package / "core"
        sub.mkdir(parents=True)
        (site / package / "__init__.py").write_text(f'"""{_prose(3, 300)}"""\n')
        (sub / "__init__.py").write_text(f'"""{_prose(4, 500)}"""\n')
        (sub / "compiled.so").write_bytes(b"\x7fELF")
        (site / package / "include").mkdir()
        (site / package / "include" / "vendored.h").write_text("/* a copy of another project */\n")
    dist = site / "othertool-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: othertool\n\n{_prose(6, 200)}\n")
    return site, stdlib


@pytest.fixture(scope="module")
def texts_bundle(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("texts")
    bible = tmp / "bible.txt"
    bible.write_text(_prose(9, 900))
    out = tmp / "bundle" / "texts"
    counts = corpus.debian_texts(fake_debian(tmp / "root"), out, bible_file=bible)
    assert counts == {"books": 2, "short/dictionaries": 24, "short/manuals": 4, "short/fortunes": 10, "heldout/devil": 1}
    return out


def test_every_recipe_composes_and_differs_from_main_in_one_thing():
    from megatron_ext.config import load_recipe
    from omegaconf import OmegaConf

    recipes = {r: OmegaConf.to_container(OmegaConf.structured(load_recipe(REPO / f"recipes/miniature/{r}.yaml",
                                                                          world_size=2))) for r in RUNS}
    main = recipes["main"]
    assert main["model"]["rotary_base"] == 8.0e6 and main["train"]["seq_length"] == 65536
    assert recipes["main_32k"]["model"]["rotary_base"] == 2.0e6 and recipes["main_32k"]["train"]["seq_length"] == 32768
    assert main["train"]["reset_attention_mask"] and {d["packing"] for d in main["data"]["domains"]} == {"long", "short"}

    def changed(a: dict, b: dict, prefix="") -> set:
        keys = set(a) | set(b)
        out = set()
        for k in keys:
            if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
                out |= changed(a[k], b[k], f"{prefix}{k}.")
            elif a.get(k) != b.get(k):
                out.add(f"{prefix}{k}")
        return out

    ignore = {"name", "checkpoint.save", "logging.tensorboard_dir"}  # each run writes its own checkpoints
    assert changed(main, recipes["theta_unchanged"]) - ignore == {"model.rotary_base"}
    assert changed(main, recipes["no_doc_masking"]) - ignore == {"train.reset_attention_mask"}
    assert changed(main, recipes["long_only"]) - ignore == {"data.domains"}
    assert {d["packing"] for d in recipes["long_only"]["data"]["domains"]} == {"long"}
    assert len({r["checkpoint"]["save"] for r in recipes.values()}) == len(RUNS)
    tokens = {r: c["train"]["train_iters"] * c["train"]["global_batch_size"] * c["train"]["seq_length"] for r, c in recipes.items()}
    assert len(set(tokens.values())) == 1, f"runs must have the same token budget: {tokens}"


def test_dictionary_entries_are_read_once_and_headers_skipped(tmp_path):
    from megatron_ext.data.debian_texts import dict_entries

    write_dictd(tmp_path, "demo", {"apple": "a fruit", "pear": "another fruit"})
    assert [h for h, _ in dict_entries(tmp_path / "demo.dict.dz")] == ["apple", "pear"]


def test_haystack_text_is_never_collected(tmp_path):
    site, stdlib = fake_python(tmp_path)
    counts = corpus.python_corpus([site], stdlib, tmp_path / "raw", code_packages=["numpy"])
    collected = "".join(p.read_text() for p in (tmp_path / "raw").rglob("*") if p.is_file())
    assert "HAYSTACK TEXT" not in collected
    assert (tmp_path / "raw/code_repos/numpy/numpy/core/__init__.py").is_file()
    assert not list((tmp_path / "raw").rglob("*.so")) and not list((tmp_path / "raw").rglob("vendored.h"))
    assert counts == {"code_repos": 3, "short/python_files": 2, "short/pypi_readmes": 1}


def test_large_packages_become_several_repositories(tmp_path, monkeypatch):
    site, stdlib = fake_python(tmp_path)
    monkeypatch.setattr(corpus, "REPOSITORY_MAX_BYTES", 1000)  # the fake numpy is ~5 KB
    corpus.python_corpus([site], stdlib, tmp_path / "raw", code_packages=["numpy"])
    repos = sorted(p.name for p in (tmp_path / "raw/code_repos").iterdir())
    assert repos == ["numpy", "numpy.core", "stdlib-modules", "stdlib-tomllib"]
    assert [p.name for p in (tmp_path / "raw/code_repos/numpy/numpy").iterdir()] == ["__init__.py"]


@pytest.mark.slow
def test_pipeline_end_to_end_on_cpu(tmp_path, texts_bundle):
    from eval_helpers import build_tiny_llama

    hf = build_tiny_llama(tmp_path / "tiny_hf")
    site, stdlib = fake_python(tmp_path / "python")
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "tools/miniature/run.py"), "--work", str(tmp_path / "work"), "--out", str(out),
           "--texts", str(texts_bundle), "--hf-model", str(hf), "--runs", "main", "--device", "cpu",
           "--workers", "1", "--eval-lengths", "512", "--eval-samples", "2", "--eval-tasks", "local_niah_single",
           "--site-packages", str(site), "--stdlib", str(stdlib), *[f"--override={o}" for o in TINY]]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = {e["label"]: e for e in json.loads((out / "summary.json").read_text())}
    assert set(summary) == {"base", "main"}
    main = summary["main"]
    assert main["rotary_base"] == 8.0e6 and main["seq_length"] == 256 and main["tokens_trained"] == 2 * 2 * 256
    assert set(main["recall"]) == {"local_niah_single"} and set(main["recall"]["local_niah_single"]) == {"512"}
    assert set(main["short_text_loss"]) == {"devil", "fortunes"} and min(summary["base"]["short_text_loss"].values()) > 0
    assert (out / "loss_curves.png").is_file() and (out / "eval/main/needle_heatmap.png").is_file()
    # Run again: every step is recorded as done, nothing is redone.
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "train-main ..." not in again.stdout


def test_eval_lengths_are_split_by_cost():
    import run

    assert run.split_lengths(["2K", "4K", "8K", "16K", "32K"], 2) == [["2K", "4K", "8K", "16K"], ["32K"]]
    assert run.split_lengths(["32K", "2K"], 1) == [["2K", "32K"]]
    assert run.split_lengths(["512"], 2) == [["512"]]  # never an empty group
    def lengths(text: str) -> list[str]:
        return run.parse_args(["--work", "w", "--out", "o", "--texts", ".", "--hf-model", ".", "--eval-lengths", text]).eval_lengths

    assert lengths("32K, 2K,2048") == ["2K", "32K"]  # each length once, shortest first
    for bad in ("2K,long", "", "0,2K", "none"):
        with pytest.raises(SystemExit):
            lengths(bad)


@pytest.mark.slow
def test_evaluation_split_over_two_gpus_equals_one_process(tmp_path):
    """A run's evaluation on 2 GPUs: the lengths split between two eval processes, merged into
    one result equal to one process's (here on the CPU, the two 'GPUs' only name the parts)."""
    import run
    from eval_helpers import build_tiny_llama

    from megatron_ext.eval.results import EvalRun

    hf = build_tiny_llama(tmp_path / "tiny_hf")
    work = tmp_path / "work"
    for held_out in run.HELD_OUT:
        (work / held_out).parent.mkdir(parents=True, exist_ok=True)
        (work / held_out).write_text("".join(json.dumps({"text": _prose(i, 40)}) + "\n" for i in range(3)))

    def evaluate(out: Path, gpus: list[str]) -> EvalRun:
        args = run.parse_args(["--work", str(work), "--out", str(out), "--texts", str(tmp_path), "--hf-model", str(hf),
                               "--device", "cpu", "--eval-lengths", "512,1K", "--eval-samples", "2",
                               "--eval-tasks", "local_niah_single,local_niah_uuid"])
        run.Pipeline(args).evaluate("main", hf, gpus)
        return EvalRun.load(out / "eval" / "main")

    split, single = evaluate(tmp_path / "split", ["0", "1"]), evaluate(tmp_path / "single", [])
    assert [len(EvalRun.load(work / f"eval-parts/main/part{i}").lengths) for i in (0, 1)] == [1, 1]  # two processes
    assert split.scores == single.scores and set(split.scores["local_niah_single"]) == {512, 1024}
    assert sorted((s.task, s.length, s.index, s.prediction) for s in split.samples) == \
        sorted((s.task, s.length, s.index, s.prediction) for s in single.samples)
    assert split.text_loss == single.text_loss and set(split.text_loss) == {"devil", "fortunes"}
    assert split.complete and split.settings["lengths"] == [512, 1024]
    assert (tmp_path / "split/eval/main/needle_heatmap.png").is_file()
    assert "1K" in (tmp_path / "split/eval/main/results.md").read_text()
    # Run again (e.g. the step was not marked done): the parts resume, nothing is evaluated twice.
    again = evaluate(tmp_path / "split", ["0", "1"])
    assert again.scores == split.scores and again.text_loss == split.text_loss
    for i in (0, 1):
        second = (tmp_path / f"split/logs/eval-main-part{i}.log").read_text().split("\n$ ")[-1]
        assert "--resume" in second.splitlines()[0] and "[eval] length" not in second and "held-out loss" not in second


def test_device_status_packs_results_before_training_logs_an_iteration(tmp_path):
    """tools/gpu/miniature_on_device.sh status, polled while a run starts: it must still pack the results."""
    (tmp_path / "root/out/logs").mkdir(parents=True)
    (tmp_path / "root/out/pipeline.log").write_text("[miniature 06:09:23] train-main ...\n")
    (tmp_path / "root/out/logs/train-main.log").write_text("loading the base checkpoint\n")  # no 'iter' line yet
    (tmp_path / "out").mkdir()
    proc = subprocess.run(["bash", str(REPO / "tools/gpu/miniature_on_device.sh"), "status"], capture_output=True, text=True,
                          env={**__import__("os").environ, "MINIATURE_ROOT": str(tmp_path / "root"), "OUT": str(tmp_path / "out")})
    assert proc.returncode == 0, proc.stderr
    assert "train-main ..." in proc.stdout and (tmp_path / "out/miniature_out.tgz").stat().st_size > 0
