"""`manifest.json` of a sampling folder (store.py): which run the folder holds, as JSON.

Format 2: `config` (whatever changes image i: not the image count, as image i is the same for any count) and
its `digest`, `num_samples` (the run's count: shards may exist up to it), `image_shape`, `shard_size`, `info`
(informational, of the job that created it), `history` (the count each time the run grew: one entry per
count, with time, host and command line) and `legacy_digests` (the digests that the shards of a format-1
folder carry). Format 1 held the count in `config`, so its digest depended on the count.
"""

import hashlib
import json
import socket
import time

FORMAT_VERSION = 2
MANIFEST = "manifest.json"


class OutputFolderError(RuntimeError):
    """The output folder cannot be used for this run (unwritable, or it holds another run)."""


def config_digest(config):
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def describe_differences(old, new, prefix=""):
    """Lines `key: old -> new` for every (nested) key whose value differs."""
    lines = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            lines += describe_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            lines.append(f"  {prefix}{key}: {json.dumps(a)} -> {json.dumps(b)}")
    return lines


def read_manifest(path):
    """The manifest at `path` (it exists), or OutputFolderError saying it is unreadable."""
    try:
        with open(path) as f:
            manifest = json.load(f)
        manifest["config"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise OutputFolderError(f"{path} is unreadable ({error}); use another --output_dir") from error
    return manifest


def manifest_text(manifest):
    return json.dumps(manifest, indent=2, sort_keys=True) + "\n"


def history_entry(num_samples, info=None):
    """The history's record of a job that set the run's count."""
    info = info or {}
    entry = {"num_samples": int(num_samples), "time": time.strftime("%Y-%m-%d %H:%M:%S %z"),
             "host": info.get("host", socket.gethostname())}
    if "argv" in info:
        entry["argv"] = info["argv"]
    return entry


def new_manifest(config, num_samples, image_shape, shard_size, info=None, legacy_digests=()):
    return {"format": FORMAT_VERSION, "digest": config_digest(config), "num_samples": int(num_samples),
            "image_shape": list(image_shape), "shard_size": int(shard_size), "config": config, "info": info or {},
            "history": [history_entry(num_samples, info)], "legacy_digests": sorted(legacy_digests)}


def upgraded(manifest, config, legacy_digests):
    """A format-1 manifest of `config`'s run in this format (its shards keep their `legacy_digests`)."""
    created = manifest.get("info", {}).get("created")
    return {**manifest, "format": FORMAT_VERSION, "digest": config_digest(config), "config": config,
            "legacy_digests": sorted(legacy_digests),
            "history": [{"num_samples": manifest.get("num_samples"), "time": created}]}


def grown(manifest, num_samples, info=None):
    """`manifest` with the run's count raised to `num_samples`, recorded in its history."""
    return {**manifest, "num_samples": int(num_samples),
            "history": [*manifest.get("history", []), history_entry(num_samples, info)]}
