"""``torch.compile`` for every family, in training and in sampling, with one switch.

A callback rather than a ``compile`` argument on each family: one class serves all of them (the
families keep only their objective), it is switched on the way Lightning's other performance
callbacks are (``--trainer.callbacks+=mmgen_lightning.callbacks.CompileNetworks``), and the same
function, :func:`compile_networks`, serves ``mmgen generate --compile`` and ``load_generator`` users.

Networks are compiled in place with ``nn.Module.compile``: parameter names, ``state_dict`` keys and
so checkpoints stay exactly those of the eager model, and Lightning's strategies (DDP wraps the
LightningModule, not its sub-networks) and ``precision="bf16-mixed"`` (autocast is traced by
dynamo) work unchanged. The family's ``training_step`` and ``generate`` stay eager Python; what is
compiled is each network's forward, which is where the kernel launches are. Shapes that vary from
batch to batch (caption lengths, the last partial batch, a sampler's step) are marked dynamic after
the first recompilation (``dynamic=None``, PyTorch's automatic dynamic shapes), so a run compiles
each network at most twice; :func:`compile_counters` reports how often it really did.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from torch import nn

def networks(model: nn.Module) -> dict[str, nn.Module]:
    """The networks :func:`compile_networks` compiles: the model's direct children that hold
    parameters, looking one level into ``ModuleDict``/``ModuleList`` containers. A family that wants
    another choice defines ``compiled_networks() -> dict[str, nn.Module]``."""
    chosen = getattr(model, "compiled_networks", None)
    if callable(chosen):
        return dict(chosen())
    found: dict[str, nn.Module] = {}
    for name, child in model.named_children():
        if isinstance(child, (nn.ModuleDict, nn.ModuleList)):
            found.update({f"{name}.{key}": grandchild for key, grandchild in child.named_children()
                          if _is_network(grandchild)})
        elif _is_network(child):
            found[name] = child
    return found


def _is_network(module: nn.Module) -> bool:
    """Holds parameters and has a forward of its own (not a ``ParameterDict`` of scales)."""
    return type(module).forward is not nn.Module.forward and any(True for _ in module.parameters())


def compile_networks(model: nn.Module, backend: str = "inductor", mode: str | None = None,
                     dynamic: bool | None = None, fullgraph: bool = False) -> list[str]:
    """Compile ``model``'s networks in place (``nn.Module.compile``); returns their names.

    ``backend``/``mode``/``dynamic``/``fullgraph`` are ``torch.compile``'s. Compiling twice is a no-op.
    """
    compiled = []
    for name, network in networks(model).items():
        if getattr(network, "_compiled_call_impl", None) is None:
            network.compile(backend=backend, mode=mode, dynamic=dynamic, fullgraph=fullgraph)
        compiled.append(name)
    return compiled


def compile_counters() -> dict[str, int]:
    """How many graphs dynamo compiled, and how many of its compilations were recompilations (a frame
    compiled again because a guard failed: a new shape, dtype or value), since the process started or
    since :func:`reset_compile_counters`. Recompilations are read from dynamo's compilation records
    (``recompile_reason``), which keep the last 64 compilations."""
    from torch._dynamo.utils import counters, get_compilation_metrics

    stats = counters["stats"]
    return {"unique_graphs": int(stats.get("unique_graphs", 0)),
            "recompilations": sum(1 for record in get_compilation_metrics() if record.recompile_reason),
            "frames_compiled": int(stats.get("calls_captured", 0))}


def reset_compile_counters() -> None:
    """Forget dynamo's compiled code and its counts (``torch._dynamo.reset()`` and its compilation records)."""
    import torch
    from torch._dynamo.utils import clear_compilation_metrics, counters

    torch._dynamo.reset()
    counters.clear()
    clear_compilation_metrics()


class CompileNetworks(L.Callback):
    """Compile the family's networks before fitting, validating or sampling (see the module docstring).

    Args:
        backend: ``torch.compile`` backend (``inductor`` generates fused C++/Triton kernels).
        mode: ``torch.compile`` mode (``None``, ``reduce-overhead``, ``max-autotune``).
        dynamic: ``None`` marks varying dimensions dynamic after the first recompilation; ``True``
            compiles dynamic shapes from the start; ``False`` specialises on every shape.
        fullgraph: fail instead of falling back to Python at a graph break.
    """

    def __init__(self, backend: str = "inductor", mode: str | None = None, dynamic: bool | None = None,
                 fullgraph: bool = False) -> None:
        super().__init__()
        self.options: dict[str, Any] = {"backend": backend, "mode": mode, "dynamic": dynamic, "fullgraph": fullgraph}
        self.compiled: list[str] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self.compiled:
            self.compiled = compile_networks(pl_module, **self.options)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.logger is not None and hasattr(trainer.logger, "log_metrics"):
            counters = compile_counters()
            trainer.logger.log_metrics({f"compile/{k}": float(v) for k, v in counters.items()}, step=trainer.global_step)

