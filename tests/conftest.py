import os

import pytest
import torch

# Tests never touch the network: model hubs are offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One set of CPU threads per core: under pytest-xdist each of N workers gets cores / N (at least 1), and so do the
# processes the tests start (OMP_NUM_THREADS is inherited). Two workers with two OpenMP threads each on two cores
# ran some tests 5-20x slower than alone (spinning threads wait on each other); see benchmarks/results/test_times.md.
THREADS = max(1, min(2, (os.cpu_count() or 1) // max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))))
if "PYTEST_XDIST_WORKER" in os.environ:   # over what the controlling process (which set its own) passed down
    os.environ["OMP_NUM_THREADS"] = str(THREADS)
else:
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
torch.set_num_threads(THREADS)


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial statistics and affine weights, so folding is really tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                    m.bias.copy_(torch.randn(n, generator=g) * 0.1)
            if hasattr(m, "layer_scale") and isinstance(m.layer_scale, torch.nn.Parameter):
                # Layer scales start at 1e-5, which would hide a wrong fold: make them matter.
                m.layer_scale.copy_(torch.rand(m.layer_scale.shape, generator=g) * 0.5 + 0.25)


@pytest.fixture(scope="session")
def synth_folder(tmp_path_factory):
    from mobileclip.data import write_synthetic

    root = tmp_path_factory.mktemp("synth")
    write_synthetic(root, 72, split="val", seed=3, two_object_prob=0.0)
    return root


@pytest.fixture(scope="session")
def hf_clip_dir(tmp_path_factory):
    """A small transformers CLIPModel with random weights, saved without tokenizer files."""
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=32),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           image_size=64, patch_size=16),
        projection_dim=48,
    )
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("hfclip")
    CLIPModel(cfg).save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """An ONNX fp32 bundle of ``mobileclip-tiny`` (seed 0, parity up to batch 4); tests copy it before changing it."""
    from mobileclip.export import export

    out = tmp_path_factory.mktemp("tiny-bundle") / "tiny"
    export("mobileclip-tiny", out, max_batch=4)
    return out


@pytest.fixture(scope="session")
def backend_bundle(tmp_path_factory):
    """``backend_bundle(name)``: an fp32 bundle of ``mobileclip-tiny`` (seed 0, parity up to batch 2) in backend
    ``name``'s format, exported once per session and shared by the registry test and that backend's own
    tests; tests copy it before changing it."""
    made = {}

    def get(name):
        if name not in made:
            from mobileclip.export import export

            out = tmp_path_factory.mktemp(f"bundle-{name}") / name
            export("mobileclip-tiny", out, fmt=name, max_batch=2)
            made[name] = out
        return made[name]

    return get


@pytest.fixture
def tf32_everywhere():
    """CUDA's fp32 settings (cuDNN convolutions, matmuls) set to TF32 for the test, restored after: returns the
    two setting holders, so a test can check what a block turns them into (skipped on a torch without them)."""
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    if not hasattr(conv, "fp32_precision"):
        pytest.skip(f"torch {torch.__version__} has no torch.backends.cudnn.conv.fp32_precision")
    before = (conv.fp32_precision, matmul.fp32_precision)
    conv.fp32_precision, matmul.fp32_precision = "tf32", "tf32"
    try:
        yield conv, matmul
    finally:
        conv.fp32_precision, matmul.fp32_precision = before
