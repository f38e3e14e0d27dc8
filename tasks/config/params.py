"""Reading `params.yaml` and applying scale profiles from `configs/`.

DVC tracks the values in params.yaml, so a profile is applied by merging it into params.yaml
(`python -m tasks.config.params apply configs/X.yaml`): `dvc params diff` then shows exactly what changed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

PARAMS_FILE = Path("params.yaml")


def read_yaml(path: str | Path) -> Any:
    """A YAML file read as DVC reads and writes it: YAML 1.2, where `no`, `on` and `yes` are strings.

    `dvc exp run -S` rewrites params.yaml with its YAML 1.2 writer, which drops the quotes around
    `"no"`; a YAML 1.1 loader (PyYAML) would then read `mixed_precision: no` as False."""
    from ruamel.yaml import YAML

    with open(path) as f:
        return YAML(typ="safe", pure=True).load(f)


def load_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run from the repository root")
    params = read_yaml(path) or {}
    if not isinstance(params, dict):
        raise ValueError(f"{path} must hold a mapping of stage sections, got {type(params).__name__}")
    return params


def stage_params(stage: str, path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """The section of params.yaml that belongs to `stage`."""
    params = load_params(path)
    if stage not in params:
        raise KeyError(f"params.yaml has no section '{stage}' (sections: {', '.join(params)})")
    return params[stage]


def apply_profile(profile: str | Path, path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """Merge a profile from configs/ into params.yaml in place and return the result."""
    # The round-trip loader keeps the comments that document each param.
    from ruamel.yaml import YAML

    rt = YAML()
    rt.preserve_quotes = True
    with open(profile) as f:
        overlay = rt.load(f) or {}
    unknown = set(overlay) - set(load_params(path))
    if unknown:
        raise KeyError(f"profile {profile} names sections params.yaml lacks: {sorted(unknown)}")
    with open(path) as f:
        doc = rt.load(f)
    _merge_into(doc, overlay)
    with open(path, "w") as f:
        rt.dump(doc, f)
    return load_params(path)


def _merge_into(doc: dict, overlay: dict) -> None:
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            _merge_into(doc[key], value)
        else:
            doc[key] = value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    apply = sub.add_parser("apply", help="merge a profile from configs/ into params.yaml")
    apply.add_argument("profile")
    args = parser.parse_args()
    apply_profile(args.profile)
    print(f"applied {args.profile} to {PARAMS_FILE}; see `dvc params diff`")


if __name__ == "__main__":
    main()
