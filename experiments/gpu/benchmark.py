"""One GPU, one go: everything we want to know the first time a CUDA GPU is at hand (issue #14 point 5).

    bash experiments/gpu/run.sh                      # on a CUDA GPU: at most about 8 minutes
    bash experiments/gpu/run.sh --device cpu --smoke # everywhere, under 2 minutes (tests/test_gpu_script.py)

Writes experiments/gpu/results.json (or --out) and prints a table:
- bf16_streamed_training (first, so the first minute answers it): a few streamed training steps of the
  attention model at the paper's geometry (224-px tiles, the last stage trainable) under bf16 autocast as
  Lightning's bf16-mixed runs them (weight-cast cache off, backward outside autocast): every loss finite, and
  each parameter's gradient within 2e-2 (relative to its norm) of the unstreamed bf16 step on a small grid
  (float32 and 1e-4 on the CPU);
- smoke_train: `python -m attnwsi.train debug=smoke ssl=none` of each experiment family (attention with
  streaming off and on, mean pooling, sliding window), bf16-mixed on CUDA, batches of 2 images;
- streaming: the largest relative difference between streamed and unchunked gradients of one training step
  (fp32 on the CPU: tolerance 1e-4; bf16 autocast on CUDA: 5e-2, bf16 has 8 bits of mantissa);
- extractor_tiles_per_s: resnetv2_18 forward at 224 px (64 px in --smoke): fp32, bf16, bf16+channels_last,
  bf16+channels_last+torch.compile (null where compile fails, with the reason);
- train_step_tiles_per_s: the paper's setup (all stages frozen but the last, streamed, keep_frozen) on
  synthetic in-memory tiles and through the real data path (the shared SVS, workers = CPUs): their ratio
  says whether reading keeps up with the GPU;
- peak_memory_gib: torch.cuda.max_memory_allocated of one streamed training step on 4,096 and 16,384 tiles
  (CUDA only; null on the CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from attnwsi.data.datamodule import SlideDataModule
from attnwsi.data.manifest import make_dataset
from attnwsi.data.synthetic import CLASSES
from attnwsi.models.classifier import AttentionClassifier
from attnwsi.models.extractor import GridExtractor
from attnwsi.models.streaming import stream_features

REPO = Path(__file__).resolve().parents[2]
SHARED_SVS = REPO.parent / "shared" / "data" / "wsi" / "CMU-1-Small-Region.svs"
FAMILIES = {
    "attention": ["+experiment=haystack_attention"],
    "attention_streaming": ["+experiment=haystack_attention", "model.streaming.enabled=true"],
    "meanpool": ["+experiment=haystack_meanpool"],
    "sliding_window": ["+experiment=haystack_sliding_window"],
}


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def autocast(device: str):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)


def bf16_streamed_training(device: str, px: int, side: int, steps: int) -> dict:
    """Streamed bf16-mixed training steps of the attention model: finite losses, and gradients that agree with
    the unstreamed path (norm-relative; bf16 keeps 8 bits, chunks are rounded on their own)."""
    from attnwsi.data.datamodule import Sample

    torch.manual_seed(0)
    model = AttentionClassifier(CLASSES, tile_um=246, tile_px=px, trainable_stages=1, calibrate_batchnorm=0,
                                dropout=0.0, streaming={"enabled": True, "chunk_size": 4}).to(device).train()
    generator = torch.Generator().manual_seed(1)
    batch = [Sample(torch.randint(0, 256, (side * side, 3, px, px), dtype=torch.uint8, generator=generator),
                    (side, side), label, f"image{label}") for label in (0, 3)]
    labels = torch.tensor([s.label for s in batch], device=device)

    def step_gradients(streamed: bool) -> tuple[float, dict]:
        model.streaming["enabled"] = streamed
        model.zero_grad(set_to_none=True)
        # Lightning's bf16-mixed on CUDA; float32 on the CPU (--smoke: the code runs; bf16 convolutions are
        # slow on CPUs without native bf16, and tests/test_streaming_precision.py covers them there)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda", cache_enabled=False):
            loss = F.cross_entropy(model.forward_batch(batch).float(), labels)
        loss.backward()  # outside autocast, as in Lightning
        return loss.item(), {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}

    _, unstreamed = step_gradients(False)
    _, streamed = step_gradients(True)
    errors = {n: ((streamed[n] - g).norm() / g.norm().clamp(min=1e-12)).item() for n, g in unstreamed.items()
              if g.norm() > 0}
    worst = max(errors, key=errors.get)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    losses = []
    for _ in range(steps):
        loss, _ = step_gradients(True)
        optimizer.step()
        losses.append(loss)
    finite = all(torch.isfinite(torch.tensor(losses)).tolist())
    tolerance = 2e-2 if device == "cuda" else 1e-4
    return {"precision": "bf16-mixed" if device == "cuda" else "32", "losses": [round(v, 4) for v in losses],
            "finite": finite, "worst_gradient": worst, "worst_relative_difference": round(errors[worst], 6),
            "tolerance": tolerance, "ok": finite and errors[worst] <= tolerance, "tiles_per_image": side * side,
            "px": px}


def smoke_train(device: str, smoke: bool) -> dict:
    """Each experiment family's smoke run: exit status and seconds (--smoke: one validation and test batch)."""
    overrides = ["debug=smoke", "ssl=none", f"trainer.precision={'bf16-mixed' if device == 'cuda' else '32'}",
                 f"trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}"]
    if smoke:
        overrides += ["++trainer.limit_val_batches=1", "++trainer.limit_test_batches=1"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "ATTNWSI_CACHE": f"{tmp}/cache", "WANDB_MODE": "offline"}
        for name, family in FAMILIES.items():
            batch_size = "data.batch_size=16" if name == "sliding_window" else "data.batch_size=2"
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "attnwsi.train", *family, *overrides, batch_size,
                                   f"hydra.run.dir={tmp}/{name}"], capture_output=True, text=True, env=env, cwd=REPO)
            results[name] = {"ok": proc.returncode == 0, "seconds": round(time.perf_counter() - start, 1),
                             "error": None if proc.returncode == 0 else proc.stderr[-500:]}
    return results


def streaming_gradients(device: str, px: int, tiles: int) -> dict:
    """Largest relative difference of any parameter's gradient, streamed against unchunked."""
    torch.manual_seed(0)
    extractor = GridExtractor("resnetv2_18", pretrained=False, trainable_stages=1).to(device).train()
    weight = torch.randn(4, 512, device=device)
    batch = torch.randint(0, 256, (tiles, 3, px, px), dtype=torch.uint8)

    def normalize(t):
        return t.float() / 255 - 0.5

    grads = []
    for streamed in (False, True):
        extractor.zero_grad(set_to_none=True)
        with autocast(device):
            if streamed:
                features = stream_features(extractor, batch, normalize, max(1, tiles // 4), device)
            else:
                features = extractor(normalize(batch.to(device)))
            loss = F.cross_entropy((features.float().mean(0) @ weight.T)[None], torch.tensor([1], device=device))
        loss.backward()
        grads.append({n: p.grad.float().clone() for n, p in extractor.named_parameters() if p.grad is not None})
    worst = max(((grads[1][n] - g).abs().max() / g.abs().max().clamp(min=1e-12)).item() for n, g in grads[0].items())
    tolerance = 5e-2 if device == "cuda" else 1e-4
    return {"max_relative_difference": worst, "tolerance": tolerance, "ok": worst <= tolerance,
            "precision": "bf16 autocast" if device == "cuda" else "fp32"}


def extractor_throughput(device: str, px: int, batch: int, steps: int) -> dict:
    """Tiles per second of the extractor's forward (no gradients), in four settings of the model's switches
    (`model.channels_last`, `model.compile`) and precision."""
    tiles = torch.rand(batch, 3, px, px, device=device)
    settings = {"fp32": (False, False, False), "bf16": (True, False, False),
                "bf16_channels_last": (True, True, False), "bf16_channels_last_compiled": (True, True, True)}
    results = {}
    for name, (bf16, channels_last, compiled) in settings.items():
        torch.manual_seed(0)
        try:
            model = GridExtractor("resnetv2_18", channels_last=channels_last, compile=compiled).to(device).eval()
            context = torch.autocast(device, dtype=torch.bfloat16, enabled=bf16)
            with torch.no_grad(), context:
                for _ in range(2):  # warm-up (and compilation)
                    model(tiles)
                synchronize(device)
                start = time.perf_counter()
                for _ in range(steps):
                    model(tiles)
                synchronize(device)
            results[name] = round(batch * steps / (time.perf_counter() - start))
        except Exception as error:  # say why, measure the rest
            results[name] = None
            results[f"{name}_error"] = f"{type(error).__name__}: {str(error)[:200]}"
    # a failed compilation falls back to eager code (GridExtractor): did anything compile?
    results["compiled_graphs"] = int(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    return results


def paper_model(device: str, chunk: int) -> AttentionClassifier:
    model = AttentionClassifier(CLASSES, tile_um=246, tile_px=224, trainable_stages=1, calibrate_batchnorm=0,
                                streaming={"enabled": True, "chunk_size": chunk, "keep_frozen": True})
    return model.to(device).train()


def train_steps(model: AttentionClassifier, batches, device: str) -> float:
    """Tiles per second of training steps over `batches` (lists of Samples), the first one a warm-up."""
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    tiles, start = 0, None
    for i, batch in enumerate(batches):
        if i == 1:
            synchronize(device)
            start = time.perf_counter()
        with autocast(device):
            logits = model.forward_batch(batch)
            loss = F.cross_entropy(logits.float(), torch.tensor([s.label for s in batch], device=device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i >= 1:
            tiles += sum(len(s.tiles) for s in batch)
    synchronize(device)
    return round(tiles / (time.perf_counter() - start), 1)


def train_step_throughput(device: str, steps: int) -> dict:
    """The paper's training step on in-memory tiles and through the real data path, tiles per second."""
    if not SHARED_SVS.exists():
        return {"skipped": f"{SHARED_SVS} not found"}
    with tempfile.TemporaryDirectory() as tmp:
        sheet = Path(tmp) / "labels.csv"
        pd.DataFrame([dict(slide_id=f"cmu{k}", patient_id=f"p{k}", label=CLASSES[k % 4], path=str(SHARED_SVS),
                           split="train") for k in range(4)]).to_csv(sheet, index=False)
        make_dataset(SHARED_SVS.parent, sheet, Path(tmp) / "root", CLASSES)
        data = SlideDataModule(str(Path(tmp) / "root"), CLASSES, tile_um=246, tile_px=224, batch_size=2,
                               num_workers=None, augment={"rotate": True, "flip": True, "scale": [0.8, 1.2]})
        data.setup()
        model = paper_model(device, chunk=256)
        real_batches = []
        loader = iter(data.train_dataloader())

        def real():
            nonlocal loader
            for _ in range(steps + 1):
                try:
                    batch = next(loader)
                except StopIteration:
                    loader = iter(data.train_dataloader())
                    batch = next(loader)
                real_batches.append(batch)
                yield batch

        real_rate = train_steps(model, real(), device)
        in_memory = [[*batch] for batch in real_batches]  # the same images, already read
        memory_rate = train_steps(model, in_memory, device)
    return {"in_memory": memory_rate, "real_data": real_rate, "real_over_in_memory": round(real_rate / memory_rate, 3),
            "tiles_per_image": sum(len(s.tiles) for s in real_batches[0]) / len(real_batches[0]),
            "workers": data.train_dataloader().num_workers}


def peak_memory(device: str, tile_counts: list[int]) -> dict:
    """GiB of CUDA memory at the peak of one streamed training step of one image of each size."""
    if device != "cuda":
        return {str(n): None for n in tile_counts}
    from attnwsi.data.datamodule import Sample

    results = {}
    for n in tile_counts:
        model = paper_model(device, chunk=512)
        side = int(n ** 0.5)
        sample = Sample(torch.randint(0, 256, (side * side, 3, 224, 224), dtype=torch.uint8), (side, side), 1, "x")
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        train_steps(model, [[sample], [sample]], device)
        results[str(n)] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        del model
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that everything runs")
    parser.add_argument("--out", type=Path, default=REPO / "experiments" / "gpu" / "results.json")
    args = parser.parse_args()
    device, smoke = args.device, args.smoke
    started = time.perf_counter()
    results = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "smoke": smoke,
               "torch": torch.__version__}
    results["bf16_streamed_training"] = bf16_streamed_training(device, px=32 if smoke else 224,
                                                               side=4 if smoke else 8, steps=3)
    print("bf16_streamed_training", json.dumps(results["bf16_streamed_training"]), flush=True)
    results["smoke_train"] = smoke_train(device, smoke)
    results["streaming"] = streaming_gradients(device, px=32 if smoke else 224, tiles=8 if smoke else 64)
    results["extractor_tiles_per_s"] = extractor_throughput(device, px=64 if smoke else 224,
                                                            batch=8 if smoke else 256, steps=2 if smoke else 20)
    results["train_step_tiles_per_s"] = train_step_throughput(device, steps=2 if smoke else 30)
    results["peak_memory_gib"] = peak_memory(device, [4096, 16384])
    results["seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    for section, values in results.items():
        print(f"{section:24s} {json.dumps(values)}")


if __name__ == "__main__":
    main()
