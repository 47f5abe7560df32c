"""CPU attention under bf16 autocast: the fused bf16 kernel against the float32 one.

1. Attention alone, forward + backward, over (batch, heads, length, head_dim) shapes from the
   ViT on Fashion-MNIST (50 tokens) to text windows of 512: bf16 inputs through the bf16 kernel
   against the same inputs upcast to float32 and the output cast back (what ``attend`` does
   while length × head_dim ≤ ``CPU_FLOAT32_ATTENTION_MAX``).
2. A whole fine-tuning step (forward, backward, AdamW) of the fmnist ViT (width 128, depth 6,
   4×4 patches, batch 64) under bf16 autocast, with the float32 route on and off.

Repeats interleave the variants and medians are taken, because this machine's speed drifts
over minutes. The last line printed is one JSON object with every figure.

    OMP_NUM_THREADS=1 python benchmarks/cpu_attention.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, machine
from headstart.config import VisionConfig
from headstart.models import transformer
from headstart.models.vision import build_vision

SHAPES = [
    (64, 4, 50, 32),
    (64, 2, 50, 64),
    (32, 4, 128, 32),
    (32, 2, 128, 64),
    (16, 8, 256, 32),
    (16, 4, 256, 64),
    (8, 8, 512, 64),
]


def with_float32_limit(run: Callable[[], None], limit: int) -> Callable[[], None]:
    def limited() -> None:
        transformer.CPU_FLOAT32_ATTENTION_MAX = limit
        run()

    return limited


def attention_step(shape: tuple[int, ...], upcast: bool) -> Callable[[], None]:
    q, k, v = (torch.randn(shape, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))

    def run() -> None:
        if upcast:
            y = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(torch.bfloat16)
        else:
            y = F.scaled_dot_product_attention(q, k, v)
        y.sum().backward()

    return run


def vit_step() -> Callable[[], None]:
    torch.manual_seed(0)
    config = VisionConfig(kind="vit", width=128, depth=6, patch=4, n_head=4, pooling="avg", channels=1, image_size=28)
    model = torch.nn.Sequential(build_vision(config), torch.nn.Linear(config.width, 10))
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    images, labels = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))

    def run() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(images).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    results: dict[str, object] = {"machine": machine()}
    rows = []
    for shape in SHAPES:
        times = interleaved(
            {"bf16": attention_step(shape, False), "float32": attention_step(shape, True)}, args.repeats, warmup=2
        )
        bf16_ms, float32_ms = 1e3 * times["bf16"], 1e3 * times["float32"]
        rows.append({"shape": shape, "bf16_ms": bf16_ms, "float32_ms": float32_ms, "speedup": bf16_ms / float32_ms})
        print(f"attention {shape}: bf16 {bf16_ms:.1f} ms, float32 {float32_ms:.1f} ms, ×{bf16_ms / float32_ms:.2f}")
    results["attention"] = rows
    step, limit = vit_step(), transformer.CPU_FLOAT32_ATTENTION_MAX
    vit = interleaved(
        {"bf16": with_float32_limit(step, 0), "float32": with_float32_limit(step, limit)}, args.repeats, warmup=2
    )
    transformer.CPU_FLOAT32_ATTENTION_MAX = limit
    results["vit_step"] = {**vit, "speedup": vit["bf16"] / vit["float32"]}
    print(f"fmnist ViT step, batch 64: bf16 attention {vit['bf16']:.3f} s, float32 {vit['float32']:.3f} s, "
          f"×{vit['bf16'] / vit['float32']:.2f}")  # fmt: skip
    print(json.dumps(results))


if __name__ == "__main__":
    main()
