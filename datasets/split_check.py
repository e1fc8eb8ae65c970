"""The start-up check of one split: image probes, image-level problems, and the decision to stop.

Every builder of ``datasets/`` runs it (``python -m datasets.check`` runs it on its own).
``probe_images`` probes every image file (each rank its shard, results gathered, so one pass over
the files in total); ``image_problems`` compares the probes with the annotation file's image
entries; ``finish_split`` raises one ``DatasetError`` listing every fatal problem (or too many
unreadable images) and returns the unreadable images to skip. Not in the official code.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from datasets.config import DataConfig
from datasets.images import ImageCache, ImageInfo, probe_image
from datasets.problems import BAD_IMAGE, FATAL, DatasetError, Problem, format_problems
from datasets.values import side_problem
from util import distributed as dist_utils

_PROBE_THREADS = 8
_NOTE_WORDS = {
    "exif-rotated": "rotated by their EXIF orientation",
    "16-bit": "16-bit (scaled to 8 bits)",
    "alpha": "with an alpha channel (dropped)",
    "cmyk": "CMYK (converted to RGB)",
    "palette": "palette-based (converted to RGB)",
    "grayscale": "grayscale (replicated to 3 channels)",
}


def probe_images(
    paths: Sequence[str], cfg: DataConfig, cache: ImageCache | None = None, label: str = ""
) -> list[ImageInfo | None]:
    """``probe_image`` for every path (``None`` for all with ``--check_images none``), each rank
    probing its shard (indices ``i % world_size == rank``) with a few threads; results gathered."""
    if cfg.check_images == "none":
        return [None] * len(paths)
    full = cfg.check_images == "full"
    distributed = cfg.world_size > 1 and dist_utils.is_dist_avail_and_initialized()
    indices = list(range(cfg.rank, len(paths), cfg.world_size)) if distributed else list(range(len(paths)))
    start = time.time()

    def probe(i: int) -> ImageInfo:
        return probe_image(paths[i], cache.get(i) if cache is not None else None, full=full)

    if len(indices) > 64:
        with ThreadPoolExecutor(_PROBE_THREADS) as pool:
            mine = list(pool.map(probe, indices))
    else:
        mine = [probe(i) for i in indices]
    results: list[ImageInfo | None] = [None] * len(paths)
    shards = dist_utils.all_gather(list(zip(indices, mine))) if distributed else [list(zip(indices, mine))]
    for shard in shards:
        for i, info in shard:
            results[i] = info
    seconds = time.time() - start
    if seconds > 5:
        print(f"{label}checked {len(paths)} image files ({cfg.check_images}) in {seconds:.0f} s", flush=True)
    return results


def image_problems(
    images: Sequence[dict[str, Any]],
    paths: Sequence[str],
    infos: Sequence[ImageInfo | None],
    ann_file: str,
) -> tuple[list[Problem], list[str]]:
    """Compare each image entry (``id``, ``file_name``, optional ``width``/``height``) with what the
    probe found. Fills a missing or zero ``width``/``height`` in place. Returns the problems (a
    ``BAD_IMAGE`` per unreadable file, a ``FATAL`` per size mismatch) and the log notes."""
    problems: list[Problem] = []
    notes: Counter[str] = Counter()
    filled = 0
    for img, path, info in zip(images, paths, infos):
        if info is None:
            continue
        where = f"image id {img.get('id')!r} ({img.get('file_name')})"
        if info.error is not None:
            problems.append(Problem(path, info.error, where, BAD_IMAGE))
            continue
        notes.update(info.notes)
        width, height = img.get("width"), img.get("height")
        if not width or not height:
            img["width"], img["height"] = info.width, info.height
            filled += 1
        elif side_problem(width, "width") or side_problem(height, "height"):
            continue  # named by the annotation check
        elif (int(width), int(height)) != (info.width, info.height):
            what = (
                f"is {width}x{height} (width x height) in the annotation file but {info.width}x{info.height} "
                "in the image file"
            )
            if info.orientation != 1:
                what += (
                    f" once its EXIF orientation {info.orientation} is applied (stored as "
                    f"{info.stored_size[0]}x{info.stored_size[1]}): boxes are expected in the displayed "
                    "orientation; re-save the image without the EXIF orientation or fix the annotations"
                )
            else:
                what += ": the boxes were drawn on another version of this image; fix the annotation file"
            problems.append(Problem(ann_file, what, where, FATAL))
    lines = [f"{n} image(s) {_NOTE_WORDS[k]}" for k, n in sorted(notes.items())]
    if filled:
        lines.append(f"{filled} image(s) without width/height in the annotations: read from the image files")
    return problems, lines


def finish_split(
    split: str,
    source: str,
    problems: list[Problem],
    notes: list[str],
    num_images: int,
    cfg: DataConfig,
) -> list[Problem]:
    """Print the split's notes, then raise one ``DatasetError`` for fatal problems or too many
    unreadable images (both listed together). Returns the ``BAD_IMAGE`` problems to skip."""
    for note in notes:
        print(f"data: {split}: {note}", flush=True)
    bad = [p for p in problems if p.kind == BAD_IMAGE]
    fatal = [p for p in problems if p.kind != BAD_IMAGE]
    allowed = cfg.max_bad_count(num_images)
    too_many = len(bad) > allowed
    if fatal or too_many:
        listed = fatal + bad
        head = f"{split} data ({source}): "
        if too_many:
            head += (
                f"{len(bad)} of {num_images} images cannot be read, more than --max_bad_images "
                f"{cfg.max_bad_images:g} allows ({allowed}); "
            )
        head += f"{len(listed)} problem(s), nothing trained:"
        raise DatasetError(f"{head}\n{format_problems(listed)}", listed)
    for p in bad:
        print(f"warning: {split}: skipping unreadable image {p}", flush=True)
    return bad


def unreadable_indices(paths: Sequence[str], bad: Sequence[Problem]) -> dict[int, str]:
    """``{index: message}`` of the images whose file one of the ``bad`` problems names."""
    messages = {p.file: str(p) for p in bad}
    return {k: messages[path] for k, path in enumerate(paths) if path in messages}


def report_split(split: str, source: str, num_images: int, num_bad: int, stats: dict[str, Any]) -> None:
    """One log line per split: what was read and how much of it is usable."""
    skipped = f" ({num_bad} unreadable, skipped)" if num_bad else ""
    print(
        f"data: {split}: {num_images} images{skipped}, {stats.get('num_annotations', 0)} annotations, "
        f"{stats.get('num_categories', 0)} categories (max id {stats.get('max_category_id', -1)}) from {source}",
        flush=True,
    )


def check_split_contents(
    split: str, source: str, num_images: int, num_annotations: int, warnings: Sequence[str] = ()
) -> None:
    """An empty validation split is an error; a split without annotations is a warning (training
    learns only "no object", AP is -1), as is each of ``warnings`` (what the reader noticed)."""
    if split == "val" and num_images == 0:
        raise DatasetError(f"{source}: the validation split has no image: nothing to evaluate")
    lines = list(warnings)
    if num_images and num_annotations == 0:
        effect = "COCO AP will be -1" if split == "val" else "the model can only learn to predict 'no object'"
        lines.append(f"{source} has {num_images} image(s) but no annotation: {effect}")
    for line in lines:
        print(f"warning: {split}: {line}", flush=True)


__all__ = [
    "check_split_contents",
    "finish_split",
    "image_problems",
    "probe_images",
    "report_split",
    "unreadable_indices",
]
