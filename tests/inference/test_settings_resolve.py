"""``SamplingSettings.resolve``: the one place where sampling settings meet a loaded denoiser's limits."""
import pytest

from nnunet_pdddpm.diffusion import sampling_timesteps
from nnunet_pdddpm.errors import PDDDPMUserError
from nnunet_pdddpm.inference.settings import DenoiserLimits, SamplingSettings

LIMITS = DenoiserLimits(num_train_timesteps=1000, trained_timesteps=300, num_folds=2, num_classes=2,
                        trainer_name="PDDDPMTrainer")


@pytest.mark.parametrize("settings, message", [
    (SamplingSettings(t_prime=1001), r"^-t_prime must be between 0 and T=1000, got 1001\.$"),
    (SamplingSettings(t_prime=4, sampler="ddim", steps=5),
     r"^-steps 5 exceeds T'=4 \(the sweep\): a reverse process from T' has only T' steps; use -steps 4 or fewer\.$"),
    (SamplingSettings(t_prime=301), r"^This denoiser \(PDDDPMTrainer\) was trained on timesteps below 300 .*-t_prime "
                                    r"301 would run it where it never learned"),
    (SamplingSettings(vanilla=True, sampler="ddim", steps=10), r"--vanilla \(sampling from T\) would run it where"),
    (SamplingSettings(t_prime=100, ensemble_size=1), r"^-ensemble_size 1 is the total number of samples per case, "
                                                     r"fewer than the 2 folds"),
    (SamplingSettings(t_prime=100, confidence_gate=0.5), r"^-confidence_gate must be above 1/K = 0\.5 for these K = 2"),
])
def test_each_limit_is_one_sentence(settings, message) -> None:
    with pytest.raises(PDDDPMUserError, match=message):
        settings.resolve(LIMITS, "the sweep")


def test_settings_within_the_limits_come_back_unchanged() -> None:
    fine = SamplingSettings(t_prime=300, ensemble_size=2, sampler="ddim", steps=300, confidence_gate=0.6)
    assert fine.resolve(LIMITS) is fine
    assert SamplingSettings(t_prime=100, ensemble_size=1, ensemble_per_fold=True).resolve(LIMITS).t_prime == 100
    assert SamplingSettings(t_prime=0, steps=5).resolve(LIMITS).t_prime == 0  # T' = 0 takes no step at all


def test_a_t_prime_below_the_steps_samples_every_step_instead_of_failing() -> None:
    """A sweep's T' may be below the trainer's steps: ``at_t_prime`` caps them, as the sweep sampled it."""
    five = SamplingSettings(sampler="ddim", steps=5)
    assert five.at_t_prime(3) == SamplingSettings(t_prime=3, sampler="ddim", steps=None)
    assert five.at_t_prime(300) == SamplingSettings(t_prime=300, sampler="ddim", steps=5)
    assert len(sampling_timesteps(3, five.at_t_prime(3).steps)) == 3


def test_the_library_refuses_more_steps_than_t_prime_instead_of_clamping() -> None:
    assert sampling_timesteps(4, 4) == [3, 2, 1, 0]
    with pytest.raises(ValueError, match="5 sampling steps exceed T'=4"):
        sampling_timesteps(4, 5)


def test_vanilla_drops_the_defaults_fusion_but_not_an_explicit_one() -> None:
    """A stored fusion has no pre-segmentation to mix in under --vanilla; asked for explicitly, it is refused."""
    fused = SamplingSettings(t_prime=100, pre_segmentation_weight=0.25)
    vanilla = fused.with_overrides(vanilla=True, pre_segmentation_weight=None)  # the CLI's unset flag
    assert vanilla.pre_segmentation_weight == 0.0 and vanilla.confidence_gate is None
    vanilla.resolve(DenoiserLimits(1000, 1000, 1, 2, "PDDDPMTrainer_paper"), "the trainer")
    with pytest.raises(PDDDPMUserError, match="--vanilla"):
        fused.with_overrides(vanilla=True, pre_segmentation_weight=0.5)
    assert fused.with_overrides(ensemble_size=3).pre_segmentation_weight == 0.25  # kept otherwise


def test_a_negative_seed_is_one_sentence_not_numpys_error() -> None:
    with pytest.raises(PDDDPMUserError, match=r"^-seed must be at least 0, got -1\.$"):
        SamplingSettings(seed=-1)
    assert SamplingSettings(seed=2 ** 40).seed == 2 ** 40  # any non-negative integer seeds the samples
