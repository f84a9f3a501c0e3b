"""``python -m sr_ablate.bench``: sr_ablate's training path against a bare PyTorch loop.

Both train the same model on the same batch shape in one process, in alternating rounds so
that drift of the machine hits both alike:
- bare: fwd + bwd + Adam on one batch already in memory;
- sr_ablate: patch sampling from the built-in photos + ``fit`` + logging every 10 steps
  into a real sqlite MLflow store (evaluation off: it is not part of a training step).
Prints it/s of each and their ratio. Figures are printed, not asserted.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch


def bare_steps(model, optimizer, loss_fn, lq, gt, steps: int) -> float:
    t = time.perf_counter()
    for _ in range(steps):
        loss = loss_fn(model(lq), gt)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    loss.item()
    return steps / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    from sr_ablate import data, tracking
    from sr_ablate.models import SRResNet
    from sr_ablate.train import fit

    ap = argparse.ArgumentParser(prog="python -m sr_ablate.bench", description=__doc__)
    ap.add_argument("--blocks", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--patch", type=int, default=24)
    ap.add_argument("--steps", type=int, default=20, help="steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    scale = 2
    torch.manual_seed(0)
    model = SRResNet(blocks=args.blocks, scale=scale)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.MSELoss()
    lq = torch.rand(args.batch, 3, args.patch, args.patch)
    gt = torch.rand(args.batch, 3, args.patch * scale, args.patch * scale)
    bare_steps(model, optimizer, loss_fn, lq, gt, 3)  # warm-up: kernel selection, allocator

    class _Cfg:  # the data node of the built-in set
        name = "builtin"
        color = "rgb"
    train, _ = data.build(_Cfg, scales=[scale], patch_size=args.patch)
    batches = data.batches(train, patch_size=args.patch, batch_size=args.batch, seed=0)
    bare, full = [], []
    with tempfile.TemporaryDirectory() as tmp:
        uri = tracking.store_uri(None, tmp)
        with tracking.run(uri, "bench", params={"bench": 1}, tags={}) as log:
            for _ in range(args.rounds):
                bare.append(bare_steps(model, optimizer, loss_fn, lq, gt, args.steps))
                t = time.perf_counter()
                fit(model, batches, optimizer, steps=args.steps, loss_fn=loss_fn,
                    log_fn=log.log_metrics, log_every=10, progress=False)
                full.append(args.steps / (time.perf_counter() - t))
    b, f = max(bare), max(full)  # best round of each: least disturbed by the machine
    print(f"SRResNet-{args.blocks} x{scale}, batch {args.batch} x {args.patch}^2 LR patches, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"  bare loop (data in memory): {b:.3f} it/s   rounds: "
          + ", ".join(f"{x:.3f}" for x in bare))
    print(f"  sr_ablate (data+fit+log):   {f:.3f} it/s   rounds: "
          + ", ".join(f"{x:.3f}" for x in full))
    print(f"  ratio sr_ablate / bare:     {f / b:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
