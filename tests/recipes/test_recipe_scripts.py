"""Every recipe script's command lines parse: each recipes/*.sh is run with its python replaced by a recorder
(nothing trains), and what it would have run goes through the real argument parsers, so a renamed or
mistyped option fails here rather than an hour into someone's training run."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from perceiverar.train_args import parse_args
from recipes.export_checkpoint import build_parser

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((ROOT / "recipes").glob("*.sh"))
ARGS = {"caption_probe.sh": ["checkpoints/emoji", "emoji"]}  # scripts that take positional arguments
SHIM = """#!/usr/bin/env bash
n=$(ls "$CALLS" | wc -l)
printf '%s\\0' "$@" > "$CALLS/$(printf '%03d' "$n")"
"""


def recorded_calls(script: Path, tmp_path: Path, args=()) -> list[list[str]]:
    """The argument lists the script passes to .venv/bin/python, in order (the script run from a copy of
    recipes/ beside a recording .venv/bin/python)."""
    (tmp_path / "recipes").mkdir()
    shutil.copy(script, tmp_path / "recipes" / script.name)
    venv = tmp_path / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text(SHIM)
    (venv / "python").chmod(0o755)
    calls = tmp_path / "calls"
    calls.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("DATA", "RUN", "NAME", "STEPS", "LR", "INIT_FROM")}
    subprocess.run(["bash", str(tmp_path / "recipes" / script.name), *args], check=True, cwd=tmp_path,
                   env={**env, "CALLS": str(calls)}, capture_output=True, timeout=60)
    return [f.read_bytes().decode().split("\0")[:-1] for f in sorted(calls.iterdir())]


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_recipe_command_lines_parse(script, tmp_path):
    calls = recorded_calls(script, tmp_path, ARGS.get(script.name, ()))
    assert calls, f"{script.name} runs no python"
    for argv in calls:
        assert argv[0] == "-m", argv
        module, args = argv[1], argv[2:]
        assert importlib.util.find_spec(module) is not None, f"{script.name}: no module {module}"
        if module == "perceiverar.train":
            a = parse_args(args)
            assert a.max_steps >= 1 and a.out
        elif module == "recipes.export_checkpoint":
            a = build_parser().parse_args(args)
            assert a.recipe.startswith("bash recipes/") and a.name


def test_a_mistyped_option_is_caught(tmp_path):
    """The check can fail: a recipe with an option perceiverar-train does not have."""
    bad = tmp_path / "src" / "bad.sh"
    bad.parent.mkdir()
    bad.write_text('#!/usr/bin/env bash\nset -euo pipefail\ncd "$(dirname "$0")/.."\n'
                   '.venv/bin/python -m perceiverar.train --data x --out y --max-steps 3 --no-such-option\n')
    (argv,) = recorded_calls(bad, tmp_path)
    with pytest.raises(SystemExit):
        parse_args(argv[2:])
