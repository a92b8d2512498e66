import json

import pytest
from eval_helpers import load_tool

pytest.importorskip("matplotlib")

from megatron_ext.eval import plots, report  # noqa: E402
from megatron_ext.eval.results import EvalRun, SampleResult  # noqa: E402

compare_cli = load_tool("compare_evals")
PNG = b"\x89PNG\r\n\x1a\n"


def make_run(name: str, recall: dict[int, float], trained: int = 8192) -> EvalRun:
    """A run whose needle scores fall from `recall[length]` at depth 0 to 0 at depth 100."""
    run = EvalRun(model={"path": f"/models/{name}", "max_position_embeddings": trained}, settings={"backend": "native"})
    for length, top in recall.items():
        for i, depth in enumerate((0.0, 50.0, 100.0)):
            score = top * (1 - depth / 100)
            run.samples.append(SampleResult("local_niah_single", length, i, score, "x", ["1"], depth))
        run.scores.setdefault("local_niah_single", {})[length] = top / 2
        run.scores.setdefault("niah_single_1", {})[length] = top
    run.complete = True
    return run


def test_save_load_round_trip_and_nan_as_null(tmp_path):
    run = make_run("a", {4096: 1.0, 16384: 0.5})
    run.scores["json_kv"] = {4096: float("nan")}
    run.skip("hellaswag", "data not available")
    run.save(tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["scores"]["json_kv"] == {"4096": None}
    assert saved["depth_grid"]["local_niah_single"]["16384"] == {"0.0": 0.5, "50.0": 0.25, "100.0": 0.0}
    back = EvalRun.load(tmp_path)
    assert back.scores["niah_single_1"] == {4096: 1.0, 16384: 0.5}
    assert back.samples == run.samples and back.skipped == run.skipped and back.complete


def test_merge_joins_lengths_and_the_later_run_wins():
    early = make_run("a", {4096: 1.0, 16384: 0.5})
    early.settings.update(lengths=[4096, 16384], data={"seed": 1})
    early.skip("helmet_recall", "no HELMET checkout")
    early.text_loss["devil"] = {"loss": 3.0, "tokens": 10, "documents": 1}
    later = make_run("a", {16384: 0.8, 32768: 0.4})
    later.settings.update(lengths=[16384, 32768], data={"seed": 1})
    later.helmet["helmet_recall"] = {16384: 0.7}
    later.complete = False
    early.merge(later)
    assert early.scores["niah_single_1"] == {4096: 1.0, 16384: 0.8, 32768: 0.4}
    assert sorted({(s.length, s.score) for s in early.samples if s.length == 16384}) == [(16384, 0.0), (16384, 0.4), (16384, 0.8)]
    assert len(early.samples) == 9 and early.settings["lengths"] == [4096, 16384, 32768]
    assert early.text_loss["devil"]["loss"] == 3.0 and early.skipped == []  # HELMET measured later: no longer skipped
    assert not early.complete
    other = make_run("a", {4096: 1.0})
    other.settings["data"] = {"seed": 2}
    with pytest.raises(ValueError, match="other data settings"):
        early.merge(other)


def test_load_rejects_foreign_json(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"results": {}}))
    with pytest.raises(ValueError, match="not an evaluation result"):
        EvalRun.load(tmp_path)
    with pytest.raises(FileNotFoundError):
        EvalRun.load(tmp_path / "missing")


def test_recall_table_marks_lengths_beyond_training():
    table = report.recall_table(make_run("a", {4096: 1.0, 8192: 0.8, 16384: 0.2}))
    assert "| task | 4K | 8K | 16K† |" in table
    assert "| niah_single_1 | 100.0 | 80.0 | 20.0 |" in table
    assert "| **average** | **75.0** | **60.0** | **15.0** |" in table
    assert "beyond the model's max_position_embeddings (8192)" in table


def test_plots_are_written_only_when_there_is_data(tmp_path):
    run = make_run("a", {4096: 1.0, 16384: 0.3})
    assert plots.plot_needle_heatmap(run, tmp_path / "h.png").read_bytes()[:8] == PNG
    assert plots.plot_score_vs_length(run, tmp_path / "c.png").read_bytes()[:8] == PNG
    empty = EvalRun(model={}, settings={})
    assert plots.plot_needle_heatmap(empty, tmp_path / "h2.png") is None
    assert plots.plot_score_vs_length(empty, tmp_path / "c2.png") is None


def test_compare_command(tmp_path, capsys):
    for name, recall in [("base", {4096: 1.0, 16384: 0.1}), ("stage1", {4096: 1.0, 16384: 0.9, 65536: 0.5})]:
        make_run(name, recall).save(tmp_path / name)
    out = tmp_path / "cmp"
    assert compare_cli.main([str(tmp_path / "base"), str(tmp_path / "stage1" / "results.json"), "--out", str(out)]) == 0
    table = (out / "comparison.md").read_text()
    assert "| run | 4K | 16K | 64K |" in table
    assert "| base | 75.0 | 7.5 | – |" in table and "| stage1 | 75.0 | 67.5 | 37.5 |" in table
    assert (out / "comparison.png").read_bytes()[:8] == PNG
    assert "comparison.md" in capsys.readouterr().out


def test_compare_command_bad_input(tmp_path, capsys):
    make_run("a", {4096: 1.0}).save(tmp_path / "a")
    assert compare_cli.main([str(tmp_path / "a"), str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "no results.json" in capsys.readouterr().err
    assert compare_cli.main([str(tmp_path / "a"), str(tmp_path / "a"), "--out", str(tmp_path / "o")]) == 2
    assert "labels must differ" in capsys.readouterr().err
    assert compare_cli.main([str(tmp_path / "a"), "--labels", "x,y", "--out", str(tmp_path / "o")]) == 2
