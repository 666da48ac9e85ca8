"""What ``nnunet_pdddpm_demo`` runs on each machine: dataset, trainers, and the sampling of both diffusion methods.

``cpu`` takes about 6 minutes on two idle CPU cores: a reduced dataset (a 60 mm slab at
2.5 mm in-plane, 16 training and 4 test cases), a narrow plain nnU-Net trained for a few minutes and refined by
``PDDDPMTrainer``'s recipe, DDIM with a handful of steps. ``gpu`` follows the paper (its recipe and sampling):
the full-size dataset, T'=300, an ensemble of 5, DDPM with every step, vanilla DDPM with all 1000
steps. ``tiny`` exists for the tests (seconds per stage).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from nnunet_pdddpm.demo.dataset import PROFILES, DemoProfile

CPU_DATASET = PROFILES["cpu"]


@dataclass(frozen=True)
class DemoRunProfile:
    """One demo set-up. ``pd_ddpm`` and ``vanilla`` are :class:`SamplingSettings` fields for the two methods;
    ``vanilla`` None: no vanilla DDPM row (the refiner is trained on t < T' only)."""

    name: str
    dataset: DemoProfile | str
    dataset_id: int
    dataset_name: str
    pre_segmenter_trainer: str
    denoiser_trainer: str
    pd_ddpm: dict = field(default_factory=dict)
    vanilla: dict | None = field(default_factory=dict)
    device: str = "cpu"
    configuration: str = "2d"
    fold: int = 0
    max_batch_size: int = 16
    note: str = ""


RUN_PROFILES: dict[str, DemoRunProfile] = {
    "tiny": DemoRunProfile(
        "tiny", "tiny", 985, "PDDDPMDemoTiny", "nnUNetTrainer_tiny", "PDDDPMTrainer_tiny_refinerDemo",
        pd_ddpm={"t_prime": 10, "ensemble_size": 2, "sampler": "ddim", "steps": 2}, vanilla=None,
        note="tiny profile (tests): a few training iterations; the numbers mean nothing."),
    "cpu": DemoRunProfile(
        "cpu", CPU_DATASET, 986, "PDDDPMDemoCPU", "nnUNetTrainer_demoCPU", "PDDDPMTrainer_demoCPU_refiner",
        pd_ddpm={"t_prime": None, "ensemble_size": 5, "sampler": "ddim", "steps": 5}, vanilla=None,
        note="CPU profile: plain nnU-Net trained for minutes, refined by PD-DDPM's default recipe (PDDDPMTrainer: "
             "warm start, soft starts; here from fold 0's own predictions instead of five folds' out-of-fold ones), "
             "T' chosen by its validation sweep, DDIM 5 steps x 5. Use -profile gpu on a GPU for the paper's "
             "recipe and sampling (attention U-Net, T'=300, DDPM, vanilla DDPM beside it)."),
    "gpu": DemoRunProfile(
        "gpu", "gpu", 987, "PDDDPMDemo", "PDDDPMAttUNetTrainer_demoGPU", "PDDDPMTrainer_demoGPU",
        pd_ddpm={"t_prime": 300, "ensemble_size": 5, "sampler": "ddpm", "steps": None},
        vanilla={"ensemble_size": 5, "sampler": "ddpm", "steps": None},
        device="cuda", max_batch_size=64,
        note="GPU profile: the paper's sampling (T'=300, ensemble 5, DDPM; vanilla DDPM with all 1000 steps)."),
}
