"""The ADM training loop: AdamW, EMA, microbatches, mixed precision, DDP, resumable checkpoints.

Semantics (the release's, with the differences spelled out):

* One *step* is one optimizer update on a batch of `batch_size` images per rank (`batch_size * world_size`
  in all), optionally cut into microbatches whose gradients are accumulated. Each microbatch loss is
  weighted by its share of the batch, so microbatching leaves the gradient unchanged (the release adds
  the microbatch means, which scales the gradient by the number of microbatches).
* Timesteps come from a `resample.ScheduleSampler` with importance weights; loss-aware samplers are
  updated with every microbatch's losses (gathered over all ranks).
* EMA copies of the (float32) parameters for each rate in `ema_rate` ("0.9999" or "0.999,0.9999"),
  updated after every step that was taken. With `ema_warmup`, the update after n steps uses the decay
  min(rate, (1 + n) / (10 + n)) (TensorFlow's `num_updates` rule), so a short run's EMA forgets the random
  initialisation (at rate 0.999 without warm-up, 22% of it is still there after 1,500 steps).
* Mixed precision: `use_fp16=True` is the release's scheme (the U-Net's convolutions in float16 through
  `model.convert_to_fp16()`, float32 master weights that AdamW updates, a dynamic loss scale starting at
  2**20 that grows by `fp16_scale_growth` per step in log2 and halves when a gradient overflows, the
  step then being skipped). `mixed_precision="bf16"` or `"fp16"` instead runs the forward pass under
  `torch.autocast` (fp16 with a `GradScaler`), keeping float32 weights.
* Checkpoints named as in the release, in `run_dir`: `model{N:06d}.pt` (float32 state_dict),
  `ema_{rate}_{N:06d}.pt`, `opt{N:06d}.pt` (the AdamW state_dict), where N is the number of steps done
  (the release's file N holds N + 1 steps), plus `train_state{N:06d}.pt` with what an exact resume also
  needs (every rank's random generators and data position, the loss-aware sampler's history, the loss
  scale). Every file is written to a temporary name and renamed, `train_state` last, so a step whose
  `train_state` file exists is complete. The temporary of a write killed midway is removed at the next start.
* Resuming: from the latest complete checkpoint in `run_dir` if there is one, else from
  `resume_checkpoint` (a `modelNNNNNN.pt` path whose EMA / opt / train_state siblings are used when they
  exist). With the same seed and world size, a resumed CPU run repeats the uninterrupted run bit for bit.
* The run ends after `max_steps` steps in all (0: no limit) or at `lr_anneal_steps`, over which the
  learning rate decays linearly to zero (0: constant).
"""

import functools
import glob
import logging
import os
import re
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.optim import AdamW

from guided_diffusion.diffusion.timestep_samplers import LossAwareSampler, UniformSampler
from guided_diffusion.model.attention import unwrap
from guided_diffusion.model.checkpoints import load_checkpoint
from guided_diffusion.runtime import distributed as dist_util
from guided_diffusion.runtime.files import atomic_write, is_temporary, remove_if_present
from guided_diffusion.training import metrics_log as logger

log = logging.getLogger(__name__)

INITIAL_LOG_LOSS_SCALE = 20.0
MIXED_PRECISION_MODES = ("none", "bf16", "fp16")

_STEP_FILE = re.compile(r"model(\d+)\.pt$")


class TrainLoop:
    def __init__(self, *, model, diffusion, data, batch_size, microbatch=-1, lr=1e-4, ema_rate="0.9999",
                 log_interval=10, save_interval=10000, resume_checkpoint="", use_fp16=False,
                 fp16_scale_growth=1e-3, schedule_sampler=None, weight_decay=0.0, lr_anneal_steps=0,
                 max_steps=0, run_dir=None, seed=None, mixed_precision="none", progress=True,
                 device=None, ema_warmup=False, class_dropout_prob=0.0, channels_last=False):
        if mixed_precision not in MIXED_PRECISION_MODES:
            raise ValueError(f"mixed_precision must be one of {', '.join(MIXED_PRECISION_MODES)}, "
                             f"got {mixed_precision!r}")
        if use_fp16 and mixed_precision != "none":
            raise ValueError("use_fp16 (the release's float16 weights) and mixed_precision (autocast) exclude "
                             "each other: pick one")
        if use_fp16 and not hasattr(model, "convert_to_fp16"):
            raise ValueError("use_fp16 needs a model with convert_to_fp16() (the ADM U-Net or classifier)")
        null_label = getattr(unwrap(model), "null_label", None)
        if not 0.0 <= class_dropout_prob < 1.0:
            raise ValueError(f"class_dropout_prob must be in [0, 1), got {class_dropout_prob}")
        if class_dropout_prob and null_label is None:
            raise ValueError("class_dropout_prob > 0 replaces labels by the null label: build the model with "
                             "--class_cond True --null_label True")
        self.channels_last = channels_last
        if channels_last:  # before the optimizer and the EMA copy the parameters, so that they share the layout
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.diffusion = diffusion
        self.class_dropout_prob = float(class_dropout_prob)
        self.null_label = null_label
        self.data = data
        self.batch_size = batch_size
        self.microbatch = microbatch if microbatch > 0 else batch_size
        self.lr = lr
        self.ema_rate = _parse_rates(ema_rate)
        self.ema_warmup = ema_warmup
        self.log_interval = log_interval
        self.save_interval = save_interval
        self.resume_checkpoint = resume_checkpoint
        self.use_fp16 = use_fp16
        self.fp16_scale_growth = fp16_scale_growth
        self.weight_decay = weight_decay
        self.lr_anneal_steps = lr_anneal_steps
        self.max_steps = max_steps
        self.mixed_precision = mixed_precision
        self.progress = progress
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.rank = dist_util.rank()
        self.world_size = dist_util.world_size()
        self.global_batch = batch_size * self.world_size
        self.run_dir = run_dir or logger.get_dir() or "."
        self.metrics = logger.get_current()
        self.schedule_sampler = schedule_sampler or UniformSampler(diffusion)
        self.step = 0
        self.last_saved_step = None

        self._seed(seed)
        self.model_params = [p for _, p in model.named_parameters()]

        if self.rank == 0:
            remove_interrupted_writes(self.run_dir)
        resume = self._find_resume()
        if resume:
            self.step = parse_resume_step_from_filename(resume)
            log.info("loading model from checkpoint: %s (step %d)", resume, self.step)
            load_checkpoint(self.model, resume)  # a mismatch names the flags that differ
        # Float32 master weights: the model's own parameters, or copies when the model runs in float16.
        if use_fp16:
            self.master_params = [p.detach().float().clone().requires_grad_(True) for p in self.model_params]
            self.model.convert_to_fp16()
        else:
            self.master_params = self.model_params
        self.lg_loss_scale = INITIAL_LOG_LOSS_SCALE
        self.scaler = torch.amp.GradScaler(self.device.type) if mixed_precision == "fp16" else None

        self.opt = AdamW(self.master_params, lr=self.lr, weight_decay=self.weight_decay)
        self.ema_params = [[p.detach().clone() for p in self.master_params] for _ in self.ema_rate]
        if resume:
            self._load_ema(resume)
            self._load_opt(resume)
            self._load_train_state(resume)
            if os.path.dirname(os.path.abspath(resume)) == os.path.abspath(self.run_dir):
                self.last_saved_step = self.step  # already on disk: no need to write it again at the end
        self._sync_from_rank0()

        if dist_util.is_distributed():
            # The ADM models have no buffers, so DDP's default buffer handling costs nothing.
            self.ddp_model = DDP(self.model, device_ids=[self.device] if self.device.type == "cuda" else None,
                                 find_unused_parameters=False)
        else:
            self.ddp_model = self.model

    # -- setup --------------------------------------------------------------------------------------

    def _seed(self, seed):
        """Per-rank generators for the global torch RNG (dropout), the training noise and the sampler."""
        self.seed = int(seed) if seed is not None else int(np.random.SeedSequence().generate_state(1)[0])
        streams = np.random.SeedSequence(self.seed, spawn_key=(self.rank,)).generate_state(4, np.uint64)
        torch.manual_seed(int(streams[0]))
        self.noise_gen = torch.Generator().manual_seed(int(streams[1]))
        self.schedule_sampler.seed(int(streams[2]))
        self.label_gen = torch.Generator().manual_seed(int(streams[3]))  # class dropout

    def _find_resume(self):
        found = find_resume_checkpoint(self.run_dir)
        if found:
            if self.resume_checkpoint and os.path.abspath(found) != os.path.abspath(self.resume_checkpoint):
                log.info("%s already holds checkpoints: continuing from %s instead of --resume_checkpoint %s",
                         self.run_dir, found, self.resume_checkpoint)
            return found
        if self.resume_checkpoint and not os.path.exists(self.resume_checkpoint):
            raise FileNotFoundError(f"--resume_checkpoint {self.resume_checkpoint} does not exist")
        return self.resume_checkpoint or None

    def _load_ema(self, main_checkpoint):
        for rate, params in zip(self.ema_rate, self.ema_params):
            path = find_ema_checkpoint(main_checkpoint, self.step, rate)
            if path:
                log.info("loading EMA from checkpoint: %s", path)
                self._copy_state_into(_load(path), params)
            else:
                log.info("no %s: the EMA at rate %s restarts from the model", _ema_name(rate, self.step), rate)

    def _load_opt(self, main_checkpoint):
        path = _sibling(main_checkpoint, f"opt{self.step:06d}.pt")
        if os.path.exists(path):
            log.info("loading optimizer state from checkpoint: %s", path)
            self.opt.load_state_dict(_load(path))
        else:
            log.info("no %s: the optimizer state starts afresh", os.path.basename(path))

    def _load_train_state(self, main_checkpoint):
        path = _sibling(main_checkpoint, f"train_state{self.step:06d}.pt")
        if not os.path.exists(path):
            log.info("no %s: random streams and data order start afresh", os.path.basename(path))
            return
        state = _load(path)
        self.lg_loss_scale = float(state.get("lg_loss_scale", self.lg_loss_scale))
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        ranks = state.get("ranks", [])
        if len(ranks) != self.world_size:
            log.info("%s was written by %d processes, this run has %d: random streams and data order start afresh",
                     os.path.basename(path), len(ranks), self.world_size)
            return
        mine = ranks[self.rank]
        torch.set_rng_state(mine["torch_rng"])
        self.noise_gen.set_state(mine["noise_rng"])
        if mine.get("label_rng") is not None:
            self.label_gen.set_state(mine["label_rng"])
        self.schedule_sampler.load_state_dict(mine["sampler"])
        if mine.get("data") is not None and hasattr(self.data, "load_state_dict"):
            self.data.load_state_dict(mine["data"])

    def _sync_from_rank0(self):
        if not dist_util.is_distributed():
            return
        with torch.no_grad():
            for tensor in list(self.master_params) + [p for params in self.ema_params for p in params]:
                dist.broadcast(tensor.data, src=0)
            if self.use_fp16:
                self._master_to_model()

    # -- the loop -----------------------------------------------------------------------------------

    def _finished(self):
        if self.max_steps and self.step >= self.max_steps:
            return True
        return bool(self.lr_anneal_steps) and self.step >= self.lr_anneal_steps

    def _total_steps(self):
        limits = [s for s in (self.max_steps, self.lr_anneal_steps) if s]
        return min(limits) if limits else None

    def run_loop(self):
        """Train until `max_steps` / `lr_anneal_steps`; save every `save_interval` steps and at the end."""
        self.model.train()
        bar = None
        if self.progress and self.rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=self._total_steps(), initial=self.step, desc="train", dynamic_ncols=True)
        start_step, t0 = self.step, time.time()
        try:
            while not self._finished():
                batch, cond = next(self.data)
                self.run_step(batch, cond)
                if bar is not None:
                    bar.update(1)
                if self.step % self.log_interval == 0:
                    elapsed = time.time() - t0
                    self.metrics.logkv("steps_per_sec", (self.step - start_step) / max(elapsed, 1e-9))
                    self.metrics.logkv("elapsed_s", round(elapsed, 1))
                    self.metrics.dumpkvs()
                if self.save_interval and self.step % self.save_interval == 0:
                    self.save()
            if self.last_saved_step != self.step:
                self.save()
        finally:
            if bar is not None:
                bar.close()

    def run_step(self, batch, cond):
        self._set_lr()
        self.forward_backward(batch, self.drop_labels(cond))
        if self.optimize():
            self._update_ema()
        self.step += 1
        self.metrics.logkv("step", self.step)
        self.metrics.logkv("samples", self.step * self.global_batch)
        self.metrics.logkv("lr", self.opt.param_groups[0]["lr"])

    def drop_labels(self, cond):
        """Class dropout: each label becomes the null label with probability `class_dropout_prob`, so the
        model also learns the unconditional prediction that classifier-free guidance needs."""
        if not self.class_dropout_prob or "y" not in cond:
            return cond
        labels = cond["y"]
        drop = torch.rand(labels.shape, generator=self.label_gen) < self.class_dropout_prob
        return {**cond, "y": torch.where(drop.to(labels.device), torch.full_like(labels, self.null_label), labels)}

    def _set_lr(self):
        lr = self.lr
        if self.lr_anneal_steps:
            lr = self.lr * max(0.0, 1.0 - self.step / self.lr_anneal_steps)
        for group in self.opt.param_groups:
            group["lr"] = lr

    def _autocast(self):
        if self.mixed_precision == "none":
            return torch.autocast(self.device.type, enabled=False)
        dtype = torch.bfloat16 if self.mixed_precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def forward_backward(self, batch, cond):
        for p in self.model_params:
            p.grad = None
        total = batch.shape[0]
        for start in range(0, total, self.microbatch):
            micro = batch[start:start + self.microbatch].to(self.device)
            if self.channels_last:
                micro = micro.contiguous(memory_format=torch.channels_last)
            micro_cond = {k: v[start:start + self.microbatch].to(self.device) for k, v in cond.items()}
            last = start + self.microbatch >= total
            t, weights = self.schedule_sampler.sample(micro.shape[0], self.device)
            noise = torch.randn(micro.shape, generator=self.noise_gen).to(self.device)
            compute_losses = functools.partial(self.diffusion.training_losses, self.ddp_model, micro, t,
                                               model_kwargs=micro_cond, noise=noise)
            with self._autocast():
                if last or self.ddp_model is self.model:
                    losses = compute_losses()
                else:
                    with self.ddp_model.no_sync():
                        losses = compute_losses()
            losses = {k: v.float() for k, v in losses.items()}
            if isinstance(self.schedule_sampler, LossAwareSampler):
                self.schedule_sampler.update_with_local_losses(t, losses["loss"].detach())
            loss = (losses["loss"] * weights).mean() * (micro.shape[0] / total)
            log_loss_dict(self.diffusion, t, {k: v * weights for k, v in losses.items()}, self.metrics)
            if self.use_fp16:
                (loss * 2 ** self.lg_loss_scale).backward()
            elif self.scaler is not None:
                self.scaler.scale(loss).backward()
            else:
                loss.backward()

    def optimize(self):
        """One AdamW update; False when an overflowing float16 gradient made it skip the step."""
        if self.use_fp16:
            return self._optimize_fp16()
        if self.scaler is not None:
            self.scaler.unscale_(self.opt)
            grad_norm = _grad_norm(self.master_params)
            scale = self.scaler.get_scale()
            self.scaler.step(self.opt)
            self.scaler.update()
            took = self.scaler.get_scale() >= scale
            self.metrics.logkv_mean("grad_norm", grad_norm)
            self.metrics.logkv("loss_scale", self.scaler.get_scale())
            return took
        grad_norm = _grad_norm(self.master_params)
        if not np.isfinite(grad_norm):
            raise FloatingPointError(f"non-finite gradient at step {self.step + 1}: the weights would turn to NaN "
                                     "(check the noise schedule for the number of diffusion steps, and the lr)")
        self.metrics.logkv_mean("grad_norm", grad_norm)
        self.opt.step()
        return True

    def _optimize_fp16(self):
        scale = 2 ** self.lg_loss_scale
        for model_p, master_p in zip(self.model_params, self.master_params):
            grad = model_p.grad
            master_p.grad = (torch.zeros_like(master_p) if grad is None else grad.float() / scale)
        grad_norm = _grad_norm(self.master_params)
        if not np.isfinite(grad_norm):
            self.lg_loss_scale -= 1
            log.info("found NaN/inf gradients, lowering the loss scale to 2**%.3f", self.lg_loss_scale)
            for p in self.master_params:
                p.grad = None
            return False
        self.metrics.logkv_mean("grad_norm", grad_norm)
        self.metrics.logkv("lg_loss_scale", self.lg_loss_scale)
        self.opt.step()
        self._master_to_model()
        self.lg_loss_scale += self.fp16_scale_growth
        return True

    def _master_to_model(self):
        with torch.no_grad():
            for model_p, master_p in zip(self.model_params, self.master_params):
                model_p.copy_(master_p)

    def _update_ema(self):
        with torch.no_grad():
            masters = [p.detach() for p in self.master_params]
            for rate, params in zip(self.ema_rate, self.ema_params):
                rate = ema_decay(rate, self.step, self.ema_warmup)
                torch._foreach_mul_(params, rate)
                torch._foreach_add_(params, masters, alpha=1.0 - rate)

    # -- checkpoints --------------------------------------------------------------------------------

    def params_to_state_dict(self, params):
        """A float32 state_dict of the model with `params` (master or EMA) in place of its parameters."""
        index = {id(p): i for i, p in enumerate(self.model_params)}
        state = {}
        for name, value in self.model.state_dict(keep_vars=True).items():
            tensor = params[index[id(value)]] if id(value) in index else value
            tensor = tensor.detach().cpu().clone()
            state[name] = tensor.float() if tensor.is_floating_point() else tensor
        return state

    def _copy_state_into(self, state, params):
        by_id = {id(p): i for i, p in enumerate(self.model_params)}
        missing = []
        with torch.no_grad():
            for name, value in self.model.state_dict(keep_vars=True).items():
                if id(value) not in by_id:
                    continue
                if name not in state:
                    missing.append(name)
                    continue
                params[by_id[id(value)]].copy_(state[name])
        if missing:
            raise ValueError(f"EMA checkpoint lacks {len(missing)} parameters, e.g. {', '.join(missing[:3])}")

    def _rank_state(self):
        return {"torch_rng": torch.get_rng_state(), "noise_rng": self.noise_gen.get_state(),
                "label_rng": self.label_gen.get_state(),
                "sampler": self.schedule_sampler.state_dict(),
                "data": self.data.state_dict() if hasattr(self.data, "state_dict") else None}

    def save(self):
        """Write model, EMA, optimizer and train state for the current step (rank 0 writes)."""
        ranks = dist_util.all_gather_objects(self._rank_state())
        if self.rank == 0:
            os.makedirs(self.run_dir, exist_ok=True)
            step = self.step
            log.info("saving checkpoint at step %d in %s", step, self.run_dir)
            _atomic_save(self.params_to_state_dict(self.master_params),
                         os.path.join(self.run_dir, f"model{step:06d}.pt"))
            for rate, params in zip(self.ema_rate, self.ema_params):
                _atomic_save(self.params_to_state_dict(params),
                             os.path.join(self.run_dir, _ema_name(rate, step)))
            _atomic_save(self.opt.state_dict(), os.path.join(self.run_dir, f"opt{step:06d}.pt"))
            train_state = {"step": step, "seed": self.seed, "world_size": self.world_size, "ranks": ranks,
                           "lg_loss_scale": self.lg_loss_scale,
                           "scaler": self.scaler.state_dict() if self.scaler is not None else None}
            _atomic_save(train_state, os.path.join(self.run_dir, f"train_state{step:06d}.pt"))
        self.last_saved_step = self.step
        dist_util.barrier()


# --------------------------------------------------------------------------------------------------
# Helpers


def ema_decay(rate, steps_done, warmup):
    """The EMA decay of the update that follows `steps_done` steps."""
    return min(rate, (1.0 + steps_done) / (10.0 + steps_done)) if warmup else rate


def _parse_rates(ema_rate):
    if isinstance(ema_rate, (int, float)):
        return [float(ema_rate)]
    if isinstance(ema_rate, (list, tuple)):
        return [float(r) for r in ema_rate]
    return [float(r) for r in str(ema_rate).split(",") if r.strip()]


def _grad_norm(params):
    """The L2 norm of all the gradients together (float32), read back to the host once."""
    grads = [p.grad.detach().float() for p in params if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))


def _sibling(path, name):
    return os.path.join(os.path.dirname(path), name)


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _atomic_save(obj, path):
    atomic_write(path, functools.partial(torch.save, obj))


def parse_resume_step_from_filename(filename):
    """N from `.../modelNNNNNN.pt` (0 when the name has no step)."""
    match = _STEP_FILE.search(os.path.basename(str(filename)))
    return int(match.group(1)) if match else 0


def remove_interrupted_writes(run_dir):
    """Delete the temporary files that checkpoint writes killed midway left in `run_dir` (each as large as a
    checkpoint, and never renamed into place); returns their names."""
    if not run_dir or not os.path.isdir(run_dir):
        return []
    names = sorted(name for name in os.listdir(run_dir) if is_temporary(name))
    for name in names:
        path = os.path.join(run_dir, name)
        size = os.path.getsize(path)
        remove_if_present(path)
        log.info("removed %s (%s bytes), left in %s by an interrupted checkpoint write", name, f"{size:,}", run_dir)
    return names


def find_resume_checkpoint(run_dir):
    """The latest complete `modelNNNNNN.pt` in `run_dir`: one with its train_state file, else the latest."""
    if not run_dir or not os.path.isdir(run_dir):
        return None
    steps = sorted(parse_resume_step_from_filename(p) for p in glob.glob(os.path.join(run_dir, "model*.pt"))
                   if _STEP_FILE.search(os.path.basename(p)))
    if not steps:
        return None
    complete = [s for s in steps if os.path.exists(os.path.join(run_dir, f"train_state{s:06d}.pt"))]
    step = complete[-1] if complete else steps[-1]
    return os.path.join(run_dir, f"model{step:06d}.pt")


def _ema_name(rate, step):
    return f"ema_{rate}_{step:06d}.pt"


def find_ema_checkpoint(main_checkpoint, step, rate):
    """The EMA file at `rate` beside `main_checkpoint` for `step`, or None when there is none."""
    if not main_checkpoint:
        return None
    path = _sibling(main_checkpoint, _ema_name(rate, step))
    return path if os.path.exists(path) else None


def log_loss_dict(diffusion, ts, losses, metrics=None):
    """Record the mean of each loss term, and its mean per quarter of the timesteps (`loss_q0` .. `loss_q3`)."""
    metrics = metrics or logger.get_current()
    quarters = (4 * ts.detach().cpu().numpy() // diffusion.num_timesteps).astype(int)
    for key, values in losses.items():
        values = values.detach().float().cpu().numpy()
        metrics.logkv_mean(key, float(values.mean()))
        for quarter, value in zip(quarters, values):
            metrics.logkv_mean(f"{key}_q{quarter}", float(value))
