"""Every fast sampling path against the plain one, for fixed seeds, on small random denoisers (CPU).

Plain path: diffusers' ``scheduler.step`` (``reverse_process_reference``), one sample per denoiser call,
eager float32. Fast paths: the precomputed tensor DDPM step, batching of (patch, member) samples,
channels-last, and ``torch.compile`` (inductor on the CPU; CUDA graphs on a GPU).
"""
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor
from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window
from torch import nn

from nnunet_pdddpm.diffusion import DiffusionConfig, make_ddpm_scheduler
from nnunet_pdddpm.diffusion.fast_ddpm import DDPMStepCoefficients, per_sample_noise
from nnunet_pdddpm.diffusion.samplers import reverse_process, reverse_process_reference, sampling_timesteps
from nnunet_pdddpm.inference.compiled import DenoiserCache, SamplingDenoiser
from nnunet_pdddpm.inference.ensemble_sampling import CaseWindows, FoldDenoisers, SamplingRun, sample_case
from nnunet_pdddpm.inference.settings import PerformanceSettings, SamplingSettings
from nnunet_pdddpm.networks import TimeConditionedUNet
from nnunet_pdddpm.networks.blocks import SelfAttentionBlock

CPU = torch.device("cpu")
PATCH = (16, 24)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny ops: one thread is as fast, and immune to OpenMP spin-waits on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_denoiser(seed: int, features=(4, 8, 8), image_channels: int = 1, num_classes: int = 2) -> nn.Module:
    """A random 2D denoiser whose zero-initialised layers get random weights (so the output is not zero)."""
    torch.manual_seed(seed)
    n = len(features)
    net = TimeConditionedUNet(image_channels + num_classes, num_classes, n, list(features), nn.Conv2d, [[3, 3]] * n,
                              [[1, 1]] + [[2, 2]] * (n - 1), [1] * n, [1] * (n - 1), nn.InstanceNorm2d,
                              {"eps": 1e-5, "affine": True}, nn.LeakyReLU, {"inplace": True}, True, 1, 1)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(0, 0.3)
    return net.eval()


def nonlinear_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x.flip(1) * 1.3 + (t.to(x.dtype) / 500).reshape(-1, *[1] * (x.ndim - 1)))


# ---------------------------------------------------------------- the DDPM step
@pytest.mark.parametrize("shape", [(3, 2, 5, 7), (2, 1, 2, 3), (1, 2, 4, 4)])
def test_per_sample_noise_draws_what_diffusers_draws(shape):
    gens_a = [torch.Generator().manual_seed(10 + i) for i in range(shape[0])]
    gens_b = [torch.Generator().manual_seed(10 + i) for i in range(shape[0])]
    expected = randn_tensor(shape, generator=gens_a, device=CPU, dtype=torch.float32)
    assert torch.equal(per_sample_noise(torch.empty(shape), gens_b), expected)


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("steps", [None, 7])
@pytest.mark.parametrize("clip_sample", [True, False])
def test_tensor_step_equals_diffusers_step(dtype, atol, prediction_type, steps, clip_sample):
    """Step by step along one chain, from the same x and model output, with per-sample generators."""
    config = DiffusionConfig(prediction_type=prediction_type, clip_sample=clip_sample)
    timesteps = sampling_timesteps(60, steps)
    scheduler = make_ddpm_scheduler(config)
    scheduler.set_timesteps(timesteps=timesteps)
    coeffs = DDPMStepCoefficients.from_scheduler(make_ddpm_scheduler(config), timesteps)
    gens_ref = [torch.Generator().manual_seed(i) for i in range(3)]
    gens_fast = [torch.Generator().manual_seed(i) for i in range(3)]
    x = torch.randn(3, 2, 6, 5, generator=torch.Generator().manual_seed(99), dtype=dtype)
    for i, t in enumerate(timesteps):
        out = nonlinear_model(x, torch.full((3,), t))
        ref = scheduler.step(out, t, x, generator=gens_ref).prev_sample
        noise = per_sample_noise(out, gens_fast) if coeffs.adds_noise(i) else None
        fast = coeffs.step(i, out, x, noise)
        assert fast.dtype == ref.dtype
        # diffusers' last step above index 0 adds sqrt(1e-20) * noise (its variance clamp); ours ends at x0
        last_above_0 = i == len(timesteps) - 1 and t > 0
        torch.testing.assert_close(fast, ref, atol=max(atol, 1e-9) if last_above_0 else atol, rtol=0)
        x = ref


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++"])
@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_reverse_process_equals_reference(sampler, dtype, atol):
    x = torch.randn(4, 2, 3, 5, generator=torch.Generator().manual_seed(3), dtype=dtype)
    steps = None if sampler == "ddpm" else 6
    gens = [[torch.Generator().manual_seed(i) for i in range(4)] for _ in range(2)]
    fast = reverse_process(nonlinear_model, x, 40, DiffusionConfig(), sampler, steps, gens[0])
    ref = reverse_process_reference(nonlinear_model, x, 40, DiffusionConfig(), sampler, steps, gens[1])
    torch.testing.assert_close(fast, ref, atol=atol, rtol=0)


def test_step_coefficients_refuse_other_variance_types():
    from diffusers import DDPMScheduler

    with pytest.raises(ValueError, match="fixed_small"):
        DDPMStepCoefficients.from_scheduler(DDPMScheduler(variance_type="fixed_large"), [3, 2, 1, 0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host syncs can only be detected on CUDA")
def test_tensor_ddpm_loop_has_no_host_sync_after_set_up():
    x = torch.randn(2, 2, 8, 8, device="cuda")
    gens = [torch.Generator(device="cuda").manual_seed(i) for i in range(2)]
    calls = []

    def model_fn(x_t, t):
        if calls:  # from the second evaluation on, any device->host sync raises
            torch.cuda.set_sync_debug_mode("error")
        calls.append(1)
        return torch.tanh(x_t)

    try:
        reverse_process(model_fn, x, 20, DiffusionConfig(), "ddpm", None, gens)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(calls) == 20


# ---------------------------------------------------------------- sampling a case
def case_inputs(seed: int = 0):
    """A 2-slice image (1, 2, 24, 30) sampled by 2D patches 16x24: 8 patches (2 x 2 per slice)."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(1, 2, 24, 30, generator=g)
    labels = (torch.rand(2, 24, 30, generator=g) > 0.7).long()
    x0_pre = F.one_hot(labels, 2).permute(3, 0, 1, 2).float() * 2 - 1
    steps = compute_steps_for_sliding_window(image.shape[2:], PATCH, 0.5)
    slicers = [(slice(None), z, slice(y, y + PATCH[0]), slice(x, x + PATCH[1]))
               for z in range(image.shape[1]) for y in steps[0] for x in steps[1]]
    gaussian = compute_gaussian(PATCH, sigma_scale=1.0 / 8, value_scaling_factor=10, device=CPU)
    return image, x0_pre, slicers, gaussian


def run_case(networks, **fields):
    image, x0_pre, slicers, gaussian = case_inputs()
    base = dict(t_prime=20, ensemble_size=3, sampler="ddpm", steps=None, seed=5)
    knobs = {f.name for f in dataclasses.fields(PerformanceSettings)}
    settings = SamplingSettings(**{k: v for k, v in {**base, **fields}.items() if k not in knobs})
    performance = PerformanceSettings(**{k: v for k, v in fields.items() if k in knobs})
    counted = []
    # prebuilt SamplingDenoisers (e.g. compiled) go in as the run's, the model holds their networks
    prebuilt = all(isinstance(n, SamplingDenoiser) for n in networks)
    model = FoldDenoisers(tuple(n.network if prebuilt else n for n in networks))
    run = SamplingRun(performance, CPU, denoisers=networks if prebuilt else None, on_step=counted.append)
    result = sample_case(model, CaseWindows(image, x0_pre, slicers, gaussian), settings, "case_7", run)
    # NFE without padding: the ensemble is the total over the folds (3 = 2 + 1 for two), or 3 from every fold
    per_case = settings.ensemble_size * (len(networks) if settings.ensemble_per_fold else 1)
    assert sum(counted) == len(slicers) * per_case * 20 == result.nfe
    return result


def assert_same_case(fast, plain, atol=1e-5):
    assert torch.equal(fast.probabilities.argmax(0), plain.probabilities.argmax(0))
    torch.testing.assert_close(fast.probabilities, plain.probabilities, atol=atol, rtol=0)
    torch.testing.assert_close(fast.uncertainty, plain.uncertainty, atol=atol, rtol=0)


@pytest.fixture(scope="module")
def two_folds():
    return [tiny_denoiser(0), tiny_denoiser(1)]


@pytest.fixture(scope="module")
def plain_result(two_folds):
    return run_case(two_folds, reference_sampler=True, max_batch_size=1)


def test_uncertainty_per_class_averages_to_the_scalar_map(two_folds, plain_result):
    result = run_case(two_folds, reference_sampler=True, max_batch_size=1, uncertainty_per_class=True)
    assert torch.equal(result.probabilities, plain_result.probabilities)
    assert result.class_uncertainty.shape == result.probabilities.shape
    torch.testing.assert_close(result.class_uncertainty.mean(0), plain_result.uncertainty, atol=1e-6, rtol=0)
    # two classes: p0 = 1 - p1 in every sample, so both classes have the same variance
    torch.testing.assert_close(result.class_uncertainty[0], result.class_uncertainty[1], atol=1e-6, rtol=0)


def test_ensemble_per_fold_draws_every_member_from_every_fold(two_folds, plain_result):
    result = run_case(two_folds, reference_sampler=True, max_batch_size=4, ensemble_per_fold=True)
    assert not torch.equal(result.probabilities, plain_result.probabilities)  # 6 samples, not 3


@pytest.mark.parametrize("max_batch_size", [7, 16, 48])
def test_batched_tensor_step_equals_plain(two_folds, plain_result, max_batch_size):
    fast = run_case(two_folds, max_batch_size=max_batch_size)
    assert fast.uncertainty.max() > 1e-4  # the members differ: the comparison sees real ensembles
    assert_same_case(fast, plain_result)


def test_memory_budget_gives_the_same_result(two_folds, plain_result):
    assert_same_case(run_case(two_folds, max_batch_size=64, memory_budget_gb=1e-4), plain_result)


def test_channels_last_equals_plain(two_folds, plain_result):
    try:
        fast = run_case(two_folds, channels_last=True, max_batch_size=16)
    finally:
        for net in two_folds:
            net.to(memory_format=torch.contiguous_format)
    assert_same_case(fast, plain_result)


def test_compiled_denoiser_equals_plain():
    """Inductor on the CPU (20-30 s to compile with a cold cache on 2 cores); padding keeps one batch shape."""
    net = tiny_denoiser(2, features=(4, 8))
    plain = run_case([net], reference_sampler=True, max_batch_size=1)
    shapes = []
    net.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape)))
    compiled = SamplingDenoiser(net, compile=True)
    fast = run_case([compiled], max_batch_size=7)
    assert compiled.compiled and shapes and set(shapes) == {(7, 3, *PATCH)}  # traced once, at the padded shape
    assert_same_case(fast, plain, atol=1e-4)


def test_denoiser_cache_reuses_until_options_change(two_folds):
    cache = DenoiserCache()
    autocast = lambda: torch.autocast("cpu", enabled=False)  # noqa: E731
    first = cache.get(two_folds, autocast, False, False)
    assert cache.get(two_folds, autocast, False, False) is first
    assert cache.get(two_folds[:1], autocast, False, False) is not first


# ---------------------------------------------------------------- attention
def test_attention_uses_scaled_dot_product_attention(monkeypatch):
    net = tiny_denoiser(3)
    n_blocks = sum(isinstance(m, SelfAttentionBlock) for m in net.modules())
    calls = []
    original = F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        calls.append(q.shape)
        assert q.stride(-1) == k.stride(-1) == v.stride(-1) == 1  # what the fused CUDA kernels require
        return original(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        net(torch.randn(2, 3, *PATCH), torch.tensor([3, 4]))
    assert n_blocks >= 1 and len(calls) == n_blocks

    block = SelfAttentionBlock(nn.Conv2d, 8, num_heads=2).double()
    nn.init.normal_(block.proj.weight)
    x = torch.randn(2, 8, 3, 5, dtype=torch.float64)
    q, k, v = block.qkv(block.norm(x)).reshape(2, 3, 2, 4, 15).transpose(-1, -2).unbind(1)
    attn = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1) @ v  # sqrt(head dim 4) = 2
    expected = x + block.proj(attn.transpose(-1, -2).reshape(2, 8, 3, 5))
    torch.testing.assert_close(block(x), expected)


class ConstantLogits(nn.Module):
    """A 'denoiser' whose logits do not depend on its input: ``logits`` at every voxel of every patch."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.num_classes = logits.shape[0]
        self.logits = nn.Parameter(logits.clone(), requires_grad=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.logits.reshape(1, -1, *([1] * (x.ndim - 2))).expand(x.shape[0], -1, *x.shape[2:])


@pytest.mark.parametrize("sampler, steps", [("ddpm", None), ("ddim", 5), ("dpm++", 5)])
def test_softmax_output_samples_end_at_the_networks_softmax(sampler, steps):
    """With ``output_activation='softmax'`` the x0 estimate is 2 softmax(logits) - 1 at every step, so whatever the
    start, every sampler's last step returns it: the probabilities are the network's softmax, with no variance."""
    logits = torch.tensor([0.3, -0.5])
    image, x0_pre, slicers, gaussian = case_inputs()
    settings = SamplingSettings(t_prime=20, ensemble_size=3, sampler=sampler, steps=steps, seed=5)
    config = DiffusionConfig(prediction_type="sample", output_activation="softmax")
    model = FoldDenoisers((ConstantLogits(logits),), config)
    result = sample_case(model, CaseWindows(image, x0_pre, slicers, gaussian), settings, "case_7")
    expected = torch.softmax(logits, 0).reshape(2, 1, 1, 1).expand_as(result.probabilities)
    assert torch.allclose(result.probabilities, expected, atol=1e-5)
    assert result.uncertainty.abs().max() < 1e-8


def test_prebuilt_denoisers_must_match_the_models_folds(two_folds):
    image, x0_pre, slicers, gaussian = case_inputs()
    settings = SamplingSettings(t_prime=20, ensemble_size=2, sampler="ddim", steps=2, seed=5)
    run = SamplingRun(denoisers=[SamplingDenoiser(two_folds[0])])
    with pytest.raises(ValueError, match="1 denoisers for a model of 2 folds"):
        sample_case(FoldDenoisers(tuple(two_folds)), CaseWindows(image, x0_pre, slicers, gaussian), settings, "c", run)
