"""Sample a large batch of images from an ADM model, optionally guided by PAG, SAG and/or a classifier.

Reproducible and resumable:

- image i's initial noise, step noise and class label come from (--seed, i) alone, so the samples are
  the same for any number of processes and any --batch_size (bit-identical on CPU; on GPUs up to kernel
  non-determinism);
- every finished block of images is written atomically to --output_dir; running the same command again
  continues where it stopped, redoing damaged shards, and a different config in the same folder is refused;
- several jobs with the same config may share --output_dir (also from several nodes of a shared
  filesystem): each process claims the blocks it samples; a job with another config is refused at once;
- at the end, `samples_{N}x{H}x{W}x3.npz` (the ADM evaluator's format: `arr_0` uint8 NHWC, `arr_1` labels)
  and a PNG grid of the first 64 samples.

The release's MODEL_FLAGS and SAMPLE_FLAGS work verbatim. Launch as one process, with
`mpiexec -n N`, `torchrun --nproc_per_node N` or Slurm `srun`. `--config FILE.yaml` sets any flag
(command-line flags win).
"""

import argparse
import dataclasses
import logging
import os
import socket
import sys
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from guided_diffusion import dist_util
from guided_diffusion import guidance as guidance_lib
from guided_diffusion.checkpoints import load_checkpoint
from guided_diffusion.config import HelpFormatter, add_flags, parse_args
from guided_diffusion.guidance_flags import (GUIDANCE_DEFAULTS, GUIDANCE_HELP, attention_guidance, classifier_guidance,
                                             describe, scale_flag_problems)
from guided_diffusion.image_io import to_uint8
from guided_diffusion.log_setup import log_to_console, log_to_file, stop_logging
from guided_diffusion.precision import PRECISIONS, apply_precision
from guided_diffusion.folder_jobs import DEFAULT_TIMEOUT, describe as describe_job
from guided_diffusion.file_io import file_identity
from guided_diffusion.sample_store import SampleStore, config_digest
from guided_diffusion.script_util import (NUM_CLASSES, classifier_defaults, create_classifier,
                                          create_model_and_diffusion, model_and_diffusion_defaults)
from guided_diffusion.seeding import ImageNoise, LabelSource

log = logging.getLogger("scripts.image_sample")

# Version of the way images get their random numbers (recorded in the manifest).
SEEDING_SCHEME = "per-image SeedSequence(seed, spawn_key=(index, stream)); torch CPU generator; x_T then steps"

SAMPLE_DEFAULTS = dict(model_path="", num_samples=10000, batch_size=16, use_ddim=False, eta=0.0, clip_denoised=True,
                       seed=0, classes_balanced=False, precision="")
SAMPLE_HELP = dict(
    model_path="diffusion model checkpoint (e.g. models/256x256_diffusion_uncond.pt)",
    num_samples="number of images",
    batch_size="images per forward pass and per shard (does not change the samples)",
    use_ddim="DDIM steps instead of ancestral DDPM steps (use with --timestep_respacing ddimN)",
    eta="DDIM eta (0 = deterministic DDIM)",
    clip_denoised="clip the x0 prediction to [-1, 1]",
    seed="base seed: image i's noise and label come from (seed, i) only",
    classes_balanced="exactly num_samples/num_classes images per class (num_samples divisible by num_classes) "
                     "instead of a random class per image",
    precision=f"one of {', '.join(PRECISIONS)}; empty: fp16 with --use_fp16 True (the release's conversion), "
              "else fp32",
)
OUTPUT_DEFAULTS = dict(output_dir="", progress=True, claim_timeout=DEFAULT_TIMEOUT)
OUTPUT_HELP = dict(
    output_dir="folder for the shards, manifest, final npz and grid; rerunning the same command continues "
               "there, and jobs with the same config share it (default: samples/run_<config digest>)",
    progress="show a progress bar with ETA (rank 0)",
    claim_timeout="seconds without a heartbeat after which a job on another host that shares --output_dir "
                  "counts as gone and the blocks it claimed are sampled by others (a dead process on this "
                  "host is noticed at once); give every job the same value",
)
CLASSIFIER_DEFAULTS = dict(classifier_path="", **{k: v for k, v in classifier_defaults().items() if k != "image_size"})
CLASSIFIER_HELP = dict(classifier_path="noisy-image classifier checkpoint: enables classifier guidance "
                                       "(--classifier_scale)")


def create_argparser(description=None):
    parser = argparse.ArgumentParser(description=description or __doc__, formatter_class=HelpFormatter)
    parser.add_argument("--config", default=None, metavar="FILE.yaml",
                        help="YAML file of flag values (keys are flag names); command-line flags override it")
    add_flags(parser.add_argument_group("sampling"), SAMPLE_DEFAULTS, SAMPLE_HELP)
    add_flags(parser.add_argument_group("output"), OUTPUT_DEFAULTS, OUTPUT_HELP)
    add_flags(parser.add_argument_group("guidance (scales are the PAG paper's s = official g - 1)"),
              GUIDANCE_DEFAULTS, GUIDANCE_HELP)
    add_flags(parser.add_argument_group("model and diffusion (the ADM release's flags)"),
              model_and_diffusion_defaults())
    add_flags(parser.add_argument_group("classifier (the ADM release's flags)"), CLASSIFIER_DEFAULTS, CLASSIFIER_HELP)
    return parser


def main(argv=None):
    """Console entry point: parse flags (and --config), then sample. Returns the exit status 0; a failure
    raises SystemExit with the message (status 1). `run(args)` returns the output folder instead."""
    run(parse_args(create_argparser(), argv))
    return 0


def run(args):
    """Sample with parsed flags in this process's share of the launch."""
    dist_util.setup_dist()
    log_to_console(dist_util.rank())
    try:
        return sample(args)
    finally:
        dist_util.cleanup()
        stop_logging()


# ----------------------------------------------------------------------------------------------------
# Before sampling: every flag is checked, every model built, on every rank


class Run:
    """Everything a rank needs to sample, built and checked before the first step."""

    def __init__(self, args):
        self.args = args
        self.device = dist_util.dev()
        check_flags(args)
        self.attention_guidance = attention_guidance(args)  # bad intervals / schedules fail here
        self.uses_classifier = bool(args.classifier_path)
        self.labels = LabelSource(args.seed, args.num_samples,
                                  args.num_classes if (args.class_cond or self.uses_classifier) else None,
                                  balanced=args.classes_balanced)
        self.config = run_config(args, self.attention_guidance, self.labels)
        self.output_dir = args.output_dir or os.path.join("samples", "run_" + config_digest(self.config)[:12])
        self.store = SampleStore(self.output_dir, self.config, args.num_samples,
                                 (args.image_size, args.image_size, 3),
                                 expected_labels=self.labels.labels if self.labels.enabled else None,
                                 claim_timeout=args.claim_timeout)
        self.resuming = False
        if dist_util.rank() == 0:  # cheap folder checks before loading any weights
            self.store.check_writable()
            self.resuming = self.store.check_manifest()
            self.store.join(job_details(args))  # from now on a job with another config is refused at once
        try:
            self._load(args)
        except BaseException:
            self.store.close()
            raise

    def _load(self, args):
        self.model, self.diffusion = load_model(args, self.device)
        self.guidance = list(self.attention_guidance)
        if self.uses_classifier:
            self.guidance.append(classifier_guidance(args, load_classifier(args, self.device)))
            if not args.class_cond:  # the classifier needs the labels, an unconditional model must not get them
                self.model = LabelBlind(self.model)
        guidance_lib.validate(self.guidance, self.model)  # unknown PAG / SAG layers


def check_flags(args):
    problems = []
    if not args.model_path:
        problems.append("--model_path is required")
    if args.num_samples < 1:
        problems.append("--num_samples must be at least 1")
    if args.batch_size < 1:
        problems.append("--batch_size must be at least 1")
    if not 0 <= args.seed < 2**63:
        problems.append("--seed must be a non-negative integer")
    if args.classes_balanced:
        if not (args.class_cond or args.classifier_path):
            problems.append("--classes_balanced True needs class labels: a class-conditional model "
                            "(--class_cond True) or a classifier (--classifier_path)")
        elif args.num_samples % args.num_classes:
            problems.append(f"--classes_balanced True needs --num_samples divisible by {args.num_classes}, "
                            f"got {args.num_samples}")
    if args.eta and not args.use_ddim:
        problems.append("--eta is a DDIM setting: add --use_ddim True")
    if not args.claim_timeout > 0:
        problems.append("--claim_timeout must be a positive number of seconds")
    problems += scale_flag_problems(args)
    try:
        precision(args)
    except ValueError as err:
        problems.append(str(err))
    if problems:
        raise ValueError("; ".join(problems))


def run_config(args, attention_items, labels):
    """Everything that changes the samples (recorded in, and compared with, the output folder's manifest).

    Operational flags (batch size, output folder, progress bar, config file) are left out, and the
    checkpoints are identified by size and a hash of their first MiB rather than by their path.
    """
    config = {
        "model": model_flags(args),
        "model_checkpoint": checkpoint_identity(args.model_path, "--model_path"),
        "sampling": {"num_samples": args.num_samples, "seed": args.seed, "use_ddim": args.use_ddim,
                     "eta": args.eta, "clip_denoised": args.clip_denoised, "precision": precision(args),
                     "labels": "balanced" if labels.balanced else ("random" if labels.enabled else "none"),
                     "seeding": SEEDING_SCHEME},
        "guidance": describe(attention_items),
    }
    if args.classifier_path:
        config["classifier"] = {k: getattr(args, k) for k in CLASSIFIER_DEFAULTS if k != "classifier_path"}
        config["classifier"]["checkpoint"] = checkpoint_identity(args.classifier_path, "--classifier_path")
        # built here without the classifier, so that a bad interval or schedule fails early
        config["classifier"]["guidance"] = dataclasses.asdict(classifier_guidance(args, None).options)
    return config


def checkpoint_identity(path, flag):
    try:
        return file_identity(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{flag} {path} does not exist: download the checkpoint first") from None


def precision(args):
    """The model's precision from --precision and the release's --use_fp16, which must not disagree."""
    if args.precision and args.precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {args.precision!r}")
    if args.use_fp16 and args.precision not in ("", "fp16"):
        raise ValueError(f"--use_fp16 True converts the model to fp16: drop it to use --precision {args.precision}")
    return args.precision or ("fp16" if args.use_fp16 else "fp32")


def model_flags(args):
    flags = {k: getattr(args, k) for k in model_and_diffusion_defaults()}
    if flags["num_classes"] == NUM_CLASSES:  # the release's; left out so that older sampling folders still resume
        del flags["num_classes"]
    return flags


def load_model(args, device):
    model, diffusion = create_model_and_diffusion(**model_flags(args))
    load_checkpoint(model, args.model_path)
    return apply_precision(model, precision(args)).to(device).eval(), diffusion


def load_classifier(args, device):
    flags = {k: getattr(args, k) for k in classifier_defaults() if k != "image_size"}
    classifier = create_classifier(image_size=args.image_size, num_classes=args.num_classes, **flags)
    load_checkpoint(classifier, args.classifier_path)
    if args.classifier_use_fp16:
        classifier.convert_to_fp16()
    return classifier.to(device).eval()


class LabelBlind(torch.nn.Module):
    """An unconditional model that ignores the labels the classifier guidance needs in model_kwargs."""

    def __init__(self, module):
        super().__init__()
        self.module = module  # `guidance.unwrap` finds the U-Net (and its attention blocks) here

    def forward(self, x, timesteps, y=None, **kwargs):
        return self.module(x, timesteps, **kwargs)


# ----------------------------------------------------------------------------------------------------
# Sampling


def sample_images(model, diffusion, indices, *, seed, image_size, labels=None, use_ddim=False, eta=0.0,
                  clip_denoised=True, guidance=None, device="cpu"):
    """Samples in [-1, 1] ([n, 3, H, W]) for image `indices`, each from its own (seed, index) noise streams.

    `labels`: the images' class labels (numpy, passed to the model as `y`) or None.
    """
    device = torch.device(device)
    noise = ImageNoise(seed, indices, (3, image_size, image_size), device=device)
    rows = len(indices)
    fit = batch_invariant_fit(rows, device)  # the padding row is dropped below
    model_kwargs = {} if labels is None else {"y": fit(torch.from_numpy(np.asarray(labels)).to(device))}
    loop = diffusion.ddim_sample_loop if use_ddim else diffusion.p_sample_loop
    extra = {"eta": eta} if use_ddim else {}
    x_t = fit(noise.initial())
    x0 = loop(model, tuple(x_t.shape), noise=x_t, clip_denoised=clip_denoised, model_kwargs=model_kwargs,
              device=device, progress=False, guidance=guidance or None, step_noise_fn=lambda i: fit(noise.step(i)),
              **extra)
    return x0[:rows]


def sample_batch(run, indices):
    """uint8 NHWC images and labels (or None) of image `indices` for this run."""
    args = run.args
    labels = run.labels.labels(indices)
    x0 = sample_images(run.model, run.diffusion, indices, seed=args.seed, image_size=args.image_size, labels=labels,
                       use_ddim=args.use_ddim, eta=args.eta, clip_denoised=args.clip_denoised, guidance=run.guidance,
                       device=run.device)
    return to_uint8(x0).cpu().numpy(), labels


def batches(indices, batch_size):
    """`indices` in consecutive batches of `batch_size` (the last one may be smaller)."""
    return [indices[k:k + batch_size] for k in range(0, len(indices), batch_size)]


def batch_invariant_fit(rows, device):
    """`fit(t)` for the per-row tensors of a batch of `rows` images on `device`: `t` itself, except that on
    CPU a batch of one gets a copy of its row.

    On CPU a batch of exactly one row runs other conv kernels than any batch of 2 or more and differs in
    the last bits; the copy keeps the image identical to a larger batch's. Callers keep the first `rows`
    rows of the result.
    """
    if rows == 1 and torch.device(device).type == "cpu":
        return lambda t: torch.cat([t, t])
    return lambda t: t


def sample(args):
    rank, world = dist_util.rank(), dist_util.world_size()
    run, error = None, None
    try:
        run = Run(args)
    except Exception as exc:  # reported on every rank, so no process waits for one that gave up
        if not isinstance(exc, (ValueError, OSError, RuntimeError)):
            log.exception("unexpected error before sampling")
        error = exc
    try:
        dist_util.raise_if_any_failed(error)
        return sample_in_folder(run, args, rank, world)
    finally:
        if run is not None:
            run.store.close()  # this process leaves the folder: its claims and record go


def sample_in_folder(run, args, rank, world):
    """Sample every block of the run that no process has finished, claiming blocks with any other jobs
    (processes) in the folder, then assemble the final npz."""
    store = run.store
    log_to_file(os.path.join(run.output_dir, "logs", f"rank{rank}_{socket.gethostname()}_{os.getpid()}.log"))

    prepared = None
    if rank == 0:
        try:
            store.write_manifest(info=run_info(args), shard_size=args.batch_size)  # unless the folder has one
            done = store.scan()
            others = store.jobs.live_jobs()
            prepared = (store.shard_size, done)
            log.info("output folder %s: %s; %d of %d samples done, %d to sample on %d process(es) (%s)%s",
                     run.output_dir, "continuing" if run.resuming else "new run", len(done), args.num_samples,
                     args.num_samples - len(done), world, dist_util.launcher(),
                     f"; shared with {len(others)} running process(es) of the same config: "
                     + ", ".join(describe_job(record) for _, record, _ in others) if others else "")
        except Exception as exc:
            log.exception("cannot prepare the output folder")
            prepared = f"cannot prepare the output folder {run.output_dir}: {exc}"
    prepared = dist_util.broadcast_object(prepared)
    if isinstance(prepared, str):
        raise SystemExit("error: " + prepared)
    store.shard_size, done = prepared
    store.join(job_details(args))  # rank 0 joined before loading the model

    todo = store.blocks_to_sample(done)
    total = sum(len(indices) for indices in todo.values())
    bar = tqdm(total=total, unit="img", desc="sampling", dynamic_ncols=True,
               disable=rank != 0 or not args.progress or not total)
    started, count = time.time(), 0
    threads = torch.get_num_threads()
    for claimed in store.claimed_batches(todo, args.batch_size, first=rank * len(todo) // world):
        tick = time.time()
        indices = np.concatenate([block_indices for _, block_indices in claimed])
        parts = [sample_batch(run, batch) for batch in batches(indices, args.batch_size)]
        images = np.concatenate([p[0] for p in parts])
        labels = None if parts[0][1] is None else np.concatenate([p[1] for p in parts])
        offset = 0
        for block, block_indices in claimed:
            rows = slice(offset, offset + len(block_indices))
            store.write_shard(block_indices, images[rows], None if labels is None else labels[rows], block=block,
                              torch_threads=threads)
            offset += len(block_indices)
        count += len(indices)
        elapsed = time.time() - tick
        log.debug("rank %d/%d: %d images (blocks %s) in %.2f s, %.3f img/s; %d images so far", rank, world,
                  len(indices), ",".join(str(b) for b, _ in claimed), elapsed, len(indices) / max(elapsed, 1e-9),
                  count)
        if not bar.disable:  # every process of every job sharing the folder counts
            bar.update(sum(len(todo[b]) for b in store.finished_blocks(todo)) - bar.n)
    bar.close()
    seconds = time.time() - started
    log.info("rank %d/%d finished: %d images in %.1f s (%.3f img/s)", rank, world, count, seconds,
             count / max(seconds, 1e-9))

    stats = dist_util.all_gather_objects((count, seconds))  # also waits for every rank to finish
    error = None
    if rank == 0:
        if world > 1:
            for r, (n, s) in enumerate(stats):
                log.info("  rank %d: %d images, %.3f img/s", r, n, n / max(s, 1e-9))
        try:
            path = store.assemble()  # checks count and coverage first
            log.info("wrote %s and %s", path, store.grid_path)
        except (ValueError, OSError) as exc:
            error = exc
    dist_util.raise_if_any_failed(error)
    return run.output_dir


def job_details(args):
    """What other jobs in the output folder learn about this process (besides its config, host and pid)."""
    return {"rank": dist_util.rank(), "world_size": dist_util.world_size(), "launcher": dist_util.launcher(),
            "torch_threads": torch.get_num_threads(), "argv": sys.argv}


def run_info(args):
    return {"model_path": os.path.abspath(args.model_path),
            "classifier_path": os.path.abspath(args.classifier_path) if args.classifier_path else None,
            "argv": sys.argv, "config_file": args.config, "torch": torch.__version__,
            "created": time.strftime("%Y-%m-%d %H:%M:%S %z"), "launcher": dist_util.launcher(),
            "world_size": dist_util.world_size(), "host": socket.gethostname(),
            # CPU samples depend on the intra-op thread count (not on the number of processes): see the README
            "torch_threads": torch.get_num_threads()}


if __name__ == "__main__":
    raise SystemExit(main())
