"""ipywidgets explorers. Each factory wraps a pure function so tests can call the function directly
and also drive the widget headlessly by setting `.value` on its controls.

Convention: a factory returns an `Explorer` with `.controls` (name -> widget), `.output` (an Output
widget), `.result` (the last value the pure function returned) and `.error` (the last exception, since
ipywidgets would otherwise swallow it), and `.widget` to display.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Explorer:
    """A pure function wired to controls; re-runs on every change and keeps result and error."""
    fn: Callable[..., Any]
    controls: dict[str, Any]
    render: Callable[[Any], None] | None = None
    result: Any = None
    error: BaseException | None = None
    output: Any = field(default=None)
    widget: Any = field(default=None)

    def __post_init__(self) -> None:
        import ipywidgets as W

        self.output = W.Output()
        for c in self.controls.values():
            c.observe(lambda _change: self.update(), names="value")
        self.widget = W.VBox([W.HBox(list(self.controls.values()), layout=W.Layout(flex_flow="row wrap")),
                              self.output])

    def values(self) -> dict[str, Any]:
        """Current control values by name."""
        return {k: c.value for k, c in self.controls.items()}

    def update(self) -> Any:
        """Call the function with the current values and render the result."""
        import matplotlib.pyplot as plt

        self.error = None
        with self.output:
            self.output.clear_output(wait=True)
            try:
                self.result = self.fn(**self.values())
                if self.render is not None:
                    self.render(self.result)
                elif hasattr(self.result, "savefig"):
                    plt.show()
            except Exception as e:  # keep it: interact would swallow it
                self.error = e
                print(f"{type(e).__name__}: {e}")
        return self.result


def sampler_explorer(n: int = 800, seed: int = 0, mix=None, schedule=None) -> Explorer:
    """Sampler / steps / eta -> the 2-D mixture sampled by gdlib.sampling (pure function: gdlib.mixture.run_sampler_2d)."""
    import ipywidgets as W

    from . import plot
    from .mixture import run_sampler_2d
    from .sampling import SAMPLERS

    controls = {
        "sampler": W.Dropdown(options=list(SAMPLERS), value="ddim", description="sampler"),
        "steps": W.IntSlider(value=10, min=1, max=100, description="steps"),
        "eta": W.FloatSlider(value=0.0, min=0.0, max=1.0, step=0.1, description="eta"),
    }

    def fn(sampler: str, steps: int, eta: float):
        return run_sampler_2d(sampler, steps, eta, n=n, seed=seed, mix=mix, schedule=schedule)

    def render(result):
        import matplotlib.pyplot as plt
        fig = plot.sampler_panel(result)
        plt.show()
        plt.close(fig)

    return Explorer(fn, controls, render=render)  # call .update() once to draw the first panel


def toyworld_explorer(seed: int = 0, size: int = 32) -> Explorer:
    """ToyWorld browser: one object in one style (seed and size adjustable), beside the same instance in
    every style. The pure function is `gdlib.toyworld.grid` (result: uint8 [S, 1, H, W, 3])."""
    import ipywidgets as W

    from . import plot, toyworld

    controls = {
        "obj": W.Dropdown(options=toyworld.OBJECTS, value=toyworld.OBJECTS[0], description="object"),
        "seed": W.IntSlider(value=seed, min=0, max=99, description="seed"),
        "size": W.Dropdown(options=[16, 32, 48, 64], value=size, description="size"),
    }

    def fn(obj: str, seed: int, size: int):
        return toyworld.grid(toyworld.STYLES, [obj], seed=seed, size=size)

    def render(result):
        import matplotlib.pyplot as plt
        titles = [f"{s}*" if s in toyworld.HELDOUT_STYLES else s for s in toyworld.STYLES]
        fig = plot.image_grid(result[:, 0], nrow=8, titles=titles, suptitle="one instance in every style (* held out)")
        plt.show()
        plt.close(fig)

    return Explorer(fn, controls, render=render)  # call .update() once to draw the first panel


def cfg_explorer(model, objects=("cat", "car", "tree", "house"), num_inference_steps: int = 20, seed: int = 0) -> Explorer:
    """Style (known or held out) x CFG scale -> the base model's images of a few objects for
    'a {style} painting of a {object}' (pure function: gdlib.pipeline.generate). Held-out styles are words the base
    never saw drawn: no guidance scale conjures them."""
    import ipywidgets as W

    from . import plot, toyworld
    from .pipeline import DEFAULT_GUIDANCE, generate

    objects = list(objects)
    controls = {
        "style": W.Dropdown(options=[(f"{s} (held out)" if s in toyworld.HELDOUT_STYLES else s, s) for s in toyworld.STYLES],
                            value=toyworld.KNOWN_STYLES[0], description="style"),
        "guidance": W.FloatSlider(value=DEFAULT_GUIDANCE, min=1.0, max=7.0, step=0.5, description="CFG scale"),
    }

    def fn(style: str, guidance: float):
        prompts = [toyworld.caption(style, o) for o in objects]
        return {"images": generate(model, prompts, num_inference_steps, guidance, seed=seed), "prompts": prompts}

    def render(result):
        import matplotlib.pyplot as plt
        fig = plot.image_grid(result["images"], nrow=len(objects), titles=result["prompts"])
        plt.show()
        plt.close(fig)

    return Explorer(fn, controls, render=render)  # call .update() once to draw the first grid


def rb_explorer(model, prompts, x_ref, psis: dict | None = None, num_inference_steps: int = 10,
                guidance_scale: float | None = None, seed: int = 0, sampler: str = "ddim") -> Explorer:
    """Style weight / num_iter / tau / eta / Psi -> stylised image grid (pure function: gdlib.guidance.stylize)."""
    import ipywidgets as W

    from . import plot
    from .guidance import RBConfig, stylize
    from .style import GramDescriptor

    psis = dict(psis) if psis else {"gram": GramDescriptor()}
    prompts = list(prompts)
    d = RBConfig()
    controls = {
        "lam_style": W.FloatLogSlider(value=d.lam_style, base=10, min=-2, max=3, step=0.25, description="style weight"),
        "num_iter": W.IntSlider(value=d.num_iter, min=0, max=8, description="num_iter"),
        "tau": W.IntSlider(value=num_inference_steps, min=0, max=num_inference_steps, description="tau"),
        "eta": W.FloatSlider(value=d.eta, min=0.0, max=0.4, step=0.01, description="eta (lr)"),
        "psi": W.Dropdown(options=list(psis), value=list(psis)[0], description="Psi"),
    }

    def fn(lam_style: float, num_iter: int, tau: int, eta: float, psi: str):
        cfg = RBConfig(lam_style=lam_style, num_iter=num_iter, tau=tau, eta=eta)
        images, hist = stylize(model, prompts, x_ref, psis[psi], cfg, num_inference_steps, guidance_scale,
                               sampler=sampler, seed=seed, return_history=True)
        active = [h for batch in hist for h in batch if h["active"]]
        return {"images": images, "config": cfg, "controlled_steps": len(active),
                "style_loss_last": active[-1]["style_after"] if active else float("nan")}

    def render(result):
        import matplotlib.pyplot as plt
        fig = plot.image_grid(result["images"], titles=prompts, nrow=min(len(prompts), 8))
        plt.show()
        plt.close(fig)

    return Explorer(fn, controls, render=render)  # call .update() once to draw the first grid


def ablation_explorer(result: dict) -> Explorer:
    """Style set / variant -> references above the variants' images, with the scores (pure function:
    gdlib.recipe.style_panel over a gdlib.recipe.run_ablation result; nothing is recomputed)."""
    import ipywidgets as W

    from .recipe import panel_figure, style_panel

    sids = list(result["runs"])
    names = list(next(iter(result["runs"].values())))
    controls = {
        "sid": W.Dropdown(options=[(f"{s} {result['runs'][s][names[0]]['scores']['style_name']}", s) for s in sids],
                          value=sids[0], description="style set"),
        "variant": W.Dropdown(options=["all"] + names, value="all", description="variant"),
    }

    def fn(sid: str, variant: str):
        return style_panel(result, sid, variant)

    def render(panel):
        import matplotlib.pyplot as plt
        fig = panel_figure(panel)
        plt.show()
        plt.close(fig)
        for v, s in panel["scores"].items():
            print(f"{v:<15} Style {s['style']:.3f}  Text {s['text']:.3f}  Quality {s['quality']:.3f}  "
                  f"Final {s['final']:.3f}  (content {s['content_accuracy']:.2f}, leakage {s['leakage']:.2f})")

    return Explorer(fn, controls, render=render)  # call .update() once to draw the first grid


def edit_explorer(editor, sources, captions, titles=None, seed: int = 0) -> Explorer:
    """Instruction / ODE steps / sampler / instruction CFG -> the DiT editor's edits of a few source images (pure
    function: gdlib.edit.edit). `captions`: the instructions offered (e.g. restyles and object swaps)."""
    import ipywidgets as W
    import numpy as np

    from . import plot
    from .edit import edit

    captions = list(captions)
    controls = {
        "caption": W.Dropdown(options=captions, value=captions[0], description="instruction"),
        "steps": W.IntSlider(value=20, min=1, max=40, description="ODE steps"),
        "sampler": W.Dropdown(options=["euler", "heun"], value="euler", description="sampler"),
        "guidance": W.FloatSlider(value=1.0, min=1.0, max=4.0, step=0.5, description="CFG scale"),
    }

    def fn(caption: str, steps: int, sampler: str, guidance: float):
        return edit(editor, sources, caption, steps=steps, sampler=sampler, guidance_scale=guidance, seed=seed)

    def render(result):
        import matplotlib.pyplot as plt
        n = len(sources)
        fig = plot.image_grid(np.concatenate([sources, result]), nrow=n,
                              titles=list(titles or [f"source {i}" for i in range(n)]) + ["edited"] * n)
        plt.show()
        plt.close(fig)

    return Explorer(fn, controls, render=render)  # call .update() once to draw the first grid
