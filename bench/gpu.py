"""GPU throughput: a BART-base-sized model built from its config, bf16, on synthetic dialogues; no downloads.

Training: ``BartForConditionalGeneration`` with BART-base's shape (d_model 768, 6+6 layers, 12 heads, FFN 3072,
vocabulary 50,265; ~140M parameters) built from a ``BartConfig`` with random weights, AdamW, bf16 autocast (what
``training.bf16: true`` makes the HF Trainer do), batches of random token ids with every position real (length-sorted
batches are ~99.8% real tokens on DialogSum). Timed after warm-up steps, between CUDA synchronizations. Prints
samples/s, tokens/s, peak memory and model FLOPs utilization (MFU: the matmul FLOPs of forward and backward, counted
from the shapes, over the GPU's dense bf16 peak). Generation: beam search with a fixed number of new tokens (a
random model would stop at random), in bf16; summaries/s.

    bash bench/gpu.sh             # one GPU, a few minutes
    bash bench/gpu.sh --quick     # tiny sizes, also on CPU (CI); or BENCH_QUICK=1
"""

from __future__ import annotations

import os
import resource
import time

from benchlib import parse_args, print_table, write_results

BART_BASE = {"vocab_size": 50265, "d_model": 768, "layers": 6, "heads": 12, "ffn_dim": 3072}
FULL = {"model": BART_BASE, "batch": 32, "source_len": 512, "target_len": 100, "warmup": 5, "steps": 30}
FULL_GENERATION = {"batch": 64, "batches": 4, "source_len": 512, "new_tokens": 64, "beams": 4}
QUICK = {
    "model": {"vocab_size": 1000, "d_model": 64, "layers": 2, "heads": 4, "ffn_dim": 128},
    "batch": 4,
    "source_len": 64,
    "target_len": 16,
    "warmup": 1,
    "steps": 2,
}
QUICK_GENERATION = {"batch": 4, "batches": 2, "source_len": 64, "new_tokens": 8, "beams": 2}
# Dense bf16 tensor-core peaks from the vendors' data sheets, TFLOP/s; --peak-tflops for any other GPU.
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
}


def build_model(shape: dict, device):
    """A randomly initialized BART of ``shape`` (nothing is downloaded)."""
    from transformers import BartConfig, BartForConditionalGeneration

    config = BartConfig(
        vocab_size=shape["vocab_size"],
        d_model=shape["d_model"],
        encoder_layers=shape["layers"],
        decoder_layers=shape["layers"],
        encoder_attention_heads=shape["heads"],
        decoder_attention_heads=shape["heads"],
        encoder_ffn_dim=shape["ffn_dim"],
        decoder_ffn_dim=shape["ffn_dim"],
        max_position_embeddings=1024,
    )
    return BartForConditionalGeneration(config).to(device)


def synthetic_batch(shape: dict, batch: int, source_len: int, target_len: int, device, generator) -> dict:
    """Random token ids standing in for tokenized dialogues and summaries (ids 4+: never pad, bos or eos)."""
    import torch

    def ids(length: int):
        return torch.randint(4, shape["vocab_size"], (batch, length), generator=generator).to(device)

    source = ids(source_len)
    return {"input_ids": source, "attention_mask": torch.ones_like(source), "labels": ids(target_len)}


def forward_flops(shape: dict, source_len: int, target_len: int) -> float:
    """Matmul FLOPs of one sample's forward pass (2 per multiply-add), from the layer shapes."""
    d, f, layers, vocab = shape["d_model"], shape["ffn_dim"], shape["layers"], shape["vocab_size"]
    s, t = source_len, target_len
    encoder = layers * (8 * s * d * d + 4 * s * d * f + 4 * s * s * d)
    # Decoder layer: self-attention projections and scores, cross-attention (queries/output on the target, keys and
    # values on the source), feed-forward; then the LM head over the vocabulary.
    decoder = layers * (8 * t * d * d + 4 * t * t * d + 4 * t * d * d + 4 * s * d * d + 4 * t * s * d + 4 * t * d * f)
    return float(encoder + decoder + 2 * t * d * vocab)


def peak_tflops(device, override: float | None) -> float | None:
    """The device's dense bf16 peak (TFLOP/s): ``override``, else looked up by GPU name; None when unknown."""
    if override:
        return override
    if device.type != "cuda":
        return None
    import torch

    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)


def train_throughput(sizes: dict, device) -> dict:
    """Samples/s, tokens/s, peak memory and achieved TFLOP/s of bf16-autocast AdamW training steps."""
    import torch

    torch.manual_seed(0)
    model = build_model(sizes["model"], device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    generator = torch.Generator().manual_seed(0)
    batch = synthetic_batch(sizes["model"], sizes["batch"], sizes["source_len"], sizes["target_len"], device, generator)
    _reset_peak(device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(sizes["warmup"]):
        step()
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(sizes["steps"]):
        step()
    _synchronize(device)
    seconds = time.perf_counter() - start
    samples = sizes["batch"] * sizes["steps"]
    flops = 3 * forward_flops(sizes["model"], sizes["source_len"], sizes["target_len"]) * samples
    return {
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
        "seconds": seconds,
        "samples_per_second": samples / seconds,
        "tokens_per_second": samples * (sizes["source_len"] + sizes["target_len"]) / seconds,
        "achieved_tflops": flops / seconds / 1e12,
        "peak_memory_gib": _peak_memory_gib(device),
    }


def generation_throughput(shape: dict, settings: dict, device) -> dict:
    """Summaries/s of beam search in bf16 with exactly ``new_tokens`` generated per summary."""
    import torch

    torch.manual_seed(0)
    model = build_model(shape, device).to(torch.bfloat16).eval()
    generator = torch.Generator().manual_seed(1)
    batches = [
        synthetic_batch(shape, settings["batch"], settings["source_len"], 1, device, generator)
        for _ in range(settings["batches"] + 1)
    ]
    options = {
        "num_beams": settings["beams"],
        "max_new_tokens": settings["new_tokens"],
        "min_new_tokens": settings["new_tokens"],
    }
    with torch.inference_mode():
        model.generate(input_ids=batches[0]["input_ids"], attention_mask=batches[0]["attention_mask"], **options)
        _synchronize(device)
        start = time.perf_counter()
        for batch in batches[1:]:
            model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **options)
        _synchronize(device)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "summaries_per_second": settings["batch"] * settings["batches"] / seconds}


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory_gib(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    # On CPU: the process's peak resident set (Linux reports KiB).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    def configure(parser) -> None:
        parser.add_argument("--device", default="auto", help="auto (cuda when present), cuda, cuda:N or cpu")
        parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of an unlisted GPU")

    args = parse_args(__doc__.splitlines()[0], repeats=1, configure=configure)
    args.quick = args.quick or os.environ.get("BENCH_QUICK") == "1"
    import torch

    automatic = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(automatic if args.device == "auto" else args.device)
    sizes, generation = (QUICK, QUICK_GENERATION) if args.quick else (FULL, FULL_GENERATION)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    train = train_throughput(sizes, device)
    generated = generation_throughput(sizes["model"], generation, device)
    peak = peak_tflops(device, args.peak_tflops)
    mfu = train["achieved_tflops"] / peak if peak else None
    memory = "peak GPU memory allocated" if device.type == "cuda" else "peak RSS"
    print_table(
        f"{name}: BART {train['parameters'] / 1e6:.3g}M parameters, bf16 autocast, batch {sizes['batch']} x "
        f"{sizes['source_len']}+{sizes['target_len']} tokens, {sizes['steps']} timed steps; generation beam "
        f"{generation['beams']}, {generation['new_tokens']} new tokens, batch {generation['batch']}",
        ["figure", "value"],
        [
            ["training samples/s", f"{train['samples_per_second']:.1f}"],
            ["training tokens/s", f"{train['tokens_per_second']:.0f}"],
            [memory, f"{train['peak_memory_gib']:.2f} GiB"],
            ["achieved TFLOP/s (matmuls, fwd+bwd)", f"{train['achieved_tflops']:.2f}"],
            ["MFU", f"{mfu:.1%}" if mfu is not None else "n/a (unknown peak: --peak-tflops)"],
            ["generation summaries/s", f"{generated['summaries_per_second']:.1f}"],
        ],
    )
    write_results(
        "gpu",
        args,
        {
            "device": name,
            "sizes": sizes,
            "generation_settings": generation,
            "train": train,
            "generation": generated,
            "peak_tflops": peak,
            "mfu": mfu,
        },
    )


if __name__ == "__main__":
    main()
