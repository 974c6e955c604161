"""boneseg: multi-class bone segmentation of CT, as tracked and reproducible experiments."""
import os as _os

__version__ = "0.1.0"

# Nothing phones home by default (medical sites expect that). A user may still opt in
# by exporting the variable with another value before running boneseg.
TELEMETRY_OFF = {
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "DO_NOT_TRACK": "1",
}
for _k, _v in TELEMETRY_OFF.items():
    _os.environ.setdefault(_k, _v)
