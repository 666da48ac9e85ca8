"""Seeded training: the same ``nnunet_pdddpm_seed`` gives the same initial weights and the same augmented batches."""
import pytest
import torch
from conftest import make_trainer

from nnunet_pdddpm.errors import PDDDPMUserError
from nnunet_pdddpm.trainers.seeding import SEED_VARIABLE, training_seed


def _start(nnunet_root, monkeypatch, seed: str | None):
    from nnunet_pdddpm import PDDDPMAttUNetTrainer_tiny

    if seed is None:
        monkeypatch.delenv(SEED_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(SEED_VARIABLE, seed)
    trainer = make_trainer(nnunet_root, PDDDPMAttUNetTrainer_tiny, monkeypatch)  # one augmentation worker
    weights = [p.detach().clone() for p in trainer.network.parameters()]
    train, val = trainer.get_dataloaders()
    batches = [next(train)["data"].clone() for _ in range(2)]
    for loader in (train, val):
        loader._finish()
    return weights, batches


def test_same_seed_same_weights_and_batches_other_seed_differs(nnunet_root, monkeypatch):
    w1, b1 = _start(nnunet_root, monkeypatch, "7")
    w2, b2 = _start(nnunet_root, monkeypatch, "7")
    w3, b3 = _start(nnunet_root, monkeypatch, "8")
    assert all(torch.equal(x, y) for x, y in zip(w1, w2))
    assert all(torch.equal(x, y) for x, y in zip(b1, b2))  # worker processes seeded: identical augmentation
    assert not all(torch.equal(x, y) for x, y in zip(w1, w3))
    assert not torch.equal(b1[0], b3[0])


def test_unset_seed_leaves_training_unseeded_and_bad_values_are_refused(monkeypatch):
    monkeypatch.delenv(SEED_VARIABLE, raising=False)
    assert training_seed() is None
    monkeypatch.setenv(SEED_VARIABLE, " 12 ")
    assert training_seed() == 12
    for bad in ("abc", "-1", str(2 ** 31)):
        monkeypatch.setenv(SEED_VARIABLE, bad)
        with pytest.raises(PDDDPMUserError, match=SEED_VARIABLE):
            training_seed()
