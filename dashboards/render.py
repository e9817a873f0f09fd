"""Render dashboards/*.dashboard.py into dashboards/generated/<uid>.json.

    python -m dashboards.render                  # what `make dashboards` runs
    python -m dashboards.render --check          # exit 1 if a committed file is stale
    python -m dashboards.render --set '{"alerts": {"HighJobFailureRate": {"threshold": 0.2}}}'

Each definition is loaded with grafanalib's own loader (as its ``generate-dashboard``
does), against alerts/config.libsonnet plus the same ``--set``/``--config`` overrides
``python -m alerts.render`` takes. The output is deterministic: sorted keys, indent 2,
explicit uids and panel ids.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from grafanalib._gen import DashboardEncoder, loader

DASHBOARDS_DIR = Path(__file__).resolve().parent
REPO_DIR = DASHBOARDS_DIR.parent
GENERATED_DIR = DASHBOARDS_DIR / "generated"
SUFFIX = ".dashboard.py"

if str(REPO_DIR) not in sys.path:  # the definitions import the `dashboards` modules
    sys.path.insert(0, str(REPO_DIR))

from dashboards.alerting import alerts_config  # noqa: E402


def definitions() -> list[Path]:
    return sorted(DASHBOARDS_DIR.glob(f"*{SUFFIX}"))


def to_json(dashboard) -> str:
    return (
        json.dumps(dashboard.to_json_data(), sort_keys=True, indent=2, cls=DashboardEncoder) + "\n"
    )


def rendered(overrides: Mapping | None = None, config_files: Sequence[str] = ()) -> dict[str, str]:
    """File name (``<uid>.json``) -> JSON text of every dashboard, without writing."""
    out = {}
    with alerts_config(overrides, config_files):
        for path in definitions():
            dashboard = loader(str(path))
            name = f"{dashboard.uid}.json"
            if name in out:
                raise ValueError(f"{path.name}: uid {dashboard.uid!r} is used twice")
            out[name] = to_json(dashboard)
    return out


def render(
    out_dir: Path = GENERATED_DIR,
    overrides: Mapping | None = None,
    config_files: Sequence[str] = (),
) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = rendered(overrides, config_files)
    for stale in out_dir.glob("*.json"):
        if stale.name not in files:
            stale.unlink()
    paths = []
    for name, text in files.items():
        path = out_dir / name
        path.write_text(text)
        paths.append(path)
    return paths


def stale_files(out_dir: Path = GENERATED_DIR) -> list[str]:
    """Names of committed files that differ from a fresh render (or are missing/extra)."""
    fresh = rendered()
    committed = {p.name: p.read_text() for p in out_dir.glob("*.json")}
    return sorted(n for n in fresh.keys() | committed.keys() if fresh.get(n) != committed.get(n))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=GENERATED_DIR)
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    parser.add_argument("--config", action="append", default=[], metavar="FILE")
    parser.add_argument("--set", dest="overrides", type=json.loads, default=None, metavar="JSON")
    args = parser.parse_args(argv)
    try:
        if args.check:
            stale = stale_files(args.out_dir)
            for name in stale:
                print(f"stale: {args.out_dir / name} (run `make dashboards`)", file=sys.stderr)
            return 1 if stale else 0
        for path in render(args.out_dir, args.overrides, args.config):
            shown = path.relative_to(REPO_DIR) if path.is_relative_to(REPO_DIR) else path
            print(f"wrote {shown}")
    except (RuntimeError, ValueError) as exc:  # jsonnet errors, colliding panel ids
        print(f"dashboards.render: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
