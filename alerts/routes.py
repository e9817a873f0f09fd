"""Check Alertmanager's routing tree with amtool against alertmanager/tests/routes.yml.

python -m alerts.routes    # one line per case; exit 1 if any alert reaches the wrong receiver
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

REPO_DIR = Path(__file__).resolve().parent.parent
ALERTMANAGER_CONFIG = REPO_DIR / "alertmanager" / "alertmanager.yml"
ROUTE_CASES = REPO_DIR / "alertmanager" / "tests" / "routes.yml"


def route_cases(path: Path = ROUTE_CASES) -> list[dict]:
    return yaml.safe_load(path.read_text())


def amtool_route_test(
    labels: dict[str, str], receiver: str, config: Path = ALERTMANAGER_CONFIG
) -> subprocess.CompletedProcess:
    """amtool's verdict on whether an alert with `labels` reaches exactly `receiver`."""
    return subprocess.run(
        [
            "amtool",
            "config",
            "routes",
            "test",
            f"--config.file={config}",
            f"--verify.receivers={receiver}",
            *(f"{name}={value}" for name, value in sorted(labels.items())),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


def main() -> int:
    failed = 0
    for case in route_cases():
        result = amtool_route_test(case["labels"], case["receiver"])
        ok = result.returncode == 0
        failed += not ok
        got = result.stdout.strip().splitlines()[0] if result.stdout.strip() else "?"
        labels = ",".join(f"{k}={v}" for k, v in case["labels"].items())
        print(f"{'ok  ' if ok else 'FAIL'} {labels} -> {got} (want {case['receiver']})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
