"""The ADM U-Net, its super-resolution variant and the noisy-image classifier.

Constructor flags, defaults and `state_dict` names follow the ADM release, so its checkpoints load with
`strict=True`. The U-Net's forward can also run several copies of one batch with different attention
perturbations in a single call (an `attention.AttentionPlan`: the normal pass plus perturbed ones); every
layer before the first perturbed attention block runs once and is shared by all copies.
"""

from abc import abstractmethod

import torch
import torch.nn as nn
import torch.nn.functional as F

from guided_diffusion.model.attention import AttentionBlock, AttentionPlan, AttentionPool2d, attention_blocks
from guided_diffusion.model.fp16_util import convert_module_to_f16, convert_module_to_f32
from guided_diffusion.model.nn import (
    avg_pool_nd,
    checkpoint,
    conv_nd,
    interpolate_nearest_2x,
    linear,
    normalization,
    silu,
    timestep_embedding,
    zero_module,
)
from guided_diffusion.runtime import cpu_allocator


class TimestepBlock(nn.Module):
    @abstractmethod
    def forward(self, x, emb):
        """Apply the module to `x` given the timestep embedding `emb`."""


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Upsample(nn.Module):
    def __init__(self, channels, use_conv, dims=2, out_channels=None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        if use_conv:
            self.conv = conv_nd(dims, self.channels, self.out_channels, 3, padding=1)

    def forward(self, x):
        x = interpolate_nearest_2x(x)
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    def __init__(self, channels, use_conv, dims=2, out_channels=None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        stride = 2 if dims != 3 else (1, 2, 2)
        if use_conv:
            self.op = conv_nd(dims, self.channels, self.out_channels, 3, stride=stride, padding=1)
        else:
            if self.channels != self.out_channels:
                raise ValueError("average-pool downsampling cannot change the channel count")
            self.op = avg_pool_nd(dims, kernel_size=stride, stride=stride)

    def forward(self, x):
        return self.op(x)


class ResBlock(TimestepBlock):
    """Residual block with timestep conditioning (added, or as scale and shift of the second norm)."""

    def __init__(self, channels, emb_channels, dropout, out_channels=None, use_conv=False,
                 use_scale_shift_norm=False, dims=2, use_checkpoint=False, up=False, down=False):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_checkpoint = use_checkpoint
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            normalization(channels), silu(), conv_nd(dims, channels, self.out_channels, 3, padding=1)
        )
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False, dims), Upsample(channels, False, dims)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False, dims), Downsample(channels, False, dims)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            silu(), linear(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels)
        )
        self.out_layers = nn.Sequential(
            normalization(self.out_channels), silu(), nn.Dropout(p=dropout),
            zero_module(conv_nd(dims, self.out_channels, self.out_channels, 3, padding=1)),
        )
        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        elif use_conv:
            self.skip_connection = conv_nd(dims, channels, self.out_channels, 3, padding=1)
        else:
            self.skip_connection = conv_nd(dims, channels, self.out_channels, 1)

    def forward(self, x, emb):
        return checkpoint(self._forward, (x, emb), self.use_checkpoint)

    def _forward(self, x, emb):
        if self.updown:
            h = self.in_layers[:-1](x)
            h, x = self.h_upd(h), self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)
        emb_out = emb_out.reshape(*emb_out.shape, *([1] * (h.ndim - 2)))
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


def _heads_kwargs(num_heads, num_head_channels, use_checkpoint, use_new_attention_order):
    return dict(num_heads=num_heads, num_head_channels=num_head_channels, use_checkpoint=use_checkpoint,
                use_new_attention_order=use_new_attention_order)


class _TimestepNetwork(nn.Module):
    """What the U-Net and the classifier share: their recorded flags, the timestep MLP (with the ResBlock
    options that go with it, `self.resblock_options`) and the release's fp16 conversion of the torso."""

    def __init__(self, in_channels, model_channels, out_channels, dropout, dims, use_checkpoint, use_fp16,
                 use_scale_shift_norm):
        super().__init__()
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.use_checkpoint = use_checkpoint
        self.dtype = torch.float16 if use_fp16 else torch.float32
        dim = model_channels * 4
        self.time_embed = nn.Sequential(linear(model_channels, dim), silu(), linear(dim, dim))
        self.resblock_options = dict(emb_channels=dim, dropout=dropout, dims=dims, use_checkpoint=use_checkpoint,
                                     use_scale_shift_norm=use_scale_shift_norm)

    def torso(self):
        """The parts that the release converts to float16."""
        raise NotImplementedError

    def convert_to_fp16(self):
        """Convert the torso to float16, as the release does for its `use_fp16` runs."""
        for part in self.torso():
            part.apply(convert_module_to_f16)
        self.dtype = torch.float16

    def convert_to_fp32(self):
        for part in self.torso():
            part.apply(convert_module_to_f32)
        self.dtype = torch.float32


def _encoder_half(in_channels, model_channels, channel_mult, num_res_blocks, attention_resolutions,
                  conv_resample, dims, resblock_updown, res, attn):
    """The input blocks and middle block that the U-Net and the classifier share.

    Returns (input_blocks, middle_block, channels of every input block's output, final downsampling factor).
    """
    ch = int(channel_mult[0] * model_channels)
    input_blocks = nn.ModuleList([TimestepEmbedSequential(conv_nd(dims, in_channels, ch, 3, padding=1))])
    block_channels = [ch]
    ds = 1
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            layers = [ResBlock(ch, out_channels=int(mult * model_channels), **res)]
            ch = int(mult * model_channels)
            if ds in attention_resolutions:
                layers.append(AttentionBlock(ch, **attn))
            input_blocks.append(TimestepEmbedSequential(*layers))
            block_channels.append(ch)
        if level != len(channel_mult) - 1:
            down = (ResBlock(ch, out_channels=ch, down=True, **res) if resblock_updown
                    else Downsample(ch, conv_resample, dims=dims, out_channels=ch))
            input_blocks.append(TimestepEmbedSequential(down))
            block_channels.append(ch)
            ds *= 2
    middle_block = TimestepEmbedSequential(ResBlock(ch, **res), AttentionBlock(ch, **attn), ResBlock(ch, **res))
    return input_blocks, middle_block, block_channels, ds


class UNetModel(_TimestepNetwork):
    """The ADM U-Net (Dhariwal & Nichol, 2021) with the release's flags and parameter names."""

    def __init__(self, image_size, in_channels, model_channels, out_channels, num_res_blocks,
                 attention_resolutions, dropout=0, channel_mult=(1, 2, 4, 8), conv_resample=True, dims=2,
                 num_classes=None, use_checkpoint=False, use_fp16=False, num_heads=1, num_head_channels=-1,
                 num_heads_upsample=-1, use_scale_shift_norm=False, resblock_updown=False,
                 use_new_attention_order=False, null_label=False):
        super().__init__(in_channels, model_channels, out_channels, dropout, dims, use_checkpoint, use_fp16,
                         use_scale_shift_norm)
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        self.image_size = image_size
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = attention_resolutions
        self.dropout = dropout
        self.channel_mult = channel_mult
        self.num_classes = num_classes
        self.num_heads = num_heads
        self.num_head_channels = num_head_channels
        self.num_heads_upsample = num_heads_upsample
        res = self.resblock_options
        # `null_label`: one more embedding row, label `num_classes`, for "no label" (classifier-free
        # guidance). Appended after the classes, so a model without it keeps the release's parameter shapes.
        self.null_label = num_classes if (null_label and num_classes is not None) else None
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes + (self.null_label is not None), res["emb_channels"])

        down_attn = _heads_kwargs(num_heads, num_head_channels, use_checkpoint, use_new_attention_order)
        up_attn = _heads_kwargs(num_heads_upsample, num_head_channels, use_checkpoint, use_new_attention_order)

        self.input_blocks, self.middle_block, input_block_chans, ds = _encoder_half(
            in_channels, model_channels, channel_mult, num_res_blocks, attention_resolutions, conv_resample, dims,
            resblock_updown, res, down_attn)
        input_ch, ch = input_block_chans[0], input_block_chans[-1]

        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                skip_ch = input_block_chans.pop()
                layers = [ResBlock(ch + skip_ch, out_channels=int(model_channels * mult), **res)]
                ch = int(model_channels * mult)
                if ds in attention_resolutions:
                    layers.append(AttentionBlock(ch, **up_attn))
                if level and i == num_res_blocks:
                    layers.append(ResBlock(ch, out_channels=ch, up=True, **res) if resblock_updown
                                  else Upsample(ch, conv_resample, dims=dims, out_channels=ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(normalization(ch), silu(),
                                 zero_module(conv_nd(dims, input_ch, out_channels, 3, padding=1)))

    def torso(self):
        return self.input_blocks, self.middle_block, self.output_blocks

    def attention_blocks(self):
        """Every attention block by its module path (`input_blocks.14.1`, `middle_block.1`, ...)."""
        return attention_blocks(self)

    def forward(self, x, timesteps, y=None, attention=None):
        """Apply the model to a batch `x` [B, C, H, W] at `timesteps` [B] (class labels `y` [B] if conditional).

        `attention`: an `AttentionPlan` for this call. With K copies the result holds K copies of the batch
        along dim 0, copy k with the blocks of `plan.copies[k]` computed by their edits; everything
        before the first edited block is computed once for all copies. With `plan.input_copies` = P the
        input holds (1 + P) * B rows, the batch and then P copies of it with their own timesteps and labels
        (rows to run unedited), and the result ends with those P * B rows. If the plan captures attention
        maps, the call returns `(output, maps)`, the maps in the plan's order.
        """
        cpu_allocator.note_forward(x)  # on the CPU, large activations otherwise cost fresh page faults
        if (y is not None) != (self.num_classes is not None):
            raise ValueError("pass class labels y exactly when the model is class-conditional "
                             f"(num_classes={self.num_classes}, y given: {y is not None})")
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        if self.num_classes is not None:
            emb = emb + self.label_emb(y)
        h = x.type(self.dtype)
        walk = _PlanWalk(attention or AttentionPlan(), rows=x.shape[0])

        skips = []
        for block in self.input_blocks:
            h, emb = walk.run_block(block, h, emb)
            skips.append(h)
        h, emb = walk.run_block(self.middle_block, h, emb)
        for block in self.output_blocks:
            skip = skips.pop()
            if skip.shape[0] != h.shape[0]:  # saved before the batch was repeated for the copies
                skip = walk.expand(skip)
            h = torch.cat([h, skip], dim=1)
            h, emb = walk.run_block(block, h, emb)
        out = self.out(h.type(x.dtype))
        return (out, walk.captured_maps()) if walk.captures else out


class _PlanWalk:
    """Runs the U-Net's layers for the copies of an attention plan.

    Before the first edited block the batch has B rows (then the P * B rows of the plan's input copies);
    at that block the batch is repeated to K * B rows (K copies), the input copies after them, and each
    edited block gets its per-row edits (None on the rows of copies that leave it). Captured maps are kept
    for this call only and returned by `captured_maps`.
    """

    def __init__(self, plan, rows):
        if rows % (1 + plan.input_copies):
            raise ValueError(f"an input of {rows} rows does not split into a batch and {plan.input_copies} input "
                             "copies of it")
        self.batch = rows // (1 + plan.input_copies)
        self.copies = len(plan.copies)
        self.edits = plan.row_edits(self.batch)
        self.captures = {block: (heads, legacy) for block, heads, legacy in plan.captures}
        self.capture_order = [block for block, _, _ in plan.captures]
        self.maps = {}
        self.expanded = self.copies == 1

    def expand(self, t):
        """The K copies of the batch's rows of `t`, then its input copies' rows."""
        repeated = t[:self.batch].repeat(self.copies, *([1] * (t.ndim - 1)))
        return torch.cat([repeated, t[self.batch:]]) if t.shape[0] > self.batch else repeated

    def run_block(self, block, h, emb):
        for layer in block:
            if isinstance(layer, AttentionBlock):
                edits = self.edits.get(layer)
                if edits is not None and not self.expanded:
                    h, emb = self.expand(h), self.expand(emb)
                    self.expanded = True
                capture = self.captures.get(layer)
                h = layer(h, row_edits=edits, capture=capture)
                if capture is not None:
                    h, attention_map = h
                    self.maps[layer] = attention_map[:self.batch]
            elif isinstance(layer, TimestepBlock):
                h = layer(h, emb)
            else:
                h = layer(h)
        return h, emb

    def captured_maps(self):
        missing = [block for block in self.capture_order if block not in self.maps]
        if missing:
            raise ValueError("the attention plan captures a block that is not in this model")
        return tuple(self.maps[block] for block in self.capture_order)


class SuperResModel(UNetModel):
    """U-Net conditioned on a low-resolution image, which is upsampled and stacked onto the input."""

    def __init__(self, image_size, in_channels, *args, **kwargs):
        super().__init__(image_size, in_channels * 2, *args, **kwargs)

    def forward(self, x, timesteps, low_res=None, **kwargs):
        if low_res is None:
            raise ValueError("SuperResModel needs the low-resolution image: pass low_res=")
        upsampled = F.interpolate(low_res, x.shape[2:], mode="bilinear")
        return super().forward(torch.cat([x, upsampled], dim=1), timesteps, **kwargs)


class EncoderUNetModel(_TimestepNetwork):
    """The half U-Net of the release's noisy-image classifiers, with its four pooling heads."""

    def __init__(self, image_size, in_channels, model_channels, out_channels, num_res_blocks,
                 attention_resolutions, dropout=0, channel_mult=(1, 2, 4, 8), conv_resample=True, dims=2,
                 use_checkpoint=False, use_fp16=False, num_heads=1, num_head_channels=-1,
                 num_heads_upsample=-1, use_scale_shift_norm=False, resblock_updown=False,
                 use_new_attention_order=False, pool="adaptive"):
        super().__init__(in_channels, model_channels, out_channels, dropout, dims, use_checkpoint, use_fp16,
                         use_scale_shift_norm)
        self.pool = pool
        res = self.resblock_options
        attn = _heads_kwargs(num_heads, num_head_channels, use_checkpoint, use_new_attention_order)

        self.input_blocks, self.middle_block, block_channels, ds = _encoder_half(
            in_channels, model_channels, channel_mult, num_res_blocks, attention_resolutions, conv_resample, dims,
            resblock_updown, res, attn)
        ch = block_channels[-1]
        feature_size = sum(block_channels) + ch  # the spatial pools concatenate every block's mean and the middle's

        if pool == "adaptive":
            self.out = nn.Sequential(normalization(ch), silu(), nn.AdaptiveAvgPool2d((1, 1)),
                                     zero_module(conv_nd(dims, ch, out_channels, 1)), nn.Flatten())
        elif pool == "attention":
            if num_head_channels == -1:
                raise ValueError("classifier_pool 'attention' needs num_head_channels")
            self.out = nn.Sequential(normalization(ch), silu(),
                                     AttentionPool2d(image_size // ds, ch, num_head_channels, out_channels))
        elif pool == "spatial":
            self.out = nn.Sequential(nn.Linear(feature_size, 2048), nn.ReLU(), nn.Linear(2048, out_channels))
        elif pool == "spatial_v2":
            self.out = nn.Sequential(nn.Linear(feature_size, 2048), normalization(2048), silu(),
                                     nn.Linear(2048, out_channels))
        else:
            raise ValueError(f"unknown classifier pool {pool!r}: use adaptive, attention, spatial or spatial_v2")

    def torso(self):
        return self.input_blocks, self.middle_block

    def forward(self, x, timesteps):
        cpu_allocator.note_forward(x)
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        spatial = self.pool.startswith("spatial")
        features = []
        h = x.type(self.dtype)
        for module in self.input_blocks:
            h = module(h, emb)
            if spatial:
                features.append(h.type(x.dtype).mean(dim=(2, 3)))
        h = self.middle_block(h, emb)
        if spatial:
            features.append(h.type(x.dtype).mean(dim=(2, 3)))
            return self.out(torch.cat(features, dim=-1))
        return self.out(h.type(x.dtype))
