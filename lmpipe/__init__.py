"""lmpipe: a reproducible pipeline for small language-model research.

Importing the package makes the offline-first environment the default for every tool lmpipe
drives (Hugging Face hub, DVC, Prefect), so no stage or test reaches for the network by accident.
"""

import os

__version__ = "0.1.0"

OFFLINE_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}
for _key, _value in OFFLINE_DEFAULTS.items():
    os.environ.setdefault(_key, _value)
