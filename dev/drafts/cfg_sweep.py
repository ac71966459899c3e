"""CFG sweep of a base checkpoint over all 180 known style x object prompts. Usage: python dev/drafts/cfg_sweep.py data/base/base.safetensors 1.0,1.5,2.0,3.0"""
from gdlib import runtime
jt = runtime.setup_jittor()
import sys, time
from gdlib.pipeline import TextToImage, measure_accuracy
from gdlib import toyworld
from gdlib.models.evaluators import load_evaluators
m = TextToImage.load(sys.argv[1]); ev = load_evaluators()
for g in [float(x) for x in sys.argv[2].split(",")]:
    t = time.time()
    a = measure_accuracy(m, toyworld.KNOWN_STYLES, toyworld.OBJECTS, 1, 25, g, seed=1234, evaluators=ev)
    print(f"CFG {g}: content {a['content_accuracy']:.3f} style {a['style_accuracy']:.3f} ({time.time()-t:.0f} s)", flush=True)
