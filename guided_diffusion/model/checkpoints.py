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
        raise FileNotFoundError(f"checkpoint {path} does not exist: download it first (see README, 'Checkpoints')")
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
    problems = diagnose_mismatch(model.state_dict(), state)
    if problems:
        source = path_or_state if isinstance(path_or_state, str) else "the checkpoint"
        raise CheckpointMismatchError(f"{source} does not match the model flags:\n  - " + "\n  - ".join(problems))
    model.load_state_dict(state, strict=True)
    return model


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


def diagnose_mismatch(expected, found):
    """Human-readable reasons why state dict `found` does not fit the model whose state dict is `expected`."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [k for k in expected if k in found and expected[k].shape != found[k].shape]
    if not (missing or unexpected or shapes):
        return []
    hints = []

    def shape(sd, key):
        return tuple(sd[key].shape) if key in sd else None

    if "label_emb.weight" in found and "label_emb.weight" not in expected:
        hints.append("the checkpoint is class-conditional: set --class_cond True")
    if "label_emb.weight" in expected and "label_emb.weight" not in found:
        hints.append("the checkpoint is unconditional: set --class_cond False")
    null_label = _null_label_hint(expected, found)
    if null_label:
        hints.append(null_label)
    width_differs = False
    if "time_embed.0.weight" in expected and "time_embed.0.weight" in found:
        (_, width_found) = shape(found, "time_embed.0.weight")
        (_, width_expected) = shape(expected, "time_embed.0.weight")
        width_differs = width_found != width_expected
        if width_differs:
            hints.append(f"the checkpoint has {width_found} base channels, the flags {width_expected}: "
                         f"set --num_channels {width_found}")
    out_key = _last_conv_key(expected)
    if out_key and out_key in found and shape(found, out_key)[0] != shape(expected, out_key)[0]:
        out_channels = shape(found, out_key)[0]
        if out_channels in (3, 6) and shape(expected, out_key)[0] in (3, 6):
            hints.append(f"the checkpoint outputs {out_channels} channels: set --learn_sigma "
                         f"{'True' if out_channels == 6 else 'False'}")
    scale_shift = None if width_differs else _scale_shift_hint(expected, found)
    if scale_shift:
        hints.append(scale_shift)
    blocks_found, blocks_expected = _count_blocks(found, "input_blocks"), _count_blocks(expected, "input_blocks")
    if blocks_found != blocks_expected:
        hints.append(f"the checkpoint has {blocks_found} input blocks, the flags give {blocks_expected}: check "
                     "--num_res_blocks, --channel_mult and --image_size")
    else:
        attention = _attention_hint(expected, found)
        if attention:
            hints.append(attention)
    if _uses_conv_downsampling(found) != _uses_conv_downsampling(expected):
        hints.append("the checkpoint " + ("does not use" if _uses_conv_downsampling(found) else "uses")
                     + " residual up/down-sampling blocks: set --resblock_updown "
                     + ("False" if _uses_conv_downsampling(found) else "True"))
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


def _last_conv_key(state):
    keys = [k for k in state if re.fullmatch(r"out\.\d+\.weight", k) and state[k].ndim >= 3]
    return keys[-1] if keys else None


def _scale_shift_hint(expected, found):
    for key in expected:
        if key.endswith("emb_layers.1.weight") and key in found:
            rows_expected, rows_found = expected[key].shape[0], found[key].shape[0]
            if rows_found == 2 * rows_expected:
                return "the checkpoint uses scale-shift norm: set --use_scale_shift_norm True"
            if 2 * rows_found == rows_expected:
                return "the checkpoint does not use scale-shift norm: set --use_scale_shift_norm False"
    return None


def _attention_blocks(state):
    return sorted({k[: -len(".qkv.weight")] for k in state if k.endswith(".qkv.weight")})


def _attention_hint(expected, found):
    blocks_found, blocks_expected = set(_attention_blocks(found)), set(_attention_blocks(expected))
    if blocks_found == blocks_expected:
        return None
    only_found = sorted(blocks_found - blocks_expected)
    only_expected = sorted(blocks_expected - blocks_found)
    return ("attention blocks differ (checkpoint only: " + (", ".join(only_found) or "none")
            + "; flags only: " + (", ".join(only_expected) or "none") + "): check --attention_resolutions")


def _count_blocks(state, prefix):
    indices = {int(m.group(1)) for k in state for m in [re.match(rf"{prefix}\.(\d+)\.", k)] if m}
    return len(indices)


def _uses_conv_downsampling(state):
    return any(k.endswith(".op.weight") for k in state)


def write_weights(source, destination, dtype=torch.float16):
    """Write the state_dict of checkpoint `source` to `destination` with its floating-point tensors in `dtype`
    (float16 halves a shipped EMA checkpoint; `load_checkpoint` casts back to the model's float32).
    Returns the number of parameters."""
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in read_state_dict(source).items()}
    atomic_write(destination, lambda f: torch.save(state, f))
    return sum(v.numel() for v in state.values())
