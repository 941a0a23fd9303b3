"""Images to inspect from a training dataset description (``dataset_info.json``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ovis.errors import UsageError


def images_from_dataset_info(path: str | Path, names: Sequence[str] | None, limit: int) -> list[Path]:
    """The first ``limit`` distinct image files of the named datasets (default: every dataset),
    in the order their records name them."""
    from ovis.data.readers import read_records
    from ovis.data.schema import load_dataset_info

    info = load_dataset_info(path)
    chosen = list(names) if names else list(info)
    unknown = [name for name in chosen if name not in info]
    if unknown:
        raise UsageError(f"--datasets {', '.join(unknown)}: not in {path}; it has {', '.join(info)}")
    images: dict[Path, None] = {}
    for name in chosen:
        for record in read_records(info, name):
            for image in record.images:
                images.setdefault(image, None)
                if len(images) >= limit:
                    return list(images)
    return list(images)
