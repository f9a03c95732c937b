"""Train the digits feature network (evaluations/digits_features.py) on the digits training split.

    python scripts/train_digits_features.py --out checkpoints/digits_features.pt

Only the 1,500 training images are used for fitting; the 297 held-out images are scored at the end (and
are never used to choose anything: the schedule is fixed). Augmentation: random shifts of up to one pixel
and random contrast, so generated digits that are slightly off-centre or dim are still read well.
"""

import argparse
import logging
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from evaluations.digits_features import INPUT_SIZE, DigitsFeatureNet, preprocess  # noqa: E402
from guided_diffusion.digits import load_digits_split  # noqa: E402
from guided_diffusion.file_io import atomic_write  # noqa: E402
from guided_diffusion.log_setup import log_to_console  # noqa: E402

log = logging.getLogger("scripts.train_digits_features")


def augment(x, generator):
    """Shift by up to one pixel (zero padding = background) and scale the contrast by 0.7..1.0."""
    n = x.shape[0]
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    offsets = torch.randint(0, 3, (n, 2), generator=generator)
    shifted = torch.stack([padded[i, :, dy:dy + INPUT_SIZE, dx:dx + INPUT_SIZE]
                           for i, (dy, dx) in enumerate(offsets.tolist())])
    contrast = 0.7 + 0.3 * torch.rand(n, 1, 1, 1, generator=generator)
    return (shifted + 1.0) * contrast - 1.0


def accuracy(net, x, y):
    net.eval()
    with torch.no_grad():
        return float((net(x).argmax(dim=1) == y).float().mean())


def train(epochs=40, batch_size=64, lr=2e-3, weight_decay=1e-4, seed=0):
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    train_images, train_labels = load_digits_split(INPUT_SIZE, "train")
    held_images, held_labels = load_digits_split(INPUT_SIZE, "heldout")
    x_train, y_train = preprocess(train_images), torch.from_numpy(train_labels)
    x_held, y_held = preprocess(held_images), torch.from_numpy(held_labels)

    net = DigitsFeatureNet()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = len(x_train) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(x_train), generator=generator)
        total = 0.0
        for k in range(steps_per_epoch):
            idx = order[k * batch_size:(k + 1) * batch_size]
            loss = F.cross_entropy(net(augment(x_train[idx], generator)), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        if (epoch + 1) % 5 == 0 or epoch == epochs - 1:
            log.info(f"epoch {epoch + 1:3d}  loss {total / steps_per_epoch:.4f}  "
                     f"train acc {accuracy(net, x_train, y_train):.4f}")
    net.eval()
    return net, accuracy(net, x_train, y_train), accuracy(net, x_held, y_held)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="checkpoints/digits_features.pt")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight_decay", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    log_to_console()
    start = time.time()
    net, train_acc, held_acc = train(args.epochs, args.batch_size, args.lr, args.weight_decay, args.seed)
    log.info(f"train accuracy {train_acc:.4f}, held-out accuracy {held_acc:.4f} "
             f"({time.time() - start:.0f} s)")
    state = {k: v.detach().float().contiguous() for k, v in net.state_dict().items()}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    atomic_write(args.out, lambda f: torch.save(state, f))
    log.info(f"wrote {args.out} ({os.path.getsize(args.out) / 1e3:.0f} kB, "
             f"{sum(v.numel() for v in state.values()):,} parameters)")
    return 0  # the exit status of the console script


if __name__ == "__main__":
    raise SystemExit(main())
