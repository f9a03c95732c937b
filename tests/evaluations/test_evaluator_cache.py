"""Where the evaluator keeps its activation cache: a user cache folder (``--cache_dir``, ``$PAG_EVAL_CACHE``,
else ``$XDG_CACHE_HOME/pag_adm/activations`` or ``~/.cache/pag_adm/activations``), never beside its inputs,
so that scoring against the shipped reference writes nothing into the source tree and a read-only dataset
folder works. Small synthetic batches and the digits backend: no Inception graph is needed.
"""

import os
import stat
import subprocess

import numpy as np
import pytest

from evaluations.evaluator import Evaluator, cache_path_for, main
from guided_diffusion.data.digits import load_digits_split

from programs import REPO, child_env, find_program


class CountingBackend:
    """Cheap pixel-dependent features; counts the images it has been given."""

    name = "count-test"

    def __init__(self):
        self.images = 0

    def compute(self, batch):
        self.images += len(batch)
        x = batch.astype(np.float32) / 255.0
        pool = np.concatenate([x.mean((1, 2)), x.std((1, 2))], axis=1)
        return {"pool": pool, "spatial": x[:, ::2, ::2, 0].reshape(len(x), -1),
                "probs": np.full((len(x), 4), 0.25, np.float32)}


def _images(n, size, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _read_only_inputs(folder):
    """Digits reference and sample batches in `folder`, which is then made read-only; returns (ref, sample)."""
    folder.mkdir()
    ref, sample = folder / "ref.npz", folder / "sample.npz"
    np.savez(ref, load_digits_split(16, "heldout")[0][:60])
    np.savez(sample, load_digits_split(16, "train")[0][:40])
    for path in (ref, sample):
        path.chmod(0o444)
    folder.chmod(0o555)
    return ref, sample


def _make_writable(folder):
    folder.chmod(stat.S_IRWXU)


def _run_cli(*args, unset=(), **env):
    """adm-evaluate with the digits backend, `env` added to its environment and the names in `unset` removed."""
    program = find_program("adm-evaluate", "pip install -e . installs it")
    environment = child_env(**env)
    for name in unset:
        environment.pop(name, None)
    return subprocess.run([program, *map(str, args), "--backend", "digits", "--quiet"], cwd=REPO,
                          env=environment, capture_output=True, text=True, timeout=300)


def _cache_files(folder):
    return sorted(p.name for p in folder.rglob("*.acts.npz")) if folder.exists() else []


# --------------------------------------------------------------------------------------------------
# through the installed command


@pytest.mark.e2e
def test_cache_goes_to_the_user_cache_folder_and_a_read_only_reference_works(tmp_path):
    inputs = tmp_path / "dataset"
    ref, sample = _read_only_inputs(inputs)
    before = _listing(inputs)
    env_cache, flag_cache, xdg = tmp_path / "env_cache", tmp_path / "flag_cache", tmp_path / "xdg"
    try:
        # $PAG_EVAL_CACHE
        first = _run_cli(ref, sample, PAG_EVAL_CACHE=str(env_cache))
        assert first.returncode == 0, first.stderr
        # Runs as root write into a read-only folder anyway: what counts is that nothing was written there.
        assert _listing(inputs) == before
        assert "cannot write activation cache" not in first.stderr
        assert len(_cache_files(env_cache)) == 2, _listing(env_cache)  # the reference's and the sample's
        # a second run reads them back (does not rewrite them) and prints the same numbers
        written = {p: p.stat().st_mtime_ns for p in env_cache.rglob("*.acts.npz")}
        again = _run_cli(ref, sample, PAG_EVAL_CACHE=str(env_cache))
        assert again.returncode == 0 and again.stdout == first.stdout, again.stderr
        assert {p: p.stat().st_mtime_ns for p in env_cache.rglob("*.acts.npz")} == written

        # --cache_dir wins over $PAG_EVAL_CACHE
        flagged = _run_cli(ref, sample, "--cache_dir", flag_cache, PAG_EVAL_CACHE=str(env_cache))
        assert flagged.returncode == 0, flagged.stderr
        assert len(_cache_files(flag_cache)) == 2 and len(_cache_files(env_cache)) == 2

        # neither: under $XDG_CACHE_HOME/pag_adm/activations
        default = _run_cli(ref, sample, XDG_CACHE_HOME=str(xdg), unset=("PAG_EVAL_CACHE",))
        assert default.returncode == 0, default.stderr
        assert len(_cache_files(xdg / "pag_adm" / "activations")) == 2, _listing(xdg)
        assert _listing(inputs) == before
    finally:
        _make_writable(inputs)


def test_cache_dir_is_documented_in_the_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for needle in ("--cache_dir", "$PAG_EVAL_CACHE", "XDG_CACHE_HOME", "~/.cache/pag_adm/activations"):
        assert needle in text, needle


# --------------------------------------------------------------------------------------------------
# the cache's key


def test_cache_entries_are_per_input_and_backend_and_a_rewritten_batch_replaces_its_own(tmp_path):
    cache = tmp_path / "cache"
    batches = tmp_path / "batches"
    batches.mkdir()
    a, b = batches / "a.npz", batches / "b.npz"
    np.savez(a, _images(6, 8, 0))
    np.savez(b, _images(6, 8, 1))
    backend = CountingBackend()
    ev = Evaluator(backend, progress=False, cache_dir=cache)
    ev.batch_features(a)
    ev.batch_features(b)
    assert backend.images == 12 and len(_cache_files(cache)) == 2
    assert _listing(batches) == ["a.npz", "b.npz"]
    assert cache_path_for(a, "count-test", cache) != cache_path_for(b, "count-test", cache)
    assert cache_path_for(a, "count-test", cache) != cache_path_for(a, "other-backend", cache)
    assert cache_path_for(a, "count-test", cache).parent == cache

    ev.batch_features(a)
    assert backend.images == 12  # read back
    np.savez(a, _images(7, 8, 2))  # rewritten in place: recomputed, and its old entry is replaced
    assert ev.batch_features(a).num_images == 7
    assert backend.images == 19 and len(_cache_files(cache)) == 2

    # the same file under another name (a copy) is another input: it gets its own entry
    copy = batches / "copy.npz"
    copy.write_bytes(a.read_bytes())
    os.utime(copy, ns=(a.stat().st_atime_ns, a.stat().st_mtime_ns))
    ev.batch_features(copy)
    assert backend.images == 26 and len(_cache_files(cache)) == 3


def test_unwritable_cache_folder_only_warns(tmp_path, recwarn):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder should be")
    sample = tmp_path / "s.npz"
    np.savez(sample, _images(5, 8, 0))
    backend = CountingBackend()
    feats = Evaluator(backend, progress=False, cache_dir=blocker / "cache").batch_features(sample)
    assert feats.num_images == 5
    assert any("cannot write activation cache" in str(w.message) for w in recwarn.list)
    assert _listing(tmp_path) == ["not_a_folder", "s.npz"]


# --------------------------------------------------------------------------------------------------
# a stray cache of the old layout in checkpoints/ cannot be committed by `git add -A`


def test_old_cache_names_in_checkpoints_are_ignored_by_git():
    def ignored(path):
        result = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO, capture_output=True, text=True)
        assert result.returncode in (0, 1), result.stderr  # 128: not a git checkout
        return result.returncode == 0

    assert ignored("checkpoints/fashion32_test_ref.fashion.acts.npz")
    assert ignored("checkpoints/fashion32_test_ref.inception.acts.npz")
    assert not ignored("checkpoints/fashion32_test_ref.npz")  # the shipped reference itself stays tracked
