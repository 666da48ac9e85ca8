"""nnunet-pdddpm: PD-DDPM (pre-segmentation diffusion sampling) as an nnU-Net v2 plugin."""
from importlib.metadata import PackageNotFoundError, version

from packaging.version import Version

__version__ = "0.2.5"
MIN_NNUNETV2 = "2.8.1"


def _check_nnunetv2() -> None:
    try:
        found = version("nnunetv2")
    except PackageNotFoundError:
        raise ImportError("nnunet_pdddpm needs nnunetv2>=2.8.1; install it with: pip install 'nnunetv2>=2.8.1,<2.9'")
    if Version(found) < Version(MIN_NNUNETV2):
        raise ImportError(f"nnunet_pdddpm needs nnunetv2>={MIN_NNUNETV2} but nnunetv2 {found} is installed; "
                          f"upgrade with: pip install 'nnunetv2>={MIN_NNUNETV2},<2.9'")


_check_nnunetv2()


def __getattr__(name: str):
    # trainers import all of nnU-Net and torch: load them on first use only
    import importlib

    trainers = importlib.import_module("nnunet_pdddpm.trainers")

    if name in trainers.TRAINER_NAMES:
        return getattr(trainers, name)
    raise AttributeError(f"module 'nnunet_pdddpm' has no attribute {name!r}")


# the main classes; every name in nnunet_pdddpm.trainers.TRAINER_NAMES (short variants too) resolves lazily
__all__ = ["PDDDPMAttUNetTrainer", "PDDDPMTrainer", "PDDDPMTrainer_paper"]  # noqa: F822  (resolved by __getattr__)
