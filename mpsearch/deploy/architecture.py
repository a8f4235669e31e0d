"""What a packed model is built from, recorded at export, so it loads without its float model.

:func:`describe` names a model's architecture as a small JSON-able dict: a transformers model
by its class and config (``config.to_dict()``), a built-in CIFAR ResNet by its depth and classes.
:func:`skeleton` builds that architecture with every parameter on the ``meta`` device
(:func:`meta_parameters`): no float weights are allocated or initialized, only the small
buffers a module computes for itself (batch-norm statistics, rotary frequencies), so loading a
packed model needs about the packed model's memory, not the float model's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

from mpsearch.core.errors import DataError, PlanMismatchError
from mpsearch.zoo.resnet import CifarResNet, cifar_resnet


def describe(model: nn.Module) -> dict[str, Any] | None:
    """The recorded architecture of ``model``, or None when it is none of the known kinds."""
    if isinstance(model, CifarResNet):
        blocks = len(model.layer1)
        return {"source": "mpsearch.zoo", "builder": "cifar_resnet", "depth": 6 * blocks + 2,
                "num_classes": int(model.linear.out_features)}
    config = getattr(model, "config", None)
    if type(model).__module__.startswith("transformers.") and hasattr(config, "to_dict"):
        return {"source": "transformers", "class": type(model).__name__,
                "config": config.to_dict(),
                "attn_implementation": getattr(config, "_attn_implementation", None)}
    return None


@contextmanager
def meta_parameters() -> Iterator[None]:
    """Within the block, every parameter a module registers is replaced by a ``meta`` tensor of
    its shape and dtype (its storage freed at once), so initializers run on nothing."""
    register = nn.Module.register_parameter

    def on_meta(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(self, name, param)

    # Initializers are skipped as well: on meta tensors they would still dispatch through torch's
    # Python reference kernels, which import the compiler stack (about 80 MiB of modules).
    skipped = {name: fn for name, fn in vars(nn.init).items() if name.endswith("_") and not name.startswith("_") and callable(fn)}
    nn.Module.register_parameter = on_meta  # type: ignore[method-assign]
    for name in skipped:
        setattr(nn.init, name, _untouched)
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]
        for name, fn in skipped.items():
            setattr(nn.init, name, fn)


def _untouched(tensor: Any, *args: Any, **kwargs: Any) -> Any:
    """An initializer that leaves its tensor as it is (the weights are filled from the checkpoint)."""
    return tensor


def skeleton(arch: dict[str, Any]) -> nn.Module:
    """The architecture ``arch`` (from :func:`describe`) in eval mode, parameters on ``meta``."""
    source = arch.get("source") if isinstance(arch, dict) else None
    with meta_parameters():
        if source == "mpsearch.zoo" and arch.get("builder") == "cifar_resnet":
            model = cifar_resnet(int(arch["depth"]))
            if int(arch.get("num_classes", 10)) != 10:
                model.linear = nn.Linear(64, int(arch["num_classes"]))
        elif source == "transformers":
            import transformers

            cls = getattr(transformers, str(arch.get("class")), None)
            if cls is None or not hasattr(cls, "config_class"):
                raise PlanMismatchError(
                    f"A recorded transformers model must name a class of the installed transformers, "
                    f"but got {arch.get('class')!r}. Install the transformers version it was exported "
                    f"with, or pass the float model: load(folder, base_model).")
            config = cls.config_class.from_dict(dict(arch["config"]))
            model = cls(config)
            if arch.get("attn_implementation"):
                model.set_attn_implementation(arch["attn_implementation"])
        else:
            raise DataError(
                f"Loading without a base model needs the architecture recorded at export, but the "
                f"file records {arch!r}. Pass the float model of the same architecture: "
                f"load(folder, base_model).")
    return model.eval()


def meta_tensors(model: nn.Module) -> list[str]:
    """Names of the parameters and buffers of ``model`` still on the ``meta`` device."""
    named = list(model.named_parameters(remove_duplicate=False)) + \
        list(model.named_buffers(remove_duplicate=False))
    return sorted(n for n, t in named if t.device.type == "meta")


__all__ = ["describe", "meta_parameters", "meta_tensors", "skeleton"]
