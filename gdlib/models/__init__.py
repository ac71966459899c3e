"""Models: the toy text-to-image UNet, its text encoder, and the ToyWorld evaluators.

- `evaluators`: ToyWorld content classifier + style classifier/embedding (`load_evaluators()`, shipped in data/evaluators)

Submodules are imported on first use so that one model's import cost (and compile) is not paid by others.
"""
