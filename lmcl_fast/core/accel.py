"""How the branches run: torch.compile (mode chosen per run), channels-last memory format, CUDA graphs.

The trainer and the predictor keep the plain modules (their state_dicts, so checkpoints carry no `_orig_mod.`
prefixes and load into compiled or eager runs alike) and call the wrappers made here, which share the
modules' parameters."""
from __future__ import annotations

import torch

COMPILE_MODES = ("auto", "off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
MEMORY_FORMATS = ("channels_last", "contiguous")

# compile="auto" compiles when a run makes at least this many calls of a branch (training steps, or scoring
# batches). Measured on the 2-core CPU (torch 2.13, the demo configuration: tiny CNN, peer, 64 crops of 64^2,
# one thread, machine shared, load ~12; bench/RESULTS.md "training step"): compiling both branches' forward and
# backward took 30-40 s with a warm inductor cache and 174 s cold (a fresh install), and saved ~40 ms of a
# ~550 ms channels-last step (forward + backward 308 -> 258 ms): it pays after ~1,000 steps warm and ~4,000
# cold. 5,000 keeps a fresh install from losing time; the demo's 990 steps stay eager. On CUDA the compile time
# is similar while a large backbone's step gains more; 2,000 steps there is an estimate (no GPU measured).
AUTO_COMPILE_MIN_CALLS = {"cpu": 5_000, "cuda": 2_000}


def resolve_compile(mode: str, device: torch.device, calls: int) -> str | None:
    """The torch.compile mode to use (None: eager) for `calls` calls of each branch on `device`."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {COMPILE_MODES}, got {mode!r}")
    if mode == "auto":
        return "default" if calls >= AUTO_COMPILE_MIN_CALLS.get(device.type, 5_000) else None
    if mode == "off":
        return None
    if mode == "reduce-overhead" and device.type != "cuda":
        raise ValueError(f"compile=reduce-overhead runs the branches as CUDA graphs and needs a CUDA device, "
                         f"got device {device}")
    return mode


def memory_format(name: str) -> torch.memory_format:
    if name not in MEMORY_FORMATS:
        raise ValueError(f"memory_format must be one of {MEMORY_FORMATS}, got {name!r}")
    return torch.channels_last if name == "channels_last" else torch.contiguous_format


def compile_branch(module: torch.nn.Module, mode: str | None):
    """A compiled wrapper of `module` (sharing its parameters), or `module` itself for mode None.

    Static shapes (dynamic=False): each run feeds one batch shape (the trainer runs a short batch eagerly,
    the predictor pads its last batch), so no dynamic-shape graph is ever compiled."""
    if mode is None:
        return module
    return torch.compile(module, dynamic=False, **({} if mode == "default" else {"mode": mode}))


def uses_cuda_graphs(mode: str | None) -> bool:
    return mode in ("reduce-overhead", "max-autotune")


def mark_step(mode: str | None) -> None:
    """Start of a training or scoring step: with CUDA graphs, the previous step's graph outputs may be
    overwritten from here on (the caller has consumed them)."""
    if uses_cuda_graphs(mode):
        torch.compiler.cudagraph_mark_step_begin()
