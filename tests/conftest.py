"""Test settings: tiny tensors run faster on one thread than split across two busy cores."""

from collections.abc import Callable

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def aot_eager_compile(monkeypatch: pytest.MonkeyPatch) -> list[torch.fx.GraphModule]:
    """`torch.compile` with the "aot_eager" backend (dynamo + AOT autograd, as inductor traces,
    without its C++ code generation, which takes minutes on CI); the traced graphs, in order."""
    from torch._dynamo.backends.registry import lookup_backend

    compile_, aot_eager, graphs = torch.compile, lookup_backend("aot_eager"), []

    def backend(graph: torch.fx.GraphModule, inputs: list) -> Callable:
        graphs.append(graph)
        return aot_eager(graph, inputs)

    monkeypatch.setattr(torch, "compile", lambda fn: compile_(fn, backend=backend))
    return graphs
