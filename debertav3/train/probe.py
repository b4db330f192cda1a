"""A linear probe at evaluation time: how well the frozen model's features separate a small labelled task.

With `probe.train_file` and `probe.dev_file` set, every evaluation
1. embeds a seeded slice of `probe.examples` training sentences and up to as many dev sentences with the model
   users keep (the discriminator's backbone, or the MLM backbone for `objective=mlm`): the last hidden states,
   mean-pooled over the sentence's real tokens ([CLS] text [SEP], at most `probe.max_length`);
2. standardises them with the training slice's mean and deviation and fits a multinomial logistic regression with
   an L2 penalty `probe.l2` on its weights (convex: L-BFGS finds the same optimum from zero every time);
3. reports dev accuracy as `eval/probe_accuracy`, beside `eval/probe_majority` (the most frequent training
   label's share of the dev set), the accuracy of a probe that has learned nothing.

It is a cheap stand-in for fine-tuning, to follow transfer during pretraining: no parameter of the model changes.
The files are read with fine-tuning's reader (debertav3.data.labelled), so they take the same formats.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.labelled import encode_labels, label_vocabulary, read_split
from .config import ProbeConfig

BATCH = 64
LBFGS_STEPS = 100


class Probe:
    """The probe's sentences as padded id tensors and labels, read and tokenized once at the start of a run."""

    def __init__(self, cfg: ProbeConfig, tokenizer, seed: int):
        texts = [cfg.text_column]
        train = read_split(cfg.train_file, texts, cfg.label_column, cfg.header).subset(cfg.examples, seed)
        dev = read_split(cfg.dev_file, texts, cfg.label_column, cfg.header).subset(cfg.examples, seed)
        vocabulary = label_vocabulary(train)
        self.train = self._encode(tokenizer, train, cfg.max_length), torch.tensor(
            encode_labels(train, "classification", vocabulary))
        self.dev = self._encode(tokenizer, dev, cfg.max_length), torch.tensor(
            encode_labels(dev, "classification", vocabulary, cfg.train_file))
        self.num_classes, self.l2 = len(vocabulary), cfg.l2

    @staticmethod
    def _encode(tokenizer, split, max_length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of (ids, attention mask), each padded to its longest sentence."""
        ids = [[tokenizer.cls_id, *pieces[: max_length - 2], tokenizer.sep_id]
               for pieces in tokenizer.encode_batch([t[0] for t in split.texts])]
        batches = []
        for start in range(0, len(ids), BATCH):
            chunk = ids[start:start + BATCH]
            width = max(map(len, chunk))
            padded = torch.full((len(chunk), width), tokenizer.pad_id, dtype=torch.long)
            for row, sentence in enumerate(chunk):
                padded[row, :len(sentence)] = torch.tensor(sentence)
            batches.append((padded, (padded != tokenizer.pad_id).long()))
        return batches

    @torch.no_grad()
    def features(self, encode, batches, device) -> torch.Tensor:
        """Mean over each sentence's real tokens of `encode(ids, mask)`'s last hidden states: [N, hidden]."""
        pooled = []
        for ids, mask in batches:
            ids, mask = ids.to(device), mask.to(device)
            states = encode(ids, mask).float()
            weights = mask.unsqueeze(-1).float()
            pooled.append(((states * weights).sum(1) / weights.sum(1)).cpu())
        return torch.cat(pooled)

    def evaluate(self, encode, device) -> dict[str, float]:
        """Dev accuracy of the logistic regression fitted on the training slice's features, and the majority's."""
        x_train, x_dev = self.features(encode, self.train[0], device), self.features(encode, self.dev[0], device)
        y_train, y_dev = self.train[1], self.dev[1]
        mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-6)
        weight, bias = fit_logistic_regression((x_train - mean) / std, y_train, self.num_classes, self.l2)
        predicted = (((x_dev - mean) / std) @ weight + bias).argmax(-1)
        majority = torch.bincount(y_train, minlength=self.num_classes).argmax()
        return {"probe_accuracy": (predicted == y_dev).float().mean().item(),
                "probe_majority": (y_dev == majority).float().mean().item()}


def kept_encoder(model):
    """(ids, mask) -> last hidden states of the model users keep: the discriminator (with the table it reads, E_D
    under every sharing mode), or for `objective=mlm` the MLM backbone."""
    if model.discriminator is not None:
        table = model.discriminator_embedding()
        return lambda ids, mask: model.discriminator.deberta(ids, mask, table)
    return lambda ids, mask: model.generator.deberta(ids, mask)


def fit_logistic_regression(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """argmin over (W, b) of mean cross-entropy(x W + b, y) + l2 * ||W||^2, by L-BFGS from zero (float64)."""
    x = x.double()
    weight = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=LBFGS_STEPS, line_search_fn="strong_wolfe")

    def objective():
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(objective)
    return weight.detach().float(), bias.detach().float()
