"""Steerability slopes against numpy.polyfit, propensity and the metrics on hand examples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interventions.evaluation.steerability import (
    SteerabilityMetrics,
    propensity,
    steerability_slopes,
)


@pytest.mark.parametrize("shape", [(7,), (5, 7), (3, 4, 7), (2, 1, 3, 7)])
def test_slopes_match_polyfit(shape):
    g = torch.Generator().manual_seed(sum(shape))
    multipliers = torch.tensor([-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 2.5], dtype=torch.float64)
    p = torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 1
    slopes = steerability_slopes(p, multipliers)
    assert slopes.shape == shape[:-1] and slopes.dtype == torch.float64
    flat_p = p.reshape(-1, shape[-1]).numpy()
    expected = np.array([np.polyfit(multipliers.numpy(), row, 1)[0] for row in flat_p])
    np.testing.assert_allclose(slopes.reshape(-1).numpy(), expected, rtol=0, atol=1e-10)


def test_slopes_of_exact_lines_and_list_multipliers():
    lam = [0.0, 1.0, 2.0, 4.0]
    p = torch.tensor([[1.0 + 2.0 * x for x in lam], [3.0 - 0.5 * x for x in lam]])
    torch.testing.assert_close(steerability_slopes(p, lam), torch.tensor([2.0, -0.5]))
    # repeated multipliers are fine as long as two are distinct
    p2 = torch.tensor([0.0, 2.0, 1.0, 3.0])  # at lambda 0, 0, 1, 1: means 1 and 2 -> slope 1
    assert steerability_slopes(p2, [0.0, 0.0, 1.0, 1.0]).item() == pytest.approx(1.0)


def test_slope_errors():
    with pytest.raises(ValueError, match="two distinct multipliers"):
        steerability_slopes(torch.zeros(3, 2), [1.0, 1.0])
    with pytest.raises(ValueError, match="two distinct multipliers"):
        steerability_slopes(torch.zeros(3, 1), [1.0])
    with pytest.raises(ValueError, match="one value per multiplier"):
        steerability_slopes(torch.zeros(3, 4), [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="one-dimensional"):
        steerability_slopes(torch.zeros(3, 4), torch.zeros(2, 2))


def test_propensity_by_hand():
    logits = torch.tensor(
        [
            [0.0, 1.0, 3.0, -2.0],  # pos 2, neg 1: 3 - 1 = 2
            [5.0, 0.5, 0.0, 1.5],  # pos 3, neg 0: 1.5 - 5 = -3.5
        ]
    )
    pos, neg = torch.tensor([2, 3]), torch.tensor([1, 0])
    torch.testing.assert_close(propensity(logits, pos, neg), torch.tensor([2.0, -3.5]))
    # it is the log-probability difference
    logp = logits.log_softmax(-1)
    torch.testing.assert_close(propensity(logits, pos, neg), logp[[0, 1], pos] - logp[[0, 1], neg])
    # ids broadcast over leading dims: [M, B, vocab] logits with [B] ids, or plain ints
    stacked = torch.stack([logits, 2 * logits])  # [2, 2, 4]
    torch.testing.assert_close(
        propensity(stacked, pos, neg), torch.tensor([[2.0, -3.5], [4.0, -7.0]])
    )
    torch.testing.assert_close(propensity(logits, 0, 1), torch.tensor([-1.0, 4.5]))
    # half precision is computed in float32
    assert propensity(logits.half(), pos, neg).dtype == torch.float32


def test_propensity_errors():
    logits = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="does not broadcast"):
        propensity(logits, torch.tensor([1, 2, 3]), 0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        propensity(logits, torch.tensor([1, 4]), 0)
    with pytest.raises(ValueError, match="integer token ids"):
        propensity(logits, torch.tensor([1.0, 2.0]), 0)


def test_metrics_by_hand():
    metrics = SteerabilityMetrics(prefix="test/caa_fixed/")
    metrics.update(torch.tensor([1.0, -2.0, 0.0]))  # 0 is not steerable
    metrics.update(torch.tensor([3.0], dtype=torch.float64))
    values = metrics.compute()
    assert set(values) == {"test/caa_fixed/steerability", "test/caa_fixed/prop_steerable"}
    assert values["test/caa_fixed/steerability"].item() == pytest.approx(0.5)  # (1-2+0+3)/4
    assert values["test/caa_fixed/prop_steerable"].item() == pytest.approx(0.5)  # 2 of 4
    metrics.reset()
    metrics.update(torch.tensor([2.0, 4.0]))
    values = metrics.compute()
    assert values["test/caa_fixed/steerability"].item() == pytest.approx(3.0)
    assert values["test/caa_fixed/prop_steerable"].item() == pytest.approx(1.0)


def test_metrics_never_share_state():
    """Equal states after the first batch must not merge the two means (compute groups)."""
    metrics = SteerabilityMetrics()
    metrics.update(torch.tensor([1.0, 1.0]))  # mean slope 1 == fraction steerable 1
    metrics.update(torch.tensor([5.0, -1.0]))
    values = metrics.compute()
    assert values["steerability"].item() == pytest.approx(1.5)
    assert values["prop_steerable"].item() == pytest.approx(0.75)
