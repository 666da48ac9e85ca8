"""PD-DDPM over a sliding window: batched (patch x fold x member) samples, Gaussian-weighted aggregation.

Every sample (patch p, fold f, member m) owns a generator seeded from (seed, case, f, p, m), used
for its forward-diffusion noise and its ancestral noise, so its result does not depend on which
other samples share its batch, nor on how cases are split across processes. Members of the same
patch are combined into a mean probability map and an uncertainty map (``uncertainty.py``: by default the
population variance over members and folds, averaged over classes; per class on request), which are then
aggregated over patches with nnU-Net's Gaussian weights. For the case scores each member's patches are
also stitched into a full-case map (``SamplingSettings.case_scores``).

Which samples share a denoiser call is planned by ``batching.py`` (full batches, optionally padded to
one shape for a compiled denoiser); how the denoiser is called (eager, channels-last, compiled) by
``compiled.py``; the DDPM update runs as precomputed tensor ops (``diffusion/fast_ddpm.py``) unless
``performance.reference_sampler`` asks for diffusers' step. None of these changes a sample's numbers
beyond floating-point reordering inside the network.
"""
from __future__ import annotations

import itertools
import zlib
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from nnunet_pdddpm.diffusion import DiffusionConfig, decode_to_probabilities, diffuse, model_output, start_index
from nnunet_pdddpm.diffusion.fast_ddpm import per_sample_noise
from nnunet_pdddpm.diffusion.samplers import reverse_process, reverse_process_reference, sampling_timesteps
from nnunet_pdddpm.diffusion.schedule import make_ddpm_scheduler
from nnunet_pdddpm.inference.batching import Batch, batch_size_for_budget, estimate_sample_bytes, plan_windows
from nnunet_pdddpm.inference.compiled import Autocast, SamplingDenoiser
from nnunet_pdddpm.inference.settings import PerformanceSettings, SamplingSettings, check_ensemble_covers_folds
from nnunet_pdddpm.inference.uncertainty import MemberSums


def case_seed(case_key: str | None) -> int:
    """A stable 32-bit number for a case name (``hash()`` differs between processes)."""
    return 0 if case_key is None else zlib.crc32(case_key.encode())


def mirror_combinations(mirror_axes: Sequence[int]) -> list[tuple[int, ...]]:
    """nnU-Net's test-time mirror combinations of patch axes (0-based, as ``allowed_mirroring_axes``), in its order:
    none first, then each axis, pairs, ... (2D with axes (0, 1): (), (0,), (1,), (0, 1))."""
    axes = tuple(sorted(set(int(a) for a in mirror_axes)))
    return [c for k in range(len(axes) + 1) for c in itertools.combinations(axes, k)]


def member_mirrorings(mirror_axes: Sequence[int], num_members: int) -> list[tuple[int, ...]]:
    """The patch axes member m is mirrored along: :func:`mirror_combinations` dealt out over the members in turn, so
    an ensemble of 5 on a 2D model with axes (0, 1) is (), (0,), (1,), (0, 1), (). The members then average over
    mirrorings as nnU-Net's test-time augmentation does, at no extra network evaluation."""
    combos = mirror_combinations(mirror_axes)
    return [combos[m % len(combos)] for m in range(num_members)]


def _mirrored(rows: torch.Tensor, mirrorings: Sequence[tuple[int, ...]]) -> torch.Tensor:
    """Each row (a sample, (C, *patch)) flipped along its own patch axes; flipping twice is the identity."""
    if not any(mirrorings):
        return rows
    return torch.stack([r.flip([a + 1 for a in m]) if m else r for r, m in zip(rows, mirrorings)])


def sample_generator(seed: int, case: int, fold: int, patch: int, member: int, device: torch.device) -> torch.Generator:
    state = np.random.SeedSequence([seed, case, fold, patch, member]).generate_state(2, dtype=np.uint32)
    g = torch.Generator(device=device)
    g.manual_seed(int(state[0]) << 32 | int(state[1]))
    return g


@dataclass(frozen=True)
class CaseResult:
    """Everything sampling a case measured.

    probabilities: (K, *shape), summing to 1 over K. uncertainty: (*shape), or None with ``-uncertainty none``.
    class_uncertainty: with ``uncertainty_per_class`` one map per class (K, *shape), else None. Float32.
    nfe: denoiser evaluations spent on the case (counted per sample; the pre-segmenter's are not included).
    member_foreground: with ``case_scores``, (M, *shape) bool: each member's argmax is not background.
    scores: the case's :func:`~nnunet_pdddpm.inference.uncertainty.case_scores` (``predict_case`` fills it in).
    """

    probabilities: torch.Tensor
    uncertainty: torch.Tensor | None
    class_uncertainty: torch.Tensor | None = None
    nfe: int = 0
    member_foreground: torch.Tensor | None = None
    scores: dict | None = None


def members_per_fold(settings: SamplingSettings, num_folds: int) -> tuple[int, ...]:
    """Samples each fold contributes per patch.

    ``ensemble_size`` is the total per case (the paper's 5 samples, whatever the number of folds), dealt out
    round-robin: fold f gets ``N // F`` plus one if ``f < N % F`` (5 samples over 2 folds: 3 + 2; over 5
    folds: one each). With ``ensemble_per_fold`` every fold contributes ``ensemble_size`` (F x N in all).
    """
    check_ensemble_covers_folds(settings.ensemble_size, num_folds, settings.ensemble_per_fold)
    if settings.ensemble_per_fold:
        return (settings.ensemble_size,) * num_folds
    share, rest = divmod(settings.ensemble_size, num_folds)
    return tuple(share + (f < rest) for f in range(num_folds))


def number_of_evaluations(num_patches: int, num_folds: int, settings: SamplingSettings, t_prime: int) -> int:
    """Denoiser evaluations (NFE, counted per sample) for a case."""
    members = sum(members_per_fold(settings, num_folds))
    return num_patches * members * len(sampling_timesteps(t_prime, settings.steps))


def sampling_batch_size(performance: PerformanceSettings, network: nn.Module, input_shape: Sequence[int]) -> int:
    """Samples per denoiser call: ``performance.max_batch_size``, lowered to fit ``performance.memory_budget_gb``.

    input_shape: the denoiser's input (image channels + K, *patch).
    """
    if performance.memory_budget_gb is None:
        return performance.max_batch_size
    return batch_size_for_budget(performance.max_batch_size, performance.memory_budget_gb * 2 ** 30,
                                 estimate_sample_bytes(network, input_shape))


class SamplingModel(Protocol):
    """What sampling reads of a model: one denoiser per fold and the diffusion they were trained with.

    A :class:`~nnunet_pdddpm.inference.denoiser_model.DenoiserModel` is one; :class:`FoldDenoisers` is the
    least that is one (networks built in memory, e.g. by a benchmark).
    """

    @property
    def networks(self) -> Sequence[nn.Module]: ...

    @property
    def diffusion_config(self) -> DiffusionConfig: ...


@dataclass(frozen=True)
class FoldDenoisers:
    """Denoisers in memory (one per fold) and their diffusion: a :class:`SamplingModel` without a model folder."""

    networks: tuple[nn.Module, ...]
    diffusion_config: DiffusionConfig = field(default_factory=DiffusionConfig)


@dataclass(frozen=True)
class CaseWindows:
    """One padded case as sampling reads it: the data, the pre-segmentation and nnU-Net's sliding windows.

    image: (C, *shape) on the compute device. pre_segmentation: the encoded pre-segmentation x0 (K, *shape) in
    [-1, 1] (``diffusion/encoding.py``), or None for the vanilla baseline. slicers: nnU-Net's sliding-window
    slicers; each selects (channels, *patch) (2D configurations on 3D data index one slice). gaussian:
    nnU-Net's patch weights (*patch). mirror_axes: patch axes (0-based, as nnU-Net's ``allowed_mirroring_axes``)
    along which the members are mirrored (:func:`member_mirrorings`); empty: no member is.
    """

    image: torch.Tensor
    pre_segmentation: torch.Tensor | None
    slicers: Sequence[tuple]
    gaussian: torch.Tensor
    mirror_axes: tuple[int, ...] = ()


@dataclass(frozen=True)
class SamplingRun:
    """How a case is run, which changes no number: performance options, where results live, progress.

    denoisers: prebuilt :class:`SamplingDenoiser` s, one per fold (e.g. a ``DenoiserCache``'s, to reuse a
    compiled graph across cases); None wraps the model's networks here with ``performance``'s options.
    on_step: called with the number of samples that just took one denoiser step (a progress bar's update).
    """

    performance: PerformanceSettings = field(default_factory=PerformanceSettings)
    results_device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    autocast: Autocast = nullcontext
    denoisers: Sequence[SamplingDenoiser] | None = None
    on_step: Callable[[int], None] | None = None


@torch.inference_mode()
def sample_case(model: SamplingModel, case: CaseWindows, settings: SamplingSettings, case_key: str | None,
                run: SamplingRun = SamplingRun()) -> CaseResult:
    """Sample every patch of one (padded) case with the model's fold denoisers: the ensemble is drawn here.

    The result is a function of ``model``, ``case``, ``settings`` and ``case_key`` (which seeds the samples);
    ``run`` changes only speed, memory and where the result lives.
    Memory on ``run.results_device``: the probabilities and maps (about K + 2 floats per voxel, 2K + 2 per
    class), plus with ``settings.case_scores`` every member's stitched probabilities, M x K floats per voxel.
    """
    performance, results_device, config = run.performance, run.results_device, model.diffusion_config
    image, x0_pre, slicers, gaussian = case.image, case.pre_segmentation, case.slicers, case.gaussian
    denoisers = list(run.denoisers) if run.denoisers is not None else [
        SamplingDenoiser(n, run.autocast, performance.channels_last, performance.compile) for n in model.networks]
    if len(denoisers) != len(model.networks):
        raise ValueError(f"run.denoisers has {len(denoisers)} denoisers for a model of {len(model.networks)} folds; "
                         f"pass one per fold network, in the model's order.")
    t_prime = settings.effective_t_prime(config.num_train_timesteps)
    members = members_per_fold(settings, len(denoisers))
    num_members = sum(members)
    num_classes = denoisers[0].num_classes
    spatial = image.shape[1:]
    probs_acc = torch.zeros((num_classes, *spatial), dtype=torch.float32, device=results_device)
    kind = settings.uncertainty
    unc_acc = None if kind == "none" else torch.zeros(spatial, dtype=torch.float32, device=results_device)
    # a map per class costs as much memory as the probabilities
    class_acc = torch.zeros((num_classes, *spatial), dtype=torch.float32, device=results_device) \
        if settings.uncertainty_per_class else None
    member_acc = torch.zeros((num_members, num_classes, *spatial), dtype=torch.float32, device=results_device) \
        if settings.case_scores else None
    first_member = np.cumsum((0, *members[:-1])).tolist()  # fold f's members are first_member[f], ...
    mirrorings = member_mirrorings(case.mirror_axes, num_members)
    weight_acc = torch.zeros(spatial, dtype=torch.float32, device=results_device)
    gaussian = gaussian.to(results_device, torch.float32)
    scheduler = make_ddpm_scheduler(config)
    cseed = case_seed(case_key)
    patch_shape = tuple(gaussian.shape)
    batch_size = sampling_batch_size(performance, denoisers[0].network, (image.shape[0] + num_classes, *patch_shape))
    fixed_shape = any(d.compiled for d in denoisers)

    for window in plan_windows(len(slicers), members, batch_size, fixed_shape):
        sums = {p: MemberSums(kind) for p in window.patches}
        for batch in window.batches:
            rows = [mirrorings[first_member[batch.fold] + job.member] for job in batch.jobs]
            probs = _sample_batch(denoisers[batch.fold], image, x0_pre, slicers, batch, settings,
                                  performance.reference_sampler, config, scheduler, t_prime, cseed,
                                  run.on_step, rows).to(results_device)
            for job, pr in zip(batch.jobs, probs):  # padding rows come last and are dropped
                sums[job.patch].add(pr)
                if member_acc is not None:
                    member_acc[first_member[batch.fold] + job.member][slicers[job.patch]] += pr * gaussian
        for p in window.patches:
            mean = sums[p].mean()
            sl = slicers[p]
            probs_acc[sl] += mean * gaussian
            if unc_acc is not None:
                unc_acc[sl[1:]] += sums[p].scalar_map(mean) * gaussian
            if class_acc is not None:
                class_acc[sl] += sums[p].class_map(mean) * gaussian
            weight_acc[sl[1:]] += gaussian
    probs_acc /= weight_acc
    for acc in (unc_acc, class_acc):
        if acc is not None:
            acc /= weight_acc
    # the argmax of a member's Gaussian-weighted sum is that of its weighted mean: no division needed
    member_foreground = None if member_acc is None else member_acc.argmax(1) != 0
    nfe = number_of_evaluations(len(slicers), len(denoisers), settings, t_prime)
    return CaseResult(probs_acc, unc_acc, class_acc, nfe, member_foreground)


def _sample_batch(denoiser: SamplingDenoiser, image, x0_pre, slicers, batch: Batch, settings, reference_sampler: bool,
                  config, scheduler, t_prime, cseed, on_step,
                  mirrorings: Sequence[tuple[int, ...]] | None = None) -> torch.Tensor:
    """Reverse process for the jobs of one batch (padding rows repeat the last job with their own noise)
    -> decoded probabilities (batch.size, K, *patch).

    mirrorings: each job's patch axes (None: no job is mirrored); the denoiser sees that row's image and state
    mirrored and its output is mirrored back, so the state, the noise and the result stay in the case's orientation."""
    device = image.device
    gens = [sample_generator(settings.seed, cseed, batch.fold, job.patch, job.member, device) for job in batch.jobs]
    gens += [torch.Generator(device=device).manual_seed(k) for k in range(batch.padding)]
    patches = [job.patch for job in batch.jobs] + [batch.jobs[-1].patch] * batch.padding
    mirrorings = [()] * len(batch.jobs) if mirrorings is None else list(mirrorings)
    mirrorings += [mirrorings[-1]] * batch.padding
    img = _mirrored(torch.stack([image[slicers[p]] for p in patches]), mirrorings)
    noise = per_sample_noise(img.new_empty((len(patches), denoiser.num_classes, *img.shape[2:]), dtype=torch.float32),
                             gens)
    if x0_pre is None:
        x_start = noise
    elif t_prime == 0:
        x_start = torch.stack([x0_pre[slicers[p]] for p in patches]).float()
    else:
        x0 = torch.stack([x0_pre[slicers[p]] for p in patches]).float()
        t = torch.full((len(patches),), start_index(t_prime), dtype=torch.long, device=device)
        x_start = diffuse(scheduler, x0, noise, t)

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model_output(config, _mirrored(denoiser(img, _mirrored(x_t, mirrorings), t), mirrorings))

    step_done = None if on_step is None else (lambda: on_step(len(batch.jobs)))
    process = reverse_process_reference if reference_sampler else reverse_process
    x0_hat = process(model_fn, x_start, t_prime, config, settings.sampler, settings.steps, gens, step_done)
    return decode_to_probabilities(x0_hat)
