"""Run by tests/test_torchrun.py under ``torchrun --nproc-per-node 2``: dogbreed's own training step
and evaluation under DDP, each against one process doing the same work on the whole data, with
what rank 0 measures written to the JSON file named by argv[1].

1. PyTorch's DDP equivalence check: DDP over each rank's slice of every batch ends with the same
   parameters as one process stepping on the whole batches.
2. Evaluation over unpadded shards (7 images on 2 ranks): the same loss, hits, count, and per-image
   logits, targets and embeddings in the split's order as one process over all 7.
3. A rank whose part of a batch held no readable image (the loader gives None) still takes the
   step: afterwards every rank holds the same parameters.
4. Global batches that do not split evenly: 22 images in batches of 7 dealt over 2 ranks (4+3
   three times, then 1+0) through the loader's ``RankBatches``: every step's gradient, and the
   parameters after plain SGD, are one process's on the same whole batches.
"""

import copy
import json
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dogbreed import distributed
from dogbreed.data.loaders import image_loader
from dogbreed.hooks import NoHooks
from dogbreed.train import evaluate, train_one_epoch


class Indexed(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i], i


def network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 5))


def steps(model: nn.Module, batches: list, epochs: int, ranks: distributed.Ranks = distributed.ALONE) -> nn.Module:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    for _ in range(epochs):
        train_one_epoch(model, batches, optimizer, scheduler, device=torch.device("cpu"), ranks=ranks)
    return model


class Gradients(NoHooks):
    """Each step's gradient as the optimizer gets it (under DDP: after the ranks' exchange)."""

    def __init__(self, model: nn.Module):
        self.model, self.seen = model, []

    def after_backward(self, loss: torch.Tensor) -> None:
        self.seen.append(torch.cat([p.grad.flatten() for p in self.model.parameters()]).clone())


def dealt(data: Dataset, batches: distributed.RankBatches, ranks: distributed.Ranks = distributed.ALONE):
    """One epoch of plain SGD (a wrongly weighted loss shows in the step, which Adam would hide) over
    ``batches``: each step's gradient, the parameters after it, and each step's images on this rank."""
    model = network() if not ranks.joined else ranks.wrap(network(), torch.device("cpu"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    gradients = Gradients(model)
    batches.set_epoch(1)
    loader = image_loader(data, 1, shuffle=True, workers=0, device=torch.device("cpu"), batches=batches)
    train_one_epoch(model, loader, optimizer, scheduler, device=torch.device("cpu"), hooks=gradients, ranks=ranks)
    return torch.stack(gradients.seen), torch.cat([p.detach().flatten() for p in model.parameters()]), \
        [len(part) for part in batches]


def main(out: str) -> None:
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(24, 3, 12, 12, generator=generator), torch.randint(0, 5, (24,), generator=generator)
    whole = [(x[i : i + 8], y[i : i + 8], torch.arange(i, i + 8)) for i in range(0, 24, 8)]
    # One process first, before this one joins the others (joined, every pass sums over the ranks).
    alone = steps(network(), whole, epochs=3)
    model = copy.deepcopy(alone).eval()
    data = Indexed(x[:7], y[:7])
    one = evaluate(model, DataLoader(data, batch_size=3), device=torch.device("cpu"), keep_predictions=True,
                   features_of=model[4])
    uneven = Indexed(x[:22], y[:22])
    whole_grads, whole_params, _ = dealt(uneven, distributed.RankBatches(22, 7, rank=0, world=1, seed=5))

    group = distributed.from_environment(distributed.DDP)
    group.join(torch.device("cpu"))
    rank, ranks = group.rank, group.world
    mine = [(bx[rank::ranks], by[rank::ranks], bi[rank::ranks]) for bx, by, bi in whole]
    ddp = group.wrap(network(), torch.device("cpu"))
    steps(ddp, mine, epochs=3, ranks=group)
    params = max((a - b).abs().max().item() for a, b in zip(alone.parameters(), ddp.module.parameters()))
    moved = max((a - b).abs().max().item() for a, b in zip(network().parameters(), alone.parameters()))
    shared = evaluate(model, DataLoader(group.shard(data), batch_size=3), device=torch.device("cpu"),
                      keep_predictions=True, features_of=model[4], ranks=group)
    holes = [None if (rank == 1 and i == 1) else batch for i, batch in enumerate(mine)]
    skipped = steps(group.wrap(network(), torch.device("cpu")), holes, epochs=1, ranks=group).module
    flat = torch.cat([p.detach().flatten() for p in skipped.parameters()])
    every = group.gathered(flat)
    grads, params_dealt, parts = dealt(uneven, group.train_batches(22, 7, seed=5), group)
    shares = group.gathered(parts)
    if rank == 0:
        report = {
            "shares": shares, "uneven_steps": len(grads), "whole_steps": len(whole_grads),
            "uneven_grad_max_diff": (grads - whole_grads).abs().max().item(),
            "uneven_grad_size": whole_grads.abs().max().item(),
            "uneven_param_max_diff": (params_dealt - whole_params).abs().max().item(),
            "uneven_moved": (whole_params - torch.cat([p.flatten() for p in network().parameters()])).abs().max().item(),
            "skipped_ranks_diff": max((theirs - flat).abs().max().item() for theirs in every),
            "skipped_moved": (flat - torch.cat([p.flatten() for p in network().parameters()])).abs().max().item(),
            "ranks": ranks, "param_max_diff": params, "params_moved": moved,
            "one": {"loss": one.loss, "accuracy": one.accuracy, "top5": one.top5, "n": one.n},
            "shared": {"loss": shared.loss, "accuracy": shared.accuracy, "top5": shared.top5, "n": shared.n},
            "logits_max_diff": (one.logits - shared.logits).abs().max().item(),
            "features_max_diff": (one.features - shared.features).abs().max().item(),
            "same_targets": torch.equal(one.targets, shared.targets),
            "indices": shared.indices.tolist(),
        }
        with open(out, "w", encoding="utf-8") as f:
            json.dump(report, f)
    group.close()


if __name__ == "__main__":
    main(sys.argv[1])
