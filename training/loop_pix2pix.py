"""The pix2pix training loop (paired translation, super-resolution, colourisation): one function.

Per step (junyanz order): G forward, then the discriminator update on (condition, real) vs
(condition, fake.detach()), then the generator update with the adversarial term (+ feature
matching, + perceptual) and lambda_l1 * the reconstruction loss (`train.recon_loss`: L1 by
default, L2 or Huber). The condition is the input image; super-resolution inputs are
bicubic-upsampled to the output size first, so D always sees same-size pairs.

NoGAN-style phases: the first `pretrain_steps` steps train G on the reconstruction losses alone,
the next `pretrain_d_steps` train D alone against that pre-trained G, then adversarial training.
"""

from __future__ import annotations

import functools

import torch

from . import checkpoint as ckpt
from .data import DataError
from .ema import EMA
from .evaluation import evaluate_paired
from .init_from import start_generator
from .losses import (
    GANLoss,
    VGGPerceptualLoss,
    feature_matching_loss,
    gradient_penalty,
    huber_loss,
    l1_loss,
    l2_loss,
)
from .networks.common import bicubic_upsample
from .optim import Optimizers
from .registry import build_discriminator
from .run_context import RunContext, TrainResult
from .run_dir import resume_load_errors, write_run_config
from .runtime import allreduce_grads, set_requires_grad
from .snapshots import load_resume, resume_entries, save_snapshot
from .step_hooks import StepHooks
from .train_data import build_train_data, make_fid


def _d_input(cond: torch.Tensor | None, image: torch.Tensor) -> torch.Tensor:
    """What D sees: cat(condition, image) for a conditional D, else the image alone."""
    # pix2pix's D is conditional: seeing the input next to the output, it can reject outputs that
    # look real but do not match their input, which an unconditional D cannot.
    return image if cond is None else torch.cat([cond, image], 1)


def train_pix2pix(ctx: RunContext, max_steps: int | None = None, resume: bool = False) -> TrainResult:
    """Train G (and D) of a pix2pix-style model in `ctx.run_dir`; returns the checkpoint and metrics."""
    cfg, rt, t = ctx.cfg, ctx.rt, ctx.cfg.train
    sr = cfg.task == "super_resolution"

    # --- build nets
    # setup_runtime seeded every rank alike and rt.prepare broadcasts rank 0's weights, so all
    # ranks start from one G and one D (gradients are averaged by hand, runtime.allreduce_grads);
    # G from train.init_from's weights when fine-tuning.
    generator = start_generator(ctx, "G")
    discriminator = rt.prepare(build_discriminator(cfg.discriminator), cfg.discriminator.norm)
    # The EMA copy is what validation and the checkpoint use: it averages out the step-to-step
    # jitter of adversarial updates, which the raw weights keep.
    ema = EMA(generator, t.ema_decay) if t.ema else None
    gan = GANLoss(t.gan_mode)
    recon = {"l1": l1_loss, "l2": l2_loss, "huber": huber_loss}[t.recon_loss]
    # VGG only when weighted: it is the largest network in the step and needs user-supplied weights.
    perceptual = VGGPerceptualLoss(t.vgg_weights).to(rt.device) if t.lambda_perceptual > 0 else None
    fid = make_fid(ctx)

    # --- load data (crops must be multiples of what the generator's down/up sampling divides by)
    data = build_train_data(ctx, generator.size_multiple)

    # --- optimisers and schedules: two Adams, since TTUR gives G and D their own learning rates;
    # schedules span the config's run length, not --max-steps, so a stopped run resumes on course.
    opt = Optimizers.build(
        generator.parameters(), discriminator.parameters(), t, data.total_steps, rt.device.type
    )

    # --- resume
    step, metrics = 0, {}
    if resume:
        with resume_load_errors(ctx.run_dir):
            state, step, metrics = load_resume(ctx, data, opt)
            generator.load_state_dict(state["nets"]["G"])
            discriminator.load_state_dict(state["nets"]["D"])
            if ema is not None:
                # Restarting the average from the raw weights would throw away what it has smoothed.
                if "G_ema" not in state["nets"]:
                    raise DataError("train.ema is on but the resume state has no EMA weights")
                ema.load_state_dict(state["nets"]["G_ema"])
        ckpt.restore_rng_state(state["rng"])  # last: nothing above may draw random numbers
        write_run_config(rt, cfg, ctx.run_dir, step)  # only now: a resume that fails leaves config.json alone
    # --max-steps cuts the run short without changing its schedule (see the optimisers above).
    stop_at = min(data.total_steps, max_steps) if max_steps else data.total_steps

    def phase_of(s: int) -> str:
        # NoGAN: G first learns the reconstruction alone, so D is then trained against plausible
        # images rather than noise, and the adversarial phase starts from a stable point.
        if s < t.pretrain_steps:
            return "pretrain_g"
        if s < t.pretrain_steps + t.pretrain_d_steps:
            return "pretrain_d"
        return "gan"

    def evaluate(items):
        return evaluate_paired(
            ema.module if ema else generator,
            items,
            task=cfg.task,
            scale=cfg.generator.scale,
            rt=rt,
            n_samples=t.n_samples,
            fid=fid,
        )

    def snapshot() -> dict:
        nets = {"G": generator.state_dict(), "D": discriminator.state_dict()}
        if ema is not None:
            nets["G_ema"] = ema.state_dict()
        # Only aligned data has a direction; SR and colourisation inputs are not one half of a pair.
        direction = cfg.data.direction if cfg.data.mode == "aligned" else None
        return save_snapshot(
            ctx,
            step,
            {"generator": ("generator", ema.module if ema else generator, direction)},
            resume_entries(step, data, nets, opt, hooks.metrics),
            hooks.metrics,
            # The deployable file already holds these weights: the resume state names it instead
            # of storing them a second time.
            nets_in_checkpoints={"G_ema" if ema else "G": "generator"},
        )

    # --- phases: the training loop
    hooks = StepHooks(ctx, data, evaluate, snapshot, opt, step=step, stop_at=stop_at, metrics=metrics)
    for batch in hooks.batches():
        real_in, real_out = rt.to_device(batch["input"]), rt.to_device(batch["target"])
        phase = phase_of(step)
        losses: dict[str, torch.Tensor] = {}
        # One G forward serves both updates (junyanz): D takes it detached, G's loss through it.
        # While only D trains, G's activations need not be kept for a backward pass.
        with rt.autocast(), torch.set_grad_enabled(phase != "pretrain_d"):
            fake_out = generator(real_in)
        # SR: D judges pairs of the same size, so the LR input is shown bicubic-upsampled.
        cond = bicubic_upsample(real_in, cfg.generator.scale) if sr else real_in
        d_input = functools.partial(_d_input, cond if t.conditional_d else None)

        # discriminator update (before G's, as junyanz: G's adversarial term then uses the new D)
        if phase != "pretrain_g":
            set_requires_grad(discriminator, True)
            with rt.autocast():
                # detach: D's loss must not reach G's weights; G gets its own backward below.
                pred_fake = discriminator(d_input(fake_out.detach()))
                pred_real = discriminator(d_input(real_out))
                loss_d = gan.discriminator_loss(pred_real, pred_fake)
            if t.gan_mode == "wgangp":
                # fp32 and outside autocast: the penalty differentiates D's input gradient (a double
                # backward), whose norm loses too much precision, or overflows, in fp16.
                loss_gp = gradient_penalty(
                    discriminator,
                    d_input(real_out).float(),
                    d_input(fake_out.detach()).float(),
                    weight=t.lambda_gp,
                )
                losses["D_gp"] = loss_gp
                loss_d = loss_d + loss_gp
            opt.scaler.scale(loss_d).backward()
            # DDP by hand: average before the step, so every rank applies the same update; an
            # inf on one rank becomes inf everywhere, so the scaler skips the step on all ranks.
            allreduce_grads(rt, discriminator)
            opt.step(opt.d)
            losses["D"] = loss_d

        # generator update
        if phase != "pretrain_d":
            # Frozen D: G's backward then computes no gradients for D's weights (junyanz does the same).
            set_requires_grad(discriminator, False)
            with rt.autocast():
                # fp32 whatever autocast's op lists say (they differ between CUDA and CPU): a
                # reduced-precision mean over every pixel loses the small errors late training is about.
                # lambda_l1 = 100 (pix2pix): L1 carries the low frequencies, the GAN term the detail.
                loss_rec = recon(fake_out.float(), real_out.float()) * t.lambda_l1
                loss_g = loss_rec
                losses[f"G_{t.recon_loss}"] = loss_rec
                if phase == "gan":
                    # Not detached this time: the adversarial gradient has to reach G.
                    pred_fake = discriminator(d_input(fake_out))
                    loss_gan = gan.generator_loss(pred_fake) * t.lambda_gan
                    losses["G_gan"] = loss_gan
                    loss_g = loss_g + loss_gan
                    if t.lambda_feat > 0:
                        # Real features are targets (pix2pixHD): constants, so no graph is kept.
                        with torch.no_grad():
                            pred_real = discriminator(d_input(real_out))
                        loss_feat = feature_matching_loss(pred_real, pred_fake) * t.lambda_feat
                        losses["G_feat"] = loss_feat
                        loss_g = loss_g + loss_feat
                if perceptual is not None:
                    loss_perc = perceptual(fake_out.float(), real_out.float()) * t.lambda_perceptual
                    losses["G_perceptual"] = loss_perc
                    loss_g = loss_g + loss_perc
            opt.scaler.scale(loss_g).backward()
            allreduce_grads(rt, generator)
            opt.step(opt.g)
            # After the optimiser step, from the averaged weights: every rank's EMA stays identical.
            if ema is not None:
                ema.update(generator, step)
        # One scale update per step, after both optimisers (GradScaler's rule for several optimisers);
        # the schedules advance even where a phase skipped an optimiser: lr is a function of the step.
        opt.end_step()
        step += 1
        # Losses stay tensors here: the meter syncs with the device once per log line, not per step.
        hooks.end_step(step, losses, images=real_in.shape[0], extra_stats={"phase": phase})

    # --- final evaluation and snapshot
    return hooks.finish()
