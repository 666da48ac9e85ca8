import numpy as np
import pytest
import torch

from nnunet_pdddpm.checkpoints import load_checkpoint_safe, save_checkpoint_atomic, to_safe_types
from nnunet_pdddpm.errors import PDDDPMUserError
from nnunet_pdddpm.trainers.ema import EMA


class _Payload:
    """Unpickling this would create a file: a harmless stand-in for code execution."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (Path(self.marker),))


def test_crafted_checkpoint_is_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"network_weights": {}, "x": _Payload(str(marker))}, tmp_path / "evil.pth")
    with pytest.raises(PDDDPMUserError, match="cannot be loaded safely"):
        load_checkpoint_safe(tmp_path / "evil.pth")
    assert not marker.exists()


def test_numpy_values_become_safe_and_round_trip(tmp_path):
    ckpt = {"logging": {"mean_fg_dice": [np.float32(0.5), np.float64(0.25)], "arr": np.arange(3)},
            "w": torch.ones(2), "dev": torch.device("cpu"), "t": (1, np.int64(2))}
    save_checkpoint_atomic(ckpt, tmp_path / "c.pth")
    loaded = torch.load(tmp_path / "c.pth", weights_only=True)
    assert loaded["logging"] == {"mean_fg_dice": [0.5, 0.25], "arr": [0, 1, 2]}
    assert loaded["t"] == (1, 2) and torch.equal(loaded["w"], torch.ones(2))
    assert to_safe_types(np.float32(1.5)) == 1.5


def test_failed_save_leaves_no_file(tmp_path):
    with pytest.raises(Exception):
        save_checkpoint_atomic({"bad": lambda: None}, tmp_path / "c.pth")
    assert list(tmp_path.iterdir()) == []


def test_missing_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(PDDDPMUserError, match="does not exist"):
        load_checkpoint_safe(tmp_path / "nope.pth")


def test_ema_warmup_and_update():
    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = EMA(model, decay=0.999)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # n=0: decay 1/10
    torch.testing.assert_close(ema.shadow.weight, torch.full((1, 2), 0.9))
    ema.update(model)  # n=1: decay 2/11
    torch.testing.assert_close(ema.shadow.weight, torch.full((1, 2), 1 - 0.1 * 2 / 11))
    state = ema.state_dict()
    other = EMA(torch.nn.Linear(2, 1, bias=False))
    other.load_state_dict(state)
    assert other.num_updates == 2 and torch.equal(other.shadow.weight, ema.shadow.weight)


def test_concurrent_atomic_writers_do_not_remove_each_others_folder(tmp_path):
    import time
    from concurrent.futures import ThreadPoolExecutor

    from nnunet_pdddpm.io_utils import atomic_path

    def write(i):
        with atomic_path(tmp_path / f"f{i}.txt") as tmp:
            time.sleep(0.002)  # a writer that computes before it opens the file (SimpleITK, np.savez)
            with open(tmp, "w") as f:
                f.write(str(i))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(400)))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"f{i}.txt" for i in range(400))
