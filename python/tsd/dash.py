"""LoRA-Dash for any PEFT LoRA model, as a ``transformers`` Trainer callback.

    dash = LoraDash(peft_model, s=8, t=100)
    trainer = Trainer(model=peft_model, ..., callbacks=[dash])

What it does (README, Definitions: LoRA-Dash; ``tsd train`` does the same):

* At construction every LoRA linear of the adapter gets a ``tsd_dash`` submodule holding Ū
  ``[out, s]`` and V̄ᵀ ``[s, in]`` (frozen, zero until the switch) and Δσ ``[s]`` (trainable, 0), all
  f32 on the layer's device, so the optimizer, the lr scheduler and ``resume_from_checkpoint`` see
  one fixed parameter set from the start. Δσ gets no gradient (``grad is None``: AdamW neither
  steps it nor counts a step) until the switch.
* Until optimizer step ``t`` the model is plain LoRA. At the end of step ``t`` the adapter's state
  is saved and handed to the tsd binary (``tsd dash-pick``: the same code as ``tsd train``'s
  switch), which picks the top-``s`` directions of every module; Ū and V̄ᵀ are copied in and each
  layer then computes ``h = Wx + (α/r)·B·A·drop(x) + Ū·diag(Δσ)·V̄ᵀ·drop(x)`` (the Dash term not
  scaled by α/r, the same dropout mask as LoRA's input, in f32 like the LoRA part).
* Each checkpoint written after the switch is rewritten in tsd's LoRA-Dash layout:
  ``adapter_model.safetensors`` + ``adapter_config.json`` are the fold (a plain rank-(r+s) LoRA with
  the same ΔW, what PEFT loads), ``tsd_dash.safetensors`` beside them holds A, B, Ū, V̄ᵀ, Δσ, the
  indices, σ and δ̂ at the switch, so ``tsd inspect/track/report/eval`` read the Dash adapter.
  Resuming from such a checkpoint (``trainer.train(resume_from_checkpoint=...)``) restores the Dash
  state from ``tsd_dash.safetensors``.
* ``dash.save_folded(dir)`` writes the plain rank-(r+s) PEFT LoRA alone.

Under DDP every rank runs the switch (the picks are deterministic, so every rank gets the same) and
only the main process rewrites checkpoints; Δσ has no gradient before the switch, so DDP needs
``ddp_find_unused_parameters=True`` until then. A checkpoint saved at step t itself already holds the
picks (with Δσ = 0): the switch runs at the end of step t, before that save (``tsd train`` saves step
t's checkpoint before its switch).

The adapter is the model's active adapter (``adapter_name`` to choose another). Only
``nn.Linear`` LoRA layers are supported (LLaMA-style models); DoRA and other LoRA variants are
refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from tsd._bin import find_tsd_bin

try:
    from transformers import TrainerCallback
except ImportError:  # pragma: no cover - transformers is optional for the math
    TrainerCallback = object  # type: ignore[misc,assignment]

__all__ = ["LoraDash", "DASH_FILE"]

DASH_FILE = "tsd_dash.safetensors"
WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
PREFIX = "base_model.model."
# Metadata keys tsd reads (src/adapter/naming.rs, src/adapter/write.rs, src/train/checkpoint.rs).
DASH_CONFIG_KEY = "tsd_adapter_config"
DASH_PEFT_SHA256_KEY = "tsd_peft_weights_sha256"
FOLDED_FROM_KEY = "tsd_folded_dash"


class _DashParams(nn.Module):
    """Ū, V̄ᵀ (frozen) and Δσ (trainable) of one layer, f32; ``active`` flips at the switch."""

    def __init__(self, out_f: int, in_f: int, s: int, device: torch.device):
        super().__init__()
        f32 = torch.float32
        self.u = nn.Parameter(torch.zeros(out_f, s, dtype=f32, device=device), requires_grad=False)
        self.vt = nn.Parameter(torch.zeros(s, in_f, dtype=f32, device=device), requires_grad=False)
        self.delta_sigma = nn.Parameter(torch.zeros(s, dtype=f32, device=device))
        # Persistent buffers: a state dict says whether the switch happened and what it picked.
        self.register_buffer("active", torch.zeros((), dtype=torch.bool, device=device))
        self.register_buffer("index", torch.zeros(s, dtype=torch.int64, device=device))
        self.register_buffer("sigma", torch.zeros(s, dtype=f32, device=device))
        self.register_buffer("delta_hat", torch.zeros(s, dtype=f32, device=device))

    def term(self, dx: torch.Tensor) -> torch.Tensor:
        """``Ū·diag(Δσ)·V̄ᵀ·dx`` for ``dx [..., in]`` (in f32)."""
        dx = dx.to(torch.float32)
        return ((dx @ self.vt.t()) * self.delta_sigma) @ self.u.t()

    def delta_weight(self) -> torch.Tensor:
        return (self.u * self.delta_sigma) @ self.vt


class _DashVariant:
    """A PEFT ``LoraVariant`` (``layer.lora_variant[name]``): vanilla LoRA plus the Dash term on the
    same dropped-out input; merging includes the Dash term."""

    @staticmethod
    def supports_lora_conversion() -> bool:
        return True

    @staticmethod
    def init(module, adapter_name, **kwargs) -> None:  # pragma: no cover - set up by LoraDash
        pass

    @staticmethod
    def _delta(module, name: str) -> torch.Tensor:
        d = module.get_delta_weight(name)
        dash = module.tsd_dash
        if bool(dash.active):
            d = d + dash.delta_weight().to(d.dtype)
        return d

    @staticmethod
    def merge_safe(module, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        return orig_weight + _DashVariant._delta(module, active_adapter).to(orig_weight.dtype)

    @staticmethod
    def merge_unsafe(module, active_adapter: str, orig_weight: torch.Tensor) -> None:
        orig_weight.data += _DashVariant._delta(module, active_adapter).to(orig_weight.dtype)

    @staticmethod
    def unmerge(module, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        return orig_weight - _DashVariant._delta(module, active_adapter).to(orig_weight.dtype)

    @staticmethod
    def forward(module, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs) -> torch.Tensor:
        lora_A = module.lora_A[active_adapter]
        lora_B = module.lora_B[active_adapter]
        dropout = module.lora_dropout[active_adapter]
        scaling = module.scaling[active_adapter]
        dx = dropout(x)
        result = result + lora_B(lora_A(dx)) * scaling
        dash = module.tsd_dash
        if bool(dash.active):
            result = result + dash.term(dx)
        return result


def _module_pattern(module: str) -> str:
    """PEFT pattern key selecting exactly this module (as tsd writes it, src/adapter/write.rs)."""
    m = module[len("model."):] if module.startswith("model.") else module
    return m.replace(".", r"\.")


def _sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


class LoraDash(TrainerCallback):
    """LoRA-Dash on a PEFT LoRA model; pass it to ``Trainer(callbacks=[dash])``.

    Args:
        peft_model: a ``peft.PeftModel`` (or a model with PEFT LoRA layers) with a LoRA adapter.
        s: directions per module (``tsd train --dash-s``).
        t: optimizer steps of plain LoRA before the switch (``tsd train --dash-t``).
        base: the base model for the switch's SVDs (a directory, a Hugging Face id, ``default``);
            by default the adapter's ``base_model_name_or_path``.
        adapter_name: which adapter [default: the active one].
        sigma_floor: relative σ floor in δ̂ (``tsd train --sigma-floor``; 0 = official).
        tsd_bin: the tsd binary [default: ``$TSD_BIN``, else ``tsd`` on PATH].
    """

    #: Rewrites each post-switch checkpoint in ``on_save`` (tsd's layout): a ``TsdCallback`` keeps
    #: itself after every callback with this flag, so it snapshots the rewritten files.
    tsd_writes_checkpoints = True

    def __init__(
        self,
        peft_model: nn.Module,
        s: int = 8,
        t: int = 100,
        base: Optional[str] = None,
        adapter_name: Optional[str] = None,
        sigma_floor: float = 0.0,
        tsd_bin: Optional[str] = None,
    ):
        if s < 1:
            raise ValueError("s must be positive")
        if t < 0:
            raise ValueError("t must be non-negative")
        self.model = peft_model
        self.s = int(s)
        self.t = int(t)
        self.base = base
        self.sigma_floor = float(sigma_floor)
        self._bin = tsd_bin
        if adapter_name is None:
            active = getattr(peft_model, "active_adapters", None) or getattr(peft_model, "active_adapter", "default")
            adapter_name = active[0] if isinstance(active, (list, tuple)) else active
        self.adapter_name = adapter_name
        self.switch_step: Optional[int] = None
        self.picks: Optional[dict] = None
        self.layers: dict[str, nn.Module] = {}
        from peft.tuners.lora import Linear as LoraLinear

        for name, mod in peft_model.named_modules():
            if not isinstance(mod, LoraLinear) or adapter_name not in mod.lora_A:
                continue
            if adapter_name in mod.lora_variant:
                raise ValueError(f"{name}: LoRA variant {type(mod.lora_variant[adapter_name]).__name__} is not plain LoRA")
            if getattr(mod, "fan_in_fan_out", False):
                raise ValueError(f"{name}: fan_in_fan_out layers are not supported")
            a = mod.lora_A[adapter_name].weight
            b = mod.lora_B[adapter_name].weight
            mod.tsd_dash = _DashParams(b.shape[0], a.shape[1], self.s, a.device)
            mod.lora_variant[adapter_name] = _DashVariant()
            self.layers[self._tsd_module(name)] = mod
        if not self.layers:
            raise ValueError(f"no PEFT LoRA linear layer holds adapter `{adapter_name}`")
        self._wrap_load_adapter()

    # ---- names and state -------------------------------------------------------------------

    @staticmethod
    def _tsd_module(peft_name: str) -> str:
        """``base_model.model.model.layers.0.self_attn.q_proj`` → ``model.layers.0.self_attn.q_proj``."""
        return peft_name[len(PREFIX):] if peft_name.startswith(PREFIX) else peft_name

    @property
    def active(self) -> bool:
        return all(bool(m.tsd_dash.active) for m in self.layers.values())

    def delta_sigma(self) -> dict[str, torch.Tensor]:
        """Every module's Δσ (a detached copy)."""
        return {k: m.tsd_dash.delta_sigma.detach().clone() for k, m in self.layers.items()}

    def _peft_config(self) -> dict:
        cfg = self.model.peft_config[self.adapter_name]
        d = cfg.to_dict()
        for k, v in list(d.items()):
            if isinstance(v, set):
                d[k] = sorted(v)
        return d

    def _module_r_scaling(self, module: str) -> tuple[int, float, float]:
        mod = self.layers[module]
        n = self.adapter_name
        return mod.r[n], float(mod.lora_alpha[n]), float(mod.scaling[n])

    # ---- the switch ------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, **kwargs):
        # t = 0: the switch comes before the first step (as tsd train --dash-t 0).
        if self.t == 0 and self.switch_step is None and not self.active:
            self.switch(state.global_step)
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if self.switch_step is None and not self.active and state.global_step >= self.t:
            self.switch(state.global_step)
        return control

    def switch(self, step: int) -> None:
        """Picks every module's directions with ``tsd dash-pick`` on the adapter as it is now."""
        with tempfile.TemporaryDirectory(prefix="tsd-dash-") as tmp:
            src = Path(tmp) / "adapter"
            self._write_plain(src)
            out = Path(tmp) / "picked"
            cmd = [
                self._bin or find_tsd_bin(), "dash-pick", str(src), "--out", str(out),
                "--dash-s", str(self.s), "--sigma-floor", repr(self.sigma_floor), "--json",
            ]
            base = self.base
            if base is None:
                # A relative local base (PEFT copies `name_or_path`) would not resolve from the
                # temporary directory: make it absolute.
                declared = self._peft_config().get("base_model_name_or_path")
                if declared and os.path.exists(declared):
                    base = os.path.abspath(declared)
            if base is not None:
                cmd += ["--base", str(base)]
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode != 0:
                raise RuntimeError(f"tsd dash-pick failed ({p.returncode}): {p.stderr.strip()}")
            self.picks = json.loads(p.stdout)
            from safetensors.torch import load_file

            t = load_file(str(out / DASH_FILE))
        with torch.no_grad():
            for module, mod in self.layers.items():
                d = mod.tsd_dash
                key = PREFIX + module
                for attr, suffix in (("u", "lora_dash_u"), ("vt", "lora_dash_vt"), ("index", "lora_dash_index"),
                                     ("sigma", "lora_dash_sigma"), ("delta_hat", "lora_dash_delta_hat")):
                    v = t[f"{key}.{suffix}"]
                    getattr(d, attr).copy_(v.to(getattr(d, attr).device, getattr(d, attr).dtype))
                d.delta_sigma.zero_()
                d.active.fill_(True)
        self.switch_step = int(step)

    # ---- writing -------------------------------------------------------------------------

    def _lora_tensors(self, module: str) -> tuple[torch.Tensor, torch.Tensor]:
        mod = self.layers[module]
        n = self.adapter_name
        return (mod.lora_A[n].weight.detach().float().cpu().contiguous(),
                mod.lora_B[n].weight.detach().float().cpu().contiguous())

    def _write_plain(self, out: Path) -> None:
        """The rank-r LoRA as PEFT writes it (what ``tsd dash-pick`` reads)."""
        from safetensors.torch import save_file

        out.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for module in self.layers:
            a, b = self._lora_tensors(module)
            tensors[f"{PREFIX}{module}.lora_A.weight"] = a
            tensors[f"{PREFIX}{module}.lora_B.weight"] = b
        save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
        (out / CONFIG_FILE).write_text(json.dumps(self._peft_config(), indent=2))

    def _folded(self) -> tuple[dict[str, torch.Tensor], dict]:
        """The fold (README, Adapter formats): ``B' = [c·B | Ū·diag(Δσ)]``, ``A' = [c·A ; V̄ᵀ]`` with
        ``c = √(α/r)`` (sign on B), rank r + s, ``lora_alpha = r + s``, no rsLoRA."""
        tensors = {}
        ranks = {}
        for module, mod in self.layers.items():
            a, b = self._lora_tensors(module)
            _, _, scaling = self._module_r_scaling(module)
            cb = (1.0 if scaling >= 0 else -1.0) * abs(scaling) ** 0.5
            ca = abs(scaling) ** 0.5
            a2 = (a.double() * ca).float()
            b2 = (b.double() * cb).float()
            d = mod.tsd_dash
            if bool(d.active):
                a2 = torch.cat([a2, d.vt.detach().float().cpu()], 0)
                b2 = torch.cat([b2, (d.u * d.delta_sigma).detach().float().cpu()], 1)
            tensors[f"{PREFIX}{module}.lora_A.weight"] = a2.contiguous()
            tensors[f"{PREFIX}{module}.lora_B.weight"] = b2.contiguous()
            ranks[module] = a2.shape[0]
        cfg = self._peft_config()
        common = Counter(ranks.values()).most_common(1)[0][0]
        cfg.update(r=common, lora_alpha=common, use_rslora=False,
                   rank_pattern={_module_pattern(m): q for m, q in ranks.items() if q != common},
                   alpha_pattern={_module_pattern(m): q for m, q in ranks.items() if q != common})
        return tensors, cfg

    def save_folded(self, out_dir: str | os.PathLike) -> Path:
        """Writes the plain rank-(r+s) PEFT LoRA with the Dash model's ΔW (no tsd file beside it)."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tensors, cfg = self._folded()
        save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
        (out / CONFIG_FILE).write_text(json.dumps(cfg, indent=2))
        if (out / DASH_FILE).exists():
            (out / DASH_FILE).unlink()
        return out

    def save_dash(self, out_dir: str | os.PathLike) -> Path:
        """Writes the adapter in tsd's LoRA-Dash layout (the fold + ``tsd_dash.safetensors``), or the
        plain PEFT LoRA before the switch."""
        from safetensors.torch import save, save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if not self.active:
            self._write_plain(out)
            if (out / DASH_FILE).exists():
                (out / DASH_FILE).unlink()
            return out
        meta = {"format": "pt", "tsd_dash_s": str(self.s)}
        if self.switch_step is not None:
            meta["tsd_dash_switch_step"] = str(self.switch_step)
        tensors, cfg = self._folded()
        peft_bytes = save(tensors, metadata={**meta, FOLDED_FROM_KEY: DASH_FILE})
        dash = {}
        for module, mod in self.layers.items():
            a, b = self._lora_tensors(module)
            k = PREFIX + module
            d = mod.tsd_dash
            dash[f"{k}.lora_A.weight"] = a
            dash[f"{k}.lora_B.weight"] = b
            dash[f"{k}.lora_dash_u"] = d.u.detach().float().cpu().contiguous()
            dash[f"{k}.lora_dash_vt"] = d.vt.detach().float().cpu().contiguous()
            dash[f"{k}.lora_dash_delta_sigma"] = d.delta_sigma.detach().float().cpu().contiguous()
            dash[f"{k}.lora_dash_index"] = d.index.detach().cpu().to(torch.int64).contiguous()
            dash[f"{k}.lora_dash_sigma"] = d.sigma.detach().float().cpu().contiguous()
            dash[f"{k}.lora_dash_delta_hat"] = d.delta_hat.detach().float().cpu().contiguous()
        unfolded = json.dumps(self._peft_config())
        dash_bytes = save(dash, metadata={**meta, DASH_CONFIG_KEY: unfolded,
                                          DASH_PEFT_SHA256_KEY: _sha256(peft_bytes)})
        # Dash file first (as tsd does): an interrupted write leaves a mismatch tsd refuses.
        for name, data in ((DASH_FILE, dash_bytes), (WEIGHTS_FILE, peft_bytes),
                           (CONFIG_FILE, json.dumps(cfg, indent=2).encode())):
            tmp = out / f".{name}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, out / name)
        return out

    def on_save(self, args, state, control, **kwargs):
        """Rewrites the checkpoint Trainer just saved in tsd's layout (main process only)."""
        if not state.is_world_process_zero:
            return control
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if self.adapter_name != "default":
            ckpt = ckpt / self.adapter_name
        if ckpt.is_dir() and self.active:
            self.save_dash(ckpt)
        return control

    # ---- reading (resume) ------------------------------------------------------------------

    def load_dash(self, adapter_dir: str | os.PathLike) -> None:
        """Loads A, B and the Dash state from a directory written by :meth:`save_dash` (or a
        ``tsd train`` checkpoint with the same modules)."""
        from safetensors.torch import load_file

        t = load_file(str(Path(adapter_dir) / DASH_FILE))
        with torch.no_grad():
            for module, mod in self.layers.items():
                k = PREFIX + module
                n = self.adapter_name
                mod.lora_A[n].weight.copy_(t[f"{k}.lora_A.weight"])
                mod.lora_B[n].weight.copy_(t[f"{k}.lora_B.weight"])
                d = mod.tsd_dash
                for attr, suffix in (("u", "lora_dash_u"), ("vt", "lora_dash_vt"),
                                     ("delta_sigma", "lora_dash_delta_sigma"), ("index", "lora_dash_index"),
                                     ("sigma", "lora_dash_sigma"), ("delta_hat", "lora_dash_delta_hat")):
                    if f"{k}.{suffix}" in t:
                        getattr(d, attr).copy_(t[f"{k}.{suffix}"])
                d.active.fill_(True)
        from safetensors import safe_open

        with safe_open(str(Path(adapter_dir) / DASH_FILE), "pt") as f:
            step = (f.metadata() or {}).get("tsd_dash_switch_step")
        self.switch_step = int(step) if step is not None else self.switch_step

    def _wrap_load_adapter(self) -> None:
        """``Trainer``'s resume calls ``model.load_adapter(checkpoint, name, is_trainable=True)``,
        which cannot load the rank-(r+s) fold into the rank-r model: a checkpoint holding
        ``tsd_dash.safetensors`` is read from it instead."""
        orig = getattr(self.model, "load_adapter", None)
        if orig is None:
            return
        dash = self

        def load_adapter(model_id, adapter_name=None, *args: Any, **kwargs: Any):
            name = adapter_name or dash.adapter_name
            d = Path(str(model_id))
            if name == dash.adapter_name and (d / DASH_FILE).is_file():
                dash.load_dash(d)
                return None
            r = orig(model_id, adapter_name, *args, **kwargs)
            if name == dash.adapter_name:
                # A checkpoint from before the switch: plain LoRA.
                with torch.no_grad():
                    for mod in dash.layers.values():
                        mod.tsd_dash.active.fill_(False)
                        mod.tsd_dash.delta_sigma.zero_()
                dash.switch_step = None
            return r

        self.model.load_adapter = load_adapter
