"""`boneseg promote VERSION`: move the registered model's alias `champion` to a version by
hand (the sweep's promotion gate moves it only when a new version beats the champion on
the same splits), and tag it with who asked for it."""
from __future__ import annotations

import argparse

from boneseg.core.config import Config
from boneseg.errors import DataError


def add_parser(sub) -> None:
    p = sub.add_parser("promote")
    p.add_argument("version", help="the registered version to serve as models:/NAME@champion, e.g. 3")
    p.set_defaults(func=main)


def main(args: argparse.Namespace, cfg: Config) -> int:
    from boneseg.core.redact import redact
    from boneseg.tracking.registry import CHAMPION, promote_by_hand
    from boneseg.tracking.runs import client_for, tracking_uri, unreachable

    name = cfg.tracking.registered_model or "boneseg"
    if not str(args.version).isdigit():
        raise DataError(f"promote {args.version}: expected a version number of models:/{name}, e.g. 3.")
    why = unreachable(cfg)
    if why:
        raise DataError(f"promote: the tracking store {why}")
    old = promote_by_hand(client_for(cfg), name, args.version, redact(tracking_uri(cfg)))
    print(f"promote: models:/{name}@{CHAMPION} is version {args.version}"
          + (f" (was version {old})" if old else ""))
    return 0
