"""PDDDPMPredictor's sampling on the tiny trained models: the method's invariants, in-process."""
import numpy as np
import pytest
import torch
from conftest import model_folder
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

from nnunet_pdddpm.errors import PDDDPMUserError
from nnunet_pdddpm.inference.pre_segmentation import ModelPreSegmenter
from nnunet_pdddpm.inference.predictor import PDDDPMPredictor
from nnunet_pdddpm.inference.settings import PerformanceSettings, SamplingSettings

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def pre_segmenter(env):
    return ModelPreSegmenter(str(model_folder(env, "PDDDPMAttUNetTrainer_tiny")), [0], "checkpoint_final.pth", CPU)


@pytest.fixture(scope="module")
def case(env):
    folder = env / "preprocessed" / "Dataset991_Tiny" / "nnUNetPlans_2d"
    ds = infer_dataset_class(str(folder))(str(folder), ["case_003"])
    data, _, _, properties = ds.load_case("case_003")
    return torch.from_numpy(np.asarray(data[:])), properties


def make_predictor(env, pre, max_batch_size: int = 16, **settings) -> PDDDPMPredictor:
    base = dict(t_prime=20, ensemble_size=2, sampler="ddim", steps=3)
    base.update(settings)
    p = PDDDPMPredictor(device=CPU, allow_tqdm=False, sampling=SamplingSettings(**base),
                        performance=PerformanceSettings(max_batch_size=max_batch_size))
    p.initialize_from_trained_model_folder(str(model_folder(env, "PDDDPMTrainer_tiny")), [0])
    if pre is not None:
        p.configure(pre_segmentation=pre)
    return p


class ZeroPreSegmentation:
    """Probabilities 0.5 everywhere: with soft encoding the encoded pre-segmentation is exactly 0."""

    def check_case(self, key):
        pass

    def probabilities(self, data, properties, key):
        return torch.full((2, *data.shape[1:]), 0.5)


def test_t_prime_zero_returns_the_pre_segmentation(env, pre_segmenter, case):
    data, props = case
    result = make_predictor(env, pre_segmenter, t_prime=0).predict_case(data, props, "case_003")
    pre = pre_segmenter.probabilities(data, props, "case_003")
    assert torch.equal(result.probabilities.argmax(0), pre.argmax(0))
    assert torch.all(result.uncertainty == 0)


def test_vanilla_starts_from_noise_at_T(env, case):
    data, props = case
    p = make_predictor(env, None, vanilla=True, ensemble_size=1, steps=2)
    seen = []
    p.networks[0].register_forward_pre_hook(lambda m, args: seen.append(int(args[1][0])))
    result = p.predict_case(data, props, "case_003")
    assert seen == [999, 499]  # two evaluations from index T - 1, all patches of a slice stack in one batch
    assert result.nfe == 2 * data.shape[1]  # per-sample count: one 40x40 patch per slice, one member


def test_t_prime_T_with_zero_pre_segmentation_equals_vanilla(env, case):
    data, props = case
    # pad to the 40x40 patch ourselves: padding inside predict_case is background (+1/-1), not the zero mask
    data = torch.nn.functional.pad(data, (0, 40 - data.shape[-1], 0, 40 - data.shape[-2]))
    vanilla = make_predictor(env, None, vanilla=True, steps=2).predict_case(data, props, "case_003")
    full = make_predictor(env, ZeroPreSegmentation(), t_prime=1000, steps=2, soft_pre_segmentation=True)
    result = full.predict_case(data, props, "case_003")
    # x_T differs only by sqrt(1 - alpha_bar[T-1]) ~ 1 - 1e-9 and sqrt(alpha_bar[T-1]) * 0
    torch.testing.assert_close(result.probabilities, vanilla.probabilities, atol=1e-4, rtol=0)


def test_one_batch_equals_members_one_by_one(env, pre_segmenter, case):
    data, props = case
    kw = dict(ensemble_size=3, t_prime=6, sampler="ddpm", steps=None)  # every step from T' = 6: DDPM's noise draws
    batched = make_predictor(env, pre_segmenter, max_batch_size=64, **kw)
    single = make_predictor(env, pre_segmenter, max_batch_size=1, **kw)
    a = batched.predict_case(data, props, "case_003")
    b = single.predict_case(data, props, "case_003")
    torch.testing.assert_close(a.probabilities, b.probabilities, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.uncertainty, b.uncertainty, atol=1e-5, rtol=0)


def test_variance_is_zero_for_one_member_and_positive_for_several(env, pre_segmenter, case):
    data, props = case
    one = make_predictor(env, pre_segmenter, ensemble_size=1, t_prime=300, sampler="ddpm", steps=10)
    several = make_predictor(env, pre_segmenter, ensemble_size=4, t_prime=300, sampler="ddpm", steps=10)
    assert torch.all(one.predict_case(data, props, "case_003").uncertainty == 0)
    result = several.predict_case(data, props, "case_003")
    unc, foreground = result.uncertainty, result.probabilities[1]
    assert unc.max() > 1e-3
    # a probability's variance is at most mean (1 - mean) (Bhatia-Davis; averaging over patches keeps the bound,
    # p (1 - p) being concave): a map not divided by the number of members, or of another quantity, exceeds it
    assert torch.all(unc <= foreground * (1 - foreground) + 1e-5)


def test_same_seed_same_result_other_seed_differs(env, pre_segmenter, case):
    data, props = case
    kw = dict(ensemble_size=2, t_prime=300, sampler="ddpm", steps=10)
    a = make_predictor(env, pre_segmenter, seed=1, **kw).predict_case(data, props, "case_003")
    b = make_predictor(env, pre_segmenter, seed=1, **kw).predict_case(data, props, "case_003")
    c = make_predictor(env, pre_segmenter, seed=2, **kw).predict_case(data, props, "case_003")
    assert torch.equal(a.probabilities, b.probabilities)
    assert not torch.equal(a.probabilities, c.probabilities)


def test_entropy_uncertainty_is_predictive_entropy(env, pre_segmenter, case):
    """One patch per slice: the per-patch entropy aggregated over patches is that of the mean probabilities."""
    data, props = case
    r = make_predictor(env, pre_segmenter, uncertainty="entropy").predict_case(data, props, "case_003")
    p = r.probabilities
    torch.testing.assert_close(r.uncertainty, -(p * p.clamp_min(1e-8).log()).sum(0))


def test_fusion_and_gate_change_the_probabilities_not_the_uncertainty(env, pre_segmenter, case):
    data, props = case
    kw = dict(ensemble_size=3, t_prime=300, sampler="ddpm", steps=10)
    ensemble = make_predictor(env, pre_segmenter, **kw).predict_case(data, props, "case_003")
    fused = make_predictor(env, pre_segmenter, pre_segmentation_weight=0.3, confidence_gate=0.9,
                           **kw).predict_case(data, props, "case_003")
    pre = pre_segmenter.probabilities(data, props, "case_003").float()
    confident = ensemble.probabilities.amax(0) >= 0.9
    assert 0 < confident.float().mean() < 1  # both kinds of voxels occur
    torch.testing.assert_close(fused.probabilities, torch.where(confident, 0.7 * ensemble.probabilities + 0.3 * pre,
                                                                pre), atol=1e-6, rtol=0)
    assert torch.equal(fused.uncertainty, ensemble.uncertainty) and fused.scores == ensemble.scores  # variance


class ChangedPreSegmentation:
    """The real pre-segmenter's probabilities, changed (all background, or shifted off the lesions): starts from
    which the denoiser, which sees the image, adds or drops lesions."""

    def __init__(self, pre, change):
        self.pre, self.change = pre, change

    def check_case(self, key):
        pass

    def probabilities(self, data, properties, key):
        return self.change(self.pre.probabilities(data, properties, key).float())


def _background(p):
    return torch.stack([torch.ones_like(p[0]), torch.zeros_like(p[0])])


def test_lesion_gate_on_a_real_case_keeps_the_pre_segmenters_lesions(env, pre_segmenter, case):
    """With the lesion gate, every lesion the tiny denoiser (T' = 300) adds or drops takes the pre-segmenter's
    probabilities (the gate works in the padded, preprocessed space), everything else is the ensemble's, and the
    result's lesions and the pre-segmentation's detect each other. Which starts make it act depends on the trained
    tiny models, so three are tried and at least one must."""
    from nnunet_pdddpm.evaluation.lesions import lesion_precision, lesion_recall

    data, props = case
    kw = dict(ensemble_size=3, t_prime=300, sampler="ddpm", steps=10, uncertainty="entropy")
    acted = 0
    for pre in (pre_segmenter, ChangedPreSegmentation(pre_segmenter, _background),
                ChangedPreSegmentation(pre_segmenter, lambda p: torch.roll(p, (5, 7), (-2, -1)))):
        ensemble = make_predictor(env, pre, **kw).predict_case(data, props, "case_003")
        gated = make_predictor(env, pre, lesion_gate=True, **kw).predict_case(data, props, "case_003")
        probabilities = pre.probabilities(data, props, "case_003").float()
        changed = (gated.probabilities != ensemble.probabilities).any(0)
        acted += bool(changed.any())
        torch.testing.assert_close(gated.probabilities[:, changed], probabilities[:, changed], atol=0, rtol=0)
        mine, theirs = gated.probabilities.argmax(0).numpy() == 1, probabilities.argmax(0).numpy() == 1
        assert lesion_precision(theirs, mine) == 1.0 and lesion_recall(theirs, mine) == 1.0
        p = gated.probabilities  # the map is the entropy of what is delivered, as with fusion
        torch.testing.assert_close(gated.uncertainty, -(p * p.clamp_min(1e-8).log()).sum(0), atol=1e-5, rtol=0)
    assert acted  # the gate changed the result for at least one start


def test_with_fusion_the_entropy_map_is_that_of_the_delivered_probabilities(env, pre_segmenter, case):
    """The entropy map describes the fused result (the mixture's predictive entropy), computed here in NumPy; the
    members' agreement stays the ensemble's."""
    data, props = case
    kw = dict(ensemble_size=3, t_prime=300, sampler="ddpm", steps=10, uncertainty="entropy",
              uncertainty_per_class=True)
    ensemble = make_predictor(env, pre_segmenter, **kw).predict_case(data, props, "case_003")
    fused = make_predictor(env, pre_segmenter, pre_segmentation_weight=0.25, **kw).predict_case(data, props,
                                                                                              "case_003")
    p = fused.probabilities.double().numpy()
    entropy = -(p * np.log(np.clip(p, 1e-8, None))).sum(0)
    q = np.clip(p, 1e-8, 1 - 1e-8)
    np.testing.assert_allclose(fused.uncertainty.numpy(), entropy, atol=1e-5)
    np.testing.assert_allclose(fused.class_uncertainty.numpy(), -(q * np.log(q) + (1 - q) * np.log(1 - q)), atol=1e-5)
    assert not torch.allclose(fused.uncertainty, ensemble.uncertainty)
    assert fused.scores["pairwise_dice"] == ensemble.scores["pairwise_dice"]
    assert fused.scores["mean_uncertainty"] == pytest.approx(float(entropy.mean()), rel=1e-5)


def test_out_of_memory_falls_back_to_smaller_batches(env, pre_segmenter, case):
    data, props = case
    reference = make_predictor(env, pre_segmenter, max_batch_size=2).predict_case(data, props, "case_003")
    p = make_predictor(env, pre_segmenter, max_batch_size=16)

    def fail_on_big_batches(module, args):
        if args[0].shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    p.networks[0].register_forward_pre_hook(fail_on_big_batches)
    with pytest.warns(UserWarning, match="retrying with -max_batch_size 4"):
        result = p.predict_case(data, props, "case_003")
    torch.testing.assert_close(result.probabilities, reference.probabilities, atol=1e-5, rtol=0)
    p.networks[0].register_forward_pre_hook(lambda m, a: (_ for _ in ()).throw(torch.OutOfMemoryError("oom")))
    with pytest.raises(PDDDPMUserError, match="does not fit in device memory"):
        p.predict_case(data, props, "case_003")


def test_predict_single_npy_array_returns_maps_in_the_input_shape(env, pre_segmenter):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    image_file = env / "raw" / "Dataset991_Tiny" / "imagesTs" / "case_008_0000.nii.gz"
    image, props = SimpleITKIO().read_images([str(image_file)])
    p = make_predictor(env, pre_segmenter, ensemble_size=3, t_prime=300, sampler="ddpm", steps=10)
    seg, probs, unc = p.predict_single_npy_array(image, props)
    assert seg.shape == image.shape[1:] and unc.shape == image.shape[1:] and probs.shape == (2, *image.shape[1:])
    assert np.array_equal(seg, probs.argmax(0)) and unc.dtype == np.float32 and unc.min() >= 0 and unc.max() > 0


def test_t_prime_above_the_trained_timesteps_is_refused_before_any_work(env):
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_pdddpm.networks.from_plans import build_denoiser_from_kwargs

    folder = model_folder(env, "PDDDPMTrainer_tiny")
    ckpt = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=True)
    settings = {**ckpt["pdddpm"], "training": {**ckpt["pdddpm"]["training"], "timestep_range": 40}}
    plans = PlansManager(load_json(folder / "plans.json"))
    p = PDDDPMPredictor(device=CPU, allow_tqdm=False)
    p.manual_initialization_pdddpm([build_denoiser_from_kwargs(settings["denoiser_kwargs"])], plans,
                                   plans.get_configuration("2d"), load_json(folder / "dataset.json"), settings,
                                   "PDDDPMTrainer_tiny", None)
    p.check_settings(SamplingSettings(t_prime=40))  # the first evaluation is at index 39: trained
    with pytest.raises(PDDDPMUserError, match="trained on timesteps below 40.*-t_prime 41 would run it"):
        p.check_settings(SamplingSettings(t_prime=41))
    with pytest.raises(PDDDPMUserError, match=r"--vanilla \(sampling from T\) would run it"):
        p.check_settings(SamplingSettings(t_prime=20, vanilla=True))


def test_mirrored_members_on_the_real_predictor(env, pre_segmenter, case):
    """The trained tiny denoiser's members mirrored along its checkpoint's axes: another result, the first member
    alone unchanged (it is never mirrored); a model that allows no mirroring samples unmirrored, as nnU-Net's
    test-time mirroring does, and the flag asked for explicitly on such a model is one sentence."""
    from nnunet_pdddpm.cli.checks import check_mirrored_members

    data, props = case
    kw = dict(ensemble_size=2, t_prime=300, sampler="ddim", steps=3, uncertainty="entropy")
    plain = make_predictor(env, pre_segmenter, **kw)
    assert tuple(plain.allowed_mirroring_axes) == (0, 1)  # nnU-Net's 2D default, from the checkpoint
    unmirrored = plain.predict_case(data, props, "case_003").probabilities
    mirroring = make_predictor(env, pre_segmenter, mirrored_members=True, **kw)
    mirrored = mirroring.predict_case(data, props, "case_003").probabilities
    assert not torch.equal(mirrored, unmirrored)  # the second member saw the case mirrored
    torch.testing.assert_close(mirrored.sum(0), torch.ones_like(mirrored[0]))
    one = dict(kw, ensemble_size=1)
    torch.testing.assert_close(
        make_predictor(env, pre_segmenter, mirrored_members=True, **one).predict_case(data, props, "c").probabilities,
        make_predictor(env, pre_segmenter, **one).predict_case(data, props, "c").probabilities, atol=0, rtol=0)
    mirroring.allowed_mirroring_axes = None  # as a trainer without mirroring stores it
    torch.testing.assert_close(mirroring.predict_case(data, props, "case_003").probabilities, unmirrored,
                               atol=0, rtol=0)
    with pytest.raises(PDDDPMUserError, match="--mirrored_members needs a denoiser trained with mirroring"):
        check_mirrored_members(True, None)
    check_mirrored_members(None, None)  # the trainer's default: no flag, no refusal
    check_mirrored_members(True, (0, 1))
