"""Training the testbeds' feature networks (`evaluations.digits_features`, `evaluations.fashion_features`,
`evaluations.fashion_resnet_features`).

One recipe for all: AdamW under a fixed one-cycle schedule, cross-entropy on augmented training batches,
the held-out images scored once at the end (nothing is chosen on them). The scripts
`scripts/train_digits_features.py` and `scripts/train_fashion_features.py` (`--arch plain` or `resnet`) are thin
CLIs that give the data, the augmentation and the defaults; their flags are declared in
guided_diffusion/testbeds/feature_trainer_flags.py (this package may not use the library's command-line layer).
"""

import logging
import os
import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from guided_diffusion.runtime.files import atomic_write

log = logging.getLogger(__name__)


@torch.no_grad()
def accuracy(net, x, y, batch_size=1000):
    """The fraction of images `x` [N, 3, H, W] that `net` (put in eval mode) classifies as labels `y` [N]."""
    net.eval()
    hits = sum(int((net(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
               for i in range(0, len(x), batch_size))
    return hits / len(x)


def train_feature_net(net_class, train_set, held_set, augment, epochs, batch_size, lr, weight_decay, seed=0,
                      log_every=1, progress=False):
    """A `net_class()` trained on `train_set` and its (train, held-out) accuracies.

    The sets are (float images [N, 3, H, W] in [-1, 1], int64 labels [N]). `augment(x, generator)` perturbs a
    batch; the torch seed fixes the initialisation, a generator seeded alike the data order and augmentation.
    The mean loss is logged every `log_every` epochs (with the training accuracy when `log_every > 1`) and
    after the last; `progress` shows a progress bar per epoch.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    (x_train, y_train), (x_held, y_held) = train_set, held_set
    net = net_class()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = len(x_train) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(x_train), generator=generator)
        total = 0.0
        steps = range(steps_per_epoch)
        if progress:
            steps = tqdm(steps, desc=f"epoch {epoch + 1}/{epochs}", leave=False, mininterval=10)
        for k in steps:
            idx = order[k * batch_size:(k + 1) * batch_size]
            loss = F.cross_entropy(net(augment(x_train[idx], generator)), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        if (epoch + 1) % log_every == 0 or epoch == epochs - 1:
            message = f"epoch {epoch + 1:3d}  loss {total / steps_per_epoch:.4f}"
            if log_every > 1:
                message += f"  train acc {accuracy(net, x_train, y_train):.4f}"
            log.info(message)
    net.eval()
    return net, accuracy(net, x_train, y_train), accuracy(net, x_held, y_held)


def save_weights(net, path, dtype=torch.float32):
    """Write the state dict of `net` to `path` in one step, floating-point tensors as `dtype`."""
    state = {k: (v.detach().to(dtype) if v.is_floating_point() else v).contiguous()
             for k, v in net.state_dict().items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda f: torch.save(state, f))
    log.info("wrote %s (%.0f kB, %s parameters)", path, os.path.getsize(path) / 1e3,
             f"{sum(p.numel() for p in net.parameters()):,}")


def run_trainer(args, net_class, load_sets, augment, held_name, dtype=torch.float32, **train_options):
    """Train as the parsed trainer flags `args` say and write the weights to `args.out` (ValueError for a batch
    larger than the training set).

    `load_sets(args)` gives the (train, held-out) sets of `train_feature_net`; `held_name` names the held-out
    split in the log; `dtype` is the precision the weights are stored in.
    """
    start = time.time()
    train_set, held_set = load_sets(args)
    if args.batch_size > len(train_set[1]):
        raise ValueError(f"--batch_size {args.batch_size} is more than the {len(train_set[1])} training images; "
                         "use a smaller batch")
    net, train_acc, held_acc = train_feature_net(net_class, train_set, held_set, augment, args.epochs,
                                                 args.batch_size, args.lr, args.weight_decay, args.seed,
                                                 **train_options)
    log.info("train accuracy %.4f, %s accuracy %.4f (%.0f s)", train_acc, held_name, held_acc, time.time() - start)
    save_weights(net, args.out, dtype)
    return 0  # the exit status of the console script
