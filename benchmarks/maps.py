"""MAPS static scores: seconds for every head x the 20 relations on a GPT-2-small-shaped model.

    python benchmarks/maps.py                      # CPU, 1 thread
    python benchmarks/maps.py --threads 2 --device cuda

The model is a random GPT-2 (12 layers x 12 heads, d_model 768, 50,257-token vocabulary),
built here and loaded through `load_model` like any local checkpoint. Its tokenizer is
word-level, with a vocabulary made of every word of the relation files followed by filler
words up to 50,257 tokens, so nearly all relation pairs are usable (words with punctuation,
such as "Port-au-Prince", are not single tokens). Scores on random weights mean nothing;
only the time does.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")

from analyses.maps import RELATIONS, load_relations, maps_scores, read_pairs, salient_operations  # noqa: E402
from benchmarks.common import PeakRSS, machine, markdown_table, timed  # noqa: E402
from interp import load_model  # noqa: E402

VOCAB = 50257


def random_model_folder(folder: Path) -> int:
    """Save the random GPT-2 and its word-level tokenizer; returns how many relation words
    its vocabulary holds."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from recipes.common import build_word_tokenizer

    words = list(dict.fromkeys(w for name in RELATIONS for pair in read_pairs(name) for w in pair))
    filler = [f"filler{i}" for i in range(VOCAB - 3 - len(words))]
    tok = build_word_tokenizer(words + filler)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), attn_implementation="eager")).save_pretrained(folder)
    tok.save_pretrained(folder)
    return len(words)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        n_words = random_model_folder(Path(tmp))
        model = load_model(tmp, device=args.device)
    c = model.cfg
    relations = load_relations(model.tokenizer)
    n_sources = len(torch.unique(torch.cat([r.source_ids for r in relations])))
    print(f"machine: {machine()}")
    print(f"model: random GPT-2, {c.n_layers} layers x {c.n_heads} heads, d_model {c.d_model}, vocab {c.d_vocab}; "
          f"word-level tokenizer = {n_words} relation words + {c.d_vocab - 3 - n_words} filler words + 3 specials")
    print(f"relations: {len(relations)}, usable pairs {sum(r.n_usable for r in relations)}, "
          f"distinct source tokens {n_sources}")

    def sync():
        if model.device.type == "cuda":
            torch.cuda.synchronize()

    maps_scores(model, relations, layers=[0], progress=False)  # warm-up
    with PeakRSS() as mem:
        result, seconds = timed(maps_scores, model, relations, progress=False)
        sync()
    _, salient_seconds = timed(salient_operations, model, 0, 0)
    sync()
    rows = [
        {"what": f"all {c.n_layers * c.n_heads} heads x {len(relations)} relations (scores + suppression)",
         "seconds": f"{seconds:.1f}", "peak extra RSS (MiB)": f"{mem.peak_extra / 2**20:.0f}"},
        {"what": "salient operations of one head (20 sources, top-10 targets, whole vocabulary)",
         "seconds": f"{salient_seconds:.1f}", "peak extra RSS (MiB)": "-"},
    ]
    print(markdown_table(rows))
    print(f"(scores tensor {tuple(result.scores.shape)}; device {args.device}, {args.threads} thread(s))")


if __name__ == "__main__":
    main()
