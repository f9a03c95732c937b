"""The one scorer (evaluations.scoring.Scorer): adm-evaluate, the demo, pag-checkpoint-quality and the sweeps
score through it, so its numbers are the command line's; it featurises the reference once and each batch once,
and it checks every batch (resolution included) before intervals or comparisons are computed."""

import json

import numpy as np
import pytest

from evaluations import bootstrap
from evaluations.backends import register_backend
from evaluations.evaluator import Evaluator, main
from evaluations.scoring import Scorer
from guided_diffusion.data.digits import write_digits_npz

from programs import REPO, assert_ok, run_script


class CountingBackend:
    """Cheap features that depend on the pixels; records the shape of every batch it is given."""

    name = "counting-test"
    seen = []

    def compute(self, batch):
        CountingBackend.seen.append(batch.shape[:3])
        x = batch.astype(np.float32) / 255.0
        pool = np.concatenate([x.mean((1, 2)), x.std((1, 2)), x[:, ::4, ::4, 1].reshape(len(x), -1)[:, :4]], axis=1)
        spatial = x[:, ::4, ::4, 0].reshape(len(x), -1)[:, :4]  # the same size at any resolution
        logits = np.stack([x[..., c].mean((1, 2)) * 6 for c in range(3)], axis=1)
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        return {"pool": pool, "spatial": spatial, "probs": probs.astype(np.float32)}


register_backend(CountingBackend.name, CountingBackend)


def _images(n, size, seed, brightness=0):
    rng = np.random.default_rng(seed)
    return np.clip(rng.integers(0, 200, (n, size, size, 3)) + brightness, 0, 255).astype(np.uint8)


@pytest.fixture
def batches(tmp_path):
    CountingBackend.seen = []
    paths = {name: tmp_path / f"{name}.npz" for name in ("ref", "a", "b", "big")}
    np.savez(paths["ref"], _images(30, 8, 0))
    np.savez(paths["a"], _images(16, 8, 1))
    np.savez(paths["b"], _images(16, 8, 2, brightness=40))
    np.savez(paths["big"], _images(16, 16, 3))
    return paths


def _scorer(ref, **options):
    return Scorer(Evaluator(CountingBackend.name, progress=False, use_cache=False), ref, **options)


def test_the_reference_and_each_batch_are_featurised_once(batches):
    scorer = _scorer(batches["ref"], intervals=20, seed_sets=2)
    first = scorer.score(batches["a"])
    scorer.score(batches["b"])
    comparison = scorer.compare(batches["a"], batches["b"])
    probs = scorer.features(batches["b"]).acts["probs"]
    assert sorted(shape[0] for shape in CountingBackend.seen) == [16, 16, 30]  # no batch twice
    assert probs.shape == (16, 3)
    assert {k: v for k, v in first.items() if k != "intervals"} == {k: v for k, v in comparison["a"].items()
                                                                     if k != "intervals"}
    assert comparison["difference"]["fid"] == comparison["b"]["fid"] - first["fid"] != 0


def test_a_batch_rewritten_in_place_is_scored_again(batches):
    scorer = _scorer(batches["ref"])
    before = scorer.score(batches["a"])
    np.savez(batches["a"], _images(16, 8, 5, brightness=60))
    after = scorer.score(batches["a"])
    assert after["fid"] != before["fid"]
    assert sorted(shape[0] for shape in CountingBackend.seen) == [16, 16, 30]


def test_the_command_line_gives_the_scorers_numbers(batches, tmp_path):
    common = ["--backend", CountingBackend.name, "--quiet", "--no_cache", "--intervals", "25", "--bootstrap_seed", "3"]
    assert main([str(batches["ref"]), str(batches["a"]), "--json", str(tmp_path / "m.json"), *common]) == 0
    assert main([str(batches["ref"]), str(batches["a"]), "--compare", str(batches["b"]), "--seed_sets", "2",
                 "--json", str(tmp_path / "c.json"), *common]) == 0
    scorer = _scorer(batches["ref"], intervals=25, bootstrap_seed=3, seed_sets=2)
    scores, printed = scorer.score(batches["a"]), json.loads((tmp_path / "m.json").read_text())
    assert {k: printed[k] for k in scores} == json.loads(json.dumps(scores))
    comparison, printed = scorer.compare(batches["a"], batches["b"]), json.loads((tmp_path / "c.json").read_text())
    assert {k: printed[k] for k in comparison} == json.loads(json.dumps(comparison))
    assert Evaluator(CountingBackend.name, progress=False, use_cache=False).evaluate(
        batches["ref"], batches["a"]) == {k: v for k, v in scores.items() if k != "intervals"}


def test_bootstrap_replicates_are_kept_and_reused_while_nothing_they_depend_on_changes(batches, tmp_path,
                                                                                       monkeypatch):
    folder = tmp_path / "replicates"
    first = _scorer(batches["ref"], intervals=30, seed_sets=2, bootstrap_cache=folder).compare(batches["a"],
                                                                                              batches["b"])
    assert len(list(folder.iterdir())) == 2  # one entry per batch

    drawn = []
    real = bootstrap.SampleBootstrap.replicate_metrics
    monkeypatch.setattr(bootstrap.SampleBootstrap, "replicate_metrics",
                        lambda self, index: drawn.append(len(index)) or real(self, index))
    again = _scorer(batches["ref"], intervals=30, seed_sets=2, bootstrap_cache=folder).compare(batches["a"],
                                                                                              batches["b"])
    assert drawn == [] and json.dumps(again) == json.dumps(first)  # read back, to the last digit
    uncached = _scorer(batches["ref"], intervals=30, seed_sets=2).compare(batches["a"], batches["b"])
    assert drawn == [30, 30] and json.dumps(uncached) == json.dumps(first)  # the cache changes nothing

    drawn.clear()  # another count, another seed, another k: drawn again, each beside the others
    _scorer(batches["ref"], intervals=31, bootstrap_cache=folder).score(batches["a"])
    _scorer(batches["ref"], intervals=30, bootstrap_seed=1, bootstrap_cache=folder).score(batches["a"])
    other_k = Scorer(Evaluator(CountingBackend.name, progress=False, use_cache=False, k=4), batches["ref"],
                     intervals=30, bootstrap_cache=folder)
    other_k.score(batches["a"])
    assert drawn == [31, 30, 30] and len(list(folder.iterdir())) == 5
    drawn.clear()  # a rewritten batch or reference: drawn again
    np.savez(batches["a"], _images(16, 8, 7))
    rewritten = _scorer(batches["ref"], intervals=30, bootstrap_cache=folder).score(batches["a"])
    np.savez(batches["ref"], _images(30, 8, 9))
    _scorer(batches["ref"], intervals=30, bootstrap_cache=folder).score(batches["a"])
    assert drawn == [30, 30] and rewritten["intervals"] != first["a"]["intervals"]


def test_the_command_line_keeps_replicates_where_asked(batches, tmp_path):
    common = [str(batches["ref"]), str(batches["a"]), "--compare", str(batches["b"]), "--seed_sets", "2",
              "--backend", CountingBackend.name, "--quiet", "--no_cache", "--intervals", "25"]
    assert main([*common, "--json", str(tmp_path / "plain.json")]) == 0
    for name in ("first", "reused"):
        assert main([*common, "--json", str(tmp_path / f"{name}.json"), "--bootstrap_cache", str(tmp_path / "r")]) == 0
    assert len(list((tmp_path / "r").iterdir())) == 2
    plain, first, reused = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("plain", "first", "reused"))
    assert plain == first == reused


@pytest.mark.parametrize("extra", [["--intervals", "10"], ["--compare", "{big}", "--seed_sets", "2"]])
def test_intervals_and_comparisons_refuse_another_resolution_unless_resized(batches, capsys, extra):
    np.savez(batches["a"], _images(16, 16, 1))  # the pair's first batch at 16x16 too, as a comparison needs
    args = [str(batches["ref"]), str(batches["big"] if "--intervals" in extra else batches["a"]),
            *[a.replace("{big}", str(batches["big"])) for a in extra], "--backend", CountingBackend.name,
            "--quiet", "--no_cache"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("adm-evaluate: error: the samples are 16x16"), err
    assert "--resize" in err and CountingBackend.seen == []  # refused before any features
    assert main([*args, "--resize"]) == 0
    assert {shape[1:] for shape in CountingBackend.seen} == {(8, 8)}  # the samples, resized to the reference's


def test_scorer_settings_are_checked(batches):
    with pytest.raises(ValueError, match="intervals must be 0 .none. or at least 2"):
        _scorer(batches["ref"], intervals=1)
    with pytest.raises(ValueError, match="seed_sets must be at least 1"):
        _scorer(batches["ref"], intervals=10, seed_sets=0)
    with pytest.raises(ValueError, match="needs bootstrap resamples: make the Scorer with intervals >= 2"):
        _scorer(batches["ref"]).compare(batches["a"], batches["b"])


@pytest.mark.e2e
def test_checkpoint_quality_refuses_a_reference_of_another_resolution(tmp_path):
    """It scores through the Scorer, which checks the resolution (the inline code it replaced scored 16x16
    samples against 32x32 digits without a word)."""
    write_digits_npz(str(tmp_path / "heldout32.npz"), image_size=32, split="heldout")
    result = run_script("pag-checkpoint-quality", "--config", REPO / "configs/digits/model.yaml", "--model_path",
                        REPO / "checkpoints/digits_adm16_ema.pt", "--backend", "digits", "--reference",
                        tmp_path / "heldout32.npz", "--num_samples", "8", "--timestep_respacing", "ddim2",
                        "--output_dir", tmp_path / "quality")
    assert result.returncode == 1, result.stdout + result.stderr
    err = result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr and err.startswith("error: the samples are 16x16"), result.stderr
    assert "--resize" in err
    assert (tmp_path / "quality" / "digits_adm16_ema_ddim2_8.npz").is_file()  # the samples are kept


@pytest.mark.e2e
def test_checkpoint_quality_samples_with_either_sampler_and_a_rerun_reuses_the_batches(tmp_path):
    """The quality curve needs DDIM and DDPM per checkpoint; a rerun (after a stop) keeps what was sampled."""
    write_digits_npz(str(tmp_path / "heldout.npz"), image_size=16, split="heldout")
    common = ["--config", REPO / "configs/digits/model.yaml", "--model_path", REPO / "checkpoints/digits_adm16_ema.pt",
              "--backend", "digits", "--reference", tmp_path / "heldout.npz", "--num_samples", "8",
              "--output_dir", tmp_path / "quality"]
    ddim = assert_ok(run_script("pag-checkpoint-quality", *common, "--timestep_respacing", "ddim3"))
    ddpm = assert_ok(run_script("pag-checkpoint-quality", *common, "--timestep_respacing", "3", "--use_ddim",
                                "False"))
    folder = tmp_path / "quality"
    ddim_batch, ddpm_batch = folder / "digits_adm16_ema_ddim3_8.npz", folder / "digits_adm16_ema_ddpm3_8.npz"
    assert not np.array_equal(np.load(ddim_batch)["arr_0"], np.load(ddpm_batch)["arr_0"])  # another sampler
    stamp = ddpm_batch.stat().st_mtime_ns
    again = assert_ok(run_script("pag-checkpoint-quality", *common, "--timestep_respacing", "3", "--use_ddim",
                                 "False"))
    assert ddpm_batch.stat().st_mtime_ns == stamp  # reused, not sampled again
    row = [line for line in again.stdout.splitlines() if line.startswith("| digits_adm16_ema.pt")]
    assert row and row == [line for line in ddpm.stdout.splitlines() if line.startswith("| digits_adm16_ema.pt")]
    assert ddim.stdout != ddpm.stdout
    # FID, precision and recall with their bootstrap intervals around them: "12.34 [10.01, 15.67]"
    cells = row[0].split(" | ")[1:4]
    for cell in cells:
        value, interval = cell.split(" [")
        low, high = (float(x) for x in interval.rstrip("]").split(", "))
        assert low <= float(value) <= high and low < high, cell
