"""Every W&B sweep: one per objective, and each override it can produce parses and lands in the built run."""

from pathlib import Path

import pytest
import yaml

from lit_dr.commands.cli import LitDrCLI
from lit_dr.objectives.base import BiEncoderModule
from lit_dr.training.datamodule import RetrievalDataModule

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))


def test_a_sweep_per_objective():
    objectives = {p.stem for p in (ROOT / "configs").glob("*.yaml")} - {"dance_stage1"}
    assert {p.stem for p in SWEEPS} == objectives


def candidate_values(spec: dict) -> list:
    """The values a trial can get: every listed value, or both ends of a distribution."""
    return spec["values"] if "values" in spec else [spec["min"], spec["max"]]


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_overrides_parse_and_apply(path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setattr("sys.argv", ["lit-dr"])  # the CLI is given `args`, not pytest's command line
    sweep = yaml.safe_load(path.read_text())
    assert sweep["program"] == "lit-dr" and sweep["metric"]["name"] == "val/ndcg@10"
    command = sweep["command"]
    assert command[:2] == ["lit-dr", "fit"] and command[-1] == "${args}"
    config = ROOT / command[command.index("--config") + 1]
    assert config.is_file()
    trials = max(len(candidate_values(spec)) for spec in sweep["parameters"].values())
    for t in range(trials):  # trial t takes the t-th candidate of each knob (wrapping): every value is parsed
        chosen = {key: candidate_values(spec)[t % len(candidate_values(spec))]
                  for key, spec in sweep["parameters"].items()}
        # W&B's ${args} expands to --key=value, booleans as True/False.
        cli = LitDrCLI(BiEncoderModule, RetrievalDataModule, subclass_mode_model=True, run=False,
                       auto_configure_optimizers=False,
                       args=["--config", str(config), *(f"--{k}={v}" for k, v in chosen.items())])
        for key, value in chosen.items():
            assert cli.config[key] == value, (path.name, key)
        assert type(cli.model).__name__.lower()[:4] == path.stem[:4]
