"""Small helpers the experiment modules share: settings as text, rows from runs, safe folder names."""
from __future__ import annotations

import re

from nnunet_pdddpm.experiments.runner import SettingRun
from nnunet_pdddpm.inference.settings import SamplingSettings

METRIC_COLUMNS = ("dice", "hd95", "jaccard", "lesion_f1")


def describe(settings: SamplingSettings, num_train_timesteps: int) -> str:
    """``"T'=300, ddpm 300 steps, ensemble 5"`` (vanilla: ``"noise at T=1000, ..."``)."""
    from nnunet_pdddpm.diffusion import sampling_timesteps

    t = settings.effective_t_prime(num_train_timesteps)
    start = f"noise at T={t}" if settings.vanilla else f"T'={t}"
    steps = len(sampling_timesteps(t, settings.steps))
    text = f"{start}, {settings.sampler} {steps} steps, ensemble {settings.ensemble_size}"
    if settings.pre_segmentation_weight > 0:
        text += f", fused with the pre-segmenter (w {settings.pre_segmentation_weight:g})"
    if settings.confidence_gate is not None:
        text += f", confidence gate {settings.confidence_gate:g}"
    if settings.lesion_gate:
        text += ", lesion gate"
    if settings.mirrored_members:
        text += ", mirrored members"
    return text


def metrics_row(run: SettingRun, prefix: str = "") -> dict:
    """The run's metrics (and cost, without ``prefix``) as row fields, names prefixed by ``prefix``."""
    row = {f"{prefix}{k}": v for k, v in run.metrics.items()}
    if not prefix:
        row.update(nfe_per_case=run.nfe_per_case, seconds_per_case=run.seconds_per_case)
    return row


def slug(text: str) -> str:
    """A folder name for a setting label (``"erode 2"`` -> ``"erode_2"``)."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_") or "setting"
