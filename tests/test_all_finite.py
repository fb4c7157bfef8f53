"""all_finite: the one-reduction NaN/Inf check on every batch and gradient, against isfinite;
and the sum-first check on new parameter values."""

from __future__ import annotations

import pytest
import torch

from gradserve.errors import InvalidArgumentError
from gradserve.server.models.model import all_finite, all_finite_tensors, float64_norm
from gradserve.server.store.parameter_access import check_values

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


@pytest.mark.parametrize("elements", [1, 3, 70_000])  # one tensor, concatenated, multi-tensor
def test_all_finite_tensors_agrees_with_isfinite(elements: int) -> None:
    largest = torch.finfo(torch.float32).max
    base = [torch.full((elements,), largest), torch.zeros(2, 2), torch.tensor(0.5)]
    mixed = [torch.ones(3, dtype=torch.bfloat16), torch.ones(2, dtype=torch.float64)]
    for bad in (float("nan"), float("inf"), -float("inf")):
        for dtype in (torch.float32, torch.float64, torch.bfloat16):
            lists = [base, base + mixed, [*base, torch.tensor([1.0, bad], dtype=dtype)]]
            for tensors in lists:
                expected = all(bool(torch.isfinite(t).all()) for t in tensors)
                assert all_finite_tensors(tensors) == expected
    assert all_finite_tensors([]) and all_finite_tensors([torch.arange(3)])
    # The norm the update reports, however it is reduced, is the float64 norm of everything.
    exact = torch.linalg.vector_norm(torch.cat([t.double().reshape(-1) for t in base]))
    assert float64_norm(base) == pytest.approx(exact.item(), rel=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_new_values_are_checked_with_a_sum_first_and_exactly_when_it_overflows(
    dtype: torch.dtype,
) -> None:
    """check_values (SetParameters, UploadParameters) sums first: a finite sum settles it; a
    sum that overflowed on finite values (every element the largest) still passes, exactly."""
    largest = torch.finfo(dtype).max
    named = {"w": torch.zeros(1000, dtype=dtype)}
    for good in (torch.full((1000,), largest, dtype=dtype), torch.randn(1000).to(dtype)):
        check_values(named, [("w", good)])
    for bad in (float("nan"), float("inf"), -float("inf")):
        value = torch.full((1000,), largest, dtype=dtype)
        value[500] = bad
        with pytest.raises(InvalidArgumentError, match="NaN or Inf"):
            check_values(named, [("w", value)])
