"""The CycleGAN training loop (unpaired style translation): one function.

Naming follows the paper/junyanz: G_A maps A -> B and D_A judges domain B; G_B maps B -> A and
D_B judges domain A. Per step: one generator update of G_A and G_B together (adversarial +
lambda_cycle * cycle L1 in both directions + lambda_identity * lambda_cycle * identity L1), then
one discriminator update of D_A and D_B on real images vs fakes drawn from the image pools.

The deployable checkpoint is G_A (name "G_A", direction AtoB); G_B is saved next to it.
"""

from __future__ import annotations

import itertools

import torch

from . import checkpoint as ckpt
from .data import DataError
from .ema import EMA
from .evaluation import evaluate_cyclegan
from .image_pool import ImagePool
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
from .losses import GANLoss, cycle_loss, gradient_penalty, identity_loss
from .registry import build_discriminator, build_generator
from .runtime import allreduce_grads, set_requires_grad
from .schedules import load_scheduler_states, make_scheduler, step_schedulers


def train_cyclegan(ctx: RunContext, max_steps: int | None = None, resume: bool = False) -> TrainResult:
    """Train G_A, G_B, D_A, D_B in `ctx.run_dir`; returns the G_A checkpoint (and G_B's) and metrics."""
    cfg, rt, t = ctx.cfg, ctx.rt, ctx.cfg.train

    # --- build nets (seeded by setup_runtime, so every rank starts from the same weights)
    g_a = rt.prepare(build_generator(cfg.generator), cfg.generator.norm)
    g_b = rt.prepare(build_generator(cfg.generator), cfg.generator.norm)
    d_a = rt.prepare(build_discriminator(cfg.discriminator), cfg.discriminator.norm)
    d_b = rt.prepare(build_discriminator(cfg.discriminator), cfg.discriminator.norm)
    ema_a = EMA(g_a, t.ema_decay) if t.ema else None
    ema_b = EMA(g_b, t.ema_decay) if t.ema else None
    pool_a = ImagePool(t.pool_size, seed=t.seed * 1009 + 2 * rt.rank)  # fakes of domain A, for D_B
    pool_b = ImagePool(t.pool_size, seed=t.seed * 1009 + 2 * rt.rank + 1)  # fakes of domain B, for D_A
    gan = GANLoss(t.gan_mode)
    fid = make_fid(ctx)

    # --- load data
    data = build_train_data(ctx, g_a.size_multiple)

    # --- optimisers and schedules (Adam; TTUR through lr_g != lr_d)
    opt_g = adam(itertools.chain(g_a.parameters(), g_b.parameters()), t.lr_g, t)
    opt_d = adam(itertools.chain(d_a.parameters(), d_b.parameters()), t.lr_d, t)
    schedulers = [make_scheduler(opt_g, t, data.total_steps), make_scheduler(opt_d, t, data.total_steps)]
    scaler = torch.amp.GradScaler(rt.device.type, enabled=t.amp == "fp16")
    lambda_idt = t.lambda_identity * t.lambda_cycle

    # --- resume
    step, metrics = 0, {}
    if resume:
        state = load_resume(ctx)
        check_resume_layout(state, data)
        for name, net in (("G_A", g_a), ("G_B", g_b), ("D_A", d_a), ("D_B", d_b)):
            net.load_state_dict(state["nets"][name])
        if ema_a is not None:
            if "G_A_ema" not in state["nets"]:
                raise DataError("train.ema is on but the resume state has no EMA weights")
            ema_a.load_state_dict(state["nets"]["G_A_ema"])
            ema_b.load_state_dict(state["nets"]["G_B_ema"])
        opt_g.load_state_dict(state["optimizers"]["G"])
        opt_d.load_state_dict(state["optimizers"]["D"])
        load_scheduler_states(schedulers, state["schedulers"])
        scaler.load_state_dict(state["scaler"])
        pool_a.load_state_dict(state["pools"]["A"])
        pool_b.load_state_dict(state["pools"]["B"])
        step, metrics = int(state["step"]), dict(state.get("metrics", {}))
        data.tracker.files.update(state.get("skipped_files", {}))
        ckpt.restore_rng_state(state["rng"])  # last: nothing above may draw random numbers
    stop_at = min(data.total_steps, max_steps) if max_steps else data.total_steps

    def evaluate(items):
        return evaluate_cyclegan(
            ema_a.module if ema_a else g_a,
            ema_b.module if ema_b else g_b,
            items,
            rt=rt,
            n_samples=t.n_samples,
            fid=fid,
        )

    def snapshot() -> dict:
        nets = {
            "G_A": g_a.state_dict(),
            "G_B": g_b.state_dict(),
            "D_A": d_a.state_dict(),
            "D_B": d_b.state_dict(),
        }
        if ema_a is not None:
            nets["G_A_ema"], nets["G_B_ema"] = ema_a.state_dict(), ema_b.state_dict()
        resume_state = {
            "epoch": step // data.steps_per_epoch,
            "batch_in_epoch": step % data.steps_per_epoch,
            "steps_per_epoch": data.steps_per_epoch,
            "nets": nets,
            "optimizers": {"G": opt_g.state_dict(), "D": opt_d.state_dict()},
            "schedulers": [s.state_dict() for s in schedulers],
            "scaler": scaler.state_dict(),
            "pools": {"A": pool_a.state_dict(), "B": pool_b.state_dict()},
            "metrics": hooks.metrics,
            "skipped_files": dict(data.tracker.files),
        }
        gens = {
            "generator": ("G_A", ema_a.module if ema_a else g_a, "AtoB"),
            "G_B": ("G_B", ema_b.module if ema_b else g_b, "BtoA"),
        }
        # the generator checkpoints hold G_A / G_B (their EMA when on): not stored twice
        suffix = "_ema" if ema_a else ""
        shared = {f"G_A{suffix}": "generator", f"G_B{suffix}": "G_B"}
        return save_snapshot(ctx, step, gens, resume_state, hooks.metrics, nets_in_checkpoints=shared)

    # --- phases: the training loop
    hooks = StepHooks(ctx, rt, data, evaluate, snapshot, schedulers, (opt_g, opt_d), metrics=metrics)
    bar = progress_bar(ctx, step, stop_at)
    meter, speed = LossMeter(), Throughput()
    epoch, position = divmod(step, data.steps_per_epoch)
    while step < stop_at:
        data.sampler.set_epoch(epoch, position)
        for batch in data.loader:
            data.tracker.record(batch["skipped"])
            real_a, real_b = rt.to_device(batch["real_a"]), rt.to_device(batch["real_b"])
            losses: dict[str, torch.Tensor] = {}

            # generator update (D frozen)
            set_requires_grad(d_a, False)
            set_requires_grad(d_b, False)
            opt_g.zero_grad(set_to_none=True)
            with rt.autocast():
                fake_b = g_a(real_a)
                rec_a = g_b(fake_b)
                fake_a = g_b(real_b)
                rec_b = g_a(fake_a)
                losses["G_A"] = gan.generator_loss(d_a(fake_b)) * t.lambda_gan
                losses["G_B"] = gan.generator_loss(d_b(fake_a)) * t.lambda_gan
                losses["cycle_A"] = cycle_loss(rec_a.float(), real_a.float()) * t.lambda_cycle
                losses["cycle_B"] = cycle_loss(rec_b.float(), real_b.float()) * t.lambda_cycle
                if lambda_idt > 0:
                    losses["idt_A"] = identity_loss(g_a(real_b).float(), real_b.float()) * lambda_idt
                    losses["idt_B"] = identity_loss(g_b(real_a).float(), real_a.float()) * lambda_idt
                loss_g = sum(losses.values())
            scaler.scale(loss_g).backward()
            allreduce_grads(rt, g_a, g_b)
            scaler.step(opt_g)
            if ema_a is not None:
                ema_a.update(g_a, step)
                ema_b.update(g_b, step)

            # discriminator update (fakes from the history pools)
            set_requires_grad(d_a, True)
            set_requires_grad(d_b, True)
            opt_d.zero_grad(set_to_none=True)
            pooled_b = pool_b.query(fake_b.detach())
            pooled_a = pool_a.query(fake_a.detach())
            with rt.autocast():
                loss_d_a = gan.discriminator_loss(d_a(real_b), d_a(pooled_b))
                loss_d_b = gan.discriminator_loss(d_b(real_a), d_b(pooled_a))
            if t.gan_mode == "wgangp":  # fp32, outside autocast: double backward through D
                loss_d_a = loss_d_a + gradient_penalty(
                    d_a, real_b.float(), pooled_b.float(), weight=t.lambda_gp
                )
                loss_d_b = loss_d_b + gradient_penalty(
                    d_b, real_a.float(), pooled_a.float(), weight=t.lambda_gp
                )
            losses["D_A"], losses["D_B"] = loss_d_a, loss_d_b
            scaler.scale(loss_d_a + loss_d_b).backward()
            allreduce_grads(rt, d_a, d_b)
            scaler.step(opt_d)
            scaler.update()
            step_schedulers(schedulers)
            step += 1
            meter.add(losses)
            speed.add(real_a.shape[0] * rt.world_size)
            bar.update(1)

            if hooks.after_step(step, stop_at, epoch, meter, speed, bar):
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
        other_checkpoints={"G_B": paths["G_B"]},
        step=step,
        total_steps=data.total_steps,
        metrics=metrics,
        skipped_files=data.tracker.count,
        data_summary=data.summary,
        interrupted=interrupted,
        validation_off=hooks.validation_off,
    )
