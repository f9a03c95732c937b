"""ADM's self-attention block, with the two perturbations guidance needs.

The block keeps the release's parameters (`norm`, `qkv`, `proj_out`) and both QKV layouts:

* legacy (`use_new_attention_order=False`): heads are split *before* q/k/v, i.e. `qkv` is read as
  `[B * heads, 3 * ch, T]` and cut into q, k, v of `ch` rows each;
* new order: q, k, v are the three equal chunks of `qkv`, each then split into heads.

Perturbed-attention guidance replaces the attention *map* by the identity, so the block outputs its
values V (in the block's own layout) while norm, projections and residual are unchanged. For those rows
the block computes V alone: Q, K, QK^T and the softmax are skipped.
"""

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
    """Softmax attention over the last axis, returned as `[B, heads * ch, T]`."""
    batch, _, length = qkv.shape
    q, k, v = split_heads(qkv, heads, legacy)
    # SDPA wants [N, T, ch]; it scales by 1/sqrt(ch) like the release's 1/sqrt(sqrt(ch)) on q and k.
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
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



def attention_blocks(model):
    """Every attention block of `model`, by module path (`input_blocks.14.1`, `middle_block.1`, ...)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, AttentionBlock)}


def select_blocks(model, names):
    """The attention blocks called `names` in `model`; any unknown name raises a ValueError listing the valid ones."""
    blocks = attention_blocks(model)
    unknown = [name for name in names if name not in blocks]
    if unknown:
        raise ValueError(f"unknown attention layer(s) {', '.join(map(repr, unknown))}; this model's attention "
                         f"blocks are: {', '.join(blocks) or '(none)'}")
    return [blocks[name] for name in names]

class AttentionBlock(nn.Module):
    """Spatial self-attention with a residual connection.

    Runtime controls (plain attributes, not parameters; they never enter the state_dict):

    * ``identity_rows``: ``None`` (normal attention), ``True`` (identity map for the whole batch) or a
      per-row boolean mask (tensor or sequence; identity map for the rows where it is True). The U-Net passes
      per-call masks too; this attribute is the default that `perturbed_attention()` sets.
    * ``capture_heads``: when an int, the block records ``captured_map``: the attention map of the
      unperturbed rows, averaged over that many heads of the legacy split (SAG's mask source).
    """

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
        self.identity_rows = None
        self.capture_heads = None
        self.capture_legacy = True
        self.captured_map = None

    def forward(self, x, identity_rows=None):
        rows = self.identity_rows if identity_rows is None else identity_rows
        return checkpoint(lambda x_: self._forward(x_, rows), (x,), self.use_checkpoint)

    def _forward(self, x, rows):
        batch, channels, *spatial = x.shape
        x = x.reshape(batch, channels, -1)
        normed = self.norm(x)
        if rows is None or rows is False:
            h = self._attend(normed)
        elif rows is True:
            h = self._values(normed)
        else:
            # Rows come in a few contiguous runs (normal copy, then perturbed copies): slice, don't gather.
            # Only the run holding row 0 (the normal copy) feeds a captured map.
            h = torch.cat([self._values(normed[start:stop]) if identity
                           else self._attend(normed[start:stop], capture=start == 0)
                           for start, stop, identity in row_runs(rows, batch)])
        h = self.proj_out(h)
        return (x + h).reshape(batch, channels, *spatial)

    def _attend(self, normed, capture=True):
        qkv = self.qkv(normed)
        if capture and self.capture_heads is not None:
            weights = attention_weights(qkv, self.capture_heads, self.capture_legacy)
            self.captured_map = weights.mean(dim=1)
        return attend(qkv, self.num_heads, self.legacy)

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
