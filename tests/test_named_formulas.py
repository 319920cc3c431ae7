"""The small named formulas of docs/METHOD.md §2, §3 and §6 on hand-made numbers:
the marginal norm adds up to the norm, the starting credit puts seeds or a root
where §3 says, and the §6 outputs of a credit vector are the documented ratios."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unpack.adapters.base import Norm
from unpack.flow import credit_summary, initial_credit, percent_credit
from unpack.validate import bias_part


@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_marginal_norms_of_the_writers_add_up_to_the_norm(kind):
    g = torch.Generator().manual_seed(0)
    c = torch.randn(2, 5, 3, 8, generator=g, dtype=torch.float64)  # [B, C, S, D] writers
    norm = Norm(
        kind,
        1 + 0.3 * torch.randn(8, generator=g, dtype=torch.float64),
        0.2 * torch.randn(8, generator=g, dtype=torch.float64) if kind == "layer" else None,
        1e-5,
    )
    x = c.sum(1)  # the residual the reader reads
    m = norm.marginal_norm(norm.center(c), norm.scale(x))
    shift = norm.bias if norm.bias is not None else 0
    torch.testing.assert_close(m.sum(1) + shift, norm(x), rtol=1e-12, atol=1e-12)
    if kind == "rms":
        assert norm.center(c) is c
    else:  # ĉ sums to zero over D, in place when asked
        assert norm.center(c).sum(-1).abs().max() < 1e-12
        y = c.clone()
        assert norm.center(y, out=y).data_ptr() == y.data_ptr() and y.sum(-1).abs().max() < 1e-12


def test_initial_credit_holds_seeds_at_t_or_one_at_the_root():
    I = torch.tensor([[1.0, -2.0, 3.0], [4.0, 5.0, 6.0]])
    F0 = initial_credit(I, [2, 1], [[None, (1, 0)], [None]], S=4)
    assert F0.shape == (2, 2, 3, 4)
    assert torch.equal(F0[0, 0, :, 2], I[0]) and F0[0, 0].abs().sum() == I[0].abs().sum()
    assert F0[0, 1, 1, 0] == 1.0 and F0[0, 1].abs().sum() == 1.0
    assert torch.equal(F0[1, 0, :, 1], I[1]) and not F0[1, 1].any()  # a prompt with one root


def test_percent_credit_and_suppression():
    pct, supp, pos = credit_summary(np.array([2.0, -1.0, 0.0, 3.0]))
    np.testing.assert_allclose(pct, [40.0, -20.0, 0.0, 60.0])
    assert pos == 5.0 and supp == pytest.approx(1 / 6)
    pct, supp, pos = credit_summary(np.array([-1.0, -3.0]))
    assert pos == 0.0 and supp == 1.0 and not pct.any()
    assert credit_summary(np.zeros(3))[1] == 0.0
    assert percent_credit(1.5, 6.0) == 25.0 and percent_credit(1.5, 0.0) == 0.0


def test_bias_part_is_the_shift_through_the_weights_plus_the_bias():
    W = torch.arange(24, dtype=torch.float64).reshape(2, 3, 4)  # [G, D, d]
    beta, b = (
        torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64),
        torch.ones(2, 4, dtype=torch.float64),
    )
    torch.testing.assert_close(bias_part(beta, W, b), W[:, 0] - W[:, 2] + 1)
    assert not bias_part(None, W, None).any()
