"""Observe a model for one block of code, and leave it exactly as it was found.

Several stages run a model with temporary forward hooks (activation ranges, input Hessians,
bias shifts, MACs per layer, ...) and in eval mode, so batch norm keeps its statistics. Each
needs the same care: every hook removed and every module's ``training`` flag put back, also
when the block raises. :class:`ModelHooks` and :func:`model_mode` do that once for all of them.
The public home for stages above ``kernels`` is :mod:`mpsearch.space.hooks`.

>>> # with ModelHooks(model) as hooks:
>>> #     hooks.forward(model.fc, lambda module, args, out: seen.append(out.shape))
>>> #     model(x)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from types import TracebackType

from torch import nn
from torch.utils.hooks import RemovableHandle

from mpsearch.core.errors import ConfigError

__all__ = ["ModelHooks", "model_mode"]


@contextmanager
def model_mode(model: nn.Module, train: bool | None = False) -> Iterator[nn.Module]:
    """``model.train(train)`` for the block, then every module's own ``training`` flag restored.

    ``train=None`` leaves the mode alone (the flags are still restored, in case the block
    changes them). Flags are restored per module, not with ``model.train(flag)``, so a model
    whose parts were in different modes (a frozen batch norm in a training model) gets exactly
    that mix back.
    """
    flags = [(m, m.training) for m in model.modules()]
    try:
        if train is not None:
            model.train(train)
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


class ModelHooks:
    """Forward and forward-pre hooks that live only inside a ``with`` block.

    Entering puts ``model`` in ``train`` mode (eval by default; None keeps the current one);
    leaving, normally or by an exception, removes every hook registered through this object
    and restores each module's ``training`` flag. Hooks are registered inside the block, so
    a registration that fails half-way leaves nothing behind either.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU()).train()
        >>> shapes = []
        >>> with ModelHooks(net) as hooks:
        ...     _ = hooks.forward(net[0], lambda module, args, out: shapes.append(tuple(out.shape)))
        ...     _ = net(torch.zeros(4, 2))
        >>> shapes, net.training, len(net[0]._forward_hooks)
        ([(4, 3)], True, 0)
    """

    def __init__(self, model: nn.Module, *, train: bool | None = False) -> None:
        self.model = model
        self.train = train
        self.handles: list[RemovableHandle] = []
        self._mode: AbstractContextManager[nn.Module] | None = None

    def forward(self, module: nn.Module, hook: Callable, *, with_kwargs: bool = False) -> RemovableHandle:
        """Register ``hook(module, args, output)`` (with ``with_kwargs``: ``(module, args, kwargs, output)``)."""
        return self._keep(module.register_forward_hook(hook, with_kwargs=with_kwargs))

    def pre(self, module: nn.Module, hook: Callable, *, with_kwargs: bool = False) -> RemovableHandle:
        """Register ``hook(module, args)`` to run before ``module``; returning a tuple replaces its inputs."""
        return self._keep(module.register_forward_pre_hook(hook, with_kwargs=with_kwargs))

    def _keep(self, handle: RemovableHandle) -> RemovableHandle:
        if self._mode is None:
            handle.remove()
            raise ConfigError("ModelHooks registers hooks only inside its `with` block, so that none outlives it, "
                              "but a hook was registered outside it. Call forward()/pre() within "
                              "`with ModelHooks(model) as hooks:`.")
        self.handles.append(handle)
        return handle

    def remove(self) -> None:
        """Remove every hook registered so far (also done on leaving the block)."""
        while self.handles:
            self.handles.pop().remove()

    def __enter__(self) -> ModelHooks:
        self._mode = model_mode(self.model, self.train)
        self._mode.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        mode, self._mode = self._mode, None
        try:
            self.remove()
        finally:
            if mode is not None:
                mode.__exit__(kind, error, trace)
