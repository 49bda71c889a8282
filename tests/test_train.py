"""Training CLI and loop on the tiny config: runs end to end, resumes exactly."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from edgegen.errors import UserError
from edgegen.model.checkpoint import load_checkpoint
from edgegen.model.config import load_config
from edgegen.model.train import Run, train_stage


def _weights(path: Path) -> dict[str, torch.Tensor]:
    ck = load_checkpoint(path)
    return {f"{g}.{m}.{k}": v for g, states in (("model", ck.model), ("ema", ck.ema)) for m, sd in states.items() for k, v in sd.items()}


def _assert_same(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def tiny() -> tuple:
    return load_config("tiny")


def _run(out: Path, stage: str, cfg_tcfg: tuple, steps: int, resume: bool = False) -> Path:
    cfg, tcfg = cfg_tcfg
    return train_stage(stage, cfg, tcfg, Run(out=out, steps=steps, resume=resume, progress=False))


def _teacher_resumes_exactly(tmp_path: Path, cfg, tcfg, vae: Path) -> None:
    """4 teacher steps in one run (<tmp>/a) equal 2 + 2 resumed (<tmp>/b)."""
    full = train_stage("teacher", cfg, tcfg, Run(out=tmp_path / "a", steps=4, vae=vae, progress=False))
    train_stage("teacher", cfg, tcfg, Run(out=tmp_path / "b", steps=2, vae=vae, progress=False))
    split = train_stage("teacher", cfg, tcfg, Run(out=tmp_path / "b", steps=4, vae=vae, resume=True, progress=False))
    _assert_same(full, split)


def test_vae_resume_is_exact(tmp_path: Path, tiny: tuple) -> None:
    full = _run(tmp_path / "a", "vae", tiny, 4)
    _run(tmp_path / "b", "vae", tiny, 2)
    split = _run(tmp_path / "b", "vae", tiny, 4, resume=True)
    _assert_same(full, split)
    ck = load_checkpoint(full)
    assert ck.kind == "vae" and ck.step == 4
    assert len(ck.config.latent_mean) == ck.config.latent_channels
    assert (tmp_path / "a" / "vae" / "log.jsonl").exists()


def test_cli_train_vae(tmp_path: Path) -> None:
    from edgegen.cli import main

    assert main(["train", "vae", "--config", "tiny", "--out", str(tmp_path), "--steps", "2", "--no-progress"]) == 0
    assert (tmp_path / "vae" / "last.safetensors").exists()
    assert main(["train", "vae", "--config", "nope", "--out", str(tmp_path)]) == 2


def test_teacher_resume_student_and_sampling(tmp_path: Path, tiny: tuple) -> None:
    cfg, tcfg = tiny
    vae = _run(tmp_path / "v", "vae", tiny, 2)
    _teacher_resumes_exactly(tmp_path, cfg, tcfg, vae)
    assert (tmp_path / "a" / "latents.npz").exists()

    student = train_stage("student", cfg, tcfg, Run(out=tmp_path / "a", steps=2, progress=False))
    ck = load_checkpoint(student)
    assert ck.kind == "student" and set(ck.model) == {"vae", "text", "dit"}
    assert len(list((tmp_path / "a" / "student" / "pairs").glob("*/train_*.npz"))) == 1
    # another guidance scale rolls the teacher out again instead of reusing the cached pairs
    cfg2 = replace(cfg, guidance=cfg.guidance + 1.0)
    train_stage("student", cfg2, tcfg, Run(out=tmp_path / "a", steps=1, progress=False, force=True))
    assert len(list((tmp_path / "a" / "student" / "pairs").glob("*/train_*.npz"))) == 2
    _student_learns_first_chunks_harder(tmp_path, cfg, tcfg)
    _student_can_be_deeper_than_its_teacher(tmp_path, cfg, tcfg)
    _student_matches_the_teacher_s_first_chunks(tmp_path, cfg, tcfg, student)

    from edgegen.model.pipeline import generate_video, load_model

    model = load_model(student)
    video = generate_video(model, "a red circle moving right", seed=3, frames=6)
    assert video.shape == (6, cfg.height, cfg.width, 3) and video.dtype.name == "uint8"
    again = generate_video(model, "a red circle moving right", seed=3, frames=6)
    assert (video == again).all()


def _student_learns_first_chunks_harder(tmp_path: Path, cfg, tcfg) -> None:
    """First-chunk pairs (one-chunk teacher rollouts, their own shards) join each student step, the loss
    weighs objects, and the gap is reported for the first chunk too."""
    import json

    import numpy as np

    tcfg = replace(tcfg, distill_first_pairs=3, distill_first_batch=2, distill_fg_weight=2.0)
    student = train_stage("student", cfg, tcfg, Run(out=tmp_path / "a", steps=2, progress=False, force=True))
    shards = list((tmp_path / "a" / "student" / "pairs").glob("*/train-1chunk_*.npz"))
    assert len(shards) == 1
    with np.load(shards[0]) as f:
        assert f["x0"].shape[:2] == (3, 1) and f["noise"].shape == f["x0"].shape and len(f["tokens"]) == 3
    rows = [json.loads(line) for line in (tmp_path / "a" / "student" / "log.jsonl").read_text().splitlines()]
    assert any("loss_first" in r for r in rows)
    assert {f"first_{s}step" for s in cfg.student_steps} <= set(rows[-1]), rows[-1]
    assert load_checkpoint(student).kind == "student"
    with pytest.raises(UserError, match="distill_first_batch"):
        from edgegen.model.config import validate

        validate(cfg, replace(tcfg, distill_first_batch=0))


def _student_matches_the_teacher_s_first_chunks(tmp_path: Path, cfg, tcfg, init: Path) -> None:
    """DMD on first chunks: the fake score trains beside the student, is checkpointed (exact resume) and
    dropped when shipping; --init starts the student from a trained student's weights."""
    import json

    import numpy as np

    from edgegen.model.checkpoint import ship_checkpoint
    from edgegen.model.distill import FAKE

    tcfg = replace(tcfg, distill_dmd_batch=2, distill_dmd_weight=0.5)
    full = train_stage("student", cfg, tcfg, Run(out=tmp_path / "a", steps=3, progress=False, force=True))
    ck = load_checkpoint(full)
    assert set(ck.model) == set(ck.ema) == {"vae", "text", "dit", FAKE} and "DMD" in ck.extra["method"]
    assert {g["lr_scale"] for g in ck.optimizer["param_groups"]} == {1.0, tcfg.distill_fake_lr_scale}  # the fake's own rate
    rows = [json.loads(line) for line in (tmp_path / "a" / "student" / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss_dmd"]) and np.isfinite(r["loss_fake"]) for r in rows if "loss_dmd" in r)
    assert any("loss_dmd" in r for r in rows)
    teacher_fake = load_checkpoint(tmp_path / "a" / "teacher" / "last.safetensors").weights()["dit"]
    assert any(not torch.equal(v, teacher_fake[k]) for k, v in ck.model[FAKE].items())  # the fake score trained
    kept = tmp_path / "full.safetensors"
    kept.write_bytes(full.read_bytes())
    train_stage("student", cfg, tcfg, Run(out=tmp_path / "a", steps=2, progress=False, force=True))
    _assert_same(kept, train_stage("student", cfg, tcfg, Run(out=tmp_path / "a", steps=3, resume=True, progress=False)))
    assert set(load_checkpoint(ship_checkpoint(kept, tmp_path / "ship.safetensors")).model) == {"vae", "text", "dit"}
    # --init: one step from a trained student stays next to it, not next to the teacher
    started = load_checkpoint(train_stage("student", cfg, replace(tcfg, distill_dmd_batch=0),
                                          Run(out=tmp_path / "a", steps=1, progress=False, force=True, init=init))).model["dit"]
    before, teacher = load_checkpoint(init).weights()["dit"], load_checkpoint(tmp_path / "a" / "teacher" / "last.safetensors").weights()["dit"]
    def gap(a: dict, b: dict) -> float:
        return sum(float((a[k].float() - b[k].float()).square().sum()) for k in a)
    assert gap(started, before) < gap(started, teacher)


def _student_can_be_deeper_than_its_teacher(tmp_path: Path, cfg, tcfg) -> None:
    """A config with a deeper DiT distils into a grown copy of the teacher's (the teacher's blocks spread
    over the new depth, as `--init` grows a teacher); the pairs cache is the same teacher's."""
    from edgegen.model.pipeline import generate_video, load_model

    deeper = replace(cfg, dit_depth=cfg.dit_depth + 2)
    student = train_stage("student", deeper, tcfg, Run(out=tmp_path / "a", steps=1, progress=False, force=True))
    ck = load_checkpoint(student)
    assert ck.config.dit_depth == deeper.dit_depth
    assert {k.split(".")[1] for k in ck.model["dit"] if k.startswith("blocks.")} == {str(i) for i in range(deeper.dit_depth)}
    assert len(list((tmp_path / "a" / "student" / "pairs").glob("*/train_*.npz"))) == 2  # no new rollouts
    video = generate_video(load_model(student), "a red circle moving right", seed=3, frames=6)
    assert video.shape == (6, cfg.height, cfg.width, 3)


def test_teacher_warm_starts_from_a_compact_checkpoint(tmp_path: Path, tiny: tuple) -> None:
    """`--init`: a shipped-form (fp16, EMA-only) teacher seeds a new run with a fresh optimizer."""
    from edgegen.model.checkpoint import ship_checkpoint
    from edgegen.model.train_dit import warm_start

    cfg, tcfg = tiny
    vae = _run(tmp_path / "v", "vae", tiny, 2)
    teacher = train_stage("teacher", cfg, tcfg, Run(out=tmp_path / "a", steps=2, vae=vae, progress=False))
    compact = ship_checkpoint(teacher, tmp_path / "teacher.fp16.safetensors")
    assert load_checkpoint(compact).optimizer is None
    again = train_stage("teacher", cfg, tcfg, Run(out=tmp_path / "b", steps=1, init=compact, progress=False))
    assert load_checkpoint(again).step == 1  # a new run from step 0, not a resume
    from edgegen.model.dit import DiT

    ck = load_checkpoint(compact)
    dit = DiT(ck.config)
    warm_start(compact, {"dit": dit})
    for name, value in ck.weights()["dit"].items():
        assert torch.equal(dit.state_dict()[name], value.float()), name
    with pytest.raises(UserError, match="--init"):
        warm_start(vae, {"text": torch.nn.Linear(1, 1)})


def test_a_warm_start_can_grow_the_dit_deeper_without_changing_its_function(tiny: tuple) -> None:
    """`--init` into a deeper config: the old blocks spread over the new depth, the fresh ones start
    as identities (adaLN-zero gates), so the grown DiT gives the old one's velocity exactly."""
    from dataclasses import replace

    from edgegen.model.dit import DiT
    from edgegen.model.train_dit import grow_blocks

    cfg, _ = tiny
    torch.manual_seed(0)
    old = DiT(cfg)
    with torch.no_grad():  # trained-looking weights: the zero-initialised gates and output too
        for value in old.parameters():
            value.add_(torch.randn_like(value) * 0.1)
    deeper = DiT(replace(cfg, dit_depth=cfg.dit_depth + 3))
    deeper.load_state_dict(grow_blocks(old.state_dict(), deeper))
    B, T, C, (h, w), D = 2, 3, cfg.latent_channels, cfg.latent_size, cfg.dit_width
    x, ctx = torch.randn(B, T, C, h, w), torch.randn(B, T, C, h, w)
    t, text, pooled = torch.rand(B, T), torch.randn(B, cfg.max_len, D), torch.randn(B, D)
    want = old.forward_train(x, t, ctx, text, pooled)
    assert want.abs().mean() > 0.01
    torch.testing.assert_close(deeper.forward_train(x, t, ctx, text, pooled), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(UserError, match="deeper, not shallower"):
        grow_blocks(deeper.state_dict(), old)


def test_late_clips_continue_the_stream(tiny: tuple) -> None:
    """A late clip is the same frames as the stream from its start, and its latents are the stream's
    latents from that chunk on (the encoder's state is the frame before the clip)."""
    import numpy as np

    from edgegen.model.data import render_clips
    from edgegen.model.vae import VAE
    from edgegen.world import render, render_range, sample_scene

    cfg, _ = tiny
    scene = sample_scene(np.random.default_rng(0))
    whole = render(scene, 5, 24, cfg.height)
    assert np.array_equal(render_range(scene, 5, 7, 24, cfg.height), whole[7:])

    clips, texts = render_clips(np.random.default_rng(1), 3, cfg, 8, captions=1, start_max=12)
    assert clips.shape == (3, 9, cfg.height, cfg.width, 3) and len(texts) == 3
    first, _ = render_clips(np.random.default_rng(1), 3, cfg, 8, captions=1)
    assert first.shape[1] == 8 and not np.array_equal(first, clips[:, 1:])  # later in the same scenes

    torch.manual_seed(0)
    vae = VAE(cfg).eval()
    x = torch.from_numpy(whole).float()[None] / 255.0
    k = 2  # the clip starts at chunk 2 of the stream
    f = cfg.chunk_frames
    with torch.no_grad():
        stream = vae.encode_clip(x[:, : 5 * f])
        late = vae.encode_clip(x[:, k * f : 5 * f], first_prev=x[:, k * f - 1])
    torch.testing.assert_close(late, stream[:, k:])


def test_own_estimate_and_context_only_chunks(tiny: tuple) -> None:
    """At t = 0 the model's own estimate is the clip itself; chunks before `first` carry no loss."""
    from dataclasses import replace

    from edgegen.model.dit import DiT
    from edgegen.model.text import TextEncoder
    from edgegen.model.train_dit import flow_loss, own_estimate

    cfg, tcfg = tiny
    cfg = replace(cfg, vocab_size=100)
    torch.manual_seed(0)
    text, dit = TextEncoder(cfg), DiT(cfg)
    for p in dit.parameters():  # adaLN-zero starts at zero output: give the model a real function
        torch.nn.init.normal_(p, std=0.05)
    h, w = cfg.latent_size
    x0 = torch.randn(2, 3, cfg.latent_channels, h, w)
    tokens = torch.randint(1, 100, (2, cfg.max_len))
    txt, pooled = text(tokens)
    same = own_estimate(dit, x0, txt, pooled, replace(tcfg, self_ctx_tmin=0.0, self_ctx_tmax=0.0))
    torch.testing.assert_close(same, x0)
    rough = own_estimate(dit, x0, txt, pooled, replace(tcfg, self_ctx_tmin=1.0, self_ctx_tmax=1.0))
    assert not torch.allclose(rough, x0)

    own = replace(tcfg, self_ctx_prob=1.0, ctx_noise_prob=0.0)
    x0.requires_grad_(True)
    loss = flow_loss(text, dit, x0, tokens, own, t=torch.full((2, 3), 0.5), first=2)
    (grad,) = torch.autograd.grad(loss, x0)
    assert grad[:, 2].abs().sum() > 0  # the trained chunk's target is real: gradient through x0
    assert grad[:, :2].abs().sum() == 0  # context chunks: no loss, and their context is the model's own estimate


def test_teacher_trains_with_late_clips_and_own_context(tmp_path: Path, tiny: tuple) -> None:
    from dataclasses import replace

    cfg, tcfg = tiny
    tcfg = replace(tcfg, self_ctx_prob=0.5, late_clips=8, late_start_max=40, late_batch=2)
    vae = _run(tmp_path / "v", "vae", tiny, 2)
    _teacher_resumes_exactly(tmp_path, cfg, tcfg, vae)
    assert (tmp_path / "a" / "latents_late.npz").exists()
    logged = (tmp_path / "a" / "teacher" / "log.jsonl").read_text()
    assert '"loss_late"' in logged
    with pytest.raises(UserError, match="late_start_max"):
        train_stage("teacher", cfg, replace(tcfg, late_start_max=1), Run(out=tmp_path / "c", steps=1, vae=vae, progress=False))


def test_first_chunk_clips_train_the_stream_s_first_chunk(tmp_path: Path, tiny: tuple) -> None:
    """A clip cut to its first chunk gets exactly the prediction chunk 0 gets in the whole clip (it
    sees only the text either way), so `first_batch` trains the stream's first chunk; runs resume exactly."""
    from dataclasses import replace

    from edgegen.model.dit import DiT
    from edgegen.model.text import TextEncoder

    cfg, tcfg = tiny
    torch.manual_seed(0)
    text, dit = TextEncoder(replace(cfg, vocab_size=100)), DiT(cfg)
    for p in dit.parameters():  # adaLN-zero starts at zero output: give the model a real function
        torch.nn.init.normal_(p, std=0.05)
    h, w = cfg.latent_size
    x0, xt = torch.randn(2, 3, cfg.latent_channels, h, w), torch.randn(2, 3, cfg.latent_channels, h, w)
    t = torch.rand(2, 3)
    txt, pooled = text(torch.randint(1, 100, (2, cfg.max_len)))
    whole = dit.forward_train(xt, t, x0, txt, pooled)
    torch.testing.assert_close(dit.forward_train(xt[:, :1], t[:, :1], x0[:, :1], txt, pooled), whole[:, :1])
    assert not torch.allclose(whole[:, 1], dit.forward_train(xt[:, 1:2], t[:, 1:2], x0[:, 1:2], txt, pooled)[:, 0])  # later chunks see context

    tcfg = replace(tcfg, first_batch=3)
    vae = _run(tmp_path / "v", "vae", tiny, 2)
    _teacher_resumes_exactly(tmp_path, cfg, tcfg, vae)
    assert '"loss_first"' in (tmp_path / "a" / "teacher" / "log.jsonl").read_text()


def test_faded_context_keeps_the_background_and_dims_the_rest(tiny: tuple) -> None:
    from dataclasses import replace

    from edgegen.model.train_dit import context, fade

    _, tcfg = tiny
    torch.manual_seed(0)
    x = torch.randn(4, 3, 2, 8, 8)
    bg = x.flatten(3).median(dim=3).values[..., None, None]
    out = fade(x, replace(tcfg, ctx_fade_prob=1.0, ctx_fade_min=0.5))
    d, e = (x - bg).flatten(2), (out - bg).flatten(2)  # (B, T, C*h*w)
    a = (d * e).sum(-1) / (d * d).sum(-1)  # least-squares factor of each chunk
    torch.testing.assert_close(e, a[..., None] * d)  # one factor per chunk ...
    assert a.min() >= 0.5 - 1e-5 and a.max() <= 1.0 + 1e-5 and a.min() < 0.9  # ... in [0.5, 1]
    torch.testing.assert_close(fade(x, replace(tcfg, ctx_fade_prob=1.0, ctx_fade_min=1.0)), x)
    plain = replace(tcfg, ctx_noise_prob=0.0, ctx_fade_prob=0.0)
    ctx, label = context(x, plain)
    torch.testing.assert_close(ctx, x)  # both augmentations off: the real clip ...
    assert torch.equal(label, torch.zeros(4))  # ... committed at t = 0


def test_labelled_context_noise_tells_the_commit_pass_its_level(tiny: tuple) -> None:
    """With ctx_noise_label each clip's context is (1 - s) x + s n and its commit pass runs at t = s;
    a per-clip label computes what each clip alone computes at its own level."""
    from dataclasses import replace

    from edgegen.model.dit import DiT
    from edgegen.model.train_dit import context

    cfg, tcfg = tiny
    torch.manual_seed(0)
    x = torch.randn(8, 3, cfg.latent_channels, *cfg.latent_size)
    labelled = replace(tcfg, ctx_noise_prob=1.0, ctx_noise_max=0.5, ctx_noise_label=True, ctx_fade_prob=0.0)
    ctx, s = context(x, labelled)
    assert s.shape == (8,) and s.min() > 0.0 and s.max() <= 0.5 and s.std() > 0.05
    n = (ctx - (1 - s.view(-1, 1, 1, 1, 1)) * x) / s.view(-1, 1, 1, 1, 1)  # the noise each clip got
    assert 0.8 < n.std() < 1.2 and abs(n.mean()) < 0.1
    _, unlabelled = context(x, replace(labelled, ctx_noise_label=False))
    assert torch.equal(unlabelled, torch.zeros(8))  # noisy, but still committed at t = 0

    dit = DiT(replace(cfg, vocab_size=100))
    for p in dit.parameters():
        torch.nn.init.normal_(p, std=0.2)
    xt, t = torch.randn_like(x), torch.rand(8, 3)
    text, pooled = torch.randn(8, cfg.max_len, cfg.dit_width), torch.randn(8, cfg.dit_width)
    with torch.no_grad():
        together = dit.forward_train(xt, t, ctx, text, pooled, s)
        alone = torch.cat([dit.forward_train(xt[i : i + 1], t[i : i + 1], ctx[i : i + 1], text[i : i + 1], pooled[i : i + 1],
                                             float(s[i])) for i in range(8)])
        at_zero = dit.forward_train(xt, t, ctx, text, pooled, 0.0)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)
    assert (together[:, 1:] - at_zero[:, 1:]).abs().mean() > 1e-3  # the label reaches the chunks with context
    torch.testing.assert_close(together[:, 0], at_zero[:, 0], atol=1e-5, rtol=1e-4)  # the first chunk has none


def test_heldout_loss_ignores_every_context_augmentation(tiny: tuple) -> None:
    """The held-out loss is comparable across configs: real context, whatever the training options."""
    from dataclasses import replace

    import numpy as np

    from edgegen.model.data import LatentPool
    from edgegen.model.dit import DiT
    from edgegen.model.text import TextEncoder
    from edgegen.model.train_dit import heldout_loss

    cfg, tcfg = tiny
    cfg = replace(cfg, vocab_size=100)
    torch.manual_seed(0)
    text, dit = TextEncoder(cfg), DiT(cfg)
    for p in dit.parameters():
        torch.nn.init.normal_(p, std=0.05)
    h, w = cfg.latent_size
    rng = np.random.default_rng(0)
    val = LatentPool(rng.standard_normal((3, 3, cfg.latent_channels, h, w)).astype(np.float16),
                     rng.integers(1, 100, (3, 1, cfg.max_len)))
    plain = heldout_loss(text, dit, val, replace(tcfg, ctx_noise_prob=0.0), "cpu")
    augmented = replace(tcfg, ctx_noise_prob=1.0, ctx_fade_prob=1.0, ctx_fade_min=0.1, self_ctx_prob=1.0)
    assert heldout_loss(text, dit, val, augmented, "cpu") == plain


def test_object_weights_mark_objects_and_their_edges_and_weigh_the_loss(tiny: tuple) -> None:
    """fg_weight weighs positions far from the chunk's background, grown by one position; the loss is the
    weighted mean, the plain MSE when every weight is equal, and the held-out metric stays unweighted."""
    from dataclasses import replace

    import numpy as np

    from edgegen.model.data import LatentPool
    from edgegen.model.dit import DiT
    from edgegen.model.text import TextEncoder
    from edgegen.model.train_dit import flow_loss, heldout_loss, object_weights, velocity_loss

    cfg, tcfg = tiny
    x = torch.full((2, 3, 4, 8, 8), 0.5)
    x[0, 1, :, 2:4, 5:7] = 3.0  # an object: 2.5 from the background in each of 4 channels (L2 5.0)
    x[1, 2, 0, 6, 1] = 2.0  # a faint speck: 1.5 in one channel, under the threshold
    w = object_weights(x, 4.0, 3.0)
    assert w.shape == (2, 3, 1, 8, 8)
    expect = torch.ones(2, 3, 1, 8, 8)
    expect[0, 1, 0, 1:5, 4:8] = 5.0  # the object and a ring of one position around it
    torch.testing.assert_close(w, expect)

    v, target = torch.randn(2, 3, 4, 8, 8), torch.randn(2, 3, 4, 8, 8)
    torch.testing.assert_close(velocity_loss(v, target, torch.full_like(w, 3.0)), velocity_loss(v, target, None))
    err = (v - target).square()
    inside = err[0, 1, :, 1:5, 4:8].sum()
    weighted = (err.sum() + 4.0 * inside) / (4 * w.sum())
    torch.testing.assert_close(velocity_loss(v, target, w), weighted)

    cfg = replace(cfg, vocab_size=100)
    torch.manual_seed(0)
    text, dit = TextEncoder(cfg), DiT(cfg)
    h, wd = cfg.latent_size
    rng = np.random.default_rng(0)
    val = LatentPool((4 * rng.standard_normal((3, 3, cfg.latent_channels, h, wd))).astype(np.float16),
                     rng.integers(1, 100, (3, 1, cfg.max_len)))
    plain = replace(tcfg, ctx_noise_prob=0.0, ctx_fade_prob=0.0, self_ctx_prob=0.0)
    assert heldout_loss(text, dit, val, replace(plain, fg_weight=9.0), "cpu") == heldout_loss(text, dit, val, plain, "cpu")
    x0 = torch.from_numpy(val.latents.astype(np.float32))
    tokens = torch.from_numpy(val.tokens[:, 0])
    noise, t = torch.randn_like(x0), torch.rand(x0.shape[:2])
    with torch.no_grad():  # the training loss is the weighted one
        losses = [float(flow_loss(text, dit, x0, tokens, replace(plain, fg_weight=f), noise, t)) for f in (0.0, 9.0)]
        txt, pooled = text(tokens)
        v = dit.forward_train((1 - t.view(3, 3, 1, 1, 1)) * x0 + t.view(3, 3, 1, 1, 1) * noise, t, x0, txt, pooled)
    expected = velocity_loss(v, noise - x0, object_weights(x0, 9.0, plain.fg_threshold))
    assert losses[0] != losses[1]
    assert losses[1] == pytest.approx(float(expected), rel=1e-5)


def test_vae_decoder_fine_tune_keeps_the_encoder_and_swaps_into_a_model(tmp_path: Path, tiny: tuple, torch_one_thread) -> None:
    """vae_freeze_encoder + --init trains the decoder only (the DiT's latent space is untouched), the
    motion term is logged, and `with_vae_decoder` puts the new decoder into a model checkpoint, refusing
    a VAE whose encoder differs."""
    import json
    from dataclasses import replace

    from edgegen.errors import UserError
    from edgegen.model.checkpoint import load_checkpoint, with_vae_decoder

    cfg, tcfg = tiny
    base = _run(tmp_path / "a", "vae", tiny, steps=2)
    tuned_cfg = replace(tcfg, vae_motion=1.0, vae_freeze_encoder=True)
    tuned = train_stage("vae", cfg, tuned_cfg, Run(out=tmp_path / "b", steps=3, progress=False, init=base))
    a, b = load_checkpoint(base).weights()["vae"], load_checkpoint(tuned).weights()["vae"]
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("encoder."))
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("decoder."))
    logs = [json.loads(line) for line in (tmp_path / "b" / "vae" / "log.jsonl").read_text().splitlines()]
    assert all(r["motion"] > 0 for r in logs if "loss" in r)

    swapped = load_checkpoint(with_vae_decoder(base, tuned, tmp_path / "swapped.safetensors"))
    c = swapped.weights()["vae"]
    for k in a:
        torch.testing.assert_close(c[k].float(), (b if k.startswith("decoder.") else a)[k].half().float())
    # the fp16 copy and the fp32 run it came from hold one encoder (compared at the saved precision)
    assert any(not torch.equal(c[k].float(), a[k].float()) for k in a if k.startswith("encoder."))
    with_vae_decoder(tmp_path / "swapped.safetensors", tuned, tmp_path / "from_half.safetensors")
    other = _run(tmp_path / "c", "vae", (cfg, replace(tcfg, seed=1)), steps=1)
    with pytest.raises(UserError, match="another encoder"):
        with_vae_decoder(base, other, tmp_path / "refused.safetensors")
    assert not (tmp_path / "refused.safetensors").exists()
    with pytest.raises(UserError, match="needs --init"):
        train_stage("vae", cfg, tuned_cfg, Run(out=tmp_path / "d", steps=1, progress=False))


# ---------------------------------------------------------------------------------------------
# bad input to `edgegen train`: one line, exit 2, nothing written


def _train_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    """(exit code, stderr) of `edgegen train ...` through the real entry point."""
    from edgegen.cli import main

    capsys.readouterr()
    code = main(["train", *args, "--steps", "1", "--no-progress"])
    return code, capsys.readouterr().err


def _one_line_error(code: int, err: str, *words: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("edgegen:")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("edgegen: error: "), err
    assert "internal error" not in err and "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, lines[0])


def _config_file(path: Path, edit) -> Path:
    import json

    from edgegen.model.config import config_path

    data = json.loads(config_path("tiny").read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


def test_cli_train_refuses_an_out_that_is_a_file_or_not_writable(tmp_path: Path, capsys, monkeypatch) -> None:
    afile = tmp_path / "afile"
    afile.write_text("mine")
    for out in (afile, afile / "sub"):
        _one_line_error(*_train_cli(capsys, "vae", "--config", "tiny", "--out", str(out)), str(afile), "not a folder")
    assert afile.read_text() == "mine"
    locked = tmp_path / "locked"
    locked.mkdir()
    import edgegen.model.train as train_module

    monkeypatch.setattr(train_module.os, "access", lambda path, mode: Path(path) != locked)  # root ignores chmod
    _one_line_error(*_train_cli(capsys, "vae", "--config", "tiny", "--out", str(locked / "run")), str(locked), "permission denied")
    assert list(locked.iterdir()) == []
    monkeypatch.undo()
    from edgegen.errors import UserError
    from edgegen.model.train import make_dir

    monkeypatch.setattr(Path, "mkdir", lambda *a, **k: (_ for _ in ()).throw(PermissionError(13, "Permission denied")))
    with pytest.raises(UserError, match="you can write to"):
        make_dir(tmp_path / "x")


def test_cli_train_says_where_a_config_is_not_valid_json(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": {\n  "height": 32,,\n}}')
    _one_line_error(*_train_cli(capsys, "vae", "--config", str(bad), "--out", str(tmp_path / "run")), str(bad), "not valid JSON at line 2:16")
    _one_line_error(*_train_cli(capsys, "vae", "--config", str(tmp_path / "missing.json")), "does not exist")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("section", "key", "value", "words"), [
    ("model", "width", 48, ["model.height and model.width must be equal"]),
    ("model", "height", 0, ["model.height", ">= 8", "not 0"]),
    ("model", "dit_depth", -1, ["model.dit_depth", ">= 1"]),
    ("model", "dit_depth", 2.5, ["model.dit_depth", "whole number"]),
    ("model", "text_heads", True, ["model.text_heads", "whole number"]),
    ("model", "vae_enc_channels", [8, 16], ["model.vae_enc_channels", "a list of 3"]),
    ("model", "patch", 3, ["model.height", "4 * model.patch"]),
    ("train", "t_sampling", "gaussian", ["train.t_sampling", "'logit_normal', 'uniform'"]),
    ("train", "text_dropout", 1.5, ["train.text_dropout", "<= 1"]),
    ("train", "vae", {"lr": "fast"}, ["train.vae.lr", "a number > 0", '"fast"']),
    ("train", "teacher", [1], ["train.teacher must be a JSON object"]),
])
def test_config_values_are_checked_before_any_folder_is_made(tmp_path: Path, capsys, section, key, value, words) -> None:
    path = _config_file(tmp_path / "bad.json", lambda d: d[section].__setitem__(key, value))
    with pytest.raises(UserError) as exc:
        load_config(str(path))
    for word in words:
        assert word in str(exc.value)
    out = tmp_path / "run"
    _one_line_error(*_train_cli(capsys, "vae", "--config", str(path), "--out", str(out)), *words)
    assert not out.exists()


def test_unknown_config_keys_are_refused_with_the_closest_known_key(tmp_path: Path) -> None:
    cases = [(lambda d: d.__setitem__("modle", {}), "'modle' (did you mean 'model'?)"),
             (lambda d: d["model"].__setitem__("dit_dpeth", 4), "'model.dit_dpeth' (did you mean 'dit_depth'?)"),
             (lambda d: d["train"].__setitem__("sede", 1), "'train.sede' (did you mean 'seed'?)"),
             (lambda d: d["train"]["teacher"].__setitem__("lrr", 1), "'train.teacher.lrr' (did you mean 'lr'?)")]
    for edit, words in cases:
        with pytest.raises(UserError, match="unknown") as exc:
            load_config(str(_config_file(tmp_path / "c.json", edit)))
        assert words in str(exc.value) and "\n" not in str(exc.value)


def _shipped_configs() -> list[str]:
    from edgegen.model.config import CONFIG_DIR

    root = Path(__file__).resolve().parent.parent
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json")) + sorted(str(p) for p in (root / "experiments").glob("*.json"))


@pytest.mark.parametrize("name", _shipped_configs())
def test_every_shipped_and_experiment_config_loads(name: str) -> None:
    cfg, tcfg = load_config(name)
    assert cfg.height == cfg.width and tcfg.teacher.steps >= 1


def _fake_checkpoint(path: Path, cfg, kind: str, modules: tuple[str, ...] = ("vae", "text", "dit")) -> Path:
    """A checkpoint of `kind` with fresh weights for `cfg` (no training needed)."""
    from dataclasses import replace

    from edgegen.model.checkpoint import save_checkpoint
    from edgegen.model.dit import DiT
    from edgegen.model.text import TextEncoder
    from edgegen.model.vae import VAE

    cfg = replace(cfg, vocab_size=cfg.vocab_size or 50)
    make = {"vae": VAE, "text": TextEncoder, "dit": DiT}
    return save_checkpoint(path, {m: make[m](cfg) for m in modules}, cfg, 1, kind=kind)


def test_resume_with_another_config_says_so(tmp_path: Path, tiny: tuple) -> None:
    from dataclasses import replace

    cfg, tcfg = tiny
    _run(tmp_path, "vae", tiny, 1)
    wider = replace(cfg, vae_enc_channels=(8, 16, 32))
    with pytest.raises(UserError, match=r"checkpoint in .*vae was made with a different config \(vae_enc_channels.*use another --out or the matching --config"):
        train_stage("vae", wider, tcfg, Run(out=tmp_path, steps=2, resume=True, progress=False))
    _fake_checkpoint(tmp_path / "teacher" / "last.safetensors", cfg, "teacher")
    with pytest.raises(UserError, match=r"different config \(dit_width"):
        train_stage("teacher", replace(cfg, dit_width=64), tcfg, Run(out=tmp_path, steps=2, resume=True, progress=False))
    assert not (tmp_path / "latents.npz").exists()  # refused before any latents were encoded


def test_loading_weights_of_other_shapes_is_one_line(tiny: tuple) -> None:
    """The safety net under every resume: a state dict that does not fit names the tensor, no RuntimeError."""
    from dataclasses import replace

    from edgegen.model.checkpoint import load_weights
    from edgegen.model.vae import VAE

    cfg, _ = tiny
    small, wide = VAE(cfg), VAE(replace(cfg, vae_enc_channels=(8, 16, 32)))
    with pytest.raises(UserError, match=r"made elsewhere \(encoder\..* is \(.*\), the config makes"):
        load_weights(wide, small.state_dict(), "made elsewhere")
    with pytest.raises(UserError, match="no weights"):
        load_weights(wide, None, "made elsewhere")
    load_weights(small, VAE(cfg).state_dict(), "fits")


def test_init_with_another_config_is_one_line_but_a_deeper_dit_still_grows(tmp_path: Path, tiny: tuple) -> None:
    from dataclasses import replace

    from edgegen.model.dit import DiT
    from edgegen.model.train import warm_start_vae
    from edgegen.model.train_dit import warm_start
    from edgegen.model.vae import VAE

    cfg, _ = tiny
    teacher = _fake_checkpoint(tmp_path / "t.safetensors", cfg, "teacher")
    warm_start(teacher, {"dit": DiT(replace(cfg, dit_depth=cfg.dit_depth + 2))})  # supported: grows
    with pytest.raises(UserError, match=r"--init checkpoint .* was made with a different config.*\[dit\]"):
        warm_start(teacher, {"dit": DiT(replace(cfg, dit_width=64))})
    vae = _fake_checkpoint(tmp_path / "v.safetensors", cfg, "vae", ("vae",))
    other = replace(cfg, vae_dec_channels=(16, 16, 16))
    with pytest.raises(UserError, match=r"--init checkpoint .* different VAE config"):
        warm_start_vae(vae, VAE(other), other)


def test_a_second_run_of_a_stage_needs_resume_or_force(tmp_path: Path, capsys, monkeypatch) -> None:
    """Never silently over another run of the same stage; --force starts over, its checkpoint still
    replaced atomically; other stages in the same folder are unaffected (teacher after vae)."""
    import json

    out = str(tmp_path)
    last = tmp_path / "vae" / "last.safetensors"
    assert _train_cli(capsys, "vae", "--config", "tiny", "--out", out)[0] == 0
    before = last.read_bytes()
    _one_line_error(*_train_cli(capsys, "vae", "--config", "tiny", "--out", out),
                    f"{tmp_path / 'vae'} already holds a vae run; pass --resume to continue it or --force to start over")
    assert last.read_bytes() == before
    _one_line_error(*_train_cli(capsys, "vae", "--config", "tiny", "--out", out, "--force", "--resume"), "--resume", "--force")

    import safetensors.torch

    def broken(tensors, filename, metadata=None):  # dies half way through writing the new checkpoint
        Path(filename).write_bytes(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    monkeypatch.setattr("edgegen.model.checkpoint.save_file", broken)
    _one_line_error(*_train_cli(capsys, "vae", "--config", "tiny", "--out", out, "--force"), "no space left to write")
    assert last.read_bytes() == before and not list(last.parent.glob("*.partial"))
    monkeypatch.undo()

    assert _train_cli(capsys, "vae", "--config", "tiny", "--out", out, "--force")[0] == 0
    logged = [json.loads(line) for line in (tmp_path / "vae" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == [1]  # the old run's log went with it
    assert _train_cli(capsys, "teacher", "--config", "tiny", "--out", out)[0] == 0  # another stage: no refusal
    assert (tmp_path / "teacher" / "last.safetensors").exists()


def test_cli_train_without_torch_says_how_to_install_it(tmp_path: Path, capsys, monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    code, err = _train_cli(capsys, "vae", "--config", "tiny", "--out", str(tmp_path / "run"))
    _one_line_error(code, err, "training needs PyTorch", "pip install torch==2.13.0 && pip install 'edgegen[train]'")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv", [["export", "--out", "B"], ["calibrate", "B"]], ids=["export", "calibrate"])
def test_export_and_calibrate_without_torch_say_how_to_install_it(tmp_path: Path, capsys, monkeypatch, argv: list[str]) -> None:
    import sys

    from edgegen.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "torch", None)
    capsys.readouterr()
    code = main(argv)
    _one_line_error(code, capsys.readouterr().err, f"{argv[0]} needs PyTorch", "pip install torch==2.13.0 && pip install 'edgegen[train]'")
    assert not (tmp_path / "B").exists()


def test_calibrate_refuses_an_empty_component_list(tmp_path: Path, capsys) -> None:
    from edgegen.cli import main

    capsys.readouterr()
    code = main(["calibrate", str(tmp_path / "B"), "--components", " , "])
    _one_line_error(code, capsys.readouterr().err, "--components is empty")


def test_a_folder_given_as_a_checkpoint_names_the_files_inside(tmp_path: Path) -> None:
    from edgegen.errors import UserError
    from edgegen.model.checkpoint import load_checkpoint

    (tmp_path / "run" / "teacher").mkdir(parents=True)
    (tmp_path / "run" / "teacher" / "last.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match=r"is a folder; pass the .safetensors file, e.g. .*teacher/last.safetensors"):
        load_checkpoint(tmp_path / "run")


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none here); runs on a lent GPU machine")


@pytest.mark.gpu
@CUDA
def test_every_stage_trains_and_resumes_exactly_on_a_gpu(tmp_path: Path, tiny: tuple) -> None:
    """The GPU path of the training loop: all three stages on cuda (TF32, fused AdamW, teacher rollouts
    on the GPU), a split teacher run equal to an unsplit one (the GPU's RNG is checkpointed too), and a
    student whose rollouts come back to the CPU for sampling."""
    cfg, tcfg = tiny

    def stage(name: str, out: str, steps: int, **kw) -> Path:
        return train_stage(name, cfg, tcfg, Run(out=tmp_path / out, steps=steps, device="cuda", progress=False, **kw))

    vae = stage("vae", "v", 2)
    full = stage("teacher", "a", 4, vae=vae)
    stage("teacher", "b", 2, vae=vae)
    split = stage("teacher", "b", 4, vae=vae, resume=True)
    # equal up to the GPU's atomics (embedding gradients add in any order); another RNG stream moves weights ~lr
    wa, wb = _weights(full), _weights(split)
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], rtol=0, atol=1e-5) for k in wa)
    assert load_checkpoint(full).rng_cuda is not None
    student = stage("student", "a", 2)
    bf16 = train_stage("teacher", cfg, replace(tcfg, autocast="bf16"),
                       Run(out=tmp_path / "c", steps=2, vae=vae, device="cuda", progress=False))
    assert all(torch.isfinite(w).all() for w in _weights(bf16).values())
    from edgegen.model.pipeline import generate_video, load_model

    video = generate_video(load_model(student), "a red circle moving right", seed=3, frames=6)
    assert video.shape == (6, cfg.height, cfg.width, 3)


def test_parallel_rendering_draws_the_same_clips_and_captions(tiny: tuple) -> None:
    """`render_clips` with a process pool: the same clips and captions as rendering in this process."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import numpy as np

    from edgegen.model.data import render_clips

    cfg, _ = tiny
    serial = render_clips(np.random.default_rng(5), 6, cfg, 8, captions=2, start_max=12)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        parallel = render_clips(np.random.default_rng(5), 6, cfg, 8, captions=2, start_max=12, workers=pool)
    assert np.array_equal(serial[0], parallel[0]) and serial[1] == parallel[1]


def test_bf16_autocast_is_for_gpus_a_cpu_run_says_so_and_trains_in_fp32(tmp_path: Path, tiny: tuple, caplog) -> None:
    import logging

    cfg, tcfg = tiny
    plain = _run(tmp_path / "a", "vae", tiny, 2)
    with caplog.at_level(logging.INFO, logger="edgegen.model.train"):
        bf16 = _run(tmp_path / "b", "vae", (cfg, replace(tcfg, autocast="bf16")), 2)
    assert "autocast bf16 applies on a GPU only" in caplog.text
    wa, wb = _weights(plain), _weights(bf16)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def _gpu_sitting(tmp_path: Path, name: str, returncode: int = 0, **env: str):
    """Run tools/gpu_train.sh on the CPU with the tiny config into <tmp>/<name>-run and <tmp>/<name>."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "DEVICE": "cpu", "CONFIG": "tiny", "TEACHER_MIN": "0.03", "STUDENT_MIN": "0.02",
           "PROBE_STEPS": "3", "EVAL_N": "0", "RUN": str(tmp_path / f"{name}-run"), "OUT": str(tmp_path / name),
           "PY": sys.executable, **env}
    done = subprocess.run(["bash", str(root / "tools" / "gpu_train.sh")], cwd=root, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == returncode, done.stderr[-2000:]
    return done


def _log_names(out: Path) -> set[str]:
    import tarfile

    with tarfile.open(out / "logs.tar.gz") as tar:
        return set(tar.getnames())


def test_gpu_sitting_script_runs_end_to_end_on_the_cpu(tmp_path: Path, tiny: tuple) -> None:
    """tools/gpu_train.sh (run on a lent GPU, rarely): probe, sized teacher, student, judge, shipped
    checkpoints and logs, here on the CPU with the tiny config so the script cannot rot unnoticed; the
    teacher warm-starts from INIT (a committed teacher continued on a GPU)."""
    import json
    import tarfile

    vae = _run(tmp_path / "v", "vae", tiny, 2)
    init = train_stage("teacher", *tiny, Run(out=tmp_path / "v", steps=2, vae=vae, progress=False))
    done = _gpu_sitting(tmp_path, "out", VAE=str(vae), INIT=str(init), EVAL_N="1")
    assert f"warm start from {init}" in done.stderr
    out = tmp_path / "out"
    for stage in ("teacher", "student"):
        ck = load_checkpoint(out / f"{stage}.safetensors")  # small: not split
        assert ck.kind == stage and ck.optimizer is None
    assert {"config.json", "teacher/log.jsonl", "student/log.jsonl", "student-eval.jsonl"} <= _log_names(out)
    with tarfile.open(out / "logs.tar.gz") as tar:
        sized = json.load(tar.extractfile("config.json"))
        row = json.loads(tar.extractfile("student-eval.jsonl").read())
    assert sized["train"]["teacher"]["steps"] >= 2 * tiny[1].teacher.warmup and row["n"] == 1 and row["kind"] == "student"


def test_gpu_sitting_script_splits_teacher_and_student_over_two_calls(tmp_path: Path, tiny: tuple) -> None:
    """A lease's two calls: STUDENT_MIN=0 trains only the teacher (from scratch with INIT empty); a fresh
    machine then distils only the student from the TEACHER it is given. A third call into the first
    call's RUN folder packs only its own logs, not the teacher's left there."""
    vae = _run(tmp_path / "v", "vae", tiny, 2)
    first = _gpu_sitting(tmp_path, "call1", VAE=str(vae), INIT="", STUDENT_MIN="0")
    assert "warm start" not in first.stderr
    teacher = tmp_path / "call1" / "teacher.safetensors"
    assert load_checkpoint(teacher).kind == "teacher" and not (tmp_path / "call1" / "student.safetensors").exists()
    assert _log_names(tmp_path / "call1") == {"config.json", "teacher/log.jsonl"}
    _gpu_sitting(tmp_path, "call2", VAE=str(vae), TEACHER=str(teacher), STUDENT_MIN="0.02")
    assert load_checkpoint(tmp_path / "call2" / "student.safetensors").kind == "student"
    assert not (tmp_path / "call2" / "teacher.safetensors").exists() and not (tmp_path / "call2-run" / "teacher").exists()
    assert _log_names(tmp_path / "call2") == {"student/log.jsonl"}
    _gpu_sitting(tmp_path, "call3", VAE=str(vae), TEACHER=str(teacher), RUN=str(tmp_path / "call1-run"))
    assert _log_names(tmp_path / "call3") == {"student/log.jsonl"}
    nothing = _gpu_sitting(tmp_path, "call4", 2, TEACHER=str(teacher), STUDENT_MIN="0")
    assert nothing.stderr.strip() == "gpu_train: TEACHER with STUDENT_MIN=0 leaves nothing to do; give the student minutes or unset TEACHER"
