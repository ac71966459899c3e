"""Shared test helpers (importable as `from conftest import tiny_model`)."""
import numpy as np

from gdlib import runtime

jt = runtime.setup_jittor()


def tiny_model(seed: int = 0, size: int = 16):
    """A small random text-to-image model whose zero-initialised layers (proj_out, conv2, conv_out) are randomised,
    as in a trained model: the text really conditions it and gradients reach the adapters."""
    from gdlib import toyworld
    from gdlib.models.config import ModelConfig, TextConfig, UNetConfig
    from gdlib.pipeline import TextToImage

    jt.set_global_seed(seed)
    text = TextConfig(vocab=toyworld.vocabulary(), width=16, layers=1, heads=2, num_reserved=8)
    unet = UNetConfig(image_size=size, base_channels=16, channel_mult=(1, 2), attn_resolutions=(size // 4,),
                      self_attn_resolutions=(), heads=2, groups=4, context_dim=16)
    model = TextToImage(ModelConfig(unet=unet, text=text))
    rng = np.random.default_rng(seed)
    for name, v in model.unet.state_dict().items():
        if name.endswith("weight") and not np.any(v.numpy()):
            v.update(jt.array((0.2 * rng.standard_normal(v.shape)).astype(np.float32)))
    return model
