"""The ``perceiverar-train`` command line: options, their defaults and checks (the loop is ``perceiverar.train``)."""

from __future__ import annotations

import argparse
import math

from perceiverar.config import PRESETS
from perceiverar.data.balance import parse_balance
from perceiverar.data.rerender import RerenderSpec

DESCRIPTION = "Train a Perceiver AR model on folders of captioned images, audio or text: ``perceiverar-train``."


class UsageError(ValueError):
    """A bad command line or data folder: reported as ``perceiverar-train: error: ...``."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action):  # show "(default: x)" only where it says something
        if action.default in (None, False, argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _clips(text: str) -> tuple[float, float]:
    """'0.75:12' -> (0.75, 12.0): --opening-clips."""
    try:
        p, sec = (float(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected PROB:SECONDS (e.g. 0.75:12), got {text!r}") from None
    if not (0.0 <= p <= 1.0 and sec > 0 and math.isfinite(sec)):
        raise argparse.ArgumentTypeError(f"PROB must be in [0, 1] and SECONDS positive, got {text!r}")
    return p, sec


def _rerender(text: str) -> tuple[float, int]:
    """'0.5:8' -> (0.5, 8); '0.5' -> (0.5, RerenderSpec.variants): --rerender."""
    try:
        p, _, k = text.partition(":")
        out = float(p), int(k) if k else RerenderSpec.variants
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected PROB[:VARIANTS] (e.g. 0.5:8), got {text!r}") from None
    if not (0.0 <= out[0] <= 1.0 and 1 <= out[1] <= 64):
        raise argparse.ArgumentTypeError(f"PROB must be in [0, 1] and VARIANTS in 1..64, got {text!r}")
    return out


def _opening(text: str) -> tuple[float, int]:
    """'8:86' -> (8.0, 86): --opening-weight."""
    try:
        w, k = text.split(":")
        out = float(w), int(k)
    except ValueError:
        msg = f"expected W:K (a weight and a token count, e.g. 8:86), got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not (out[0] > 0 and math.isfinite(out[0])) or out[1] < 0:
        raise argparse.ArgumentTypeError(f"expected a weight > 0 and a token count >= 0, got {text!r}")
    return out


def audio_options(items: list[str]) -> tuple:
    """['n_mels=128', 'max_frames=250000'] -> (('max_frames', 250000), ('n_mels', 128)): TokenizerSettings.audio_options."""
    if not items:
        return ()
    from dataclasses import fields  # noqa: PLC0415

    from tokenizers_mm.audio import AudioConfig  # noqa: PLC0415  (torchaudio: only when asked for)

    known = {f.name for f in fields(AudioConfig)} - {"codebook_size", "db_floor"} | {"max_frames", "iters"}
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in known:
            raise ValueError(f"--audio-option {item!r}: expected NAME=VALUE with NAME one of {', '.join(sorted(known))}")
        for cast in (int, float, str):
            try:
                out[name] = cast(value)
                break
            except ValueError:
                pass
    return tuple(sorted(out.items()))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="perceiverar-train", description=DESCRIPTION,
                                formatter_class=_HelpFormatter)  # fmt: skip
    g = p.add_argument_group("data")
    g.add_argument("--data", action="append", required=True, metavar="DIR[:WEIGHT]",
                   help="data folder (images or audio with captions, or .txt documents); repeat to mix, with weights")
    g.add_argument("--modality", choices=["image", "audio", "text"], default=None,
                   help="force the modality of every --data folder (default: detected from the file types)")
    g.add_argument("--image-size", type=int, nargs="+", default=[32], metavar="H",
                   help="image size: H, or H W; images are resized (fit + white padding) to it (default: 32 x 32)")
    g.add_argument("--image-mode", choices=["subpixel", "palette", "sketch"], default=None,
                   help="image tokens: 3 sub-pixels per pixel (lossless), or 1 colour token per pixel from a k-means "
                        "palette fitted on the training images (a third of the tokens), or 'sketch': the palette's "
                        "colour tokens after a coarse sketch (one colour per 4x4 block; weight it with "
                        "--opening-weight). Default: subpixel, or the --init-from checkpoint's; a palette checkpoint "
                        "may go on in sketch mode (same palette)")
    g.add_argument("--palette-colours", type=int, default=256,
                   help="palette size in --image-mode palette or sketch (<= 256)")
    g.add_argument("--no-whole-items", action="store_true",
                   help="always train random-length prefix crops (the loss on their last N positions). By default "
                        "items that fit in the latents are trained whole and longer ones (inside the context) get "
                        "windows that make every target position equally likely to be trained; loss on the media only")
    g.add_argument("--audio-codebook-size", type=int, default=1024, help="audio codebook entries (fitted once)")
    g.add_argument("--audio-fit-files", type=int, default=32, help="fit the audio codebook on at most this many files")
    g.add_argument("--audio-option", action="append", default=[], metavar="NAME=VALUE",
                   help="setting of the fitted audio codebook (repeatable): an AudioConfig field such as n_mels=128, "
                        "n_fft=2048, hop_length=512 or patch_frames=2, or the fit's max_frames / iters")
    g.add_argument("--audio-mode", choices=["codes", "chords"], default=None,
                   help="audio tokens: the codebook's codes, or 'chords': a chord label (one of 24 triads or none, "
                        "read from the audio's chroma) before every 22 codes, so the caption picks the harmony in "
                        "one token (weight the labels with --opening-weight). Default: codes, or the --init-from "
                        "checkpoint's; a codes checkpoint may go on in chords mode (same codebook)")
    g.add_argument("--audio-seconds", type=float, default=None,
                   help="default clip length written into the checkpoint (default: median training clip, fit to L)")
    g.add_argument("--cache-dir", default=None, help="token cache root (default $PERCEIVERAR_CACHE or ~/.cache/perceiverar/datasets)")
    g.add_argument("--caption-template", default="{text}", metavar="TEMPLATE",
                   help="build each caption from its captions.jsonl fields, e.g. '{text}; {style} style'")
    g.add_argument("--filler", default=None, metavar="DIR[:PROB]",
                   help="folder of .txt documents: bury captions in long runs of its text in this fraction of media "
                        "batches (default 0.5), so captions steer from far away in long prompts")
    g.add_argument("--filler-lengths", choices=("uniform", "log"), default="uniform",
                   help="buried batches' lengths: uniform up to the context, or log-uniform (as many per octave of "
                        "caption-to-target distance; far cheaper at a 65K context)")
    g.add_argument("--filler-tokens", type=int, default=0, metavar="T",
                   help="cap a buried batch at about T tokens (rows x length) by keeping fewer rows of a long "
                        "one (default 0: every row)")
    g.add_argument("--filler-places", default="start,end,any", metavar="PLACES",
                   help="where a buried caption may stand, drawn evenly: start (opening the prompt), end (right "
                        "before the media), any (anywhere in between); comma-separated, default all three. With "
                        "--pinned-latents a caption in between is out of reach of the latents: start,end")
    g.add_argument("--prompt-dropout", type=float, default=0.1,
                   help="probability of training an item with the empty prompt (for classifier-free guidance)")
    g.add_argument("--caption-part-dropout", type=float, default=0.0,
                   help="with whole items: drop each ';'-separated part of a caption after the first with this "
                        "probability, so the first part (the name) must be read and shorter prompts are in "
                        "distribution (e.g. 0.5 for the emoji captions)")
    g.add_argument("--colour-tags", type=float, default=0.0,
                   help="palette images trained whole: put the image's dominant colour in front of the caption's "
                        "name with this probability ('yellow grinning face'), so colour words are learnt from "
                        "every image (perceiverar/data/colour_augment.py)")
    g.add_argument("--hue-rotate", type=float, default=0.0,
                   help="palette images trained whole: turn the image's hue by a multiple of 30 degrees with this "
                        "probability and name the new colour in its caption ('red heart' -> 'blue heart')")
    g.add_argument("--recolour", type=float, default=0.0,
                   help="palette images trained whole: move the pixels of the image's dominant colour to another "
                        "named colour (black, grey, white and brown too) with this probability and name it in the "
                        "caption ('red heart' -> 'brown heart'); before --hue-rotate, which it then leaves alone")
    g.add_argument("--balance", default=None, metavar="FIELD[:POWER]",
                   help="draw items with probability proportional to the size of their group (a captions.jsonl "
                        "field, e.g. the emoji 'category') to the power -POWER (default 0.5; 1: every group the "
                        "same share), instead of uniformly: perceiverar/data/balance.py")
    g.add_argument("--mirror", type=float, default=0.0,
                   help="images trained whole: flip a captioned image left-right with this probability unless its "
                        "caption names a direction, a flag, a clock or letters (perceiverar/data/mirror.py); "
                        "twice the pictures per caption against overfitting (e.g. 0.5)")
    g.add_argument("--rerender", type=_rerender, default=(0.0, RerenderSpec.variants), metavar="PROB[:VARIANTS]",
                   help="images trained whole: with this probability a captioned image is one of VARIANTS (default 8) "
                        "re-renders of its source file, moved (--rerender-shift), scaled (--rerender-scale) and turned "
                        "(--rerender-rotate) "
                        "before resizing, tokenized once into the cache (perceiverar/data/rerender.py); new true "
                        "pictures of every caption against overfitting (e.g. 0.5)")
    g.add_argument("--rerender-scale", type=float, default=RerenderSpec.min_scale, metavar="MIN",
                   help="--rerender: each variant is scaled by a factor in [MIN, 1] (1: moved only; scaling makes the "
                        "emoji's styles harder to tell apart, see benchmarks/rerender_labels.py)")
    g.add_argument("--rerender-shift", type=float, default=RerenderSpec.max_shift, metavar="PIXELS",
                   help="--rerender: each variant is moved by up to PIXELS target pixels in x and y (default 0.5)")
    g.add_argument("--rerender-rotate", type=float, default=RerenderSpec.max_rotate, metavar="DEGREES",
                   help="--rerender: each variant is turned by up to DEGREES either way about its centre (default 0)")
    g.add_argument("--augment-tags", action="store_true",
                   help="--rerender / --mirror: a re-rendered or mirrored row says so at the end of its caption "
                        "('; re-rendered', '; mirrored'), so that a prompt without the tag asks for the original "
                        "pictures only (distribution augmentation; perceiverar/data/batches.py)")
    g.add_argument("--opening-clips", type=_clips, default=(0.0, 0.0), metavar="PROB:SECONDS",
                   help="audio: with this probability a batch trains the first SECONDS of each clip, whole, as a clip "
                        "of that length (its header says so), the length generation asks for: several times more "
                        "caption-led openings per CPU-minute than windows over whole pieces (e.g. 0.75:12)")
    g.add_argument("--chord-weight", type=float, default=1.0, metavar="W",
                   help="loss weight of the chord labels of --audio-mode chords (whole items and uniform windows)")
    g.add_argument("--opening-weight", type=_opening, default=(1.0, 0), metavar="W:K",
                   help="with whole items and uniform windows: the first K targets of each item's media count W "
                        "times in the loss (e.g. 8:86, the first two seconds of a 43-tokens/s clip), where only the "
                        "caption can say what comes: a chorale's key, say")
    g = p.add_argument_group("model")
    g.add_argument("--preset", default="small", help=f"model size: {', '.join(PRESETS)}")
    g.add_argument("--init-from", default=None, metavar="CKPT",
                   help="start from this checkpoint's weights and architecture (fine-tuning; --context-len and "
                        "--n-latents may still change, the optimizer starts afresh); audio reuses its codebook")
    g.add_argument("--n-latents", type=int, default=None, help="override the preset's N (latents)")
    g.add_argument("--context-len", type=int, default=None, help="override the preset's L (context)")
    g.add_argument("--context-dropout", type=float, default=0.0, help="fraction of prefix keys dropped per step (paper)")
    g.add_argument("--dropout", type=float, default=None, help="override the preset's dropout")
    g.add_argument("--conv-kernel", type=int, default=None,
                   help="override the preset's short causal convolution before the cross-attention (0: none)")
    g.add_argument("--query-len-scale", type=int, default=None, metavar="N0",
                   help="length-scaled cross-attention: a latent seeing n > N0 keys has its query scaled by "
                        "log n / log N0, so a long prompt does not dilute what a short-item model attends to "
                        "(0: off; the config's query_len_scale)")
    g.add_argument("--pinned-latents", type=int, default=None, metavar="P",
                   help="the context's first P positions (a long prompt's opening: its caption) also join the latent "
                        "stack, just before the latents, so they are read alike at any distance "
                        "(PerceiverARConfig.pinned_latents; 0: off; with --init-from the weights are unchanged)")
    g.add_argument("--word-features", action="store_true",
                   help="with --init-from a checkpoint trained before the word feature slot (tokenizers_mm.features): "
                        "add the slot, its embedding zero-initialised so the model starts as the checkpoint (new "
                        "models have it already)")
    g.add_argument("--paragraph-features", action="store_true",
                   help="with --init-from a checkpoint trained before the paragraph feature slot (each prompt byte's "
                        "paragraph number, so a long prompt's first paragraph is marked however far back it is; "
                        "tokenizers_mm.features): add it (and the word slot if missing), zero-initialised (new models "
                        "have it already)")
    g.add_argument("--add-layers", type=int, default=0, metavar="K",
                   help="with --init-from: K more latent self-attention blocks, each a copy of the block it follows "
                        "with its output projections zeroed, so the model starts as the checkpoint "
                        "(perceiverar.grow)")
    g.add_argument("--activation-checkpointing", action="store_true", help="recompute latent blocks in backward")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--cpu-bf16", action="store_true",
                   help="bf16 autocast on the CPU too (about 3x faster with --compile on CPUs with AVX-512 BF16 or "
                        "AMX; weights and optimizer stay fp32); CUDA always uses bf16 autocast")
    g = p.add_argument_group("optimisation")
    g.add_argument("--out", required=True, help="run directory (checkpoints, metrics, samples)")
    g.add_argument("--max-steps", type=int, required=True, help="optimizer steps in all")
    g.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    g.add_argument("--batch-size", type=int, default=8, help="sequences per rank per micro-step")
    g.add_argument("--grad-accum", type=int, default=1, help="micro-steps per optimizer step")
    g.add_argument("--lr", type=float, default=3e-4, help="peak learning rate")
    g.add_argument("--min-lr", type=float, default=None, help="learning rate at the end of the cosine (default lr/10)")
    g.add_argument("--warmup", type=int, default=100, help="linear warm-up steps")
    g.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay (matrices and embeddings only)")
    g.add_argument("--beta2", type=float, default=0.95, help="AdamW beta2")
    g.add_argument("--grad-clip", type=float, default=1.0, help="clip the global gradient norm (0: off)")
    g.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                   help="keep an exponential moving average of the weights (e.g. 0.998: about the last 500 steps); "
                        "validation, RUN_DIR/best and samples then use the average, training the raw weights (0: off)")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (under torchrun: cuda:LOCAL_RANK)")
    g.add_argument("--seed", type=int, default=0, help="seed of the initial weights, the data order and dropout")
    g.add_argument("--fsdp", action="store_true", help="under torchrun: shard with FSDP2 instead of DDP")
    g = p.add_argument_group("monitoring")
    g.add_argument("--val-every", type=int, default=500, help="validate every this many steps (and at the end)")
    g.add_argument("--val-items", type=int, default=32, help="validation items per folder")
    g.add_argument("--val-windows", type=int, default=8, help="sliding windows per validation item at most")
    g.add_argument("--sample-every", type=int, default=2000, help="save generated samples every this many steps (0: never)")
    g.add_argument("--save-every", type=int, default=1000, help="checkpoint every this many steps (and at the end)")
    g.add_argument("--keep-last", type=int, default=3, help="checkpoints kept in RUN_DIR/checkpoints")
    g.add_argument("--log-every", type=int, default=1, help="metrics.jsonl line every this many steps")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--debug-step-sleep", type=float, default=0.0, help=argparse.SUPPRESS)  # tests: slow steps down
    args = p.parse_args(argv)
    # Which options the command line names: --resume takes every other one from run.json (rundir.resume_differences)
    probe = argparse.Namespace(**{a.dest: None for a in p._actions if a.dest != "help"})
    p.parse_args(argv, namespace=probe)  # argparse fills in defaults only for attributes not already set
    args.given_options = sorted(k for k, v in vars(probe).items() if v is not None)
    if args.preset not in PRESETS:
        p.error(f"unknown preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
    for name in ("max_steps", "batch_size", "grad_accum", "keep_last", "val_every", "save_every", "log_every"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 <= args.prompt_dropout <= 1:
        p.error(f"--prompt-dropout must be in [0, 1], got {args.prompt_dropout}")
    if not 0 <= args.caption_part_dropout < 1:
        p.error(f"--caption-part-dropout must be in [0, 1), got {args.caption_part_dropout}")
    for flag in ("colour_tags", "hue_rotate", "recolour", "mirror"):
        if not 0 <= getattr(args, flag) <= 1:
            p.error(f"--{flag.replace('_', '-')} must be in [0, 1], got {getattr(args, flag)}")
    if not 0 <= args.ema < 1:
        p.error(f"--ema must be in [0, 1) (0: off; 0.998 averages about the last 500 steps), got {args.ema}")
    if args.augment_tags and not (args.rerender[0] > 0 or args.mirror > 0):
        p.error("--augment-tags names re-rendered and mirrored rows: it needs --rerender or --mirror")
    if not 0.5 <= args.rerender_scale <= 1:
        p.error(f"--rerender-scale must be in [0.5, 1], got {args.rerender_scale}")
    if not 0 <= args.rerender_shift <= 4:
        p.error(f"--rerender-shift must be in [0, 4] target pixels, got {args.rerender_shift}")
    if not 0 <= args.rerender_rotate <= 45:
        p.error(f"--rerender-rotate must be in [0, 45] degrees, got {args.rerender_rotate}")
    if args.ema and args.fsdp:
        p.error("--ema is not supported with --fsdp (the average would need the sharded weights gathered every step)")
    if not 1 <= args.palette_colours <= 256:
        p.error(f"--palette-colours must be in 1..256, got {args.palette_colours}")
    if args.conv_kernel is not None and not 0 <= args.conv_kernel <= 64:
        p.error(f"--conv-kernel must be in 0..64, got {args.conv_kernel}")
    if args.pinned_latents is not None and args.pinned_latents < 0:
        p.error(f"--pinned-latents must be >= 0 (0: off), got {args.pinned_latents}")
    if args.query_len_scale is not None and args.query_len_scale < 0:
        p.error(f"--query-len-scale must be >= 0 (0: off), got {args.query_len_scale}")
    if args.add_layers < 0:
        p.error(f"--add-layers must be >= 0, got {args.add_layers}")
    if args.add_layers and not args.init_from:
        p.error("--add-layers grows a trained model: give the checkpoint with --init-from")
    if len(args.image_size) > 2:
        p.error("--image-size takes H or H W")
    if args.balance is not None:
        try:
            parse_balance(args.balance)
        except ValueError as e:
            p.error(str(e))
    try:
        audio_options(args.audio_option)
    except ValueError as e:
        p.error(str(e))
    if args.min_lr is None:
        args.min_lr = args.lr / 10
    return args
