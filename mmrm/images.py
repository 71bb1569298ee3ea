"""Safe handling of the images that preference records point at or embed.

Three guards apply to every image that enters mmrm:

* a path may not escape its data root (``../``), and an absolute path must lie inside it:
  the root is the user's ``--image-root``, else the data file's own folder, so a record
  cannot reach an arbitrary file of the machine unless the user names a root that holds it
  (``--image-root /`` allows any);
* the pixel count read from the header must stay under ``max_pixels`` *before* anything is
  decoded (a decompression bomb is refused, not allocated);
* the image must decode (``decode=True``) or at least identify as an image.

:class:`ImageStore` writes images once into an output folder, named by the sha256 of their
bytes, so converted data sets are self-contained and deduplicated.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from mmrm.ledger import FieldProblem

#: Default cap on width*height: larger than any image in the supported data sets
#: (VL-RewardBench's largest are ~4k x 3k) and far below what would exhaust memory.
DEFAULT_MAX_PIXELS = 64_000_000

_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp",
               "TIFF": ".tif", "MPO": ".jpg"}


def resolve_image_path(img_path: str, root: Path, *, root_is_explicit: bool,
                       field: str = "img_path") -> Path:
    """Resolve a record's image path against its data root, refusing escapes.

    Args:
        img_path: the path as written in the record.
        root: the data root (the user's ``--image-root``, else the data file's folder).
        root_is_explicit: whether the user named the root (the message says how to widen it).
        field: the record field named in errors.

    Returns:
        The absolute path of the image (not yet checked to exist).

    Raises:
        FieldProblem: empty path, or a path (``..`` or absolute) outside the root.
    """
    if not img_path.strip():
        raise FieldProblem(field, "empty image path", "empty_text")
    if "\x00" in img_path:
        raise FieldProblem(field, "contains a NUL character", "nul_character")
    path = Path(img_path)
    resolved = (root / path).resolve()          # an absolute path stays itself
    if not resolved.is_relative_to(root.resolve()):
        hint = "" if root_is_explicit else \
            " (the data file's folder; --image-root names another, --image-root / any)"
        kind = "absolute path" if path.is_absolute() else "path"
        raise FieldProblem(field, f"{kind} {img_path!r} is outside the data root "
                                  f"{str(root)!r}{hint}", "image_path_escapes_root")
    return resolved


def open_rgb(path: Path) -> Image.Image:
    """An image file as 8-bit RGB, upright: EXIF orientation applied (a phone photo is
    stored sideways with a rotate tag), and 16/32-bit grey scaled to 8 bits (converting
    those straight to RGB clips every value above 255 to white)."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
            image = image.point(lambda v: v * (1 / 257)).convert("L")
        elif image.mode == "I":
            image = image.point(lambda v: v * (1 / 16843009)).convert("L")
        return image.convert("RGB")


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int

    @property
    def extension(self) -> str:
        return _EXTENSIONS.get(self.format, "." + self.format.lower())


def inspect_image(source: bytes | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                  decode: bool = True, field: str = "img_path") -> ImageInfo:
    """Identify an image, guard its size from the header, and optionally decode it fully.

    Raises:
        FieldProblem: missing file, not an image, too many pixels, or does not decode.
    """
    if isinstance(source, Path) and not source.is_file():
        raise FieldProblem(field, f"image not found: {str(source)!r}", "image_missing")
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            # Our own pixel cap runs first; PIL's bomb warning would only duplicate it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(stream) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise FieldProblem(field, f"image of {width}x{height} pixels exceeds the "
                                              f"limit of {max_pixels}", "image_too_large")
                if decode:
                    img.load()
                return ImageInfo(img.format or "unknown", width, height)
    except FieldProblem:
        raise
    except Image.DecompressionBombError as err:
        raise FieldProblem(field, f"image exceeds the limit of {max_pixels} pixels ({err})",
                           "image_too_large")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise FieldProblem(field, f"image does not decode: {err}", "image_undecodable")


class ImageStore:
    """Writes each distinct image once into ``folder``, named by the sha256 of its bytes.

    New images are staged in ``folder/.mmrm-staging<pid>/`` and moved into ``folder`` by
    :meth:`publish` when the run that wrote them succeeds; :meth:`remove_created` drops the
    staging folder instead. A run killed before either leaves only a staging folder, which the
    next run (holding the folder's lock) removes: the folder never holds an image that no
    finished run wrote, and nothing but mmrm's own staging folders is ever removed from it.
    An image already there under its name whose bytes no longer hash to that name (edited
    in place, torn on disk) is written again.

    Args:
        folder: where images go (created on first write).
        relative_to: folder the returned paths are relative to (the output file's folder).
        max_pixels: the decompression-bomb cap.
        decode: whether to decode each image fully before accepting it.
    """

    def __init__(self, folder: Path, relative_to: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 decode: bool = True):
        self.folder = Path(folder)
        self.relative_to = Path(relative_to)
        self.max_pixels = max_pixels
        self.decode = decode
        self._known: dict[str, str] = {}  # sha256 -> relative path
        self._digests: dict[str, str] = {}   # image name -> sha256 of its bytes
        self._created: list[Path] = []     # images this store adds (staged until publish)
        self.inputs: list[Path] = []       # image files it read (never to be overwritten)
        self.staging = self.folder / f".mmrm-staging{os.getpid()}"
        self._made_folder = False

    def add_bytes(self, data: bytes, field: str = "image") -> str:
        """Store embedded image bytes; returns the path relative to the output file."""
        if not data:
            raise FieldProblem(field, "no image bytes", "no_image_bytes")
        digest = hashlib.sha256(data).hexdigest()
        if digest in self._known:
            return self._known[digest]
        info = inspect_image(data, max_pixels=self.max_pixels, decode=self.decode, field=field)
        target = self._target(digest, info)
        if not _holds(target, digest):
            _atomic_write_bytes(self._staged(target), data)
            self._created.append(target)
        return self._remember(digest, target)

    def add_file(self, path: Path, field: str = "img_path") -> str:
        """Store an image file (hard link when possible, else copy)."""
        if not path.is_file():
            raise FieldProblem(field, f"image not found: {str(path)!r}", "image_missing")
        self.inputs.append(path)
        digest = sha256_file(path)
        if digest in self._known:
            return self._known[digest]
        info = inspect_image(path, max_pixels=self.max_pixels, decode=self.decode, field=field)
        target = self._target(digest, info)
        if not _holds(target, digest):
            _link_or_copy(path, self._staged(target))
            self._created.append(target)
        return self._remember(digest, target)

    @property
    def count(self) -> int:
        return len(self._known)

    def digest(self) -> str:
        """sha256 over the sorted image names (names are their contents' hashes)."""
        names = sorted(Path(p).name for p in self._known.values())
        return hashlib.sha256("\n".join(names).encode()).hexdigest()

    def contents(self) -> dict[str, str]:
        """Every image's name and the sha256 of its bytes (what a manifest pins)."""
        return {Path(rel).name: digest for digest, rel in sorted(
            self._known.items(), key=lambda kv: kv[1])}

    def publish(self) -> None:
        """Move the staged images into the folder (the run that wrote them succeeded)."""
        for target in self._created:
            os.replace(self._staged(target), target)
        self._created.clear()
        shutil.rmtree(self.staging, ignore_errors=True)

    def remove_created(self) -> None:
        """Undo this store's writes: the images it staged, and its folder if it made it."""
        self._created.clear()
        shutil.rmtree(self.staging, ignore_errors=True)
        if self._made_folder and self.folder.is_dir() and not any(self.folder.iterdir()):
            self.folder.rmdir()

    def remove_abandoned(self) -> list[Path]:
        """mmrm's staging folders of runs that were killed (call it holding the folder's
        lock: no other run is writing there); nothing else."""
        found = [p for p in self.folder.glob(".mmrm-staging*") if p != self.staging
                 and p.is_dir() and not p.is_symlink()
                 and p.name.removeprefix(".mmrm-staging").isdigit()]
        for path in found:
            shutil.rmtree(path, ignore_errors=True)
        return found

    def _staged(self, target: Path) -> Path:
        self.staging.mkdir(parents=True, exist_ok=True)
        return self.staging / target.name

    def _target(self, digest: str, info: ImageInfo) -> Path:
        if not self.folder.is_dir():
            self.folder.mkdir(parents=True)
            self._made_folder = True
        return self.folder / f"{digest[:32]}{info.extension}"

    def _remember(self, digest: str, target: Path) -> str:
        rel = os.path.relpath(target, self.relative_to)
        self._known[digest] = rel
        return rel


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 1 MiB blocks (md5 is DVC's content hash)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: str | Path) -> str:
    return file_digest(path, "sha256")


def _holds(target: Path, digest: str) -> bool:
    """Whether ``target`` is there with the bytes its name promises (an image edited in
    place or torn on disk is not)."""
    if not target.is_file():
        return False
    if sha256_file(target) == digest:
        return True
    return False


def _atomic_write_bytes(target: Path, data: bytes) -> None:
    tmp = target.with_name(f".{target.name}.mmrm-tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, target)


def _link_or_copy(src: Path, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.mmrm-tmp{os.getpid()}")
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, target)
