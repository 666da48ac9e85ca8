"""What ``nnunet_pdddpm_demo`` runs on each machine: dataset, trainers, and the sampling of both diffusion methods.

``cpu`` fits in about a quarter of an hour on two CPU cores: a reduced dataset (a 60 mm slab at
2.5 mm in-plane, 16 training and 4 test cases), narrow networks trained for a few minutes, and
DDIM with a handful of steps instead of the paper's ancestral DDPM. ``gpu`` follows the paper:
the full-size dataset, T'=300, an ensemble of 5, DDPM with every step, vanilla DDPM with all 1000
steps. ``tiny`` exists for the tests (seconds per stage).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from nnunet_pdddpm.demo.dataset import PROFILES, DemoProfile

CPU_DATASET = PROFILES["cpu"]


@dataclass(frozen=True)
class DemoRunProfile:
    """One demo set-up. ``pd_ddpm`` and ``vanilla`` are :class:`SamplingSettings` fields for the two methods."""

    name: str
    dataset: DemoProfile | str
    dataset_id: int
    dataset_name: str
    pre_segmenter_trainer: str
    denoiser_trainer: str
    pd_ddpm: dict = field(default_factory=dict)
    vanilla: dict = field(default_factory=dict)
    device: str = "cpu"
    configuration: str = "2d"
    fold: int = 0
    max_batch_size: int = 16
    note: str = ""


RUN_PROFILES: dict[str, DemoRunProfile] = {
    "tiny": DemoRunProfile(
        "tiny", "tiny", 985, "PDDDPMDemoTiny", "PDDDPMAttUNetTrainer_tiny", "PDDDPMTrainer_tiny",
        pd_ddpm={"t_prime": 20, "ensemble_size": 2, "sampler": "ddim", "steps": 2},
        vanilla={"ensemble_size": 2, "sampler": "ddim", "steps": 2},
        note="tiny profile (tests): a few training iterations; the numbers mean nothing."),
    "cpu": DemoRunProfile(
        "cpu", CPU_DATASET, 986, "PDDDPMDemoCPU", "PDDDPMAttUNetTrainer_demoCPU", "PDDDPMTrainer_demoCPU",
        pd_ddpm={"t_prime": None, "ensemble_size": 3, "sampler": "ddim", "steps": 5},
        vanilla={"ensemble_size": 3, "sampler": "ddim", "steps": 10},
        note="CPU profile: minutes of training, T' chosen by the denoiser's validation sweep, deterministic DDIM "
             "with 5 steps instead of the paper's ancestral DDPM (T'=300, ensemble 5). "
             "Use -profile gpu on a GPU for the paper's settings."),
    "gpu": DemoRunProfile(
        "gpu", "gpu", 987, "PDDDPMDemo", "PDDDPMAttUNetTrainer_demoGPU", "PDDDPMTrainer_demoGPU",
        pd_ddpm={"t_prime": 300, "ensemble_size": 5, "sampler": "ddpm", "steps": None},
        vanilla={"ensemble_size": 5, "sampler": "ddpm", "steps": None},
        device="cuda", max_batch_size=64,
        note="GPU profile: the paper's sampling (T'=300, ensemble 5, DDPM; vanilla DDPM with all 1000 steps)."),
}
