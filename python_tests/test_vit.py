"""ViT-S/16 backbone: the state_dict of timm's vit_small_patch16_224 / DeiT-S loads; forward shapes."""
import pytest
import torch

from lmcl_fast.models import VisionTransformer, build_model, load_backbone_weights


def timm_vit_small_keys() -> dict:
    """Key -> shape of timm's vit_small_patch16_224 state_dict (timm/models/vision_transformer.py:
    VisionTransformer with PatchEmbed.proj, cls_token, pos_embed, blocks.i.{norm1, attn.qkv, attn.proj, norm2,
    mlp.fc1, mlp.fc2}, norm, head; embed_dim 384, depth 12, 6 heads, mlp_ratio 4, qkv_bias)."""
    d, h = 384, 1536
    keys = {"cls_token": (1, 1, d), "pos_embed": (1, 197, d), "patch_embed.proj.weight": (d, 3, 16, 16),
            "patch_embed.proj.bias": (d,), "norm.weight": (d,), "norm.bias": (d,), "head.weight": (1000, d),
            "head.bias": (1000,)}
    for i in range(12):
        b = f"blocks.{i}."
        keys.update({b + "norm1.weight": (d,), b + "norm1.bias": (d,), b + "attn.qkv.weight": (3 * d, d),
                     b + "attn.qkv.bias": (3 * d,), b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,),
                     b + "norm2.weight": (d,), b + "norm2.bias": (d,), b + "mlp.fc1.weight": (h, d),
                     b + "mlp.fc1.bias": (h,), b + "mlp.fc2.weight": (d, h), b + "mlp.fc2.bias": (d,)})
    return keys


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("vit_s16").eval()


def test_state_dict_matches_timm_keys(model):
    own = {k: tuple(v.shape) for k, v in model.backbone.state_dict().items()}
    assert own == {k: s for k, s in timm_vit_small_keys().items() if not k.startswith("head.")}
    classifier = VisionTransformer(depth=0, num_classes=1000).head  # with a classifier: timm's head
    assert (tuple(classifier.weight.shape), tuple(classifier.bias.shape)) == ((1000, 384), (1000,))


def test_load_timm_and_deit_files(tmp_path, model):
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=g) for k, s in timm_vit_small_keys().items()}
    # timm's files are the bare state_dict; DeiT's wrap it as {"model": ...}.
    for i, obj in enumerate((state, {"model": state, "epoch": 300})):
        path = tmp_path / f"vit{i}.pth"
        torch.save(obj, path)
        for p in model.backbone.parameters():
            p.data.zero_()
        assert load_backbone_weights(model, str(path)) == ["head.bias", "head.weight"]
        got = model.backbone.state_dict()
        assert all(torch.equal(got[k], v) for k, v in state.items() if not k.startswith("head."))


def test_forward_shapes(model):
    with torch.no_grad():
        out = model(torch.randn(2, 3, 224, 224))
        assert out.z.shape == (2, 128) and out.saliency.shape == (2,) and out.quality.shape == (2,)
        feats = model.backbone.forward_features(torch.randn(3, 3, 64, 96))  # 4 x 6 grid: resampled positions
        assert feats.shape == (3, 384) and torch.isfinite(feats).all()
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model.backbone.forward_features(torch.randn(1, 3, 50, 64))
