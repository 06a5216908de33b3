"""CGGM maths against values computed by hand (the paper's formulas, as docs/METHOD.md states them)."""

import pytest
import torch

from cggm_seg.cggm_math import balance_coefficients, balancing_term, flat_cosine, smoothed_utilisation


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


@pytest.mark.parametrize(
    ("improvements", "expected"),
    [
        # M=2: sum 0.4 -> B = (0.4-0.1)/0.4, (0.4-0.3)/0.4
        ((0.1, 0.3), (0.75, 0.25)),
        # M=2, the faster modality gets a negative coefficient: sum 0.2 -> (0.2-0.3)/0.2, (0.2+0.1)/0.2
        ((0.3, -0.1), (-0.5, 1.5)),
        # M=3: sum 0.2 -> 0/0.2, 0.3/0.2, 0.1/0.2
        ((0.2, -0.1, 0.1), (0.0, 1.5, 0.5)),
        # M=4: sum 0.5 -> 0, 0.4/0.5, 0.4/0.5, 0.7/0.5
        ((0.5, 0.1, 0.1, -0.2), (0.0, 0.8, 0.8, 1.4)),
        # all improvements negative: sum -0.4 -> (-0.4+0.1)/-0.4, (-0.4+0.3)/-0.4
        ((-0.1, -0.3), (0.75, 0.25)),
    ],
)
def test_balance_coefficients_by_hand(improvements, expected):
    result = balance_coefficients(t(*improvements))
    torch.testing.assert_close(result, t(*expected))
    # the coefficients always sum to M - 1 (away from the guard)
    assert result.sum().item() == pytest.approx(len(expected) - 1)


def test_zero_sum_guard_gives_ones():
    torch.testing.assert_close(balance_coefficients(t(1e-8, -1e-8)), t(1.0, 1.0))
    torch.testing.assert_close(balance_coefficients(t(0.2, -0.2, 0.0)), t(1.0, 1.0, 1.0))
    # just above the tolerance the ratio is used again (and is large: the spec's reason for coeff_clip)
    torch.testing.assert_close(balance_coefficients(t(0.01, -0.0099)), t(-99.0, 100.0))


def test_clip_bounds_coefficients():
    torch.testing.assert_close(balance_coefficients(t(0.3, -0.1), clip=(0.0, 1.0)), t(0.0, 1.0))
    torch.testing.assert_close(balance_coefficients(t(0.01, -0.0099), clip=(-2.0, 3.0)), t(-2.0, 3.0))


def test_balance_coefficients_rejects_bad_shape():
    with pytest.raises(ValueError, match="one entry per modality"):
        balance_coefficients(t(0.5))
    with pytest.raises(ValueError, match="1-D"):
        balance_coefficients(torch.zeros(2, 2))


def test_balancing_term_by_hand():
    coefficients, cosines = t(-0.5, 1.5), t(0.2, -0.4)
    # (|-0.5| - (-0.5)(0.2) + |1.5| - (1.5)(-0.4)) / 2 = (0.6 + 2.1) / 2
    assert balancing_term(coefficients, cosines).item() == pytest.approx(1.35)
    # zero when each direction agrees with its coefficient's sign
    assert balancing_term(coefficients, t(-1.0, 1.0)).item() == pytest.approx(0.0)
    # M=3, all positive coefficients and orthogonal directions: mean of |B|
    assert balancing_term(t(0.5, 1.0, 1.5), t(0.0, 0.0, 0.0)).item() == pytest.approx(1.0)


def test_balancing_term_is_nonnegative_and_its_gradient_is_minus_b_over_m():
    torch.manual_seed(0)
    for m in (2, 3, 4):
        coefficients = torch.randn(m, dtype=torch.float64) * 2
        cosines = (torch.rand(m, dtype=torch.float64) * 2 - 1).requires_grad_()
        value = balancing_term(coefficients, cosines)
        assert value.item() >= 0
        value.backward()
        torch.testing.assert_close(cosines.grad, -coefficients / m)


def test_balancing_term_treats_coefficients_as_constants():
    coefficients = t(0.5, 1.5).requires_grad_()
    cosines = t(0.1, 0.2).requires_grad_()
    balancing_term(coefficients, cosines).backward()
    assert coefficients.grad is None
    assert cosines.grad is not None


def test_flat_cosine_and_ema():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    # <a,b> = 1, |a| = sqrt(2), |b| = sqrt(2)
    assert flat_cosine(a, b).item() == pytest.approx(0.5)
    assert flat_cosine(a, torch.zeros(2, 2)).item() == pytest.approx(0.0)
    torch.testing.assert_close(smoothed_utilisation(t(1.0, 0.0), t(0.0, 1.0), 0.0), t(1.0, 0.0))
    torch.testing.assert_close(smoothed_utilisation(t(1.0, 0.0), t(0.0, 1.0), 0.9), t(0.1, 0.9))
