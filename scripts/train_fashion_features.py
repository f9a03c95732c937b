"""Train the Fashion-MNIST feature network (evaluations/fashion_features.py) on the 60,000 training images.

    python scripts/train_fashion_features.py --out checkpoints/fashion_features.pt

The 10,000 test images are scored at the end only (the schedule is fixed, nothing is chosen on them).
Augmentation: horizontal flips and shifts of up to two pixels, so generated garments that are mirrored or
slightly off-centre are still read well. The weights are stored in float16 (half the size; the features
are computed in float32).
"""

import argparse
import logging
import os
import sys
import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from evaluations.fashion_features import INPUT_SIZE, FashionFeatureNet, preprocess  # noqa: E402
from guided_diffusion.fashion import load_fashion_split  # noqa: E402
from guided_diffusion.file_io import atomic_write  # noqa: E402
from guided_diffusion.log_setup import log_to_console  # noqa: E402

log = logging.getLogger("scripts.train_fashion_features")

SHIFT = 2


def augment(x, generator):
    """Random horizontal flip and a shift of up to SHIFT pixels (padding with background -1)."""
    n = x.shape[0]
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    padded = F.pad(x, (SHIFT,) * 4, value=-1.0)
    dy, dx = torch.randint(0, 2 * SHIFT + 1, (2,), generator=generator).tolist()  # one shift per batch: cheap
    return padded[:, :, dy:dy + INPUT_SIZE, dx:dx + INPUT_SIZE]


@torch.no_grad()
def accuracy(net, x, y, batch_size=1000):
    net.eval()
    hits = sum(int((net(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
               for i in range(0, len(x), batch_size))
    return hits / len(x)


def train(data_dir=None, epochs=12, batch_size=128, lr=3e-3, weight_decay=5e-4, seed=0):
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    train_images, train_labels = load_fashion_split("train", data_dir)
    test_images, test_labels = load_fashion_split("test", data_dir)
    x_train, y_train = preprocess(train_images[..., :1]), torch.from_numpy(train_labels)
    x_test, y_test = preprocess(test_images[..., :1]), torch.from_numpy(test_labels)

    net = FashionFeatureNet()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = len(x_train) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(x_train), generator=generator)
        total = 0.0
        for k in tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{epochs}", leave=False, mininterval=10):
            idx = order[k * batch_size:(k + 1) * batch_size]
            loss = F.cross_entropy(net(augment(x_train[idx], generator)), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        log.info(f"epoch {epoch + 1:3d}  loss {total / steps_per_epoch:.4f}")
    net.eval()
    return net, accuracy(net, x_train, y_train), accuracy(net, x_test, y_test)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default="checkpoints/fashion_features.pt", help="where the weights go")
    parser.add_argument("--data_dir", default=None, help="folder of the idx files (default: Debian's)")
    parser.add_argument("--epochs", type=int, default=12, help="passes over the training images")
    parser.add_argument("--batch_size", type=int, default=128, help="images per step")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (one-cycle schedule)")
    parser.add_argument("--weight_decay", type=float, default=5e-4, help="AdamW weight decay")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initialisation and data order")
    args = parser.parse_args(argv)
    log_to_console()
    start = time.time()
    net, train_acc, test_acc = train(args.data_dir, args.epochs, args.batch_size, args.lr, args.weight_decay,
                                     args.seed)
    log.info(f"train accuracy {train_acc:.4f}, test accuracy {test_acc:.4f} ({time.time() - start:.0f} s)")
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in net.state_dict().items()}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    atomic_write(args.out, lambda f: torch.save(state, f))
    log.info(f"wrote {args.out} ({os.path.getsize(args.out) / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
