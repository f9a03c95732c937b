"""ADM's self-attention block, with the two perturbations guidance needs.

The block keeps the release's parameters (`norm`, `qkv`, `proj_out`) and both QKV layouts:

* legacy (`use_new_attention_order=False`): heads are split *before* q/k/v, i.e. `qkv` is read as
  `[B * heads, 3 * ch, T]` and cut into q, k, v of `ch` rows each;
* new order: q, k, v are the three equal chunks of `qkv`, each then split into heads.

Perturbed-attention guidance replaces the attention *map* by the identity, so the block outputs its
values V (in the block's own layout) while norm, projections and residual are unchanged. For those rows
the block computes V alone: Q, K, QK^T and the softmax are skipped.

Perturbation is per call and keeps no state on modules: a forward pass is told what to do by an
`AttentionPlan` (which blocks to replace in which copy of the batch, which attention maps to return),
and the block itself by per-call arguments (`identity_rows`, `capture`). `perturbed_attention()` is the
same mechanism for a whole `with` block.
"""

import contextlib
import math
from dataclasses import dataclass
from typing import FrozenSet, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .nn import checkpoint, conv_nd, normalization, zero_module


def split_heads(qkv, heads, legacy):
    """q, k, v of shape [B * heads, ch, T] from a `[B, 3 * heads * ch, T]` qkv tensor."""
    batch, width, length = qkv.shape
    if width % (3 * heads):
        raise ValueError(f"qkv width {width} is not divisible by 3 * heads = {3 * heads}")
    ch = width // (3 * heads)
    if legacy:
        return qkv.reshape(batch * heads, 3 * ch, length).split(ch, dim=1)
    return tuple(part.reshape(batch * heads, ch, length) for part in qkv.chunk(3, dim=1))


def attend(qkv, heads, legacy):
    """Softmax attention over the last axis, returned as `[B, heads * ch, T]`.

    The ops of `F.scaled_dot_product_attention`'s math path on these 3-D inputs (the one it takes for
    them), bit for bit: float32 arithmetic whatever the input dtype, q and k each scaled by 1/sqrt(sqrt(ch))
    as in the release. Spelled out because that path wraps its softmax in a check for all -inf rows (no
    mask here, so none occur) that cost as much again as the softmax itself.
    """
    batch, _, length = qkv.shape
    device = qkv.device.type
    # Under autocast SDPA takes and returns the autocast dtype; it computes in float32 all the same.
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else qkv.dtype
    q, k, v = split_heads(qkv.to(dtype), heads, legacy)
    with torch.autocast(device, enabled=False):
        q, k, v = q.float(), k.float(), v.float()
        scale = math.sqrt(1.0 / math.sqrt(q.shape[1]))
        weights = torch.matmul(q.transpose(1, 2) * scale, k * scale).softmax(dim=-1)
        out = torch.matmul(weights, v.transpose(1, 2)).to(dtype)
    return out.transpose(1, 2).reshape(batch, -1, length)


def attention_weights(qkv, heads, legacy):
    """The attention map itself, `[B, heads, T_query, T_key]`, softmax in float32 as in the release."""
    batch, _, length = qkv.shape
    q, k, _ = split_heads(qkv, heads, legacy)
    scale = q.shape[1] ** -0.5
    logits = torch.einsum("bct,bcs->bts", q.float() * scale, k.float())
    return logits.softmax(dim=-1).reshape(batch, heads, length, length)


def row_runs(rows, batch):
    """(start, stop, identity) for each run of equal values in a per-row boolean mask."""
    flags = rows.tolist() if isinstance(rows, torch.Tensor) else list(rows)
    if len(flags) != batch:
        raise ValueError(f"identity_rows must have one entry per batch row ({batch}), got {len(flags)}")
    runs, start = [], 0
    for i in range(1, batch + 1):
        if i == batch or flags[i] != flags[start]:
            runs.append((start, i, bool(flags[start])))
            start = i
    return runs


def unwrap(model):
    """The U-Net inside DDP / compile / precision and other thin wrappers (each keeps it as `.module`)."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def attention_blocks(model):
    """Every attention block of `model`, by module path (`input_blocks.14.1`, `middle_block.1`, ...)."""
    return {name: m for name, m in unwrap(model).named_modules() if isinstance(m, AttentionBlock)}


def select_blocks(model, names):
    """The attention blocks called `names` in `model`: the one place an unknown layer name is reported,
    with a ValueError listing the model's blocks."""
    blocks = attention_blocks(model)
    unknown = [name for name in names if name not in blocks]
    if unknown:
        raise ValueError(f"unknown attention layer(s) {', '.join(map(repr, unknown))}; this model's attention "
                         f"blocks are: {', '.join(blocks) or '(none)'}")
    return [blocks[name] for name in names]


@dataclass(frozen=True)
class AttentionPlan:
    """What one forward pass does with the attention blocks, as resolved modules (no names, no state).

    * `copies`: one entry per copy of the batch in the output, the blocks whose attention map is the
      identity in that copy. The U-Net runs every layer before the first perturbed block once and
      repeats the batch there, so the plan `(frozenset(), {a})` costs less than two passes.
    * `captures`: `(block, heads, legacy)` for each attention map the pass returns: the block's
      softmax map over `heads` heads of that QKV layout, averaged over the heads, for the rows of the
      first copy (SAG's mask source).
    """

    copies: Tuple[FrozenSet[nn.Module], ...] = (frozenset(),)
    captures: Tuple[Tuple[nn.Module, int, bool], ...] = ()

    def __post_init__(self):
        if not self.copies:
            raise ValueError("an attention plan needs at least one copy of the batch")
        replaced = [block for block, _, _ in self.captures if block in self.copies[0]]
        if replaced:
            raise ValueError("an attention map is captured from the first copy, which must not perturb its block")

    @classmethod
    def from_names(cls, model, copies, captures=()):
        """A plan from layer names: `copies` lists names per copy, `captures` (name, heads, legacy)."""
        names = [name for copy in copies for name in copy] + [name for name, _, _ in captures]
        blocks = dict(zip(names, select_blocks(model, names)))
        return cls(tuple(frozenset(blocks[name] for name in copy) for copy in copies),
                   tuple((blocks[name], heads, legacy) for name, heads, legacy in captures))

    def row_masks(self, batch):
        """Per-row identity flags of every perturbed block, for `batch` rows per copy."""
        perturbed = set().union(*self.copies)
        return {block: [block in copy for copy in self.copies for _ in range(batch)] for block in perturbed}


@contextlib.contextmanager
def perturbed_attention(model, layers):
    """Within this context every forward pass of `model` uses the identity attention map in `layers`
    (whole batch). The plan of that one perturbed copy is added to each call by a forward pre-hook on the
    U-Net, which the context removes again."""
    inner = unwrap(model)
    plan = AttentionPlan.from_names(inner, [list(layers)])

    def add_plan(module, args, kwargs):
        if kwargs.get("attention") is not None or kwargs.get("attention_variants"):
            raise ValueError("a call inside perturbed_attention() cannot bring its own attention plan")
        return args, {**kwargs, "attention": plan}

    handle = inner.register_forward_pre_hook(add_plan, with_kwargs=True)
    try:
        yield model
    finally:
        handle.remove()


class AttentionBlock(nn.Module):
    """Spatial self-attention with a residual connection (the release's parameters and layouts)."""

    def __init__(self, channels, num_heads=1, num_head_channels=-1, use_checkpoint=False,
                 use_new_attention_order=False):
        super().__init__()
        self.channels = channels
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(f"channels {channels} are not divisible by num_head_channels {num_head_channels}")
            self.num_heads = channels // num_head_channels
        self.legacy = not use_new_attention_order
        self.use_checkpoint = use_checkpoint
        self.norm = normalization(channels)
        self.qkv = conv_nd(1, channels, channels * 3, 1)
        self.proj_out = zero_module(conv_nd(1, channels, channels, 1))

    def forward(self, x, identity_rows=None, capture=None):
        """`identity_rows`: None (normal attention) or one flag per batch row (True: the identity map, V
        alone, for that row). `capture`: None, or `(heads, legacy)` to also return the attention map of
        the run of rows holding row 0, averaged over `heads` heads of that layout: `(output, map)`."""
        return checkpoint(lambda x_: self._forward(x_, identity_rows, capture), (x,), self.use_checkpoint)

    def _forward(self, x, identity_rows, capture):
        batch, channels, *spatial = x.shape
        x = x.reshape(batch, channels, -1)
        normed = self.norm(x)
        # Rows come in a few contiguous runs (normal copy, then perturbed copies): slice, don't gather.
        runs = [(0, batch, False)] if identity_rows is None else row_runs(identity_rows, batch)
        parts, attention_map = [], None
        for start, stop, identity in runs:
            if identity:
                parts.append(self._values(normed[start:stop]))
                continue
            qkv = self.qkv(normed[start:stop])
            if capture is not None and start == 0:
                attention_map = attention_weights(qkv, *capture).mean(dim=1)
            parts.append(attend(qkv, self.num_heads, self.legacy))
        h = self.proj_out(parts[0] if len(parts) == 1 else torch.cat(parts))
        out = (x + h).reshape(batch, channels, *spatial)
        if capture is None:
            return out
        if attention_map is None:
            raise ValueError("the attention map is captured from row 0, whose attention this call replaces")
        return out, attention_map

    def _values(self, normed):
        """V alone, in the block's layout, from the V rows of the qkv projection."""
        weight, bias = self.value_projection()
        return F.conv1d(normed, weight, bias)

    def value_projection(self):
        c, heads = self.channels, self.num_heads
        weight, bias = self.qkv.weight, self.qkv.bias
        if self.legacy:  # per head: [q (ch rows), k (ch rows), v (ch rows)]
            ch = c // heads
            weight = weight.reshape(heads, 3, ch, c, 1)[:, 2].reshape(c, c, 1)
            bias = bias.reshape(heads, 3, ch)[:, 2].reshape(c)
        else:  # [q (c rows), k (c rows), v (c rows)]
            weight, bias = weight[2 * c:], bias[2 * c:]
        return weight, bias


class AttentionPool2d(nn.Module):
    """CLIP-style attention pooling, the head of the release's `classifier_pool='attention'`."""

    def __init__(self, spacial_dim, embed_dim, num_heads_channels, output_dim=None):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(embed_dim, spacial_dim**2 + 1) / embed_dim**0.5)
        self.qkv_proj = conv_nd(1, embed_dim, 3 * embed_dim, 1)
        self.c_proj = conv_nd(1, embed_dim, output_dim or embed_dim, 1)
        self.num_heads = embed_dim // num_heads_channels

    def forward(self, x):
        batch, channels, *_ = x.shape
        x = x.reshape(batch, channels, -1)
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1)
        x = x + self.positional_embedding[None].to(x.dtype)
        x = attend(self.qkv_proj(x), self.num_heads, legacy=False)
        return self.c_proj(x)[:, :, 0]
