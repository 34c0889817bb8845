"""``--task path/to/task.py:make_task``: the CLI on a user's own model, data and metric."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from workbench.cli import main
from workbench.tasks import Task, TaskFileError, load_task_file

ROOT = Path(__file__).resolve().parents[2]

TASK_FILE = textwrap.dedent(
    '''
    """A tiny token model: dict inputs (input_ids, attention_mask), no labels, fidelity metric."""
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.utils.data import DataLoader

    from workbench.tasks import fidelity_metric, task_from_model

    from helper_data import samples  # a module next to the task file


    class Pooler(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Parameter(torch.randn(30, 8))  # a lookup table, not an nn.Embedding
            self.proj = nn.Linear(8, 16)
            self.head = nn.Linear(16, 4)

        def forward(self, input_ids, attention_mask):
            e = F.embedding(input_ids, self.table)
            m = attention_mask.unsqueeze(-1).float()
            pooled = (e * m).sum(1) / m.sum(1).clamp_min(1.0)
            return {"logits": self.head(torch.relu(self.proj(pooled)))}


    def make_task():
        torch.manual_seed(0)
        model = Pooler().eval()
        calib = DataLoader(samples(32, seed=1), batch_size=8)
        val = DataLoader(samples(24, seed=2), batch_size=8)
        return task_from_model(
            model, calib_loader=calib, val_loader=val, test_loader=val,
            metric=fidelity_metric(model, "cosine"), name="pooler",
        )


    def not_a_task():
        return {"model": "nope"}
    '''
)

HELPER = textwrap.dedent(
    """
    import torch


    def samples(n, seed):
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, 30, (n, 10), generator=g)
        mask = (torch.arange(10)[None, :] < torch.randint(3, 11, (n, 1), generator=g)).long()
        return [{"input_ids": ids[i], "attention_mask": mask[i]} for i in range(n)]
    """
)


@pytest.fixture()
def task_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_task.py"
    path.write_text(TASK_FILE)
    (tmp_path / "helper_data.py").write_text(HELPER)
    return path


def test_load_task_file(task_file: Path) -> None:
    task = load_task_file(f"{task_file}:make_task")
    assert isinstance(task, Task) and task.name == "pooler"
    assert task.evaluate(split="val") == pytest.approx(1.0)
    assert load_task_file(str(task_file)).name == "pooler"  # the function defaults to make_task


def test_quantize_task_file_subprocess(task_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    cmd = [
        sys.executable, "-m", "workbench", "quantize", "--task", f"{task_file}:make_task",
        "--plan", "uniform:w8a8:per_channel", "--no-track", "--json", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["command"] == "quantize" and result["model"] == "pooler"
    assert result["fp32_accuracy"] == pytest.approx(1.0)
    assert 0.98 < result["accuracy"] < 1.0  # cosine of the quantized model's logits to FP32's
    assert set(result["plan"]) == {"proj", "head"}
    assert result["size_bytes"] < result["fp32_size_bytes"]


def test_task_file_errors(task_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["quantize", "--plan", "uniform:w8a8", "--no-track", "--task"]
    missing = tmp_path / "nowhere.py"
    assert main([*base, f"{missing}:make_task"]) == 2
    assert f"task file {missing} does not exist" in capsys.readouterr().err

    assert main([*base, f"{task_file}:build"]) == 2
    err = capsys.readouterr().err
    assert "defines no 'build'" in err and "make_task" in err  # lists what the file does define

    assert main([*base, f"{task_file}:not_a_task"]) == 2
    assert "returned a dict, not a workbench.tasks.Task" in capsys.readouterr().err

    broken = tmp_path / "broken.py"
    broken.write_text("import no_such_module_here\n")
    with pytest.raises(TaskFileError, match="failed to import: ModuleNotFoundError"):
        load_task_file(broken)


@pytest.mark.parametrize("extra", [["--strategy", "auto"], ["--strategy", "ilp"], ["--strategy", "greedy"],
                                   ["--strategy", "tpe", "--warm-start", "greedy"], ["--strategy", "tpe"]])  # fmt: skip
def test_every_search_strategy_runs_on_a_label_free_task(task_file: Path, tmp_path: Path, extra) -> None:
    """No labels, a fidelity metric: the sensitivity behind auto / greedy / ILP / warm starts is label-free."""
    out = tmp_path / "s.json"
    args = ["search", "--task", f"{task_file}:make_task", "--budget", "3", "--w-bits", "4", "8",
            "--storage", ":memory:", "--no-track", "--quiet", "--json", str(out), *extra]  # fmt: skip
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert result["real_evaluations"] >= 1 and result["front"]
    assert all(0.9 < p["accuracy"] <= 1.0 for p in result["front"])  # cosine to FP32 logits
