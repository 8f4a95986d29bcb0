"""The task of `zoo/constructed`, whose circuit is known by construction: `<bos> x1 .. xn xk`
continues with `x(k+1)`; the corrupted prompt has the same layout with other words."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from interp.models import HookedModel
from interp.patching import Task

NAME = "zoo/constructed"
N_POSITIONS = 32  # the model's context
# Its vocabulary: <bos> <pad> <unk>, then these words from id FIRST_WORD_ID on.
WORDS = ["apple", "bird", "boat", "book", "bread", "cake", "car", "cat", "chair", "cloud", "coin", "cup", "desk",
         "dog", "door", "drum", "egg", "fish", "flag", "frog", "hat", "key", "lamp", "leaf", "moon", "nest", "pen",
         "ring"]
FIRST_WORD_ID = 3


@dataclass(frozen=True)
class Prompts:
    """Token ids of the task (the recipe's vocabulary), `<bos>` first.

    clean, corrupt: `[n, n_words + 2]`; answer, wrong: `[n]`; repeat_pos: `[n]`, the position
    k of the last word's earlier occurrence (the answer sits at k + 1, in both prompts)."""

    clean: torch.Tensor
    corrupt: torch.Tensor
    answer: torch.Tensor
    wrong: torch.Tensor
    repeat_pos: torch.Tensor


def task_prompts(n: int, n_words: int = 8, seed: int = 0) -> Prompts:
    """`n` prompt pairs `<bos> x1 .. xn xk` -> x(k+1), 1 <= k < n_words, drawn with `seed`.

    The clean prompt's words are distinct; the corrupted prompt has the same layout (same k)
    with `n_words` other distinct words, none of them in the clean prompt, so its answer (the
    `wrong` token) differs and no clean word can be found in it.
    """
    for label, value in (("n", n), ("n_words", n_words), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"task_prompts: {label} must be an integer, got {value!r}")
    if n < 1:
        raise ValueError(f"task_prompts needs n >= 1 prompt pairs, got n={n}")
    most = min(len(WORDS) // 2, N_POSITIONS - 2)
    if not 2 <= n_words <= most:
        raise ValueError(f"task_prompts needs 2 <= n_words <= {most} (clean and corrupted prompts use "
                         f"disjoint words out of {len(WORDS)}), got n_words={n_words}")
    gen = torch.Generator().manual_seed(seed)
    picks = torch.stack([torch.randperm(len(WORDS), generator=gen)[:2 * n_words] for _ in range(n)]) + FIRST_WORD_ID
    k = torch.randint(1, n_words, (n,), generator=gen)  # 1-based position of the earlier occurrence
    rows = torch.arange(n)
    bos = torch.zeros(n, 1, dtype=torch.long)

    def layout(words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        query = words[rows, k - 1].unsqueeze(1)
        return torch.cat([bos, words, query], dim=1), words[rows, k]

    clean, answer = layout(picks[:, :n_words])
    corrupt, wrong = layout(picks[:, n_words:])
    return Prompts(clean, corrupt, answer, wrong, k)



def constructed_task(model: HookedModel, n: int = 32, n_words: int = 8, seed: int = 0) -> Task:
    """`n` clean/corrupted prompt pairs of `n_words` distinct words plus the repeated query
    word (`[n, n_words + 2]` tokens with `<bos>`), metric logit(answer) - logit(wrong) at the
    last position. The model must have `zoo/constructed`'s vocabulary (same words, same ids);
    its reference circuit for exactly this corruption is in the model's card."""
    vocab = model.tokenizer.get_vocab()
    expected = {w: FIRST_WORD_ID + i for i, w in enumerate(WORDS)}
    wrong_ids = {w: vocab.get(w) for w, i in expected.items() if vocab.get(w) != i}
    if wrong_ids or model.tokenizer.bos_token_id != 0:
        shown = ", ".join(f"{w!r}: {i}" for w, i in list(wrong_ids.items())[:4])
        raise ValueError(f"constructed_task needs {NAME}'s vocabulary (<bos> id 0, its {len(expected)} "
                         f"words from id {FIRST_WORD_ID}); {model.cfg.name} has bos id "
                         f"{model.tokenizer.bos_token_id} and {len(wrong_ids)} of the words elsewhere or missing"
                         + (f" ({shown})" if shown else ""))
    prompts = task_prompts(n, n_words, seed)
    text = lambda rows: [" ".join(model.tokenizer.convert_ids_to_tokens(r[1:])) for r in rows.tolist()]  # noqa: E731
    return Task(prompts.clean, prompts.corrupt, prompts.answer, prompts.wrong, name=f"constructed-{n_words}w",
                clean_prompts=text(prompts.clean), corrupt_prompts=text(prompts.corrupt))
