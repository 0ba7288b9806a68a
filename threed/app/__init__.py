"""The web app (``threed app``, ``pip install -e .[app]``): prompt or photo in, live progress, 3D viewer, downloads.

:mod:`threed.app.runs` is the output folder, :mod:`threed.app.request` the form, :mod:`threed.app.jobs`
the queue and :mod:`threed.app.server` the gradio page. Only the page needs gradio.
"""
