"""Loading released ADM checkpoints, with errors that name the flag to fix instead of 300 missing keys."""

import io
import pickle
import re
import warnings
import zipfile

import blobfile as bf
import torch

from guided_diffusion.runtime.files import atomic_write


class CheckpointMismatchError(ValueError):
    """The checkpoint does not fit the model built from the flags."""


class NotACheckpointError(ValueError):
    """The file is not a state_dict saved by torch.save (another kind of file, a damaged one, or other objects)."""


def read_state_dict(path, map_location="cpu"):
    """A state_dict from a local path or a blobfile URL; unwraps {'state_dict': ...} / {'model': ...} files.

    Only tensors are unpickled (weights_only=True). A file that is not a state_dict raises NotACheckpointError
    saying what the file is instead.
    """
    if not bf.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist: download it first (README.md, 'Table 1 on "
                                "ImageNet 256', lists the released checkpoints)")
    with bf.BlobFile(path, "rb") as f:
        data = f.read()
    state = _load_tensors(data, path, map_location)
    for key in ("state_dict", "model", "ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise NotACheckpointError(f"{path} is a torch file holding a {type(state).__name__}, not a state_dict "
                                  "(a dict of parameter names to tensors, as torch.save(model.state_dict(), path) "
                                  "writes)")
    other = next(((k, v) for k, v in state.items() if not isinstance(v, torch.Tensor)), None)
    if other is not None:
        raise NotACheckpointError(f"{path} holds a dict that is not a state_dict: {other[0]!r} is of type "
                                  f"{type(other[1]).__name__}, not a tensor")
    return state


def _load_tensors(data, path, map_location):
    """torch.load(weights_only=True) of the bytes `data`, with errors that say what the file is not."""
    again = "download or copy it again"
    if not data:
        raise NotACheckpointError(f"{path} is empty (0 bytes), not a checkpoint: {again}")
    if data[:4] == b"PK\x03\x04":  # torch.save's zip archive
        if not zipfile.is_zipfile(io.BytesIO(data)):
            raise NotACheckpointError(f"{path} is a truncated or damaged zip archive ({len(data):,} bytes, no "
                                      f"central directory at its end), not a complete checkpoint: {again}")
    elif data[:1] != b"\x80":  # nor a pickle (the format of torch.save before PyTorch 1.6)
        raise NotACheckpointError(f"{path} is not a torch checkpoint (torch.save writes a zip archive); it starts "
                                  f"with {data[:20]!r}")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on the way to its own error
            warnings.simplefilter("ignore")
            return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's message advises weights_only=False, i.e. running code from the file: never pass that on.
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        if found:
            raise NotACheckpointError(f"{path} holds pickled Python objects ({found.group(1)}), not a state_dict of "
                                      "tensors: save the weights with torch.save(model.state_dict(), path)") from None
        raise NotACheckpointError(f"{path} is a pickle file, not a torch checkpoint (torch.save writes a zip "
                                  "archive of tensors)") from None
    except (RuntimeError, EOFError, KeyError, ValueError) as error:
        detail = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        kind = "zip archive" if data[:2] == b"PK" else "pickle file"
        raise NotACheckpointError(f"{path} is a {kind} that torch cannot read as a checkpoint ({detail}): is it a "
                                  f"torch.save file? If so, it is damaged: {again}") from None


def load_checkpoint(model, path_or_state, map_location="cpu"):
    """Load a checkpoint into `model` with strict=True, explaining any mismatch in terms of the flags."""
    state = read_state_dict(path_or_state, map_location) if isinstance(path_or_state, str) else path_or_state
    problems = diagnose_mismatch(model.state_dict(), state, _unrecorded_flags(model))
    if problems:
        source = path_or_state if isinstance(path_or_state, str) else "the checkpoint"
        raise CheckpointMismatchError(f"{source} does not match the model flags:\n  - " + "\n  - ".join(problems))
    model.load_state_dict(state, strict=True)
    return model


def _unrecorded_flags(model):
    """The flags of `model` that its weights do not fix: image_size, attention_resolutions (a tuple of ints;
    the U-Net keeps downsampling factors) and null_label."""
    flags = {"null_label": getattr(model, "null_label", None) is not None}
    size, factors = getattr(model, "image_size", None), getattr(model, "attention_resolutions", None)
    if isinstance(size, int):
        flags["image_size"] = size
        flags["attention_resolutions"] = tuple(size // int(ds) for ds in factors or ())
    return flags


# --------------------------------------------------------------------------------------------------
# The flags a U-Net state dict was built with


def infer_model_flags(state_dict, image_size=None):
    """The model flags that an ADM U-Net state dict fixes, read from its key names and shapes.

    Returns a dict with those of `num_channels`, `channel_mult` ("1,2,2"), `num_res_blocks`, `learn_sigma`,
    `class_cond`, `use_scale_shift_norm` and `resblock_updown` that the keys determine (e.g. a one-level
    network has no up/down-sampling), and two facts that fix a pair of flags together:

    * `attention_downsampling`: the downsampling factors of the levels with self-attention (1 = full size).
      No weight depends on the image size, so only attention_resolutions = image_size / factor is known;
      with `image_size` given, `attention_resolutions` ("16,8") is added.
    * `label_rows` (class-conditional only): rows of the label embedding, num_classes plus one with
      --null_label True.
    """
    flags = {"class_cond": "label_emb.weight" in state_dict}
    if flags["class_cond"]:
        flags["label_rows"] = int(state_dict["label_emb.weight"].shape[0])
    if "time_embed.0.weight" in state_dict:
        flags["num_channels"] = int(state_dict["time_embed.0.weight"].shape[1])
    out_key = _last_conv_key(state_dict)
    if out_key and state_dict[out_key].shape[0] in (3, 6):
        flags["learn_sigma"] = state_dict[out_key].shape[0] == 6
    scale_shift = _uses_scale_shift_norm(state_dict)
    if scale_shift is not None:
        flags["use_scale_shift_norm"] = scale_shift
    flags.update(_decoder_layout(state_dict, flags.get("num_channels")))
    if image_size and "attention_downsampling" in flags:
        flags["attention_resolutions"] = ",".join(str(image_size // ds) for ds in flags["attention_downsampling"])
    return flags


def _block_layers(state, part):
    """{block: {layer: kind}} of `input_blocks` or `output_blocks`; kinds: res, attention, upsample,
    downsample, conv."""
    names = {}
    for key in state:
        found = re.match(rf"{part}\.(\d+)\.(\d+)\.(.+)$", key)
        if found:
            names.setdefault(int(found.group(1)), {}).setdefault(int(found.group(2)), set()).add(found.group(3))
    kinds = {"in_layers.2.weight": "res", "qkv.weight": "attention", "conv.weight": "upsample",
             "op.weight": "downsample", "weight": "conv"}
    return {block: {layer: next((kind for name, kind in kinds.items() if name in params), "other")
                    for layer, params in layers.items()}
            for block, layers in names.items()}


def _decoder_layout(state, width):
    """num_res_blocks, channel_mult, resblock_updown and attention_downsampling from the output blocks
    (each level has num_res_blocks + 1 of them, the last of all but the top level ending in an upsampler)."""
    blocks = _block_layers(state, "output_blocks")
    if not blocks or sorted(blocks) != list(range(len(blocks))):
        return {}

    def upsampler(layers):
        kinds = [layers[i] for i in sorted(layers)]
        return kinds[-1] == "upsample" or kinds.count("res") == 2

    ends = [b for b in sorted(blocks) if upsampler(blocks[b])]
    per_level = ends[0] + 1 if ends else len(blocks)
    if len(blocks) % per_level:
        return {}
    levels = len(blocks) // per_level
    layout = {"num_res_blocks": per_level - 1}
    if ends:
        layout["resblock_updown"] = blocks[ends[0]][max(blocks[ends[0]])] == "res"
    attention = set()
    for block, layers in blocks.items():
        if "attention" in layers.values():
            attention.add(2 ** (levels - 1 - block // per_level))
    for block, layers in _block_layers(state, "input_blocks").items():
        if block and "attention" in layers.values():
            attention.add(2 ** ((block - 1) // per_level))
    layout["attention_downsampling"] = tuple(sorted(attention))
    if width:
        mults = []
        for level in range(levels):
            key = f"output_blocks.{(levels - 1 - level) * per_level}.0.in_layers.2.weight"
            if key not in state:
                return layout
            mult = state[key].shape[0] / width
            mults.append(str(int(mult)) if mult.is_integer() else f"{mult:g}")
        layout["channel_mult"] = ",".join(mults)
    return layout


def _uses_scale_shift_norm(state):
    """A residual block's timestep projection gives scale and shift (two rows per channel) or a bias (one)."""
    for key in state:
        if key.endswith(".emb_layers.1.weight"):
            out_key = key[: -len("emb_layers.1.weight")] + "out_layers.3.weight"
            if out_key in state:
                ratio = state[key].shape[0] / state[out_key].shape[0]
                if ratio in (1, 2):
                    return ratio == 2
    return None


# --------------------------------------------------------------------------------------------------
# Hints


def _null_label_hint(expected, found):
    """The label embedding differs by one row: the null label of classifier-free guidance (`--null_label`)."""
    key = "label_emb.weight"
    if key not in expected or key not in found or expected[key].shape[1:] != found[key].shape[1:]:
        return None
    rows_found, rows_expected = found[key].shape[0], expected[key].shape[0]
    if rows_found == rows_expected + 1:
        return (f"the checkpoint's label embedding has a null label row ({rows_found} rows for {rows_expected} "
                "classes): set --null_label True")
    if rows_found + 1 == rows_expected:
        return f"the checkpoint has no null label row ({rows_found} rows): set --null_label False"
    return None


def diagnose_mismatch(expected, found, model_flags=None):
    """Human-readable reasons why state dict `found` does not fit the model whose state dict is `expected`.

    The hints compare the flags inferred from both (`infer_model_flags`) and name only those that differ.
    `model_flags`: the model's flags that no weight records (`image_size`, `attention_resolutions` as ints,
    `null_label`); with them the hints name the values to set.
    """
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [k for k in expected if k in found and expected[k].shape != found[k].shape]
    if not (missing or unexpected or shapes):
        return []

    def shape(sd, key):
        return tuple(sd[key].shape) if key in sd else None

    model_flags = model_flags or {}
    image_size = model_flags.get("image_size")
    have, want = infer_model_flags(found, image_size), infer_model_flags(expected, image_size)
    hints = _kind_hints(_network_kind(found), _network_kind(expected))
    if not hints:
        hints = _flag_hints(have, want, expected, found, model_flags)
    if not hints:
        hints.append("the architecture differs from the flags (check the MODEL_FLAGS given with the checkpoint)")
    details = []
    if missing:
        details.append(f"{len(missing)} missing keys, e.g. {', '.join(missing[:3])}")
    if unexpected:
        details.append(f"{len(unexpected)} unexpected keys, e.g. {', '.join(unexpected[:3])}")
    if shapes:
        details.append("shape mismatches, e.g. " + ", ".join(
            f"{k} {shape(found, k)} vs {shape(expected, k)}" for k in shapes[:3]))
    return hints + ["details: " + "; ".join(details)]


def _kind_hints(have, want):
    if have == "classifier" and want == "unet":
        return ["the checkpoint has no output blocks: it is a noisy-image classifier, not a diffusion U-Net "
                "(pass it as --classifier_path)"]
    if have == "unet" and want == "classifier":
        return ["the checkpoint is a diffusion U-Net (it has output blocks), not a classifier: pass it as "
                "--model_path"]
    return []


# The classifier's names of the flags that both networks have.
_CLASSIFIER_FLAGS = {"num_channels": "classifier_width", "use_scale_shift_norm": "classifier_use_scale_shift_norm",
                     "resblock_updown": "classifier_resblock_updown"}


def _flag_hints(have, want, expected, found, model_flags):
    """A hint for each flag whose value inferred from the checkpoint (`have`) differs from the model's (`want`)."""
    classifier = _network_kind(expected) == "classifier"

    def differs(flag):
        return flag in have and flag in want and have[flag] != want[flag]

    def name(flag):
        return "--" + (_CLASSIFIER_FLAGS.get(flag, flag) if classifier else flag)

    hints = []
    if differs("class_cond") and have["class_cond"]:
        # The rows alone cannot tell N classes from N - 1 classes plus classifier-free guidance's null label.
        rows = have["label_rows"]
        hints.append(f"the checkpoint is class-conditional ({rows} label rows): set --class_cond True "
                     f"--num_classes {rows} (or --num_classes {rows - 1} --null_label True if its last row is the "
                     "null label of classifier-free guidance)")
    elif differs("class_cond"):
        hints.append("the checkpoint is unconditional: set --class_cond False")
    elif differs("label_rows"):
        null = bool(model_flags.get("null_label"))
        hints.append(_null_label_hint(expected, found)
                     or f"the checkpoint's label embedding has {have['label_rows']} rows, the flags "
                        f"{want['label_rows']}: set --num_classes {have['label_rows'] - null}"
                        + (" (its last row taken as the null label of --null_label True)" if null else ""))
    if differs("num_channels"):
        hints.append(f"the checkpoint has {have['num_channels']} base channels, the flags {want['num_channels']}: "
                     f"set {name('num_channels')} {have['num_channels']}")
    if differs("channel_mult"):
        hints.append(f"the checkpoint has channel multipliers {have['channel_mult']}, the flags "
                     f"{want['channel_mult']}: set --channel_mult {have['channel_mult']}")
    if differs("num_res_blocks"):
        hints.append(f"the checkpoint has {have['num_res_blocks']} residual blocks per level, the flags "
                     f"{want['num_res_blocks']}: set --num_res_blocks {have['num_res_blocks']}")
    if differs("attention_downsampling"):
        hints.append(_attention_hint(have, want, model_flags.get("image_size"),
                                     model_flags.get("attention_resolutions")))
    if differs("learn_sigma"):
        hints.append(f"the checkpoint outputs {6 if have['learn_sigma'] else 3} channels: set --learn_sigma "
                     f"{have['learn_sigma']}")
    if differs("use_scale_shift_norm"):
        hints.append("the checkpoint " + ("uses" if have["use_scale_shift_norm"] else "does not use")
                     + f" scale-shift norm: set {name('use_scale_shift_norm')} {have['use_scale_shift_norm']}")
    if differs("resblock_updown"):
        hints.append("the checkpoint " + ("uses" if have["resblock_updown"] else "does not use")
                     + f" residual up/down-sampling blocks: set {name('resblock_updown')} {have['resblock_updown']}")
    return hints


def _network_kind(state):
    """"unet" (output blocks), "classifier" (the encoder half only) or None."""
    if any(k.startswith("output_blocks.") for k in state):
        return "unet"
    return "classifier" if any(k.startswith("input_blocks.") for k in state) else None


def _last_conv_key(state):
    keys = [k for k in state if re.fullmatch(r"out\.\d+\.weight", k) and state[k].ndim >= 3]
    return keys[-1] if keys else None


def _levels(factors):
    return ",".join(map(str, factors)) or "none (the middle block only)"


def _attention_hint(have, want, image_size, attention_resolutions):
    """Attention sits at other levels. The checkpoint fixes image_size / attention_resolutions only, so
    either flag may be the wrong one: name the values of each that would fit."""
    factors = have["attention_downsampling"]
    hint = (f"the checkpoint has self-attention at downsampling factors {_levels(factors)}, the flags at "
            f"{_levels(want['attention_downsampling'])} (attention_resolutions = image_size / factor, and no "
            "checkpoint records its image size)")
    if not image_size or any(image_size % ds for ds in factors):
        return hint + ": check --attention_resolutions and --image_size"
    fix_resolutions = f"--attention_resolutions {have['attention_resolutions']}"
    levels = len(have["channel_mult"].split(",")) if "channel_mult" in have else None
    other_size = _image_size_that_fits(factors, attention_resolutions, image_size, levels)
    if other_size is None:
        return f"{hint}: set {fix_resolutions}"
    return (f"{hint}: set --image_size {other_size} (keeping --attention_resolutions "
            f"{','.join(map(str, attention_resolutions))}), or keep --image_size {image_size} and set "
            f"{fix_resolutions}")


def _image_size_that_fits(factors, attention_resolutions, image_size, levels):
    """Another image size (image_size times a power of two) at which the flags' attention resolutions fall
    on exactly the checkpoint's attention levels (of `levels`, if known), or None."""
    if not attention_resolutions:
        return None
    deepest = 2 ** (levels - 1) if levels else max((*factors, 1))
    for power in (*range(-1, -6, -1), *range(1, 6)):
        size = image_size * 2.0 ** power
        if not size.is_integer() or size < 1:
            continue
        size = int(size)
        hits = {size // r for r in attention_resolutions if size % r == 0}
        hits = {ds for ds in hits if ds & (ds - 1) == 0 and ds <= deepest}  # powers of two the network has
        if hits == set(factors):
            return size
    return None


def write_weights(source, destination, dtype=torch.float16):
    """Write the state_dict of checkpoint `source` to `destination` with its floating-point tensors in `dtype`
    (float16 halves a shipped EMA checkpoint; `load_checkpoint` casts back to the model's float32).
    Returns the number of parameters."""
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in read_state_dict(source).items()}
    atomic_write(destination, lambda f: torch.save(state, f))
    return sum(v.numel() for v in state.values())
