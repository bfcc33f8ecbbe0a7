"""Train the built-in `demo` model from scratch on procedurally generated audio (CPU-friendly).

    python -m training.demo.train --out stable_audio_3/assets/demo [--work /tmp/demo_work]
        [--dit-minutes 47] [--clips 6000] [--threads 2] [--stage all|ae|data|dit|polish|polish-noise|export]
        [--resume-dit]

Stages (each saves to --work, so a stage can be rerun alone):
  ae      the SAME autoencoder fitted in closed form: a PCA of 4096-sample frames (see `fit_autoencoder`);
          the SoftNorm bottleneck's running_std is set so the latents have unit standard deviation.
  data    a fixed, seeded set of labelled clips, encoded once with the frozen autoencoder in the exact
          latent layout generate() uses (content + 6 s headroom, capped at the model's sample_size).
  dit     DiT + T5Gemma encoder + conditioners, rectified flow (x_t = (1-t) x0 + t noise, target
          v = noise - x0), padding mask as in generate(), CFG dropout and random inpainting masks.
  polish, polish-noise
          two more DiT sessions from the trained weights (config.POLISH, config.POLISH_NOISE).
  export  model_config.json, model.safetensors (official prefixes), the text encoder folder.

Budgets are wall-clock minutes; every random draw is seeded, so the run is reproducible up to the
number of steps that fit in the budget (which is recorded in training_log.json).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from stable_audio_3 import masks
from stable_audio_3.models.conditioning import Conditioner, PromptTokenizer
from stable_audio_3.models.dit import DiffusionTransformer
from stable_audio_3.models.same import SAMEAutoencoder
from stable_audio_3.models.t5gemma import T5GemmaEncoder, T5GemmaEncoderConfig

from . import config as C
from .data import SAMPLE_RATE, make_clip, vocabulary

SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]


# -- tokenizer and text encoder ----------------------------------------------------------------------


def build_tokenizer_files(folder: Path) -> int:
    """Write tokenizer.json (WordLevel, lower-cased, split on spaces and punctuation) and
    tokenizer_config.json; returns the vocabulary size."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

    words = SPECIAL_TOKENS + vocabulary()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s,.;:!?()\"']+"), behavior="removed")
    tok.add_special_tokens(SPECIAL_TOKENS)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    tokenizer_config = {
        "backend": "tokenizers",
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "mask_token": "<mask>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "padding_side": "right",
        "add_bos_token": False,
        "add_eos_token": True,
        "model_max_length": C.TEXT_MAX_LENGTH,
        **C.PROMPT_SETTINGS,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    return len(words)


def new_text_encoder(vocab_size: int, folder: Path) -> T5GemmaEncoder:
    cfg_json = C.text_encoder_config(vocab_size)
    (folder / "config.json").write_text(json.dumps(cfg_json, indent=2) + "\n")
    model = T5GemmaEncoder(T5GemmaEncoderConfig.from_hf(cfg_json))
    for name, p in model.named_parameters():
        if name.endswith("layernorm.weight") or name == "norm.weight":
            torch.nn.init.zeros_(p)
        else:
            torch.nn.init.normal_(p, std=0.02)
    return model


# -- autoencoder ---------------------------------------------------------------------------------------


def copy_previous_token_attention(block: torch.nn.Module, dim: int, dim_heads: int, strength: float = 12.0) -> None:
    """Make a SAME block pass each token's predecessor through: x_p + x_{p-1}, feed-forward off.

    Queries and keys become constants (DyT q/k norms with gain 0 and bias = the constant), so after
    RoPE the logits depend on the relative position only; the key phases put the peak at offset -1.
    With stride 1, offset -1 is exactly "the patch (encoder) / latent (decoder) of my own group".
    """
    attn = block.self_attn
    rot = block.rope.inv_freq.numel()
    theta = block.rope.inv_freq.float()
    q = torch.zeros(dim_heads)
    k = torch.zeros(dim_heads)
    q[:rot] = strength
    k[:rot] = strength * torch.cos(theta)
    k[rot : 2 * rot] = strength * torch.sin(theta)
    with torch.no_grad():
        for norm, const in ((attn.q_norm, q), (attn.k_norm, k)):
            norm.gamma.zero_()
            norm.beta.copy_(const)
        for norm in (block.pre_norm, block.ff_norm):  # DyT as a near-identity: 1000 tanh(x / 1000)
            norm.alpha.fill_(1e-3)
            norm.gamma.fill_(1e3)
            norm.beta.zero_()
        w = attn.to_qkv.weight  # rows: q, k, v
        w.zero_()
        w[2 * dim : 3 * dim] = torch.eye(dim)
        attn.to_out.weight.copy_(torch.eye(dim))
        block.ff.ff[2].weight.zero_()
        block.ff.ff[2].bias.zero_()


def pca_frames(rng: np.random.Generator, clips: int, frame: int) -> torch.Tensor:
    """(N, frame) float64 mono frames cut from `clips` random training clips."""
    rows = []
    for _ in range(clips):
        clip = make_clip(rng)
        n = clip.audio.shape[-1] // frame
        rows.append(torch.from_numpy(clip.audio[0, : n * frame].astype(np.float64)).reshape(n, frame))
    return torch.cat(rows)


def fit_autoencoder(rng: np.random.Generator, clips: int) -> tuple[SAMEAutoencoder, dict]:
    """The SAME autoencoder fitted in closed form, as a PCA of 4096-sample mid (L+R) frames.

    A linear autoencoder trained with an MSE loss converges to the principal subspace; here it is
    solved for directly instead of by gradient steps, which a CPU budget cannot afford for 8192-wide
    patches. Encoder mapping = the top 128 principal directions applied to the mid signal, decoder
    mapping = their transpose written to both channels; each side's transformer block copies its
    group's patch / latent to the learned token (see `copy_previous_token_attention`). The
    bottleneck's running_std makes the latents unit-variance for the DiT.
    """
    cfg = C.model_config()["model"]["pretransform"]["config"]
    ae = SAMEAutoencoder(cfg)
    frame, dim = ae.patch_size, ae.latent_dim
    data = pca_frames(rng, clips, frame)
    eigvals, eigvecs = torch.linalg.eigh(data.T @ data)
    basis = eigvecs[:, -dim:].flip(-1).T.float()  # (latent, frame), strongest first
    mid = torch.cat([basis, basis], dim=1) / math.sqrt(2)  # (latent, 2 * frame): [left | right]
    enc_map = ae.encoder.layers[0].mapping
    dec_map = ae.decoder.layers[3].mapping
    if enc_map.weight_v.shape[0] != dim:
        raise ValueError("the closed-form autoencoder needs encoder width == latent_dim")
    with torch.no_grad():
        enc_map.weight_v.copy_(mid[:, :, None])
        enc_map.weight_g.fill_(1.0)
        enc_map.bias.zero_()
        dec_map.weight_v.copy_(mid.T[:, :, None])
        dec_map.weight_g.copy_(mid.T.norm(dim=1).reshape(-1, 1, 1))
        dec_map.bias.zero_()
        for lin in (ae.encoder.layers[2], ae.decoder.layers[1]):
            lin.weight.copy_(torch.eye(dim))
            lin.bias.zero_()
        for resampler in (ae.encoder.layers[0], ae.decoder.layers[3]):
            resampler.new_tokens.zero_()
            (block,) = resampler.transformers
            copy_previous_token_attention(block, dim, block.self_attn.q_norm.gamma.numel())
        # Unit-variance latents: the std of the mid-frame projections of the fitted data.
        ae.bottleneck.running_std.fill_(float((data.float() @ basis.T * math.sqrt(2)).std()))
    info = {
        "pca_frames": int(data.shape[0]),
        "pca_energy_kept": float(eigvals[-dim:].sum() / eigvals.sum()),
        "running_std": float(ae.bottleneck.running_std),
    }
    return ae.eval().requires_grad_(False), info


def load_autoencoder(work: Path) -> SAMEAutoencoder:
    ae = SAMEAutoencoder(C.model_config()["model"]["pretransform"]["config"])
    ae.load_state_dict(torch.load(work / "ae.pt"))
    return ae.eval().requires_grad_(False)


# -- latent dataset ----------------------------------------------------------------------------------


def window_layout(seconds: float) -> tuple[int, int, int]:
    """(window latents, valid latents, content latents) exactly as generate() lays out one item."""
    enc = C.model_config()["model"]["pretransform"]["config"]["encoder"]["config"]
    n = masks.audio_sample_size(
        [seconds],
        sample_rate=SAMPLE_RATE,
        downsampling_ratio=C.DOWNSAMPLING,
        latents_per_align=masks.latents_per_alignment(enc),
        sample_size=C.SAMPLE_SIZE,
    )
    length = n // C.DOWNSAMPLING
    valid = int(
        masks.valid_lengths(
            [seconds], sample_rate=SAMPLE_RATE, downsampling_ratio=C.DOWNSAMPLING, latent_length=length
        )[0]
    )
    content = masks.content_latents([seconds], sample_rate=SAMPLE_RATE, downsampling_ratio=C.DOWNSAMPLING)[0]
    return length, valid, content


@torch.no_grad()
def build_dataset(work: Path, ae: SAMEAutoencoder, clips: int, log: dict, batch: int = 32) -> None:
    """Encode `clips` seeded clips, each zero-padded to its generate() window (max_len latents at most)."""
    rng = np.random.default_rng(C.TRAIN["seed"] + 1)
    max_len = C.SAMPLE_SIZE // C.DOWNSAMPLING
    latents = torch.zeros(clips, C.LATENT_DIM, max_len, dtype=torch.float16)
    lengths = torch.zeros(clips, 3, dtype=torch.long)
    prompts, seconds, kinds = [], [], []
    start = time.time()
    for first in range(0, clips, batch):
        count = min(batch, clips - first)
        audio = torch.zeros(count, 2, C.SAMPLE_SIZE)
        for j in range(count):
            frame = C.PATCH_SIZE if rng.random() < C.TRAIN["frame_locked_prob"] else 0
            clip = make_clip(rng, frame=frame)
            audio[j, :, : clip.audio.shape[-1]] = torch.from_numpy(clip.audio)
            lengths[first + j] = torch.tensor(window_layout(clip.seconds))
            prompts.append(clip.prompt)
            seconds.append(clip.seconds)
            kinds.append(clip.kind)
        latents[first : first + count] = ae.encode(audio)[..., :max_len].half()
        if (first // batch) % 20 == 0:
            print(f"[data] {first + count}/{clips} clips, {time.time() - start:.0f}s", flush=True)
    data = {"latents": latents, "lengths": lengths, "prompts": prompts, "seconds": seconds, "kinds": kinds}
    torch.save(data, work / "dataset.pt")
    log["data"] = {"clips": clips, "seconds": round(time.time() - start), "latent_std": float(latents.float().std())}


# -- DiT -----------------------------------------------------------------------------------------------


def inpaint_masks(rng: torch.Generator, lengths: torch.Tensor, max_len: int, prob: float) -> torch.Tensor:
    """(B, T) keep-masks: none, a continuation prefix, or 1-3 regenerated regions inside the content."""
    keep = torch.zeros(lengths.shape[0], max_len)
    for b in range(lengths.shape[0]):
        content = int(lengths[b, 2])
        if float(torch.rand((), generator=rng)) >= prob or content < 4:
            continue
        keep[b, :content] = 1
        if float(torch.rand((), generator=rng)) < 0.35:  # continuation: keep a prefix
            cut = int(torch.randint(1, content, (), generator=rng))
            keep[b, cut:content] = 0
        else:
            for _ in range(int(torch.randint(1, 4, (), generator=rng))):
                s = int(torch.randint(0, content - 1, (), generator=rng))
                e = min(content, s + int(torch.randint(1, max(2, content // 2), (), generator=rng)))
                keep[b, s:e] = 0
    return keep


def text_features(
    cond: Conditioner, text: T5GemmaEncoder, tok: PromptTokenizer, prompts: list[str], seconds: list[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The conditioner's computation with gradients through the text encoder (the inference path runs it frozen)."""
    ids, tok_mask = tok(prompts)
    hidden = text(ids, tok_mask)
    prompt = cond.conditioners["prompt"]
    embeds = torch.where(tok_mask.bool()[..., None], hidden, prompt.padding_embedding)
    secs = cond.conditioners["seconds_total"](seconds, "cpu").embeds
    return torch.cat([embeds, secs], dim=1), secs[:, 0]


# The t values generate()'s default sampler visits (Euler, 8 steps, linear schedule, no shift).
SAMPLER_TS = torch.linspace(1.0, 0.0, 9)[:-1]


def sample_t(gen: torch.Generator, b: int) -> torch.Tensor:
    """A mixture: logit-normal around t = 0.75 (where the sampler decides what is heard), the
    default sampler's own t values slightly jittered (t = 1 included: the prompt alone), and
    uniform in log-SNR over the whole range, audio-to-audio's low starting levels and the last
    steps' detail (silence must come out silent) included; the shares of the first two are
    TRAIN["t_mixture"]. t = 1 itself gets its own extra batch (`prompt_only_loss`)."""
    mid = torch.sigmoid(1.1 + 1.2 * torch.randn(b, generator=gen))
    pick = SAMPLER_TS[torch.randint(0, len(SAMPLER_TS), (b,), generator=gen)]
    pick = (pick + 0.02 * torch.randn(b, generator=gen)).clamp(max=1.0)
    wide = torch.sigmoid(-(-6.5 + 9.0 * torch.rand(b, generator=gen)))
    mid_share, pick_share = C.TRAIN["t_mixture"]
    which = torch.rand(b, generator=gen)
    t = torch.where(which < mid_share, mid, torch.where(which < mid_share + pick_share, pick, wide))
    return t.clamp(1e-3, 1.0)


def loss_weights(t: torch.Tensor, keep: torch.Tensor, knee: float = 0.25) -> torch.Tensor:
    """(B, T) weights: velocity MSE above t = knee; below it a constant weight on the clean-estimate
    error, so the easy, nearly clean inputs (whose velocity error is the x0 error / t) do not
    dominate. Kept (inpainting) positions count TRAIN["kept_weight"] times: reproducing the given audio
    exactly is what inpainting and continuation are judged on."""
    return (t / knee).clamp(max=1.0)[:, None] ** 2 * (1 + (C.TRAIN["kept_weight"] - 1) * keep)


def prompt_only_loss(
    dit: DiffusionTransformer,
    cond: Conditioner,
    text: T5GemmaEncoder,
    tok: PromptTokenizer,
    gen: torch.Generator,
    data: dict,
    clip_weights: torch.Tensor,
) -> torch.Tensor:
    """Velocity MSE at t = 1 on a batch of short windows: the first TRAIN["prompt_latents"] of each clip.

    At t = 1 the input is pure noise, so the clean-audio estimate can only come from the prompt (and
    the duration): this is where the model learns what a prompt sounds like, and where generate()'s
    first steps decide pitch, level and kind. Those first latents sit at the same positions as in
    generate()'s window, and a short window costs about a ninth of a full one, so each step sees many
    more prompts than the main batch alone holds.
    """
    count, length = C.TRAIN["prompt_batch"], C.TRAIN["prompt_latents"]
    idx = torch.multinomial(clip_weights, count, replacement=True, generator=gen)
    x0 = data["latents"][idx, :, :length].float()
    cross, glob = text_features(cond, text, tok, [data["prompts"][i] for i in idx], [data["seconds"][i] for i in idx])
    return pure_noise_loss(dit, x0, drop_prompts(gen, cross), glob, gen)


def drop_prompts(gen: torch.Generator, cross: torch.Tensor) -> torch.Tensor:
    """Classifier-free-guidance dropout: the cross-attention condition of TRAIN["cfg_dropout"] of the
    items zeroed, as the unconditional half of CFG sees it."""
    drop = torch.rand(cross.shape[0], generator=gen) < C.TRAIN["cfg_dropout"]
    return torch.where(drop[:, None, None], torch.zeros_like(cross), cross)


def pure_noise_loss(
    dit: DiffusionTransformer, x0: torch.Tensor, cross: torch.Tensor, glob: torch.Tensor, gen: torch.Generator
) -> torch.Tensor:
    """Velocity MSE at t = 1 (input: pure noise) on fully valid windows x0 (B, C, T), no inpainting."""
    count, _, length = x0.shape
    noise = torch.randn(x0.shape, generator=gen)
    valid = torch.ones(count, length, dtype=torch.bool)
    local = torch.zeros(count, C.LATENT_DIM + 1, length)
    v = dit.velocity(noise, torch.ones(count), cross, glob, local, valid, attention_padding="exclude")
    return ((v - (noise - x0)) ** 2).mean()


def progress_scores(work: Path, out: Path, log: dict) -> dict:
    """Export the current EMA weights and measure pitch and levels on them (about 10 s)."""
    from stable_audio_3 import StableAudioModel

    from . import evaluate

    export(work, out, log)
    model = StableAudioModel.from_pretrained(out, device="cpu")
    pitch = evaluate.pitch_scores(model, **evaluate.EIGHT_STEPS_CFG_1)
    levels = evaluate.level_scores(model, **evaluate.EIGHT_STEPS_CFG_1)
    return {"pitch_hit_rate": round(pitch["hit_rate"], 3), "level_difference_db": round(levels["difference_db"], 1)}


def train_dit(
    work: Path, out: Path, minutes: float, log: dict, resume: bool = False, eval_minutes: float = 0.0
) -> None:
    out_text_dir = out / C.TEXT_SUBFOLDER
    torch.manual_seed(C.TRAIN["seed"] + 2)
    gen = torch.Generator().manual_seed(C.TRAIN["seed"] + 3 + 1000 * len(log.get("dit_sessions", [])))
    data = torch.load(work / "dataset.pt")
    latents, lengths, prompts, seconds = data["latents"], data["lengths"], data["prompts"], data["seconds"]
    cfg = C.model_config()
    dit = DiffusionTransformer.from_config(cfg["model"]["diffusion"]["config"])
    cond = Conditioner.from_config(cfg["model"]["conditioning"], cfg["model"]["diffusion"])
    vocab = build_tokenizer_files(out_text_dir)
    text = new_text_encoder(vocab, out_text_dir)
    tok = PromptTokenizer.from_dir(out_text_dir, C.TEXT_MAX_LENGTH)
    modules = {"dit": dit, "cond": cond, "text": text}
    if resume:  # continue from the last session's weights and EMA (a fresh optimiser and LR schedule)
        saved = torch.load(work / "dit_state.pt")
        for key, module in modules.items():
            module.load_state_dict(saved["train"][key])
        ema = saved["ema"]
    else:
        ema = {k: {n: p.detach().clone() for n, p in m.state_dict().items()} for k, m in modules.items()}
    params = [
        {"params": list(dit.parameters()) + list(cond.parameters()), "lr": C.TRAIN["dit_lr"]},
        {"params": list(text.parameters()), "lr": C.TRAIN["text_lr"]},
    ]
    opt = torch.optim.AdamW(params, betas=(0.9, 0.99), weight_decay=0.01)
    base_lrs = [g["lr"] for g in opt.param_groups]
    max_len = latents.shape[-1]
    # Steady tones are drawn more often than their share of the data set: they carry the pitch.
    # (The polish stage also draws silence and noise more often.)
    clip_weights = torch.tensor([C.TRAIN["kind_weights"].get(k, 1.0) for k in data["kinds"]])
    positions = torch.arange(max_len)
    start, step, history = time.time(), 0, []
    budget = minutes * 60
    warmup = 20 if resume else 200
    next_eval = eval_minutes * 60 if eval_minutes > 0 else math.inf
    progress = []

    def save() -> None:
        train_state = {k: {n: p.detach().clone() for n, p in m.state_dict().items()} for k, m in modules.items()}
        torch.save({"train": train_state, "ema": ema}, work / "dit_state.pt")

    while time.time() - start < budget:
        frac = (time.time() - start) / budget
        for g, lr in zip(opt.param_groups, base_lrs, strict=True):
            g["lr"] = lr * min(1.0, (step + 1) / warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        idx = torch.multinomial(clip_weights, C.TRAIN["dit_batch"], replacement=True, generator=gen)
        x0, lens = latents[idx].float(), lengths[idx]
        valid = positions[None, :] < lens[:, 1:2]
        keep = inpaint_masks(gen, lens, max_len, C.TRAIN["inpaint_prob"])
        local = torch.cat([keep[:, None], x0 * keep[:, None]], dim=1)
        cross, glob = text_features(cond, text, tok, [prompts[i] for i in idx], [seconds[i] for i in idx])
        cross = drop_prompts(gen, cross)
        t = sample_t(gen, len(idx))
        noise = torch.randn(x0.shape, generator=gen)
        xt = (1 - t[:, None, None]) * x0 + t[:, None, None] * noise
        v = dit.velocity(xt, t, cross, glob, local, valid, attention_padding="exclude")
        err = ((v - (noise - x0)) ** 2).mean(1) * loss_weights(t, keep)
        loss = (err * valid).sum() / valid.sum()
        if C.TRAIN["prompt_batch"]:
            loss = loss + prompt_only_loss(dit, cond, text, tok, gen, data, clip_weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in params for p in g["params"]], 1.0)
        opt.step()
        step += 1
        decay = min(C.TRAIN["ema_decay"], (1 + step) / (10 + step)) if not resume else C.TRAIN["ema_decay"]
        with torch.no_grad():
            for k, m in modules.items():
                for n, p in m.state_dict().items():
                    if p.is_floating_point():
                        ema[k][n].mul_(decay).add_(p.detach(), alpha=1 - decay)
        history.append(loss.item())
        if step % 50 == 0:
            print(f"[dit] step {step} {time.time() - start:.0f}s  loss {np.mean(history[-50:]):.4f}", flush=True)
        if step % 500 == 0:
            save()
        if time.time() - start > next_eval:
            save()
            elapsed = time.time() - start
            scores = {"step": step, "minutes": round(elapsed / 60, 1), **progress_scores(work, out, log)}
            print(f"[dit] progress {scores}", flush=True)
            progress.append(scores)
            budget += time.time() - start - elapsed  # evaluation time is not training time
            next_eval = time.time() - start + eval_minutes * 60
    save()
    log.setdefault("dit_sessions", []).append(
        {
            "steps": step,
            "seconds": round(time.time() - start),
            "final_loss": round(float(np.mean(history[-100:])), 4),
            "progress": progress,
        }
    )
    log["dit"] = {
        "steps": sum(s["steps"] for s in log["dit_sessions"]),
        "seconds": sum(s["seconds"] for s in log["dit_sessions"]),
        "final_loss": log["dit_sessions"][-1]["final_loss"],
        "batch": C.TRAIN["dit_batch"],
    }


# -- export --------------------------------------------------------------------------------------------


def shippable(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """Large weights as float16 (the loader casts them back to the run dtype); small tensors and RoPE
    frequencies stay float32, where rounding would shift every position's angle."""
    if tensor.is_floating_point() and tensor.numel() >= 4096 and not name.endswith("inv_freq"):
        return tensor.half().contiguous()
    return tensor.contiguous()


def export(work: Path, out: Path, log: dict) -> None:
    ema = torch.load(work / "dit_state.pt")["ema"]
    ae = torch.load(work / "ae.pt")
    state = {f"model.model.{k}": v for k, v in ema["dit"].items()}
    state.update({f"pretransform.model.{k}": v for k, v in ae.items()})
    state.update({f"conditioner.{k}": v for k, v in ema["cond"].items()})
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: shippable(k, v) for k, v in state.items()}, str(out / "model.safetensors"))
    text_dir = out / C.TEXT_SUBFOLDER
    save_file(
        {f"model.encoder.{k}": v.contiguous() for k, v in ema["text"].items()}, str(text_dir / "model.safetensors")
    )
    (out / "model_config.json").write_text(json.dumps(C.model_config(), indent=2) + "\n")
    (out / "training_log.json").write_text(json.dumps(log, indent=2) + "\n")
    # A round trip through the loader's own reading, so a broken export fails here, not in a test.
    load_file(str(out / "model.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="stable_audio_3/assets/demo")
    parser.add_argument("--work", default="/tmp/demo_work")
    stages = ["all", "ae", "data", "dit", "polish", "polish-noise", "export"]
    parser.add_argument("--stage", default="all", choices=stages)
    parser.add_argument("--dit-minutes", type=float, default=C.TRAIN["dit_minutes"])
    parser.add_argument("--clips", type=int, default=C.TRAIN["dataset_clips"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resume-dit", action="store_true", help="continue from <work>/dit_state.pt")
    parser.add_argument("--eval-every", type=float, default=0.0, help="minutes between progress scores (0: off)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / "training_log.json"
    log = json.loads(log_path.read_text()) if log_path.is_file() else {}
    command = (
        f"python -m training.demo.train --stage {args.stage} --clips {args.clips} --dit-minutes {args.dit_minutes}"
    )
    log.setdefault("commands", []).append(command + (" --resume-dit" if args.resume_dit else ""))
    log["torch"] = torch.__version__
    if args.stage in ("all", "ae"):
        started = time.time()
        ae, info = fit_autoencoder(np.random.default_rng(C.TRAIN["seed"]), C.TRAIN["ae_clips"])
        torch.save(ae.state_dict(), work / "ae.pt")
        log["ae"] = {**info, "seconds": round(time.time() - started)}
        log_path.write_text(json.dumps(log, indent=2))
    if args.stage in ("all", "data"):
        build_dataset(work, load_autoencoder(work), args.clips, log)
        log_path.write_text(json.dumps(log, indent=2))
    if args.stage in ("all", "dit"):
        if not args.resume_dit:
            log.pop("dit_sessions", None)
        train_dit(work, out, args.dit_minutes, log, resume=args.resume_dit, eval_minutes=args.eval_every)
        log_path.write_text(json.dumps(log, indent=2))
    for stage, settings in (("polish", C.POLISH), ("polish-noise", C.POLISH_NOISE)):
        if args.stage in ("all", stage):  # a further DiT session from the last one's weights
            C.TRAIN.update({k: v for k, v in settings.items() if k != "minutes"})
            train_dit(work, out, settings["minutes"], log, resume=True)
            log[stage.replace("-", "_")] = {**settings, **log["dit_sessions"][-1]}
            log_path.write_text(json.dumps(log, indent=2))
    if args.stage in ("all", "export", "dit", "polish", "polish-noise"):
        export(work, out, log)
        log_path.write_text(json.dumps(log, indent=2))


if __name__ == "__main__":
    main()
