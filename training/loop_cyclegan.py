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
from .init_from import start_generator
from .losses import GANLoss, cycle_loss, gradient_penalty, identity_loss
from .optim import Optimizers
from .registry import build_discriminator
from .run_context import RunContext, TrainResult
from .run_dir import resume_load_errors, write_run_config
from .runtime import allreduce_grads, set_requires_grad
from .snapshots import load_resume, resume_entries, save_snapshot
from .step_hooks import StepHooks
from .train_data import build_train_data, make_fid


def train_cyclegan(ctx: RunContext, max_steps: int | None = None, resume: bool = False) -> TrainResult:
    """Train G_A, G_B, D_A, D_B in `ctx.run_dir`; returns the G_A checkpoint (and G_B's) and metrics."""
    cfg, rt, t = ctx.cfg, ctx.rt, ctx.cfg.train

    # --- build nets
    # setup_runtime seeded every rank alike and rt.prepare broadcasts rank 0's weights, so all
    # ranks start from the same four networks (gradients are averaged by hand, allreduce_grads);
    # the generators from train.init_from / init_from_b's weights when fine-tuning.
    g_a, g_b = start_generator(ctx, "G_A"), start_generator(ctx, "G_B")
    d_a = rt.prepare(build_discriminator(cfg.discriminator), cfg.discriminator.norm)
    d_b = rt.prepare(build_discriminator(cfg.discriminator), cfg.discriminator.norm)
    # Validation and the checkpoints use the averages: they smooth the adversarial jitter away.
    ema_a = EMA(g_a, t.ema_decay) if t.ema else None
    ema_b = EMA(g_b, t.ema_decay) if t.ema else None
    # History pools (Shrivastava et al.; the paper's remedy for G/D oscillation): D also sees older
    # fakes, so it cannot forget what earlier generators got wrong. Own seeds per rank and per
    # pool: the ranks' pools are different samples of history, and A's draws do not mirror B's.
    pool_a = ImagePool(t.pool_size, seed=t.seed * 1009 + 2 * rt.rank)  # fakes of domain A, for D_B
    pool_b = ImagePool(t.pool_size, seed=t.seed * 1009 + 2 * rt.rank + 1)  # fakes of domain B, for D_A
    gan = GANLoss(t.gan_mode)
    fid = make_fid(ctx)

    # --- load data (crops must be multiples of what the generators' down/up sampling divides by)
    data = build_train_data(ctx, g_a.size_multiple)

    # --- optimisers and schedules: one Adam over both generators and one over both discriminators
    # (junyanz): the cycle loss ties G_A and G_B into one objective, so they take one step together.
    # Schedules span the config's run length, not --max-steps, so a stopped run resumes on course.
    opt = Optimizers.build(
        itertools.chain(g_a.parameters(), g_b.parameters()),
        itertools.chain(d_a.parameters(), d_b.parameters()),
        t,
        data.total_steps,
        rt.device.type,
    )
    # Identity weight is relative to the cycle weight (junyanz: lambda_identity x lambda_A / _B),
    # so retuning lambda_cycle keeps the balance between the two.
    lambda_idt = t.lambda_identity * t.lambda_cycle

    # --- resume
    step, metrics = 0, {}
    if resume:
        with resume_load_errors(ctx.run_dir):
            state, step, metrics = load_resume(ctx, data, opt)
            for name, net in (("G_A", g_a), ("G_B", g_b), ("D_A", d_a), ("D_B", d_b)):
                net.load_state_dict(state["nets"][name])
            if ema_a is not None:
                # Restarting the averages from the raw weights would throw away what they have smoothed.
                if "G_A_ema" not in state["nets"]:
                    raise DataError("train.ema is on but the resume state has no EMA weights")
                ema_a.load_state_dict(state["nets"]["G_A_ema"])
                ema_b.load_state_dict(state["nets"]["G_B_ema"])
            # The pools are part of the run: an empty pool would show D only fresh fakes for a while.
            pool_a.load_state_dict(state["pools"]["A"])
            pool_b.load_state_dict(state["pools"]["B"])
        ckpt.restore_rng_state(state["rng"])  # last: nothing above may draw random numbers
        write_run_config(rt, cfg, ctx.run_dir, step)  # only now: a resume that fails leaves config.json alone
    # --max-steps cuts the run short without changing its schedule (see the optimisers above).
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
        pools = {"A": pool_a.state_dict(), "B": pool_b.state_dict()}
        gens = {
            "generator": ("G_A", ema_a.module if ema_a else g_a, "AtoB"),
            "G_B": ("G_B", ema_b.module if ema_b else g_b, "BtoA"),
        }
        # the generator checkpoints hold G_A / G_B (their EMA when on): not stored twice
        suffix = "_ema" if ema_a else ""
        shared = {f"G_A{suffix}": "generator", f"G_B{suffix}": "G_B"}
        resume_state = resume_entries(step, data, nets, opt, hooks.metrics, pools=pools)
        return save_snapshot(ctx, step, gens, resume_state, hooks.metrics, nets_in_checkpoints=shared)

    # --- phases: the training loop
    hooks = StepHooks(ctx, data, evaluate, snapshot, opt, step=step, stop_at=stop_at, metrics=metrics)
    for batch in hooks.batches():
        real_a, real_b = rt.to_device(batch["real_a"]), rt.to_device(batch["real_b"])
        losses: dict[str, torch.Tensor] = {}

        # generator update first (junyanz order): its fakes then feed the D update below
        # Frozen Ds: G's backward computes no gradients for their weights (D steps separately).
        set_requires_grad(d_a, False)
        set_requires_grad(d_b, False)
        with rt.autocast():
            fake_b = g_a(real_a)
            rec_a = g_b(fake_b)  # A -> B -> A: the cycle that stands in for the missing pairs
            fake_a = g_b(real_b)
            rec_b = g_a(fake_a)
            losses["G_A"] = gan.generator_loss(d_a(fake_b)) * t.lambda_gan
            losses["G_B"] = gan.generator_loss(d_b(fake_a)) * t.lambda_gan
            # fp32 whatever autocast's op lists say (they differ between CUDA and CPU): the cycle
            # L1 is a mean over every pixel, which reduced precision rounds late-training errors out of.
            losses["cycle_A"] = cycle_loss(rec_a.float(), real_a.float()) * t.lambda_cycle
            losses["cycle_B"] = cycle_loss(rec_b.float(), real_b.float()) * t.lambda_cycle
            if lambda_idt > 0:
                # A real B image through G_A should come back unchanged: keeps colours and tint
                # where nothing needs translating (the paper's photo <-> painting setting).
                losses["idt_A"] = identity_loss(g_a(real_b).float(), real_b.float()) * lambda_idt
                losses["idt_B"] = identity_loss(g_b(real_a).float(), real_a.float()) * lambda_idt
            loss_g = sum(losses.values())
        # One backward through the sum: both generators share the graph of the cycle terms.
        opt.scaler.scale(loss_g).backward()
        # DDP by hand: average before the step, so every rank applies the same update; an inf on
        # one rank becomes inf everywhere, so the scaler skips the step on all ranks alike.
        allreduce_grads(rt, g_a, g_b)
        opt.step(opt.g)
        # After the optimiser step, from the averaged weights: every rank's EMA stays identical.
        if ema_a is not None:
            ema_a.update(g_a, step)
            ema_b.update(g_b, step)

        # discriminator update (fakes from the history pools)
        set_requires_grad(d_a, True)
        set_requires_grad(d_b, True)
        # detach: D's loss must not reach the generators, which have already stepped.
        pooled_b = pool_b.query(fake_b.detach())
        pooled_a = pool_a.query(fake_a.detach())
        with rt.autocast():
            loss_d_a = gan.discriminator_loss(d_a(real_b), d_a(pooled_b))
            loss_d_b = gan.discriminator_loss(d_b(real_a), d_b(pooled_a))
        if t.gan_mode == "wgangp":
            # fp32 and outside autocast: the penalty differentiates D's input gradient (a double
            # backward), whose norm loses too much precision, or overflows, in fp16.
            loss_d_a = loss_d_a + gradient_penalty(d_a, real_b.float(), pooled_b.float(), weight=t.lambda_gp)
            loss_d_b = loss_d_b + gradient_penalty(d_b, real_a.float(), pooled_a.float(), weight=t.lambda_gp)
        losses["D_A"], losses["D_B"] = loss_d_a, loss_d_b
        # D_A and D_B share no weights: one backward of the sum is two independent updates.
        opt.scaler.scale(loss_d_a + loss_d_b).backward()
        allreduce_grads(rt, d_a, d_b)
        opt.step(opt.d)
        # One scale update per step, after both optimisers (GradScaler's rule for several
        # optimisers); the schedules then advance: the learning rate is a function of the step.
        opt.end_step()
        step += 1
        # Losses stay tensors here: the meter syncs with the device once per log line, not per step.
        hooks.end_step(step, losses, images=real_a.shape[0])

    # --- final evaluation and snapshot
    return hooks.finish("G_B")
