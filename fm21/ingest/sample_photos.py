"""Real photos that ship inside installed packages, to run fm21 on real images offline.

scikit-image's ``skimage.data`` (astronaut, coffee, rocket, a cat, motorcycles, ... plus
greyscale, RGBA, palette-GIF and multi-page TIFF files), ultralytics' assets (a bus, two
people) and matplotlib's sample data (Grace Hopper). The odd modes are kept on purpose:
ingest must convert them or reject them with a reason.

    python -m fm21.ingest.sample_photos photos      # then: fm21 --recipe photos --set ingest.path=photos ...
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

# (package, folder inside it)
SOURCES = (("skimage", "data"), ("ultralytics", "assets"), ("matplotlib", "mpl-data/sample_data"))
EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".gif", ".tif", ".tiff"})


def bundled_photos() -> list[Path]:
    """Every image file of the installed packages in :data:`SOURCES`, in a stable order."""
    found: list[Path] = []
    for package, folder in SOURCES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        root = Path(next(iter(spec.submodule_search_locations))) / folder
        if root.is_dir():
            found += sorted(p for p in root.iterdir() if p.suffix.lower() in EXTENSIONS)
    return found


def copy_bundled_photos(dest: str | Path) -> list[Path]:
    """Copy the bundled photos into ``dest`` as ``<package>-<name>``; returns the copies."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for path in bundled_photos():
        package = next(p for p, _ in SOURCES if p in path.parts)
        target = dest / f"{package}-{path.name}"
        shutil.copyfile(path, target)
        out.append(target)
    return out


if __name__ == "__main__":  # pragma: no cover - a convenience entry point
    copies = copy_bundled_photos(sys.argv[1] if len(sys.argv) > 1 else "photos")
    print(f"copied {len(copies)} photos to {copies[0].parent if copies else '-'}")
