"""Models and diffusions from the ADM release's flags (its `script_util`, whose names and defaults these
keep, so its README commands work verbatim). The diffusions are the process classes of this package;
`diffusion_class=` builds another (the release's import path `guided_diffusion.script_util` passes the
classes with its sampling methods)."""

import inspect

from guided_diffusion.cli.flags import str2bool  # noqa: F401 - the release exports it here
from guided_diffusion.diffusion import process as gd
from guided_diffusion.diffusion.respace import SpacedDiffusion, space_timesteps
from guided_diffusion.model.unet import EncoderUNetModel, SuperResModel, UNetModel

NUM_CLASSES = 1000  # ImageNet: the release's class-conditional models and classifiers

# The release's per-resolution channel multipliers, used when --channel_mult is empty.
_CHANNEL_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}
# 32: not in the release; the Fashion-MNIST testbed's classifier (configs/fashion32/classifier.yaml)
_CLASSIFIER_CHANNEL_MULT = {**_CHANNEL_MULT, 32: (1, 2, 2)}
_SR_CHANNEL_MULT = {512: (1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4)}


# The help of every release flag (the release gives none); `sampling.images.MODEL_FLAGS` and the classifier
# flags show them.
RELEASE_FLAG_HELP = {
    "image_size": "image side in pixels (the U-Net's and the classifier's input)",
    "num_channels": "U-Net base width (channels at the first level)",
    "num_res_blocks": "residual blocks per resolution level",
    "num_heads": "attention heads (when --num_head_channels is -1)",
    "num_heads_upsample": "attention heads in the decoder (-1: as --num_heads)",
    "num_head_channels": "channels per attention head (-1: use --num_heads heads)",
    "attention_resolutions": "resolutions (in pixels) with self-attention, comma separated, e.g. 32,16,8",
    "channel_mult": "width multiplier per level, comma separated (empty: the release's default for the size)",
    "dropout": "dropout in the residual blocks",
    "class_cond": "class-conditional model (label embedding; samples get class labels)",
    "use_checkpoint": "gradient checkpointing (less memory, more compute while training)",
    "use_scale_shift_norm": "timestep embedding as scale and shift of the residual blocks' second norm",
    "resblock_updown": "residual blocks for up- and downsampling (instead of plain convolutions)",
    "use_fp16": "the release's float16 conversion of the U-Net torso",
    "use_new_attention_order": "split q, k, v before the heads (the release's QKVAttention); else the legacy order",
    "num_classes": "classes of a class-conditional model and of a classifier; the release's are ImageNet's 1000",
    "null_label": "the label embedding has one more row, label num_classes = 'no label' (learnt with "
                  "--class_dropout_prob; classifier-free guidance needs it); the release's models have none",
    "learn_sigma": "the model also outputs the variance interpolation (6 output channels)",
    "diffusion_steps": "steps of the base diffusion process T",
    "noise_schedule": "beta schedule: linear or cosine",
    "timestep_respacing": "steps to sample with: e.g. 250 (evenly spaced), ddim25 (DDIM's spacing), 10,15,20",
    "use_kl": "train on the variational bound (KL) instead of the simple MSE",
    "predict_xstart": "the model predicts x0 instead of the noise",
    "rescale_timesteps": "feed the network timesteps rescaled to 0..1000 whatever the step count",
    "rescale_learned_sigmas": "MSE plus the rescaled variational bound term (improved DDPM's hybrid loss)",
    "classifier_use_fp16": "the release's float16 conversion of the classifier torso",
    "classifier_width": "classifier base width",
    "classifier_depth": "classifier residual blocks per level",
    "classifier_attention_resolutions": "classifier resolutions with self-attention, comma separated",
    "classifier_use_scale_shift_norm": "classifier: timestep embedding as scale and shift of the second norm",
    "classifier_resblock_updown": "classifier: residual blocks for downsampling",
    "classifier_pool": "classifier head: adaptive, attention, spatial or spatial_v2",
}


def diffusion_defaults():
    return dict(learn_sigma=False, diffusion_steps=1000, noise_schedule="linear", timestep_respacing="",
                use_kl=False, predict_xstart=False, rescale_timesteps=False, rescale_learned_sigmas=False)


def classifier_defaults():
    return dict(image_size=64, classifier_use_fp16=False, classifier_width=128, classifier_depth=2,
                classifier_attention_resolutions="32,16,8", classifier_use_scale_shift_norm=True,
                classifier_resblock_updown=True, classifier_pool="attention")


def model_and_diffusion_defaults():
    res = dict(image_size=64, num_channels=128, num_res_blocks=2, num_heads=4, num_heads_upsample=-1,
               num_head_channels=-1, attention_resolutions="16,8", channel_mult="", dropout=0.0, class_cond=False,
               use_checkpoint=False, use_scale_shift_norm=True, resblock_updown=False, use_fp16=False,
               use_new_attention_order=False, num_classes=NUM_CLASSES, null_label=False)
    res.update(diffusion_defaults())
    return res


def classifier_and_diffusion_defaults():
    res = classifier_defaults()
    res.update(diffusion_defaults())
    return res


def _channel_mult(channel_mult, image_size, table):
    if channel_mult:
        return tuple(float(m) if "." in m else int(m) for m in str(channel_mult).split(","))
    if image_size not in table:
        raise ValueError(f"no default channel_mult for image_size {image_size}: pass --channel_mult "
                         f"(defaults exist for {sorted(table)})")
    return table[image_size]


def _attention_ds(attention_resolutions, image_size):
    return tuple(image_size // int(res) for res in str(attention_resolutions).split(",") if res.strip())


def create_model_and_diffusion(image_size, class_cond, learn_sigma, num_channels, num_res_blocks, channel_mult,
                               num_heads, num_head_channels, num_heads_upsample, attention_resolutions, dropout,
                               diffusion_steps, noise_schedule, timestep_respacing, use_kl, predict_xstart,
                               rescale_timesteps, rescale_learned_sigmas, use_checkpoint, use_scale_shift_norm,
                               resblock_updown, use_fp16, use_new_attention_order, num_classes=NUM_CLASSES,
                               null_label=False, diffusion_class=None):
    return _built_from_flags(create_model, locals())


def create_model(image_size, num_channels, num_res_blocks, channel_mult="", learn_sigma=False, class_cond=False,
                 use_checkpoint=False, attention_resolutions="16", num_heads=1, num_head_channels=-1,
                 num_heads_upsample=-1, use_scale_shift_norm=False, dropout=0, resblock_updown=False,
                 use_fp16=False, use_new_attention_order=False, num_classes=NUM_CLASSES, null_label=False):
    if null_label and not class_cond:
        raise ValueError("--null_label True needs a class-conditional model (--class_cond True)")
    return UNetModel(
        image_size=image_size, in_channels=3, model_channels=num_channels, out_channels=6 if learn_sigma else 3,
        num_res_blocks=num_res_blocks, attention_resolutions=_attention_ds(attention_resolutions, image_size),
        dropout=dropout, channel_mult=_channel_mult(channel_mult, image_size, _CHANNEL_MULT),
        num_classes=num_classes if class_cond else None, use_checkpoint=use_checkpoint, use_fp16=use_fp16,
        num_heads=num_heads, num_head_channels=num_head_channels, num_heads_upsample=num_heads_upsample,
        use_scale_shift_norm=use_scale_shift_norm, resblock_updown=resblock_updown,
        use_new_attention_order=use_new_attention_order, null_label=null_label,
    )


def create_classifier(image_size, classifier_use_fp16, classifier_width, classifier_depth,
                      classifier_attention_resolutions, classifier_use_scale_shift_norm,
                      classifier_resblock_updown, classifier_pool, num_classes=NUM_CLASSES):
    return EncoderUNetModel(
        image_size=image_size, in_channels=3, model_channels=classifier_width, out_channels=num_classes,
        num_res_blocks=classifier_depth,
        attention_resolutions=_attention_ds(classifier_attention_resolutions, image_size),
        channel_mult=_channel_mult("", image_size, _CLASSIFIER_CHANNEL_MULT), use_fp16=classifier_use_fp16,
        num_head_channels=64, use_scale_shift_norm=classifier_use_scale_shift_norm,
        resblock_updown=classifier_resblock_updown, pool=classifier_pool,
    )


def create_classifier_and_diffusion(image_size, classifier_use_fp16, classifier_width, classifier_depth,
                                    classifier_attention_resolutions, classifier_use_scale_shift_norm,
                                    classifier_resblock_updown, classifier_pool, learn_sigma, diffusion_steps,
                                    noise_schedule, timestep_respacing, use_kl, predict_xstart, rescale_timesteps,
                                    rescale_learned_sigmas, num_classes=NUM_CLASSES, diffusion_class=None):
    return _built_from_flags(create_classifier, locals())


def sr_model_and_diffusion_defaults():
    res = model_and_diffusion_defaults()
    res["large_size"], res["small_size"] = 256, 64
    arg_names = inspect.getfullargspec(sr_create_model_and_diffusion)[0]
    return {k: v for k, v in res.items() if k in arg_names}


def sr_create_model_and_diffusion(large_size, small_size, class_cond, learn_sigma, num_channels, num_res_blocks,
                                  num_heads, num_head_channels, num_heads_upsample, attention_resolutions, dropout,
                                  diffusion_steps, noise_schedule, timestep_respacing, use_kl, predict_xstart,
                                  rescale_timesteps, rescale_learned_sigmas, use_checkpoint, use_scale_shift_norm,
                                  resblock_updown, use_fp16, diffusion_class=None):
    return _built_from_flags(sr_create_model, locals())


def sr_create_model(large_size, small_size, num_channels, num_res_blocks, learn_sigma, class_cond,
                    use_checkpoint, attention_resolutions, num_heads, num_head_channels, num_heads_upsample,
                    use_scale_shift_norm, dropout, resblock_updown, use_fp16):
    del small_size  # the release keeps it as a flag; the architecture depends on large_size only
    return SuperResModel(
        image_size=large_size, in_channels=3, model_channels=num_channels, out_channels=6 if learn_sigma else 3,
        num_res_blocks=num_res_blocks, attention_resolutions=_attention_ds(attention_resolutions, large_size),
        dropout=dropout, channel_mult=_channel_mult("", large_size, _SR_CHANNEL_MULT),
        num_classes=NUM_CLASSES if class_cond else None, use_checkpoint=use_checkpoint, num_heads=num_heads,
        num_head_channels=num_head_channels, num_heads_upsample=num_heads_upsample,
        use_scale_shift_norm=use_scale_shift_norm, resblock_updown=resblock_updown, use_fp16=use_fp16,
    )


def _built_from_flags(create_network, flags):
    """The release's `*_and_diffusion` factories in one place: `flags` are a factory's arguments (its
    `locals()`); returns the network `create_network` builds from those it takes, and the diffusion that
    the diffusion flags (`diffusion_defaults`) describe."""
    network = create_network(**{name: flags[name] for name in inspect.signature(create_network).parameters})
    diffusion = create_gaussian_diffusion(
        steps=flags["diffusion_steps"], learn_sigma=flags["learn_sigma"], noise_schedule=flags["noise_schedule"],
        use_kl=flags["use_kl"], predict_xstart=flags["predict_xstart"], rescale_timesteps=flags["rescale_timesteps"],
        rescale_learned_sigmas=flags["rescale_learned_sigmas"], timestep_respacing=flags["timestep_respacing"],
        diffusion_class=flags["diffusion_class"])
    return network, diffusion


def create_gaussian_diffusion(*, steps=1000, learn_sigma=False, sigma_small=False, noise_schedule="linear",
                              use_kl=False, predict_xstart=False, rescale_timesteps=False,
                              rescale_learned_sigmas=False, timestep_respacing="", diffusion_class=None):
    betas = gd.get_named_beta_schedule(noise_schedule, steps)
    if use_kl:
        loss_type = gd.LossType.RESCALED_KL
    elif rescale_learned_sigmas:
        loss_type = gd.LossType.RESCALED_MSE
    else:
        loss_type = gd.LossType.MSE
    if not timestep_respacing:
        timestep_respacing = [steps]
    if learn_sigma:
        var_type = gd.ModelVarType.LEARNED_RANGE
    else:
        var_type = gd.ModelVarType.FIXED_SMALL if sigma_small else gd.ModelVarType.FIXED_LARGE
    return (diffusion_class or SpacedDiffusion)(
        use_timesteps=space_timesteps(steps, timestep_respacing), betas=betas,
        model_mean_type=gd.ModelMeanType.START_X if predict_xstart else gd.ModelMeanType.EPSILON,
        model_var_type=var_type, loss_type=loss_type, rescale_timesteps=rescale_timesteps,
    )


def add_dict_to_argparser(parser, default_dict):
    """Add `--key value` flags with the release's parsing (booleans as 'True'/'False', 'yes'/'no', ...)."""
    for k, v in default_dict.items():
        v_type = type(v)
        if v is None:
            v_type = str
        elif isinstance(v, bool):
            v_type = str2bool
        parser.add_argument(f"--{k}", default=v, type=v_type)


def args_to_dict(args, keys):
    return {k: getattr(args, k) for k in keys}
