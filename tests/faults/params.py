"""Load sizes of the fault tests, from the environment so a developer or CI can scale them."""

from __future__ import annotations

import os

# Audit events per run; 37.5k is the scale at which issue #8 measured its losses.
EVENTS = int(os.environ.get("FAULTS_EVENTS", "37500"))
# The OTLP outage at full load (bench/faults.py uses the 60 s).
OUTAGE_SECONDS = float(os.environ.get("FAULTS_OUTAGE_SECONDS", "15"))
CONCURRENCY = int(os.environ.get("FAULTS_CONCURRENCY", "4"))
# How long delivery may take once nothing disturbs it; only a failing run waits that long.
SETTLE_SECONDS = float(os.environ.get("FAULTS_SETTLE_SECONDS", "60"))
