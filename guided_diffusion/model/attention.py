"""ADM's self-attention block, with the two perturbations guidance needs.

The block keeps the release's parameters (`norm`, `qkv`, `proj_out`) and both QKV layouts:

* legacy (`use_new_attention_order=False`): heads are split *before* q/k/v, i.e. `qkv` is read as
  `[B * heads, 3 * ch, T]` and cut into q, k, v of `ch` rows each;
* new order: q, k, v are the three equal chunks of `qkv`, each then split into heads.

Guidance methods change what chosen blocks compute in extra copies of the batch. Each change is an
`AttentionEdit`: it maps a block's normalised input rows to the attention output that replaces the
usual one. `IdentityMap` (PAG) replaces the attention *map* by the identity, so the block outputs its
values V (in the block's own layout) while norm, projections and residual are unchanged; those rows
compute V alone (Q, K, QK^T and the softmax are skipped). A guidance module defines its own edits.

Edits are per call and keep no state on modules: a forward pass is told what to do by an
`AttentionPlan` (which blocks to edit, and how, in which copy of the batch; which attention maps to
return), and the block itself by per-call arguments (`row_edits`, `capture`).
"""

import math
from dataclasses import dataclass, field
from typing import Mapping, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from guided_diffusion.model.nn import checkpoint, conv_nd, normalization, zero_module


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


class AttentionEdit:
    """How a perturbed copy computes one attention block: `attend(block, normed)` maps the block's
    normalised input rows `[n, C, T]` to the `[n, C, T]` output that replaces softmax attention (before
    `proj_out` and the residual). Edits compare by value (frozen dataclasses), so equal edits share a run."""

    def attend(self, block, normed):
        raise NotImplementedError


@dataclass(frozen=True)
class IdentityMap(AttentionEdit):
    """The identity attention map (PAG): each token attends to itself only, so the output is V."""

    def attend(self, block, normed):
        weight, bias = block.value_projection()
        return F.conv1d(normed, weight, bias)


IDENTITY_MAP = IdentityMap()


def row_runs(edits, batch):
    """(start, stop, edit) for each run of equal entries in a per-row list of edits (None: normal attention)."""
    edits = list(edits)
    if len(edits) != batch:
        raise ValueError(f"row_edits must have one entry per batch row ({batch}), got {len(edits)}")
    runs, start = [], 0
    for i in range(1, batch + 1):
        if i == batch or edits[i] != edits[start]:
            runs.append((start, i, edits[start]))
            start = i
    return runs


def unwrap(model):
    """The U-Net inside DDP / compile / precision and other thin wrappers (each keeps it as `.module`)."""
    while True:
        inner = getattr(model, "module", None)
        if inner is None:  # not `or`: a compiled module has no truth value (its __len__ raises)
            inner = getattr(model, "_orig_mod", None)
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

    * `copies`: one entry per copy of the batch in the output, mapping each block edited in that copy
      to its `AttentionEdit` (a set of blocks means `IDENTITY_MAP` for each). The U-Net runs every layer
      before the first edited block once and repeats the batch there, so the plan `({}, {a: edit})`
      costs less than two passes.
    * `captures`: `(block, heads, legacy)` for each attention map the pass returns: the block's
      softmax map over `heads` heads of that QKV layout, averaged over the heads, for the rows of the
      first copy (SAG's mask source).
    * `input_copies`: how many copies of the batch the caller has already appended to the input (the
      same images with other model inputs, e.g. CFG's null labels). They run every layer from the first
      and every block unedited, and come last in the output, after the copies above.
    """

    copies: Tuple[Mapping[nn.Module, AttentionEdit], ...] = field(default_factory=lambda: ({},))
    captures: Tuple[Tuple[nn.Module, int, bool], ...] = ()
    input_copies: int = 0

    def __post_init__(self):
        if not self.copies:
            raise ValueError("an attention plan needs at least one copy of the batch")
        copies = tuple(dict(copy) if isinstance(copy, Mapping) else dict.fromkeys(copy, IDENTITY_MAP)
                       for copy in self.copies)
        object.__setattr__(self, "copies", copies)
        if any(block in copies[0] for block, _, _ in self.captures):
            raise ValueError("an attention map is captured from the first copy, which must not edit its block")
        if self.input_copies < 0:
            raise ValueError(f"input_copies must be 0 or more, got {self.input_copies}")

    @classmethod
    def from_names(cls, model, copies, captures=(), edit=IDENTITY_MAP):
        """A plan from layer names: `copies` lists the names edited (by `edit`) per copy, `captures`
        (name, heads, legacy)."""
        names = [name for copy in copies for name in copy] + [name for name, _, _ in captures]
        blocks = dict(zip(names, select_blocks(model, names)))
        return cls(tuple({blocks[name]: edit for name in copy} for copy in copies),
                   tuple((blocks[name], heads, legacy) for name, heads, legacy in captures))

    def row_edits(self, batch):
        """Per-row edits (None: normal attention) of every edited block, for `batch` rows per copy, in the
        output's order (the input copies last)."""
        edited = set().union(*self.copies)
        plain = [None] * (self.input_copies * batch)
        return {block: [copy.get(block) for copy in self.copies for _ in range(batch)] + plain for block in edited}


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

    def forward(self, x, row_edits=None, capture=None):
        """`row_edits`: None (normal attention) or one entry per batch row: None for normal attention, or
        the `AttentionEdit` that computes that row. `capture`: None, or `(heads, legacy)` to also return
        the attention map of the run of rows holding row 0, averaged over `heads` heads of that layout:
        `(output, map)`."""
        return checkpoint(lambda x_: self._forward(x_, row_edits, capture), (x,), self.use_checkpoint)

    def _forward(self, x, row_edits, capture):
        batch, channels, *spatial = x.shape
        x = x.reshape(batch, channels, -1)
        normed = self.norm(x)
        # Rows come in a few contiguous runs (normal copy, then perturbed copies): slice, don't gather.
        runs = [(0, batch, None)] if row_edits is None else row_runs(row_edits, batch)
        parts, attention_map = [], None
        for start, stop, edit in runs:
            if edit is not None:
                parts.append(edit.attend(self, normed[start:stop]))
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

    def value_projection(self):
        """(weight, bias) of the V rows of the qkv projection, in the block's layout."""
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
