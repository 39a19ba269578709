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
from .loop_common import (
    LossMeter,
    RunContext,
    StepHooks,
    Throughput,
    TrainResult,
    adam,
    build_train_data,
    check_resume_layout,
    load_resume,
    make_fid,
    progress_bar,
    save_snapshot,
)
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
from .registry import build_discriminator, build_generator
from .runtime import allreduce_grads, set_requires_grad
from .schedules import load_scheduler_states, make_scheduler, step_schedulers


def _d_input(cond: torch.Tensor | None, image: torch.Tensor) -> torch.Tensor:
    """What D sees: cat(condition, image) for a conditional D, else the image alone."""
    return image if cond is None else torch.cat([cond, image], 1)


def train_pix2pix(ctx: RunContext, max_steps: int | None = None, resume: bool = False) -> TrainResult:
    """Train G (and D) of a pix2pix-style model in `ctx.run_dir`; returns the checkpoint and metrics."""
    cfg, rt, t = ctx.cfg, ctx.rt, ctx.cfg.train
    sr = cfg.task == "super_resolution"

    # --- build nets (seeded by setup_runtime, so every rank starts from the same weights)
    generator = rt.prepare(build_generator(cfg.generator), cfg.generator.norm)
    discriminator = rt.prepare(build_discriminator(cfg.discriminator), cfg.discriminator.norm)
    ema = EMA(generator, t.ema_decay) if t.ema else None
    gan = GANLoss(t.gan_mode)
    recon = {"l1": l1_loss, "l2": l2_loss, "huber": huber_loss}[t.recon_loss]
    perceptual = VGGPerceptualLoss(t.vgg_weights).to(rt.device) if t.lambda_perceptual > 0 else None
    fid = make_fid(ctx)

    # --- load data
    data = build_train_data(ctx, generator.size_multiple)

    # --- optimisers and schedules (Adam; TTUR through lr_g != lr_d)
    opt_g = adam(generator.parameters(), t.lr_g, t)
    opt_d = adam(discriminator.parameters(), t.lr_d, t)
    schedulers = [make_scheduler(opt_g, t, data.total_steps), make_scheduler(opt_d, t, data.total_steps)]
    scaler = torch.amp.GradScaler(rt.device.type, enabled=t.amp == "fp16")

    # --- resume
    step, metrics = 0, {}
    if resume:
        state = load_resume(ctx)
        check_resume_layout(state, data)
        generator.load_state_dict(state["nets"]["G"])
        discriminator.load_state_dict(state["nets"]["D"])
        if ema is not None:
            if "G_ema" not in state["nets"]:
                raise DataError("train.ema is on but the resume state has no EMA weights")
            ema.load_state_dict(state["nets"]["G_ema"])
        opt_g.load_state_dict(state["optimizers"]["G"])
        opt_d.load_state_dict(state["optimizers"]["D"])
        load_scheduler_states(schedulers, state["schedulers"])
        scaler.load_state_dict(state["scaler"])
        step, metrics = int(state["step"]), dict(state.get("metrics", {}))
        data.tracker.files.update(state.get("skipped_files", {}))
        ckpt.restore_rng_state(state["rng"])  # last: nothing above may draw random numbers
    stop_at = min(data.total_steps, max_steps) if max_steps else data.total_steps

    def phase_of(s: int) -> str:
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
        resume_state = {
            "epoch": step // data.steps_per_epoch,
            "batch_in_epoch": step % data.steps_per_epoch,
            "steps_per_epoch": data.steps_per_epoch,
            "nets": nets,
            "optimizers": {"G": opt_g.state_dict(), "D": opt_d.state_dict()},
            "schedulers": [s.state_dict() for s in schedulers],
            "scaler": scaler.state_dict(),
            "metrics": hooks.metrics,
            "skipped_files": dict(data.tracker.files),
        }
        direction = cfg.data.direction if cfg.data.mode == "aligned" else None
        return save_snapshot(
            ctx,
            step,
            {"generator": ("generator", ema.module if ema else generator, direction)},
            resume_state,
            hooks.metrics,
            nets_in_checkpoints={"G_ema" if ema else "G": "generator"},
        )

    # --- phases: the training loop
    hooks = StepHooks(ctx, rt, data, evaluate, snapshot, schedulers, (opt_g, opt_d), metrics=metrics)
    bar = progress_bar(ctx, step, stop_at)
    meter, speed = LossMeter(), Throughput()
    epoch, position = divmod(step, data.steps_per_epoch)
    while step < stop_at:
        data.sampler.set_epoch(epoch, position)
        for batch in data.loader:
            data.tracker.record(batch["skipped"])
            real_in, real_out = rt.to_device(batch["input"]), rt.to_device(batch["target"])
            phase = phase_of(step)
            losses: dict[str, torch.Tensor] = {}
            with rt.autocast(), torch.set_grad_enabled(phase != "pretrain_d"):
                fake_out = generator(real_in)
            cond = bicubic_upsample(real_in, cfg.generator.scale) if sr else real_in
            d_input = functools.partial(_d_input, cond if t.conditional_d else None)

            # discriminator update
            if phase != "pretrain_g":
                set_requires_grad(discriminator, True)
                opt_d.zero_grad(set_to_none=True)
                with rt.autocast():
                    pred_fake = discriminator(d_input(fake_out.detach()))
                    pred_real = discriminator(d_input(real_out))
                    loss_d = gan.discriminator_loss(pred_real, pred_fake)
                if t.gan_mode == "wgangp":  # fp32, outside autocast: double backward through D
                    loss_gp = gradient_penalty(
                        discriminator,
                        d_input(real_out).float(),
                        d_input(fake_out.detach()).float(),
                        weight=t.lambda_gp,
                    )
                    losses["D_gp"] = loss_gp
                    loss_d = loss_d + loss_gp
                scaler.scale(loss_d).backward()
                allreduce_grads(rt, discriminator)
                scaler.step(opt_d)
                losses["D"] = loss_d

            # generator update
            if phase != "pretrain_d":
                set_requires_grad(discriminator, False)
                opt_g.zero_grad(set_to_none=True)
                with rt.autocast():
                    loss_rec = recon(fake_out.float(), real_out.float()) * t.lambda_l1
                    loss_g = loss_rec
                    losses[f"G_{t.recon_loss}"] = loss_rec
                    if phase == "gan":
                        pred_fake = discriminator(d_input(fake_out))
                        loss_gan = gan.generator_loss(pred_fake) * t.lambda_gan
                        losses["G_gan"] = loss_gan
                        loss_g = loss_g + loss_gan
                        if t.lambda_feat > 0:
                            with torch.no_grad():
                                pred_real = discriminator(d_input(real_out))
                            loss_feat = feature_matching_loss(pred_real, pred_fake) * t.lambda_feat
                            losses["G_feat"] = loss_feat
                            loss_g = loss_g + loss_feat
                    if perceptual is not None:
                        loss_perc = perceptual(fake_out.float(), real_out.float()) * t.lambda_perceptual
                        losses["G_perceptual"] = loss_perc
                        loss_g = loss_g + loss_perc
                scaler.scale(loss_g).backward()
                allreduce_grads(rt, generator)
                scaler.step(opt_g)
                if ema is not None:
                    ema.update(generator, step)
            scaler.update()
            step_schedulers(schedulers)
            step += 1
            meter.add(losses)
            speed.add(real_in.shape[0] * rt.world_size)
            bar.update(1)

            if hooks.after_step(step, stop_at, epoch, meter, speed, bar, extra_stats={"phase": phase}):
                break
        else:
            epoch, position = epoch + 1, 0
            continue
        break
    bar.close()

    # --- final evaluation and snapshot
    paths, metrics, interrupted = hooks.finish(step, stop_at)
    return TrainResult(
        run_dir=ctx.run_dir,
        checkpoint=paths["generator"],
        other_checkpoints={},
        step=step,
        total_steps=data.total_steps,
        metrics=metrics,
        skipped_files=data.tracker.count,
        data_summary=data.summary,
        interrupted=interrupted,
        validation_off=hooks.validation_off,
    )
