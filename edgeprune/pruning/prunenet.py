"""PruneNet (Sengupta et al., ICLR 2025, arXiv 2501.15296): a calibration-free pruning policy learned from weights.

A policy per MLP shape (d_ff, d) reads each row rᵢ of a layer's first MLP matrix W (gate for SwiGLU, fc1
otherwise; d_ff × d) and gives it a keep-probability αᵢ = σ(zᵢ), zᵢ = (A·fᵢ + b)·v: a learned linear map A, b,
then a dot product with a learned vector v. Training reads no data: an episode slices every layer, drawing
k = ⌊(1−c)·d_ff⌋ rows without replacement in proportion to binary-concrete-noised keep-probabilities, and
each layer l earns rₗ = 1 / KS(σ(W), σ(W[kept])) — the inverse two-sample Kolmogorov–Smirnov statistic between
the singular values of the original and of the sliced matrix — discounted γˡ (γ = 0.99). REINFORCE with AdamW,
20 episodes; the policy of the best episode is kept. At prune time an MLP group's unit scores are the
noise-free αᵢ, so one trained policy ranks rows at every ratio, and for every model with the same shapes
(`--policy FILE`).

Changes from the reference code (LCS2-IIITD/PruneNet), each measured in docs/pruning.md ("PruneNet"):

Fixes of plain bugs
- gradients are clipped between backward() and step(); the reference clips after step() and zero_grad(), so
  its clipping never acts;
- the log-probability is that of the draw made: the ordered draw without replacement (Plackett–Luce) under the
  noise that produced it. The reference recomputes the policy with fresh noise and sums the log
  keep-probabilities of the kept rows, a different quantity;
- one optimizer step per episode on the sum over layers; the reference steps once per layer, so later layers'
  rewards update a policy other than the one that drew their slicing;
- the kept policy is the one that produced the best episode, judged by the deterministic slicing used at prune
  time; the reference saves the state after that episode's updates, judged on a noisy draw;
- two identical spectra (KS 0) earn the largest reward the sample sizes resolve, not 99999;
- pruning is deterministic (top-k of α); the reference draws again at prune time.

Why the reward curve was flat, and what changed (the numbers are in docs/pruning.md)
- no baseline: 1/KS is always positive, so every draw is reinforced; under Adam's per-parameter
  normalisation that is a random walk. The advantage here is a draw's reward minus the mean of the other
  draws of the same layer in the episode (one draw: minus the layer's running mean);
- saturation: zᵢ sums d_ff products, and Adam moves every parameter by about the learning rate per step,
  so one step can move every logit by tens of units; α saturates at 0 / 1, every noisy draw is then the same
  slicing, the advantage is 0 and the curve freezes wherever it is. The logits are standardised over the
  matrix's rows and scaled by a temperature (z-score × 2): α keeps its spread and only the ranking, which is
  all that pruning uses, is learned;
- sign: σ(W) does not change when a row changes sign, so neither should the policy; zᵢ is linear in the
  row, so it cannot prefer long rows over short ones (what the reward favours). The map reads |rᵢ| (divided
  by the RMS row norm, so the policy sees one scale on every model);
- too few draws: one draw per layer and episode gives a gradient whose cosine with the expected one is
  about 0.06; each episode draws `ROLLOUTS` slicings per layer.
`train_policy(..., **REFERENCE)` is the reference's recipe with the plain bugs fixed, kept for comparison.

Attention heads (a kv head with its query heads) are few per layer, so no policy is needed to search them:
a head's score is the KS shift that removing it alone causes in the spectrum of the layer's stacked
[W_q; W_k; W_v] (the head's input rows, the attention counterpart of the MLP's first matrix); ties — the
statistic moves in steps of at least 1/(n·m) — are broken by the share of the matrix's energy
Σσ² = ‖W‖²_F the head's rows carry, scaled below that step.

The policy file is a safetensors file: per shape "{d_ff}x{d}.proj.weight" [d_ff, d], "….proj.bias" [d_ff],
"….vector" [d_ff], and a JSON header under the "edgeprune" metadata key (format, shapes, training ratio,
episodes, seed, recipe, reward curves). It is written atomically, after training, or not at all.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeprune.errors import BadInputError

FORMAT = "edgeprune-prunenet-policy"
FORMAT_VERSION = 1
GAMMA = 0.99
EPISODES = 20
ROLLOUTS = 8  # slicings drawn per layer and episode
LEARNING_RATE = 1e-2
TEMPERATURE = 2.0  # α = σ(T · standardised logit)
CLIP_NORM = 1.0
BASELINE_MOMENTUM = 0.8  # with one draw per layer: the running mean b ← m·b + (1−m)·r
DEFAULT_RATIO = 0.3  # training compression when the request has no ratio (latency mode): the paper's 20-30 %
# the reference's recipe (plain bugs fixed): raw rows, raw logits, no baseline, no clipping, one draw, lr 1e-3
REFERENCE = {"features": "raw", "temperature": None, "baseline": False, "clip": None, "rollouts": 1, "lr": 1e-3}


# -- the reward -------------------------------------------------------------------------------------------
def ks_statistic(a, b) -> float:
    """Two-sample Kolmogorov–Smirnov statistic sup_x |F_a(x) − F_b(x)| of two samples' empirical CDFs."""
    a = np.sort(np.asarray(a, dtype=np.float64).ravel())
    b = np.sort(np.asarray(b, dtype=np.float64).ravel())
    if not a.size or not b.size:
        raise ValueError("the KS statistic needs two non-empty samples")
    points = np.concatenate([a, b])
    fa = np.searchsorted(a, points, side="right") / a.size
    fb = np.searchsorted(b, points, side="right") / b.size
    return float(np.max(np.abs(fa - fb)))


def singular_values(matrix) -> np.ndarray:
    """The min(rows, cols) singular values of a matrix (torch or numpy), descending, float64.

    From the eigenvalues of the smaller Gram matrix: the same values as an SVD (to ~1e-14 relative) at about
    half the cost, which matters because training takes (rollouts + 1) per layer and episode.
    """
    import torch

    m = torch.as_tensor(matrix).detach().double()
    gram = m @ m.t() if m.shape[0] <= m.shape[1] else m.t() @ m
    return torch.linalg.eigvalsh(gram).clamp_min(0).sqrt().flip(0).cpu().numpy()


def spectrum_reward(original_sv: np.ndarray, sliced) -> float:
    """1 / KS(σ(original), σ(sliced)); identical spectra earn 2·n·m, twice what the smallest nonzero statistic
    (at least 1/(n·m)) can earn."""
    sv = singular_values(sliced)
    ks = ks_statistic(original_sv, sv)
    return 1.0 / max(ks, 1.0 / (2.0 * len(original_sv) * len(sv)))


# -- the policy -------------------------------------------------------------------------------------------
def shape_key(d_ff: int, d: int) -> str:
    return f"{d_ff}x{d}"


@dataclass
class Policy:
    """The learned map of one MLP shape: zᵢ = (A·fᵢ + b)·v, αᵢ = σ(zᵢ) (or σ(T·standardised z))."""

    proj_weight: object  # torch tensor [d_ff, d]: A
    proj_bias: object  # [d_ff]: b
    vector: object  # [d_ff]: v
    features: str = "abs"  # fᵢ: "abs" |rᵢ| / RMS row norm; "row" rᵢ / RMS row norm; "raw" rᵢ (the reference)
    temperature: float | None = TEMPERATURE  # None: z as it is (the reference)

    @classmethod
    def initial(cls, d_ff: int, d: int, generator, features: str = "abs",
                temperature: float | None = TEMPERATURE) -> Policy:
        """nn.Linear's default initialisation for A and b; v uniform in [0, 1), as in the paper's code."""
        import torch

        bound = 1.0 / math.sqrt(d)
        weight = (torch.rand(d_ff, d, generator=generator, dtype=torch.float32) * 2 - 1) * bound
        bias = (torch.rand(d_ff, generator=generator, dtype=torch.float32) * 2 - 1) * bound
        vector = torch.rand(d_ff, generator=generator, dtype=torch.float32)
        return cls(weight, bias, vector, features, temperature)

    @property
    def shape(self) -> tuple:
        return tuple(self.proj_weight.shape)

    def parameters(self) -> list:
        return [self.proj_weight, self.proj_bias, self.vector]

    def logits(self, matrix):
        """Keep-logits of every row of `matrix` [d_ff, d] (a torch tensor)."""
        f = matrix.float()
        if self.features != "raw":
            f = f / (f.pow(2).sum(1).mean().sqrt().clamp_min(1e-12))  # rows of unit RMS norm
        if self.features == "abs":
            f = f.abs()
        z = (f @ self.proj_weight.t() + self.proj_bias) @ self.vector
        if self.temperature is None:
            return z
        return self.temperature * (z - z.mean()) / z.std().clamp_min(1e-12)

    def keep_probabilities(self, matrix) -> np.ndarray:
        """Deterministic α (no noise): the unit scores at prune time."""
        import torch

        with torch.no_grad():
            return torch.sigmoid(self.logits(matrix)).double().cpu().numpy()

    def state(self) -> dict:
        return {"proj.weight": self.proj_weight.detach().clone(), "proj.bias": self.proj_bias.detach().clone(),
                "vector": self.vector.detach().clone()}

    def with_state(self, state: dict) -> Policy:
        return Policy(state["proj.weight"], state["proj.bias"], state["vector"], self.features, self.temperature)


def noisy_keep(logits, generator):
    """Binary-concrete (relaxed Bernoulli, temperature 1) sample around keep-probabilities σ(logits)."""
    import torch

    u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype).clamp(1e-6, 1 - 1e-6)
    return torch.sigmoid(logits + torch.log(u) - torch.log1p(-u)).clamp_min(1e-30)


def draw_rows(weights, k: int, generator):
    """k indices drawn without replacement, each draw ∝ `weights` among those left, in draw order (Gumbel-top-k:
    the k largest log w + Gumbel noise are exactly such a draw)."""
    import torch

    u = torch.rand(weights.shape, generator=generator, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    keys = torch.log(weights.detach().double()) - torch.log(-torch.log(u))
    return torch.topk(keys, k).indices


def draw_log_prob(weights, order):
    """log P(drawing `order`, in that order, without replacement, each draw ∝ weights among those left)."""
    picked = weights[order]
    before = picked.cumsum(0) - picked
    return (picked.log() - (weights.sum() - before).clamp_min(1e-30).log()).sum()


def kept_rows(n: int, ratio: float) -> int:
    """k = ⌊(1 − c)·n⌋ rows kept (at least one)."""
    return max(1, min(n, int(math.floor((1.0 - ratio) * n + 1e-9))))


def training_ratio(ratio: float | None) -> float:
    """The compression c a policy is trained at: the request's ratio, or DEFAULT_RATIO when it has none."""
    return float(ratio) if ratio is not None and 0.0 < ratio < 1.0 else DEFAULT_RATIO


@dataclass
class Training:
    """What training one shape's policy did: the reward curves, the episode kept."""

    sampled: list = field(default_factory=list)  # Σₗ γˡ · mean reward of the episode's draws
    deterministic: list = field(default_factory=list)  # Σₗ γˡ rₗ of the top-k slicing of the policy that drew
    best_episode: int = -1  # index into `deterministic` (the last entry is the policy after the last update)

    def as_dict(self) -> dict:
        return {"sampled": [round(r, 6) for r in self.sampled],
                "deterministic": [round(r, 6) for r in self.deterministic], "best_episode": self.best_episode}


def deterministic_reward(policy: Policy, matrices: list, spectra: list, ratio: float, gamma: float = GAMMA) -> float:
    """Σₗ γˡ · 1/KS of slicing each matrix to its k rows of highest α (what pruning at `ratio` does)."""
    import torch

    total = 0.0
    for layer, (w, sv) in enumerate(zip(matrices, spectra)):
        keep = torch.topk(torch.as_tensor(policy.keep_probabilities(w)), kept_rows(w.shape[0], ratio)).indices
        total += gamma ** layer * spectrum_reward(sv, w[keep.sort().values])
    return total


def train_policy(matrices: list, ratio: float, *, episodes: int = EPISODES, rollouts: int = ROLLOUTS, seed: int = 0,
                 lr: float = LEARNING_RATE, gamma: float = GAMMA, baseline: bool = True, clip: float | None = CLIP_NORM,
                 features: str = "abs", temperature: float | None = TEMPERATURE) -> tuple:
    """Train one policy on the first MLP matrices `matrices` ([d_ff, d] tensors, in layer order) at compression
    `ratio`. Returns (the best episode's policy, Training); `**REFERENCE` gives the reference's recipe."""
    import torch

    d_ff, d = matrices[0].shape
    if any(tuple(w.shape) != (d_ff, d) for w in matrices):
        raise ValueError("one policy is trained on matrices of one shape")
    gen = torch.Generator().manual_seed(int(seed))
    policy = Policy.initial(d_ff, d, gen, features, temperature)
    for p in policy.parameters():
        p.requires_grad_(True)
    matrices = [w.detach().float() for w in matrices]
    spectra = [singular_values(w) for w in matrices]
    k = kept_rows(d_ff, ratio)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=lr)
    running: list = [None] * len(matrices)
    log = Training()
    best, best_state = -math.inf, policy.state()
    for _ in range(episodes):
        det = deterministic_reward(policy, matrices, spectra, ratio, gamma)
        if det > best:
            best, best_state, log.best_episode = det, policy.state(), len(log.deterministic)
        log.deterministic.append(det)
        loss, sampled = 0.0, 0.0
        for layer, (w, sv) in enumerate(zip(matrices, spectra)):
            logits = policy.logits(w)
            draws = []
            for _ in range(rollouts):
                weights = noisy_keep(logits, gen)
                order = draw_rows(weights, k, gen)
                draws.append((weights, order))
            rewards = np.array([spectrum_reward(sv, w[order.sort().values]) for _, order in draws])
            sampled += gamma ** layer * float(rewards.mean())
            if not baseline:
                advantages = rewards
            elif rollouts > 1:  # leave-one-out: the mean of the layer's other draws of this episode
                advantages = rewards - (rewards.sum() - rewards) / (rollouts - 1)
            else:
                advantages = rewards - (rewards if running[layer] is None else running[layer])
                running[layer] = rewards if running[layer] is None else (
                    BASELINE_MOMENTUM * running[layer] + (1 - BASELINE_MOMENTUM) * rewards)
            for advantage, (weights, order) in zip(advantages, draws):
                loss = loss - gamma ** layer * float(advantage) / rollouts * draw_log_prob(weights, order)
        log.sampled.append(sampled)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:  # between backward() and step(): the reference clips after step(), to no effect
            torch.nn.utils.clip_grad_norm_(policy.parameters(), clip)
        optimizer.step()
    final = deterministic_reward(policy, matrices, spectra, ratio, gamma)  # the policy after the last update
    if final > best:
        best_state, log.best_episode = policy.state(), len(log.deterministic)
    log.deterministic.append(final)
    return policy.with_state(best_state), log


# -- the policy file --------------------------------------------------------------------------------------
def _bad_file(path, reason: str) -> BadInputError:
    return BadInputError(f"--policy {path} is not a PruneNet policy file ({reason})",
                         "pass a file written by --criterion prunenet --policy FILE, or a path that does not "
                         "exist yet to train a policy there")


def save_policies(path, policies: dict, header: dict) -> None:
    """Write {shape key: Policy} and `header` to `path` atomically (safetensors, header in its metadata)."""
    from safetensors.torch import save

    from edgeprune.atomic import atomic_file

    tensors = {f"{key}.{name}": t.contiguous() for key, pol in policies.items() for name, t in pol.state().items()}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **header,
            "shapes": {key: {**header.get("shapes", {}).get(key, {}), "features": pol.features,
                             "temperature": pol.temperature} for key, pol in policies.items()}}
    data = save(tensors, metadata={"edgeprune": json.dumps(meta, sort_keys=True)})
    with atomic_file(path, "wb") as handle:
        handle.write(data)


def load_policies(path) -> tuple:
    """({shape key: Policy}, header) from a policy file; anything else is refused in one line."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise _bad_file(path, "not a file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = (handle.metadata() or {}).get("edgeprune")
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as err:  # noqa: BLE001 — safetensors raises its own error type; any failure means unreadable
        raise _bad_file(path, f"unreadable: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    try:
        meta = json.loads(header) if header is not None else None
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _bad_file(path, "no PruneNet header")
    if meta.get("format_version") != FORMAT_VERSION:
        raise _bad_file(path, f"format version {meta.get('format_version')}, this edgeprune reads {FORMAT_VERSION}")
    policies = {}
    for key, info in (meta.get("shapes") or {}).items():
        try:
            d_ff, d = (int(x) for x in key.split("x"))
            parts = {n: tensors[f"{key}.{n}"].float() for n in ("proj.weight", "proj.bias", "vector")}
        except (ValueError, KeyError):
            raise _bad_file(path, f"shape {key} is incomplete") from None
        if (tuple(parts["proj.weight"].shape) != (d_ff, d) or tuple(parts["proj.bias"].shape) != (d_ff,)
                or tuple(parts["vector"].shape) != (d_ff,)):
            raise _bad_file(path, f"shape {key}: tensors of other sizes")
        policies[key] = Policy(parts["proj.weight"], parts["proj.bias"], parts["vector"],
                               info.get("features", "abs"), info.get("temperature", TEMPERATURE))
    return policies, meta


# -- the criterion ----------------------------------------------------------------------------------------
def first_matrix(group):
    """The first MLP matrix of an "mlp" group as [d_ff, d] (gate for SwiGLU, fc1 otherwise), a float tensor."""
    from .transformer import oriented, unit_parts

    module, rows = next((m, units) for m, side, units in unit_parts(group.handle, group.layout, group.kind)
                        if side == "out")
    weight = oriented(module.weight.detach(), module).float()
    return weight[[r for unit in rows for r in unit]]  # the gate block only, when gate|up are packed (Phi-3)


def head_scores(group) -> np.ndarray:
    """Per kv head: the KS shift removing it alone causes in σ([W_q; W_k; W_v]), ties broken by its rows' energy."""
    import torch

    from .transformer import oriented, unit_parts

    matrices, offsets, rows = [], {}, [[] for _ in range(group.units)]
    for m, side, units in unit_parts(group.handle, group.layout, group.kind):
        if side != "out":
            continue
        if id(m) not in offsets:  # packed q|k|v (GPT-2) is one module listed three times
            offsets[id(m)] = sum(w.shape[0] for w in matrices)
            matrices.append(oriented(m.weight.detach(), m).double())
        for u in range(group.units):
            rows[u] += [offsets[id(m)] + r for r in units[u]]
    stacked = torch.cat(matrices)
    rows = [sorted(set(r)) for r in rows]
    full = singular_values(stacked)
    energy = float(stacked.pow(2).sum()) or 1.0
    scores = []
    for own in rows:
        if len(own) == stacked.shape[0]:  # the only unit: nothing to compare with
            scores.append(1.0)
            continue
        keep = torch.as_tensor(sorted(set(range(stacked.shape[0])) - set(own)))
        left = singular_values(stacked[keep])
        share = float(stacked[own].pow(2).sum()) / energy
        scores.append(ks_statistic(full, left) + share / (2.0 * len(full) * len(left)))
    return np.array(scores)


def prunenet(groups: list, policy_path=None, ratio: float | None = None, seed: int = 0) -> list:
    """Unit scores per group: MLP groups the policy's α, heads `head_scores`, anything else None (kept whole).

    `policy_path`: an existing file is loaded and reused (no training); a path that does not exist is where the
    policy trained here is saved; None trains one for this call only.
    """
    mlp: dict = {}
    for i, g in enumerate(groups):
        if g.kind == "mlp":
            w = first_matrix(g)
            mlp.setdefault(shape_key(*w.shape), []).append((i, w))
    policies = _policies(mlp, policy_path, ratio, seed)
    out = [None] * len(groups)
    for key, members in mlp.items():
        for i, w in members:
            out[i] = policies[key].keep_probabilities(w)
    for i, g in enumerate(groups):
        if g.kind == "heads":
            out[i] = head_scores(g)
    return out


def _policies(mlp: dict, policy_path, ratio, seed: int) -> dict:
    need = sorted(mlp)
    if policy_path is not None and Path(policy_path).exists():
        policies, _ = load_policies(policy_path)
        missing = [k for k in need if k not in policies]
        if missing:
            raise BadInputError(
                f"--policy {policy_path} holds PruneNet policies for MLP shapes (d_ff x d) "
                f"{', '.join(sorted(policies)) or 'none'}; this model needs {', '.join(missing)}",
                "a policy is reused only by models with the same MLP shapes; pass a new --policy path to train "
                "one for this model")
        return policies
    c = training_ratio(ratio)
    policies, shapes = {}, {}
    for key in need:
        policies[key], log = train_policy([w for _, w in mlp[key]], c, seed=seed)
        shapes[key] = {"layers": len(mlp[key]), **log.as_dict()}
    if policy_path is not None and policies:
        save_policies(policy_path, policies, {"ratio": c, "episodes": EPISODES, "rollouts": ROLLOUTS, "seed": seed,
                                              "gamma": GAMMA, "lr": LEARNING_RATE, "shapes": shapes})
    return policies
