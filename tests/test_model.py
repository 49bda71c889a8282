"""Model unit tests on tiny models built in the test: shapes, streaming parity, components, checkpoints."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from edgegen.model.checkpoint import load_checkpoint, save_checkpoint, ship_checkpoint
from edgegen.model.components import (
    COMPONENTS,
    build_components,
    build_modules,
    component_specs,
    sample_inputs,
)
from edgegen.model.config import ModelConfig, load_config

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def cfg() -> ModelConfig:
    c, _ = load_config("tiny")
    c = replace(c, vocab_size=40, latent_mean=(0.1, -0.2, 0.0, 0.3), latent_std=(1.5, 0.5, 1.0, 2.0))
    c = replace(c, window=3)  # W=3 so that a 5-chunk clip drops context out of the window
    return c


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """adaLN-zero starts as identity; give every weight a value so parity tests see real attention."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


@pytest.fixture(scope="module")
def modules(cfg: ModelConfig) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    mods = build_modules(cfg)
    for name, m in mods.items():
        _randomise(m, seed=len(name))
    return mods


def test_vae_shapes_and_causality(cfg: ModelConfig, modules: dict) -> None:
    vae = modules["vae"]
    T, F = 3, cfg.chunk_frames
    x = torch.rand(2, T * F, cfg.height, cfg.width, 3)
    with torch.no_grad():
        z = vae.encode_clip(x)
        y = vae.decode_clip(z)
        assert z.shape == (2, T, cfg.latent_channels, *cfg.latent_size)
        assert y.shape == x.shape
        x2 = x.clone()
        x2[:, -F:] = torch.rand_like(x2[:, -F:])  # changing the last chunk changes nothing before it
        y2 = vae.decode_clip(vae.encode_clip(x2))
    assert torch.equal(y[:, : (T - 1) * F], y2[:, : (T - 1) * F])


def test_streaming_matches_training_forward(cfg: ModelConfig, modules: dict) -> None:
    """Components chunk by chunk (context, denoiser, commit, cache roll) == the parallel two-stream forward."""
    comps = build_components(cfg, {k: modules[k] for k in ("text", "dit")})
    B, T, C, (h, w) = 2, 5, cfg.latent_channels, cfg.latent_size
    g = torch.Generator().manual_seed(1)
    xn, xc = torch.randn(B, T, C, h, w, generator=g), torch.randn(B, T, C, h, w, generator=g)
    t = torch.rand(B, T, generator=g)
    tokens = torch.randint(0, cfg.vocab_size, (B, cfg.max_len), generator=g)
    with torch.no_grad():
        text, pooled = comps["text_encoder"](tokens)
        v_train = modules["dit"].forward_train(xn, t, xc, text, pooled, t_ctx=cfg.t_ctx)
        kv = torch.zeros(B, cfg.dit_depth, 2, cfg.window, cfg.tokens_per_chunk, cfg.dit_width)
        valid = torch.zeros(B, cfg.window)
        vs = []
        for i in range(T):
            context, bias = comps["context"](kv, valid, text)
            vs.append(comps["denoiser"](xn[:, i], t[:, i], pooled, context, bias))
            new = comps["commit"](xc[:, i], torch.full((B,), cfg.t_ctx), pooled, context, bias)
            kv = torch.cat([kv[:, :, :, 1:], new.unsqueeze(3)], dim=3)
            valid = torch.cat([valid[:, 1:], torch.ones(B, 1)], dim=1)
    err = (v_train - torch.stack(vs, dim=1)).abs().max().item()
    assert err < 1e-4, err
    assert v_train.abs().mean() > 1e-2  # the comparison is not between zeros


def test_three_graphs_are_the_one_chunk_forward(cfg: ModelConfig, modules: dict) -> None:
    """context + velocity and context + commit compute exactly `forward_chunk` (velocity and K/V),
    with some cache slots empty: the cut moves work, it changes no numbers."""
    dit = modules["dit"]
    B, C, (h, w) = 2, cfg.latent_channels, cfg.latent_size
    g = torch.Generator().manual_seed(2)
    x, t = torch.randn(B, C, h, w, generator=g), torch.rand(B, generator=g)
    text, pooled = torch.randn(B, cfg.max_len, cfg.dit_width, generator=g), torch.randn(B, cfg.dit_width, generator=g)
    kv = torch.randn(B, cfg.dit_depth, 2, cfg.window, cfg.tokens_per_chunk, cfg.dit_width, generator=g)
    valid = torch.tensor([[0.0] * (cfg.window - 1) + [1.0], [1.0] * cfg.window])
    with torch.no_grad():
        v_ref, kv_ref = dit.forward_chunk(x, t, text, pooled, kv, valid)
        context, bias = dit.context(kv, valid, text)
        v, kv_new = dit.velocity(x, t, pooled, context, bias), dit.commit(x, t, pooled, context, bias)
    assert (v - v_ref).abs().max() < 1e-5 and v_ref.abs().mean() > 1e-2
    assert (kv_new - kv_ref).abs().max() < 1e-5 and kv_ref.abs().mean() > 1e-2


def test_component_specs_match_modules(cfg: ModelConfig, modules: dict) -> None:
    specs = component_specs(cfg)
    comps = build_components(cfg, modules)
    assert tuple(specs) == COMPONENTS and set(comps) == set(COMPONENTS)
    samples = sample_inputs(cfg, batch=2)
    for name, spec in specs.items():
        feeds = samples[name]
        assert list(feeds) == [s.name for s in spec.inputs]
        for s in spec.inputs:
            assert tuple(feeds[s.name].shape) == s.concrete_shape(2) and str(feeds[s.name].dtype) == f"torch.{s.dtype}"
        with torch.no_grad():
            outs = comps[name](*feeds.values())
        outs = (outs,) if isinstance(outs, torch.Tensor) else outs
        for s, o in zip(spec.outputs, outs, strict=True):
            assert tuple(o.shape) == s.concrete_shape(2), (name, s.name)
            assert o.dtype == torch.float32


def test_vae_components_normalise_and_carry_state(cfg: ModelConfig) -> None:
    torch.manual_seed(0)
    vae = build_modules(cfg, ("vae",))["vae"]  # default init: outputs in range, not saturated
    comps = build_components(cfg, {"vae": vae})
    x = torch.rand(1, 2 * cfg.chunk_frames, cfg.height, cfg.width, 3)
    with torch.no_grad():
        z_raw = vae.encode_clip(x)  # (1, 2, C, h, w)
        y_ref = vae.decode_clip(z_raw).clamp(0, 1)
        state = torch.zeros(1, cfg.height, cfg.width, 3)
        dstate = torch.zeros(1, cfg.latent_channels, *cfg.latent_size)
        frames = []
        for i in range(2):
            z, state = comps["vae_encoder"](x[:, i * cfg.chunk_frames : (i + 1) * cfg.chunk_frames], state)
            mean, std = torch.tensor(cfg.latent_mean).view(1, -1, 1, 1), torch.tensor(cfg.latent_std).view(1, -1, 1, 1)
            assert torch.allclose(z * std + mean, z_raw[:, i], rtol=1e-4, atol=1e-4)
            f, dstate = comps["vae_decoder"](z, dstate)
            frames.append(f)
    assert torch.allclose(torch.cat(frames, dim=1), y_ref, atol=1e-4)
    assert frames[0].min() >= 0 and frames[0].max() <= 1


def test_checkpoint_roundtrip_and_ship(tmp_path: Path, cfg: ModelConfig) -> None:
    modules = build_modules(cfg)
    opt = torch.optim.AdamW(modules["dit"].parameters(), lr=1e-3)
    loss = sum(p.sum() for p in modules["dit"].parameters())
    loss.backward()
    opt.step()
    rng = np.random.default_rng(5)
    path = save_checkpoint(tmp_path / "a.safetensors", modules, cfg, 7, optimizer=opt, ema=modules, kind="teacher", rng_numpy=rng)
    ck = load_checkpoint(path)
    assert ck.config == cfg and ck.step == 7 and ck.kind == "teacher"
    for name, m in modules.items():
        for k, v in m.state_dict().items():
            assert torch.equal(ck.model[name][k], v)
    opt2 = torch.optim.AdamW(modules["dit"].parameters(), lr=1e-3)
    opt2.load_state_dict(ck.optimizer)
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    rng2 = np.random.default_rng(0)
    rng2.bit_generator.state = ck.rng_numpy
    assert rng2.random() == rng.random()
    shipped = load_checkpoint(ship_checkpoint(path, tmp_path / "ship.safetensors"))
    assert shipped.optimizer is None and not shipped.ema
    assert all(v.dtype == torch.float16 for sd in shipped.model.values() for v in sd.values() if v.is_floating_point())
    assert not list(tmp_path.glob("*.partial"))
    assert (shipped.config.t_ctx, shipped.config.t_ctx_from) == (ck.config.t_ctx, ck.config.t_ctx_from)
    from edgegen.errors import UserError

    # the sampler's settings (and only those) can be set when shipping; the weights stay the same
    tuned = load_checkpoint(ship_checkpoint(path, tmp_path / "tuned.safetensors", t_ctx=0.1, t_ctx_from=2))
    assert (tuned.config.t_ctx, tuned.config.t_ctx_from) == (0.1, 2)
    assert all(torch.equal(v, shipped.model[m][k]) for m, sd in tuned.model.items() for k, v in sd.items())
    with pytest.raises(ValueError, match="shift cannot be set"):
        ship_checkpoint(path, tmp_path / "x.safetensors", shift=3.0)
    with pytest.raises(UserError, match="t_ctx_from must be a whole number >= 0"):
        ship_checkpoint(path, tmp_path / "x.safetensors", t_ctx_from=-1)
    assert not (tmp_path / "x.safetensors").exists()


def test_not_a_checkpoint(tmp_path: Path) -> None:
    from edgegen.errors import UserError

    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"nope")
    with pytest.raises(UserError, match="not a readable"):
        load_checkpoint(bad)
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_torch_backend_runs_components(tmp_path: Path, cfg: ModelConfig, modules: dict) -> None:
    from types import SimpleNamespace

    from edgegen.bundle import sha256_file
    from edgegen.errors import BundleError
    from edgegen.model.torch_backend import TorchBackend

    path = save_checkpoint(tmp_path / "checkpoint.safetensors", modules, cfg, 1, kind="student")
    backend = TorchBackend()
    assert backend.available()[0]
    comps = build_components(cfg, modules)
    for name, spec in component_specs(cfg).items():
        session = backend.open(path, name, "fp32")
        feeds = spec.sample_inputs(batch=1, seed=3)
        out = session.run({k: v.numpy() for k, v in feeds.items()})
        assert list(out) == [s.name for s in spec.outputs]
        with torch.no_grad():
            ref = comps[name](*feeds.values())
        ref = (ref,) if isinstance(ref, torch.Tensor) else ref
        for s, r in zip(spec.outputs, ref, strict=True):
            np.testing.assert_allclose(out[s.name], r.numpy(), rtol=1e-5, atol=1e-5)
    bundle = SimpleNamespace(path=tmp_path, manifest={"provenance": {"checkpoint_sha256": sha256_file(path)}})
    assert backend.open(bundle, "denoiser", "fp32").outputs == ("velocity",)
    wrong = SimpleNamespace(path=tmp_path, manifest={"provenance": {"checkpoint_sha256": "0" * 64}})
    with pytest.raises(BundleError, match="exported from"):
        backend.open(wrong, "denoiser", "fp32")


# -- teacher-forced continuation (python -m edgegen.model.evaluate --continuation) ---------------


def test_centroid_finds_the_object_and_none_on_an_empty_frame() -> None:
    from edgegen.model.evaluate import centroid

    frame = np.zeros((64, 64, 3), np.float32)
    assert centroid(frame) is None
    frame[10:20, 40:50] = (1.0, 0.0, 0.0)
    np.testing.assert_allclose(centroid(frame), [44.5, 14.5])


def test_steady_movers_are_single_objects_moving_one_way() -> None:
    from edgegen.model.evaluate import STEADY, steady_movers
    from edgegen.world import parse_prompt

    found = steady_movers("heldout", 6)
    assert len(found) == 6
    for prompt in found:
        (obj,) = parse_prompt(prompt).objects
        assert obj.motion in STEADY


def test_continuation_on_the_shipped_model_reports_shares() -> None:
    from edgegen.model.evaluate import OUTCOMES, continuation, continue_clip, free_run
    from edgegen.model.pipeline import load_model
    from edgegen.model.torch_backend import shipped_checkpoint

    model = load_model(shipped_checkpoint())
    frames = continue_clip(model, "a red circle moving right", 0, 2)
    assert [f.shape for f in frames] == [(model.config.height, model.config.width, 3)] * 3
    (row,) = continuation(str(shipped_checkpoint()), [2], 3, "heldout")
    assert row["n"] == 3 and abs(sum(row[k] for k in OUTCOMES) - 1.0) < 1e-6
    rows = free_run(str(shipped_checkpoint()), 3, 2, "heldout")
    assert [r["chunks"] for r in rows] == ["0->1", "1->2"]
    assert all(abs(sum(r[k] for k in OUTCOMES) - 1.0) < 1e-6 for r in rows)


def test_primed_clips_start_from_the_world_s_chunks() -> None:
    """K = 0 is the plain stream; after K real chunks the generated chunk is the one teacher forcing
    (`continue_clip`) makes; `primed` judges only the generated frames."""
    from edgegen.model.evaluate import continue_clip, primed, primed_video
    from edgegen.model.pipeline import generate_video, load_model
    from edgegen.model.torch_backend import shipped_checkpoint

    model = load_model(shipped_checkpoint())
    prompt, F = "a blue square moving left", model.config.chunk_frames
    np.testing.assert_array_equal(primed_video(model, prompt, 3, 0, 6), generate_video(model, prompt, seed=3, frames=6))
    after = primed_video(model, prompt, 3, 1, F)
    assert after.shape == (F, model.config.height, model.config.width, 3)
    made = continue_clip(model, prompt, 3, 1)[2]
    assert np.abs(after[-1].astype(np.float32) / 255.0 - made).max() <= 1.0 / 255.0
    assert not np.array_equal(after, primed_video(model, prompt, 3, 0, F))  # the real chunk changed what follows
    rows = primed(str(shipped_checkpoint()), [0, 1], 2, "heldout", 8)
    assert [(r["real_chunks"], r["frames"], r["n"]) for r in rows] == [(0, 8, 2), (1, 8, 2)]
    assert all(0.0 <= r["colour"] <= 1.0 for r in rows)


def test_first_chunk_from_another_model() -> None:
    """FirstChunk: chunk 0 is the other model's from the same noise, committed by the stream's model;
    the same model at the same settings changes nothing; another latent space is refused."""
    from edgegen.model.pipeline import FirstChunk, generate_latents, generate_video, load_model
    from edgegen.model.torch_backend import shipped_checkpoint

    model = load_model(shipped_checkpoint())
    prompt = "a green star moving up"
    plain = generate_video(model, prompt, seed=5, frames=8)
    np.testing.assert_array_equal(generate_video(model, prompt, seed=5, frames=8, first=FirstChunk(model, 2)), plain)
    own4 = list(generate_latents(model, prompt, 5, 2, steps=4))
    own2 = list(generate_latents(model, prompt, 5, 2))
    mixed = list(generate_latents(model, prompt, 5, 2, first=FirstChunk(model, 4)))
    np.testing.assert_allclose(mixed[0], own4[0], atol=1e-6)
    assert not np.allclose(mixed[0], own2[0]) and not np.allclose(mixed[1], own2[1])
    other = replace(model, config=replace(model.config, latent_channels=model.config.latent_channels + 1))
    with pytest.raises(ValueError, match=r"another latent space \(latent_channels"):
        next(generate_latents(model, prompt, 5, 1, first=FirstChunk(other)))
    encoder = copy.deepcopy(model.components["vae_encoder"])
    with torch.no_grad():
        next(encoder.parameters()).add_(0.1)
    retrained = replace(model, components={**model.components, "vae_encoder": encoder})
    with pytest.raises(ValueError, match="VAE encoder differ"):
        next(generate_latents(model, prompt, 5, 1, first=FirstChunk(retrained)))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none here); runs on a lent GPU machine")
def test_sampling_on_a_gpu_makes_the_cpu_s_video() -> None:
    """The reference streaming loop with the model on cuda (a first chunk from another model too):
    the CPU's frames up to the GPU's arithmetic; numpy comes back on the CPU."""
    from edgegen.model.pipeline import FirstChunk, generate_video, load_model
    from edgegen.model.torch_backend import shipped_checkpoint

    cpu = generate_video(load_model(shipped_checkpoint()), "a green star moving up", seed=5, frames=12)
    gpu_model = load_model(shipped_checkpoint()).to("cuda")
    assert gpu_model.device.type == "cuda"
    gpu = generate_video(gpu_model, "a green star moving up", seed=5, frames=12)
    assert gpu.shape == cpu.shape and np.abs(gpu.astype(int) - cpu.astype(int)).mean() < 1.0
    first = generate_video(gpu_model, "a green star moving up", seed=5, frames=12, first=FirstChunk(gpu_model, 4))
    assert first.shape == cpu.shape


def test_fused_attention_is_the_plain_one() -> None:
    """Training's fused kernel computes the exported graphs' attention: random heads, masked keys too."""
    from edgegen.model.dit import NEG
    from edgegen.model.text import attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(6, n, 32, generator=g) for n in (5, 9, 9))
    bias = torch.where(torch.rand(6, 1, 1, 9, generator=g) < 0.3, NEG, 0.0)
    torch.testing.assert_close(attention(q, k, v, 4, bias, fused=True), attention(q, k, v, 4, bias), atol=1e-5, rtol=1e-5)


def test_a_model_moves_between_devices_and_says_where_it_is() -> None:
    from edgegen.model.pipeline import generate_video, load_model
    from edgegen.model.torch_backend import shipped_checkpoint

    model = load_model(shipped_checkpoint())
    assert model.device == torch.device("cpu") and model.to("cpu").device == torch.device("cpu")
    video = generate_video(model.to("cpu"), "a red circle moving right", seed=1, frames=4)
    np.testing.assert_array_equal(video, generate_video(model, "a red circle moving right", seed=1, frames=4))


@pytest.mark.parametrize(("argv", "message"), [
    (["--device", "cuda"], "torch sees no CUDA GPU"),
    (["--device", "cuda:0", "--primed", "0"], "--device applies to the judge sweep only"),
])
def test_evaluate_device_flag_is_checked(argv: list[str], message: str, monkeypatch, capsys) -> None:
    from edgegen.model import evaluate

    monkeypatch.setattr("sys.argv", ["evaluate", "unused.safetensors", *argv])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main()
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_evaluate_first_chunk_flags_need_a_checkpoint(monkeypatch, capsys) -> None:
    from edgegen.model import evaluate

    monkeypatch.setattr("sys.argv", ["evaluate", "unused.safetensors", "--first-steps", "8"])
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main()
    assert exit_info.value.code == 2 and "--first-steps and --first-guidance need --first-from" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["--primed", "0,x"], "--primed takes a comma list of whole numbers"),
    (["--primed", "-1"], "--primed takes counts of real chunks from 0 up"),
    (["--continuation", "0"], "--continuation takes counts of real chunks from 1 up"),
])
def test_evaluate_rejects_bad_chunk_counts_in_one_line(argv: list[str], message: str, monkeypatch, capsys) -> None:
    from edgegen.model import evaluate

    monkeypatch.setattr("sys.argv", ["evaluate", "unused.safetensors", *argv])
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main()
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_along_motion_classifies_displacements() -> None:
    from edgegen.model.evaluate import along_motion

    right, at = np.array([1.0, 0.0]), np.array([10.0, 10.0])
    assert along_motion(at, at + np.array([4.0, 0.5]), right, 4.0) == "moved"
    assert along_motion(at, at + np.array([0.5, 3.0]), right, 4.0) == "stalled"
    assert along_motion(at, at - np.array([4.0, 0.0]), right, 4.0) == "other"
    assert along_motion(None, at, right, 4.0) == "missing"


def test_chunk_steps_tell_steady_motion_from_still_chunks_that_jump() -> None:
    from edgegen.model.evaluate import chunk_steps

    steady = np.zeros((12, 16, 16, 3), np.uint8)
    for i in range(12):
        steady[i, 4:8, i : i + 4] = 200  # one pixel a frame
    inside, across = chunk_steps(steady, 4)
    assert inside > 0 and abs(across / inside - 1.0) < 1e-6
    held = np.repeat(steady[1::4], 4, axis=0)  # each chunk shows one frame: still, then a jump of 4
    inside, across = chunk_steps(held, 4)
    assert inside == 0.0 and across > 3.5 * chunk_steps(steady, 4)[1]


def test_stutter_and_the_vae_round_trip_on_the_shipped_model() -> None:
    from edgegen.model.evaluate import reconstruct, stutter
    from edgegen.model.pipeline import load_model
    from edgegen.model.torch_backend import shipped_checkpoint
    from edgegen.world import parse_prompt, render

    model = load_model(shipped_checkpoint())
    clip = render(parse_prompt("a red circle moving right"), 0, 8, model.config.height)
    out = reconstruct(model, clip)
    assert out.shape == clip.shape and out.dtype == np.uint8
    assert np.abs(out.astype(float) - clip).mean() < 10  # a round trip, not noise
    rows = stutter(str(shipped_checkpoint()), 2, 2, "train")
    assert [r["clips"] for r in rows] == ["model", "vae", "world"]
    assert all(r["inside_chunks"] >= 0 and r["across_chunks"] > 0 for r in rows)


def test_vae_judge_reports_the_world_and_the_round_trip() -> None:
    from edgegen.model.evaluate import vae_judge
    from edgegen.model.torch_backend import shipped_checkpoint

    world, vae = vae_judge(str(shipped_checkpoint()), 3, "train", 8)
    assert (world["clips"], vae["clips"]) == ("world", "vae") and world["n"] == vae["n"] == 3
    assert world["colour"] == 1.0  # the judge reads the world's own clips
    assert 0.0 <= vae["colour"] <= 1.0 and 20.0 < vae["psnr_db"] < 60.0 and world["psnr_db"] is None
