"""benchmarks/official_side_by_side.py against a stand-in "official checkout" (issue 26).

No official code is in this project, so the test writes a checkout of the same shape: an
`upsamplers` package whose modules import what the official ones import at the top
(torchvision, einops, huggingface_hub: stubbed by the script where they do not import) and
build the hub wrapper with the official names from our own layers. The script runs in a fresh
process (its stubs must not leak into this one).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

FAKE_UPSAMPLERS = textwrap.dedent('''
    import torch.nn as nn
    import torchvision.transforms as T
    from einops import rearrange
    from huggingface_hub import PyTorchModelHubMixin

    from loftup.model import LoftUpConfig, LoftUpUpsampler
    from .layers import ChannelNorm

    class LoftUp(LoftUpUpsampler, PyTorchModelHubMixin, repo_url="https://example.invalid"):
        def __init__(self, dim, lr_pe_type="sine", lr_size=16):
            super().__init__(LoftUpConfig(feat_dim=dim, lr_pe=lr_pe_type, lr_pe_size=lr_size, tiling="never", attn_backend="reference"))

    class UpsamplerwithChannelNorm(nn.Module):
        def __init__(self, upsampler, channelnorm):
            super().__init__()
            self.upsampler, self.channelnorm = upsampler, channelnorm

        def forward(self, lr_feats, img):
            return self.upsampler(self.channelnorm(lr_feats), img)
''')
FAKE_LAYERS = textwrap.dedent('''
    import torchvision.transforms as T
    from loftup.model.layers import ChannelNorm
    norm = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
''')


def test_side_by_side_runs_compares_and_writes_its_tables(tmp_path):
    checkout = tmp_path / "official"
    (checkout / "upsamplers").mkdir(parents=True)
    (checkout / "upsamplers" / "__init__.py").write_text("")
    (checkout / "upsamplers" / "upsamplers.py").write_text(FAKE_UPSAMPLERS)
    (checkout / "upsamplers" / "layers.py").write_text(FAKE_LAYERS)
    out = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "official_side_by_side.py"), "--official", str(checkout),
                           "--sizes", "28", "--repeats", "2", "--threads", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads((out / "official_side_by_side.json").read_text())
    assert set(data["stubbed_modules"]) <= {"torchvision", "torchvision.transforms", "einops", "huggingface_hub"}
    env_ = data["environment"]
    assert len(env_["load_average_start"]) == 3 and len(env_["load_average_end"]) == 3 and env_["torch"]
    rows = {(r["size"], r["precision"]): r for r in data["rows"]}
    assert set(rows) == {(28, "fp32"), (28, "bf16")}
    for r in rows.values():
        assert len(r["official_s"]) == len(r["ours_s"]) == 2 and r["median_pair_ratio"] > 0
    # same weights, same inputs: fp32 agrees, bf16 within bf16's reach
    assert rows[(28, "fp32")]["ours_vs_official"]["max_abs"] < 1e-3
    assert rows[(28, "bf16")]["ours_vs_official_fp32"]["mean_cos"] > 0.99
    table = (out / "official_side_by_side.md").read_text()
    assert "| 28 | fp32 |" in table and "load average" in table


def test_a_folder_that_is_not_the_official_code_is_refused(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "official_side_by_side.py"), "--official", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode != 0 and "not a checkout of the official LoftUp code" in done.stderr
    assert "Traceback" not in done.stderr
