"""all_finite: the one-reduction NaN/Inf check on every batch and gradient, against isfinite."""

from __future__ import annotations

import pytest
import torch

from gradserve.server.models import all_finite

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@pytest.mark.parametrize("dtype", DTYPES)
def test_agrees_with_isfinite_at_the_edges(dtype: torch.dtype) -> None:
    largest = torch.finfo(dtype).max
    cases = [
        torch.tensor([], dtype=dtype),
        torch.full((1000,), largest, dtype=dtype),  # squares overflow float32, not float64
        torch.tensor([largest, -largest, torch.finfo(dtype).tiny], dtype=dtype),
        torch.tensor([1.0, float("nan")], dtype=dtype),
        torch.tensor([float("inf"), 1.0], dtype=dtype),
        torch.tensor([float("-inf"), float("inf")], dtype=dtype),
        torch.randn(7, 3).to(dtype),
    ]
    for case in cases:
        assert all_finite(case) == bool(torch.isfinite(case).all()), case
