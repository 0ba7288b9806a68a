"""``threed app``: a gradio page to run recipes, watch them, and look at and download what they made.

The page is a thin view over two things: the output folder (:mod:`threed.app.runs`, the only place it
reads or writes) and the job queue (:mod:`threed.app.jobs`, one job per GPU or one on a CPU). A tab
does not own its job: it follows a run by name, polling the run folder once a second, so a closed tab
loses nothing, another tab can watch the same run, and past runs reopen the same way.

Nothing leaves the machine: gradio's analytics are off, there are no share links, the fonts and the
3D viewer (babylon.js) come from the gradio package itself, and the server binds 127.0.0.1 unless told
otherwise; any other address needs a login or an explicit ``--no-auth`` (:mod:`threed.app.access`).
Uploads are checked by content and size (:mod:`threed.app.uploads`), and the queue is bounded, per
client too (:class:`threed.app.jobs.QueueLimits`).
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from dataclasses import dataclass, replace
from pathlib import Path

from threed.app.access import Credentials, resolve_access
from threed.app.jobs import JobQueue, QueueLimits
from threed.app.request import EditRequest, JobRequest, resume_command
from threed.app.runs import RunView, list_runs, new_run_name, obj_zip, run_dir, view_run
from threed.app.uploads import MAX_UPLOAD_BYTES, check_mesh_upload, check_upload, image_input
from threed.errors import ThreedError
from threed.mesh_files import MESH_SUFFIXES
from threed.recipe import save_config
from threed.recipes import recipe_summaries
from threed.run import RunLayout

POLL_S = 1.0
"""Seconds between a page's looks at its run."""
LISTED_RUNS = 200
"""Past runs offered in the list, newest first."""
CSS = """
#threed-message:empty, #threed-status:empty { display: none; }
#threed-message p { color: var(--error-text-color); font-weight: 600; }
"""


@dataclass
class Recipe:
    name: str
    description: str
    model: str
    paints_a_mesh: bool = False
    """A texture recipe: offered on the "Texture a mesh" tab, not beside the text and photo recipes."""


def recipes() -> list[Recipe]:
    """The shipped recipes with their one-line descriptions and default priors (unreadable ones left out)."""
    return [Recipe(r.name, r.description, r.model, r.paints_a_mesh) for r in recipe_summaries() if r.problem is None]


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class App:
    """The page's actions, as plain methods over an output folder and a queue (what the tests call directly)."""

    def __init__(self, root: Path, queue: JobQueue | None = None):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.queue = queue or JobQueue(self.root)
        self._making = threading.Lock()
        """Held from the queue's room check to the job's submission: a place seen free is still free, and two
        submissions of one prompt in one second get two names."""

    def submit(self, request: JobRequest, client: str = "local") -> str:
        """Check ``request``, make its run folder and queue it for ``client``; returns the run name.

        Nothing is made for a request that is refused, whether for its content or a full queue.
        """
        suffix = {label: check_upload(upload, f"uploaded {label}")
                  for label, upload in (("image", request.image), ("mask", request.mask)) if upload is not None}
        if request.mesh is not None:
            suffix["mesh"] = check_mesh_upload(request.mesh)
        cfg = request.validate()
        with self._making:
            self.queue.check_room(client)
            name = new_run_name(self.root, request.prompt or (request.image.stem if request.image else "image"))
            path = run_dir(self.root, name, must_exist=False)
            path.mkdir(parents=True)
            try:
                if request.mesh is not None:  # threed texture copies it into the run's input/ on its start
                    kept = replace(request, mesh=self._keep(request.mesh, path / f"upload{suffix['mesh']}"))
                    args = kept.command(path)
                elif request.image is None:
                    save_config(cfg, path)  # listed at once, and the job is exactly a resume of this config
                    args = resume_command(path)
                else:
                    kept = replace(request, image=self._keep(request.image, path / f"input{suffix['image']}"),
                                   mask=request.mask and self._keep(request.mask, path / f"mask{suffix['mask']}"))
                    args = kept.command(path)
                self.queue.submit(name, args, client)
            except BaseException:
                shutil.rmtree(path, ignore_errors=True)  # a failed copy, or the server began shutting down
                raise
        return name

    def edit(self, name: str, prompt: str, rule: str = "dds", client: str = "local", steps: int | None = None,
             overrides: list[str] | None = None) -> str:
        """Queue an edit of finished run ``name`` toward ``prompt`` (``threed edit``) into a new run; returns its
        name. The original is only read; a run that cannot be edited is refused before anything is made."""
        request = EditRequest(run_dir(self.root, name), prompt, rule, steps, list(overrides or []))
        request.validate()
        with self._making:
            self.queue.check_room(client)
            new = new_run_name(self.root, prompt)
            path = run_dir(self.root, new, must_exist=False)
            path.mkdir(parents=True)
            try:
                self.queue.submit(new, request.command(path), client)
            except BaseException:
                shutil.rmtree(path, ignore_errors=True)
                raise
        return new

    def resume(self, name: str, client: str = "local") -> str:
        """Queue the continuation of an unfinished, cancelled or failed run."""
        path = run_dir(self.root, name)
        live = self.queue.get(name)
        if live is not None and live.state in ("queued", "running", "cancelling"):
            raise ThreedError(f"run {name!r} is already {live.state}")
        if view_run(path).state == "done":
            raise ThreedError(f"run {name!r} is finished; there is nothing to resume")
        holder = RunLayout(path).holder()
        if holder is not None:  # a command-line run, export or batch job outside this queue
            raise ThreedError(f"run {name!r} is in use: {holder} is writing it; resume it once that has finished")
        self.queue.submit(name, resume_command(path), client)
        return name

    def cancel(self, name: str) -> str:
        run_dir(self.root, name)
        job = self.queue.cancel(name)
        return "cancelled before it started" if job.state == "cancelled" else "stopping after the current step…"

    def view(self, name: str) -> RunView:
        return view_run(run_dir(self.root, name))

    def status(self, view: RunView) -> str:
        """The run's state in a sentence or two: step, loss, speed and ETA while it runs."""
        job = self.queue.get(view.name)
        state = job.state if job else view.state
        message = job.message if job else view.job.get("message", "")
        # The queue's record, when there is one: the job file was read earlier and may be a moment behind.
        started, finished = (job.started, job.finished) if job else (view.job.get("started"), view.job.get("finished"))
        p = view.progress
        where = ""
        if p is not None:
            n = len(view.stages)
            stage = f"stage {p.index + 1}/{n} `{p.stage}`: " if n > 1 else ""
            where = f"{stage}step {p.step}/{p.total_steps}"
        if state == "queued":
            pos = self.queue.position(view.name)
            ahead = "next in line" if pos == 1 else f"{pos - 1} job(s) ahead" if pos else ""
            return f"**Queued** ({ahead}; {self.queue.workers} worker(s))."
        if state == "running" and job is None:
            return "**Interrupted**: the server stopped while this run was going. Resume continues it."
        if state == "running":
            if p is None:
                return "**Starting**: loading the prior…"
            if p.index == len(view.stages) - 1 and p.step >= p.total_steps:
                return f"**Exporting** the mesh and the turntable ({where} done)…"
            loss = f" · loss {p.loss:.4g}" if p.loss is not None else ""
            speed = f" · {p.it_per_s:.2f} it/s · ETA {duration(p.eta_s)}" if p.it_per_s else ""
            pct = 100 * p.step / max(p.total_steps, 1)
            return f"**Running** {where} ({pct:.0f}%){loss}{speed}"
        if state == "cancelling":
            return f"**Cancelling**: finishing the current step ({where})…"
        if state == "done":
            took = duration(finished - started) if started and finished else None
            return f"**Done**{f' in {took}' if took else ''}: {where}." if where else "**Done**."
        if state == "failed":
            body = message.strip()
            return f"**Failed**: {body}" if "\n" not in body else f"**Failed**:\n\n```\n{body}\n```"
        if state == "cancelled":
            at = f" at {where}" if where else ""
            return f"**Cancelled**{at}. Resume continues from the last checkpoint."
        return f"**Unfinished**{f' ({where})' if where else ''}. Resume continues it."

    def run_choices(self) -> list[tuple[str, str]]:
        """(label, run name) for the past-runs list."""
        out = []
        for name in list_runs(self.root)[:LISTED_RUNS]:
            try:
                view = self.view(name)
            except ThreedError:  # removed since it was listed (by hand, say): leave it off
                continue
            job = self.queue.get(name)
            out.append((f"{view.prompt or name} · {job.state if job else view.state} · {name}", name))
        return out

    @staticmethod
    def _keep(upload: Path, dest: Path) -> Path:
        """Copy an upload into the run folder (as ``dest``), so the run reads only what is inside it."""
        shutil.copyfile(upload, dest)
        return dest


def parse_overrides(text: str | None) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip() and not line.strip().startswith("#")]


def client_of(request) -> str:
    """Whom a page's request counts against in :class:`QueueLimits`: its login, else its address."""
    if request is None:
        return "local"
    if getattr(request, "username", None):
        return f"user:{request.username}"
    client = getattr(request, "client", None)
    return f"address:{client.host}" if client is not None and client.host else "local"


def build(root: Path, queue: JobQueue | None = None):
    """The gradio Blocks of the page over output folder ``root``; returns ``(blocks, app)``."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    app = App(root, queue)
    everything = recipes()
    shipped = [r for r in everything if not r.paints_a_mesh]
    painters = [r for r in everything if r.paints_a_mesh]
    default = next((r for r in shipped if r.name == "quickstart"), shipped[0])

    def model_hint(recipe: str) -> str:
        model = next((r.model for r in everything if r.name == recipe), "")
        return f"recipe default: {model}" if model else "recipe default"

    with gr.Blocks(title="threed", analytics_enabled=False, delete_cache=(3600, 24 * 3600)) as blocks:
        current = gr.State(None)
        shown = gr.State({})
        gr.Markdown("# threed\nText (or a photo) to a 3D asset by score distillation. Jobs from every tab "
                    "share one queue; everything is written under the output folder.")
        with gr.Row():
            with gr.Column(scale=2, min_width=320):
                with gr.Tabs():
                    with gr.Tab("Text or photo", elem_id="threed-tab-generate"):
                        prompt = gr.Textbox(label="Prompt", placeholder='e.g. "a red cube"', elem_id="threed-prompt")
                        with gr.Accordion("Or start from a photo", open=False):
                            image = image_input(label="Image (transparent background)", image_mode=None,
                                                format="png", sources=["upload", "clipboard"], elem_id="threed-image")
                            mask = image_input(label="Mask (optional; white = object)", image_mode=None,
                                               format="png", sources=["upload"], elem_id="threed-mask")
                        recipe = gr.Dropdown([(f"{r.name} — {r.description}", r.name) for r in shipped],
                                             value=default.name, label="Recipe", elem_id="threed-recipe")
                        generate = gr.Button("Generate", variant="primary", elem_id="threed-generate")
                    with gr.Tab("Texture a mesh", elem_id="threed-tab-texture"):
                        mesh = gr.File(label=f"Mesh ({', '.join(MESH_SUFFIXES)}; its geometry comes back unchanged)",
                                       file_types=list(MESH_SUFFIXES), type="filepath", elem_id="threed-mesh")
                        up = gr.Radio([("+Y (glTF)", "y"), ("+Z (CAD, Blender's world)", "z")], value="y",
                                      label="Up axis of the file", elem_id="threed-up")
                        paint = gr.Textbox(label="Paint it as", placeholder='e.g. "a red chair"',
                                           elem_id="threed-texture-prompt")
                        texture_recipe = gr.Dropdown([(f"{r.name} — {r.description}", r.name) for r in painters],
                                                     value=painters[0].name if painters else None, label="Recipe",
                                                     elem_id="threed-texture-recipe")
                        texture = gr.Button("Texture", variant="primary", elem_id="threed-texture")
                with gr.Accordion("Settings", open=False):
                    with gr.Row():
                        steps = gr.Number(None, label="Steps (per stage; blank: the recipe's)", precision=0,
                                          elem_id="threed-steps")
                        seed = gr.Number(None, label="Seed (blank: the recipe's)", precision=0,
                                         elem_id="threed-seed")
                        preview_every = gr.Number(None, label="Preview every N steps (blank: the recipe's)",
                                                  precision=0, elem_id="threed-preview-every")
                    model = gr.Textbox(label="Model", placeholder=model_hint(default.name),
                                       elem_id="threed-model")
                    overrides = gr.Textbox(label="Recipe overrides (KEY=VALUE, one per line)", lines=3,
                                           placeholder="export.grid_size=256\nstages.0.guidance.guidance_scale=50",
                                           elem_id="threed-overrides")
                cancel = gr.Button("Cancel", variant="stop", elem_id="threed-cancel")
                message = gr.Markdown(elem_id="threed-message")
                with gr.Group():
                    runs = gr.Dropdown(app.run_choices(), value=None, label="Past runs", elem_id="threed-runs",
                                       allow_custom_value=True)  # runs made since the page loaded; run_dir checks
                    with gr.Row():
                        refresh = gr.Button("Refresh list", size="sm")
                        resume = gr.Button("Resume selected", size="sm", elem_id="threed-resume")
            with gr.Column(scale=3, min_width=360):
                status = gr.Markdown("Type a prompt and press **Generate**, or open a past run: progress, the "
                                     "latest validation render, the 3D viewer, the turntable and the downloads "
                                     "appear here.", elem_id="threed-status")
                preview = gr.Image(label="Latest validation render (albedo · shaded · opacity)", interactive=False,
                                   elem_id="threed-preview", visible=False)
                viewer = gr.Model3D(label="Result (drag to orbit)", clear_color=(1.0, 1.0, 1.0, 1.0),
                                    interactive=False, height=420, elem_id="threed-viewer")
                video = gr.Video(label="Turntable", interactive=False, autoplay=True, loop=True,
                                 elem_id="threed-video", visible=False)
                downloads = gr.File(label="Downloads", file_count="multiple", interactive=False,
                                    elem_id="threed-downloads", visible=False)
                with gr.Accordion("Edit this result", open=False, elem_id="threed-edit-panel"):
                    with gr.Row():
                        edit_prompt = gr.Textbox(label="New prompt (a new run; this one is kept)",
                                                 placeholder='e.g. "a blue cube"', scale=3,
                                                 elem_id="threed-edit-prompt")
                        edit_rule = gr.Dropdown([("DDS (Delta Denoising Score)", "dds"),
                                                 ("PDS (Posterior Distillation Sampling)", "pds"),
                                                 ("SDS from this start", "sds")], value="dds", label="Rule",
                                                scale=2, elem_id="threed-edit-rule")
                    edit = gr.Button("Edit this result", elem_id="threed-edit")

        def panel(name, seen, relist=False):
            """The right-hand side for run ``name``: status always, the rest only when it changed since ``seen``."""
            view = app.view(name)
            job = app.queue.get(name)
            now = {"run": name, "state": job.state if job else view.state, "preview": str(view.preview),
                   "glb": str(view.glb), "video": str(view.video)}
            changed = now != seen
            files = [p for p in (view.glb, obj_zip(view.path), view.ply, view.video) if p] if changed else []
            relist = relist or (now["state"] != seen.get("state") and seen.get("run") == name)

            def show(value):  # an empty viewer or player is hidden rather than shown as a blank box
                return gr.update(value=value, visible=bool(value)) if changed else gr.skip()

            return (app.status(view),
                    show(str(view.preview) if view.preview else None),
                    (str(view.glb) if view.glb else None) if changed else gr.skip(),  # hiding it breaks its canvas
                    show(str(view.video) if view.video else None),
                    show([str(p) for p in files]),
                    gr.update(choices=app.run_choices(), value=name) if relist else gr.skip(),
                    now)

        def follow(action, *args):
            """Run ``action`` (returns a run name), then show that run; its ThreedError goes to the message."""
            try:
                name = action(*args)
                return (name, "") + panel(name, {}, relist=True)
            except ThreedError as exc:
                return (gr.skip(), str(exc)) + (gr.skip(),) * 7

        def on_generate(prompt, image, mask, recipe, steps, seed, preview_every, model, overrides, request):
            job = JobRequest(prompt=prompt or "", recipe=recipe, steps=int(steps) if steps else None,
                             seed=None if seed is None else int(seed), model=(model or "").strip() or None,
                             preview_every=int(preview_every) if preview_every else None,
                             overrides=parse_overrides(overrides), image=Path(image) if image else None,
                             mask=Path(mask) if mask else None)
            return follow(app.submit, job, client_of(request))

        def on_texture(mesh, up, paint, recipe, steps, seed, preview_every, model, overrides, request):
            if not mesh:
                return (gr.skip(), "upload a mesh to paint first") + (gr.skip(),) * 7
            job = JobRequest(prompt=paint or "", recipe=recipe, steps=int(steps) if steps else None,
                             seed=None if seed is None else int(seed), model=(model or "").strip() or None,
                             preview_every=int(preview_every) if preview_every else None,
                             overrides=parse_overrides(overrides), mesh=Path(mesh), up=up or "y")
            return follow(app.submit, job, client_of(request))

        def on_edit(name, text, rule, steps, overrides, request):
            if not name:
                return (gr.skip(), "open a finished run first: its result is what gets edited") + (gr.skip(),) * 7
            return follow(app.edit, name, text or "", rule or "dds", client_of(request),
                          int(steps) if steps else None, parse_overrides(overrides))

        def on_cancel(name):
            if not name:
                return "there is no run on this page to cancel"
            try:
                return app.cancel(name)
            except ThreedError as exc:
                return str(exc)

        def on_resume(name, request):
            if not name:
                return (gr.skip(), "choose a run in the list first") + (gr.skip(),) * 7
            return follow(app.resume, name, client_of(request))

        def on_open(name):
            return follow(lambda n: app.view(n).name, name) if name else (gr.skip(),) * 9

        def on_poll(name, seen):
            if not name:
                return (gr.skip(),) * 7
            try:
                return panel(name, seen)
            except ThreedError as exc:
                return (str(exc),) + (gr.skip(),) * 6

        for handler in (on_generate, on_texture, on_edit, on_resume):  # gradio finds gr.Request by type; annotations here are strings
            handler.__annotations__["request"] = gr.Request
        shows = [status, preview, viewer, video, downloads, runs, shown]
        generate.click(on_generate, [prompt, image, mask, recipe, steps, seed, preview_every, model, overrides],
                       [current, message, *shows], api_name="generate",
                       show_progress="hidden")
        texture.click(on_texture, [mesh, up, paint, texture_recipe, steps, seed, preview_every, model, overrides],
                      [current, message, *shows], api_name="texture", show_progress="hidden")
        edit.click(on_edit, [current, edit_prompt, edit_rule, steps, overrides], [current, message, *shows],
                   api_name="edit", show_progress="hidden")
        cancel.click(on_cancel, current, message, api_name="cancel", show_progress="hidden")
        resume.click(on_resume, runs, [current, message, *shows], api_name="resume", show_progress="hidden")
        runs.input(on_open, runs, [current, message, *shows], api_name="open_run", show_progress="hidden")
        refresh.click(lambda: gr.update(choices=app.run_choices()), None, runs, api_name=False)
        recipe.change(lambda r: gr.update(placeholder=model_hint(r)), recipe, model, api_name=False)
        gr.Timer(POLL_S).tick(on_poll, [current, shown], shows, api_name=False, show_progress="hidden",
                              concurrency_limit=None)
    return blocks, app


def serve(host: str = "127.0.0.1", port: int = 7860, out: Path = Path("outputs"), block: bool = True,
          auth: Credentials | None = None, no_auth: bool = False, limits: QueueLimits = QueueLimits()):
    """Serve the page until interrupted (``block``), or start it and return ``(blocks, app, url)``.

    ``auth`` is the logins to require (gradio's login page); a host that is not a loopback address
    needs them, or ``no_auth`` (see :func:`threed.app.access.resolve_access`).
    """
    logins = resolve_access(host, auth, no_auth)
    root = Path(out).resolve()
    os.environ["GRADIO_TEMP_DIR"] = str(root / ".gradio")  # uploads and served copies stay in the output folder
    blocks, app = build(root, JobQueue(root, limits=limits))
    if block:
        print(f"threed app: http://{host}:{port} (output folder {root}"
              f"{', login required' if logins else ''})", file=sys.stderr)
    blocks.queue(default_concurrency_limit=None)
    try:
        _, url, _ = blocks.launch(server_name=host, server_port=port, share=False, inbrowser=False,
                                  allowed_paths=[str(root)], ssr_mode=False, pwa=False, mcp_server=False,
                                  auth=logins, auth_message="threed: log in with the --auth user and password",
                                  max_file_size=MAX_UPLOAD_BYTES,
                                  enable_monitoring=False, footer_links=[], prevent_thread_lock=not block,
                                  quiet=not block, css=CSS)
    except BaseException:
        app.queue.close()
        raise
    if not block:
        return blocks, app, url
    app.queue.close()
    return None
