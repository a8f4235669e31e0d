"""Ties that runtimes need: sibling projections fused into one matmul must share a width.

llama.cpp, vLLM and most decoder runtimes run q/k/v (and gate/up) of a block as one matrix
product over concatenated weights, so a plan giving them different widths cannot be served as
planned. ``discover(..., tie_fused=True)`` ties them per block.
"""

from __future__ import annotations

from collections.abc import Sequence

#: Sibling projections that runtimes fuse into one matmul, so they must share a width:
#: q/k/v and gate/up in Llama, Qwen, Gemma and Mistral; query/key/value in BERT. GPT-2's
#: ``c_attn`` is one fused Conv1D already.
FUSED_SIBLINGS: tuple[tuple[str, ...], ...] = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"),
                                               ("query", "key", "value"))


def fused_ties(names: Sequence[str]) -> list[tuple[str, ...]]:
    """Per block, the units among ``names`` that runtimes fuse (:data:`FUSED_SIBLINGS`), as ties.

    >>> fused_ties(["l.0.attn.q_proj", "l.0.attn.k_proj", "l.0.attn.v_proj", "l.0.attn.o_proj"])
    [('l.0.attn.q_proj', 'l.0.attn.k_proj', 'l.0.attn.v_proj')]
    """
    known = set(names)
    parents = dict.fromkeys(n.rpartition(".")[0] for n in names)  # module order, once each
    out = []
    for parent in parents:
        prefix = f"{parent}." if parent else ""
        for siblings in FUSED_SIBLINGS:
            members = tuple(prefix + s for s in siblings if prefix + s in known)
            if len(members) > 1:
                out.append(members)
    return out


__all__ = ["FUSED_SIBLINGS", "fused_ties"]
