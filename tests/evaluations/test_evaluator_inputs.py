"""Evaluator inputs that used to slip through: damaged npz members, a resolution other than the
reference's, and non-finite stored statistics. Each is refused with one line naming the problem and the
fix; the command line exits non-zero without a traceback. Small synthetic batches and the digits backend:
no Inception graph is needed.
"""

import subprocess
import zipfile

import numpy as np
import pytest

from evaluations.evaluator import Evaluator, main
from evaluations.npz import NpzImageReader, inspect_npz
from evaluations.resolution import resize_images
from guided_diffusion.data.digits import load_digits_split

from programs import REPO, child_env, find_program


class MeanBackend:
    """Cheap features that depend on the pixels: per-channel means and a coarse histogram."""

    name = "mean-test"

    def __init__(self):
        self.sizes = []

    def compute(self, batch):
        self.sizes.append(batch.shape[1:3])
        x = batch.astype(np.float32) / 255.0
        pool = np.concatenate([x.mean((1, 2)), x.std((1, 2))], axis=1)
        spatial = x[:, ::4, ::4, 0].reshape(len(x), -1)
        return {"pool": pool, "spatial": spatial, "probs": np.full((len(x), 4), 0.25, np.float32)}


class ExplodingBackend:
    name = "exploding"

    def compute(self, batch):
        raise AssertionError("the backend must not run on refused input")


def _images(n, size, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _flip_bytes(path, member, at=0.5, count=4):
    """Flip ``count`` bytes ``at`` (a fraction) of the way through ``member``'s stored data."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
    data = bytearray(path.read_bytes())
    # The local file header: 30 bytes, then the name and the extra field, then the data.
    name_len = int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_len = int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    pos = start + int(info.compress_size * at)
    for i in range(pos, pos + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _run_cli(*args):
    program = find_program("adm-evaluate", "pip install -e . installs it")
    return subprocess.run([program, *map(str, args), "--quiet"], cwd=REPO, env=child_env(),
                          capture_output=True, text=True, timeout=300)


def _assert_one_line_error(result, *needles):
    assert result.returncode != 0, result.stdout + result.stderr
    err = result.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("adm-evaluate: error:"), err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


# --------------------------------------------------------------------------------------------------
# damaged members


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_damaged_image_member_is_named(tmp_path, save):
    ref, sample = tmp_path / "ref.npz", tmp_path / "s.npz"
    np.savez(ref, _images(8, 8, 0))
    save(sample, _images(8, 8, 1))
    _flip_bytes(sample, "arr_0.npy")
    with pytest.raises(ValueError, match=r"s\.npz: member 'arr_0\.npy' is damaged .*copy it again.*sample it"):
        Evaluator(MeanBackend(), progress=False, use_cache=False).evaluate(ref, sample)
    assert main([str(ref), str(sample), "--quiet", "--no_cache"]) == 2  # no raw BadZipFile traceback


@pytest.mark.e2e
def test_damaged_member_through_the_installed_command(tmp_path):
    ref, sample = tmp_path / "ref.npz", tmp_path / "s.npz"
    np.savez(ref, _images(8, 16, 0))
    np.savez(sample, _images(8, 16, 1))
    _flip_bytes(sample, "arr_0.npy")
    result = _run_cli(ref, sample, "--backend", "digits", "--no_cache")
    _assert_one_line_error(result, str(sample), "'arr_0.npy' is damaged", "copy it again")


class SpyBackend(MeanBackend):
    """Records the length of every batch it is given (the reference and the samples differ in length)."""

    name = "spy-test"
    seen = []

    def compute(self, batch):
        SpyBackend.seen.append(len(batch))
        return super().compute(batch)


@pytest.mark.parametrize("mode", ["plain", "intervals", "compare"])
def test_damaged_sample_fails_before_the_reference_is_featurised(tmp_path, capsys, mode):
    from evaluations.backends import register_backend

    register_backend("spy-test", SpyBackend)
    SpyBackend.seen = []
    ref, sample, other = tmp_path / "ref.npz", tmp_path / "s.npz", tmp_path / "other.npz"
    np.savez(ref, _images(12, 32, 0))  # one batch of 12 when featurised
    # larger than zipfile's read-ahead, so that reading the header does not already meet the CRC
    np.savez(sample, _images(64, 32, 1))
    np.savez(other, _images(64, 32, 2))
    damaged = other if mode == "compare" else sample
    _flip_bytes(damaged, "arr_0.npy")  # in the middle: only the member's CRC at its end shows it
    extra = {"plain": [], "intervals": ["--intervals", "10"],
             "compare": ["--compare", str(other), "--intervals", "10", "--seed_sets", "2"]}[mode]
    assert main([str(ref), str(sample), "--backend", "spy-test", "--quiet", "--no_cache", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"adm-evaluate: error: {damaged}: member 'arr_0.npy' is damaged"), err
    assert 12 not in SpyBackend.seen, "the reference was featurised before the damaged sample was found"


@pytest.mark.e2e
def test_damaged_sample_is_named_before_a_damaged_reference_by_the_installed_command(tmp_path):
    """Both damaged: the reference's damage would be found while featurising it, so an error naming the
    sample shows that the sample was checked first."""
    ref, sample = tmp_path / "ref.npz", tmp_path / "s.npz"
    np.savez(ref, _images(64, 16, 0))  # both larger than zipfile's read-ahead
    np.savez(sample, _images(64, 16, 1))
    _flip_bytes(ref, "arr_0.npy")
    _flip_bytes(sample, "arr_0.npy")
    result = _run_cli(ref, sample, "--backend", "digits", "--no_cache")
    err = _assert_one_line_error(result, f"{sample}: member 'arr_0.npy' is damaged", "copy it again")
    assert str(ref) not in err


def test_damaged_image_header_is_refused_before_any_feature(tmp_path):
    ref, sample = tmp_path / "ref.npz", tmp_path / "s.npz"
    np.savez(ref, _images(8, 8, 0))
    np.savez(sample, _images(8, 8, 1))
    _flip_bytes(sample, "arr_0.npy", at=0.0, count=1)  # the npy magic string
    with pytest.raises(ValueError, match=r"member 'arr_0\.npy' is damaged"):
        Evaluator(ExplodingBackend(), progress=False, use_cache=False).evaluate(ref, sample)


def test_header_that_disagrees_with_the_member_size_is_damage(tmp_path):
    sample = tmp_path / "s.npz"
    np.savez(sample, _images(64, 32, 1))  # larger than zipfile's read-ahead, so the CRC is not met yet
    data = sample.read_bytes()
    # The same header length with another shape: (65, ...) instead of (64, ...).
    sample.write_bytes(data.replace(b"(64, 32, 32, 3)", b"(65, 32, 32, 3)", 1))
    with pytest.raises(ValueError, match=r"damaged .*describes \(65, 32, 32, 3\)"):
        inspect_npz(sample)


def test_damaged_statistics_member_is_refused_before_any_feature(tmp_path):
    ref, sample = tmp_path / "ref.npz", tmp_path / "s.npz"
    np.savez(ref, _images(8, 8, 0), mu=np.zeros(6), sigma=np.eye(6), mu_s=np.zeros(4), sigma_s=np.eye(4))
    np.savez(sample, _images(8, 8, 1))
    _flip_bytes(ref, "sigma.npy")
    with pytest.raises(ValueError, match=r"ref\.npz: member 'sigma\.npy' is damaged"):
        Evaluator(ExplodingBackend(), progress=False, use_cache=False).evaluate(ref, sample)


def test_damaged_zip_directory_is_not_called_a_wrong_format(tmp_path):
    sample = tmp_path / "s.npz"
    np.savez(sample, _images(8, 8, 1))
    data = bytearray(sample.read_bytes())
    end = data.rfind(b"PK\x05\x06")  # the end-of-directory record: its magic no longer matches
    data[end] ^= 0xFF
    sample.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"s\.npz is damaged: its zip directory cannot be read"):
        inspect_npz(sample)
    not_a_zip = tmp_path / "t.npz"
    not_a_zip.write_bytes(b"\x93NUMPY plain .npy bytes")
    with pytest.raises(ValueError, match=r"not an \.npz archive.*np\.savez"):
        inspect_npz(not_a_zip)


def test_intact_batches_still_stream_after_the_checks(tmp_path):
    sample = tmp_path / "s.npz"
    images = _images(10, 8, 3)
    np.savez_compressed(sample, images)
    with NpzImageReader(sample) as reader:
        got = np.concatenate(list(reader.batches(3)))
    assert got.tobytes() == images.tobytes()


# --------------------------------------------------------------------------------------------------
# resolution


@pytest.fixture(scope="module")
def digits_batches(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    paths = {"ref": root / "ref16.npz", "s16": root / "s16.npz", "s32": root / "s32.npz"}
    np.savez(paths["ref"], load_digits_split(16, "heldout")[0])
    np.savez(paths["s16"], load_digits_split(16, "train")[0][:400])
    np.savez(paths["s32"], load_digits_split(32, "train")[0][:400])  # the same digits at 32x32
    return paths


@pytest.mark.e2e
def test_other_resolution_is_refused_by_the_installed_command(digits_batches):
    result = _run_cli(digits_batches["ref"], digits_batches["s32"], "--backend", "digits", "--no_cache")
    _assert_one_line_error(result, "32x32", "16x16", "--resize", str(digits_batches["s32"]))
    assert "FID" not in result.stdout


@pytest.mark.e2e
@pytest.mark.usefixtures("one_thread")  # as adm-evaluate runs below: the printed FID must match to the last digit
def test_resize_scores_samples_at_the_reference_resolution(digits_batches):
    """With --resize the 32x32 digits score as the same digits at 16x16 do (measured: 42.0 vs 42.6 FID on
    the full training split; the backend's own bilinear resize, the old silent path, gave 48.0)."""
    native = Evaluator("digits", use_cache=False, progress=False).evaluate(
        digits_batches["ref"], digits_batches["s16"])
    resized = Evaluator("digits", use_cache=False, progress=False, resize=True).evaluate(
        digits_batches["ref"], digits_batches["s32"])
    assert abs(resized["fid"] - native["fid"]) < 1.5, (resized["fid"], native["fid"])
    result = _run_cli(digits_batches["ref"], digits_batches["s32"], "--backend", "digits", "--no_cache",
                      "--resize")
    assert result.returncode == 0, result.stderr
    assert f"FID: {resized['fid']!r}" in result.stdout


def test_resize_feeds_the_backend_reference_sized_images(tmp_path):
    ref, sample = tmp_path / "ref.npz", tmp_path / "s.npz"
    np.savez(ref, _images(8, 8, 0))
    np.savez(sample, _images(8, 16, 1))
    backend = MeanBackend()
    Evaluator(backend, progress=False, use_cache=False, resize=True).evaluate(ref, sample)
    assert set(backend.sizes) == {(8, 8)}
    flat = np.full((2, 16, 16, 3), 77, np.uint8)
    assert np.array_equal(resize_images(flat, (8, 8)), np.full((2, 8, 8, 3), 77, np.uint8))


def test_resize_needs_reference_images(tmp_path):
    ref, sample = tmp_path / "ref.npz", tmp_path / "s.npz"
    np.savez(ref, mu=np.zeros(6), sigma=np.eye(6), mu_s=np.zeros(4), sigma_s=np.eye(4))
    np.savez(sample, _images(8, 16, 1))
    with pytest.raises(ValueError, match=r"--resize needs the reference's resolution.*statistics only"):
        Evaluator(ExplodingBackend(), progress=False, use_cache=False, resize=True).evaluate(ref, sample)


def test_cache_of_resized_activations_is_kept_apart(tmp_path):
    ref, sample, same = tmp_path / "ref.npz", tmp_path / "s.npz", tmp_path / "same.npz"
    np.savez(ref, _images(8, 8, 0))
    np.savez(sample, _images(8, 16, 1))
    np.savez(same, _images(8, 8, 2))
    backend = MeanBackend()
    Evaluator(backend, progress=False, resize=True).evaluate(ref, sample)
    resized = Evaluator(backend, progress=False).batch_features(sample, resize_to=(8, 8))
    assert len(backend.sizes) == 2  # ref and resized sample computed once each, then read from the cache
    full = Evaluator(backend, progress=False).batch_features(sample)  # other activations: recomputed
    assert backend.sizes[-1] == (16, 16)
    assert (full.acts["spatial"].shape[1], resized.acts["spatial"].shape[1]) == (16, 4)


# --------------------------------------------------------------------------------------------------
# non-finite statistics and scores


@pytest.mark.parametrize("with_images", [False, True])
@pytest.mark.parametrize("key,value", [("mu", np.nan), ("sigma", np.inf), ("sigma_s", -np.inf)])
def test_non_finite_reference_statistics_are_refused(tmp_path, capsys, with_images, key, value):
    stats = dict(mu=np.zeros(6), sigma=np.eye(6), mu_s=np.zeros(4), sigma_s=np.eye(4))
    stats[key] = stats[key].copy()
    stats[key].flat[1] = value
    ref, sample = tmp_path / "ref.npz", tmp_path / "s.npz"
    np.savez(ref, *([_images(8, 8, 0)] if with_images else []), **stats)
    np.savez(sample, _images(8, 8, 1))
    with pytest.raises(ValueError, match=rf"ref\.npz: stored statistic '{key}' holds 1 NaN or infinite"):
        Evaluator(ExplodingBackend(), progress=False, use_cache=False).evaluate(ref, sample)
    assert main([str(ref), str(sample), "--quiet", "--no_cache"]) == 2
    captured = capsys.readouterr()
    assert "FID" not in captured.out and f"'{key}'" in captured.err


@pytest.mark.e2e
def test_nan_reference_statistics_through_the_installed_command(tmp_path):
    ref, sample = tmp_path / "ref.npz", tmp_path / "s.npz"
    mu = np.zeros(128)
    mu[5] = np.nan
    np.savez(ref, mu=mu, sigma=np.eye(128), mu_s=np.zeros(512), sigma_s=np.eye(512))
    np.savez(sample, _images(8, 16, 1))
    result = _run_cli(ref, sample, "--backend", "digits", "--no_cache")
    _assert_one_line_error(result, str(ref), "'mu'", "NaN")
    assert "FID" not in result.stdout


def test_non_finite_score_fails_the_command(tmp_path, capsys):
    from evaluations.backends import register_backend

    class NanBackend(MeanBackend):
        name = "nan-test"

        def compute(self, batch):
            feats = super().compute(batch)
            feats["probs"][0, 0] = np.nan  # the Inception Score becomes nan; FID stays finite
            return feats

    register_backend("nan-test", NanBackend)
    ref, sample = tmp_path / "ref.npz", tmp_path / "s.npz"
    np.savez(ref, _images(8, 8, 0))
    np.savez(sample, _images(8, 8, 1))
    assert main([str(ref), str(sample), "--backend", "nan-test", "--quiet", "--no_cache"]) == 2
    captured = capsys.readouterr()
    assert "non-finite inception_score" in captured.err and "Inception Score" not in captured.out


# --------------------------------------------------------------------------------------------------
# a paired comparison whose seeds cannot be checked


@pytest.mark.e2e
def test_compare_without_manifests_says_the_seeds_were_not_checked(tmp_path):
    import json

    ref = tmp_path / "ref.npz"
    np.savez(ref, load_digits_split(16, "heldout")[0][:60])
    train = load_digits_split(16, "train")[0]
    runs = {name: tmp_path / name for name in ("run_a", "run_b")}
    for i, folder in enumerate(runs.values()):
        folder.mkdir()
        np.savez(folder / "samples.npz", train[20 * i : 20 * (i + 1)])
    a, b = runs["run_a"] / "samples.npz", runs["run_b"] / "samples.npz"
    flags = ["--compare", b, "--intervals", "10", "--seed_sets", "2", "--backend", "digits", "--no_cache"]

    bare = _run_cli(ref, a, *flags, "--json", tmp_path / "bare.json")
    assert bare.returncode == 0, bare.stderr
    note = [line for line in bare.stdout.splitlines() if "could not be checked" in line]
    assert len(note) == 1, bare.stdout
    assert str(a) in note[0] and str(b) in note[0] and "manifest.json" in note[0] and "--seed" in note[0]
    assert json.loads((tmp_path / "bare.json").read_text())["seeds_checked"] is False

    for folder in runs.values():  # as sampling runs write them: the same seed and count
        (folder / "manifest.json").write_text(json.dumps({"config": {"sampling": {"seed": 3, "num_samples": 20}}}))
    checked = _run_cli(ref, a, *flags, "--json", tmp_path / "checked.json")
    assert checked.returncode == 0, checked.stderr
    assert "could not be checked" not in checked.stdout
    assert json.loads((tmp_path / "checked.json").read_text())["seeds_checked"] is True


def test_unchecked_seeds_note_names_only_the_batches_without_a_recorded_seed(tmp_path):
    import json

    from evaluations.bootstrap import unchecked_seeds_note

    for name in ("with", "without", "broken"):
        (tmp_path / name).mkdir()
        np.savez(tmp_path / name / "s.npz", _images(4, 8, 0))
    (tmp_path / "with" / "manifest.json").write_text(json.dumps({"config": {"sampling": {"seed": 0}}}))
    (tmp_path / "broken" / "manifest.json").write_text("{not json")
    a, b, c = (tmp_path / name / "s.npz" for name in ("with", "without", "broken"))
    assert unchecked_seeds_note(a, a) is None
    for note, named, unnamed in ((unchecked_seeds_note(a, b), b, a), (unchecked_seeds_note(c, a), c, a)):
        assert "could not be checked" in note and len(note.splitlines()) == 1
        assert str(named) in note and str(unnamed) not in note
