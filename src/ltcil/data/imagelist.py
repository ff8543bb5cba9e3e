"""ImageNet-style data decoded with Pillow and resized once to data.image_size (short side, then centre crop).

Two layouts under data.root:
- class folders: `train/<class>/*.{jpg,png,...}` (images may sit deeper, as Tiny-ImageNet's
  `train/<wnid>/images/`) and `val/<class>/...` (and `test/<class>/...` if present; without it, val is the test
  split). A flat validation folder with an annotations file (`val/images/*` + `val/val_annotations.txt`, lines
  `<file> <class> ...`, Tiny-ImageNet's layout) is read too;
- list files (data.train_list / val_list / test_list, paths relative to data.root): one `<relpath> <label>` per
  line, the ImageNet-100/1000 and ImageNet-LT convention. Without test_list, the val list is the test split.
Class names: the class folders (or, for lists, the folder level of the paths that tells the classes apart),
replaced by readable names from data.class_names or a `words.txt` beside the data (`<wnid>\t<words>`).
Only the classes a run uses are decoded (`classes`: an explicit scenario.order).

Storage (data.storage): `memory` decodes every image once, in a thread pool (Pillow releases the GIL), into one
preallocated uint8 array per split that then lives on the training device; `stream` keeps only where each image
is and decodes batches in worker processes as training reads them (stream.py, stream_loader.py), from a packed
cache of the images (packed.py) unless data.cache is off; `auto` streams when the decoded images would take more
than data.stream_above_gb. Unreadable images: up to data.max_bad_images are skipped and listed in the run folder.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from ..config import DataConfig
from ..errors import DataError
from ..files import read_text
from ..registry import register_dataset
from .base import Dataset, Split, check_fits_in_memory
from .decode import decode
from .stream import StreamedImages

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


def read_list(path: Path) -> tuple[list[str], np.ndarray]:
    """Parse `<relative path> <integer label>` lines; blank lines and `#` comments are skipped."""
    if not path.is_file():
        raise DataError(f"list file {path} does not exist (check data.root and the data.*_list keys).")
    paths, labels = [], []
    for number, line in enumerate(read_text(path, "list file", DataError).splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)  # split from the right: file names may contain spaces
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DataError(f"{path}, line {number}: expected '<relative path> <integer label>', got {line!r}.")
        if int(parts[1]) < 0:
            raise DataError(f"{path}, line {number}: label {parts[1]} is negative.")
        paths.append(parts[0])
        labels.append(int(parts[1]))
    if not paths:
        raise DataError(f"list file {path} holds no images.")
    return paths, np.asarray(labels, dtype=np.int64)


def list_class_names(paths: list[str], labels: np.ndarray, num_classes: int) -> list[str]:
    """Name each class after a folder of its first image (the WordNet id in ImageNet lists): the nearest folder
    level that tells every class apart (Tiny-ImageNet's `train/<wnid>/images/x.JPEG`: two levels up); "0".."K-1"
    when none does."""
    first: dict[int, str] = {}
    for path, label in zip(paths, labels.tolist()):
        first.setdefault(label, path)
    for level in range(1, 4):
        names = []
        for c in range(num_classes):
            parts = Path(first[c]).parts if c in first else ()
            names.append(parts[-1 - level] if len(parts) > level else "")
        if all(names) and len(set(names)) == num_classes:
            return names
    return [str(c) for c in range(num_classes)]


def readable_names(names: list[str], root: Path, cfg_file: str) -> list[str]:
    """Replace ids by readable names from data.class_names (or words.txt under root): a file of one name per line
    in label order, or of `<id> <name>` lines keyed by the current names (WordNet ids)."""
    path = root / cfg_file if cfg_file else next((p for p in (root / "words.txt", root.parent / "words.txt")
                                                  if p.is_file()), None)
    if path is None:
        return names
    lines = [line for line in read_text(path, "class names file", DataError).splitlines() if line.strip()]
    keyed = dict(line.split(None, 1) for line in lines if len(line.split(None, 1)) == 2)
    if any(n in keyed for n in names):  # <id> <name> lines (words.txt keeps only its first synonym)
        return [keyed[n].split(",")[0].strip() if n in keyed else n for n in names]
    if cfg_file:
        if len(lines) != len(names):
            raise DataError(f"class names file {path} has {len(lines)} lines but the data has {len(names)} classes; "
                            "give one name per line in label order, or '<id> <name>' lines.")
        return [line.strip() for line in lines]
    return names


def scan_folders(split_dir: Path, classes: list[str] | None) -> tuple[list[str], np.ndarray, list[str]]:
    """Images under `split_dir/<class>/`; `classes` (from train) fixes the ids, None takes the sorted folders."""
    if not split_dir.is_dir():
        raise DataError(f"{split_dir} does not exist: expected one sub-folder per class.")
    # Hidden folders (.ipynb_checkpoints, .DS_Store-style clutter) are not classes.
    found = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    classes = classes or found
    if not classes:
        raise DataError(f"{split_dir} has no class sub-folders.")
    index = {c: i for i, c in enumerate(classes)}
    unknown = [c for c in found if c not in index]
    if unknown:
        raise DataError(f"{split_dir / unknown[0]}: class folder {unknown[0]!r} does not exist in the train split.")
    paths, labels = [], []
    for c in found:
        # any depth below the class folder: Tiny-ImageNet keeps train/<wnid>/images/*.JPEG
        for f in sorted((split_dir / c).rglob("*")):
            hidden = any(p.startswith(".") for p in f.relative_to(split_dir).parts)
            if f.suffix.lower() in IMAGE_SUFFIXES and not hidden:
                paths.append(str(f))
                labels.append(index[c])
    if not paths:
        raise DataError(f"{split_dir} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in its class folders "
                        "or below them.")
    return paths, np.asarray(labels, dtype=np.int64), classes


def read_annotations(split_dir: Path, classes: list[str]) -> tuple[list[str], np.ndarray] | None:
    """A flat validation folder described by an annotations file (Tiny-ImageNet: `val/val_annotations.txt` with
    `<file>\t<wnid>\t<box>` lines, images in `val/images/`); None when there is no such file."""
    ann = next((p for p in (split_dir / "val_annotations.txt", split_dir / "annotations.txt") if p.is_file()), None)
    if ann is None:
        return None
    index = {c: i for i, c in enumerate(classes)}
    images = split_dir / "images" if (split_dir / "images").is_dir() else split_dir
    paths, labels = [], []
    for number, line in enumerate(read_text(ann, "annotations file", DataError).splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2 or parts[1] not in index:
            raise DataError(f"{ann}, line {number}: expected '<file> <class folder name> ...' naming a train class, "
                            f"got {line.strip()!r}.")
        paths.append(str(images / parts[0]))
        labels.append(index[parts[1]])
    if not paths:
        raise DataError(f"annotations file {ann} lists no images.")
    return paths, np.asarray(labels, dtype=np.int64)


def _split_folder(split_dir: Path, classes: list[str]) -> tuple[list[str], np.ndarray]:
    return read_annotations(split_dir, classes) or scan_folders(split_dir, classes)[:2]


def decode_all(paths: list[str], size: int, threads: int = 0, max_bad: int = 0) -> tuple[np.ndarray, list]:
    """Decode into one preallocated array; returns it and the unreadable images as (index, message), their rows
    black.
    Past `max_bad` unreadable images the work stops at once (no waiting for the rest) with the first one's error."""
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    workers = threads or min(32, (os.cpu_count() or 1) * 2)
    # Chunks keep the number of futures small for a million images while still spreading small sets over threads.
    chunk = max(1, min(256, len(paths) // (workers * 4)))
    bad: list[tuple[int, str]] = []

    def work(start: int) -> None:
        for i in range(start, min(start + chunk, len(paths))):
            try:
                out[i] = decode(paths[i], size)
            except DataError as exc:
                bad.append((i, str(exc)))
                if len(bad) > max_bad:
                    raise DataError(f"{exc} (more than data.max_bad_images={max_bad} unreadable image(s); raise "
                                    "it to skip them)." if max_bad else str(exc)) from None
                out[i] = 0

    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        for future in as_completed([pool.submit(work, s) for s in range(0, len(paths), chunk)]):
            future.result()  # re-raises a worker's DataError
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return out, sorted(bad)


def _from_lists(cfg: DataConfig, root: Path) -> tuple[dict[str, tuple[list[str], np.ndarray]], list[str]]:
    splits = {}
    for key in ("train", "val", "test"):
        rel = getattr(cfg, f"{key}_list")
        if rel:
            splits[key] = read_list(root / rel)
    if "test" not in splits:
        if "val" not in splits:
            raise DataError(f"{root / cfg.train_list}: data.test_list (or data.val_list) must be set beside "
                            "data.train_list.")
        splits["test"] = splits.pop("val")  # the ImageNet convention: val is the test split
    num_classes = check_list_labels(cfg, root, splits)
    class_names = list_class_names(*splits["train"], num_classes)
    full = {k: ([f"{root}/{p}" if not p.startswith("/") else p for p in paths], labels)
            for k, (paths, labels) in splits.items()}
    for key, (paths, _) in full.items():  # a missing entry is a list error: named by file and line, before decoding
        missing = next((i for i, p in enumerate(paths) if not os.path.isfile(p)), None)
        if missing is not None:
            name = getattr(cfg, f"{key}_list") or cfg.val_list
            raise DataError(f"{_line_of(root / name, missing)}: {paths[missing]} does not exist.")
    return full, class_names


def check_list_labels(cfg: DataConfig, root: Path, splits: dict) -> int:
    """Before anything is decoded: the train list numbers its classes 0..K-1 (a label far above the number of
    classes is a typo, not 10^8 classes), and every other list stays within them; errors name file and line."""
    train_labels = splits["train"][1]
    num_classes = int(train_labels.max()) + 1
    distinct = len(np.unique(train_labels))
    if num_classes > 2 * distinct:
        at = int(np.argmax(train_labels))
        raise DataError(f"{_line_of(root / cfg.train_list, at)}: label {int(train_labels[at])} but the train list has "
                        f"{distinct} classes; labels must number the classes 0..{distinct - 1}.")
    for key, (_, labels) in splits.items():
        if key != "train" and len(labels) and labels.max() >= num_classes:
            at = int(np.argmax(labels))
            name = getattr(cfg, f"{key}_list") or cfg.val_list  # a test split made from the val list
            raise DataError(f"{_line_of(root / name, at)}: label {int(labels[at])} is not a class of the train list "
                            f"(labels 0..{num_classes - 1}).")
    return num_classes


def _line_of(path: Path, entry: int) -> str:
    """'<file>, line N' of the entry-th image line (blank lines and comments skipped, as read_list does)."""
    count = -1
    for number, line in enumerate(read_text(path, "list file", DataError).splitlines(), start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            count += 1
            if count == entry:
                return f"{path}, line {number}"
    return str(path)


def _from_folders(root: Path) -> tuple[dict[str, tuple[list[str], np.ndarray]], list[str]]:
    if not (root / "train").is_dir():
        raise DataError(f"{root / 'train'} does not exist: expected train/<class>/ image folders under data.root, "
                        "or set data.train_list (and data.val_list / data.test_list) to list files.")
    paths, labels, class_names = scan_folders(root / "train", None)
    splits = {"train": (paths, labels)}
    if (root / "test").is_dir() and not _is_unlabelled(root / "test"):
        splits["test"] = _split_folder(root / "test", class_names)
        if (root / "val").is_dir():
            splits["val"] = _split_folder(root / "val", class_names)
    else:
        splits["test"] = _split_folder(root / "val", class_names)
    return splits, class_names


def _is_unlabelled(split_dir: Path) -> bool:
    """Tiny-ImageNet's test/ holds images/ only (no labels, no annotations): it cannot be a test split."""
    subdirs = [d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith(".")]
    annotated = any((split_dir / name).is_file() for name in ("val_annotations.txt", "annotations.txt"))
    return subdirs == ["images"] and not annotated


@register_dataset("imagelist")
def load(cfg: DataConfig, classes: set | None = None) -> Dataset:
    """`classes`: original class ids to decode (the others keep their names but no images)."""
    root = Path(cfg.root).expanduser()
    if cfg.image_size <= 0:
        raise DataError(f"data.image_size must be set (> 0) to read images from {root}: they are resized once "
                        "to that square size at load.")
    if not root.is_dir():
        raise DataError(f"data.root {root} is not a folder.")
    if cfg.train_list:
        splits, class_names = _from_lists(cfg, root)
    elif cfg.val_list or cfg.test_list:
        raise DataError(f"data.val_list / data.test_list are set but data.train_list is empty (data.root {root}).")
    else:
        splits, class_names = _from_folders(root)
    if classes is not None:
        splits = {k: ([p for p, keep in zip(paths, np.isin(labels, list(classes))) if keep],
                      labels[np.isin(labels, list(classes))]) for k, (paths, labels) in splits.items()}
    class_names = readable_names(class_names, root, cfg.class_names)
    total = sum(len(paths) for paths, _ in splits.values())
    nbytes = total * cfg.image_size * cfg.image_size * 3
    if cfg.storage == "stream" or (cfg.storage == "auto" and nbytes > cfg.stream_above_gb * 2**30):
        check_fits_in_memory(64 * cfg.image_size ** 2 * 3 * 4, f"streamed: a batch of 64 images at data.image_size="
                             f"{cfg.image_size} ({root}), as floats,")
        return _streamed(cfg, root, splits, class_names)
    check_fits_in_memory(nbytes, f"{total:,} images at data.image_size={cfg.image_size} ({root}) (data.storage="
                         "stream reads them as needed instead)")
    decoded, unreadable = {}, []
    for k, (paths, labels) in splits.items():
        images, bad = decode_all(paths, cfg.image_size, max_bad=cfg.max_bad_images - len(unreadable))
        if bad:  # skipped: their rows and labels leave the split
            keep = np.ones(len(paths), dtype=bool)
            keep[[i for i, _ in bad]] = False
            images, labels = images[keep], labels[keep]
            unreadable.extend(message for _, message in bad)
        decoded[k] = Split(images, labels)
    return Dataset("imagelist", decoded["train"], decoded["test"], class_names, val=decoded.get("val"),
                   meta={"root": str(root), "unreadable": unreadable}).validate(str(root))


def _streamed(cfg: DataConfig, root: Path, splits: dict, class_names: list[str]) -> Dataset:
    """Splits that keep where each image is (decoded per batch), from the packed cache unless data.cache=off."""
    images = {k: StreamedImages(str(root), paths, cfg.image_size) for k, (paths, _) in splits.items()}
    meta = {"root": str(root), "storage": "stream"}
    if cfg.cache != "off":
        from . import packed

        base = packed.default_root() if cfg.cache == "auto" else Path(cfg.cache).expanduser()
        side = cfg.pack_side or round(cfg.image_size * 8 / 7)
        meta["cache"] = str(packed.attach(images, str(root), base, side, cfg.pack_quality, cfg.workers,
                                          cfg.max_bad_images, progress=sys.stderr.isatty()))
    built = {k: Split(images[k], labels) for k, (_, labels) in splits.items()}
    return Dataset("imagelist", built["train"], built["test"], class_names, val=built.get("val"),
                   meta=meta).validate(str(root))
