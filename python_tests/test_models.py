"""lmcl_fast.models: torchvision-compatible ResNets, the tiny CNN, the heads and the weight loader."""
import pytest
import torch

from lmcl_fast.models import (
    IQANet,
    ProjectionHead,
    QualityHead,
    SaliencyHead,
    TinyCNN,
    build_model,
    load_backbone_weights,
    resnet18,
    resnet50,
)


def _bn(prefix, c):
    # The five state_dict entries of a torch.nn.BatchNorm2d(c).
    return [(f"{prefix}.weight", (c,)), (f"{prefix}.bias", (c,)), (f"{prefix}.running_mean", (c,)),
            (f"{prefix}.running_var", (c,)), (f"{prefix}.num_batches_tracked", ())]


# torchvision.models.resnet18().state_dict(): names and shapes, in order (torchvision is not installable
# here, so the list is written out from torchvision's architecture; BatchNorm entries via _bn).
TORCHVISION_RESNET18 = (
    [("conv1.weight", (64, 3, 7, 7))] + _bn("bn1", 64)
    + [("layer1.0.conv1.weight", (64, 64, 3, 3))] + _bn("layer1.0.bn1", 64)
    + [("layer1.0.conv2.weight", (64, 64, 3, 3))] + _bn("layer1.0.bn2", 64)
    + [("layer1.1.conv1.weight", (64, 64, 3, 3))] + _bn("layer1.1.bn1", 64)
    + [("layer1.1.conv2.weight", (64, 64, 3, 3))] + _bn("layer1.1.bn2", 64)
    + [("layer2.0.conv1.weight", (128, 64, 3, 3))] + _bn("layer2.0.bn1", 128)
    + [("layer2.0.conv2.weight", (128, 128, 3, 3))] + _bn("layer2.0.bn2", 128)
    + [("layer2.0.downsample.0.weight", (128, 64, 1, 1))] + _bn("layer2.0.downsample.1", 128)
    + [("layer2.1.conv1.weight", (128, 128, 3, 3))] + _bn("layer2.1.bn1", 128)
    + [("layer2.1.conv2.weight", (128, 128, 3, 3))] + _bn("layer2.1.bn2", 128)
    + [("layer3.0.conv1.weight", (256, 128, 3, 3))] + _bn("layer3.0.bn1", 256)
    + [("layer3.0.conv2.weight", (256, 256, 3, 3))] + _bn("layer3.0.bn2", 256)
    + [("layer3.0.downsample.0.weight", (256, 128, 1, 1))] + _bn("layer3.0.downsample.1", 256)
    + [("layer3.1.conv1.weight", (256, 256, 3, 3))] + _bn("layer3.1.bn1", 256)
    + [("layer3.1.conv2.weight", (256, 256, 3, 3))] + _bn("layer3.1.bn2", 256)
    + [("layer4.0.conv1.weight", (512, 256, 3, 3))] + _bn("layer4.0.bn1", 512)
    + [("layer4.0.conv2.weight", (512, 512, 3, 3))] + _bn("layer4.0.bn2", 512)
    + [("layer4.0.downsample.0.weight", (512, 256, 1, 1))] + _bn("layer4.0.downsample.1", 512)
    + [("layer4.1.conv1.weight", (512, 512, 3, 3))] + _bn("layer4.1.bn1", 512)
    + [("layer4.1.conv2.weight", (512, 512, 3, 3))] + _bn("layer4.1.bn2", 512)
    + [("fc.weight", (1000, 512)), ("fc.bias", (1000,))]
)


def _params(m):
    return sum(p.numel() for p in m.parameters())


def test_resnet18_state_dict_matches_torchvision():
    sd = resnet18().state_dict()
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == TORCHVISION_RESNET18
    assert len(sd) == 122
    assert _params(resnet18()) == 11_689_512  # torchvision's published count


def test_resnet50_matches_torchvision_layout():
    sd = resnet50().state_dict()
    assert len(sd) == 320
    assert _params(resnet50()) == 25_557_032  # torchvision's published count
    # v1.5: the stride sits on the 3x3 convolution of the first bottleneck of a stage.
    assert tuple(sd["layer2.0.conv2.weight"].shape) == (128, 128, 3, 3)
    assert tuple(sd["layer2.0.downsample.0.weight"].shape) == (512, 256, 1, 1)
    assert tuple(sd["layer4.2.bn3.running_var"].shape) == (2048,)
    assert tuple(sd["fc.weight"].shape) == (1000, 2048)


@pytest.mark.parametrize("ctor,dim", [(resnet18, 512), (resnet50, 2048)])
def test_resnet_features_without_classifier(ctor, dim):
    m = ctor(num_classes=None).eval()
    assert m.fc is None and not any(k.startswith("fc.") for k in m.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert m(x).shape == (2, dim) == m.forward_features(x).shape
        assert ctor(num_classes=7).eval()(x).shape == (2, 7)


def test_load_torchvision_weights_file(tmp_path):
    src = resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(src.state_dict(), path)
    model = build_model("resnet18")
    dropped = load_backbone_weights(model, str(path))
    assert dropped == ["fc.bias", "fc.weight"]
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, src.state_dict()[k]), k


def test_load_weights_refuses_other_architecture(tmp_path):
    path = tmp_path / "resnet50.pth"
    torch.save(resnet50().state_dict(), path)
    with pytest.raises(ValueError, match="weights"):
        load_backbone_weights(build_model("resnet18"), str(path))


def test_build_model_rejects_unknown_arch():
    with pytest.raises(ValueError, match="arch"):
        build_model("vgg16")


@pytest.mark.parametrize("arch", ["tiny", "resnet18"])
def test_iqanet_outputs_and_gradients(arch):
    model = build_model(arch, embed_dim=128)
    crops = torch.randn(6, 3, 32, 32)
    out = model(crops)
    assert out.z.shape == (6, 128) and out.saliency.shape == (6,) and out.quality.shape == (6,)
    (out.z.sum() + out.saliency.sum() + out.quality.sum()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_heads_shapes():
    f = torch.randn(5, 64)
    assert ProjectionHead(64, 32, 128)(f).shape == (5, 128)
    assert SaliencyHead(64, 16)(f).shape == (5,)
    assert QualityHead(64, 16)(f).shape == (5,)
    assert isinstance(build_model("tiny"), IQANet)
    assert TinyCNN().feature_dim == 128


def test_mscn_reference():
    import torch.nn.functional as F

    from lmcl_fast.models.tiny import _gaussian_taps, mscn

    x = torch.rand(2, 3, 20, 24, dtype=torch.float64)
    taps = _gaussian_taps(dtype=torch.float64)
    k = taps[:, None] * taps[None, :]  # the 7 x 7 window
    out = mscn(x, taps).double()
    # Direct float64 reference: windowed mean and deviation around one interior pixel.
    g = x.mean(1)
    i, j = 9, 11
    win = g[:, i - 3:i + 4, j - 3:j + 4]
    mu = (win * k).sum((1, 2))
    sd = (((win - mu[:, None, None]) ** 2) * k).sum((1, 2)).sqrt()  # two-pass: no cancellation
    torch.testing.assert_close(out[:, 0, i, j], (g[:, i, j] - mu) / (sd + 0.05), rtol=1e-4, atol=1e-4)
    # Every pixel, edges included: replicate padding and two float64 2-D convolutions.
    gp = F.pad(g[:, None], (3, 3, 3, 3), mode="replicate")
    mu = F.conv2d(gp, k[None, None])
    sd = (F.conv2d(gp * gp, k[None, None]) - mu * mu).clamp_min(0).sqrt()
    torch.testing.assert_close(out, (g[:, None] - mu) / (sd + 0.05), rtol=1e-4, atol=1e-4)
    # Invariant to a brightness shift; a flat image gives zeros; channels-last input gives the same map.
    torch.testing.assert_close(mscn(x + 0.3, taps), mscn(x, taps), rtol=1e-4, atol=1e-4)
    assert mscn(torch.full((1, 3, 8, 8), 0.7, dtype=torch.float64), taps).abs().max() < 1e-6
    x32 = x.float()
    assert torch.equal(mscn(x32.contiguous(memory_format=torch.channels_last), taps), mscn(x32, taps))
