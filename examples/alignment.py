"""Attention alignments learnt on a toy task: Bahdanau attention and the Transformer's encoder-decoder attention.

    python examples/alignment.py --out figs/              # reverse task, ~1-2 min on 2 cores
    python examples/alignment.py --task copy --out figs/  # copy task
    python examples/alignment.py --quick --out figs/      # CI: short training (maps are not yet sharp)

Task: sequences of 5..8 symbols out of 8, padded to length 8.  To *reverse* x_1..x_n the model must emit
y_i = x_{n+1-i}, so target step i should attend to source position n+1-i -- the anti-diagonal of the
alignment matrix (the diagonal for *copy*).  Both models are trained here from scratch, on NumPy through
npattn's autodiff, with Adam on random batches:

* RNNsearch (npattn.origins.bahdanau): bidirectional-GRU encoder, additive attention, GRU decoder;
  its alignment alpha_ij (Ty, Tx) comes from ``bahdanau.alignment``.
* A 2-layer post-LN Transformer (npattn.origins.transformer) with a linear output layer; its
  encoder-decoder attention maps (h heads per decoder layer) come from ``transformer.cross_attention_weights``.

Both use the source padding mask: padded source positions get exactly zero weight (the blank columns).
Printed per model: teacher-forced token accuracy on fresh sequences, and how often the strongest attention
weight of a target step falls on the expected source position (for the Transformer: its best head).
Figures: bahdanau.png and transformer.png (one held-out sequence of distinct symbols).

Measured (seed 0, reverse, 600 steps, ~30 s on 2 cores): RNNsearch token accuracy 1.000 with 97.8 % of
target steps putting their strongest weight on the expected source position; Transformer 0.999, best head
(layer 1, head 3) 87.6 % -- its layer-0 heads mostly look at the end of the source, layer 1 does the reversal.
"""
from __future__ import annotations

import argparse
import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import autograd as ag  # noqa: E402
from npattn.origins import bahdanau as rnnsearch  # noqa: E402
from npattn.origins import transformer as tf  # noqa: E402

SYMBOLS = 8          # the vocabulary of the task; the Transformer's decoder adds a start symbol
BOS = SYMBOLS
MAX_LEN, MIN_LEN = 8, 5


# ---------------------------------------------------------------------------------------------
# data


def batch(rng, size: int, task: str):
    """source (B, L) ints, target (B, L) ints, padding (B, L) bool (True = pad) -- same for both sides."""
    lengths = rng.integers(MIN_LEN, MAX_LEN + 1, size=size)
    padding = np.arange(MAX_LEN)[None, :] >= lengths[:, None]
    source = np.where(padding, 0, rng.integers(0, SYMBOLS, size=(size, MAX_LEN)))
    target = source.copy()
    if task == "reverse":
        for row, n in enumerate(lengths):
            target[row, :n] = source[row, :n][::-1]
    return source, target, padding


def held_out_example(rng, task: str, length: int = 7):
    """One sequence of distinct symbols (so that the expected alignment is unambiguous), padded to MAX_LEN."""
    padding = (np.arange(MAX_LEN) >= length)[None, :]
    source = np.zeros((1, MAX_LEN), dtype=int)
    source[0, :length] = rng.permutation(SYMBOLS)[:length]
    target = source.copy()
    if task == "reverse":
        target[0, :length] = source[0, :length][::-1]
    return source, target, padding


def expected_source_position(padding: np.ndarray, task: str) -> np.ndarray:
    """(B, L): the source position target step i should attend to (-1 on padded steps)."""
    lengths = (~padding).sum(axis=1)[:, None]
    steps = np.arange(MAX_LEN)[None, :]
    position = lengths - 1 - steps if task == "reverse" else np.broadcast_to(steps, padding.shape)
    return np.where(padding, -1, position)


def embed(table: ag.Tensor, tokens: np.ndarray) -> ag.Tensor:
    """Rows of an embedding table (a differentiable gather): (B, L) ints -> (B, L, d)."""
    return table[ag.from_numpy(tokens)]


def masked_nll(log_probs: ag.Tensor, target: np.ndarray, padding: np.ndarray) -> ag.Tensor:
    """Mean negative log-likelihood of the target symbols over the unpadded target steps."""
    one_hot = np.eye(log_probs.shape[-1])[target] * (~padding)[..., None]
    picked = ag.sum(log_probs * ag.from_numpy(one_hot.astype(np.float64)))
    return -picked / float((~padding).sum())


def accuracy(log_probs: ag.Tensor, target: np.ndarray, padding: np.ndarray) -> float:
    predicted = ag.to_numpy(ag.argmax(log_probs, axis=-1))
    return float(((predicted == target) & ~padding).sum() / (~padding).sum())


# ---------------------------------------------------------------------------------------------
# the two models
#
# Each model's dict also holds its embedding tables (and the Transformer's output layer); the mechanisms take
# exactly their own parameters (npattn's parameter contract), so ``_core`` hands them the rest only.

EXTRA_KEYS = ("embedding.source", "embedding.target", "output.weight", "output.bias")


def _core(params: dict) -> dict:
    """The mechanism's own parameters: ``params`` without the embedding tables and the output layer."""
    return {k: v for k, v in params.items() if k not in EXTRA_KEYS}


class RNNsearch:
    name = "bahdanau"

    def __init__(self, rng, hidden=32, embed_dim=16):
        self.params = rnnsearch.init(rng, embed_dim, hidden, vocab=SYMBOLS, maxout=embed_dim)
        self.params["embedding.source"] = ag.from_numpy(rng.standard_normal((SYMBOLS, embed_dim)) * 0.3)
        self.params["embedding.target"] = ag.from_numpy(rng.standard_normal((SYMBOLS, embed_dim)) * 0.3)

    @staticmethod
    def _inputs(params, source, target):
        return embed(params["embedding.source"], source), embed(params["embedding.target"], target)

    def log_probs(self, params, source, target, padding):
        src, tgt = self._inputs(params, source, target)  # the decoder shifts the target right itself
        return rnnsearch.bahdanau(_core(params), src, tgt, ag.from_numpy(padding))

    def alignments(self, source, target, padding) -> np.ndarray:
        """(B, 1, Ty, Tx): one 'head'."""
        src, tgt = self._inputs(self.params, source, target)
        return ag.to_numpy(rnnsearch.alignment(_core(self.params), src, tgt, ag.from_numpy(padding)))[:, None]


class Transformer:
    name = "transformer"

    def __init__(self, rng, d_model=32, heads=4, layers=2):
        self.heads = heads
        self.structure = {"num_layers": layers, "attn_bias": True}    # given to init and to every apply call
        self.params = tf.init(rng, d_model, d_ff=64, **self.structure)
        scale = d_model ** -0.5  # embeddings are multiplied by sqrt(d_model) inside (the paper's convention)
        self.params["embedding.source"] = ag.from_numpy(rng.standard_normal((SYMBOLS, d_model)) * scale)
        self.params["embedding.target"] = ag.from_numpy(rng.standard_normal((SYMBOLS + 1, d_model)) * scale)
        self.params["output.weight"] = ag.from_numpy(rng.standard_normal((SYMBOLS, d_model)) * scale)
        self.params["output.bias"] = ag.from_numpy(np.zeros(SYMBOLS))

    @staticmethod
    def _inputs(params, source, target):
        shifted = np.concatenate([np.full((target.shape[0], 1), BOS), target[:, :-1]], axis=1)  # teacher forcing
        return embed(params["embedding.source"], source), embed(params["embedding.target"], shifted)

    def log_probs(self, params, source, target, padding):
        src, tgt = self._inputs(params, source, target)
        mask = ag.from_numpy(padding)
        out = tf.transformer(_core(params), src, tgt, mask, mask, heads=self.heads, dropout=0.0, **self.structure)
        return ag.log_softmax(ag.linear(out, params["output.weight"], params["output.bias"]), axis=-1)

    def alignments(self, source, target, padding) -> np.ndarray:
        """(B, layers * heads, Ty, Tx)."""
        src, tgt = self._inputs(self.params, source, target)
        mask = ag.from_numpy(padding)
        maps = tf.cross_attention_weights(_core(self.params), src, tgt, mask, mask, heads=self.heads,
                                          **self.structure)
        return np.concatenate([ag.to_numpy(m) for m in maps], axis=1)


# ---------------------------------------------------------------------------------------------
# training and evaluation


def train(model, rng, steps: int, task: str, batch_size=32, lr=3e-3) -> None:
    """Adam (Kingma & Ba) on the masked NLL, written out on the backend arrays."""
    def loss(params, source, target, padding):
        return masked_nll(model.log_probs(params, source, target, padding), target, padding)

    step = ag.value_and_grad(loss)
    xp = ag.xp
    first = {k: xp.zeros_like(v.data if isinstance(v, ag.Tensor) else v) for k, v in model.params.items()}
    second = {k: xp.zeros_like(m) for k, m in first.items()}
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    start = time.perf_counter()
    for t in range(1, steps + 1):
        value, grads = step(model.params, *batch(rng, batch_size, task))
        for k, g in grads.items():
            g = g.data if isinstance(g, ag.Tensor) else g
            first[k] = beta1 * first[k] + (1 - beta1) * g
            second[k] = beta2 * second[k] + (1 - beta2) * g * g
            update = (first[k] / (1 - beta1 ** t)) / (xp.sqrt(second[k] / (1 - beta2 ** t)) + eps)
            current = model.params[k]
            model.params[k] = (current.data if isinstance(current, ag.Tensor) else current) - lr * update
        if t % max(1, steps // 5) == 0 or t == steps:
            print(f"  {model.name:12s} step {t:4d}  loss {float(value):.3f}  ({time.perf_counter() - start:.0f} s)",
                  flush=True)


def evaluate(model, rng, task: str, size=256) -> tuple:
    """(token accuracy, alignment hit rate of the best head, index of that head)."""
    source, target, padding = batch(rng, size, task)
    with ag.no_grad():
        acc = accuracy(model.log_probs(model.params, source, target, padding), target, padding)
        maps = model.alignments(source, target, padding)                         # (B, heads, Ty, Tx)
    expected = expected_source_position(padding, task)
    valid = expected >= 0
    hits = [float((maps[:, h].argmax(axis=-1) == expected)[valid].mean()) for h in range(maps.shape[1])]
    best = int(np.argmax(hits))
    return acc, hits[best], best


def plot(model, source, target, padding, path, title):
    with ag.no_grad():
        maps = model.alignments(source, target, padding)[0]                      # (heads, Ty, Tx)
    n = int((~padding[0]).sum())
    count = maps.shape[0]
    cols = min(count, 4)
    rows = -(-count // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(4.5, 3.2 * cols), 3.2 * rows + 0.4), squeeze=False)
    for h, ax in enumerate(axes.ravel()):
        if h >= count:
            ax.axis("off")
            continue
        ax.imshow(maps[h, :n, :], cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks(range(MAX_LEN), [("-" if pad else str(s)) for s, pad in zip(source[0], padding[0])])
        ax.set_yticks(range(n), [str(s) for s in target[0, :n]])
        ax.set_xlabel("source (- = padding)")
        ax.set_ylabel("target")
        if count > 1:
            ax.set_title(f"layer {h // model.heads} head {h % model.heads}", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=("reverse", "copy"), default="reverse")
    parser.add_argument("--steps", type=int, default=0, help="training steps per model (default 600, quick 40)")
    parser.add_argument("--quick", action="store_true", help="short training (CI)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=".", help="folder for the PNG figures")
    args = parser.parse_args(argv)
    steps = args.steps or (40 if args.quick else 600)
    os.makedirs(args.out, exist_ok=True)
    print(f"task: {args.task} sequences of {MIN_LEN}..{MAX_LEN} symbols out of {SYMBOLS}; {steps} Adam steps per model")
    example = held_out_example(np.random.default_rng(10_000 + args.seed), args.task)
    for index, build in enumerate((RNNsearch, Transformer)):
        model = build(np.random.default_rng(args.seed + index))
        train(model, np.random.default_rng(args.seed + 100 + index), steps, args.task)
        acc, hit, head = evaluate(model, np.random.default_rng(args.seed + 200), args.task)
        where = "" if model.name == "bahdanau" else f" (best head: layer {head // model.heads} head {head % model.heads})"
        print(f"{model.name:12s} token accuracy {acc:.3f}  attention on the expected source position {hit:.3f}{where}")
        path = os.path.join(args.out, f"{model.name}.png")
        plot(model, *example, path, f"{model.name}, {args.task}: {steps} steps, accuracy {acc:.2f}")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
