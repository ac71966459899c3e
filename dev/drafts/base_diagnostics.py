from gdlib import runtime
jt = runtime.setup_jittor()
import numpy as np
from gdlib.pipeline import TextToImage
from gdlib import toyworld
m = TextToImage.load("data/base/base.safetensors")
ds = toyworld.make_dataset(["flat","pixel","neon"], toyworld.OBJECTS[:6], 2, 5)
x0 = ds["images"]; ids = m.tokenizer.encode(ds["captions"])
rng = np.random.default_rng(0)
with jt.no_grad():
  ctx = m.text_encoder(ids)
  for t in [10, 50, 200, 500, 800, 990]:
    eps = rng.standard_normal(x0.shape).astype(np.float32)
    xt = m.schedule.add_noise(x0, eps, np.full(len(x0), t)).astype(np.float32)
    out = m.unet(jt.array(xt), t, ctx).numpy()
    print(t, "eps mse", round(float(((out-eps)**2).mean()),4))
