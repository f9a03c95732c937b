"""A resumable sampling run in an output folder, shared by any number of processes and jobs.

- image i's initial noise, step noise and class label come from (--seed, i) alone, so the samples are
  the same for any number of processes and any --batch_size (bit-identical on CPU; on GPUs up to kernel
  non-determinism);
- every finished block of images is written atomically to --output_dir; running the same command again
  continues where it stopped, redoing damaged shards, and a different config in the same folder is refused;
  a larger --num_samples grows the run (only the new images are sampled);
- a full disk (checked before sampling and before the final npz), SIGTERM or Ctrl-C stops the run with one
  line, releasing its claims; the finished shards stay for the rerun;
- several jobs with the same config may share --output_dir (also from several nodes of a shared
  filesystem): each process claims the blocks it samples; a job with another config is refused at once;
- at the end, `samples_{N}x{H}x{W}x3.npz` (the ADM evaluator's format: `arr_0` uint8 NHWC, `arr_1` labels)
  and a PNG grid of the first 64 samples.

`run(args)` runs this process's share of a launch (one process, `mpiexec`, `torchrun` or Slurm `srun`)
with the flags of `FLAG_GROUPS`.
"""

import json
import logging
import os
import socket
import sys
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from guided_diffusion import guidance as guidance_lib
from guided_diffusion.cli.flags import Flag, FlagGroup, at_least, check_flags, create_parser, parse
from guided_diffusion.data.image_io import to_uint8
from guided_diffusion.diffusion.factory import NUM_CLASSES
from guided_diffusion.guidance import (
    Autoguidance,
    ClassifierGuidance,
    describe,
    guidance_flags,
    guidance_from_flags,
    method_from_flags,
)
from guided_diffusion.runtime import distributed as dist_util
from guided_diffusion.runtime.disk_space import disk_full_message, is_disk_full
from guided_diffusion.runtime.files import file_identity
from guided_diffusion.runtime.logs import log_to_console, log_to_file, stop_logging
from guided_diffusion.runtime.stop_signals import Stopped, stop_on_signals
from guided_diffusion.sampling.folder_jobs import DEFAULT_TIMEOUT
from guided_diffusion.sampling.folder_jobs import describe as describe_job
from guided_diffusion.sampling.images import (
    BATCH_SIZE,
    CLASSIFIER_FLAGS,
    CLIP_DENOISED,
    ETA,
    MODEL_FLAGS,
    MODEL_PATH,
    PRECISION,
    USE_DDIM,
    LabelBlind,
    batches,
    load_classifier,
    load_model,
    load_weak_model,
    precision,
    sample_images,
    weak_model_settings,
)
from guided_diffusion.sampling.seeding import LabelSource
from guided_diffusion.sampling.shard_timing import shared_cores
from guided_diffusion.sampling.store import OutputFolderError, SampleStore, config_digest

log = logging.getLogger(__name__)

# Version of the way images get their random numbers (recorded in the manifest).
SEEDING_SCHEME = "per-image SeedSequence(seed, spawn_key=(index, stream)); torch CPU generator; x_T then steps"


def _seed_problem(flag, value, args):
    return None if 0 <= value < 2**63 else f"{flag} must be a non-negative integer"


def _balanced_problem(flag, value, args):
    if not value:
        return None
    if not (args.class_cond or args.classifier_path):
        return (f"{flag} True needs class labels: a class-conditional model (--class_cond True) or a classifier "
                "(--classifier_path)")
    if args.num_samples % args.num_classes:
        return f"{flag} True needs --num_samples divisible by {args.num_classes}, got {args.num_samples}"
    return None


def _positive_seconds(flag, value, args):
    return None if value > 0 else f"{flag} must be a positive number of seconds"


SAMPLE_FLAGS = FlagGroup("sampling", [
    MODEL_PATH,
    Flag("num_samples", 10000, "number of images", at_least(1)),
    BATCH_SIZE, USE_DDIM, ETA, CLIP_DENOISED,
    Flag("seed", 0, "base seed: image i's noise and label come from (seed, i) only", _seed_problem),
    Flag("classes_balanced", False, "exactly num_samples/num_classes images per class (num_samples divisible by "
                                    "num_classes) instead of a random class per image", _balanced_problem),
    PRECISION,
])
OUTPUT_FLAGS = FlagGroup("output", [
    Flag("output_dir", "", "folder for the shards, manifest, final npz and grid; rerunning the same command "
                           "continues there, and jobs with the same config share it (default: samples/run_<config "
                           "digest>)"),
    Flag("progress", True, "show a progress bar with ETA (rank 0)"),
    Flag("claim_timeout", DEFAULT_TIMEOUT, "seconds without a heartbeat after which a job on another host that "
                                           "shares --output_dir counts as gone and the blocks it claimed are sampled "
                                           "by others (a dead process on this host is noticed at once); give every "
                                           "job the same value", _positive_seconds),
])
FLAG_GROUPS = (SAMPLE_FLAGS, OUTPUT_FLAGS, guidance_flags(), MODEL_FLAGS, CLASSIFIER_FLAGS)


def create_sampler_parser(description):
    """The parser of every flag a sampling run takes (behind `--config`)."""
    return create_parser(description, FLAG_GROUPS)


def generate_images(*, config=(), **settings):
    """A sampling run from keyword arguments: the flags' names and defaults (`model_path=...`,
    `num_samples=...`, `pag_scale=...`), applied over the YAML files of `config` as on the command line.
    Returns the output folder. The same run as `pag-image-sample` with those flags, in this process's share
    of the launch.

        generate_images(config=["configs/fashion32/uncond.yaml"], num_samples=64, pag_scale=2.0,
                        pag_layers=["middle_block.1"], output_dir="samples/pag")
    """
    parser = create_sampler_parser(None)
    known = {action.dest for action in parser._actions}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise TypeError(f"generate_images() got unknown settings {', '.join(unknown)}: use flag names "
                        f"(see pag-image-sample --help)")
    args = parse(parser, [arg for path in ([config] if isinstance(config, str) else config)
                          for arg in ("--config", str(path))])
    for name, value in settings.items():
        setattr(args, name, value)
    return run(args)


def run(args):
    """Sample with parsed flags in this process's share of the launch; returns the output folder."""
    dist_util.setup_dist()
    log_to_console(dist_util.rank())
    try:
        with stop_on_signals():  # SIGTERM / SIGINT / SIGHUP: `Stopped`, through every cleanup
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
        check_flags(args, FLAG_GROUPS)
        self.attention_guidance = guidance_from_flags(args)  # bad intervals / schedules fail here
        self.uses_classifier = bool(args.classifier_path)
        self.labels = LabelSource(args.seed, args.num_samples,
                                  args.num_classes if (args.class_cond or self.uses_classifier) else None,
                                  balanced=args.classes_balanced)
        self.config = run_config(args, self.attention_guidance, self.labels)
        self.output_dir = args.output_dir or default_output_dir(self.config, self.legacy_config(args.num_samples))
        self.store = SampleStore(self.output_dir, self.config, args.num_samples,
                                 (args.image_size, args.image_size, 3),
                                 expected_labels=self.labels.labels if self.labels.enabled else None,
                                 claim_timeout=args.claim_timeout, legacy_config=self.legacy_config)
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

    def legacy_config(self, num_samples):
        """This run's config as manifests of format 1 recorded it with `num_samples` images (in the config), so
        that their folders continue and grow; balanced labels depend on the count, so theirs is this run's."""
        config = json.loads(json.dumps(self.config))
        config["sampling"].pop("classes_balanced_over", None)
        config["sampling"]["num_samples"] = self.args.num_samples if self.labels.balanced else num_samples
        return config

    def _load(self, args):
        self.model, self.diffusion, self.guidance = load_networks(args, self.device, self.attention_guidance,
                                                                  self.labels.enabled)


def load_networks(args, device, attention_guidance=None, labelled=None):
    """(model, diffusion, guidance list) of parsed sampler flags, checked together: the diffusion model, the
    attention guidances (default: from the flags), the classifier's and the weak model's guidance where the
    flags ask for them. `labelled`: the model gets class labels (default: --class_cond or a classifier)."""
    model, diffusion = load_model(args, device)
    guidance = list(guidance_from_flags(args) if attention_guidance is None else attention_guidance)
    if labelled is None:
        labelled = bool(args.class_cond or args.classifier_path)
    if args.classifier_path:
        guidance.append(method_from_flags(ClassifierGuidance, args, classifier=load_classifier(args, device)))
        if not args.class_cond:  # the classifier needs the labels, an unconditional model must not get them
            model = LabelBlind(model)
    if args.auto_scale:
        guidance.append(method_from_flags(Autoguidance, args, weak_model=load_weak_model(args, device)))
    labels = {"y": torch.zeros(1, dtype=torch.long)} if labelled else {}
    guidance_lib.validate(guidance, model, labels)  # unknown layers, settings the model cannot serve
    return model, diffusion, guidance


def run_config(args, attention_items, labels):
    """Everything that changes image i (recorded in, and compared with, the output folder's manifest).

    Operational flags (batch size, output folder, progress bar, config file) are left out, and the
    checkpoints are identified by size and a hash of their first MiB rather than by their path. So is
    --num_samples: image i is the same for any count, and a run may grow; but balanced labels are spread
    over all the images, so with them the count is part of every image.
    """
    config = {
        "model": model_flags(args),
        "model_checkpoint": checkpoint_identity(args.model_path, "--model_path"),
        "sampling": {"seed": args.seed, "use_ddim": args.use_ddim, "eta": args.eta,
                     "clip_denoised": args.clip_denoised, "precision": precision(args),
                     "labels": "balanced" if labels.balanced else ("random" if labels.enabled else "none"),
                     "seeding": SEEDING_SCHEME},
        "guidance": describe(attention_items),
    }
    if labels.balanced:
        config["sampling"]["classes_balanced_over"] = args.num_samples
    if args.classifier_path:
        config["classifier"] = CLASSIFIER_FLAGS.values(args, exclude=("classifier_path",))
        config["classifier"]["checkpoint"] = checkpoint_identity(args.classifier_path, "--classifier_path")
        # built here without the classifier, so that a bad interval or schedule fails early
        config["classifier"]["guidance"] = method_from_flags(ClassifierGuidance, args).settings()
    if args.auto_scale:  # the weak model by its flags and checkpoint identity, not by file paths
        settings = method_from_flags(Autoguidance, args).settings()
        config["autoguidance"] = {**{k: v for k, v in settings.items() if k not in ("model_path", "model_config")},
                                  "model": weak_model_settings(args),
                                  "checkpoint": checkpoint_identity(args.auto_model_path, "--auto_model_path")}
    return config


def default_output_dir(config, legacy_config):
    """samples/run_<config digest>, or the folder an earlier version named after the config with the count."""
    legacy = os.path.join("samples", "run_" + config_digest(legacy_config)[:12])
    return legacy if os.path.isdir(legacy) else os.path.join("samples", "run_" + config_digest(config)[:12])


def checkpoint_identity(path, flag):
    try:
        return file_identity(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{flag} {path} does not exist: download the checkpoint first") from None


# ----------------------------------------------------------------------------------------------------
# Sampling the folder's blocks


def sample_batch(run, indices):
    """uint8 NHWC images and labels (or None) of image `indices` for this run."""
    args = run.args
    labels = run.labels.labels(indices)
    x0 = sample_images(run.model, run.diffusion, indices, seed=args.seed, image_size=args.image_size, labels=labels,
                       use_ddim=args.use_ddim, eta=args.eta, clip_denoised=args.clip_denoised, guidance=run.guidance,
                       device=run.device)
    return to_uint8(x0).cpu().numpy(), labels


def sample(args):
    rank, world = dist_util.rank(), dist_util.world_size()
    run, error = None, None
    try:
        try:
            run = Run(args)
        except Exception as exc:  # reported on every rank, so no process waits for one that gave up
            if not isinstance(exc, (ValueError, OSError, RuntimeError)):
                log.exception("unexpected error before sampling")
            error = problem(exc)
        dist_util.raise_if_any_failed(error)
        return sample_in_folder(run, args, rank, world)
    except Stopped as stop:
        folder = run.output_dir if run is not None else "the output folder"
        (log.warning if rank == 0 else log.info)(
            "stopped by %s: the finished shards stay in %s; run the same command again to continue", stop.name, folder)
        raise SystemExit(stop.exit_status) from None
    except OSError as exc:  # a full disk while sampling: one line, not a traceback
        if not is_disk_full(exc):
            raise
        raise SystemExit("error: " + problem(exc)) from None
    finally:
        if run is not None:
            run.store.close()  # this process leaves the folder: its claims and record go


def problem(exc):
    """The one-line message of an error that stops the run (a full disk names the folder to clean up)."""
    return disk_full_message(exc) if is_disk_full(exc) else str(exc)


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
            if len(done) < args.num_samples:  # (the final npz alone is checked before it is written)
                store.check_free_space(args.num_samples - len(done))
            others = store.jobs.live_jobs()
            prepared = (store.shard_size, done)
            log.info("output folder %s: %s; %d of %d samples done, %d to sample on %d process(es) (%s)%s",
                     run.output_dir, folder_state(run), len(done), args.num_samples,
                     args.num_samples - len(done), world, dist_util.launcher(),
                     f"; shared with {len(others)} running process(es) of the same config: "
                     + ", ".join(describe_job(record) for _, record, _ in others) if others else "")
        except (OutputFolderError, OSError) as exc:  # a folder in use, a full disk: one line
            prepared = problem(exc) if is_disk_full(exc) else f"cannot prepare the output folder: {exc}"
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
    started, count, contended = time.time(), 0, 0
    threads = torch.get_num_threads()
    on_cpu = torch.device(run.device).type == "cpu"  # CPU time says whether other work shared the cores
    for claimed in store.claimed_batches(todo, args.batch_size, first=rank * len(todo) // world):
        tick, cpu_tick = time.time(), time.process_time()
        indices = np.concatenate([block_indices for _, block_indices in claimed])
        parts = [sample_batch(run, batch) for batch in batches(indices, args.batch_size)]
        images = np.concatenate([p[0] for p in parts])
        labels = None if parts[0][1] is None else np.concatenate([p[1] for p in parts])
        elapsed, cpu = time.time() - tick, time.process_time() - cpu_tick
        offset = 0
        for block, block_indices in claimed:
            rows = slice(offset, offset + len(block_indices))
            part = len(block_indices) / len(indices)
            store.write_shard(block_indices, images[rows], None if labels is None else labels[rows], block=block,
                              torch_threads=threads, seconds=elapsed * part, cpu_seconds=cpu * part if on_cpu else None)
            offset += len(block_indices)
        count += len(indices)
        if on_cpu and shared_cores(elapsed, cpu, threads):
            contended += 1
            if contended == 1:  # said at once: the user can still stop the other job
                log.warning("rank %d/%d: %d images took %.0f s with %.0f%% of %d threads' CPU time: other work shares "
                            "these cores and slows this run several times over (two 2-thread jobs on 2 cores: "
                            "3-4x each); run one CPU job at a time", rank, world, len(indices), elapsed,
                            100 * cpu / max(elapsed * threads, 1e-9), threads)
        log.debug("rank %d/%d: %d images (blocks %s) in %.2f s, %.3f img/s; %d images so far", rank, world,
                  len(indices), ",".join(str(b) for b, _ in claimed), elapsed, len(indices) / max(elapsed, 1e-9),
                  count)
        if not bar.disable:  # every process of every job sharing the folder counts
            bar.update(sum(len(todo[b]) for b in store.finished_blocks(todo)) - bar.n)
    bar.close()
    seconds = time.time() - started
    log.info("rank %d/%d finished: %d images in %.1f s (%.3f img/s)%s", rank, world, count, seconds,
             count / max(seconds, 1e-9), f"; {contended} batch(es) shared their CPU cores" if contended else "")

    stats = dist_util.all_gather_objects((count, seconds))  # also waits for every rank to finish
    error = None
    if rank == 0:
        if world > 1:
            for r, (n, s) in enumerate(stats):
                log.info("  rank %d: %d images, %.3f img/s", r, n, n / max(s, 1e-9))
        try:
            path = store.assemble()  # checks free space, count and coverage first
            log.info("wrote %s and %s", path, store.grid_path)
        except (ValueError, OSError) as exc:
            error = problem(exc)
    dist_util.raise_if_any_failed(error)
    return run.output_dir


def folder_state(run):
    store = run.store
    if store.grown_from is not None:
        return f"extending the run from {store.grown_from} to {store.num_samples} images"
    if store.folder_num_samples and store.folder_num_samples > store.num_samples:
        return f"continuing; the final npz of the first {store.num_samples} of its {store.folder_num_samples} images"
    return "continuing" if run.resuming else "new run"


def job_details(args):
    """What other jobs in the output folder learn about this process (besides its config, host and pid)."""
    details = {"rank": dist_util.rank(), "world_size": dist_util.world_size(), "launcher": dist_util.launcher(),
               "torch_threads": torch.get_num_threads(), "argv": sys.argv}
    if os.environ.get("SLURM_JOB_ID"):
        details["slurm_job"] = os.environ["SLURM_JOB_ID"]
    return details


def run_info(args):
    return {"model_path": os.path.abspath(args.model_path),
            "classifier_path": os.path.abspath(args.classifier_path) if args.classifier_path else None,
            "argv": sys.argv, "config_file": args.config, "torch": torch.__version__,
            "created": time.strftime("%Y-%m-%d %H:%M:%S %z"), "launcher": dist_util.launcher(),
            "world_size": dist_util.world_size(), "host": socket.gethostname(),
            # CPU samples depend on the intra-op thread count (not on the number of processes): see the README
            "torch_threads": torch.get_num_threads()}


def model_flags(args):
    """The model flags for the manifest; --num_classes only where it is not the release's 1000 and
    --null_label only where set, so that the folders of runs of earlier versions still resume."""
    exclude = ("num_classes",) * (args.num_classes == NUM_CLASSES) + ("null_label",) * (not args.null_label)
    return MODEL_FLAGS.values(args, exclude=exclude)
