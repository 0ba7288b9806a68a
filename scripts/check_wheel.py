"""Check a built threed wheel: it carries every shipped recipe and prior file, nothing git ignores, and stays small.

    python3 -m pip wheel . --no-deps -w /tmp/whl && python3 scripts/check_wheel.py /tmp/whl/threed-*.whl

Run from the checkout the wheel was built from (``.ci/run`` does, before installing it in a fresh venv): the
files to expect are the tracked ones under ``threed/recipes`` and ``threed/priors`` (``git ls-files``), each
compared by size. Exit status 1 and a list of what is wrong otherwise.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
from pathlib import Path

MAX_WHEEL_MB = 30.0
"""The three embedded toy priors are about 18 MB of weights (text, view and multi-view); a package index takes 100 MB by
default. Past this, something that is not a shipped file got in (a training checkpoint, outputs)."""
DATA = ("threed/recipes/", "threed/priors/")


def tracked_data(root: Path) -> dict[str, int]:
    """Tracked package-data files (path -> size) of the checkout at ``root``."""
    out = subprocess.run(["git", "ls-files", "-z", "--", *DATA], cwd=root, capture_output=True, check=True)
    names = [n for n in out.stdout.decode().split("\0") if n and not n.endswith(".py")]
    return {n: (root / n).stat().st_size for n in names}


def problems(wheel: Path, root: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        packed = {i.filename: i.file_size for i in zf.infolist() if not i.is_dir()}
    found = []
    expected = tracked_data(root)
    if not any(n.startswith("threed/recipes/") for n in expected):
        found.append(f"no tracked recipes under {root / 'threed/recipes'}: is {root} the checkout?")
    for name, size in sorted(expected.items()):
        if name not in packed:
            found.append(f"missing from the wheel: {name}")
        elif packed[name] != size:
            found.append(f"{name}: {packed[name]} bytes in the wheel, {size} in the checkout")
    extra = sorted(n for n in packed if n.startswith(DATA) and not n.endswith(".py") and n not in expected)
    found += [f"not a tracked file, but in the wheel: {n}" for n in extra]
    megabytes = wheel.stat().st_size / 1e6
    if megabytes > MAX_WHEEL_MB:
        found.append(f"the wheel is {megabytes:.1f} MB, more than {MAX_WHEEL_MB:.0f} MB")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wheel", type=Path)
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="the checkout it was built from (default: this script's)")
    args = parser.parse_args(argv)
    found = problems(args.wheel, args.root)
    for line in found:
        print(f"check_wheel: {line}", file=sys.stderr)
    if not found:
        with zipfile.ZipFile(args.wheel) as zf:
            data = sum(n.startswith(DATA) for n in zf.namelist())
        print(f"check_wheel: {args.wheel.name}: {args.wheel.stat().st_size / 1e6:.1f} MB, {data} recipe and prior "
              f"files, all tracked and all there")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
