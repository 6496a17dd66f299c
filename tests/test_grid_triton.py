"""The Triton backend of `MultiResolutionFeatureGrid` against its torch path, on the same tables.

Without CUDA the kernels run under Triton's interpreter: conftest.py sets ``TRITON_INTERPRET=1`` before Triton is
first imported.
"""

import ast
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from diffusers_brics import BRICSAutoencoder  # noqa: E402
from diffusers_brics.models import MultiResolutionFeatureGrid, grid_triton  # noqa: E402
from diffusers_brics.models.grid_layout import GridLayout  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_grid(input_dim=3, features=3, **kwargs):
    options = dict(num_levels=4, log2_hashmap_size=6 if input_dim == 2 else 8, min_resolution=2, max_resolution=12)
    options.update(kwargs)
    grid = MultiResolutionFeatureGrid(input_dim, features_per_level=features, backend="triton", **options).to(DEVICE)
    torch.nn.init.normal_(grid.embeddings)
    return grid


def queries(count, input_dim, dtype=torch.float32):
    x = torch.rand(count, input_dim, device=DEVICE)
    x[:2] = torch.tensor([0.0, 1.0], device=DEVICE).view(2, 1)  # the corners of the unit cube
    return x.to(dtype)


def lookup_with_grads(grid, x, backend, upstream=None):
    """``grid.interpolate(x)`` on ``backend``: the output, and the gradients of ``<out, upstream>`` (x, table)."""
    grid.backend = backend
    grid.zero_grad()
    x = x.detach().requires_grad_(True)
    out = grid.interpolate(x)
    if upstream is None:
        upstream = torch.randn(out.shape, device=out.device, generator=torch.Generator(out.device).manual_seed(1))
    (out.float() * upstream).sum().backward()
    return out.detach(), x.grad, grid.embeddings.grad


def assert_backends_agree(grid, x):
    assert grid_triton.runs_on(x.device), "the kernels must serve the test device (TRITON_INTERPRET on a CPU)"
    out, grad_x, grad_table = lookup_with_grads(grid, x, "triton")
    ref_out, ref_grad_x, ref_grad_table = lookup_with_grads(grid, x, "torch")
    assert out.dtype == ref_out.dtype and grad_table.dtype == grid.embeddings.dtype
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_table, ref_grad_table, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grad_x, ref_grad_x, rtol=1e-4, atol=1e-4)
    assert grad_x.abs().sum() > 0 and grad_table.abs().sum() > 0


@pytest.mark.parametrize(
    "input_dim, convention, indexing",
    [(d, c, i) for d in (2, 3, 4) for c in ("torch-ngp", "tcnn") for i in ("tiled", "hash")]
    + [(5, "torch-ngp", "tiled"), (5, "tcnn", "hash")],
)
def test_matches_torch_backend(input_dim, convention, indexing):
    grid = make_grid(input_dim, convention=convention, indexing=indexing)
    assert 0 < grid.num_dense_levels < grid.num_levels  # dense and shared levels
    assert_backends_agree(grid, queries(300, input_dim))


@pytest.mark.parametrize("features", [1, 4, 5])
def test_any_number_of_features(features):
    assert_backends_agree(make_grid(3, features, indexing="hash"), queries(200, 3))


@pytest.mark.parametrize("table_dtype, query_dtype", [(torch.float16, torch.float32), (torch.float32, torch.bfloat16)])
def test_half_precision_table_and_queries(table_dtype, query_dtype):
    grid = make_grid(3).to(table_dtype)
    x = queries(200, 3, query_dtype)
    out, grad_x, grad_table = lookup_with_grads(grid, x, "triton")
    ref_out, ref_grad_x, ref_grad_table = lookup_with_grads(grid, x, "torch")
    assert out.dtype == query_dtype and grad_x.dtype == query_dtype and grad_table.dtype == table_dtype
    tolerance = dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(out, ref_out, **tolerance)
    torch.testing.assert_close(grad_table, ref_grad_table, **tolerance)
    torch.testing.assert_close(grad_x, ref_grad_x, **tolerance)


def test_empty_batch():
    grid = make_grid(3)
    out, grad_x, grad_table = lookup_with_grads(grid, torch.rand(0, 3, device=DEVICE), "triton")
    assert out.shape == (0, 12) and grad_x.shape == (0, 3)
    assert grad_table.shape == grid.embeddings.shape and not grad_table.any()


def test_custom_op_registration():
    grid = make_grid(3, indexing="hash")
    x = queries(50, 3).requires_grad_(True)
    layout = grid.layout
    args = (x, grid.embeddings, list(layout.scales), list(layout.strides), list(layout.offsets), list(layout.entries),
            list(layout.primes), grid.num_dense_levels, grid.num_dense_levels)
    assert (layout.hash_from, layout.wrap_from) == (grid.num_dense_levels, grid.num_dense_levels)
    torch.library.opcheck(torch.ops.diffusers_brics.grid_interpolate.default, args)


def test_lookup_takes_a_table_and_a_layout():
    """The kernels need no grid module: a plain table and a `GridLayout` built on its own give the grid's look-up."""
    grid = make_grid(4, convention="tcnn", indexing="hash")
    layout = GridLayout.build(4, 4, 2, 12, 8, "tcnn", "hash")
    assert layout == grid.layout and layout.wrap_from == 0
    table = grid.embeddings.detach().clone()
    x = queries(100, 4)
    torch.testing.assert_close(grid_triton.lookup(x, table, layout), grid.interpolate(x), rtol=0, atol=0)
    imports = [node for node in ast.walk(ast.parse(Path(grid_triton.__file__).read_text()))
               if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert not any("feature_grid" in (getattr(node, "module", None) or "") or
                   any("feature_grid" in alias.name for alias in node.names) for node in imports)


class Lookup(torch.nn.Module):
    def __init__(self, grid):
        super().__init__()
        self.grid = grid

    def forward(self, x):
        return self.grid.interpolate(x)


def test_torch_compile_keeps_the_op_whole():
    model = Lookup(make_grid(3))
    x = queries(200, 3)
    upstream = torch.randn(200, 12, device=DEVICE)
    out, grad_x, grad_table = lookup_with_grads(model.grid, x, "triton", upstream)
    torch._dynamo.reset()
    try:
        explanation = torch._dynamo.explain(model)(x)
        assert explanation.graph_count == 1 and explanation.graph_break_count == 0
        x_compiled = x.clone().requires_grad_(True)
        model.grid.zero_grad()
        out_compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(x_compiled)
        (out_compiled * upstream).sum().backward()
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(out_compiled, out, rtol=0, atol=0)
    torch.testing.assert_close(x_compiled.grad, grad_x, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(model.grid.embeddings.grad, grad_table, rtol=1e-6, atol=1e-6)


def test_cpu_queries_take_the_torch_path_without_interpreter_with_one_warning(monkeypatch):
    grid = make_grid(3).cpu()  # e.g. a model built on a CUDA machine, then moved to the CPU
    monkeypatch.setattr(grid_triton, "INTERPRETED", False)
    monkeypatch.setattr(grid_triton, "lookup", lambda *args: pytest.fail("the kernels ran on CPU tensors"))
    x = torch.rand(100, 3)
    with pytest.warns(UserWarning, match=r"grid backend 'triton' cannot take this call: .*got cpu tensors.*torch path"):
        out = grid.interpolate(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per grid
        assert torch.equal(out, grid.interpolate(x))
    grid.backend = "torch"
    assert torch.equal(out, grid.interpolate(x))


def test_float64_takes_the_torch_path(monkeypatch):
    grid = make_grid(3).double()
    monkeypatch.setattr(grid_triton, "lookup", lambda *args: pytest.fail("the kernels compute in float32"))
    x = queries(20, 3, torch.float64).requires_grad_(True)
    with pytest.warns(UserWarning, match=r"'triton' cannot take this call: .*float64"):
        assert torch.autograd.gradcheck(grid.interpolate, (x,), eps=1e-6, atol=1e-5)
    assert grid.interpolate(x).dtype == torch.float64


def test_backend_is_resolved_once(monkeypatch):
    """The look-up dispatches on the backend chosen at construction; it does not probe the machine again."""
    probes = []
    probe = MultiResolutionFeatureGrid.triton_unavailable_reason
    monkeypatch.setattr(MultiResolutionFeatureGrid, "triton_unavailable_reason",
                        lambda self, device=None: probes.append(device) or probe(self, device))
    grid = make_grid(3)
    assert grid.backend == "triton" and probes == [None]
    x = queries(50, 3).requires_grad_(True)
    for _ in range(3):
        grid(x).sum().backward()
        with torch.no_grad():
            grid.interpolate(x)
    assert probes == [None]


def test_saved_autoencoder_with_triton_grids_matches_torch(tmp_path):
    torch.manual_seed(0)
    BRICSAutoencoder.from_preset("tiny", grid_backend="triton").save_pretrained(tmp_path)
    model = BRICSAutoencoder.from_pretrained(tmp_path).to(DEVICE).eval()
    grids = model.retrieval.grids
    assert all(grid.backend == "triton" for grid in grids)
    z = torch.rand(2, *model.latent_shape, device=DEVICE)
    with torch.no_grad():
        features, style = model.retrieval(z)
        for grid in grids:
            grid.backend = "torch"
        ref_features, ref_style = model.retrieval(z)
    torch.testing.assert_close(features, ref_features, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(style, ref_style, rtol=1e-5, atol=1e-6)


def test_auto_picks_triton_on_cuda_machines(monkeypatch):
    config = dict(input_dim=3, num_levels=4, features_per_level=2, log2_hashmap_size=8, min_resolution=2,
                  max_resolution=12, backend="auto")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    grid = MultiResolutionFeatureGrid(**config)
    assert grid.backend == "torch" and "CUDA" in grid.triton_unavailable_reason(device="cuda")
    if grid_triton.INTERPRETED:  # named, the backend still runs on the CPU, under Triton's interpreter
        assert grid.triton_unavailable_reason() is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (6, 0))
    assert "7.0" in MultiResolutionFeatureGrid(**config).triton_unavailable_reason(device="cuda")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert MultiResolutionFeatureGrid(**config).backend == "triton"
    monkeypatch.setitem(sys.modules, "triton", None)  # Triton not importable; tiny-cuda-nn cannot serve torch-ngp
    assert MultiResolutionFeatureGrid(**config).backend == "torch"


def test_missing_triton_warns_and_uses_auto(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)
    message = r"grid backend 'triton' cannot run on this machine: the triton package is not installed.*'auto'"
    with pytest.warns(UserWarning, match=message):
        grid = MultiResolutionFeatureGrid(3, 4, 2, 8, 2, 12, backend="triton")
    assert grid.backend == "torch" and grid.requested_backend == "triton"
    assert "requested 'triton'" in repr(grid)


def test_triton_without_cuda_or_interpreter_warns_and_uses_auto(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(grid_triton, "INTERPRETED", False)
    with pytest.warns(UserWarning, match=r"'triton' cannot run on this machine: .*CUDA device.*TRITON_INTERPRET"):
        grid = MultiResolutionFeatureGrid(3, 4, 2, 8, 2, 12, backend="triton")
    assert grid.backend == "torch"


LOWER_FOR_SM90 = """
import importlib.util, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

spec = importlib.util.spec_from_file_location("grid_triton", sys.argv[1])  # without the package's imports
grid_triton = importlib.util.module_from_spec(spec)
spec.loader.exec_module(grid_triton)
assert not grid_triton.INTERPRETED
types = dict(table_ptr="*fp16", N="i32", num_levels="i32", hash_from="i32", wrap_from="i32",
             strides_ptr="*i64", starts_ptr="*i64", entries_ptr="*i64", primes_ptr="*i64")
constexprs = dict(D=3, F=3, F_POW2=4, BLOCK=128, TABLE_GRAD=True, QUERY_GRAD=True)
for kernel in (grid_triton._forward_kernel, grid_triton._backward_kernel):
    names = [name for name in kernel.arg_names if name not in constexprs]
    signature = {name: types.get(name, "*fp32") for name in names}
    signature.update({name: "constexpr" for name in kernel.arg_names if name in constexprs})
    aligned = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(names) if signature[name].startswith("*")}
    source = ASTSource(kernel, signature, constexprs={k: v for k, v in constexprs.items() if k in signature},
                       attrs=aligned)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=dict(enable_fp_fusion=False))
    assert compiled.asm["cubin"] and "fma.rn.f32" not in compiled.asm["ptx"], kernel
"""


def test_kernels_lower_to_cuda_binaries_without_a_device(tmp_path):
    """The interpreter accepts more than Triton's compiler: lower both kernels to sm_90 code (the wheel's ptxas)."""
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", LOWER_FOR_SM90, grid_triton.__file__], capture_output=True,
                            text=True, env=env, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-4000:]


def test_interpreter_switched_after_importing_triton_is_a_clear_error():
    code = "\n".join([
        "import importlib.util, os, sys",
        "import triton  # its own helpers compiled",
        "os.environ['TRITON_INTERPRET'] = '1'",
        "spec = importlib.util.spec_from_file_location('grid_triton', sys.argv[1])",
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))",
    ])
    env = {**os.environ, "TRITON_INTERPRET": "0", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code, grid_triton.__file__], capture_output=True, text=True,
                            env=env, timeout=120, check=False)
    assert result.returncode != 0 and "set it before anything imports triton" in result.stderr, result.stderr[-2000:]
