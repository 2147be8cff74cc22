"""Which parameters are scored, selected and edited: the *scope*, found from the model's blocks.

A region is "the top k% of each weight matrix", so the scope decides what a matrix of the model
is. Name regexes per architecture got this wrong quietly: biases of Qwen2, GPT-NeoX, OPT, XGLM
and BLOOM were zeroed, GPT-2's `ln_1`/`ln_2` slipped past `norm`, and GPT-2/BLOOM (blocks under
`transformer.h`, not `layers.`) failed with no hint. Here the transformer blocks come from the
model's own structure, so one rule holds for every architecture:

    scoped_params(model)                                   # the block weight matrices (default)
    scoped_params(model, "paper")                          # every block parameter, norms included
    scoped_params(model, "all", include=["lm_head"])       # anything, chosen by name

Biases and norm gains are out by default: they are vectors, and zeroing one entry shifts or
silences a whole residual channel, which is not what removing k% of a matrix means.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from torch import nn

from regionbench.common.choices import check_choice

SCOPES: dict[str, str] = {
    "matrices": "the weight matrices (>= 2-D) of the transformer blocks: no bias, norm or embedding",
    "paper": "every parameter of the transformer blocks (LLaMA: the paper's `'layers.' in name`)",
    "all": "every floating-point parameter; narrow it with include/exclude regexes",
}


def _is_block_list(modules: nn.ModuleList) -> bool:
    """Repeated blocks: same-class children that are composite (a list of bare `nn.Linear` is
    a stack of layers, not of transformer blocks) and hold parameters."""
    children = list(modules)
    return (
        bool(children)
        and len({type(c) for c in children}) == 1
        and all(next(c.children(), None) is not None for c in children)
        and next(modules.parameters(), None) is not None
    )


def _block_lists(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """The `nn.ModuleList`s that hold the model's transformer blocks, outermost first."""
    candidates = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, nn.ModuleList) and _is_block_list(mod)
    ]
    # transformers lists its block classes in `_no_split_modules` (so device maps never cut a
    # block); it also lists embeddings, attention or expert classes, hence the ModuleList test
    # above and the outermost rule below (experts nested in a block are part of that block).
    declared = set(getattr(model, "_no_split_modules", None) or ())
    matched = [(n, m) for n, m in candidates if type(m[0]).__name__ in declared]
    if matched:
        outer: list[tuple[str, nn.ModuleList]] = []
        for name, mod in matched:  # named_modules yields parents before their descendants
            if not any(name.startswith(f"{o}.") or not o for o, _ in outer):
                outer.append((name, mod))
        return outer
    if not candidates:
        return []
    # No declaration to go by (a plain nn.Module, or the listed class is not used in a list):
    # the stack with the most parameters is the trunk; smaller lists are heads or adapters.
    return [max(candidates, key=lambda c: sum(p.numel() for p in c[1].parameters()))]


def transformer_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The transformer blocks, as `(qualified name, module)` in model order, e.g.
    `("model.layers.0", ...)`, `("transformer.h.0", ...)`, `("model.decoder.layers.0", ...)`.

    Found from the model: the `nn.ModuleList`s of a block class that the model declares in
    `_no_split_modules`, else the `nn.ModuleList` of same-class composite children holding the
    most parameters; `[]` when there is none. A block shared by several positions appears once.
    """
    return [
        (f"{name}.{i}" if name else i, block)
        for name, blocks in _block_lists(model)
        for i, block in blocks.named_children()
    ]


def _describe_blocks(lists: list[tuple[str, nn.ModuleList]]) -> str:
    if not lists:
        return "no transformer blocks found: no nn.ModuleList of repeated composite modules"
    parts = [f"{len(list(m.children()))} blocks under {n!r}" for n, m in lists]
    return "found " + " and ".join(parts)


def _block_param_ids(model: nn.Module, lists: list[tuple[str, nn.ModuleList]]) -> set[int]:
    """ids of the parameters that live only inside the blocks. A parameter tied to one outside
    them (an embedding shared with a block's projection) is an embedding: editing it would edit
    the embedding too, so it is out."""
    prefixes = tuple(f"{n}." if n else "" for n, _ in lists)
    if not prefixes:
        return set()
    inside, outside = set(), set()
    for name, p in model.named_parameters(remove_duplicate=False):
        (inside if name.startswith(prefixes) else outside).add(id(p))
    return inside - outside


def _compile(patterns: str | Iterable[str], what: str) -> list[re.Pattern[str]]:
    if isinstance(patterns, str):
        patterns = [patterns]
    compiled = []
    for p in patterns:
        try:
            compiled.append(re.compile(p))
        except (re.error, TypeError) as e:
            raise ValueError(f"{what} pattern {p!r} is not a valid regex: {e}") from None
    return compiled


def scoped_params(
    model: nn.Module,
    scope: str = "matrices",
    include: str | Iterable[str] = (),
    exclude: str | Iterable[str] = (),
) -> dict[str, nn.Parameter]:
    """The floating-point parameters in `scope` (see `SCOPES`), in `named_parameters` order,
    narrowed to names matching (re.search) any `include` regex, if any are given, and no
    `exclude` regex. Tied parameters appear once, under their first name."""
    check_choice("scope", scope, SCOPES)
    inc, exc = _compile(include, "include"), _compile(exclude, "exclude")
    lists = _block_lists(model)
    in_blocks = _block_param_ids(model, lists)
    params = {
        name: p
        for name, p in model.named_parameters()
        if p.is_floating_point()
        and (scope == "all" or (id(p) in in_blocks and (scope == "paper" or p.dim() >= 2)))
        and (not inc or any(r.search(name) for r in inc))
        and not any(r.search(name) for r in exc)
    }
    if not params:
        raise ValueError(_empty_message(model, scope, lists, include, exclude))
    return params


def _empty_message(model, scope, lists, include, exclude) -> str:
    include = [include] if isinstance(include, str) else list(include)
    exclude = [exclude] if isinstance(exclude, str) else list(exclude)
    names = [n for n, p in model.named_parameters() if p.is_floating_point()][:3]
    fix = []
    if include or exclude:
        fix.append("loosen importance.include/importance.exclude")
    if scope != "all":
        fix.append("set importance.scope=all with importance.include=['<regex>'] to choose by name")
    return (
        f"no parameter of {type(model).__name__} is in scope {scope!r} "
        f"({_describe_blocks(lists)}; include={include}, exclude={exclude}; "
        f"parameters look like {names}): {' or '.join(fix) or 'the model has no parameters'}"
    )
