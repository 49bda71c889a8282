"""The model and its training (torch). File names are the architecture:

config.py (ModelConfig, stored in every checkpoint; TrainConfig) · vae.py (causal video VAE) ·
text.py (text encoder) · dit.py (block-causal DiT with rolling K/V cache) · components.py (the four
ONNX-signature modules + `component_specs`) · pipeline.py (torch reference streaming loop) ·
checkpoint.py (safetensors + config metadata) · data.py (world clips, latent pool) ·
train.py / train_dit.py / distill.py (the vae, teacher, student stages) · evaluate.py (judge sweeps) ·
torch_backend.py (the `torch` runtime backend).

Nothing here is imported by `edgegen/__init__.py` or the runtime: importing torch stays opt-in.
"""
