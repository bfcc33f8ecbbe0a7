"""How a reduced-precision DiT's error grows block by block (full-size architecture, random weights).

    python benchmarks/layer_error.py                       # small-music, 10 s, bf16 fp16 int8, t = 1
    python benchmarks/layer_error.py --model medium --settings bf16 --t 0.5

One denoiser call (the same input, conditioning and t) runs in float32 and in each setting. For every
transformer block the table gives two SNRs against float32:
  - "alone": the block fed the float32 run's own input, so only its own rounding counts;
  - "chained": the block's output in the reduced-precision run, where every earlier block's error
    has been carried along.
With random weights every block has gain > 1 for a perturbation, so the chained SNR falls with depth
although each block alone stays near its format's precision; this is why an end-to-end latent SNR
measured on random weights (benchmarks/bench_generate.py) is a pessimistic bound for trained ones.
"""

from __future__ import annotations

import argparse
import copy

import torch
from bench_generate import SETTINGS, randomise, snr_db

from stable_audio_3.loading import packaged_config
from stable_audio_3.masks import audio_sample_size, latents_per_alignment
from stable_audio_3.models.dit import DiffusionTransformer
from stable_audio_3.models.quant import quantize_linears


def block_outputs(dit: DiffusionTransformer, inputs: dict, feed: list[torch.Tensor] | None = None) -> list:
    """Each block's output; with `feed`, each block's input is replaced by feed[i] (the reference's)."""
    outputs, hooks = [], []
    for i, block in enumerate(dit.transformer.layers):
        if feed is not None:
            def replace(module, args, kwargs, i=i):
                return (feed[i].to(args[0].dtype), *args[1:]), kwargs

            hooks.append(block.register_forward_pre_hook(replace, with_kwargs=True))
        hooks.append(block.register_forward_hook(lambda m, a, out: outputs.append(out.float().clone())))
    with torch.inference_mode():
        dit.velocity(**inputs)
    for h in hooks:
        h.remove()
    return outputs


def block_inputs(dit: DiffusionTransformer, inputs: dict) -> list[torch.Tensor]:
    """Each block's input in a run of `dit`."""
    captured, hooks = [], []
    for block in dit.transformer.layers:
        hooks.append(block.register_forward_pre_hook(lambda m, a: captured.append(a[0].clone())))
    with torch.inference_mode():
        dit.velocity(**inputs)
    for h in hooks:
        h.remove()
    return captured


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="small-music")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--t", type=float, default=1.0)
    p.add_argument("--settings", nargs="+", choices=["bf16", "fp16", "int8"], default=["bf16", "fp16", "int8"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    cfg = packaged_config(args.model)
    dcfg = cfg["model"]["diffusion"]["config"]
    ae_cfg = cfg["model"]["pretransform"]["config"]
    length = audio_sample_size([args.seconds], sample_rate=cfg["sample_rate"],
                               downsampling_ratio=ae_cfg["downsampling_ratio"],
                               latents_per_align=latents_per_alignment(ae_cfg["encoder"]["config"]),
                               sample_size=cfg["sample_size"]) // ae_cfg["downsampling_ratio"]
    with torch.device("meta"):
        meta = DiffusionTransformer.from_config(dcfg)
    reference = randomise(meta, device, 1).float().eval()
    g = torch.Generator().manual_seed(0)
    c = dcfg["io_channels"]
    inputs = {
        "x": torch.randn(1, c, length, generator=g).to(device),
        "t": torch.full((1,), args.t, device=device),
        "cross_attn_cond": torch.randn(1, 257, dcfg["cond_token_dim"], generator=g).to(device),
        "global_cond": torch.randn(1, dcfg["global_cond_dim"], generator=g).to(device),
        "local_add_cond": torch.zeros(1, c + 1, length, device=device),
        "padding_mask": torch.ones(1, length, dtype=torch.bool, device=device),
    }
    ref_out = block_outputs(reference, inputs)
    ref_in = block_inputs(reference, inputs)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; model {args.model} DiT (random weights, full size); "
          f"{length} latents ({args.seconds:g} s), t = {args.t:g}; SNR in dB against float32")
    settings = [s for s in args.settings if not (s == "int8" and device.type != "cpu")]
    print("| block | " + " | ".join(f"{s} alone | {s} chained" for s in settings) + " |")
    print("|---|" + "---|---|" * len(settings))
    rows = [[] for _ in ref_out]
    for setting in settings:
        model = copy.deepcopy(reference)
        if setting == "int8":
            quantize_linears(model.transformer.layers)
        else:
            model = model.to(SETTINGS[setting])
        alone = block_outputs(model, inputs, feed=ref_in)
        chained = block_outputs(model, inputs)
        for i, ref in enumerate(ref_out):
            rows[i] += [f"{snr_db(ref, alone[i]):.1f}", f"{snr_db(ref, chained[i]):.1f}"]
    for i, row in enumerate(rows):
        print(f"| {i} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
