"""Always-valid confidence sequences: peeking after every batch keeps the error rate <= alpha."""

from __future__ import annotations

import numpy as np

from mlsd.platform.experiments.analysis import compare, confidence_sequence, cs_multiplier
from mlsd.platform.experiments.exposures import MetricStats

ALPHA = 0.05


def test_multiplier_is_the_normal_mixture_boundary():
    """Independent form (Howard et al. 2021, eq. for the two-sided normal mixture on a sum S_t with
    intrinsic time V_t = t, mixing parameter rho): |S_t| <= sqrt((V + rho) log((V + rho) / (rho alpha^2)))."""
    planned = 5000
    la = -2 * np.log(ALPHA)
    rho = planned / (la + np.log(la + 1))  # same mixing variance, expressed as Howard's rho
    t = np.array([100.0, 1000.0, 5000.0, 1e5])
    boundary_on_sum = np.sqrt((t + rho) * np.log((t + rho) / (rho * ALPHA**2)))
    assert np.allclose(cs_multiplier(t, ALPHA, planned), boundary_on_sum / np.sqrt(t))
    m = cs_multiplier(t, ALPHA, planned)
    assert np.all(m > 1.96) and 2.8 < cs_multiplier(planned, ALPHA, planned) < 3.2
    low, high = confidence_sequence(1.0, 0.1, planned, ALPHA, planned)
    assert np.isclose(high - 1.0, 1.0 - low) and np.isclose(
        high - 1.0, 0.1 * cs_multiplier(planned, ALPHA, planned)
    )


def _peeking_stats(rng, seeds, units, looks, effect=0.0):
    """Cumulative stats of ``seeds`` experiments after each of the ``looks`` (units so far)."""
    arm = np.arange(units) % 2
    y = rng.normal(0.0, 1.0, (seeds, units)) + effect * arm
    # Cumulative per-arm sums over units, read at each look: (seeds, looks, arms, ...).
    onehot = (arm[:, None] == np.arange(2)).astype(np.float64)  # (U, A)
    cum_n = np.cumsum(onehot, axis=0)[looks - 1]  # (L, A)
    cum_s = np.stack([np.cumsum(y * onehot[:, a], axis=1)[:, looks - 1] for a in range(2)], axis=-1)
    cum_q = np.stack([np.cumsum(y * y * onehot[:, a], axis=1)[:, looks - 1] for a in range(2)], axis=-1)
    n = np.broadcast_to(cum_n, (seeds, *cum_n.shape))
    return MetricStats("m", ("y",), ("control", "treatment"), n, cum_s[..., None], cum_q[..., None, None])


def test_continuous_peeking_keeps_the_sequential_error_rate_while_naive_peeking_inflates_it():
    rng = np.random.default_rng(11)
    units, seeds = 3000, 500
    looks = np.arange(200, units + 1, 20)  # 141 looks, every 20 units after the first 200
    c = compare(_peeking_stats(rng, seeds, units, looks), alpha=ALPHA, planned_n=units)
    assert c.p_value.shape == (seeds, len(looks))
    naive = np.mean((c.p_value < ALPHA).any(axis=1))  # stop at the first look with p < 0.05
    sequential = np.mean(c.sequential_significant.any(axis=1))
    once = np.mean(c.p_value[:, -1] < ALPHA)  # looking once, at the end, is fine
    assert naive > 3 * ALPHA  # typically ~0.25 with this many looks
    assert sequential <= ALPHA
    assert 0.03 <= once <= 0.07


def test_confidence_sequence_covers_a_planted_effect_at_every_look_and_detects_it():
    rng = np.random.default_rng(12)
    units, seeds, effect = 3000, 400, 0.15
    looks = np.arange(200, units + 1, 50)
    c = compare(_peeking_stats(rng, seeds, units, looks, effect), alpha=ALPHA, planned_n=units)
    ever_missed = ((c.cs_low > effect) | (c.cs_high < effect)).any(axis=1)
    assert ever_missed.mean() <= ALPHA  # time-uniform coverage of the true effect
    stopped = c.sequential_significant.any(axis=1)
    assert stopped.mean() > 0.5  # power at 3000 units for a 0.15 sd effect
    first = np.argmax(c.sequential_significant, axis=1)
    assert np.all(c.diff[stopped, first[stopped]] > 0)  # every stop has the right sign


def test_calibration_command_reproduces_the_documented_rates():
    from mlsd.platform.experiments.calibration import calibrate

    result = calibrate(seeds=400, units=1000, looks=40, srm_units=50_000, srm_loss=0.05)
    assert result["naive_peeking_fpr"] > 2 * result["alpha"] > result["sequential_fpr"] * 2
    assert result["sequential_fpr"] <= result["alpha"]
    assert abs(result["cuped_variance_reduction"] - result["rho"] ** 2) < 0.03
    assert result["fixed_horizon_power"] > result["sequential_power"] > 0  # the price of peeking safely
    assert result["srm_false_alarm_rate"] < 0.01 and result["srm_power"] > 0.8
