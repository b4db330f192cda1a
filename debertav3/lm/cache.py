"""Next-token logits one position at a time, with each layer's keys and values kept (a key-value cache).

Disentangled attention allows one: c2p(i, j) = q_i . pos_key[idx(i, j)] and p2c(i, j) = k_j . pos_query[idx(i, j)]
depend on i - j and on the key k_j alone, so under the causal mask the keys and values of earlier positions never
change as the text grows. A new token at position p then needs, per layer, its own query, key and value and one
row of attention over the p + 1 cached keys, instead of the whole window again; the enhanced mask decoder's keys and
values (the last layer's projections of the second-to-last layer's states) are cached the same way, and its query
P_p + H_p is only the new row. The embeddings are recomputed for the whole prefix (a lookup and a LayerNorm per
token, so that absolute positions at the input come out as the network adds them).

`CachedDecoder(lm).logits(ids)` gives the next-token logits after `ids` ([CLS] first) and keeps the cache for a
prefix of them; it is held to the full causal forward pass by tests/test_generation_cache.py.
"""

from __future__ import annotations

import torch

from .load import CausalLM


class CachedDecoder:
    """The next-token logits of a growing sequence, each call computing only the positions it has not seen."""

    def __init__(self, lm: CausalLM):
        self.network = lm.network
        self.ids: list[int] = []
        self.keys_values: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer (+ the EMD): [1, p, HD] each
        self.last: torch.Tensor | None = None

    @torch.no_grad()
    def logits(self, ids: list[int]) -> torch.Tensor:
        """[V] float32: the logits of the token after `ids`. The cache is extended while `ids` extends the sequence
        it holds, and rebuilt in one causal pass over `ids` when it does not (a window that slid, another prompt)."""
        if not self.ids or ids[: len(self.ids)] != self.ids:
            return self._rebuild(ids)
        for end in range(len(self.ids) + 1, len(ids) + 1):
            self.last = self._extend(ids[:end])
        return self.last

    def _rebuild(self, ids: list[int]) -> torch.Tensor:
        """Every position of `ids` at once (the ordinary causal pass), keeping each layer's keys and values."""
        deberta, ordinary = self.network.deberta, self._ordinary_layers()
        input_ids = torch.tensor([ids])
        encoded = deberta.encode(input_ids, torch.ones_like(input_ids), num_layers=len(ordinary), causal=True)
        self.keys_values = [layer.attention.self.keys_values(h) for layer, h in zip(ordinary, encoded.states)]
        return self._finish(ids, encoded.states[-1])

    def _extend(self, ids: list[int]) -> torch.Tensor:
        """The last position of `ids` through the layers against the cached keys, its own cached too."""
        deberta = self.network.deberta
        input_ids = torch.tensor([ids])
        x = deberta.embeddings(input_ids, torch.ones_like(input_ids))[:, -1:]  # [1, 1, HD]: the new position only
        rel, idx = self._relative(len(ids))
        mask = torch.ones(1, len(ids), dtype=torch.bool)
        for n, layer in enumerate(self._ordinary_layers()):
            x = layer(x, mask, x, rel, idx, self._append(n, layer.attention.self.keys_values(x)))
        return self._finish(ids, x)

    def _finish(self, ids: list[int], hidden: torch.Tensor) -> torch.Tensor:
        """From the new rows of the last ordinary layer's states to the logits of the last position: through the
        EMD (queries P_p + H_p, the last layer twice, keys and values from H, cached) when the network has one."""
        network, deberta = self.network, self.network.deberta
        self.ids, row = list(ids), hidden[:, -1:]
        if network.uses_emd:
            last = deberta.encoder.layer[-1]
            keys_values = self._append(len(self._ordinary_layers()), last.attention.self.keys_values(hidden))
            rel, idx = self._relative(len(ids))
            query = deberta.embeddings.position_embeddings.weight[len(ids) - 1][None, None] + row
            for _ in range(2):
                query = last(row, torch.ones(1, len(ids), dtype=torch.bool), query, rel, idx, keys_values)
            row = query
        head = network.lm_predictions["lm_head"]
        self.last = (head.transform(row[0, -1]) @ deberta.embeddings.word_embeddings.weight.t() + head.bias).float()
        return self.last

    def _ordinary_layers(self) -> list:
        layers = list(self.network.deberta.encoder.layer)
        return layers[:-1] if self.network.uses_emd else layers

    def _relative(self, length: int) -> tuple:
        """(relative table rows, the index row of the last position [1, length]) for a sequence of `length`."""
        rel, idx = self.network.deberta.encoder.relative_context(length)
        return rel, None if idx is None else idx[-1:]

    def _append(self, n: int, new: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pass n's cached (keys, values) with the new positions' added."""
        if n == len(self.keys_values):
            self.keys_values.append(new)
        else:
            self.keys_values[n] = tuple(torch.cat([old, add], 1) for old, add in zip(self.keys_values[n], new))
        return self.keys_values[n]
