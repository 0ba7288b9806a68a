"""The command model: argv <-> typed requests, shared by the command line and the web app."""

import os
import subprocess
import sys

import pytest

from threed.app.request import JobRequest, resume_command
from threed.commands import COMMANDS, App, Batch, Doctor, Edit, Export, Generate, Render, Texture, build_parser, parse


@pytest.mark.parametrize("request_", [
    Generate.request("a red cube", ["max_steps=5", "seed=2"], recipe="quickstart-mesh", out="runs/x"),
    Generate.request("", ["max_steps=5"], image="/tmp/photo.png", mask="/tmp/mask.png"),
    Generate.resuming("runs/x", ["max_steps=9"]),
    Texture.request("chair.obj", "a red chair", ["max_steps=5"], recipe="texture-sd", up="z", out="runs/t"),
    Texture.request("part.glb", "a blue cube"),
    Edit(items=["runs/x", "a blue cube", "stages.0.steps=50"], rule="pds", source_prompt="a red cube", out="runs/y"),
    Export(run_dir="runs/x", format=["glb", "ply"], faces=0, no_normalize=True, video=True),
    Render(run_dir="runs/x", frames=12, shading="normal"),
    Batch(items=["prompts.txt", "max_steps=3"], workers=2, ray="local"),
    App(host="0.0.0.0", auth=["ann:pw1", "bob:pw2"], queue_limit=3, client_limit=1),
    App(host="0.0.0.0", auth_file="logins.txt", no_auth=False),
    App(host="0.0.0.0", no_auth=True, port=8000),
    Doctor(),
    Doctor(recipe="dreamfusion-sd", items=["model=/weights/sd", "device=cuda"]),
])
def test_a_request_survives_the_command_line(request_):
    """What the app (or the API) builds is exactly what the CLI parses back from its argv."""
    assert parse(request_.argv()) == request_


def test_overrides_may_follow_options_and_unknown_options_fail():
    got = parse(["generate", "a cube", "--out", "d", "max_steps=5"])
    assert isinstance(got, Generate) and got.items == ["a cube", "max_steps=5"] and got.out == "d"
    with pytest.raises(SystemExit):
        parse(["generate", "a cube", "--no-such-option"])
    with pytest.raises(SystemExit):
        parse(["export", "runs/x", "extra"])


def test_every_command_has_a_subparser_with_its_fields():
    parser = build_parser()
    for cls in COMMANDS:
        assert cls.name in parser.format_help()


def test_the_app_runs_the_command_a_person_would_type(tmp_path):
    req = JobRequest("a red cube", recipe="quickstart", steps=4, seed=3, overrides=["export.video=false"])
    got = parse(req.command(tmp_path / "run"))
    assert got == Generate(items=["a red cube", "max_steps=4", "seed=3", "export.video=false"], recipe="quickstart",
                           out=str(tmp_path / "run"))
    assert parse(resume_command(tmp_path / "run")) == Generate(resume=str(tmp_path / "run"))


def test_importing_the_cli_changes_nothing_in_the_process():
    """No import-time side effects: the OpenMP/allocator settings are applied by main(), not by import."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = "import os, threed.cli, threed.commands; print(os.environ.get('OMP_WAIT_POLICY'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None"
    code = "import os, threed.cli; threed.cli.main(['recipes']); print(os.environ.get('OMP_WAIT_POLICY'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "PASSIVE"
