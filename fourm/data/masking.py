"""4M multimodal masking: Dirichlet-mixture token budgets, random image-token masks, span masking for sequences.

One call masks a whole batch with vectorised torch ops (only tokenization loops over samples). Per sample:

1. pick a mixture component (``sampling_weights`` or uniform) and the input / target token totals;
2. draw modality fractions from that component's Dirichlet (input alphas, then target alphas), turn them into integer
   budgets that sum to the total, never give tokens to a modality whose alpha is 0, and respect per-modality
   ``min_tokens`` / ``max_tokens`` (overflow goes to the other modalities of the component);
3. image modalities: a random set of ``input`` grid positions, and a disjoint random set of ``target`` positions;
   sequences (caption, det): span masking with sentinels [S_1], [S_2], ... (``keep`` scheme random / all / binary);
   a sequence given as a list of strings (one chunk per box) is masked chunk by chunk; embedding sequences
   (``t5_caption``, input-only): a random set of ``input`` positions among each row's valid embeddings.

The output is the official FourM batch format, ``mod_dict[mod] = {"tensor", "input_mask", "target_mask",
"decoder_attention_mask"}`` where True in a mask means *not used*:

* image / image tokens: ``tensor`` passed through, masks ``[B, N]`` bool, ``decoder_attention_mask`` ``[B, N]`` int32
  holding the number of target tokens at the first target position (0 elsewhere);
* sequences: ``tensor`` ``[B, 2 * (max_tokens + 1)]`` int32: the masked input sequence at ``[0, len)``, the target
  sequence at ``[input_budget, input_budget + len)``, PAD elsewhere; ``decoder_attention_mask`` is 1 on target positions;
* embedding sequences: ``tensor`` ``[B, max_length, D]`` float, zero-padded; padding is never an input.

Alphas configs use the official YAML format (modality -> ``input_alphas`` / ``target_alphas`` / ``keep`` lists, one
value per component, optionally wrapped as ``{sampling_weights: [...], alphas_mixture: {...}}``); the mixtures shipped
with this repo live in ``fourm/data/alphas/`` and load by name, e.g. ``load_alphas("mix_mod7_all2all_rgb2all_a0.5")``.
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import yaml

from fourm import modalities as registry
from fourm.data.text import special_ids

ALPHAS_DIR = Path(__file__).with_name("alphas")
KEEP_SCHEMES = ("random", "all", "binary")
_MOD_KEYS = {"input_alphas", "target_alphas", "keep"}


# --- alphas mixtures -------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModalityAlphas:
    input_alphas: tuple[float, ...]
    target_alphas: tuple[float, ...]
    keep: tuple[str, ...]  # one keep scheme per component (used by sequences only)


@dataclasses.dataclass(frozen=True)
class AlphasMixture:
    """A mixture of Dirichlets over modalities: per modality one input and one target alpha per component."""

    alphas: dict[str, ModalityAlphas]
    sampling_weights: tuple[float, ...] | None = None
    source: str = "<dict>"

    @property
    def num_components(self) -> int:
        return len(next(iter(self.alphas.values())).input_alphas)

    @property
    def modalities(self) -> list[str]:
        return list(self.alphas)

    def input_matrix(self, names: Sequence[str]) -> torch.Tensor:
        """``[components, len(names)]`` float64 input alphas."""
        return torch.tensor([self.alphas[n].input_alphas for n in names], dtype=torch.float64).T.contiguous()

    def target_matrix(self, names: Sequence[str]) -> torch.Tensor:
        return torch.tensor([self.alphas[n].target_alphas for n in names], dtype=torch.float64).T.contiguous()

    def to_dict(self) -> dict:
        """The official YAML structure (wrapped form when there are sampling weights)."""
        mix = {
            n: {"input_alphas": list(a.input_alphas), "target_alphas": list(a.target_alphas), "keep": list(a.keep)}
            for n, a in self.alphas.items()
        }
        if self.sampling_weights is None:
            return mix
        return {"sampling_weights": list(self.sampling_weights), "alphas_mixture": mix}


def shipped_alphas() -> list[str]:
    """Names of the alphas mixtures in ``fourm/data/alphas/`` (load them with ``load_alphas(name)``)."""
    return sorted(p.stem for p in ALPHAS_DIR.glob("*.yaml"))


def _resolve(spec: str | os.PathLike) -> Path:
    path = Path(spec)
    if path.is_file():
        return path
    shipped = ALPHAS_DIR / f"{path.name.removesuffix('.yaml')}.yaml"
    if str(spec) == path.name and shipped.is_file():
        return shipped
    raise FileNotFoundError(
        f"alphas config {spec!s} not found: give a YAML path or one of the shipped mixtures {shipped_alphas()}"
    )


def _as_list(value: Any) -> list | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value]
    return list(value) if isinstance(value, (list, tuple)) else None


def load_alphas(spec: str | os.PathLike | Mapping | AlphasMixture) -> AlphasMixture:
    """Load and validate an alphas mixture: a YAML path, a shipped mixture name, or the parsed dict.

    Every problem (unknown modality, wrong number of values, negative / non-finite alphas, a component whose alphas
    are all zero, a target alpha on an input-only modality, bad keep scheme or sampling weights) is reported in one
    ValueError that names the file and the modality.
    """
    if isinstance(spec, AlphasMixture):
        return spec
    if isinstance(spec, Mapping):
        raw, source = spec, "<dict>"
    else:
        path = _resolve(spec)
        source = str(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ValueError(f"alphas config {source}: not valid YAML: {e}") from None
    where = f"alphas config {source}"
    if not isinstance(raw, Mapping) or not raw:
        raise ValueError(f"{where}: expected a mapping modality -> {{input_alphas, target_alphas[, keep]}}")

    weights = None
    if "alphas_mixture" in raw or "sampling_weights" in raw:
        extra = set(raw) - {"alphas_mixture", "sampling_weights"}
        if "alphas_mixture" not in raw or extra:
            raise ValueError(
                f"{where}: the wrapped form has exactly two keys, sampling_weights and alphas_mixture "
                f"(got {sorted(raw)})"
            )
        weights, raw = raw.get("sampling_weights"), raw["alphas_mixture"]
        if not isinstance(raw, Mapping) or not raw:
            raise ValueError(f"{where}: alphas_mixture must map modality -> {{input_alphas, target_alphas[, keep]}}")

    problems: list[str] = []
    num = None
    ref = None
    parsed: dict[str, ModalityAlphas] = {}
    for name, entry in raw.items():
        try:
            mod = registry.get(name)
        except KeyError as e:
            problems.append(f"modality {name!r}: {e.args[0]}")
            continue
        if not isinstance(entry, Mapping):
            problems.append(f"modality {name!r}: expected {{input_alphas: [...], target_alphas: [...]}}, got {entry!r}")
            continue
        unknown = set(entry) - _MOD_KEYS
        if unknown:
            problems.append(f"modality {name!r}: unknown keys {sorted(unknown)} (allowed: {sorted(_MOD_KEYS)})")
        lists = {}
        for key in ("input_alphas", "target_alphas"):
            values = _as_list(entry.get(key))
            if values is None:
                problems.append(f"modality {name!r}: {key} must be a list of numbers (one per component)")
                continue
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                problems.append(f"modality {name!r}: {key} must hold numbers, got {values}")
                continue
            if num is None:
                num, ref = len(values), f"{name}.{key}"
            if len(values) != num:
                problems.append(
                    f"modality {name!r}: {key} has {len(values)} values, expected {num} "
                    f"(one per mixture component, as {ref})"
                )
            bad = [v for v in values if not math.isfinite(v) or v < 0]
            if bad:
                problems.append(f"modality {name!r}: {key} must be finite and >= 0, got {bad}")
            lists[key] = tuple(float(v) for v in values)
        if "target_alphas" in lists and not mod.has_decoder and any(v > 0 for v in lists["target_alphas"]):
            problems.append(f"modality {name!r} is input-only (kind {mod.kind}): set its target_alphas to 0")
        keep = _as_list(entry.get("keep", ["random"] * (num or 1)))
        if keep is None or any(k not in KEEP_SCHEMES for k in keep):
            problems.append(f"modality {name!r}: keep must be a list of {KEEP_SCHEMES}, got {entry.get('keep')!r}")
        elif num is not None and len(keep) != num:
            problems.append(f"modality {name!r}: keep has {len(keep)} values, expected {num} (one per component)")
        if len(lists) == 2 and keep is not None:
            parsed[name] = ModalityAlphas(lists["input_alphas"], lists["target_alphas"], tuple(keep))

    if not problems:
        for key in ("input_alphas", "target_alphas"):
            for c in range(num):
                if all(getattr(a, key)[c] == 0 for a in parsed.values()):
                    problems.append(f"component {c}: every modality has {key}[{c}] = 0 (a Dirichlet needs one > 0)")
    if weights is not None:
        w = _as_list(weights)
        if (
            w is None
            or len(w) != num
            or not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in w)
            or sum(w) <= 0
        ):
            problems.append(f"sampling_weights must be {num} finite numbers >= 0 with a positive sum, got {weights!r}")
        else:
            weights = tuple(float(v) for v in w)
    if problems:
        raise ValueError(f"{where}:\n  " + "\n  ".join(problems))
    return AlphasMixture(parsed, weights, source)


# --- sampling helpers (all draws come from the caller's generator) ----------------------------------------------


def sample_dirichlet(alphas: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Dirichlet samples, one per row of ``alphas`` ``[..., K]``; an alpha of exactly 0 gives exactly 0.

    Gamma variates by Marsaglia-Tsang in log space (alpha < 1 boosted as Gamma(a + 1) * U^(1/a)), so tiny alphas
    such as 0.01 neither underflow to all-zero rows nor need a retry. Unlike ``torch.distributions`` this takes a
    generator, which keeps data-loading workers reproducible.
    """
    a = alphas.to(torch.float64)
    boost = a < 1
    shape = torch.where(boost, a + 1, a)
    d = (shape - 1.0 / 3.0)[..., None]
    c = 1.0 / torch.sqrt(9.0 * d)
    # several proposals per variate at once (each accepted with p > 0.95); the loop only runs for the rare rest
    log_g = torch.empty_like(a)
    todo = torch.ones_like(a, dtype=torch.bool)
    proposals = 4
    while True:
        x = torch.randn((*a.shape, proposals), generator=generator, dtype=torch.float64)
        u = torch.rand((*a.shape, proposals), generator=generator, dtype=torch.float64)
        v = (1 + c * x) ** 3
        ok = (v > 0) & (torch.log(u) < 0.5 * x * x + d - d * v + d * torch.log(v.clamp_min(1e-300)))
        first = ok.to(torch.uint8).argmax(-1, keepdim=True)
        value = torch.log(d * v.clamp_min(1e-300)).gather(-1, first).squeeze(-1)
        take = todo & ok.any(-1)
        log_g = torch.where(take, value, log_g)
        todo = todo & ~take
        if not todo.any():
            break
    u = torch.rand(a.shape, generator=generator, dtype=torch.float64).clamp_min(1e-300)
    log_g = torch.where(boost, log_g + torch.log(u) / a.clamp_min(1e-300), log_g)
    log_g = torch.where(a > 0, log_g, torch.full_like(log_g, -math.inf))
    return torch.softmax(log_g, dim=-1)


def _spread(amount: torch.Tensor, weights: torch.Tensor, room: torch.Tensor, generator) -> torch.Tensor:
    """Split integer ``amount`` ``[B]`` over ``[B, K]`` slots in proportion to ``weights``, capped by ``room``.

    Each pass gives every slot the floor of its share and the leftover units by systematic sampling on the
    fractional parts (so the expected count of a slot is exactly its share); what capped slots cannot take is
    spread again over the others. Slots with weight 0 never get anything.
    """
    add = torch.zeros_like(room)
    amount = amount.clone()
    w = weights.to(torch.float64)
    for _ in range(2 * room.shape[1] + 4):
        free = room - add
        elig = (w > 0) & (free > 0) & (amount[:, None] > 0)
        we = torch.where(elig, w, 0.0)
        total_w = we.sum(1, keepdim=True)
        if not (total_w > 0).any():
            break
        share = amount[:, None] * we / total_w.clamp_min(1e-300)
        fl = share.floor().long()
        take = torch.minimum(fl, free)
        frac = torch.where(elig & (fl < free), share - fl, 0.0)
        add += take
        amount -= take.sum(1)
        # systematic sampling: slot i gets a unit when a point of {u, u+1, ...} falls in its cumulative interval
        u = torch.rand(amount.shape, generator=generator, dtype=torch.float64)[:, None]
        cum = frac.cumsum(1)
        hits = torch.floor(cum + 1 - u) - torch.floor(cum - frac + 1 - u)
        hits = hits.long().clamp(0, 1)
        over = hits.cumsum(1) > amount[:, None]  # float round-off must never overshoot the amount
        hits = torch.where(over, 0, hits)
        add += hits
        amount -= hits.sum(1)
    return add


def _allocate(total, probs, present, cap, min_tokens, generator) -> torch.Tensor:
    """Integer budgets ``[B, K]``: ``min_tokens`` first for present modalities, the rest spread by ``probs``."""
    base = torch.where(present, torch.minimum(min_tokens.expand_as(cap), cap), 0)
    rest = (total - base.sum(1)).clamp_min(0)
    return base + _spread(rest, torch.where(present, probs, 0.0), (cap - base).clamp_min(0), generator)


class Budgets(NamedTuple):
    """Per-sample token budgets; ``input`` / ``target`` are ``[B, M]`` int64 in the masking's modality order."""

    component: torch.Tensor  # [B] mixture component drawn
    num_input: torch.Tensor  # [B] input token total drawn
    num_target: torch.Tensor  # [B]
    input: torch.Tensor
    target: torch.Tensor


def _is_ids(x) -> bool:
    """Already-tokenized ids: a 1-D integer tensor or a non-empty list/tuple of ints."""
    if torch.is_tensor(x):
        return x.dim() == 1 and not x.is_floating_point()
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(v, int) and not isinstance(v, bool) for v in x)


def _token_range(value, what: str) -> tuple[int, int]:
    lo, hi = (value, value) if isinstance(value, int) else tuple(value)
    if not (0 <= lo <= hi):
        raise ValueError(
            f"UnifiedMasking: {what} must be an int >= 0 or a range (lo, hi) with 0 <= lo <= hi, got {value}"
        )
    return int(lo), int(hi)


# --- the masking -----------------------------------------------------------------------------------------------


class MissingTextTokenizer(ValueError):
    """Sequence modalities were asked for without the text tokenizer they need (every other check ran before)."""


class UnifiedMasking:
    """Mask a batch of modalities the 4M way (see the module docstring).

    Args:
        modalities: names from :mod:`fourm.modalities`, in the order of the output dict.
        alphas: an :class:`AlphasMixture`, a YAML path, a shipped mixture name, or a dict in the official format.
        num_input_tokens / num_target_tokens: total per sample; an int, or a range ``(lo, hi)`` drawn uniformly.
        text_tokenizer: a ``tokenizers.Tokenizer`` with the 4M special tokens (needed for sequence modalities).
        max_tokens / min_tokens: per-modality overrides (default: the registry's ``num_tokens`` / ``min_tokens``).
        keep_prob_decay: factor applied to a sequence's keep probability while its input exceeds the budget.
    """

    def __init__(
        self,
        modalities: Sequence[str],
        alphas,
        num_input_tokens: int | tuple[int, int],
        num_target_tokens: int | tuple[int, int],
        text_tokenizer=None,
        *,
        max_tokens: Mapping[str, int] | None = None,
        min_tokens: Mapping[str, int] | None = None,
        keep_prob_decay: float = 0.9,
    ):
        self.mods = registry.check(list(modalities), where="UnifiedMasking modalities")
        self.names = [m.name for m in self.mods]
        self.alphas = load_alphas(alphas)
        missing = [n for n in self.names if n not in self.alphas.alphas]
        if missing:
            raise ValueError(
                f"alphas config {self.alphas.source}: no alphas for modalities {missing}; "
                f"add them (input_alphas/target_alphas, one value per component) or drop them from the modality list"
            )
        self.input_range = _token_range(num_input_tokens, "num_input_tokens")
        self.target_range = _token_range(num_target_tokens, "num_target_tokens")
        self.in_alpha = self.alphas.input_matrix(self.names)  # [C, M]
        self.tg_alpha = self.alphas.target_matrix(self.names)
        checks = (("input_alphas", self.in_alpha, self.input_range), ("target_alphas", self.tg_alpha, self.target_range))
        for key, mat, rng in checks:
            dead = [c for c in range(mat.shape[0]) if rng[1] > 0 and not (mat[c] > 0).any()]
            if dead:
                raise ValueError(
                    f"alphas config {self.alphas.source}: components {dead} give every modality of {self.names} "
                    f"{key} 0, so their tokens could go nowhere; add a modality with a positive alpha there"
                )
        overrides = dict(max_tokens or {})
        mins = dict(min_tokens or {})
        unknown = sorted((set(overrides) | set(mins)) - set(self.names))
        if unknown:
            raise ValueError(f"UnifiedMasking: max_tokens/min_tokens name modalities {unknown} not in {self.names}")
        self.max_tokens = torch.tensor([overrides.get(m.name, m.num_tokens) for m in self.mods], dtype=torch.long)
        self.min_tokens = torch.tensor([mins.get(m.name, m.min_tokens) for m in self.mods], dtype=torch.long)
        for m, mx in zip(self.mods, self.max_tokens.tolist()):
            limit = m.max_length if m.kind in ("sequence", "embedding_sequence") else m.grid * m.grid
            if not 0 < mx <= limit:
                raise ValueError(f"UnifiedMasking: max_tokens[{m.name!r}]={mx} must be in 1..{limit}")
        self.is_image = torch.tensor([m.kind != "sequence" for m in self.mods])
        keep = [self.alphas.alphas[n].keep for n in self.names]
        self.keep_codes = torch.tensor(
            [[KEEP_SCHEMES.index(k[c]) for k in keep] for c in range(self.alphas.num_components)]
        )  # [C, M]
        weights = self.alphas.sampling_weights
        self.weights = None if weights is None else torch.tensor(weights, dtype=torch.float64)
        self.keep_prob_decay = keep_prob_decay
        self.tokenizer = text_tokenizer
        self.specials = None
        if any(m.kind == "sequence" for m in self.mods):
            if text_tokenizer is None:
                seqs = [m.name for m in self.mods if m.kind == "sequence"]
                raise MissingTextTokenizer(
                    f"UnifiedMasking: sequence modalities {seqs} need text_tokenizer= (fourm.data.text.load_tokenizer)"
                )
            self.specials = special_ids(text_tokenizer)
            need = max(int(mx) for m, mx in zip(self.mods, self.max_tokens) if m.kind == "sequence") // 2 + 2
            if len(self.specials.sentinels) < need:
                raise ValueError(
                    f"text tokenizer has {len(self.specials.sentinels)} sentinels; sequences this long need {need}"
                )
            self.sentinel_table = torch.tensor(self.specials.sentinels, dtype=torch.long)

    # budgets ---------------------------------------------------------------------------------------------------

    def sample_budgets(self, batch_size: int, generator: torch.Generator | None = None) -> Budgets:
        """Draw a component, token totals and per-modality input/target budgets for each of ``batch_size`` samples."""
        g, B = generator, batch_size
        C = self.in_alpha.shape[0]
        if self.weights is not None:
            comp = torch.multinomial(self.weights, B, replacement=True, generator=g)
        else:
            comp = torch.randint(0, C, (B,), generator=g)
        n_in = torch.randint(self.input_range[0], self.input_range[1] + 1, (B,), generator=g)
        n_tg = torch.randint(self.target_range[0], self.target_range[1] + 1, (B,), generator=g)
        a_in, a_tg = self.in_alpha[comp], self.tg_alpha[comp]
        p_in, p_tg = sample_dirichlet(torch.stack([a_in, a_tg]), g).unbind(0)
        cap = self.max_tokens.expand(B, -1)
        in_b = _allocate(n_in, p_in, a_in > 0, cap, self.min_tokens, g)
        # image positions used as input cannot also be targets; a sequence's target is a separate sequence
        room = torch.where(self.is_image, cap - in_b, cap)
        room = torch.maximum(room, torch.where(a_tg > 0, self.min_tokens, 0))
        tg_b = _allocate(n_tg, p_tg, a_tg > 0, room, self.min_tokens, g)
        return Budgets(comp, n_in, n_tg, in_b, tg_b)

    # masking ---------------------------------------------------------------------------------------------------

    def __call__(
        self, batch: Mapping[str, Any], generator: torch.Generator | None = None, budgets: Budgets | None = None
    ) -> dict:
        """Mask ``batch`` (modality -> tensor ``[B, ...]`` or list of B strings / lists of chunk strings)."""
        missing = [n for n in self.names if n not in batch]
        if missing:
            raise KeyError(f"UnifiedMasking: batch lacks modalities {missing} (has {sorted(batch)})")
        sizes = {n: len(batch[n]) for n in self.names}
        B = sizes[self.names[0]]
        if len(set(sizes.values())) != 1:
            raise ValueError(f"UnifiedMasking: modalities disagree on the batch size: {sizes}")
        if budgets is None:
            budgets = self.sample_budgets(B, generator)
        elif budgets.input.shape != (B, len(self.names)) or budgets.target.shape != (B, len(self.names)):
            raise ValueError(f"UnifiedMasking: budgets must be [{B}, {len(self.names)}] in the order {self.names}")
        comp = budgets.component.long()
        out = {}
        # modalities of the same shape are masked together: fewer, larger tensor ops
        groups: dict[tuple, list[int]] = {}
        for j, mod in enumerate(self.mods):
            key = {"sequence": ("seq", int(self.max_tokens[j])), "embedding_sequence": ("emb", j)}.get(mod.kind, ("img", mod.grid))
            groups.setdefault(key, []).append(j)
        for (kind, size), js in groups.items():
            in_b, tg_b = budgets.input[:, js].long().T, budgets.target[:, js].long().T  # [n, B]
            xs, mods = [batch[self.names[j]] for j in js], [self.mods[j] for j in js]
            if kind == "img":
                results = self._images(xs, mods, in_b, tg_b, generator)
            elif kind == "emb":
                results = [self._embedding_sequence(xs[0], mods[0], in_b[0], generator)]
            else:
                keep = self.keep_codes[comp][:, js].T
                results = self._sequences(xs, mods, size, in_b, tg_b, keep, generator)
            out.update(zip((self.names[j] for j in js), results))
        return {n: out[n] for n in self.names}

    def _images(self, xs: list, mods: list, in_b, tg_b, g) -> list[dict]:
        """Masks for ``n`` image modalities with the same grid; budgets ``[n, B]``."""
        n, B = in_b.shape
        N = mods[0].grid * mods[0].grid
        for x, mod in zip(xs, mods):
            if not torch.is_tensor(x):
                raise TypeError(f"batch[{mod.name!r}] must be a tensor, got {type(x).__name__}")
            if mod.kind == "image_tokens" and x[0].numel() != N:
                raise ValueError(
                    f"batch[{mod.name!r}] has shape {tuple(x.shape)}; expected [B, {mod.grid}, {mod.grid}] token ids"
                )
        # a uniformly random permutation per row (int32 keys: ties are ~1e-5 per row, rarer than with float32
        # noise, and int keys sort faster); position j is input if its rank < input budget, target if in the next slice
        keys = torch.randint(0, 2**31 - 1, (n, B, N), generator=g, dtype=torch.int32)
        rank = keys.argsort(dim=-1)
        lo, hi = in_b[..., None], (in_b + tg_b)[..., None]
        input_mask = rank >= lo
        target_mask = (rank < lo) | (rank >= hi)
        first = target_mask.to(torch.uint8).argmin(-1, keepdim=True)  # first target (0 if none: its count is 0)
        dam = torch.zeros(n, B, N, dtype=torch.int32)
        count = (in_b + tg_b).clamp(max=N) - in_b.clamp(max=N)
        dam.scatter_(-1, first, count.to(torch.int32)[..., None])
        return [
            {"tensor": x, "input_mask": input_mask[i], "target_mask": target_mask[i], "decoder_attention_mask": dam[i]}
            for i, x in enumerate(xs)
        ]

    def _embedding_sequence(self, xs, mod, in_b, g) -> dict:
        """An input-only sequence of float embeddings (``t5_caption``): ``xs`` holds B tensors ``[L_i, D]`` (or a padded
        ``[B, L, D]`` tensor with every row valid). Rows are padded to ``max_length``; ``in_b`` random valid positions
        of each row are the input (fewer when the row is shorter), padding never is."""
        rows = list(xs) if not torch.is_tensor(xs) else list(xs.unbind(0))
        L = mod.max_length
        for i, r in enumerate(rows):
            if not torch.is_tensor(r) or r.ndim != 2 or r.shape[1] != mod.embedding_dim:
                raise ValueError(f"batch[{mod.name!r}][{i}] must be a float tensor [length, {mod.embedding_dim}], got "
                                 f"{tuple(r.shape) if torch.is_tensor(r) else type(r).__name__}")
        B = len(rows)
        x = torch.zeros(B, L, mod.embedding_dim)
        valid = torch.zeros(B, L, dtype=torch.bool)
        for i, r in enumerate(rows):
            n = min(len(r), L)
            x[i, :n], valid[i, :n] = r[:n].float(), True
        keys = torch.randint(0, 2**31 - 1, (B, L), generator=g, dtype=torch.int64)
        keys = torch.where(valid, keys, torch.iinfo(torch.int64).max)  # padding ranks after every valid position
        rank = keys.argsort(dim=-1).argsort(dim=-1)
        input_mask = (rank >= in_b[:, None]) | ~valid
        ones = torch.ones(B, L, dtype=torch.bool)
        return {"tensor": x, "input_mask": input_mask, "target_mask": ones,
                "decoder_attention_mask": torch.zeros(B, L, dtype=torch.int32)}

    def _encode(self, strings: list[str]):
        # encode_batch_fast skips character offsets, which masking never needs
        fast = getattr(self.tokenizer, "encode_batch_fast", None)
        if fast is not None:
            return fast(strings, add_special_tokens=False)
        return self.tokenizer.encode_batch(strings, add_special_tokens=False)

    def _tokenize(self, texts: Sequence, mod, max_tokens: int):
        """Token ids ``[B, L]``, unit index per token (a token, or its chunk for chunked sequences), valid mask.

        A sample is a string, a list of chunk strings (one per box), or already-tokenized ids (a list of ints or a
        1-D int tensor, or a list of those as chunks); EOS is appended here in every case.
        """
        eos = self.specials.eos
        if not isinstance(texts, (list, tuple)):
            raise TypeError(f"batch[{mod.name!r}] must be a list of strings (or of lists of chunk strings)")
        flat_strs, owner = [], []
        pieces: list[list] = []  # per sample: its chunks (a plain sequence is one chunk), ids or None until encoded
        chunked = []
        for i, t in enumerate(texts):
            single = isinstance(t, str) or _is_ids(t)
            parts = [t] if single else t
            if not isinstance(parts, (list, tuple)) or not all(isinstance(c, str) or _is_ids(c) for c in parts):
                raise TypeError(
                    f"batch[{mod.name!r}][{i}] must be a string, a list of chunk strings, or token ids; "
                    f"got {type(t).__name__}"
                )
            chunked.append(not single)
            pieces.append([None if isinstance(c, str) else [int(v) for v in c] for c in parts])
            for k, c in enumerate(parts):
                if isinstance(c, str):
                    flat_strs.append(c)
                    owner.append((i, k))
        for (i, k), enc in zip(owner, self._encode(flat_strs) if flat_strs else []):
            pieces[i][k] = enc.ids
        seqs: list[list[int]] = []
        units: list[list[int]] = []
        for i, chunks in enumerate(pieces):
            if not chunked[i]:
                ids = (chunks[0] + [eos])[:max_tokens]
                seqs.append(ids)
                units.append(list(range(len(ids))))
                continue
            ids, unit = [], []
            for k, c in enumerate(chunks):  # whole chunks while they fit with room for EOS: a prefix of the boxes
                if len(ids) + len(c) > max_tokens - 1:
                    break
                ids.extend(c)
                unit.extend([k] * len(c))
            seqs.append(ids + [eos])
            units.append(unit + [unit[-1] + 1 if unit else 0])
        lens = torch.tensor([len(s) for s in seqs])
        L = int(lens.max())
        valid = torch.arange(L)[None, :] < lens[:, None]
        ids = torch.full((len(texts), L), self.specials.pad, dtype=torch.long)
        unit = torch.zeros((len(texts), L), dtype=torch.long)
        ids[valid] = torch.tensor([v for s in seqs for v in s], dtype=torch.long)
        unit[valid] = torch.tensor([v for s in units for v in s], dtype=torch.long)
        return ids, unit, valid

    def _span_masks(self, unit, valid, in_b, keep, g) -> torch.Tensor:
        """Which tokens are masked; keep probability lowered by ``keep_prob_decay`` until the input fits its budget.

        The retries are evaluated 8, then 56 at a time for all unfinished samples at once; each retry draws fresh random
        numbers, so taking the first retry that fits is the same distribution as retrying one by one.
        """
        B, L = valid.shape
        U = int(unit.max()) + 1 if L else 1
        u = torch.rand(B, generator=g)
        coin = (torch.rand(B, generator=g) < 0.5).float()
        keep_prob = torch.where(keep == 0, u, torch.where(keep == 1, torch.ones_like(u), coin))
        masked = valid.clone()  # input budget 0: everything goes to the target
        todo = (in_b > 0).nonzero().flatten()
        step = 0
        while todo.numel():
            T = todo.numel()
            K = 8 if step == 0 else 56  # most samples fit at once; the rest need many decays, so try many at a time
            kp = keep_prob[todo, None] * self.keep_prob_decay ** torch.arange(step, step + K, dtype=torch.float32)
            if step >= 400:  # keep nothing: the input is then one sentinel, which always fits
                kp = torch.zeros_like(kp)
            r = torch.rand(T, K, U, generator=g)
            m_unit = r > kp[:, :, None]  # the official rule: a unit is kept when rand <= keep_prob
            v = valid[todo][:, None, :]
            m = m_unit.gather(2, unit[todo][:, None, :].expand(T, K, L)) & v
            starts = m & ~torch.nn.functional.pad(m[..., :-1], (1, 0))
            in_len = (v & ~m).sum(-1) + starts.sum(-1)
            ok = in_len <= in_b[todo, None]
            done = ok.any(1)
            pick = ok.to(torch.uint8).argmax(1)
            masked[todo[done]] = m[done, pick[done]]
            todo = todo[~done]
            step += K
        return masked

    def _sequences(self, texts: list, mods: list, max_tokens: int, in_b, tg_b, keep, g) -> list[dict]:
        """Span-mask ``n`` sequence modalities with the same ``max_tokens`` as one ``n * B`` batch; budgets ``[n, B]``."""
        n, B = in_b.shape
        parts = [self._tokenize(t, mod, max_tokens) for t, mod in zip(texts, mods)]
        L = max(p[0].shape[1] for p in parts)
        ids, unit, valid = (
            torch.cat([torch.nn.functional.pad(p[i], (0, L - p[i].shape[1]), value=v) for p in parts])
            for i, v in ((0, self.specials.pad), (1, 0), (2, False))
        )
        out = self._sequence(ids, unit, valid, max_tokens, in_b.reshape(-1), tg_b.reshape(-1), keep.reshape(-1), g)
        return [{k: v[i * B : (i + 1) * B] for k, v in out.items()} for i in range(n)]

    def _sequence(self, ids, unit, valid, max_tokens: int, in_b, tg_b, keep, g) -> dict:
        B = in_b.shape[0]
        L = ids.shape[1]
        masked = self._span_masks(unit, valid, in_b, keep, g)
        pad = self.specials.pad
        sent = self.sentinel_table
        start = masked & ~torch.nn.functional.pad(masked[:, :-1], (1, 0))
        span = start.cumsum(1)  # span number (1-based) of each masked token
        nspans = span[:, -1]
        rows = torch.arange(B)[:, None]

        # where each token / sentinel sits in the full target: per span its sentinel then its tokens, then a closing
        # sentinel at `total`
        tg_end = (masked.long() + start.long()).cumsum(1)
        total = tg_end[:, -1]
        tg_len = total + 1

        # over budget: start at a random sentinel (never the closing one) and cut, or start at the earliest sentinel
        # whose suffix fits (the official rule, so the target always begins with a sentinel)
        big = torch.iinfo(torch.long).max
        spos = torch.full((B, L + 2), big, dtype=torch.long)
        spos[rows, torch.where(start, span - 1, L + 1)] = tg_end - 2
        spos[torch.arange(B), nspans] = total
        spos[:, L + 1] = big
        k = (torch.rand(B, generator=g, dtype=torch.float64) * nspans.clamp_min(1)).long()
        pos_k = spos.gather(1, k[:, None]).squeeze(1)
        pos_e = torch.where(spos >= (tg_len - tg_b)[:, None], spos, big).min(1).values
        over = tg_len > tg_b
        cut_at_k = (tg_len - pos_k) >= tg_b
        t_start = torch.where(over, torch.where(cut_at_k, pos_k, pos_e), 0)
        t_len = torch.where(over, torch.where(cut_at_k, tg_b, tg_len - pos_e), tg_len)

        # the official layout: input at [0, in_len), target at [in_budget, in_budget + t_len); PAD elsewhere.
        # Everything is scattered straight into place; writes that fall outside go to a spare last column.
        width = 2 * (max_tokens + 1)
        tensor = torch.full((B, width + 1), pad, dtype=torch.int32)
        in_emit = ((valid & ~masked) | start) & (in_b > 0)[:, None]
        in_len = in_emit.sum(1)
        tensor[rows, torch.where(in_emit, in_emit.cumsum(1) - 1, width)] = torch.where(masked, sent[span], ids).int()

        def place(pos, ok):  # target position -> output column (or the spare one)
            keep_ = ok & (pos >= t_start[:, None]) & (pos < (t_start + t_len)[:, None])
            return torch.where(keep_, pos - t_start[:, None] + in_b[:, None], width)

        tensor[rows, place(tg_end - 1, masked)] = ids.int()
        tensor[rows, place(tg_end - 2, start)] = sent[span].int()
        closing = total[:, None]
        tensor[rows, place(closing, torch.ones_like(closing, dtype=torch.bool))] = sent[nspans + 1][:, None].int()
        tensor = tensor[:, :width]
        p = torch.arange(width)[None, :]
        is_in = p < in_len[:, None]
        j = p - in_b[:, None]
        is_tg = (j >= 0) & (j < t_len[:, None])
        return {
            "tensor": tensor,
            "input_mask": ~is_in,
            "target_mask": ~is_tg,
            "decoder_attention_mask": is_tg.to(torch.int32),
        }


def trim_sequence_padding(mod_dict: dict, domains_in: Sequence[str], domains_out: Sequence[str],
                          num_input_tokens: int, num_target_tokens: int) -> dict:
    """The batch with each sequence cut after its last column that is an input or a target in any sample.

    A masked sequence is laid out at its full width (``2 * (max_tokens + 1)``, 514 for 4M's 256-token captions)
    although a batch uses a fraction of it. While the model embedded every column this padding was ~40% of a tiny
    model's step on CPU; now that it embeds only the kept tokens, the cut saves the masks' and the selection's
    work over unused columns (2-3% of a nano step). Columns that are neither input nor target in any row are never
    selected ahead of a used token (the model's selection is a stable sort that puts used tokens first), so the
    losses are the same; the cut keeps each side at least its token budget wide, so the shapes are too.
    """
    used_end, width = {}, {}
    for mod, d in mod_dict.items():
        width[mod] = d["input_mask"].shape[1]
        if registry.get(mod).kind != "sequence" or d["tensor"].ndim != 2:
            used_end[mod] = width[mod]
            continue
        used = ~d["input_mask"] | ~d["target_mask"]
        cols = used.any(0).nonzero()
        # keep two columns at least: the decoder's teacher forcing pairs each column with the next one
        used_end[mod] = min(width[mod], max(2, int(cols.max()) + 1 if cols.numel() else 0))
    for domains, budget in ((domains_in, num_input_tokens), (domains_out, num_target_tokens)):
        if sum(used_end[m] for m in domains if m in mod_dict) < budget:
            return mod_dict  # too few positions left for this side's budget: keep the full layout
    return {mod: ({k: (v[:, : used_end[mod]] if torch.is_tensor(v) and v.ndim == 2 else v) for k, v in d.items()}
                  if used_end[mod] < width[mod] else d)
            for mod, d in mod_dict.items()}
