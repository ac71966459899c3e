"""Models: the toy text-to-image UNet, its text encoder, and the ToyWorld evaluators.

- `unet`, `text`, `config`: the toy text-to-image UNet (cross-attention `to_q/to_k/to_v/to_out.0`), word tokenizer + text encoder, and the sizes saved with the weights (assembled by `gdlib.pipeline.TextToImage`)
- `evaluators`: ToyWorld content classifier + style classifier/embedding (`load_evaluators()`, shipped in gdlib/data/evaluators)

Submodules are imported on first use so that one model's import cost (and compile) is not paid by others.
"""
