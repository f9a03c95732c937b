"""End-to-end tests of scripts/image_sample.py on tiny random-weight models (CPU, subprocesses).

The samples must be bit-identical for any batch size and process count, a run killed with SIGKILL must
continue to the same result, damaged shards must be redone, and bad flags must fail before sampling.
"""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from guided_diffusion.sampling.seeding import LabelSource
from guided_diffusion.script_util import classifier_defaults, create_classifier

from conftest import TINY_ADM, random_weights, tiny_adm
from programs import MPI_HINT, REPO, TORCHRUN_HINT, child_env, cli_flags, find_program, require_module
from sampler_runs import (
    NUM_SAMPLES,
    SAMPLE_FLAGS,
    TINY_MODEL,
    assert_same_samples,
    claims,
    final_arrays,
    images_sampled,
    run_sample,
    shards,
    tiny_reference,
    wait_for,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_reference(tmp_path_factory.mktemp("tiny"))


def test_reference_run_outputs(tiny):
    ref = tiny["reference"]
    assert list(ref) == ["arr_0"]  # unconditional: no labels, as the release writes it
    assert ref["arr_0"].shape == (NUM_SAMPLES, 16, 16, 3) and ref["arr_0"].dtype == np.uint8
    assert len({ref["arr_0"][i].tobytes() for i in range(NUM_SAMPLES)}) == NUM_SAMPLES
    assert (tiny["reference_dir"] / "samples_10x16x16x3_grid.png").exists()
    assert (tiny["reference_dir"] / "manifest.json").exists()
    (log,) = (tiny["reference_dir"] / "logs").glob("rank0_*.log")
    assert "img/s" in log.read_text()
    # CPU samples depend on the intra-op thread count: the manifest and every shard record it
    info = json.loads((tiny["reference_dir"] / "manifest.json").read_text())["info"]
    assert info["torch_threads"] == 1 and info["world_size"] == 1
    for path in shards(tiny["reference_dir"]):
        with np.load(path) as shard:
            assert int(shard["torch_threads"]) == 1


def test_batch_size_does_not_change_samples_and_yaml_config_works(tiny, tmp_path):
    # batch size 3 leaves a batch of one at the end, which is padded on CPU. The model flags come from YAML.
    config = tmp_path / "tiny.yaml"
    model_path = tiny["flags"][tiny["flags"].index("--model_path") + 1]
    config.write_text("".join(f"{k}: {v}\n" for k, v in TINY_MODEL.items()) + f"model_path: {model_path}\n"
                      "batch_size: 8\n")
    run_sample(tmp_path / "out", *SAMPLE_FLAGS, config_flags=["--config", str(config)], batch_size=3)
    assert len(shards(tmp_path / "out")) == 4  # the command line's batch size won over the YAML's
    assert_same_samples(final_arrays(tmp_path / "out"), tiny["reference"])


def test_two_mpi_processes_give_the_same_samples(tiny, tmp_path):
    mpiexec = find_program("mpiexec", MPI_HINT)
    require_module("mpi4py", MPI_HINT)
    # the installed entry point under mpiexec: a good run must exit 0, or the launcher reports a failed job
    result = run_sample(tmp_path / "out", *tiny["flags"], launcher=(mpiexec, "-n", "2"), batch_size=4)
    assert "on 2 process(es) (mpi)" in result.stderr  # two ranks of one world, not two single processes
    assert_same_samples(final_arrays(tmp_path / "out"), tiny["reference"])
    for rank in (0, 1):
        (log,) = (tmp_path / "out" / "logs").glob(f"rank{rank}_*.log")
        assert "img/s" in log.read_text()
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["info"]["world_size"] == 2 and manifest["info"]["torch_threads"] == 1


def test_two_torchrun_processes_give_the_same_samples(tiny, tmp_path):
    torchrun = find_program("torchrun", TORCHRUN_HINT)
    out = tmp_path / "out"
    command = [torchrun, "--standalone", "--nproc_per_node", "2", str(REPO / "scripts" / "image_sample.py"),
               *tiny["flags"], "--batch_size", "4", "--output_dir", str(out)]
    result = subprocess.run(command, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "on 2 process(es) (torchrun)" in result.stderr
    assert_same_samples(final_arrays(out), tiny["reference"])
    for rank in (0, 1):
        (log,) = (out / "logs").glob(f"rank{rank}_*.log")
        assert "img/s" in log.read_text()


def test_sigkill_then_rerun_gives_the_uninterrupted_samples(tiny, tmp_path):
    out = tmp_path / "out"
    process = run_sample(out, *tiny["flags"], batch_size=1, wait=False)
    deadline = time.time() + 120
    while not shards(out) and process.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    process.stdout.close()
    process.stderr.close()
    done = len(shards(out))
    assert 1 <= done < NUM_SAMPLES, "the run was not interrupted part-way"
    assert not (out / "samples_10x16x16x3.npz").exists()
    result = run_sample(out, *tiny["flags"], batch_size=2)
    assert f"continuing; {done} of {NUM_SAMPLES} samples done" in result.stderr
    assert_same_samples(final_arrays(out), tiny["reference"])


def stopped_while_sampling(tiny, out):
    """A job (the installed entry point, one image per shard) frozen with SIGSTOP while it holds a claim."""
    job = run_sample(out, *tiny["flags"], batch_size=1, wait=False)
    wait_for(lambda: claims(out), job, what="the first claim")
    os.killpg(job.pid, signal.SIGSTOP)
    return job


def test_two_jobs_with_the_same_config_share_the_folder(tiny, tmp_path):
    # Job A is frozen while it holds a block; job B samples every other block, waits for A's, and A finishes.
    out = tmp_path / "out"
    first = stopped_while_sampling(tiny, out)
    try:
        second = run_sample(out, *tiny["flags"], batch_size=2, wait=False)
        wait_for(lambda: len(shards(out)) + len(claims(out)) >= NUM_SAMPLES, second,
                 what="the second job to sample every block the first does not hold")
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    results = []
    for job in (first, second):
        stdout, stderr = job.communicate(timeout=300)
        assert job.returncode == 0, stderr[-3000:]
        results.append(stderr)
    assert "shared with 1 running process(es) of the same config" in results[1]
    assert 1 <= images_sampled(results[0]) and 1 <= images_sampled(results[1])
    assert images_sampled(results[0]) + images_sampled(results[1]) == NUM_SAMPLES  # no image sampled twice
    assert_same_samples(final_arrays(out), tiny["reference"])
    assert claims(out) == [] and not list((out / "jobs").iterdir())


def test_job_with_another_config_is_refused_at_once_naming_the_running_job(tiny, tmp_path):
    out = tmp_path / "out"
    running = stopped_while_sampling(tiny, out)
    try:
        before = sorted(p.name for p in shards(out))
        changed = list(tiny["flags"])
        changed[changed.index("--pag_scale") + 1] = "1.0"
        result = run_sample(out, *changed, check=False)
    finally:
        os.killpg(running.pid, signal.SIGCONT)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "holds a run with a different config, which job" in result.stderr
    assert f":{running.pid} (rank 0 of 1" in result.stderr  # host:pid of the running job
    assert "pag_scale: 2.0 -> 1.0" in result.stderr
    assert sorted(p.name for p in shards(out)) == before  # refused before sampling anything
    _, stderr = running.communicate(timeout=300)
    assert running.returncode == 0, stderr[-3000:]
    assert_same_samples(final_arrays(out), tiny["reference"])


def test_claims_of_a_killed_job_do_not_block_a_rerun(tiny, tmp_path):
    out = tmp_path / "out"
    killed = run_sample(out, *tiny["flags"], batch_size=1, wait=False)
    wait_for(lambda: claims(out), killed, what="the first claim")
    os.killpg(killed.pid, signal.SIGKILL)
    killed.communicate()
    assert claims(out) and list((out / "jobs").iterdir())  # what the killed job left
    # A process of this host that is gone is noticed at once: the rerun need not wait for --claim_timeout.
    result = run_sample(out, *tiny["flags"], "--claim_timeout", "3600", batch_size=3)
    assert "Traceback" not in result.stderr
    assert_same_samples(final_arrays(out), tiny["reference"])
    assert claims(out) == [] and not list((out / "jobs").iterdir())


def test_rerun_removes_what_a_killed_assembly_left(tiny, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(tiny["reference_dir"], out)
    (out / "samples_10x16x16x3.npz").unlink()
    # what SIGKILL during the final assembly leaves: the owner-only scratch array and the npz's temporary file
    leftovers = [out / ".assemble.k3j_x9q1.npy", out / ".samples_10x16x16x3.npz.a8d7e2.tmp"]
    for path in leftovers:
        path.write_bytes(b"\x93NUMPY" + bytes(1000))
        path.chmod(0o600)
    run_sample(out, *tiny["flags"])
    assert not [p for p in leftovers if p.exists()]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert_same_samples(final_arrays(out), tiny["reference"])


def test_damaged_shards_are_redone(tiny, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(tiny["reference_dir"], out)
    (out / "samples_10x16x16x3.npz").unlink()
    first, second = shards(out)[:2]
    first.write_bytes(first.read_bytes()[:300])  # truncated
    data = bytearray(second.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    second.write_bytes(bytes(data))
    result = run_sample(out, *tiny["flags"], batch_size=4)
    assert result.stderr.count("is damaged") == 2
    assert "continuing; 2 of 10 samples done" in result.stderr
    assert_same_samples(final_arrays(out), tiny["reference"])


def test_changed_config_in_the_same_folder_is_refused(tiny, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(tiny["reference_dir"], out)
    before = sorted(p.name for p in shards(out))
    changed = list(tiny["flags"])
    changed[changed.index("--pag_scale") + 1] = "1.0"
    result = run_sample(out, *changed, check=False)
    assert result.returncode != 0
    assert "different config" in result.stderr and "pag_scale: 2.0 -> 1.0" in result.stderr
    assert sorted(p.name for p in shards(out)) == before
    # operational flags (batch size) are not part of the config: the same run continues
    run_sample(out, *tiny["flags"], batch_size=7)


@pytest.mark.parametrize("extra, message", [
    (["--pag_layers", "input_blocks.3.1", "input_blocks.99.1"],
     "unknown attention layer(s) 'input_blocks.99.1'; this model's attention blocks are: input_blocks.3.1"),
    (["--sag_layer", "output_blocks.5.1"], "'output_blocks.5.1'"),
    (["--class_cond", "True"], "set --class_cond False"),
    (["--num_channels", "64"], "set --num_channels 32"),
    (["--pag_interval", "5"], "--pag_interval must be 'lo,hi'"),
    (["--classes_balanced", "True"], "--classes_balanced True needs class labels"),
])
def test_bad_flags_fail_before_sampling(tiny, tmp_path, extra, message):
    out = tmp_path / "out"
    result = run_sample(out, *tiny["flags"], *extra, check=False)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (out / "manifest.json").exists() and not shards(out)


def test_unwritable_output_folder_fails_before_sampling(tiny, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result = run_sample(blocker / "out", *tiny["flags"], check=False)
    assert result.returncode != 0 and "is not writable" in result.stderr


def test_missing_checkpoint_and_balanced_classes_need_divisible_count(tiny, tmp_path):
    missing = list(tiny["flags"])
    missing[missing.index("--model_path") + 1] = str(tmp_path / "nope.pt")
    result = run_sample(tmp_path / "out", *missing, check=False)
    assert result.returncode != 0 and "--model_path" in result.stderr and "does not exist" in result.stderr
    result = run_sample(tmp_path / "out", *tiny["flags"], "--class_cond", "True", "--classes_balanced", "True",
                        check=False)
    assert result.returncode != 0 and "divisible by 1000" in result.stderr


def test_classifier_guidance_on_a_conditional_model_with_ddim_noise(tmp_path):
    # 64x64 is the smallest size the release's classifier supports; DDIM with eta > 0 draws step noise.
    model_flags = dict(TINY_ADM, image_size=64, channel_mult="1,2,2,2", learn_sigma=True, class_cond=True)
    classifier_flags = dict(classifier_width=32, classifier_depth=1, classifier_attention_resolutions="8")
    model, _ = tiny_adm(weights_seed=1, **model_flags)
    classifier = create_classifier(**{**classifier_defaults(), **classifier_flags, "image_size": 64})
    torch.save(model.state_dict(), tmp_path / "model.pt")
    torch.save(random_weights(classifier, 2).state_dict(), tmp_path / "classifier.pt")
    common = [*cli_flags(model_flags), *cli_flags(classifier_flags), "--model_path", str(tmp_path / "model.pt"),
              "--classifier_path", str(tmp_path / "classifier.pt"), "--classifier_scale", "5.0",
              "--use_ddim", "True", "--timestep_respacing", "ddim3", "--eta", "0.5", "--num_samples", "3",
              "--progress", "False"]
    run_sample(tmp_path / "a", *common, batch_size=3)
    run_sample(tmp_path / "b", *common, batch_size=2, script="pag-classifier-sample")  # the release's script name
    a, b = final_arrays(tmp_path / "a", 3, 64), final_arrays(tmp_path / "b", 3, 64)
    assert_same_samples(a, b)
    assert np.array_equal(a["arr_1"], LabelSource(0, 3, 1000).labels(range(3)))
    # without the classifier the samples change
    run_sample(tmp_path / "c", *common, "--classifier_scale", "0.0", batch_size=3)
    assert not np.array_equal(final_arrays(tmp_path / "c", 3, 64)["arr_0"], a["arr_0"])


def model_config_and_path(tiny, folder):
    """The tiny model's flags as a YAML file in `folder`, and its checkpoint's path: what the Python API takes."""
    config = folder / "tiny.yaml"
    config.write_text("".join(f"{k}: {v}\n" for k, v in TINY_MODEL.items()))
    return config, tiny["flags"][tiny["flags"].index("--model_path") + 1]


def test_generate_images_is_the_cli_run_with_keyword_arguments(tiny, tmp_path):
    """The library function under the CLI: the same flags as keyword arguments give the same samples."""
    from guided_diffusion.sampling.run import generate_images

    config, model_path = model_config_and_path(tiny, tmp_path)
    settings = dict(timestep_respacing="4", num_samples=NUM_SAMPLES, seed=3, progress=False, pag_scale=2.0,
                    pag_layers=["input_blocks.3.1", "middle_block.1"], sag_scale=0.5, sag_layer="output_blocks.1.1",
                    sag_blur_sigma=1.0)
    with pytest.raises(TypeError, match="unknown settings pag_scael"):
        generate_images(config=[config], pag_scael=2.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # CPU samples depend on the thread count; the CLI runs with one
    try:
        out = generate_images(config=[config], model_path=model_path, batch_size=4, output_dir=str(tmp_path / "api"),
                              **settings)
    finally:
        torch.set_num_threads(threads)
    assert Path(out) == tmp_path / "api"
    assert_same_samples(final_arrays(out), tiny["reference"])


@pytest.mark.parametrize("share", [0.3, 1.0])
def test_a_run_whose_cores_are_shared_warns_while_it_samples(tiny, tmp_path, monkeypatch, share):
    """A CPU run that gets under LOW_CPU_SHARE of its threads' time says so in its log at the first such batch
    (another job on the cores slows both several times over) and counts such batches when it finishes."""
    import types

    from guided_diffusion.sampling import run as sampling_run

    # The process clock runs at `share` of (wall clock x threads): what a run sharing its cores measures.
    clock = types.SimpleNamespace(time=time.time, strftime=time.strftime)  # what the run module uses
    clock.process_time = lambda: time.time() * torch.get_num_threads() * share
    monkeypatch.setattr(sampling_run, "time", clock)
    config, model_path = model_config_and_path(tiny, tmp_path)
    out = sampling_run.generate_images(config=[config], model_path=model_path, batch_size=4, num_samples=8,
                                       timestep_respacing="4", seed=3, progress=False, output_dir=str(tmp_path / "o"))
    (log,) = (Path(out) / "logs").glob("rank0_*.log")
    text = log.read_text()
    if share < 1:
        assert text.count("other work shares these cores") == 1  # once, at the first of its two batches
        assert "with 30% of" in text  # the share it got, named
        assert "2 batch(es) shared their CPU cores" in text
    else:
        assert "shares these cores" not in text and "shared their CPU cores" not in text
