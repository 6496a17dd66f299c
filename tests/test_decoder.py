import pytest
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
    # the style depends on the pooled features: swapping the samples swaps their style codes
    pooled = f.mean(dim=(2, 3))
    assert not torch.allclose(decoder.mapping(pooled)[0], decoder.mapping(pooled.flip(0))[0])


def test_decoder_with_style_from_grids_needs_a_style():
    decoder = BRICSDecoder(in_channels=8, block_out_channels=(8, 4), style_dim=6)
    assert decoder.mapping is None
    f, style = torch.randn(2, 8, 4, 4), torch.randn(2, 6)
    assert decoder(f, style).shape == (2, 3, 8, 8)
    assert not torch.allclose(decoder(f, style), decoder(f, style.flip(0)))
    with pytest.raises(ValueError, match="pass style"):
        decoder(f)


def test_release_layer_list_and_parameter_count():
    # Release, --additional_decoder_conv: conv1 + conv_ex at 64^2; conv0 (up) + conv1 + conv_ex at 128^2 and 256^2;
    # to-RGB at each; noise inputs with a learned strength: 9,445,521 parameters (NVlabs' SynthesisNetwork).
    decoder = BRICSDecoder(512, 3, (512, 256, 128), first_block_layers=2, layers_per_block=2, style_dim=512,
                           feature_size=64, conv_clamp=256)
    assert [len(block.convs) for block in decoder.blocks] == [2, 3, 3]
    assert sum(p.numel() for p in decoder.parameters()) == 9_445_521
    noise = [tuple(conv.noise_const.shape) for block in decoder.blocks for conv in block.convs]
    assert noise == [(64, 64)] * 2 + [(128, 128)] * 3 + [(256, 256)] * 3


def test_noise_inputs_random_const_and_none():
    decoder = BRICSDecoder(in_channels=8, block_out_channels=(8, 4), style_dim=6, feature_size=4)
    with torch.no_grad():
        for p in decoder.parameters():
            if p.ndim == 0:
                p.fill_(0.5)  # noise strengths start at 0: make the noise visible
    f, style = torch.randn(2, 8, 4, 4), torch.randn(2, 6)
    const = decoder(f, style, noise_mode="const")
    torch.testing.assert_close(decoder(f, style, noise_mode="const"), const, rtol=0, atol=0)
    none = decoder(f, style, noise_mode="none")
    assert not torch.allclose(const, none)
    one = decoder(f, style, noise_mode="random", generator=torch.Generator().manual_seed(1))
    same = decoder(f, style, noise_mode="random", generator=torch.Generator().manual_seed(1))
    other = decoder(f, style, noise_mode="random", generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(one, same, rtol=0, atol=0)
    assert not torch.allclose(one, other) and not torch.allclose(one, const)
    with pytest.raises(ValueError, match="noise_mode"):
        decoder(f, style, noise_mode="fixed")


def test_random_noise_survives_gradient_checkpointing():
    decoder = BRICSDecoder(in_channels=8, block_out_channels=(8, 4), style_dim=6, feature_size=4)
    with torch.no_grad():
        for p in decoder.parameters():
            if p.ndim == 0:
                p.fill_(0.5)
    f, style = torch.randn(2, 8, 4, 4), torch.randn(2, 6)
    grads = []
    for checkpointing in (False, True):
        decoder.zero_grad()
        decoder.gradient_checkpointing = checkpointing
        decoder._gradient_checkpointing_func = lambda fn, *args: torch.utils.checkpoint.checkpoint(
            fn, *args, use_reentrant=False)
        decoder(f, style, noise_mode="random", generator=torch.Generator().manual_seed(3)).square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in decoder.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_conv_clamp_bounds_every_layer():
    conv = ModulatedConv2d(4, 6, style_dim=5, conv_clamp=0.5)
    out = conv(torch.randn(3, 4, 8, 8) * 100, torch.randn(3, 5))
    assert float(out.detach().abs().max()) == 0.5


def test_decoding_without_a_graph_gives_the_same_image():
    # the no-grad path updates the convolutions' outputs in place; it must not change a single value
    decoder = BRICSDecoder(in_channels=8, block_out_channels=(8, 4), style_dim=6, feature_size=4, conv_clamp=0.5)
    with torch.no_grad():
        for p in decoder.parameters():
            if p.ndim == 0:
                p.fill_(0.5)
    f, style = torch.randn(2, 8, 4, 4), torch.randn(2, 6)
    with_graph = decoder(f, style)
    with torch.no_grad():
        without = decoder(f, style)
    with torch.inference_mode():
        inference = decoder(f, style)
    assert with_graph.requires_grad and torch.equal(with_graph.detach(), without) and torch.equal(without, inference)
