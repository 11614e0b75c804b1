"""Monitoring shared by the three systems: drift against the training reference and Prometheus helpers.

* :mod:`~mlsd.platform.monitoring.drift` -- ``DriftMonitor(reference).fit().report(current)``: PSI with
  bands and KS per feature, prediction drift.
* :mod:`~mlsd.platform.monitoring.metrics` -- batch-first Prometheus helpers: score histograms, decision
  mix, experiment exposures, drift gauges.
* :mod:`~mlsd.platform.monitoring.sample` -- ``ServingSample``: a bounded uniform sample of served rows
  (the "current" side of a drift report).
* :mod:`~mlsd.platform.monitoring.cli` -- ``mlsd monitor report --reference A --current B --json`` and
  ``mlsd monitor report --system S --workdir W`` (each system's own reference and current windows).
"""

from mlsd.platform.monitoring.drift import DriftMonitor, ks, prediction_drift, psi, psi_band
from mlsd.platform.monitoring.sample import ServingSample

__all__ = ["DriftMonitor", "ServingSample", "ks", "prediction_drift", "psi", "psi_band"]
