"""Roofline step-time terms (COST_MODEL.md): every operator costs max(FLOPs / rate, bytes / bandwidth).

Per GPU of a tensor-parallel group, per layer, for a forward over T new tokens:

    dense linears   FLOPs 2·P·T            bytes P (weights, once) + T·(in + out) activations
    MoE experts     FLOPs 2·T·e·P_e        bytes U(T)·P_e + routed activations,
                    U(T) = E·(1 − (1 − e/E)^T) distinct experts hit by T tokens
    attention       FLOPs 4·d_head·heads·pairs, pairs = Σ_r T_r·(KV_r + T_r)
                    bytes (KV + T)·(K and V bytes per token) + T·(Q and O bytes per token):
                    the cached KV is read once per request (all tree tokens share a tile)
    all-reduce      2 per layer when TP > 1: 2·(TP−1)/TP · T·hidden bytes ÷ link + latency
    LM head         a vocab-parallel linear over the tokens that need logits (+ logits all-gather)
    fixed           layers × kernels × kernel_floor (minimum duration of every kernel)

With fitted rates (echo_sim.cost.fitted) the same terms use the achieved-rate curves, GEMM floors,
element-wise ops, fitted all-reduce latency and eager per-layer host time instead.

Bytes are in the model's dtype; every byte read or written is charged against one bandwidth
(the measured copy rate, counted read + write). Launch overhead (graph replay vs eager
launches) is separate: `RooflineTerms.launch`.
"""

from __future__ import annotations

import math

import numpy as np

from echo_sim.cost.fitted import FittedRates
from echo_sim.cost.memo import remembered
from echo_sim.cost.presets import CostModelError, HardwareSpec, ModelSpec, NetworkSpec
from echo_sim.cost.routing import ExpertRouting, UNIFORM

EXTRA_KERNELS = 4  # per forward outside the layers: embedding, final norm, LM head, argmax
TABLE_LIMIT = 1 << 17  # token counts tabulated at most (verify and draft forwards stay far below)
FEW = 32  # up to this many forwards, plain floats beat numpy's per-call overhead (NetworkCost.forward_floats)
FLOATS_KEPT = 1 << 15  # token lists (and grid shapes) whose fixed terms a network remembers
SHORT_SUM = 7  # numpy sums a float64 array of up to 7 values left to right (pairwise from 8 on)


class TokenTable:
    """An elementwise function of a token count, tabulated over 0…size−1 on first use.

    A simulation evaluates the same few thousand token counts at every step; a table lookup
    returns exactly what the function returns for them (same elementwise arithmetic), at a
    fraction of the cost. Non-integer or very large counts fall through to the function.
    """

    def __init__(self, function):
        self.function = function
        self.values = np.zeros(0)
        self.floats: list[float] = []  # self.values as plain floats (the plain-float forward reads them)

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        index = tokens.astype(np.int64)
        top = int(index.max(initial=0))
        if top >= TABLE_LIMIT or np.any(index != tokens) or index.min(initial=0) < 0:
            return self.function(tokens)
        if top >= len(self.values):
            size = max(1024, 1 << top.bit_length())
            self.values = self.function(np.arange(size, dtype=float))
            self.floats = self.values.tolist()
        return self.values[index]

    def holds(self, counts: list[float], size: int | None = None) -> bool:
        """Every count is tabulated already (integral, 0 <= count < size): `floats` answers them.
        `size`: a smaller bound (another table's), to check two tables in one pass."""
        size = len(self.floats) if size is None else min(size, len(self.floats))
        for c in counts:
            if not (c.is_integer() and 0 <= c < size):
                return False
        return True


class NetworkCost:
    """Roofline time of one forward of one transformer stack, vectorised over token counts.

    Everything that does not depend on the tokens is precomputed here, once per cost model.
    """

    def __init__(self, net: NetworkSpec, hw: HardwareSpec, tp: int, bytes_per_param: int,
                 rates: FittedRates | None = None, routing: ExpertRouting = UNIFORM):
        self.net, self.hw, self.tp, self.bpp = net, hw, tp, bytes_per_param
        self.rates, self.routing = rates, routing
        self.q_heads = net.num_heads / tp
        self.kv_heads = math.ceil(net.num_kv_heads / tp)  # replicated when fewer heads than ranks
        q_out, kv_out = self.q_heads * net.head_dim, 2 * self.kv_heads * net.head_dim
        h, width = net.hidden_size, net.intermediate_size / tp
        up_out = (2 if net.gated_mlp else 1) * width
        # (in, out) per GPU of each dense linear in one layer.
        shapes = [(net.attention_input_size, q_out + kv_out), (q_out, h)]
        if net.is_moe:
            shapes.append((h, net.num_experts))  # router, replicated
            self.expert_params = (up_out + width) * h
            self.expert_act = h + up_out + width + h  # per routed token
        else:
            shapes += [(h, up_out), (width, h)]
        self.linear_params = np.array([i * o for i, o in shapes], dtype=float)
        self.linear_act = np.array([i + o for i, o in shapes], dtype=float)
        self.kv_bytes_per_token = kv_out * bytes_per_param  # K and V, one layer
        self.qo_bytes_per_token = 2 * q_out * bytes_per_param
        self.attention_flops_per_pair = 4 * net.head_dim * self.q_heads
        self.lm_params = h * net.vocab_size / tp
        self.lm_param_array = np.array([self.lm_params])
        self.lm_act_array = np.array([h + net.vocab_size / tp])
        self.fc_param_array = np.array([float(net.input_fc_size * h)])
        self.fc_act_array = np.array([float(net.input_fc_size + h)])
        self.embedding_s_per_token = h * bytes_per_param / hw.memory_bytes_per_s
        self.layer_kernels = net.kernels_per_layer + (2 if tp > 1 else 0)
        self.kernel_count = net.num_layers * self.layer_kernels + EXTRA_KERNELS
        # Element-wise traffic per token per layer: 2 norms (read + write h), 2 residual adds
        # (read 2h, write h), RoPE on q and k, the activation (read up_out, write width).
        act_width = width * (net.experts_per_token if net.is_moe else 1)
        act_up = up_out * (net.experts_per_token if net.is_moe else 1)
        self.elementwise_bytes_per_token = (4 * h + 6 * h + 2 * (q_out + kv_out / 2) + act_up + act_width) * bytes_per_param
        if rates is None:
            self.fixed_s = self.kernel_count * hw.kernel_floor_s
            self.eager_s = self.kernel_count * hw.kernel_launch_s
            self.elementwise_s_per_token = 0.0
        else:
            self.fixed_s = net.num_layers * rates.elementwise_layer_s + EXTRA_KERNELS * hw.kernel_floor_s
            self.eager_s = net.num_layers * rates.eager_layer_s + EXTRA_KERNELS * hw.kernel_launch_s
            self.elementwise_s_per_token = (net.num_layers * self.elementwise_bytes_per_token
                                            / (hw.memory_bytes_per_s * rates.elementwise_fraction))
        self._token_terms = TokenTable(self._token_only_seconds)
        self._input_fc = TokenTable(lambda t: self._linear(t, self.fc_param_array, self.fc_act_array))
        self._logits = TokenTable(self._lm_head)
        self._with_logits = np.zeros(0)  # _token_terms + _logits per count (verify_forward)
        self._token_terms_of: dict = {}  # forward_floats's token lists -> their token_floats

    def _roofline(self, flops, bytes_moved):
        return np.maximum(flops / self.hw.matmul_flops_per_s, bytes_moved / self.hw.memory_bytes_per_s)

    def _gemm(self, flops, bytes_moved, gemm_flops, weight_bytes, kernels=1.0):
        """One GEMM kernel (or `kernels` grouped ones): the roofline, or with fitted rates the
        achieved-rate curves at this GEMM's size (gemm_flops, weight_bytes of one GEMM) + floors."""
        if self.rates is None:
            return self._roofline(flops, bytes_moved)
        rates, hw = self.rates, self.hw
        return (np.maximum(flops / (hw.matmul_flops_per_s * rates.flops(gemm_flops)),
                           bytes_moved / (hw.memory_bytes_per_s * rates.bandwidth(weight_bytes)))
                + kernels * rates.gemm_floor_s)

    def _linear_each(self, t, params, act):
        """Shape: t [n, 1], params/act [ops] -> [n, ops] seconds of each linear."""
        flops = 2.0 * params * t
        return self._gemm(flops, (params + t * act) * self.bpp, flops, params * self.bpp)

    def _linear(self, tokens, params, act):
        """Shape: tokens [n], params/act [ops] -> [n] seconds summed over the ops."""
        return self._linear_each(tokens[:, None], params, act).sum(axis=1)

    def linear_ops(self, tokens) -> np.ndarray:
        """Seconds of each dense linear of ONE layer. Shape: tokens [n] -> [n, ops]; ops in order
        qkv, o, then gate_up, down (dense) or router (MoE)."""
        t = np.atleast_1d(np.asarray(tokens, dtype=float))[:, None]
        return self._linear_each(t, self.linear_params, self.linear_act)

    def _experts(self, tokens):
        net = self.net
        union = self.routing.distinct_experts(tokens, net.num_experts, net.experts_per_token)
        routed = tokens * net.experts_per_token
        flops = 2.0 * routed * self.expert_params
        per_expert = flops / np.maximum(union, 1.0)  # one expert's GEMM: its share of the routed tokens
        return self._gemm(flops, (union * self.expert_params + routed * self.expert_act) * self.bpp,
                          per_expert, self.expert_params * self.bpp, kernels=2.0)

    def _allreduce(self, tokens):
        if self.tp == 1:
            return np.zeros_like(tokens)
        ring = 2.0 * (self.tp - 1) / self.tp * tokens * self.net.hidden_size * self.bpp
        latency = self.hw.allreduce_latency_s if self.rates is None else self.rates.allreduce_latency_s(self.tp)
        return ring / self.hw.link_bytes_per_s + latency

    def _lm_head(self, logits_tokens):
        out = self._linear(logits_tokens, self.lm_param_array, self.lm_act_array)
        if self.tp > 1:  # all-gather of the vocab-parallel logits
            gathered = (self.tp - 1) / self.tp * logits_tokens * self.net.vocab_size * self.bpp
            out = out + gathered / self.hw.link_bytes_per_s + self.hw.allreduce_latency_s
        return out

    def _parts(self, tokens, kv_tokens, pairs, logits_tokens, with_input_fc) -> dict:
        """Unmasked seconds per component; tokens float [n]."""
        layers = self.net.num_layers
        attention = self._attention(tokens, kv_tokens, pairs)
        linear = layers * self._linear(tokens, self.linear_params, self.linear_act)
        if self.net.input_fc_size:
            fc = self._linear(tokens, self.fc_param_array, self.fc_act_array)
            linear = linear + np.where(with_input_fc, fc, 0.0)
        parts = {
            "linear": linear,
            "attention": layers * attention,
            "lm_head": self._lm_head(np.broadcast_to(np.asarray(logits_tokens, dtype=float), tokens.shape)),
            "embedding": tokens * self.embedding_s_per_token,
            "fixed": self.fixed_s + tokens * self.elementwise_s_per_token,
        }
        parts["experts"] = layers * self._experts(tokens) if self.net.is_moe else np.zeros_like(tokens)
        parts["allreduce"] = layers * 2.0 * self._allreduce(tokens)
        return parts

    def breakdown(self, tokens, kv_tokens, pairs, logits_tokens, with_input_fc=False) -> dict:
        """Seconds per component for forwards over `tokens` new tokens (0 where tokens is 0).

        Shape: tokens, pairs, logits_tokens float [n] (or broadcastable); kv_tokens scalar or [n]:
        Σ_r KV_r cached tokens read; pairs: Σ_r T_r·(KV_r + T_r) attention pairs;
        with_input_fc: bool or bool [n], forwards that run EAGLE-3's input fc.
        """
        tokens = np.atleast_1d(np.asarray(tokens, dtype=float))
        active = tokens > 0
        parts = self._parts(tokens, kv_tokens, pairs, logits_tokens, with_input_fc)
        return {name: np.where(active, value, 0.0) for name, value in parts.items()}

    def _attention(self, tokens, kv_tokens, pairs):
        flops = self.attention_flops_per_pair * np.asarray(pairs, dtype=float)
        bytes_moved = ((np.asarray(kv_tokens, dtype=float) + tokens) * self.kv_bytes_per_token
                       + tokens * self.qo_bytes_per_token)
        if self.rates is None:
            return self._roofline(flops, bytes_moved)
        return np.maximum(flops / (self.hw.matmul_flops_per_s * self.rates.attention_flops_fraction),
                          bytes_moved / (self.hw.memory_bytes_per_s * self.rates.attention_bandwidth_fraction))

    def _token_only_seconds(self, tokens):
        """Seconds [n] of every term that depends on the token count alone (not KV, not logits)."""
        layers = self.net.num_layers
        total = layers * self._linear(tokens, self.linear_params, self.linear_act)
        total = total + tokens * (self.embedding_s_per_token + self.elementwise_s_per_token) + self.fixed_s
        if self.net.is_moe:
            total = total + layers * self._experts(tokens)
        return total + layers * 2.0 * self._allreduce(tokens)

    def forward(self, tokens, kv_tokens, pairs, logits_tokens, with_input_fc=False):
        """Seconds [n]: the sum of `breakdown` (up to rounding), without launch overhead."""
        tokens = np.atleast_1d(np.asarray(tokens, dtype=float))
        logits = np.asarray(logits_tokens, dtype=float)
        if logits.shape != tokens.shape:
            logits = np.broadcast_to(logits, tokens.shape)
        total = (self._token_terms(tokens) + self._logits(logits)
                 + self.net.num_layers * self._attention(tokens, kv_tokens, pairs))
        if self.net.input_fc_size:
            total = total + np.where(with_input_fc, self._input_fc(tokens), 0.0)
        return np.where(tokens > 0, total, 0.0)

    def verify_forward(self, tokens: np.ndarray, kv_tokens: float, pairs: np.ndarray) -> np.ndarray | None:
        """forward(tokens, kv_tokens, pairs, tokens) of verify forwards (every token needs logits, no
        input fc) with the token-only terms and the logits read from one summed table: the same
        IEEE operations in the same order, without the per-table checks. Shape: [n] -> [n].
        None when a count is not tabulated yet, not integral or < 1, or the network has an input fc."""
        tabled = self.verify_token_seconds(tokens)
        if tabled is None:
            return None
        return tabled + self.net.num_layers * self.verify_attention(tokens, kv_tokens, pairs)

    def verify_token_seconds(self, tokens: np.ndarray) -> np.ndarray | None:
        """float [n]: the terms of a verify forward that depend on its token count alone (token-only
        terms + logits, one summed table), None where verify_forward is None."""
        index = tokens.astype(np.int64)
        terms, logits = self._token_terms, self._logits
        size = min(len(terms.values), len(logits.values))
        if (self.net.input_fc_size or index.min(initial=1) < 1 or index.max(initial=0) >= size
                or np.any(index != tokens)):
            return None
        if len(self._with_logits) != size:  # the tables grew: sum them again
            self._with_logits = terms.values[:size] + logits.values[:size]
        return self._with_logits[index]

    def tabulate(self, tokens: np.ndarray) -> None:
        """Tabulate the token-only and logits terms of these counts (what forward does on first use)."""
        self._token_terms(tokens)
        self._logits(tokens)

    def verify_attention(self, tokens: np.ndarray, kv_tokens: float, pairs: np.ndarray) -> np.ndarray:
        """float [n]: one layer's attention seconds of verify forwards (_attention, without its casts)."""
        flops_rate, bytes_rate = self._attention_rates()
        return np.maximum(self.attention_flops_per_pair * pairs / flops_rate,
                          ((kv_tokens + tokens) * self.kv_bytes_per_token + tokens * self.qo_bytes_per_token)
                          / bytes_rate)

    def forward_floats(self, tokens: list[float], kv_tokens: float, pairs: list[float],
                       with_input_fc: list[bool] | None = None, logits_tokens: list[float] | None = None
                       ) -> list[float] | None:
        """forward(tokens, kv_tokens, pairs, logits_tokens, with_input_fc) for a few forwards in
        plain floats (logits_tokens None: every token needs logits): the same IEEE operations in the
        same order, several times faster than numpy on a handful of values (tests compare the two).
        None when a count is not tabulated yet (the caller then takes forward, which tabulates it)."""
        # the token-count terms of a token list, remembered: a step's verify, draft levels, grids and
        # prefill chunks recur step after step, and only their attention term changes with ΣKV
        key = (tuple(tokens), None if with_input_fc is None else tuple(with_input_fc),
               None if logits_tokens is None else tuple(logits_tokens))
        fixed = remembered(self._token_terms_of, key, lambda: self.token_floats(tokens, with_input_fc, logits_tokens),
                           FLOATS_KEPT)
        return None if fixed is None else self.floats_with_attention(tokens, kv_tokens, pairs, fixed)

    def token_floats(self, tokens: list[float], with_input_fc: list[bool] | None = None,
                     logits_tokens: list[float] | None = None) -> tuple[list, list] | None:
        """forward_floats's terms that do not depend on ΣKV, per forward: (token-only + logits
        seconds, None where tokens <= 0; input-fc seconds or None), for callers that price one
        token list at step after step (forward_floats remembers them). None when a count is not
        tabulated yet."""
        terms, logits, fc = self._token_terms, self._logits, self._input_fc
        logit_counts = tokens if logits_tokens is None else logits_tokens
        if not (terms.holds(tokens, len(logits.floats)) if logits_tokens is None  # one pass, both tables
                else terms.holds(tokens) and logits.holds(logit_counts)):
            return None
        use_fc = bool(self.net.input_fc_size)
        if use_fc and not fc.holds(tokens):
            return None
        base, extra = [], []
        for i, t in enumerate(tokens):
            n = int(t)
            base.append(terms.floats[n] + logits.floats[int(logit_counts[i])] if t > 0 else None)
            extra.append((fc.floats[n] if with_input_fc is not None and with_input_fc[i] else 0.0) if use_fc else None)
        return base, extra

    def floats_with_attention(self, tokens: list[float], kv_tokens: float, pairs: list[float],
                              fixed: tuple[list, list]) -> list[float]:
        """forward_floats from token_floats's terms: adds the attention term, in forward's order."""
        layers, kv = self.net.num_layers, float(kv_tokens)
        flops_rate, bytes_rate = self._attention_rates()
        per_pair, kv_bytes, qo_bytes = self.attention_flops_per_pair, self.kv_bytes_per_token, self.qo_bytes_per_token
        out = []
        for t, pair, base, extra in zip(tokens, pairs, *fixed):
            if base is None:
                out.append(0.0)
                continue
            total = base + layers * max(per_pair * pair / flops_rate, ((kv + t) * kv_bytes + t * qo_bytes) / bytes_rate)
            out.append(total if extra is None else total + extra)
        return out

    def _attention_rates(self) -> tuple[float, float]:
        """(FLOP/s, bytes/s) the attention term divides by (_attention)."""
        if self.rates is None:
            return self.hw.matmul_flops_per_s, self.hw.memory_bytes_per_s
        return (self.hw.matmul_flops_per_s * self.rates.attention_flops_fraction,
                self.hw.memory_bytes_per_s * self.rates.attention_bandwidth_fraction)

    def weight_bytes(self) -> float:
        """Weights held by one GPU (all experts, embedding and LM head)."""
        net = self.net
        per_layer = self.linear_params.sum() + (net.num_experts * self.expert_params if net.is_moe else 0)
        fc = net.input_fc_size * net.hidden_size
        return (net.num_layers * per_layer + 2 * self.lm_params + fc) * self.bpp

    def kv_cache_bytes_per_token(self) -> float:
        return self.net.num_layers * self.kv_bytes_per_token


class RooflineTerms:
    """The four terms of T_step from presets: verify forward, launch, draft, prefill, scheduler."""

    def __init__(self, hw: HardwareSpec, model: ModelSpec, tp: int, rates: FittedRates | None = None,
                 routing: ExpertRouting = UNIFORM):
        self.hw, self.model, self.tp, self.rates = hw, model, tp, rates
        self.target = NetworkCost(model.target, hw, tp, model.bytes_per_param, rates, routing)
        self.draft_net = (NetworkCost(model.draft, hw, tp, model.bytes_per_param, rates, routing)
                          if model.draft is not None else None)
        self.target_eager_s = self.target.eager_s
        self.draft_eager_s = self.draft_net.eager_s if self.draft_net else 0.0
        self._grid_levels: dict = {}  # (bs, depth, width) -> draft_grid's token counts, levels, input-fc flags

    def verify_forward(self, tokens, batch_size: int, kv_tokens: float, pairs):
        """Seconds [n] of the target forward over `tokens` [n] (every token needs logits)."""
        if np.size(tokens) <= FEW and np.ndim(kv_tokens) == 0:  # a step's verify, a few candidates: plain floats
            tokens = np.asarray(tokens, dtype=float)
            seconds = self.target.forward_floats(tokens.ravel().tolist(), kv_tokens,
                                                 np.broadcast_to(np.asarray(pairs, dtype=float), tokens.shape).ravel().tolist())
            if seconds is not None:
                return np.array(seconds).reshape(np.atleast_1d(tokens).shape)
        elif np.ndim(tokens) == 1 and np.ndim(kv_tokens) == 0 and np.shape(pairs) == np.shape(tokens):
            seconds = self.target.verify_forward(tokens, float(kv_tokens), pairs)  # many candidates: one table
            if seconds is not None:
                return seconds
        return self.target.forward(tokens, kv_tokens, pairs, tokens)

    def launch(self, eager):
        """Seconds [n]: eager launches (layers × kernels × launch latency) or one graph replay."""
        return np.where(eager, self.target_eager_s, self.hw.graph_launch_s)

    def mixed_forward(self, tokens: float, batch_size: int, kv_tokens: float, pairs: float,
                      prefill_tokens: int, prefill_context: int) -> float:
        """One target forward over the verify tokens and a prefill chunk (prefill_mode "mixed"):
        logits for the verify tokens and the chunk's last token."""
        chunk_pairs = prefill_tokens * prefill_context + prefill_tokens * (prefill_tokens + 1) / 2
        return float(self.target.forward(tokens + prefill_tokens, kv_tokens + prefill_context,
                                         pairs + chunk_pairs, tokens + 1.0)[0])

    def draft(self, batch_size: int, depth: int, width: int, kv_tokens: float, extend_tokens: int | None = None) -> float:
        """Level 1 extends over `extend_tokens` (default bs: the tokens committed last step, with
        EAGLE-3's input fc), levels 2..S over bs·k tokens each.

        Each level is one graph-replayed draft forward; its tokens attend to their request's cached
        context plus the tree drafted so far (pairs ≈ tokens·(KV/bs + level)).
        """
        if depth == 0:
            return 0.0
        if self.draft_net is None:
            raise CostModelError(f"model preset {self.model.name!r} has no draft")
        widths = [width] * depth if isinstance(width, (int, float)) else list(width)  # one width per level
        tokens = [float(extend_tokens or batch_size)] + [float(batch_size * w) for w in widths[1:]]
        return self.draft_levels(batch_size, tokens, kv_tokens)

    def draft_levels(self, batch_size: int, tokens: list[float], kv_tokens: float) -> float:
        """A draft whose level l forward runs tokens[l − 1] tokens (draft(): bs·k' per level; a
        ragged draft: its levels' padded counts, integers as they are, not bs·(count / bs))."""
        if self.draft_net is None:
            raise CostModelError(f"model preset {self.model.name!r} has no draft")
        if len(tokens) <= SHORT_SUM:
            seconds = self._draft_floats(batch_size, tokens, kv_tokens)
            if seconds is not None:
                return seconds
        return self._draft_vector(batch_size, tokens, kv_tokens)

    def _draft_vector(self, batch_size: int, tokens: list[float], kv_tokens: float) -> float:
        """draft_levels over numpy arrays of levels: the reference of _draft_floats."""
        level = np.arange(1, len(tokens) + 1, dtype=float)
        counts = np.array(tokens, dtype=float)
        pairs = counts * (kv_tokens / batch_size + level)
        seconds = self.draft_net.forward(counts, kv_tokens, pairs, counts, with_input_fc=level == 1)
        return float(seconds.sum() + len(tokens) * self.hw.graph_launch_s)

    def _draft_floats(self, batch_size: int, tokens: list[float], kv_tokens: float) -> float | None:
        """draft_levels in plain floats (NetworkCost.forward_floats); None when a count is not
        tabulated. Levels are summed left to right, as numpy sums arrays of up to SHORT_SUM values."""
        depth = len(tokens)
        share = kv_tokens / batch_size
        pairs = [t * (share + float(level)) for level, t in enumerate(tokens, start=1)]
        seconds = self.draft_net.forward_floats(tokens, kv_tokens, pairs, [True] + [False] * (depth - 1))
        if seconds is None:
            return None
        total = seconds[0]
        for value in seconds[1:]:
            total += value
        return float(total + depth * self.hw.graph_launch_s)

    def draft_grid(self, batch_size: int, depth: int, width: int, kv_tokens: float) -> list[list[float]] | None:
        """[[draft(batch_size, d, w, kv_tokens) for d = 1 … depth] for w = 1 … width] from one
        plain-float pass over the levels: a level's tokens and pairs depend on its width and level
        alone (level 1 on neither), so every shape's levels are in one forward_floats list, summed
        left to right as _draft_floats sums them. None when a count is not tabulated yet, or when
        depth > SHORT_SUM (draft() sums such drafts pairwise, over numpy arrays)."""
        if self.draft_net is None or depth > SHORT_SUM or depth < 1:
            return None
        tokens, levels, with_fc = remembered(self._grid_levels, (batch_size, depth, width),
                                             lambda: _grid_levels(batch_size, depth, width), FLOATS_KEPT)
        share = kv_tokens / batch_size
        pairs = [t * (share + level) for t, level in zip(tokens, levels)]
        seconds = self.draft_net.forward_floats(tokens, kv_tokens, pairs, with_fc)
        if seconds is None:
            return None
        launch, grid = self.hw.graph_launch_s, []
        for w in range(width):
            total, row = seconds[0], [float(seconds[0] + launch)]
            for level in range(2, depth + 1):
                total += seconds[1 + w * (depth - 1) + level - 2]
                row.append(float(total + level * launch))
            grid.append(row)
        return grid

    def draft_prefill(self, tokens: int, context: int) -> float:
        """The draft's forward over a prompt chunk, without launch costs (0 without a draft)."""
        if tokens == 0 or self.draft_net is None:
            return 0.0
        return float(_chunk_forward(self.draft_net, tokens, context, True))

    def prefill(self, tokens: int, context: int, with_draft: bool = True) -> float:
        """A prompt chunk over its cached prefix, eagerly launched, plus (with_draft) the draft's
        extend over it."""
        if tokens == 0:
            return 0.0
        seconds = _chunk_forward(self.target, tokens, context, False) + self.target_eager_s
        if with_draft and self.draft_net is not None:
            seconds += self.draft_prefill(tokens, context) + self.draft_eager_s
        return float(seconds)

    def scheduler(self, batch_size: int) -> float:
        return self.hw.scheduler_step_s + self.hw.scheduler_per_request_s * batch_size

    def kv_capacity_tokens(self) -> int:
        """Tokens of KV (target + draft) that fit beside the weights in kv_memory_fraction of HBM."""
        nets = [self.target] + ([self.draft_net] if self.draft_net else [])
        free = self.hw.kv_memory_fraction * self.hw.memory_capacity_bytes - sum(n.weight_bytes() for n in nets)
        if free <= 0:
            raise CostModelError(
                f"model {self.model.name!r} at TP {self.tp} does not fit on {self.hw.name}: "
                f"weights need {sum(n.weight_bytes() for n in nets) / 1e9:.1f} GB per GPU")
        return int(free // sum(n.kv_cache_bytes_per_token() for n in nets))


def _grid_levels(batch_size: int, depth: int, width: int) -> tuple[list[float], list[float], list[bool]]:
    """draft_grid's forwards: (token counts, levels, input-fc flags): level 1 once, then levels 2…S
    of every width 1…k, width-major."""
    tokens, levels = [float(batch_size)], [1.0]
    for w in range(1, width + 1):
        for level in range(2, depth + 1):
            tokens.append(float(batch_size * w))
            levels.append(float(level))
    return tokens, levels, [True] + [False] * (len(tokens) - 1)


def _chunk_forward(net: NetworkCost, tokens: int, context: int, with_input_fc: bool) -> float:
    """One causal forward over a prompt chunk of `tokens` after `context` cached tokens, logits for
    its last token only: in plain floats once its counts are tabulated (forward_floats), else forward."""
    pairs = tokens * context + tokens * (tokens + 1) / 2  # causal
    seconds = net.forward_floats([float(tokens)], context, [pairs], [with_input_fc], [1.0])
    return seconds[0] if seconds is not None else net.forward(tokens, context, pairs, 1.0, with_input_fc)[0]
