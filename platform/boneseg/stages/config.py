"""`boneseg config`: print the resolved settings (params.yaml + experiment + --set)."""
from __future__ import annotations

from boneseg.core.config import Config, to_yaml


def add_parser(sub) -> None:
    p = sub.add_parser("config")
    p.set_defaults(func=main)


def main(args, cfg: Config) -> int:
    print(to_yaml(cfg), end="")
    return 0
