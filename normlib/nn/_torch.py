"""What lets normlib's modules live inside code written for ``torch.nn``: torch.fx tracing and whole-model swaps.

Every normlib module is a subclass of its ``torch.nn`` namesake (see :mod:`normlib.nn`), so ``isinstance`` and
torch's converters find it. What is left here:

- :func:`fx_call`: ``torch.fx`` treats modules defined under ``torch.nn`` as leaves (one ``call_module`` node)
  and traces through every other module. normlib's forwards check shapes and dtypes in Python, which a symbolic
  trace cannot do, so each forward hands a traced input to :func:`fx_call`, which records the module as one
  node, as torch's own modules are recorded. The node runs the module's forward when the graph runs, so the
  backend chosen then (:func:`normlib.set_backend`) and the module's training mode then apply.
- :func:`from_torch` and :func:`to_torch`: swap every norm and dropout of a model between torch's and normlib's.
"""

from __future__ import annotations

import importlib

from torch import fx, nn

__all__ = ["fx_call", "from_torch", "to_torch"]

_CLASSES: dict[str, type] = {}  # "module.QualName" -> class, for the graphs of traced root modules


def _class_key(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def fx_call(module: nn.Module, input: fx.Proxy) -> fx.Proxy:
    """Record ``module(input)`` in the graph that ``input`` is being traced into; return the node's proxy.

    Inside a traced model the module becomes one ``call_module`` node, exactly as a ``torch.nn`` module does,
    so ``GraphModule.eval()`` and feature extractors see it as torch's. Traced on its own (the module is the
    root), it becomes one ``call_function`` node that runs the module's forward on the graph module's own
    parameters and buffers, with the training mode it had when traced (a traced root bakes it in, as torch's
    traced modules do).
    """
    tracer = input.tracer
    if tracer.root is not module:
        return tracer.create_proxy("call_module", tracer.path_of_module(module), (input,), {})
    cls = type(module)
    _CLASSES[_class_key(cls)] = cls
    state = {k: v for k, v in vars(module).items() if not k.startswith("_")}
    try:
        return tracer.create_proxy("call_function", run_forward,
                                   (_class_key(cls), state, input, dict(module._parameters), dict(module._buffers)),
                                   {})
    except NotImplementedError as error:  # an attribute fx cannot store in a graph (a Generator, a process group)
        raise TypeError(f"torch.fx cannot trace {cls.__name__} on its own ({error}); trace a model that holds it, "
                        "where it is one call_module node") from error


def run_forward(key: str, state: dict, input, parameters: dict, buffers: dict):
    """The forward of the class ``key`` with attributes ``state``, on the given parameters and buffers."""
    if isinstance(input, fx.Proxy):  # a graph module's code traced again (as unpickling one does)
        return input.tracer.create_proxy("call_function", run_forward, (key, state, input, parameters, buffers), {})
    cls = _CLASSES.get(key)
    if cls is None:  # a graph module unpickled in another process
        module_name, _, qualname = key.rpartition(".")
        cls = getattr(importlib.import_module(module_name), qualname)
    shell = cls.__new__(cls)
    nn.Module.__init__(shell)
    shell.__dict__.update(state)
    shell._parameters.update(parameters)
    shell._buffers.update(buffers)
    return shell.forward(input)


def _swap(module: nn.Module, mapping: dict[type, type]) -> nn.Module:
    """``module`` with every submodule whose type is (exactly) a key of ``mapping`` re-classed, recursively.

    The new module takes over the old one's attributes: the same parameter and buffer tensors (shared, not
    copied), training mode, hooks and any attribute set on it (e.g. ``qconfig``). Containers are changed in
    place; the (possibly new) root is returned.
    """
    new_type = mapping.get(type(module))
    output = module
    if new_type is not None:
        state = {key: type(value)(value) if key.startswith("_") and isinstance(value, (dict, set)) else value
                 for key, value in vars(module).items()}  # the module's own registries, not the old one's
        if issubclass(new_type, _normlib_types()):
            if issubclass(new_type, nn.modules.dropout._DropoutNd):
                state.setdefault("generator", None)
        elif state.pop("generator", None) is not None:
            raise ValueError(f"{type(module).__name__} draws its masks from a torch.Generator, which "
                             f"torch.nn.{new_type.__name__} cannot")
        output = new_type.__new__(new_type)
        output.__dict__.update(state)
    for name, child in module.named_children():
        setattr(output, name, _swap(child, mapping))
    return output


def _normlib_types() -> tuple[type, ...]:
    import normlib.nn as N

    return tuple(getattr(N, name) for name in N.__all__ if isinstance(getattr(N, name), type))


def _namesakes() -> dict[type, type]:
    """torch.nn class -> its normlib.nn namesake, for every normlib module that has one."""
    return {getattr(nn, cls.__name__): cls for cls in _normlib_types() if hasattr(nn, cls.__name__)}


def from_torch(module: nn.Module) -> nn.Module:
    """Swap every ``torch.nn`` norm and dropout in ``module`` (its root included) for its ``normlib.nn`` namesake.

    Only modules whose type is exactly a ``torch.nn`` class with a namesake in :mod:`normlib.nn` are swapped
    (subclasses are someone's own code, left alone). The normlib module shares the torch module's parameters
    and buffers (as ``convert_sync_batchnorm`` does), training mode and hooks, so the swapped model computes
    what it did, with normlib's code. Containers change in place; returns the root, which is new if it was
    swapped itself. ``to_torch`` undoes it.
    """
    return _swap(module, _namesakes())


def to_torch(module: nn.Module) -> nn.Module:
    """Swap every ``normlib.nn`` module that has a ``torch.nn`` namesake for torch's; the reverse of :func:`from_torch`.

    For what only torch's own modules do: TorchScript, eager quantization (``fuse_modules``, ``prepare``,
    ``convert``), FX-mode quantization. Parameters and buffers are shared, not copied. A normlib dropout given
    a ``generator`` raises ``ValueError``: torch's modules have none.
    """
    return _swap(module, {ours: theirs for theirs, ours in _namesakes().items()})
