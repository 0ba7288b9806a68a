"""CPU-sized overrides for any recipe, so a smoke run of a GPU-sized recipe takes seconds."""

from __future__ import annotations

from threed.recipe import load_recipe

ENCODING = ["n_levels=4", "log2_hashmap_size=12", "max_resolution=64", "base_resolution=4"]
SMALL = ([f"stages.*.scene.geometry.encoding.{e}" for e in ENCODING]
         + ["stages.*.render_size=24", "stages.*.scene.geometry.hidden_dim=16", "stages.*.scene.background.kind=solid",
            "stages.*.val_every=0", "stages.*.ckpt_every=2", "stages.*.cameras.batch_size=1",
            "export.grid_size=24", "export.video=false", "export.views=0", "export.texture=vertex",
            "export.formats=[glb]", "max_steps=3"])
MESH = ["scene.geometry.grid_size=12", "scene.init_grid_size=24"]
TINY_QUICKSTART = {
    "max_steps": 4,
    "stages.0.render_size": 16,
    "stages.0.scene.geometry.encoding": {"n_levels": 4, "log2_hashmap_size": 12, "max_resolution": 64},
    "stages.0.scene.geometry.hidden_dim": 16,
    "stages.0.scene.renderer.num_samples": 16,
    "stages.0.cameras.batch_size": 1,
    "stages.0.val_every": 2,
    "stages.0.val_views": 2,
    "stages.0.val_resolution": 16,
    "stages.0.log_every": 1,
    "stages.0.ckpt_every": 2,
    "export": {"grid_size": 24, "video": False, "views": 0, "texture": "vertex", "formats": ["glb"]},
}
"""The quickstart recipe (toy-world prior) at CPU-test size, as the Python API's overrides: a small hash grid,
16 px renders, 4 steps, a validation grid every 2 steps and a progress report every step."""


def small(recipe: str) -> list[str]:
    """CPU-sized overrides: tiny hash grids everywhere, 12-cell tet grids, 16 samples per ray."""
    cfg = load_recipe(recipe)
    extra = []
    for i, stage in enumerate(cfg.stages):
        if stage.scene.kind == "dmtet":
            extra += [f"stages.{i}.{m}" for m in MESH]
        else:
            extra += [f"stages.{i}.scene.renderer.num_samples=16"]
    return SMALL + extra


TOY = (["max_steps=4", "stages.0.render_size=16", "stages.0.ckpt_every=2", "stages.0.val_every=0",
        "stages.0.cameras.batch_size=1", "stages.0.scene.renderer.num_samples=16"]
       + [f"stages.0.scene.geometry.encoding.{e}" for e in ENCODING]
       + ["export.video=false", "export.views=0", "export.texture=vertex", "export.grid_size=24", "export.formats=[glb]"])
"""The quickstart recipe (toy-world prior, no download) cut to 4 steps at 16 px, checkpoints at steps 2 and 4:
about a second of training on a CPU."""
