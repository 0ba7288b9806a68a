"""Damaged run files: what `threed export` and `threed generate --resume` say when a checkpoint is cut short."""

from __future__ import annotations

import torch

from threed.checkpoint import Checkpoint
from threed.cli import main
from threed.config import to_dict
from threed.recipe import load_recipe, save_config


def test_a_truncated_checkpoint_is_named_by_export_and_resume(tmp_path, capsys):
    run = tmp_path / "run"
    cfg = load_recipe("quickstart", prompt="a red cube")
    save_config(cfg, run)
    path = run / "stages" / f"0-{cfg.stages[0].name}" / "last.pt"
    Checkpoint(stage=cfg.stages[0].name, step=3, total_steps=10, scene_kind="nerf",
               scene={"weights": torch.zeros(4096)}, scene_config=to_dict(cfg.stages[0].scene)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a copy cut short
    for argv in (["export", str(run)], ["generate", "--resume", str(run)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"checkpoint {path} cannot be read" in err and "truncated" in err and "Traceback" not in err, err
