"""ModelHooks and model_mode leave a model as they found it: no hook left, every training flag back."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mpsearch.core.errors import ConfigError
from mpsearch.space.hooks import ModelHooks, model_mode


def mixed_net() -> nn.Sequential:
    """A training model whose batch norm is frozen in eval: a mix that model.train(flag) cannot restore."""
    net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2)).train()
    net[1].eval()
    return net


def flags(net: nn.Module) -> list[bool]:
    return [m.training for m in net.modules()]


def hook_count(net: nn.Module) -> int:
    """Hooks on any module, plus the marks torch keeps for with_kwargs hooks (0 once all are removed)."""
    tables = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs")
    return sum(len(getattr(m, t)) for m in net.modules() for t in tables)


def test_hooks_run_in_eval_and_leave_nothing_behind():
    net = mixed_net()
    before = flags(net)
    seen: dict[str, object] = {}
    with ModelHooks(net) as hooks:
        hooks.pre(net[0], lambda m, args: seen.__setitem__("pre_training", m.training))
        hooks.forward(net[3], lambda m, args, out: seen.__setitem__("out", out.shape))
        hooks.forward(net[1], lambda m, args, kwargs, out: seen.__setitem__("kw", out.shape), with_kwargs=True)
        assert hook_count(net) == 4  # three hooks, one with kwargs
        assert not any(flags(net)), "every module runs in eval mode inside the block"
        net(torch.randn(5, 4))
    assert seen == {"pre_training": False, "out": torch.Size([5, 2]), "kw": torch.Size([5, 6])}
    assert hook_count(net) == 0
    assert flags(net) == before


def test_exception_still_removes_hooks_and_restores_flags():
    net = mixed_net()
    before = flags(net)
    with pytest.raises(RuntimeError, match="boom"), ModelHooks(net) as hooks:
        hooks.forward(net[0], lambda m, args, out: None)
        hooks.pre(net[3], lambda m, args: None)
        net.train()  # the block may change modes too
        raise RuntimeError("boom")
    assert hook_count(net) == 0
    assert flags(net) == before


def test_pre_hook_can_replace_inputs_and_train_mode_can_be_asked_for():
    net = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5)).eval()
    x = torch.randn(2, 3)
    with ModelHooks(net, train=True) as hooks:
        hooks.pre(net[0], lambda m, args: (torch.zeros_like(args[0]),))
        assert all(flags(net))
        out = net[0](x)
    torch.testing.assert_close(out, net[0].bias.expand(2, 3))
    assert not any(flags(net)) and hook_count(net) == 0


def test_train_none_keeps_the_mode():
    net = mixed_net()
    before = flags(net)
    with ModelHooks(net, train=None):
        assert flags(net) == before


def test_registering_outside_the_block_is_refused():
    net = mixed_net()
    hooks = ModelHooks(net)
    with pytest.raises(ConfigError, match="inside its `with` block"):
        hooks.forward(net[0], lambda m, args, out: None)
    with hooks:
        hooks.forward(net[0], lambda m, args, out: None)
    with pytest.raises(ConfigError, match="inside its `with` block"):
        hooks.pre(net[0], lambda m, args: None)
    assert hook_count(net) == 0


def test_model_mode_restores_each_flag_after_an_exception():
    net = mixed_net()
    before = flags(net)
    with pytest.raises(ValueError, match="inside"), model_mode(net):
        assert not any(flags(net))
        raise ValueError("inside")
    assert flags(net) == before
