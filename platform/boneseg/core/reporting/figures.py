"""The figures' shared set-up: matplotlib without a display (the report and previews)."""
from __future__ import annotations


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no window, works over SSH and in CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
