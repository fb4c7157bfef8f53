"""DescribeGraph's work: one forward pass in train mode, its graph, and nothing left changed.

The optional leaf gradients come from torch.autograd.grad (never backward()), and the RNG state,
buffers and train/eval mode are put back, so no .grad, version, accumulator, buffer, RNG state
or mode changes. The caller holds the store's lock.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gradserve.graph_types import Graph

from .graph import ConstantUses, build_graph, with_gradients
from .model import Model


def trace_graph(
    model: Model,
    named: dict[str, torch.nn.Parameter],
    parameters: Sequence[torch.nn.Parameter],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    max_nodes: int,
    return_gradients: bool,
) -> Graph:
    module = model.module
    with torch.random.fork_rng(devices=[]):
        was_training = module.training
        buffers = [(buffer, buffer.detach().clone()) for buffer in module.buffers()]
        try:
            module.train()
            constants = {"inputs": inputs, "targets": targets}
            uses = ConstantUses(constants)
            with uses:
                loss = model.loss.function(module(inputs), targets)
            graph = build_graph(
                loss, named, max_nodes=max_nodes, constants=constants, constant_uses=uses.uses
            )
            if return_gradients:
                gradients = torch.autograd.grad(loss, parameters, allow_unused=True)
                graph = with_gradients(
                    graph,
                    {
                        name: g if g is not None else torch.zeros_like(p)
                        for (name, p), g in zip(named.items(), gradients, strict=True)
                    },
                )
        finally:
            module.train(was_training)
            with torch.no_grad():
                for buffer, saved in buffers:
                    buffer.copy_(saved)
    return graph
