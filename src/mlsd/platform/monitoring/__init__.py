"""Monitoring shared by the three systems: drift against the training reference and Prometheus helpers.

* :mod:`~mlsd.platform.monitoring.drift` -- ``DriftMonitor(reference).fit().report(current)``: PSI with
  bands and KS per feature, prediction drift.
* :mod:`~mlsd.platform.monitoring.metrics` -- batch-first Prometheus helpers: score histograms, decision
  mix, experiment exposures, drift gauges.
* :mod:`~mlsd.platform.monitoring.cli` -- ``mlsd monitor report --reference A --current B --json``.
"""

from mlsd.platform.monitoring.drift import DriftMonitor, ks, prediction_drift, psi, psi_band

__all__ = ["DriftMonitor", "ks", "prediction_drift", "psi", "psi_band"]
