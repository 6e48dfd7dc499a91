"""Train a Perceiver AR model on folders of captioned images, audio or text: ``perceiverar-train``.

One GPU or CPU::

    perceiverar-train --data ../shared/data/emoji --preset small --out runs/emoji --max-steps 20000
    perceiverar-train --data imgs:3 --data music:1 --data books --preset base --out runs/mix --max-steps 1e5 \\
        --batch-size 4 --grad-accum 8 --activation-checkpointing
    perceiverar-train ... --resume          # continue exactly where RUN_DIR's last checkpoint stopped

Several GPUs on one machine (DDP; each rank takes its slice of the same global batch, rank 0 logs and saves)::

    torchrun --standalone --nproc_per_node 8 -m perceiverar.train --data ... --out runs/x --max-steps ...

Several machines: start the same command on every node, with the node count, this node's rank and a reachable
rendezvous endpoint on the first node (every node must see the data folders and RUN_DIR on shared storage, or at
least RUN_DIR on node 0; the token cache is rebuilt per node if it is not shared)::

    # on each of the 4 nodes (NODE_RANK = 0..3), 8 GPUs each:
    torchrun --nnodes 4 --nproc_per_node 8 --node_rank $NODE_RANK \\
        --rdzv_backend c10d --rdzv_endpoint node0.example:29500 --rdzv_id perceiverar-run1 \\
        -m perceiverar.train --data /shared/emoji --preset base --out /shared/runs/base --max-steps 100000

Add ``--fsdp`` for presets whose weights + optimizer state do not fit one device: parameters, gradients and
AdamW state are sharded with FSDP2 (``torch.distributed.fsdp.fully_shard``) per block (cross-attention and each latent block). The global
batch is ``--batch-size x --grad-accum x world size`` sequences; change the world size and keep the global
batch by adjusting ``--batch-size``/``--grad-accum`` (a resumed run may use a different world size).

The run directory (checkpoints, ``best``, metrics, samples) is described in ``perceiverar.rundir``. The parts
of a run have their own modules: ``train_args`` (the command line), ``train_data`` (the sources, the image layout,
the tokenizer config), ``distributed`` (ranks, DDP/FSDP), ``optim`` (AdamW, the schedule, RNG state) and ``runlog``
(log, metrics, plots, samples); this one holds the model set-up, checkpoints, validation, the loop and main().

Batches: one crop length per micro-step for the whole global batch (no padding; see ``perceiverar.data.batches``).
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from perceiverar.checkpoint import WEIGHTS, CheckpointError, check_weights, read_checkpoint_config
from perceiverar.config import PerceiverARConfig
from perceiverar.data import (
    AUDIO_TOKENIZER_DIR, ColourAugment, DatasetError, Mirror, Mixture, Rerender, parse_balance,
)  # fmt: skip
from perceiverar.distributed import Dist, full_state, load_optimizer_state, setup_dist, wrap_model
from perceiverar.evaluate import METRIC, bits, evaluate_sources
from perceiverar.grow import grow_state
from perceiverar.model import PerceiverAR
from perceiverar.optim import lr_at, make_optimizer, rng_state, set_rng_state
from perceiverar.rundir import (
    TRAINING_STATE, ResumePoint, Weights, disk_full, latest_resume_point, list_checkpoints, resume_differences, save_best,
    save_step, tidy,
)  # fmt: skip
from perceiverar.runlog import Logger, append_metrics, plot_losses, save_samples, truncate_metrics
from perceiverar.train_args import UsageError, parse_args
from perceiverar.train_data import prepare_data, tokenizer_config
from tokenizers_mm.ids import FEATURE_SIZES, PARAGRAPH_SLOT, WORD_SLOT


def build_config(args, resume_cfg: dict | None, init_cfg: dict | None = None) -> PerceiverARConfig:
    if resume_cfg is not None:  # a resumed run keeps its architecture
        return PerceiverARConfig.from_dict({**resume_cfg, "activation_checkpointing": args.activation_checkpointing})
    over = {"context_dropout": args.context_dropout, "activation_checkpointing": args.activation_checkpointing}
    for key, val in (("n_latents", args.n_latents), ("context_len", args.context_len), ("dropout", args.dropout),
                     ("conv_kernel", args.conv_kernel), ("query_len_scale", args.query_len_scale),
                     ("pinned_latents", args.pinned_latents)):
        if val is not None:
            over[key] = val
    if init_cfg is not None:  # fine-tuning: the checkpoint's architecture, with the run-time knobs overridden
        have = list(init_cfg.get("feature_sizes", FEATURE_SIZES))
        want = PARAGRAPH_SLOT + 1 if args.paragraph_features else WORD_SLOT + 1 if args.word_features else 0
        if len(have) < want:  # the slots up to the asked one, each added zero-initialised
            over["feature_sizes"] = [*have, *FEATURE_SIZES[len(have) : want]]
        if args.add_layers:
            over["n_layers"] = init_cfg["n_layers"] + args.add_layers
        return PerceiverARConfig.from_dict({**init_cfg, **over})
    return PerceiverARConfig.preset(args.preset, **over)


class Trainer:
    """One training run: data, model, optimizer and the loop, for this rank (rank 0 also logs and saves)."""

    def __init__(self, args, dd: Dist):
        self.args, self.dd = args, dd
        self.run_dir = Path(args.out)
        self.created = not self.run_dir.exists()  # a failed first launch removes what it made (see discard)
        if dd.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        dd.barrier()
        self.log = Logger(self.run_dir, dd.main)
        self.metrics = self.run_dir / "metrics.jsonl"

    # ---- setup ----

    def prepare_data(self) -> None:
        data = prepare_data(self.args, self.dd, self.log)
        self.data = data
        self.settings, self.sources, self.codec, self.filler = data.settings, data.sources, data.codec, data.filler

    def build(self, resume: ResumePoint | None) -> None:
        a, dd = self.args, self.dd
        resume_meta = resume.meta if resume else None
        init_dir = Path(a.init_from) if a.init_from and resume is None else None
        init_meta = None
        if init_dir is not None:
            try:
                init_meta = read_checkpoint_config(init_dir)
            except CheckpointError as e:
                raise UsageError(f"--init-from: {e}") from None
        self.cfg = build_config(a, resume_meta["model"] if resume_meta else None, init_meta["model"] if init_meta else None)
        torch.manual_seed(a.seed)  # same initial weights on every rank and every run
        model = PerceiverAR(self.cfg)
        if resume is not None:
            model.load_state_dict(resume.weights)  # checked against the config by load_resume_point
        elif init_dir is not None:
            from safetensors.torch import load_file  # noqa: PLC0415

            weights = init_dir / WEIGHTS
            try:
                init_cfg = PerceiverARConfig.from_dict(init_meta["model"])
                check_weights(weights, init_cfg)
                state = load_file(str(weights))
                added = range(len(init_cfg.feature_sizes), len(self.cfg.feature_sizes))  # --word/paragraph-features
                for slot in added:
                    state[f"embed.features.{slot}.weight"] = torch.zeros_like(model.embed.features[slot].weight)
                state = grow_state(state, init_cfg.n_layers, self.cfg.n_layers - init_cfg.n_layers)  # --add-layers
                model.load_state_dict(state)
            except (CheckpointError, OSError, RuntimeError, ValueError) as e:  # missing, truncated, another model's
                raise UsageError(f"--init-from: cannot load the weights {weights}: {e}") from None
            self.log(f"weights from {init_dir} (step {init_meta.get('training', {}).get('step', '?')})")
            if self.cfg.n_layers != init_cfg.n_layers:
                self.log(f"latent layers {init_cfg.n_layers} -> {self.cfg.n_layers} (each new one a copy of the one "
                         "before it, its output projections zeroed)")
            if added:
                self.log(f"feature slots {list(init_cfg.feature_sizes)} -> {list(self.cfg.feature_sizes)} "
                         "(the new ones zero-initialised)")
        model.to(dd.device)
        self.model = model  # the plain module: validation, samples, checkpoints
        self.fsdp = a.fsdp and dd.world > 1
        self.net = wrap_model(model, dd, fsdp=self.fsdp, compile=a.compile)
        self.opt = make_optimizer(model, a)
        # --ema: an exponential moving average of the weights (its first update copies them), evaluated and exported
        self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(a.ema), use_buffers=True) if a.ema else None
        self.mixture = Mixture(self.sources, self.cfg.context_len, self.cfg.n_latents, a.prompt_dropout, a.seed,
                               filler=self.filler, whole_items=not a.no_whole_items,
                               caption_part_dropout=a.caption_part_dropout,
                               colour_augment=self._colour_augment(a),
                               mirror=Mirror(a.mirror) if a.mirror > 0 else None,
                               rerender=Rerender(a.rerender[0], self.data.rerenders) if a.rerender[0] > 0 else None,
                               augment_tags=a.augment_tags,
                               opening_weight=a.opening_weight[0],
                               opening_tokens=a.opening_weight[1], chord_weight=a.chord_weight,
                               opening_clips=self._opening_clips(a), row_multiple=dd.world,
                               balance=parse_balance(a.balance) if a.balance else None)  # fmt: skip
        if a.augment_tags:
            self.log("--augment-tags: re-rendered and mirrored rows end their captions with '; re-rendered' and "
                     "'; mirrored'; prompts without them ask for the original pictures")
        for src, shares in zip(self.sources, self.mixture.group_shares):
            if shares:
                self.log(f"--balance {a.balance}: {src.name}: " + ", ".join(f"{g} {v:.1%}" for g, v in shares.items()))
        self.tok_cfg = tokenizer_config(a, self.data, self.cfg)
        self.step, self.best_val, self.tokens_seen = 0, math.inf, 0
        if resume is not None:
            state = resume.state
            load_optimizer_state(model, self.opt, state["optimizer"], fsdp=self.fsdp)
            self.step, self.best_val, self.tokens_seen = int(state["step"]), float(state["best_val"]), int(state["tokens_seen"])
            rngs = state["rng"]
            set_rng_state(rngs[dd.rank] if dd.rank < len(rngs) else rngs[0])
            if self.ema is not None:
                if "ema" in state:
                    self.ema.load_state_dict(state["ema"])
                else:  # the run was started without --ema: the average starts from the weights resumed
                    self.log("--ema: the checkpoint resumed holds no average; it starts from its weights")
        n = sum(p.numel() for p in model.parameters())
        self.log(f"model {a.preset}: {n / 1e6:.2f} M parameters, L={self.cfg.context_len}, N={self.cfg.n_latents}; "
                 f"device {dd.device}, world {dd.world}{' (FSDP)' if self.fsdp else ' (DDP)' if dd.world > 1 else ''}; "
                 f"global batch {a.batch_size * a.grad_accum * dd.world} sequences")  # fmt: skip

    def _opening_clips(self, a) -> tuple[float, int]:
        """--opening-clips PROB:SECONDS as (probability, audio codes per clip) for the Mixture."""
        prob, seconds = getattr(a, "opening_clips", (0.0, 0.0))
        if prob <= 0 or self.data.codec is None:
            return 0.0, 0
        return prob, max(1, round(seconds * self.data.codec.tokenizer.tokens_per_second))

    def _colour_augment(self, a) -> ColourAugment | None:
        """--colour-tags / --hue-rotate / --recolour: they need colour tokens (the palette is what they read and
        turn)."""
        if not (a.colour_tags or a.hue_rotate or a.recolour):
            return None
        if self.settings.image_palette is None:
            raise UsageError("--colour-tags, --hue-rotate and --recolour need colour-token images: add --image-mode "
                             "palette (or --init-from a palette checkpoint)")
        return ColourAugment(self.settings.image_palette, a.colour_tags, a.hue_rotate, a.recolour)

    # ---- checkpoints ----

    def _training_meta(self, val: float | None = None) -> dict:
        a = vars(self.args).copy()
        return {"step": self.step, "val_loss": val, "tokens_seen": self.tokens_seen, "args": a,
                "data": [s.manifest["folder"] for s in self.sources]}  # fmt: skip

    def _extra(self, state: dict | None):
        codec = self.codec

        def write(tmp: Path) -> None:
            if codec is not None:
                shutil.copytree(codec.dir, tmp / AUDIO_TOKENIZER_DIR, ignore=shutil.ignore_patterns(".complete"))
            if state is not None:
                torch.save(state, tmp / TRAINING_STATE)

        return write

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights validation, RUN_DIR/best and samples use: the moving average under --ema, else the model."""
        return self.model if self.ema is None else self.ema.module

    def save(self) -> bool:
        """Checkpoint RUN_DIR/checkpoints/step-XXXXXXX (see ``rundir.save_step``); False if that failed.

        The checkpoint's weights are the trained (raw) ones; under --ema the average travels in the training state
        (``--resume`` goes on with both), and RUN_DIR/best holds the average."""
        weights, opt_state = full_state(self.model, self.opt, fsdp=self.fsdp)
        rngs = self.dd.gather(rng_state())
        ok = True
        if self.dd.main:
            a = self.args
            state = {"step": self.step, "optimizer": opt_state, "rng": rngs, "best_val": self.best_val,
                     "tokens_seen": self.tokens_seen, "schedule": {"kind": "cosine", "warmup": a.warmup,
                     "lr": a.lr, "min_lr": a.min_lr, "max_steps": a.max_steps}}  # fmt: skip
            if self.ema is not None:
                state["ema"] = self.ema.state_dict()
            ok = save_step(self.run_dir, self.step, Weights(self.cfg, weights), self.tok_cfg, training=self._training_meta(),
                           extra_files=self._extra(state), keep_last=a.keep_last, log=self.log)  # fmt: skip
        self.dd.barrier()
        return ok

    def save_best(self, val: float) -> None:
        if self.ema is not None:
            weights = self.ema.module.state_dict()
        else:
            weights, _ = full_state(self.model, self.opt, fsdp=self.fsdp)
        if self.dd.main:
            save_best(self.run_dir, Weights(self.cfg, weights), self.tok_cfg, training=self._training_meta(val),
                      extra_files=self._extra(None), val=val, log=self.log)  # fmt: skip

    # ---- validation and samples ----

    def validate(self) -> float | None:
        a, dd = self.args, self.dd
        rank, world = (0, 1) if self.fsdp else (dd.rank, dd.world)
        model = self.eval_model
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if dd.device.type == "cuda" else contextlib.nullcontext()
        with amp:
            acc = evaluate_sources(model, self.sources, split="val", max_items=a.val_items, max_windows=a.val_windows,
                                   device=dd.device, rank=rank, world=world)  # fmt: skip
        mods = sorted(acc)
        flat = dd.sum_([v for m in mods for v in acc[m]]) if not self.fsdp else [v for m in mods for v in acc[m]]
        acc = {m: flat[2 * i : 2 * i + 2] for i, m in enumerate(mods)}
        total = [sum(v[0] for v in acc.values()), sum(v[1] for v in acc.values())]
        if total[1] == 0:
            return None
        rec = {"kind": "val", "step": self.step, "val_loss": total[0] / total[1]}
        for m, v in acc.items():
            if v[1]:
                rec[f"val_{METRIC[m]}"] = bits(v)
        if dd.main:
            append_metrics(self.metrics, rec)
            self.log("validation: " + ", ".join(f"{k} {v:.4f}" for k, v in rec.items() if k.startswith("val_")))
            try:
                plot_losses(self.metrics, self.run_dir / "loss.png")
            except Exception as e:  # noqa: BLE001
                self.log(f"could not draw loss.png: {e}")
        return rec["val_loss"]

    def samples(self) -> None:
        if not self.dd.main:
            return
        if self.fsdp:
            self.log("samples are skipped under --fsdp (the weights are sharded)")
            return
        save_samples(self.eval_model, self.tok_cfg, self.sources, self.codec, self.run_dir / "samples", self.step, self.log)

    # ---- the loop ----

    def train_step(self) -> dict:
        a, dd = self.args, self.dd
        lr = lr_at(self.step, a)
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        rows = a.batch_size * dd.world
        losses, lens, tokens = [], [], 0
        amp = contextlib.nullcontext()
        if dd.device.type == "cuda" or a.cpu_bf16:  # bf16 matmuls: tensor cores, or a CPU's AVX-512 BF16 / AMX
            amp = torch.autocast(dd.device.type, dtype=torch.bfloat16)
        for micro in range(a.grad_accum):
            toks, feats, st = self.mixture.batch(self.step, micro, rows)
            kept = toks.shape[0]  # a long buried batch may keep fewer rows (--filler-tokens), a multiple of the world
            per = kept // dd.world
            sl = slice(dd.rank * per, (dd.rank + 1) * per)
            toks, feats = toks[sl].to(dd.device), feats[sl].to(dd.device)
            mask = st.get("loss_mask")
            mask = None if mask is None else mask[sl].to(dd.device)
            last = micro == a.grad_accum - 1
            sync = self.net.no_sync() if (dd.world > 1 and not self.fsdp and not last) else contextlib.nullcontext()
            with sync:
                with amp:
                    loss = self.net(toks, feats, mask, st.get("n_latents"))
                (loss / a.grad_accum).backward()
            losses.append(loss.detach().float())
            lens.append(st["seq_len"])
            tokens += kept * (st["seq_len"] - 1)
        gnorm = None
        if a.grad_clip > 0:
            gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), a.grad_clip)
            gnorm = float(gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm)
        self.opt.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        loss = float(torch.stack(losses).mean())
        if dd.world > 1:
            loss = dd.sum_([loss])[0] / dd.world
        return {"loss": loss, "lr": lr, "grad_norm": gnorm, "seq_len": lens, "tokens": tokens}

    def check_same_run(self) -> None:
        """``--resume`` continues the run that RUN_DIR/run.json describes: refuse a command that changes what it
        trains (the model, the data, the seed), naming each difference."""
        path = self.run_dir / "run.json"
        if not path.is_file():
            return
        try:
            first = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            self.log(f"--resume: cannot read {path} ({e}); the command is not compared with the first launch's")
            return
        diff = resume_differences(first, self.args) if isinstance(first, dict) else []
        if diff:
            raise UsageError(f"--resume would change what {self.run_dir} trains: {'; '.join(diff)}. Resume with the "
                             f"run's own options (see {path}), or start a new run (another --out; --init-from a "
                             "checkpoint of this one to fine-tune it)")  # fmt: skip

    def discard(self) -> None:
        """After a failed first launch: remove the run directory it created, unless something besides the log is in it."""
        if self.created and self.dd.main and self.run_dir.is_dir():
            if all(p.name == "train.log" for p in self.run_dir.iterdir()):
                shutil.rmtree(self.run_dir, ignore_errors=True)

    def run(self) -> int:
        a, dd = self.args, self.dd
        resume = None
        if a.resume:
            if dd.main:
                tidy(self.run_dir, self.log)  # saves a kill interrupted: finish or undo them, drop their temp folders
            dd.barrier()
            self.check_same_run()
            try:
                resume = latest_resume_point(self.run_dir, self.log)
            except CheckpointError as e:
                raise UsageError(str(e)) from None
            if resume is None:
                self.log(f"--resume: no checkpoint in {self.run_dir / 'checkpoints'}; starting from scratch")
        elif list_checkpoints(self.run_dir):
            raise UsageError(f"{self.run_dir} already holds checkpoints: pass --resume to continue, or another --out")
        self.prepare_data()
        self.build(resume)
        if dd.main:
            if resume is None:
                self.metrics.unlink(missing_ok=True)
                (self.run_dir / "run.json").write_text(json.dumps(vars(a), indent=2))
            else:
                try:
                    truncate_metrics(self.metrics, self.step)
                except OSError as e:
                    raise UsageError(f"cannot rewrite {self.metrics}{' (disk full)' if disk_full(e) else ''}: {e}; "
                                     "free some space and --resume again") from None  # fmt: skip
                self.log(f"resumed from {resume.dir} at step {self.step}")
        dd.barrier()
        if self.step >= a.max_steps:
            self.log(f"already at step {self.step} >= --max-steps {a.max_steps}: nothing to do")
            return 0
        self.net.train()
        if self.step == 0:
            self.validate()
        bar = tqdm(total=a.max_steps, initial=self.step, desc="training", unit="step", disable=a.no_progress or not dd.main,
                   dynamic_ncols=True)  # fmt: skip
        self.log.bar = bar
        t_start, last_save_ok = time.perf_counter(), True
        try:
            while self.step < a.max_steps:
                t0 = time.perf_counter()
                rec = self.train_step()
                self.step += 1
                self.tokens_seen += rec["tokens"]
                dt = time.perf_counter() - t0
                if not math.isfinite(rec["loss"]):
                    self.log(f"ERROR: loss is {rec['loss']} at step {self.step}; stopping (try a lower --lr)")
                    return 1
                if dd.main and (self.step % a.log_every == 0 or self.step == a.max_steps):
                    append_metrics(self.metrics, {"kind": "train", "step": self.step, **rec, "tokens_per_s": rec["tokens"] / dt,
                                                  "tokens_seen": self.tokens_seen, "time": time.perf_counter() - t_start})  # fmt: skip
                bar.set_postfix(loss=f"{rec['loss']:.4f}", tok_s=f"{rec['tokens'] / dt:,.0f}", lr=f"{rec['lr']:.2e}")
                bar.update(1)
                done = self.step == a.max_steps
                if self.step % a.val_every == 0 or done:
                    val = self.validate()
                    if val is not None and val < self.best_val:
                        self.best_val = val
                        self.save_best(val)
                if a.sample_every and (self.step % a.sample_every == 0):
                    self.samples()
                if self.step % a.save_every == 0 or done:
                    last_save_ok = self.save()
                if a.debug_step_sleep:
                    time.sleep(a.debug_step_sleep)
        finally:
            bar.close()
            self.log.bar = None
        if dd.main and self.metrics.is_file():
            try:
                plot_losses(self.metrics, self.run_dir / "loss.png")
            except Exception as e:  # noqa: BLE001
                self.log(f"could not draw loss.png: {e}")
        if not last_save_ok:
            self.log("ERROR: the final checkpoint could not be saved (see above)")
            return 1
        self.log(f"done: {self.step} steps; checkpoints in {self.run_dir / 'checkpoints'}")
        return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    dd = setup_dist(args.device)
    trainer = None
    try:
        trainer = Trainer(args, dd)
        code = trainer.run()
    except (DatasetError, UsageError) as e:
        if trainer is not None:
            trainer.discard()
        raise SystemExit(f"perceiverar-train: error: {e}") from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if code:
        raise SystemExit(code)
    return 0


if __name__ == "__main__":
    main()
