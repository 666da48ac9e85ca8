"""Uncertainty maps, case scores and fusion against brute-force NumPy float64; every sampler ends at its last x0."""
import itertools

import numpy as np
import pytest
import torch
from test_fast_paths import case_inputs, tiny_denoiser

from nnunet_pdddpm.diffusion import DiffusionConfig, make_ddpm_scheduler, model_output
from nnunet_pdddpm.diffusion.samplers import reverse_process
from nnunet_pdddpm.errors import PDDDPMUserError
from nnunet_pdddpm.inference.batching import Batch, Job
from nnunet_pdddpm.inference.compiled import SamplingDenoiser
from nnunet_pdddpm.inference.ensemble_sampling import (
    CaseWindows,
    FoldDenoisers,
    SamplingRun,
    _sample_batch,
    case_seed,
    sample_case,
)
from nnunet_pdddpm.inference.fusion import fuse_with_pre_segmentation
from nnunet_pdddpm.inference.settings import PerformanceSettings, SamplingSettings
from nnunet_pdddpm.inference.uncertainty import MemberSums, case_scores, mean_pairwise_dice

CPU = torch.device("cpu")
KINDS = ("variance", "entropy", "expected_entropy", "mutual_information")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- brute force, float64
def entropy(p: np.ndarray) -> np.ndarray:
    """Over axis 0, with the unit's floor for p log p."""
    return -(p * np.log(np.maximum(p, 1e-8))).sum(0)


def patch_map(samples: np.ndarray, kind: str) -> np.ndarray:
    """samples (M, K, *patch) -> the map of ``kind`` from its definition."""
    mean = samples.mean(0)
    member_entropy = np.mean([entropy(s) for s in samples], 0)
    return {"variance": samples.var(0).mean(0), "entropy": entropy(mean), "expected_entropy": member_entropy,
            "mutual_information": np.maximum(entropy(mean) - member_entropy, 0)}[kind]


def patch_class_map(samples: np.ndarray, kind: str) -> np.ndarray:
    p = np.clip(samples.mean(0), 1e-8, 1 - 1e-8)
    return samples.var(0) if kind == "variance" else -(p * np.log(p) + (1 - p) * np.log(1 - p))


def dice_brute_force(foreground: np.ndarray):
    pairs = list(itertools.combinations(range(len(foreground)), 2))
    if not pairs:
        return None
    values = []
    for i, j in pairs:
        a, b = foreground[i].ravel(), foreground[j].ravel()
        total = a.sum() + b.sum()
        values.append(1.0 if total == 0 else 2.0 * np.logical_and(a, b).sum() / total)
    return float(np.mean(values))


# ---------------------------------------------------------------- one patch, hand-made
def test_member_sums_give_each_map_of_one_patch():
    rng = np.random.default_rng(0)
    samples = rng.dirichlet([0.7, 1.0, 2.0], size=(4, 3, 5)).transpose(0, 3, 1, 2)  # (M=4, K=3, 3, 5)
    samples[1, :, 0, 0] = [1.0, 0.0, 0.0]  # a certain member: 0 log 0 counts as 0
    for kind in KINDS:
        sums = MemberSums(kind)
        for s in samples:
            sums.add(torch.from_numpy(s).float())
        mean = sums.mean()
        np.testing.assert_allclose(mean.numpy(), samples.mean(0), atol=1e-6)
        np.testing.assert_allclose(sums.scalar_map(mean).numpy(), patch_map(samples, kind), atol=1e-5)
        if kind in ("variance", "entropy"):
            np.testing.assert_allclose(sums.class_map(mean).numpy(), patch_class_map(samples, kind), atol=1e-5)
    identical = MemberSums("mutual_information")
    for _ in range(3):
        identical.add(torch.from_numpy(samples[0]).float())
    # no disagreement, whatever each member is unsure of (up to the rounding of the sum of three)
    assert identical.scalar_map(identical.mean()).abs().max() < 1e-6 < patch_map(samples, "expected_entropy").min()


def test_mean_pairwise_dice_and_scores_on_hand_made_masks():
    fg = np.zeros((4, 3, 4), dtype=bool)
    fg[0, 0, :3] = True
    fg[1, 0, 1:] = True
    fg[1, 2, 2] = True  # fg[2] and fg[3] stay empty: their pair counts 1
    assert mean_pairwise_dice(torch.from_numpy(fg)) == pytest.approx(dice_brute_force(fg), abs=1e-12)
    assert mean_pairwise_dice(torch.from_numpy(fg[2:])) == 1.0
    assert mean_pairwise_dice(torch.from_numpy(fg[:1])) is None
    probs = np.zeros((2, 3, 4))
    probs[1, 1, 3] = 0.8  # the mean calls one voxel foreground that no member does
    probs[0] = 1 - probs[1]
    unc = np.arange(12, dtype=np.float64).reshape(3, 4) / 7
    scores = case_scores(torch.from_numpy(fg), torch.from_numpy(probs).float(), torch.from_numpy(unc).float(),
                         "variance")
    predicted = fg.any(0) | (probs.argmax(0) != 0)
    assert scores == {"pairwise_dice": pytest.approx(dice_brute_force(fg), abs=1e-12),
                      "mean_uncertainty_foreground": pytest.approx(unc[predicted].mean(), rel=1e-6),
                      "mean_uncertainty": pytest.approx(unc.mean(), rel=1e-6), "uncertainty": "variance"}
    none = case_scores(torch.from_numpy(fg), torch.from_numpy(probs).float(), None, "none")
    assert none["mean_uncertainty"] is None and none["mean_uncertainty_foreground"] is None


# ---------------------------------------------------------------- a case of overlapping patches
@pytest.fixture(scope="module")
def denoiser():
    return tiny_denoiser(4)


def settings_for(kind: str, **fields) -> SamplingSettings:
    return SamplingSettings(t_prime=300, ensemble_size=3, sampler="ddpm", steps=5, seed=3, uncertainty=kind, **fields)


@pytest.fixture(scope="module")
def member_samples(denoiser):
    """Every (patch, member) sample of the case, one at a time: (P, M, K, *patch) float64."""
    image, x0_pre, slicers, _ = case_inputs()
    settings, config = settings_for("variance"), DiffusionConfig()
    wrapped = SamplingDenoiser(denoiser)
    with torch.inference_mode():  # as sample_case runs it
        return np.stack([np.stack([
            _sample_batch(wrapped, image, x0_pre, slicers, Batch(0, (Job(p, m),)), settings, False, config,
                          make_ddpm_scheduler(config), 300, case_seed("case_7"), None)[0].double().numpy()
            for m in range(3)]) for p in range(len(slicers))])


def aggregate(values, slicers, gaussian, spatial, channels: int | None = None) -> np.ndarray:
    """Brute-force Gaussian-weighted mean over patches of per-patch values ((C,) *patch each)."""
    lead = () if channels is None else (channels,)
    total, weight = np.zeros((*lead, *spatial)), np.zeros(spatial)
    for value, sl in zip(values, slicers):
        where = sl[1:]
        total[(slice(None), *where) if lead else where] += value * gaussian
        weight[where] += gaussian
    return total / weight


@pytest.mark.parametrize("kind", KINDS)
def test_sample_case_maps_and_scores_equal_brute_force(denoiser, member_samples, kind):
    image, x0_pre, slicers, gaussian = case_inputs()
    assert any(a[-1].stop > b[-1].start for a, b in zip(slicers, slicers[1:]) if a[1] == b[1])  # patches overlap
    per_class = kind in ("variance", "entropy")
    result = sample_case(FoldDenoisers((denoiser,)), CaseWindows(image, x0_pre, slicers, gaussian),
                         settings_for(kind, uncertainty_per_class=per_class), "case_7",
                         SamplingRun(PerformanceSettings(max_batch_size=1), CPU))
    g, spatial, K = gaussian.double().numpy(), image.shape[1:], member_samples.shape[2]
    mean = aggregate([s.mean(0) for s in member_samples], slicers, g, spatial, K)
    unc = aggregate([patch_map(s, kind) for s in member_samples], slicers, g, spatial)
    np.testing.assert_allclose(result.probabilities.numpy(), mean, atol=2e-6)
    np.testing.assert_allclose(result.uncertainty.numpy(), unc, atol=2e-6)
    if per_class:
        np.testing.assert_allclose(result.class_uncertainty.numpy(),
                                   aggregate([patch_class_map(s, kind) for s in member_samples], slicers, g, spatial,
                                             K), atol=2e-6)
    else:
        assert result.class_uncertainty is None
    members = [aggregate(member_samples[:, m], slicers, g, spatial, K).argmax(0) != 0 for m in range(3)]
    np.testing.assert_array_equal(result.member_foreground.numpy(), np.stack(members))
    scores = case_scores(result.member_foreground, result.probabilities, result.uncertainty, kind)
    predicted = np.any(members, 0) | (mean.argmax(0) != 0)
    assert 0 < predicted.mean() < 1 and 0 < scores["pairwise_dice"] < 1  # real disagreement, real foreground
    assert scores["pairwise_dice"] == pytest.approx(dice_brute_force(np.stack(members)), abs=1e-12)
    assert scores["mean_uncertainty_foreground"] == pytest.approx(unc[predicted].mean(), rel=1e-5)
    assert scores["mean_uncertainty"] == pytest.approx(unc.mean(), rel=1e-5)


def test_without_case_scores_nothing_per_member_is_kept(denoiser):
    image, x0_pre, slicers, gaussian = case_inputs()
    result = sample_case(FoldDenoisers((denoiser,)), CaseWindows(image, x0_pre, slicers, gaussian),
                         settings_for("none", case_scores=False), "case_7")
    assert result.member_foreground is None and result.uncertainty is None


# ---------------------------------------------------------------- fusion and gating
def test_fusion_and_gate_change_exactly_the_voxels_they_should():
    ensemble = np.array([[0.9, 0.55, 0.3, 0.2, 0.5], [0.05, 0.4, 0.6, 0.1, 0.25], [0.05, 0.05, 0.1, 0.7, 0.25]])
    pre = np.array([[0.1, 1.0, 0.0, 0.6, 0.2], [0.8, 0.0, 1.0, 0.2, 0.3], [0.1, 0.0, 0.0, 0.2, 0.5]])
    e, p = torch.from_numpy(ensemble).float(), torch.from_numpy(pre).float()
    assert fuse_with_pre_segmentation(e, p, 0.0, None) is e
    w = 0.25
    np.testing.assert_allclose(fuse_with_pre_segmentation(e, p, w, None).numpy(), (1 - w) * ensemble + w * pre,
                               atol=1e-7)
    confident = ensemble.max(0) >= 0.6  # voxels 0, 2 and 3
    assert confident.tolist() == [True, False, True, True, False]
    gated = fuse_with_pre_segmentation(e, p, 0.0, 0.6).numpy()
    np.testing.assert_array_equal(gated[:, confident], ensemble[:, confident].astype(np.float32))
    np.testing.assert_array_equal(gated[:, ~confident], pre[:, ~confident].astype(np.float32))
    both = fuse_with_pre_segmentation(e, p, w, 0.6).numpy()
    np.testing.assert_allclose(both, np.where(confident, (1 - w) * ensemble + w * pre, pre), atol=1e-7)


def _components_brute_force(mask: np.ndarray) -> list[set]:
    """Fully connected components by SimpleITK (independent of the scipy labelling fusion.py uses)."""
    import SimpleITK as sitk
    labeled = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), True))
    return [set(zip(*np.nonzero(labeled == i))) for i in range(1, int(labeled.max()) + 1)]


def _blobs(rng, shape, k: int) -> np.ndarray:
    """Label maps of K classes with a few small blobs of each foreground class."""
    labels = np.zeros(shape, dtype=np.int64)
    for c in range(1, k):
        for _ in range(4):
            corner = [rng.integers(0, n - 2) for n in shape]
            size = [rng.integers(1, 4) for _ in shape]
            labels[tuple(slice(a, a + b) for a, b in zip(corner, size))] = c
    return labels


def _soft(labels: np.ndarray, k: int, rng) -> torch.Tensor:
    onehot = np.eye(k)[labels].transpose(-1, *range(labels.ndim))
    p = 0.7 * onehot + 0.3 * rng.dirichlet(np.ones(k), size=labels.shape).transpose(-1, *range(labels.ndim))
    return torch.from_numpy(p).float()


@pytest.mark.parametrize("shape, k", [((12, 12), 2), ((12, 12), 3), ((6, 8, 8), 2), ((6, 8, 8), 3)])
def test_lesion_gate_leaves_detection_to_the_pre_segmenter(shape, k):
    """Every refined lesion with no pre-segmented voxel of its class, and every pre-segmented lesion the refined
    argmax no longer touches, takes the pre-segmenter's probabilities (components by SimpleITK); nothing else
    changes, and afterwards each class's lesions of the result and of the pre-segmentation detect each other."""
    from nnunet_pdddpm.evaluation.lesions import lesion_precision, lesion_recall

    rng = np.random.default_rng(sum(shape) + k)
    gated_somewhere = False
    for _ in range(5):
        refined_labels, pre_labels = _blobs(rng, shape, k), _blobs(rng, shape, k)
        # a shared lesion, reshaped by the refiner: kept as refined
        refined_labels[(0,) * len(shape)] = pre_labels[(0,) * len(shape)] = 1
        refined, pre = _soft(refined_labels, k, rng), _soft(pre_labels, k, rng)
        expected = np.zeros(shape, dtype=bool)
        for c in range(1, k):
            for source, other in ((refined_labels == c, pre_labels == c), (pre_labels == c, refined_labels == c)):
                for voxels in _components_brute_force(source):
                    if not any(other[v] for v in voxels):
                        expected[tuple(np.array(sorted(voxels)).T)] = True
        gated_somewhere |= bool(expected.any())
        out = fuse_with_pre_segmentation(refined, pre, 0.0, None, lesion_gate=True)
        torch.testing.assert_close(out, torch.where(torch.from_numpy(expected), pre, refined), atol=0, rtol=0)
        out_labels = out.argmax(0).numpy()
        for c in range(1, k):
            assert lesion_precision(pre_labels == c, out_labels == c) == 1.0
            assert lesion_recall(pre_labels == c, out_labels == c) == 1.0
    assert gated_somewhere
    # nothing to gate: the refined tensor itself
    same = _soft(pre_labels, k, rng)
    assert fuse_with_pre_segmentation(same, _soft(pre_labels, k, rng), 0.0, None, lesion_gate=True) is same


def test_lesion_gate_applies_after_fusion_and_confidence_gate():
    rng = np.random.default_rng(3)
    refined, pre = _soft(_blobs(rng, (10, 10), 2), 2, rng), _soft(_blobs(rng, (10, 10), 2), 2, rng)
    from nnunet_pdddpm.inference.fusion import keep_pre_segmented_lesions
    both = fuse_with_pre_segmentation(refined, pre, 0.25, 0.8, lesion_gate=True)
    torch.testing.assert_close(both, keep_pre_segmented_lesions(fuse_with_pre_segmentation(refined, pre, 0.25, 0.8),
                                                                pre), atol=0, rtol=0)


@pytest.mark.parametrize("fields, message", [
    ({"pre_segmentation_weight": 1.5}, "-preseg_weight must be in [0, 1], got 1.5."),
    ({"pre_segmentation_weight": float("nan")}, "-preseg_weight must be in [0, 1]"),
    ({"confidence_gate": 0.0}, "-confidence_gate must be in (1/K, 1]"),
    ({"confidence_gate": 1.2}, "-confidence_gate must be in (1/K, 1]"),
    ({"confidence_gate": 0.8, "vanilla": True}, "which --vanilla does not use"),
    ({"lesion_gate": True, "vanilla": True}, "which --vanilla does not use"),
    ({"uncertainty": "mutual_information", "uncertainty_per_class": True}, "variance and entropy only"),
])
def test_bad_fusion_and_uncertainty_settings_are_refused(fields, message):
    with pytest.raises(PDDDPMUserError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        SamplingSettings(**fields)


# ---------------------------------------------------------------- the last step is the last soft x0
@pytest.mark.parametrize("sampler, steps", [("ddpm", None), ("ddpm", 7), ("ddim", 7), ("dpm++", 7), ("dpm++", 3)])
def test_every_sampler_ends_at_its_last_soft_x0_estimate(sampler, steps):
    """With a softmax denoiser predicting x0, the returned sample is the last estimate 2 softmax - 1 itself, so the
    ensemble mean averages the members' soft x0 estimates (also when the last evaluation is above index 0)."""
    config = DiffusionConfig(prediction_type="sample", output_activation="softmax")
    estimates = []

    def model_fn(x_t, t):
        logits = 3 * torch.tanh(1.3 * x_t.flip(1)) + (t.float() / 7).reshape(-1, 1, 1, 1)
        estimates.append(model_output(config, logits))
        return estimates[-1]

    x_start = torch.randn(3, 3, 5, 6, generator=torch.Generator().manual_seed(0))
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    final = reverse_process(model_fn, x_start, 30, config, sampler, steps, gens)
    assert len(estimates) == (30 if steps is None else steps)
    assert torch.equal(final, estimates[-1])
