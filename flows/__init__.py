"""Prefect flows, one per DVC stage (`python -m flows.<stage>`), plus the GPU worker's flow.

Set before any flow module imports prefect: with no PREFECT_API_URL, each stage process starts a
temporary server whose first start (creating its database) took 17 to 21 s on an idle 2-core
machine, against Prefect's 20 s default limit. Telemetry only logs DNS errors offline.
"""

import os

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
