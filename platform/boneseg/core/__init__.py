"""The library layer: data, config, preprocessing, the model, training, evaluation and
inference as plain functions and classes.

Nothing here imports a stage module (`boneseg.stages`), the sweep (`boneseg.sweep`,
Ray), tracking (`boneseg.tracking`, MLflow) or argparse; tests/unit/test_architecture.py
enforces it. docs/architecture.md draws the layers.
"""
