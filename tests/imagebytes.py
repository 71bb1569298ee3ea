"""Builders of real image bytes for tests (a module of its own: two conftest.py files share
that module name, so no test imports from one)."""

import io
import struct
import zlib

from PIL import Image


def image_bytes(colour=(200, 30, 30), size=(8, 6), fmt="PNG") -> bytes:
    """Real encoded image bytes (PNG or JPEG) of a plain colour."""
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=fmt)
    return buffer.getvalue()


def png_claiming_size(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height: a decompression bomb that costs nothing here.

    The IHDR chunk of a real 1x1 PNG is rewritten with the claimed size and a correct CRC,
    so any reader that trusts the header would try to allocate width*height pixels.
    """
    data = bytearray(image_bytes(size=(1, 1)))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr:ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)
