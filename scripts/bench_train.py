"""Benchmark: the original notebook training loop vs mnist1d_lab.train.train, same protocol, one process.

The original loop (greydanus/mnist1d notebooks/train.py, re-created): default torch.optim.Adam, `loss.item()`
every step, and at every evaluation the test loss plus numpy accuracies on the full train and test sets
(`.detach().numpy()` round trips, autograd still recording).
It runs `range(steps + 1)`, i.e. one update more than ours, exactly as the original does.

Both loops get the same weights (build_model, same seed), the same data (the oracle package's default
dataset, so this script does not depend on mnist1d_lab.data) and the paper protocol: Adam 1e-2, batch 100,
sequential batches, eval every 250 steps. The original side runs the original modules: the MLP is
models.MLP (its forward is the original's), the CNN is `OriginalConvBase` (the notebook's ConvBase,
nn.Conv1d forward) loaded with the same weights, since models.CNN trains with im2col + matmul instead.

    python scripts/bench_train.py                # 6000 steps, 1 thread, 2 repeats: a few minutes
    python scripts/bench_train.py --steps 2000 --threads 2

The last line is `train speedup mlp: <r>x, cnn: <r>x` (original time / our time).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: waiting threads sleep (mnist1d_lab/cpu.py)

import argparse
import time
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from mnist1d_lab import cpu
from mnist1d_lab.models import build_model
from mnist1d_lab.train import train


class OriginalConvBase(nn.Module):
    """The original notebooks/models.py ConvBase: three nn.Conv1d + ReLU, flatten (B, C, L), linear."""

    def __init__(self, output_size: int = 10, channels: int = 25, linear_in: int = 125):
        super().__init__()
        self.conv1 = nn.Conv1d(1, channels, 5, stride=2, padding=1)
        self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.linear = nn.Linear(linear_in, output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, 1, x.shape[-1])
        h1 = self.conv1(x).relu()
        h2 = self.conv2(h1).relu()
        h3 = self.conv3(h2).relu()
        h3 = h3.view(h3.shape[0], -1)  # flatten the conv features
        return self.linear(h3)


def original_model(name: str, seed: int) -> nn.Module:
    """The original loop's model with build_model(name, seed)'s weights (CNN: the original ConvBase)."""
    model = build_model({"name": name}, seed)
    if name != "cnn":
        return model
    orig = OriginalConvBase()
    names = {"convs.0": "conv1", "convs.1": "conv2", "convs.2": "conv3", "out": "linear"}
    orig.load_state_dict({names[k.rsplit(".", 1)[0]] + "." + k.rsplit(".", 1)[1]: v
                          for k, v in model.state_dict().items()})
    return orig


def original_accuracy(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    """The original's accuracy(): argmax on the host in numpy, percent."""
    preds = model(inputs).argmax(-1).cpu().detach().numpy()
    targets = targets.cpu().numpy().astype(np.float32)
    return 100 * sum(preds == targets) / len(targets)


def original_train(model: nn.Module, data: SimpleNamespace, steps: int, batch_size: int = 100,
                   lr: float = 1e-2, eval_every: int = 250) -> dict:
    """The original train_model loop (minus printing and deepcopy checkpoints)."""
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=0)
    results = {"train_losses": [], "test_losses": [], "train_acc": [], "test_acc": []}
    for step in range(steps + 1):
        bix = (step * batch_size) % len(data.x)
        x, y = data.x[bix:bix + batch_size], data.y[bix:bix + batch_size]
        loss = criterion(model(x), y)
        results["train_losses"].append(loss.item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if eval_every > 0 and step % eval_every == 0:
            test_loss = criterion(model(data.x_test), data.y_test)
            results["test_losses"].append(test_loss.item())
            results["train_acc"].append(original_accuracy(model, data.x, data.y))
            results["test_acc"].append(original_accuracy(model, data.x_test, data.y_test))
    return results


def oracle_data() -> SimpleNamespace:
    """The original package's default dataset (4000 train / 1000 test) as torch tensors."""
    from mnist1d.data import get_dataset_args, make_dataset

    d = make_dataset(get_dataset_args())
    f = lambda a: torch.as_tensor(a).float()  # noqa: E731
    i = lambda a: torch.as_tensor(a).long()  # noqa: E731
    return SimpleNamespace(x=f(d["x"]), y=i(d["y"]), x_test=f(d["x_test"]), y_test=i(d["y_test"]))


def _fmt(ts: list[float]) -> str:
    return "[" + ", ".join(f"{t:.2f}" for t in ts) + "] s"


def main() -> None:
    """Run both loops for the MLP and the CNN and print times, accuracies and the speedups."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=2, help="runs of each loop; the fastest counts")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = oracle_data()
    cfg = {"optimizer": "adam", "lr": 1e-2, "batch_size": 100, "steps": args.steps, "eval_every": 250,
           "batch_order": "sequential", "loss": "cross_entropy"}

    # Warm up both paths (the original's first torch.optim.Adam imports torch._dynamo, first conv initialises oneDNN): not timed.
    for name in ("mlp", "cnn"):
        original_train(original_model(name, args.seed), data, steps=20, eval_every=10)
        train(build_model({"name": name}, args.seed), data, {**cfg, "steps": 20, "eval_every": 10},
              args.seed, progress=False)

    # Alternate which loop runs first and keep the fastest repeat: the machine is shared and noisy.
    speedups = {}
    for name in ("mlp", "cnn"):
        times: dict[str, list[float]] = {"original": [], "ours": []}
        for rep in range(args.repeats):
            for which in (("original", "ours") if rep % 2 == 0 else ("ours", "original")):
                model = (original_model(name, args.seed) if which == "original"
                         else build_model({"name": name}, args.seed))
                t0 = time.perf_counter()
                if which == "original":
                    original_train(model, data, steps=args.steps)  # its last eval may predate the end
                    acc_orig = original_accuracy(model, data.x_test, data.y_test)
                else:
                    acc_ours = 100 * train(model, data, cfg, args.seed, progress=False).summary["final_test_acc"]
                times[which].append(time.perf_counter() - t0)
        t_orig, t_ours = min(times["original"]), min(times["ours"])
        speedups[name] = t_orig / t_ours
        print(f"{name}: original {t_orig:6.2f} s ({args.steps + 1} updates), final test acc {acc_orig:.1f} % | "
              f"ours {t_ours:6.2f} s ({args.steps} updates), final test acc {acc_ours:.1f} % | "
              f"{speedups[name]:.2f}x  (all times: original {_fmt(times['original'])}, ours {_fmt(times['ours'])})",
              flush=True)
    print(f"threads {args.threads}, repeats {args.repeats} (fastest kept), torch {torch.__version__}, "
          f"steps {args.steps}")
    print(f"train speedup mlp: {speedups['mlp']:.2f}x, cnn: {speedups['cnn']:.2f}x")


if __name__ == "__main__":
    cpu.configure_process()  # as the lab's processes: malloc keeps freed memory, fast exit
    main()
