"""Function-preserving growth of a trained model's latent stack (``perceiverar-train --init-from CKPT --add-layers K``).

To try a bigger model without throwing away the hours a 2-core CPU spent on a smaller one, each new
self-attention block is a copy of the block it follows, with its two residual output projections (``wo`` and
``mlp.down``) zeroed: it adds exactly nothing to the residual stream, so the grown model computes the same
function as the checkpoint, and training then finds a use for the new blocks (the copies' inner weights give them
features to start from; the zeroed projections get gradients at once). On the bundled emoji checkpoint (6 -> 8
layers, 2,500 steps) it fitted the training images better but did not draw better; see that checkpoint's card.
"""

from __future__ import annotations

import re

import torch

_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_RESIDUAL_OUT = ("wo.weight", "wo.bias", "mlp.down.weight", "mlp.down.bias")


def grown_layer_sources(n_layers: int, add: int) -> list[tuple[int, bool]]:
    """The new stack of ``n_layers + add`` blocks as (old block index it copies, is new), the new blocks spread
    evenly: each follows the old block it copies. E.g. 6 layers + 2 -> old 0 1 2 2' 3 4 5 5'."""
    if n_layers < 1 or add < 0:
        raise ValueError(f"cannot add {add} layers to a stack of {n_layers}")
    pending = [((k + 1) * n_layers + add - 1) // add - 1 for k in range(add)]  # old block each new one follows
    out: list[tuple[int, bool]] = []
    for i in range(n_layers):
        out.append((i, False))
        out.extend((i, True) for _ in range(pending.count(i)))
    assert len(out) == n_layers + add
    return out


def grow_state(state: dict[str, torch.Tensor], n_layers: int, add: int) -> dict[str, torch.Tensor]:
    """A checkpoint's state dict with ``add`` latent blocks inserted (see the module docstring); the result loads
    into a model whose config has ``n_layers + add`` layers and computes what the old one did."""
    if add == 0:
        return dict(state)
    blocks: dict[int, dict[str, torch.Tensor]] = {}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        m = _BLOCK.match(name)
        if m is None:
            out[name] = tensor
        else:
            blocks.setdefault(int(m.group(1)), {})[m.group(2)] = tensor
    if sorted(blocks) != list(range(n_layers)):
        raise ValueError(f"the weights hold blocks {sorted(blocks)}, not the {n_layers} of their config")
    for new, (old, fresh) in enumerate(grown_layer_sources(n_layers, add)):
        for key, tensor in blocks[old].items():
            t = tensor.clone()
            if fresh and key in _RESIDUAL_OUT:
                t.zero_()
            out[f"blocks.{new}.{key}"] = t
    return out
