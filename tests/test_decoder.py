import torch
import torch.nn.functional as F

from diffusers_brics.models import BRICSDecoder
from diffusers_brics.models.decoder import ModulatedConv2d, SynthesisBlock


def test_modulated_conv_equals_per_sample_weights():
    conv = ModulatedConv2d(4, 6, style_dim=5)
    x, style = torch.randn(3, 4, 8, 8), torch.randn(3, 5)
    out = conv(x, style)
    s = conv.affine(style)
    expected = []
    for b in range(3):  # StyleGAN2 equations: w' = w * s, w'' = w' / sqrt(sum w'^2)
        w = conv.weight * conv.weight_gain * s[b].view(1, -1, 1, 1)
        w = w * torch.rsqrt(w.square().sum(dim=(1, 2, 3), keepdim=True) + 1e-8)
        y = F.conv2d(x[b : b + 1], w, padding=1) + conv.bias.view(1, -1, 1, 1)
        expected.append(F.leaky_relu(y, 0.2) * 2**0.5)
    torch.testing.assert_close(out, torch.cat(expected), rtol=1e-4, atol=1e-5)


def test_upsampling_conv_doubles_resolution_and_keeps_constants():
    conv = ModulatedConv2d(2, 3, style_dim=4, up=True, demodulate=False, activation=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, :, 1, 1] = 1.0  # centre tap only: the up-sampling should reproduce a constant image
        conv.affine.weight.zero_()
    with torch.no_grad():
        out = conv(torch.ones(1, 2, 8, 8), torch.zeros(1, 4))
    assert out.shape == (1, 3, 16, 16)
    interior = out[..., 2:-2, 2:-2]
    torch.testing.assert_close(interior, torch.full_like(interior, interior[0, 0, 0, 0].item()))


def test_skip_image_upsampling_preserves_constants():
    block = SynthesisBlock(4, 4, 3, style_dim=4, num_layers=1, up=True)
    up = block.upsample_image(torch.full((1, 3, 6, 6), 0.7))
    assert up.shape == (1, 3, 12, 12)
    torch.testing.assert_close(up[..., 1:-1, 1:-1], torch.full((1, 3, 10, 10), 0.7))


def test_decoder_output_shape_and_style_from_features():
    decoder = BRICSDecoder(in_channels=8, block_out_channels=(8, 8, 4), style_dim=8, mapping_layers=2)
    f = torch.randn(2, 8, 4, 4)
    img = decoder(f)
    assert img.shape == (2, 3, 16, 16)
    # the style depends on the pooled features: scaling one sample's features changes its style code
    assert not torch.allclose(decoder.mapping(f)[0], decoder.mapping(f.flip(0))[0])
