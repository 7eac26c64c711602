"""GPU memory for training or serving a decoder LLM: weights, gradients, optimizer state, adapter, activations.

Every part is a stated formula (see `estimate`'s `formula` strings). GB = 10^9 bytes, as the papers count.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import BadRequest

BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "int8": 1.0, "nf4": 0.5}
METHODS = ("full", "lora", "qlora", "inference")
METHOD_NAMES = {"full": "full fine-tuning", "lora": "LoRA", "qlora": "QLoRA", "inference": "inference"}
# LLaMA (1) sizes from Touvron et al. 2023, Table 2; 70B is Llama 2 (grouped-query attention, 8 KV heads).
PRESETS = {
    "7b": dict(layers=32, hidden=4096, vocab=32000, ffn=11008, heads=32, kv_heads=32, gated=True),
    "13b": dict(layers=40, hidden=5120, vocab=32000, ffn=13824, heads=40, kv_heads=40, gated=True),
    "33b": dict(layers=60, hidden=6656, vocab=32000, ffn=17920, heads=52, kv_heads=52, gated=True),
    "65b": dict(layers=80, hidden=8192, vocab=32000, ffn=22016, heads=64, kv_heads=64, gated=True),
    "70b": dict(layers=80, hidden=8192, vocab=32000, ffn=28672, heads=64, kv_heads=8, gated=True),
    # GPT-3 175B (Brown et al. 2020): plain 4h GELU MLP, for checking LoRA's published figure.
    "gpt3-175b": dict(layers=96, hidden=12288, vocab=50257, ffn=49152, heads=96, kv_heads=96, gated=False),
}
MODULES = ("q", "k", "v", "o", "gate", "up", "down")
# NF4 with double quantization (Dettmers et al. 2023): one fp8 constant per 64 weights, one fp32 per 256 of those.
NF4_DQ_BITS = 4 + 8 / 64 + 32 / (64 * 256)


@dataclass
class Model:
    layers: int
    hidden: int
    vocab: int
    ffn: int | None = None  # MLP width; 4 x hidden when not given
    heads: int | None = None  # attention heads; hidden / 128 when not given
    kv_heads: int | None = None  # heads when not given (no grouped-query attention)
    gated: bool = False  # SwiGLU MLP (gate, up, down) instead of (up, down)

    def __post_init__(self):
        for name in ("layers", "hidden", "vocab"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise BadRequest(f"model.{name} must be a positive integer")
        self.ffn = self.ffn or 4 * self.hidden
        self.heads = self.heads or max(1, self.hidden // 128)
        self.kv_heads = self.kv_heads or self.heads

    @property
    def kv_dim(self) -> int:
        return self.hidden // self.heads * self.kv_heads

    def shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer of one block."""
        h, f = self.hidden, self.ffn
        s = {"q": (h, h), "k": (h, self.kv_dim), "v": (h, self.kv_dim), "o": (h, h), "up": (h, f), "down": (f, h)}
        if self.gated:
            s["gate"] = (h, f)
        return s

    def linear_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.shapes().values())

    def embedding_params(self) -> int:
        return 2 * self.vocab * self.hidden  # input embedding and untied output head


@dataclass
class Part:
    bytes: float
    formula: str

    def as_dict(self) -> dict:
        return {"gb": round(self.bytes / 1e9, 2), "bytes": int(self.bytes), "formula": self.formula}


@dataclass
class Estimate:
    method: str
    params: int
    trainable: int
    parts: dict[str, Part] = field(default_factory=dict)
    assumptions: list[str] = field(default_factory=list)

    @property
    def total_gb(self) -> float:
        return sum(p.bytes for p in self.parts.values()) / 1e9

    def as_dict(self) -> dict:
        return {"method": self.method, "params": self.params, "trainable_params": self.trainable,
                "parts": {k: p.as_dict() for k, p in self.parts.items()}, "total_gb": round(self.total_gb, 2),
                "assumptions": self.assumptions}

    def text(self, model_name: str | None = None) -> str:
        """Plain sentences, one per part: what chat cites as a source."""
        name = model_name or f"a {self.params / 1e9:.1f}B-parameter model"
        out = [f"GPU memory estimate for {METHOD_NAMES[self.method]} of {name} ({self.params / 1e9:.1f}B parameters): "
               f"{self.total_gb:.1f} GB in total ({self.trainable / 1e6:.1f}M trainable parameters)."]
        out += [f"{k.capitalize()}: {p.bytes / 1e9:.1f} GB = {p.formula}." for k, p in self.parts.items()]
        out += [a if a.endswith(".") else a + "." for a in self.assumptions]
        return "\n".join(out)


def model_from(preset: str | None = None, **dims) -> Model:
    """Example: model_from('65b') -> Model(layers=80, hidden=8192, ...); model_from(layers=2, hidden=64, vocab=100)."""
    if preset:
        key = str(preset).lower().replace("llama-", "").replace("llama", "").strip("- ")
        if key not in PRESETS:
            raise BadRequest(f"unknown model preset {preset!r}; known: {', '.join(PRESETS)}")
        return Model(**PRESETS[key])
    if not {"layers", "hidden", "vocab"} <= {k for k, v in dims.items() if v is not None}:
        raise BadRequest("give a model preset, or its layers, hidden size and vocabulary")
    return Model(**{k: v for k, v in dims.items() if v is not None})


def estimate(model: Model, method: str, precision: str = "bf16", batch_size: int = 1, seq_len: int = 512,
             lora_rank: int = 16, lora_modules: list[str] | None = None, checkpointing: bool = True,
             adam_bytes: int = 4) -> Estimate:
    """Memory of one training step (or of serving), split into parts; each part states its formula.

    Example: estimate(model_from('65b'), 'full').total_gb -> ~783 (the QLoRA paper: "more than 780 GB").
    """
    if method not in METHODS:
        raise BadRequest(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    if precision not in BYTES:
        raise BadRequest(f"precision must be one of {', '.join(BYTES)}, not {precision!r}")
    if adam_bytes not in (1, 2, 4):
        raise BadRequest("adam_bytes (bytes per Adam moment) must be 1, 2 or 4")
    for name, v in (("batch_size", batch_size), ("seq_len", seq_len), ("lora_rank", lora_rank)):
        if not isinstance(v, int) or v < 1:
            raise BadRequest(f"{name} must be a positive integer")
    modules = list(lora_modules or MODULES)
    bad = [m for m in modules if m not in MODULES]
    if bad:
        raise BadRequest(f"unknown LoRA modules {bad}; choose from {', '.join(MODULES)}")
    lin, emb = model.linear_params(), model.embedding_params()
    params = lin + emb
    L, h, s, b = model.layers, model.hidden, seq_len, batch_size
    est = Estimate(method, params, 0)
    parts = est.parts

    if method == "qlora":
        parts["weights"] = Part(lin * NF4_DQ_BITS / 8 + emb * 2,
                                f"{lin / 1e9:.2f}B linear weights x {NF4_DQ_BITS:.3f} bits (NF4 + double-quantized constants) / 8 "
                                f"+ {emb / 1e9:.2f}B embedding weights x 2 bytes (kept in 16-bit)")
    else:
        wb = BYTES[precision]
        parts["weights"] = Part(params * wb, f"{params / 1e9:.2f}B parameters x {wb:g} bytes ({precision})")

    if method == "inference":
        kv = 2 * L * model.kv_dim * s * b * 2
        parts["activations"] = Part(kv, f"KV cache: 2 (K and V) x {L} layers x {model.kv_dim} KV width x {s} tokens x batch {b} x 2 bytes")
        est.assumptions.append("Inference only: no gradients or optimizer state; framework workspace is not counted")
        return est

    act_bytes = 2  # activations in 16-bit (bf16 autocast), also under QLoRA's bf16 compute dtype
    per_layer_full = s * b * h * (34 + 5 * (model.heads or 1) * s / h)  # Korthikanti et al. 2022, 16-bit, no recompute
    if checkpointing:
        act = L * s * b * h * act_bytes + per_layer_full
        act_f = (f"checkpointing: {L} layers x {s} tokens x batch {b} x {h} hidden x 2 bytes (one saved input per layer) "
                 f"+ one layer recomputed, {s}·{b}·{h}·(34 + 5·{model.heads}·{s}/{h}) bytes")
    else:
        act = L * per_layer_full
        act_f = f"no checkpointing: {L} layers x {s}·{b}·{h}·(34 + 5·{model.heads}·{s}/{h}) bytes (Korthikanti et al.)"

    if method == "full":
        gb = BYTES[precision]
        est.trainable = params
        parts["gradients"] = Part(params * gb, f"{params / 1e9:.2f}B parameters x {gb:g} bytes ({precision} gradients)")
        parts["optimizer"] = Part(params * 2 * adam_bytes, f"Adam: 2 moments x {adam_bytes} bytes x {params / 1e9:.2f}B parameters")
        parts["activations"] = Part(act, act_f)
        est.assumptions.append("Full fine-tuning with Adam; no fp32 master copy of the weights (add 4 bytes per "
                               "parameter for one), no sharding, framework workspace not counted")
        return est

    shapes = model.shapes()
    used = [m for m in modules if m in shapes]
    adapter = L * sum(lora_rank * (shapes[m][0] + shapes[m][1]) for m in used)
    est.trainable = adapter
    parts["gradients"] = Part(adapter * 2, f"{adapter / 1e6:.1f}M adapter parameters x 2 bytes (the frozen base has none)")
    parts["optimizer"] = Part(adapter * 2 * adam_bytes, f"Adam: 2 moments x {adam_bytes} bytes x {adapter / 1e6:.1f}M adapter parameters")
    parts["adapter"] = Part(adapter * 2, f"{L} layers x rank {lora_rank} x (in + out) of {', '.join(used)} = "
                                        f"{adapter / 1e6:.1f}M parameters x 2 bytes")
    parts["activations"] = Part(act, act_f)
    est.assumptions.append(f"{'QLoRA: 4-bit NF4 base with double quantization, bf16 compute' if method == 'qlora' else 'LoRA on a frozen ' + precision + ' base'}; "
                           "adapter weights and gradients in 16-bit, Adam moments in fp32; framework workspace and "
                           "paged-optimizer spikes not counted")
    return est


PUBLISHED = [
    # (what, published GB, how this calculator is asked, the published claim)
    ("QLoRA, LLaMA 65B on one 48 GB GPU", 48.0, dict(preset="65b", method="qlora", lora_rank=64, batch_size=1, seq_len=512),
     "Dettmers et al. 2023: QLoRA finetunes a 65B model on a single 48 GB GPU"),
    ("Full 16-bit fine-tuning of LLaMA 65B", 780.0, dict(preset="65b", method="full", precision="bf16", batch_size=1, seq_len=512),
     "Dettmers et al. 2023: regular 16-bit finetuning of LLaMA 65B needs more than 780 GB"),
    ("GPT-3 175B, full fine-tuning with Adam", 1200.0, dict(preset="gpt3-175b", method="full", precision="fp16", batch_size=1, seq_len=512),
     "Hu et al. 2021: 1.2 TB of training memory for full fine-tuning"),
    ("GPT-3 175B, full, Adam moments in 16-bit", 1200.0, dict(preset="gpt3-175b", method="full", precision="fp16", adam_bytes=2,
                                                              batch_size=1, seq_len=512),
     "the same figure, counting the optimizer state as the paper evidently did"),
    ("GPT-3 175B, LoRA r=4 on W_q, W_v", 350.0, dict(preset="gpt3-175b", method="lora", precision="fp16", lora_rank=4,
                                                      lora_modules=["q", "v"], batch_size=1, seq_len=512),
     "Hu et al. 2021: 350 GB with LoRA"),
]


def compare_published() -> list[dict]:
    """This calculator beside the published figures; `ratio` = ours / published."""
    out = []
    for what, gb, ask, claim in PUBLISHED:
        ask = dict(ask)
        est = estimate(model_from(ask.pop("preset")), ask.pop("method"), **ask)
        out.append({"what": what, "published_gb": gb, "ours_gb": round(est.total_gb, 1),
                    "ratio": round(est.total_gb / gb, 2), "claim": claim})
    return out
