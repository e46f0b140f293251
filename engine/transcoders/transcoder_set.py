"""Transcoders: per-layer (PLT) and cross-layer (CLT) sets, in circuit-tracer's on-disk format.

A transcoder at layer l reads the MLP input x and predicts the MLP output:
``a = act(W_enc x + b_enc)``, ``y_hat = W_dec a + b_dec (+ W_skip x)``. A CLT has one encoder
per layer and, for a layer-l feature, one decoder per layer l' >= l; the MLP output at l' is
reconstructed from every feature at layers <= l'.

The on-disk layout is circuit-tracer's so that public transcoders load here and ours load
there (docs/guides/transcoders.md):

- PLT: ``layer_{i}.safetensors`` with ``W_enc`` (d_tc, d_model), ``W_dec`` (d_tc, d_model),
  ``b_enc`` (d_tc), ``b_dec`` (d_model), optional ``activation_function.threshold`` (d_tc) and
  ``W_skip`` (d_model, d_model).
- CLT: ``W_enc_{i}.safetensors`` with ``W_enc_{i}``, ``b_enc_{i}``, ``b_dec_{i}``, optional
  ``threshold_{i}`` (and ``W_skip_{i}``, ours), and ``W_dec_{i}.safetensors`` with ``W_dec_{i}``
  (d_tc, n_layers - i, d_model).
- ``config.yaml``: ``model_kind`` (``transcoder_set`` | ``cross_layer_transcoder``),
  ``feature_input_hook``, ``feature_output_hook``, ``model_name``, ``activation``, ``k`` (read
  by circuit-tracer) plus our own keys (``scan``, sizes, ``skip``) that circuit-tracer ignores.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from circuit_atlas.engine.models.adapters import DEFAULT_HOOKS, HookPointError, check_hook_points
from circuit_atlas.errors import CircuitAtlasError

KINDS = ("plt", "clt")
ACTIVATIONS = ("jumprelu", "relu", "topk")
MODEL_KINDS = {"plt": "transcoder_set", "clt": "cross_layer_transcoder"}
CONFIG_NAME = "config.yaml"
FORMAT = "circuit-atlas-transcoders/1"
DEFAULT_INPUT_HOOK, DEFAULT_OUTPUT_HOOK = DEFAULT_HOOKS  # where the features read and write


class TranscoderMismatchError(CircuitAtlasError, ValueError):
    """Transcoder shapes that do not fit the model (or each other); names the file and the mismatch."""


class TranscoderFileError(CircuitAtlasError, ValueError):
    """A transcoder file that is missing, corrupt or lacks the expected tensors; names the file."""


class TranscoderSet(nn.Module):
    """All layers' transcoders of one model, PLT or CLT, as trainable parameters.

    Parameters live in ``nn.ParameterList``s indexed by layer so the trainer can optimise them
    directly; ``threshold`` is None unless the activation is JumpReLU, ``W_skip`` None unless the
    set has skip connections.
    """

    def __init__(
        self,
        kind: str,
        n_layers: int,
        d_model: int,
        d_transcoder: int,
        *,
        activation: str = "relu",
        k: int | None = None,
        skip: bool = False,
        scan: str = "transcoders",
        feature_input_hook: str = DEFAULT_INPUT_HOOK,
        feature_output_hook: str = DEFAULT_OUTPUT_HOOK,
        model_name: str | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"transcoder kind must be one of {KINDS}, got {kind!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if activation == "topk" and (k is None or not 0 < int(k) <= d_transcoder):
            raise ValueError(f"topk needs 0 < k <= d_transcoder ({d_transcoder}), got k={k}")
        if n_layers < 1 or d_model < 1 or d_transcoder < 1:
            raise ValueError("n_layers, d_model and d_transcoder must be positive")
        check_hook_points(feature_input_hook, feature_output_hook)
        self.kind = kind
        self.n_layers = int(n_layers)
        self.d_model = int(d_model)
        self.d_transcoder = int(d_transcoder)
        self.activation = activation
        self.k = int(k) if activation == "topk" else None
        self.scan = scan
        self.feature_input_hook = feature_input_hook
        self.feature_output_hook = feature_output_hook
        self.model_name = model_name
        # file each layer's encoder came from, so a mismatch names it (set by the loader)
        self.source_files: list[str] | None = None
        L, d, F_ = self.n_layers, self.d_model, self.d_transcoder

        def plist(shape_of) -> nn.ParameterList:
            return nn.ParameterList(
                [nn.Parameter(torch.zeros(shape_of(l), dtype=dtype, device=device)) for l in range(L)]
            )

        self.W_enc = plist(lambda l: (F_, d))
        self.b_enc = plist(lambda l: (F_,))
        self.b_dec = plist(lambda l: (d,))
        if kind == "plt":
            self.W_dec = plist(lambda l: (F_, d))
        else:
            self.W_dec = plist(lambda l: (F_, L - l, d))
        self.threshold = plist(lambda l: (F_,)) if activation == "jumprelu" else None
        self.W_skip = plist(lambda l: (d, d)) if skip else None

    # ---- properties ----------------------------------------------------------------------
    @property
    def has_skip(self) -> bool:
        return self.W_skip is not None

    @property
    def device(self) -> torch.device:
        return self.b_enc[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self.b_enc[0].dtype

    def extra_repr(self) -> str:
        return (
            f"kind={self.kind}, n_layers={self.n_layers}, d_model={self.d_model}, "
            f"d_transcoder={self.d_transcoder}, activation={self.activation}, k={self.k}, "
            f"skip={self.has_skip}, scan={self.scan!r}"
        )

    # ---- the maths -----------------------------------------------------------------------
    def pre_activations(self, layer: int, x: Tensor) -> Tensor:
        """x (..., d_model) -> W_enc x + b_enc (..., d_tc)."""
        return F.linear(x, self.W_enc[layer], self.b_enc[layer])

    def activate(self, layer: int, pre: Tensor) -> Tensor:
        """The nonlinearity. JumpReLU keeps pre where pre > threshold (circuit-tracer's rule)."""
        if self.activation == "relu":
            return F.relu(pre)
        if self.activation == "jumprelu":
            assert self.threshold is not None
            return pre * (pre > self.threshold[layer]).to(pre.dtype)
        k = self.k
        assert k is not None
        vals, idx = pre.topk(k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, idx, F.relu(vals))

    def encode(self, layer: int, x: Tensor) -> Tensor:
        return self.activate(layer, self.pre_activations(layer, x))

    def decode(self, acts: list[Tensor], target_layer: int) -> Tensor:
        """MLP-output reconstruction at ``target_layer`` (with b_dec, without skip).

        PLT uses ``acts[target_layer]`` only; CLT sums the decoders of every layer <= target.
        """
        t = target_layer
        if self.kind == "plt":
            return acts[t] @ self.W_dec[t] + self.b_dec[t]
        out = self.b_dec[t]
        for l in range(t + 1):
            out = out + acts[l] @ self.W_dec[l][:, t - l, :]
        return out

    def skip(self, layer: int, x: Tensor) -> Tensor | None:
        """W_skip x, or None when the set has no skip connections."""
        if self.W_skip is None:
            return None
        return x @ self.W_skip[layer].T

    def encoder_vectors(self, layer: int, features: Tensor) -> Tensor:
        """Encoder rows (n, d_model) of the given features: a target's input direction."""
        return self.W_enc[layer][features]

    def decoder_vectors(self, source_layer: int, target_layer: int, features: Tensor) -> Tensor:
        """Decoder vectors (n, d_model) of ``source_layer`` features writing to ``target_layer``."""
        if target_layer < source_layer:
            raise ValueError(f"features at layer {source_layer} do not write to earlier layer {target_layer}")
        if self.kind == "plt":
            if target_layer != source_layer:
                raise ValueError(f"a per-layer transcoder's layer-{source_layer} features write only to layer {source_layer}")
            return self.W_dec[source_layer][features]
        return self.W_dec[source_layer][features, target_layer - source_layer, :]

    def forward(self, mlp_inputs: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """All layers at once: (activations, reconstructions including skip). Used by the trainer."""
        acts = [self.encode(l, x) for l, x in enumerate(mlp_inputs)]
        recons = []
        for l, x in enumerate(mlp_inputs):
            y = self.decode(acts, l)
            s = self.skip(l, x)
            recons.append(y if s is None else y + s)
        return acts, recons

    # ---- checks and files ----------------------------------------------------------------
    def check_fits(self, n_layers: int, d_model: int, source: str = "") -> None:
        """Raise TranscoderMismatchError unless these transcoders fit a model of this shape."""
        where = source or self.scan
        if self.n_layers != n_layers:
            files = ""
            if self.source_files:
                files = f" ({self.source_files[0]} .. {self.source_files[-1]})"
            raise TranscoderMismatchError(
                f"{where}: the transcoders cover {self.n_layers} layers{files}, the model has {n_layers}"
            )
        if self.d_model != d_model:
            parts = [p for p in (source, self.source_files[0] if self.source_files else "") if p] or [self.scan]
            raise TranscoderMismatchError(f"{': '.join(parts)}: W_enc has d_model {self.d_model}, the model has {d_model}")

    def config(self) -> dict[str, Any]:
        """The config.yaml contents: circuit-tracer's keys plus ours."""
        return {
            "model_kind": MODEL_KINDS[self.kind],
            "model_name": self.model_name,
            "feature_input_hook": self.feature_input_hook,
            "feature_output_hook": self.feature_output_hook,
            "activation": self.activation,
            "k": self.k,
            "scan": self.scan,
            "kind": self.kind,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "d_transcoder": self.d_transcoder,
            "skip": self.has_skip,
            "format": FORMAT,
        }

    def save(self, directory: str | Path) -> Path:
        """Write config.yaml and the safetensors files in circuit-tracer's layout; returns the dir."""
        from safetensors.torch import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        for old in list(out.glob("layer_*.safetensors")) + list(out.glob("W_enc_*.safetensors")) + list(
            out.glob("W_dec_*.safetensors")
        ):
            old.unlink()  # a re-save with fewer layers must not leave stale files behind

        def t(p: Tensor) -> Tensor:
            return p.detach().cpu().contiguous()

        for l in range(self.n_layers):
            if self.kind == "plt":
                d = {"W_enc": t(self.W_enc[l]), "W_dec": t(self.W_dec[l]), "b_enc": t(self.b_enc[l]), "b_dec": t(self.b_dec[l])}
                if self.threshold is not None:
                    d["activation_function.threshold"] = t(self.threshold[l])
                if self.W_skip is not None:
                    d["W_skip"] = t(self.W_skip[l])
                save_file(d, str(out / f"layer_{l}.safetensors"))
            else:
                enc = {f"W_enc_{l}": t(self.W_enc[l]), f"b_enc_{l}": t(self.b_enc[l]), f"b_dec_{l}": t(self.b_dec[l])}
                if self.threshold is not None:
                    enc[f"threshold_{l}"] = t(self.threshold[l])
                if self.W_skip is not None:
                    enc[f"W_skip_{l}"] = t(self.W_skip[l])
                save_file(enc, str(out / f"W_enc_{l}.safetensors"))
                save_file({f"W_dec_{l}": t(self.W_dec[l])}, str(out / f"W_dec_{l}.safetensors"))
        (out / CONFIG_NAME).write_text(yaml.safe_dump(self.config(), sort_keys=False))
        return out


# ---------------------------------------------------------------------------------------------
# Random sets for tests and benchmarks
# ---------------------------------------------------------------------------------------------


def random_transcoders(
    n_layers: int,
    d_model: int,
    d_transcoder: int,
    *,
    kind: str = "plt",
    activation: str = "relu",
    k: int | None = None,
    skip: bool = False,
    seed: int = 0,
    scan: str = "random",
) -> TranscoderSet:
    """A tiny random set. Encoder rows are unit vectors, so on inputs with unit-RMS coordinates
    (what an RMSNorm/LayerNorm output looks like) pre-activations are ~N(0, 1); the bias (ReLU)
    or threshold (JumpReLU) of ~0.85 makes roughly 20% of features fire. TopK defaults k to
    d_tc // 8."""
    if activation == "topk" and k is None:
        k = max(1, d_transcoder // 8)
    ts = TranscoderSet(kind, n_layers, d_model, d_transcoder, activation=activation, k=k, skip=skip, scan=scan)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for l in range(n_layers):
            w = torch.randn(d_transcoder, d_model, generator=g)
            ts.W_enc[l].copy_(w / w.norm(dim=-1, keepdim=True))
            jitter = 0.1 * torch.randn(d_transcoder, generator=g)
            if activation == "relu":
                ts.b_enc[l].copy_(-0.85 + jitter)
            else:
                ts.b_enc[l].copy_(jitter)
            if ts.threshold is not None:
                ts.threshold[l].copy_(0.85 + 0.1 * torch.rand(d_transcoder, generator=g))
            ts.W_dec[l].copy_(torch.randn(ts.W_dec[l].shape, generator=g) / math.sqrt(d_transcoder))
            ts.b_dec[l].copy_(0.02 * torch.randn(d_model, generator=g))
            if ts.W_skip is not None:
                ts.W_skip[l].copy_(0.1 * torch.randn(d_model, d_model, generator=g) / math.sqrt(d_model))
    return ts


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/[\w./-]+)?(@[\w./-]+)?$")


def load_transcoders(
    source: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> TranscoderSet:
    """Load a transcoder set from a directory with config.yaml (circuit-tracer layout), a
    directory of safetensors without config, GemmaScope ``.npz`` (a file or a directory of
    them), or a Hugging Face repo id (``owner/name[/subfolder][@revision]``) when online."""
    path = Path(source)
    if path.is_file():
        if path.suffix == ".npz":
            from circuit_atlas.engine.transcoders.gemmascope import load_gemmascope

            return load_gemmascope(path, device=device, dtype=dtype)
        if path.name == CONFIG_NAME:
            return _load_dir(path.parent, device=device, dtype=dtype)
        raise TranscoderFileError(f"{path}: not a transcoder directory, config.yaml or GemmaScope .npz file")
    if path.is_dir():
        return _load_dir(path, device=device, dtype=dtype)
    text = str(source)
    if _HUB_ID.match(text) and not text.startswith((".", "/")):
        return _load_hub(text, device=device, dtype=dtype)
    raise TranscoderFileError(f"{source}: no such transcoder directory or file")


def _load_hub(ref: str, *, device, dtype) -> TranscoderSet:
    """Download a hub repo (or subfolder) and load it like a local directory."""
    revision = None
    if "@" in ref:
        ref, revision = ref.split("@", 1)
    parts = ref.split("/")
    repo_id, sub = "/".join(parts[:2]), "/".join(parts[2:]) or None
    try:
        from huggingface_hub import snapshot_download

        patterns = ["config.yaml", "*.safetensors", "*.npz"]
        if sub:
            patterns = [f"{sub}/{p}" for p in patterns]
        local = Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except Exception as exc:  # offline, missing repo, gated ...
        raise TranscoderFileError(
            f"{ref}: not a local path, and downloading it from the Hugging Face hub failed ({type(exc).__name__}: {exc})"
        ) from exc
    tc = _load_dir(local / sub if sub else local, device=device, dtype=dtype)
    return tc


def _read_config(directory: Path) -> dict[str, Any]:
    cfg_path = directory / CONFIG_NAME
    if not cfg_path.is_file():
        return {}
    try:
        cfg = yaml.safe_load(cfg_path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise TranscoderFileError(f"{cfg_path}: not valid YAML ({exc})") from exc
    if cfg is None:
        return {}
    if not isinstance(cfg, dict):
        raise TranscoderFileError(f"{cfg_path}: expected a mapping of settings, got {type(cfg).__name__}")
    return cfg


def _layer_files(directory: Path, pattern: str) -> list[Path]:
    """Files ``{prefix}{i}.safetensors`` for i = 0..n-1; a gap is an error naming the missing file."""
    rx = re.compile(pattern.replace("{i}", r"(\d+)") + "$")
    found: dict[int, Path] = {}
    for p in directory.iterdir():
        m = rx.match(p.name)
        if m:
            found[int(m.group(1))] = p
    if not found:
        return []
    for i in range(max(found) + 1):
        if i not in found:
            raise TranscoderFileError(f"{directory / pattern.replace('{i}', str(i)).replace(chr(92), '')}: missing (layers 0..{max(found)} expected)")
    return [found[i] for i in range(len(found))]


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise TranscoderFileError(f"{path}: missing")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error type for corrupt headers/data
        raise TranscoderFileError(f"{path}: not a readable safetensors file ({exc})") from exc


def _need(d: dict[str, Tensor], key: str, path: Path) -> Tensor:
    if key not in d:
        raise TranscoderFileError(f"{path.name}: lacks tensor '{key}' (has {sorted(d)})")
    return d[key]


def _shape(t: Tensor, want: tuple[int, ...], name: str, path: Path) -> Tensor:
    if tuple(t.shape) != want:
        raise TranscoderMismatchError(f"{path.name}: {name} has shape {tuple(t.shape)}, expected {want}")
    return t


def _load_dir(directory: Path, *, device, dtype) -> TranscoderSet:
    cfg = _read_config(directory)
    try:  # before reading any weights: an unplaceable hook point is the config's error
        check_hook_points(cfg.get("feature_input_hook") or DEFAULT_INPUT_HOOK, cfg.get("feature_output_hook") or DEFAULT_OUTPUT_HOOK)
    except HookPointError as exc:
        raise HookPointError(f"{directory / CONFIG_NAME}: {exc}") from exc
    model_kind = cfg.get("model_kind")
    plt_files = _layer_files(directory, r"layer_{i}\.safetensors")
    clt_files = _layer_files(directory, r"W_enc_{i}\.safetensors")
    listed = cfg.get("transcoders")
    if model_kind not in (None, *MODEL_KINDS.values()):
        raise TranscoderFileError(
            f"{directory / CONFIG_NAME}: unknown model_kind {model_kind!r}; expected one of {sorted(MODEL_KINDS.values())}"
        )
    if listed and model_kind != "cross_layer_transcoder":
        files = [_resolve_listed(directory, p) for p in listed]
        if all(f.suffix == ".npz" for f in files):
            from circuit_atlas.engine.transcoders.gemmascope import load_gemmascope_files

            return load_gemmascope_files(files, cfg=cfg, device=device, dtype=dtype)
        plt_files = files
    if model_kind == "cross_layer_transcoder" or (model_kind is None and clt_files and not plt_files):
        if not clt_files:
            raise TranscoderFileError(f"{directory}: config.yaml says cross_layer_transcoder but there is no W_enc_0.safetensors")
        tc = _load_clt(directory, clt_files, cfg)
    elif plt_files:
        tc = _load_plt(plt_files, cfg)
    else:
        if any(directory.rglob("*.npz")):
            from circuit_atlas.engine.transcoders.gemmascope import load_gemmascope

            return load_gemmascope(directory, device=device, dtype=dtype)
        raise TranscoderFileError(
            f"{directory}: no transcoder files (expected layer_0.safetensors, W_enc_0.safetensors or GemmaScope .npz)"
        )
    tc.scan = str(cfg.get("scan") or cfg.get("scan_name") or directory.name)
    return tc.to(device=device, dtype=dtype)


def _resolve_listed(directory: Path, p: str) -> Path:
    if p.startswith("hf://"):
        try:
            from huggingface_hub import hf_hub_download

            rest = p[len("hf://") :].split("?")[0].split("/")
            return Path(hf_hub_download("/".join(rest[:2]), "/".join(rest[2:])))
        except Exception as exc:
            raise TranscoderFileError(f"{p}: could not download ({type(exc).__name__}: {exc})") from exc
    q = Path(p)
    return q if q.is_absolute() else directory / q


def _activation_from(cfg: dict[str, Any], has_threshold: bool, k_tensor: Tensor | None) -> tuple[str, int | None]:
    act = cfg.get("activation")
    k = cfg.get("k")
    if act == "topk" or (act is None and k_tensor is not None):
        k = int(k if k is not None else k_tensor.item())  # type: ignore[union-attr]
        return "topk", k
    if act == "relu":
        return "relu", None
    if act in (None, "jumprelu") and has_threshold:
        return "jumprelu", None
    if act == "jumprelu":
        raise TranscoderFileError("config.yaml says activation 'jumprelu' but the files hold no thresholds")
    if act is None:
        return "relu", None
    raise TranscoderFileError(f"config.yaml: unknown activation {act!r}; expected one of {ACTIVATIONS}")


def _new_set(kind: str, n_layers: int, d_model: int, d_tc: int, cfg: dict[str, Any], act: str, k, skip: bool, dtype) -> TranscoderSet:
    with torch.device("meta"):
        tc = TranscoderSet(
            kind, n_layers, d_model, d_tc, activation=act, k=k, skip=skip,
            feature_input_hook=cfg.get("feature_input_hook") or DEFAULT_INPUT_HOOK,
            feature_output_hook=cfg.get("feature_output_hook") or DEFAULT_OUTPUT_HOOK,
            model_name=cfg.get("model_name"), dtype=dtype,
        )
    return tc


def _progress(items: list[Path], desc: str):
    """A progress bar over layers, shown only for sets big enough to take a while to read."""
    from tqdm import tqdm

    big = len(items) >= 8 and sum(p.stat().st_size for p in items if p.exists()) > 256 * 2**20
    return tqdm(items, desc=desc, unit="layer", leave=False, disable=not big)


def _flat(t: Tensor, n: int) -> Tensor:
    """Thresholds saved as (1, d_tc) (circuit-tracer's CLT keeps them so in memory) -> (d_tc,)."""
    return t.reshape(-1) if t.numel() == n and t.dim() > 1 else t


def _assign(plist: nn.ParameterList, l: int, t: Tensor) -> None:
    plist[l] = nn.Parameter(t.contiguous())


def _load_plt(files: list[Path], cfg: dict[str, Any]) -> TranscoderSet:
    first = _read_safetensors(files[0])
    w_enc0 = _need(first, "W_enc", files[0])
    if w_enc0.dim() != 2:
        raise TranscoderMismatchError(f"{files[0].name}: W_enc has shape {tuple(w_enc0.shape)}, expected (d_transcoder, d_model)")
    d_tc, d_model = w_enc0.shape
    has_thr = "activation_function.threshold" in first
    act, k = _activation_from(cfg, has_thr, first.get("k"))
    skip = "W_skip" in first
    tc = _new_set("plt", len(files), d_model, d_tc, cfg, act, k, skip, w_enc0.dtype)
    for l, f in enumerate(_progress(files, "loading transcoders")):
        d = first if l == 0 else _read_safetensors(f)
        _assign(tc.W_enc, l, _shape(_need(d, "W_enc", f), (d_tc, d_model), "W_enc", f))
        _assign(tc.W_dec, l, _shape(_need(d, "W_dec", f), (d_tc, d_model), "W_dec", f))
        _assign(tc.b_enc, l, _shape(_need(d, "b_enc", f), (d_tc,), "b_enc", f))
        _assign(tc.b_dec, l, _shape(_need(d, "b_dec", f), (d_model,), "b_dec", f))
        if tc.threshold is not None:
            thr = _flat(_need(d, "activation_function.threshold", f), d_tc)
            _assign(tc.threshold, l, _shape(thr, (d_tc,), "activation_function.threshold", f))
        if tc.W_skip is not None:
            _assign(tc.W_skip, l, _shape(_need(d, "W_skip", f), (d_model, d_model), "W_skip", f))
        elif "W_skip" in d:
            raise TranscoderFileError(f"{f.name}: has W_skip but {files[0].name} does not; every layer must agree")
    tc.source_files = [f.name for f in files]
    return tc


def _load_clt(directory: Path, enc_files: list[Path], cfg: dict[str, Any]) -> TranscoderSet:
    L = len(enc_files)
    first = _read_safetensors(enc_files[0])
    w_enc0 = _need(first, "W_enc_0", enc_files[0])
    if w_enc0.dim() != 2:
        raise TranscoderMismatchError(f"{enc_files[0].name}: W_enc_0 has shape {tuple(w_enc0.shape)}, expected (d_transcoder, d_model)")
    d_tc, d_model = w_enc0.shape
    act, k = _activation_from(cfg, "threshold_0" in first, None)
    skip = "W_skip_0" in first
    tc = _new_set("clt", L, d_model, d_tc, cfg, act, k, skip, w_enc0.dtype)
    for l, f in enumerate(_progress(enc_files, "loading transcoders")):
        d = first if l == 0 else _read_safetensors(f)
        _assign(tc.W_enc, l, _shape(_need(d, f"W_enc_{l}", f), (d_tc, d_model), f"W_enc_{l}", f))
        _assign(tc.b_enc, l, _shape(_need(d, f"b_enc_{l}", f), (d_tc,), f"b_enc_{l}", f))
        _assign(tc.b_dec, l, _shape(_need(d, f"b_dec_{l}", f), (d_model,), f"b_dec_{l}", f))
        if tc.threshold is not None:
            _assign(tc.threshold, l, _shape(_flat(_need(d, f"threshold_{l}", f), d_tc), (d_tc,), f"threshold_{l}", f))
        if tc.W_skip is not None:
            _assign(tc.W_skip, l, _shape(_need(d, f"W_skip_{l}", f), (d_model, d_model), f"W_skip_{l}", f))
        fd = directory / f"W_dec_{l}.safetensors"
        dd = _read_safetensors(fd)
        _assign(tc.W_dec, l, _shape(_need(dd, f"W_dec_{l}", fd), (d_tc, L - l, d_model), f"W_dec_{l}", fd))
    tc.source_files = [f.name for f in enc_files]
    return tc
