"""The task of `zoo/constructed`, whose circuit is known by construction: `<bos> x1 .. xn xk`
continues with `x(k+1)`; the corrupted prompt has the same layout with other words."""

from __future__ import annotations

from interp.models import HookedModel
from interp.patching import Task
from interp.zoo.recipes import constructed


def constructed_task(model: HookedModel, n: int = 32, n_words: int = 8, seed: int = 0) -> Task:
    """`n` clean/corrupted prompt pairs of `n_words` distinct words plus the repeated query
    word (`[n, n_words + 2]` tokens with `<bos>`), metric logit(answer) - logit(wrong) at the
    last position. The model must have `zoo/constructed`'s vocabulary (same words, same ids);
    its reference circuit for exactly this corruption is in the model's card."""
    vocab = model.tokenizer.get_vocab()
    expected = {w: constructed.FIRST_WORD_ID + i for i, w in enumerate(constructed.WORDS)}
    wrong_ids = {w: vocab.get(w) for w, i in expected.items() if vocab.get(w) != i}
    if wrong_ids or model.tokenizer.bos_token_id != 0:
        shown = ", ".join(f"{w!r}: {i}" for w, i in list(wrong_ids.items())[:4])
        raise ValueError(f"constructed_task needs {constructed.NAME}'s vocabulary (<bos> id 0, its {len(expected)} "
                         f"words from id {constructed.FIRST_WORD_ID}); {model.cfg.name} has bos id "
                         f"{model.tokenizer.bos_token_id} and {len(wrong_ids)} of the words elsewhere or missing"
                         + (f" ({shown})" if shown else ""))
    prompts = constructed.task_prompts(n, n_words, seed)
    text = lambda rows: [" ".join(model.tokenizer.convert_ids_to_tokens(r[1:])) for r in rows.tolist()]  # noqa: E731
    return Task(prompts.clean, prompts.corrupt, prompts.answer, prompts.wrong, name=f"constructed-{n_words}w",
                clean_prompts=text(prompts.clean), corrupt_prompts=text(prompts.corrupt))
