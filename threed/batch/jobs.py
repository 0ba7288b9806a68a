"""The job list of a batch: one job per line of a prompts file, one per image of a folder.

A prompts file holds one prompt per line; ``# ...`` lines are comments; a line ``image: PATH`` is an
image job (``PATH`` relative to the file's folder). A line that cannot become a job (an empty line, an
image that does not exist) is still a job, with ``problem`` set: the batch reports it in the index
instead of stopping. Job ids are slugs of the prompt (or the image's name), made unique in file order,
so the same file gives the same ids on every rerun and a rerun finds each job's run directory again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from threed.errors import ThreedError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
"""Files of an ``--image-dir`` that become jobs."""
IMAGE_LINE = "image:"
"""Prefix of a prompts-file line that names an image instead of a prompt."""


@dataclass(frozen=True)
class Job:
    """One asset to generate."""

    id: str
    """Unique slug; the job's run directory is ``OUT/<id>/``."""
    source: str
    """Where the job came from (``prompts.txt:3`` or the image path), for messages."""
    prompt: str = ""
    """Text prompt (may be empty for an image job)."""
    image: str | None = None
    """Reference image for image-to-3D, as an absolute path."""
    problem: str | None = None
    """Why this job cannot run, found while reading the list (empty line, missing image)."""


def _slug(text: str) -> str:
    from threed.recipe import slugify

    return slugify(text)


def _unique(base: str, taken: set[str]) -> str:
    slug, n = base, 2
    while slug in taken:
        slug, n = f"{base}-{n}", n + 1
    taken.add(slug)
    return slug


def _image_job(path: Path, source: str, taken: set[str]) -> Job:
    problem = None if path.is_file() else f"{source}: image {path} does not exist"
    return Job(id=_unique(_slug(path.stem), taken), source=source, image=str(path.resolve()), problem=problem)


def read_prompts(path: Path, taken: set[str]) -> list[Job]:
    """Jobs from a prompts file, in file order (ids added to ``taken``)."""
    if not path.is_file():
        raise ThreedError(f"prompts file {path} does not exist" if not path.exists() else f"{path} is not a file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ThreedError(f"prompts file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    jobs = []
    for number, raw in enumerate(lines, start=1):
        line, source = raw.strip(), f"{path.name}:{number}"
        if line.startswith("#"):
            continue
        if line.lower().startswith(IMAGE_LINE):
            image = Path(line[len(IMAGE_LINE):].strip()).expanduser()
            jobs.append(_image_job(image if image.is_absolute() else path.parent / image, source, taken))
        elif not line:
            jobs.append(Job(id=_unique(f"line-{number}", taken), source=source,
                            problem=f"{source} is empty: write a prompt, or delete the line"))
        else:
            jobs.append(Job(id=_unique(_slug(line), taken), source=source, prompt=line))
    return jobs


def read_image_dir(folder: Path, taken: set[str]) -> list[Job]:
    """One job per image file of ``folder`` (sorted by name; ids added to ``taken``)."""
    if not folder.is_dir():
        raise ThreedError(f"image folder {folder} does not exist" if not folder.exists() else
                          f"{folder} is not a folder")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise ThreedError(f"image folder {folder} has no images ({', '.join(IMAGE_SUFFIXES)})")
    return [_image_job(p, str(p), taken) for p in images]


def read_jobs(prompts: Path | None = None, image_dir: Path | None = None) -> list[Job]:
    """The batch's jobs: the prompts file's, then the image folder's."""
    if prompts is None and image_dir is None:
        raise ThreedError("give a prompts file (one prompt per line) or --image-dir DIR")
    taken: set[str] = set()
    jobs = read_prompts(prompts, taken) if prompts is not None else []
    if image_dir is not None:
        jobs += read_image_dir(image_dir, taken)
    if not jobs:
        raise ThreedError(f"{prompts} has no prompts (only comments)")
    return jobs
