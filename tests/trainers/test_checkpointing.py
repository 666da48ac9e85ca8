from pathlib import Path

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


def test_a_writer_finishing_while_another_computes_keeps_the_others_file(tmp_path):
    from nnunet_pdddpm.io_utils import atomic_path

    with atomic_path(tmp_path / "slow.txt") as slow:  # computes before it opens its file (SimpleITK, np.savez)
        with atomic_path(tmp_path / "fast.txt") as fast:
            Path(fast).write_text("fast")
        # the fast writer has renamed its file and tried to remove the shared partial folder
        Path(slow).write_text("slow")
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"fast.txt": "fast", "slow.txt": "slow"}


def test_partial_folder_removed_between_mkdir_and_file_creation_is_made_again(tmp_path, monkeypatch):
    from nnunet_pdddpm.io_utils import PARTIAL_FOLDER, atomic_path

    real_touch = Path.touch
    interleaved = []

    def touch_after_another_writer(path, *args, **kwargs):
        # the other writer runs from start to end between this writer's mkdir and its file creation
        if path.name.endswith("slow.txt") and not interleaved:
            interleaved.append(path)
            with atomic_path(tmp_path / "fast.txt") as fast:
                Path(fast).write_text("fast")
            assert not (tmp_path / PARTIAL_FOLDER).exists()  # it removed the folder this writer just made
        return real_touch(path, *args, **kwargs)

    monkeypatch.setattr(Path, "touch", touch_after_another_writer)
    with atomic_path(tmp_path / "slow.txt") as slow:
        Path(slow).write_text("slow")
    assert interleaved
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"fast.txt": "fast", "slow.txt": "slow"}
