"""The one training loop: what ``fit``, ``train_one_epoch`` and ``evaluate`` guarantee."""

import pytest
import torch
from torch import nn

from dogbreed.data.loaders import TensorBatches
from dogbreed.errors import DogbreedError
from dogbreed.train import cosine_schedule, evaluate, fit


def test_val_loss_is_a_mean_over_samples_independent_of_batch_size():
    torch.manual_seed(0)
    head = nn.Linear(16, 5)
    x, y = torch.randn(37, 16), torch.randint(0, 5, (37,))
    device = torch.device("cpu")
    losses = {bs: evaluate(head, TensorBatches(x, y, bs, shuffle=False), device=device).loss for bs in (1, 8, 29, 64)}
    expected = nn.functional.cross_entropy(head(x), y).item()
    for loss in losses.values():
        assert loss == pytest.approx(expected, rel=1e-5)

def test_early_stopping_keeps_the_best_epoch():
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    head = nn.Linear(8, 4)
    train_batches = TensorBatches(x, torch.randint(0, 4, (64,)), 8, shuffle=True)
    val_batches = TensorBatches(x, torch.randint(0, 4, (64,)), 64, shuffle=False)  # unrelated labels: overfits
    opt = torch.optim.AdamW(head.parameters(), lr=0.05)
    state = fit(head, train_batches, val_batches, epochs=50, optimizer=opt, scheduler=cosine_schedule(opt, 400, "none"),
                device=torch.device("cpu"), patience=3)
    assert state.epoch < 50
    assert state.epoch - state.best_epoch == 3
    assert state.best_val_loss == min(r["val_loss"] for r in state.history)


def test_a_diverging_fit_stops_with_one_line():
    torch.manual_seed(0)
    head = nn.Linear(8, 4)
    x = torch.randn(32, 8)
    x[5, 0] = float("inf")  # one bad input: the loss, then every weight, is NaN
    batches = TensorBatches(x, torch.randint(0, 4, (32,)), 8, shuffle=True)
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    with pytest.raises(DogbreedError, match="training diverged in epoch 1 .*lower the learning rate"):
        fit(head, batches, batches, epochs=3, optimizer=opt, scheduler=cosine_schedule(opt, 12, "none"),
            device=torch.device("cpu"))


def test_frozen_parameters_get_no_gradient_and_trained_ones_move():
    from dogbreed.model import build_model, freeze, train_mode

    torch.manual_seed(0)
    model, _ = build_model("resnet18", 3, pretrained=False)
    frozen = freeze(model, "resnet18", "layer4")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 3, (8,))
    images = [(x[:4], y[:4], torch.arange(4)), (x[4:], y[4:], torch.arange(4, 8))]  # any (x, y, index) batches
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    fit(model, images, images, epochs=1, optimizer=opt, scheduler=cosine_schedule(opt, 2),
        device=torch.device("cpu"), set_train=lambda: train_mode(model, frozen))
    for name, p in model.named_parameters():
        moved = not torch.equal(p.detach(), before[name])
        assert moved == name.startswith(("layer4.", "fc.")), name
