import torch

from nnunet_pdddpm.diffusion import decode_to_probabilities, encode_labels, encode_probabilities, hard_onehot


def test_encode_binary_and_multiclass_one_hot_in_minus_one_one():
    seg = torch.tensor([[[0, 1], [2, 0]]])[:, None]  # (B=1, 1, 2, 2)
    enc = encode_labels(seg, [0, 1, 2])
    assert enc.shape == (1, 3, 2, 2)
    assert set(enc.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(enc.argmax(1), seg[:, 0])
    # labels need not be consecutive: channel k is the k-th label
    enc2 = encode_labels(torch.tensor([[0, 5]])[:, None], [0, 5])
    assert enc2[0, :, 1].tolist() == [-1.0, 1.0]


def test_decode_sums_to_one_and_inverts_encoding():
    seg = torch.randint(0, 3, (2, 1, 4, 5))
    p = decode_to_probabilities(encode_labels(seg, [0, 1, 2]))
    torch.testing.assert_close(p.sum(1), torch.ones(2, 4, 5))
    assert torch.equal(p.argmax(1), seg[:, 0])
    assert p.max() > 0.999


def test_binary_argmax_equals_mean_foreground_above_half():
    x = torch.rand(5, 2, 7, 7) * 2.4 - 1.2
    p = decode_to_probabilities(x)
    assert torch.equal(p.argmax(1) == 1, p[:, 1] > 0.5)


def test_hard_and_soft_pre_segmentation_encodings():
    probs = torch.tensor([[0.7, 0.2], [0.3, 0.8]])[None]  # (1, K=2, 2)
    assert hard_onehot(probs)[0].tolist() == [[1.0, -1.0], [-1.0, 1.0]]
    torch.testing.assert_close(encode_probabilities(probs)[0], torch.tensor([[0.4, -0.6], [-0.4, 0.6]]))


def test_pre_segmentation_start_treats_padding_as_background():
    from nnunet_pdddpm.diffusion import encode_pre_segmentation

    p = torch.tensor([[[0.2, 0.0, 0.7], [0.5, 0.0, 0.1], [0.3, 0.0, 0.2]]])  # (B=1, K=3, 3 voxels); voxel 1 is padding
    soft = encode_pre_segmentation(p, soft=True)
    hard = encode_pre_segmentation(p, soft=False)
    expected_p = p.clone()
    expected_p[0, :, 1] = torch.tensor([1.0, 0.0, 0.0])
    assert torch.equal(soft, expected_p * 2 - 1)
    assert torch.equal(hard[0].argmax(0), torch.tensor([1, 0, 0])) and set(hard.unique().tolist()) == {-1.0, 1.0}
    assert p[0, 0, 1] == 0  # the caller's probabilities are left as they were
