"""The library layer: data, config, preprocessing, the networks, training, evaluation,
inference, labelling and reporting as plain functions and classes, in sub-packages by
domain (LAYERS, bottom to top; "base" is the modules directly in core/).

Nothing here imports a stage module (`boneseg.stages`), the sweep (`boneseg.sweep`,
Ray), tracking (`boneseg.tracking`, MLflow) or argparse, and a sub-package imports only
the ones below it; tests/unit/test_architecture.py enforces both. docs/architecture.md
draws the layers (scripts/docs.py writes that part from the code).
"""
LAYERS = ("base", "imaging", "data", "networks", "inference", "evaluation", "engine", "labelling",
          "reporting")
